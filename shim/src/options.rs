//! The runtime options containerd hands to Create: the `options` table of the runtime's entry
//! in containerd's config (CRI), or `ctr run --runtime-config-path`. Both arrive as
//! containerd's `runtimeoptions.v1.Options { type_url, config_path, config_body }`.

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;
use wedge_runtime_config::{ConfigSource, EngineConfig};

use crate::error::{Error, Result};

const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The engine config for one Create: the runtime options' `ConfigBody`, else their
/// `ConfigPath`, else the node's default file.
pub fn engine_config(options: Option<&Any>) -> Result<EngineConfig> {
    let source = match options {
        Some(any) if !any.type_url.is_empty() => config_source(any)?,
        _ => ConfigSource::NodeDefault,
    };
    Ok(EngineConfig::load(&source)?)
}

/// The runtime options naming the engine config at `path`, as containerd would pass them
/// for a runtime entry's `ConfigPath`.
pub fn config_path_option(path: &std::path::Path) -> Result<Any> {
    let mut value = Vec::new();
    let mut out = containerd_shim_protos::protobuf::CodedOutputStream::vec(&mut value);
    out.write_string(2, &path.display().to_string())
        .and_then(|()| out.flush())
        .map_err(|err| Error::Internal(format!("cannot encode the runtime options: {err}")))?;
    drop(out);
    Ok(Any {
        type_url: format!("type.googleapis.com/{RUNTIME_OPTIONS_TYPE}"),
        value,
        ..Default::default()
    })
}

fn config_source(any: &Any) -> Result<ConfigSource> {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if type_name != RUNTIME_OPTIONS_TYPE {
        return Err(Error::InvalidRequest(format!(
            "unsupported runtime options type {}; Wedge reads {RUNTIME_OPTIONS_TYPE} \
             (ConfigPath / ConfigBody)",
            any.type_url
        )));
    }
    let (path, body) = decode_runtime_options(&any.value)
        .map_err(|err| Error::InvalidRequest(format!("malformed {RUNTIME_OPTIONS_TYPE}: {err}")))?;
    Ok(if !body.is_empty() {
        ConfigSource::Body(String::from_utf8(body).map_err(|_| {
            Error::InvalidRequest("runtime option ConfigBody is not UTF-8 TOML".into())
        })?)
    } else if !path.is_empty() {
        ConfigSource::Path(path.into())
    } else {
        ConfigSource::NodeDefault
    })
}

/// Fields 2 (`config_path`) and 3 (`config_body`) of the message; others are skipped.
fn decode_runtime_options(
    bytes: &[u8],
) -> containerd_shim_protos::protobuf::Result<(String, Vec<u8>)> {
    let mut input = CodedInputStream::from_bytes(bytes);
    let (mut path, mut body) = (String::new(), Vec::new());
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        match tag {
            // field 2, length-delimited
            18 => path = input.read_string()?,
            // field 3, length-delimited
            26 => body = input.read_bytes()?,
            other => {
                let wire_type = containerd_shim_protos::protobuf::rt::WireType::new(other & 7)
                    .ok_or(containerd_shim_protos::protobuf::Error::from(
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "bad wire type"),
                    ))?;
                input.skip_field(wire_type)?;
            }
        }
    }
    Ok((path, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::CodedOutputStream;

    fn options(type_url: &str, path: &str, body: &str) -> Any {
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            out.write_string(1, "ignored").unwrap();
            if !path.is_empty() {
                out.write_string(2, path).unwrap();
            }
            if !body.is_empty() {
                out.write_bytes(3, body.as_bytes()).unwrap();
            }
            out.flush().unwrap();
        }
        Any {
            type_url: type_url.to_string(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn a_config_path_option_reads_back_as_that_path() {
        let any = config_path_option(std::path::Path::new("/etc/wedge/dev.toml")).unwrap();
        assert_eq!(
            config_source(&any).unwrap(),
            ConfigSource::Path("/etc/wedge/dev.toml".into())
        );
    }

    #[test]
    fn body_wins_over_path() {
        let any = options(
            RUNTIME_OPTIONS_TYPE,
            "/etc/x.toml",
            "[cache]\nmax_size_mb = 3\n",
        );
        let config = engine_config(Some(&any)).unwrap();
        assert_eq!(config.cache.max_size_mb, 3);
    }

    #[test]
    fn path_is_read_and_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wedge.toml");
        std::fs::write(&path, "[cache]\ndir = \"/tmp/wc\"\n").unwrap();
        let any = options(RUNTIME_OPTIONS_TYPE, path.to_str().unwrap(), "");
        assert_eq!(
            engine_config(Some(&any)).unwrap().cache.dir,
            std::path::Path::new("/tmp/wc")
        );

        std::fs::write(&path, "[cache]\nbogus = 1\n").unwrap();
        let err = engine_config(Some(&any)).unwrap_err().to_string();
        assert!(err.contains("wedge.toml") && err.contains("bogus"), "{err}");
    }

    #[test]
    fn other_option_types_are_refused() {
        let any = options("containerd.runc.v1.Options", "", "");
        let err = engine_config(Some(&any)).unwrap_err().to_string();
        assert!(err.contains("containerd.runc.v1.Options"), "{err}");
    }
}
