//! The files install puts on the host besides containerd's config: the shim binary (verified
//! by digest after the copy) and the engine config (only where none exists, unless the
//! operator asks for it to be replaced).

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wedge_runtime_config::{cgroup_driver, wasm_image, EngineConfig};

use super::error::{NodeError, Result};

const SHIM_MODE: u32 = 0o755;
const ENGINE_CONFIG_MODE: u32 = 0o644;
/// Appended to the engine config's name for the file `--overwrite-engine-config` replaced
/// first; later replacements leave it alone, so it stays the operator's own file.
pub const PREVIOUS_SUFFIX: &str = ".wedge-previous";

/// What to do with an engine config already on the host that differs from the installer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingEngineConfig {
    /// Leave it: the operator's config on the node wins.
    Keep,
    /// Replace it: the installer's config (a ConfigMap) is the source of truth.
    Replace,
}

/// What a copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copied {
    /// Written; the sha256 of the bytes now in place.
    Written { sha256: String },
    /// The destination already held the same bytes.
    AlreadyThere { sha256: String },
    /// The destination exists with other contents and was left alone.
    Kept,
    /// The destination held other contents and was replaced; `previous` is where the old
    /// contents were saved, when this replacement saved them (only the first one does).
    Replaced {
        sha256: String,
        previous: Option<PathBuf>,
    },
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(NodeError::io("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(NodeError::io("cannot read", path))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(wasm_image::hex(&hasher.finalize()))
}

/// Copies the shim to `dest` (temp file + rename, 0755) and checks the digest of what landed.
/// A running shim keeps its old inode, so replacing it under running pods is safe.
pub fn install_shim(source: &Path, dest: &Path) -> Result<Copied> {
    let expected = sha256_file(source)?;
    if dest.is_file() && sha256_file(dest)? == expected {
        return Ok(Copied::AlreadyThere { sha256: expected });
    }
    let bytes = fs::read(source).map_err(NodeError::io("cannot read", source))?;
    write_atomically(dest, &bytes, SHIM_MODE)?;
    let found = sha256_file(dest)?;
    if found != expected {
        let _ = fs::remove_file(dest);
        return Err(NodeError::ShimDigestMismatch {
            path: dest.to_path_buf(),
            expected,
            found,
        });
    }
    Ok(Copied::Written { sha256: found })
}

/// Writes the engine config from `source` to `dest`, with runc's cgroup driver on the node
/// (`runc_systemd_cgroup`) unless `source` chooses one; an existing `dest` with other
/// contents is kept or replaced as `existing` says. What would be written is validated
/// first, so a bad config never replaces a working one.
pub fn place_engine_config(
    source: &Path,
    dest: &Path,
    existing: ExistingEngineConfig,
    runc_systemd_cgroup: Option<bool>,
) -> Result<Copied> {
    let given = fs::read_to_string(source).map_err(NodeError::io("cannot read", source))?;
    let text = cgroup_driver::with_runc_driver(&given, runc_systemd_cgroup);
    EngineConfig::parse(&text, &source.display().to_string()).map_err(|err| {
        NodeError::EngineConfigInvalid {
            path: source.to_path_buf(),
            message: err.to_string(),
        }
    })?;
    let sha256 = wasm_image::sha256_hex(text.as_bytes());
    match fs::read(dest) {
        Ok(current) if current == text.as_bytes() => Ok(Copied::AlreadyThere { sha256 }),
        Ok(current) => match existing {
            ExistingEngineConfig::Keep => Ok(Copied::Kept),
            ExistingEngineConfig::Replace => {
                let previous = save_previous_once(dest, &current)?;
                write_atomically(dest, text.as_bytes(), ENGINE_CONFIG_MODE)?;
                Ok(Copied::Replaced { sha256, previous })
            }
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(dest, text.as_bytes(), ENGINE_CONFIG_MODE)?;
            Ok(Copied::Written { sha256 })
        }
        Err(err) => Err(NodeError::io("cannot read", dest)(err)),
    }
}

/// The name `dest`'s replaced contents are saved under.
pub fn previous_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_os_string();
    name.push(PREVIOUS_SUFFIX);
    PathBuf::from(name)
}

/// Saves `contents` (what `dest` held) beside it unless an earlier replacement already did;
/// returns where, when it wrote.
fn save_previous_once(dest: &Path, contents: &[u8]) -> Result<Option<PathBuf>> {
    let previous = previous_path(dest);
    match fs::symlink_metadata(&previous) {
        Ok(_) => Ok(None),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(&previous, contents, ENGINE_CONFIG_MODE)?;
            Ok(Some(previous))
        }
        Err(err) => Err(NodeError::io("cannot inspect", previous)(err)),
    }
}

/// Removes `path` if it holds exactly what install writes from `source` (its bytes, with
/// either cgroup driver added: runc's may have changed since); returns whether it did.
pub fn remove_if_installed(path: &Path, source: &Path) -> Result<bool> {
    let (Ok(installed), Ok(original)) = (fs::read_to_string(path), fs::read_to_string(source))
    else {
        return Ok(false);
    };
    let written_by_install = [None, Some(true)]
        .into_iter()
        .any(|systemd| installed == cgroup_driver::with_runc_driver(&original, systemd));
    if installed != original && !written_by_install {
        return Ok(false);
    }
    remove(path)
}

/// Removes `path`; `false` when there was nothing to remove.
pub fn remove(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(NodeError::io("cannot remove", path)(err)),
    }
}

fn write_atomically(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    wedge_runtime_config::containerd::replace_file(dest, bytes, mode, None)
        .map_err(NodeError::io("cannot write", dest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn shim_copy_is_verified_and_executable() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("shim");
        fs::write(&source, b"\x7fELF pretend").unwrap();
        let dest = dir.path().join("bin/containerd-shim-wedge-v1");
        let Copied::Written { sha256 } = install_shim(&source, &dest).unwrap() else {
            panic!("not written");
        };
        assert_eq!(sha256, sha256_file(&source).unwrap());
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        assert!(matches!(
            install_shim(&source, &dest).unwrap(),
            Copied::AlreadyThere { .. }
        ));
    }

    #[test]
    fn engine_config_is_written_only_where_none_exists() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.toml");
        fs::write(&source, "[cache]\nenabled = false\n").unwrap();
        let dest = dir.path().join("etc/wedge/config.toml");
        assert!(matches!(
            place_engine_config(&source, &dest, ExistingEngineConfig::Keep, None).unwrap(),
            Copied::Written { .. }
        ));
        fs::write(&dest, "# the operator's\n").unwrap();
        assert_eq!(
            place_engine_config(&source, &dest, ExistingEngineConfig::Keep, None).unwrap(),
            Copied::Kept
        );
        assert!(!previous_path(&dest).exists());
        assert_eq!(fs::read_to_string(&dest).unwrap(), "# the operator's\n");
        assert!(!remove_if_installed(&dest, &source).unwrap());
    }

    #[test]
    fn the_written_engine_config_follows_runc_s_driver_and_uninstall_recognises_it() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.toml");
        fs::write(&source, "[cache]\nenabled = false\n").unwrap();
        let dest = dir.path().join("etc/wedge/config.toml");
        place_engine_config(&source, &dest, ExistingEngineConfig::Keep, Some(true)).unwrap();
        let written = fs::read_to_string(&dest).unwrap();
        let config = EngineConfig::parse(&written, "written").unwrap();
        assert_eq!(
            config.cgroup.driver,
            wedge_runtime_config::CgroupDriver::Systemd
        );
        assert!(!config.cache.enabled);
        // Installed again with the same runc setting: nothing to do.
        assert!(matches!(
            place_engine_config(&source, &dest, ExistingEngineConfig::Keep, Some(true)).unwrap(),
            Copied::AlreadyThere { .. }
        ));
        // Uninstall knows the file as its own even when runc's setting changed since.
        assert!(remove_if_installed(&dest, &source).unwrap());
        assert!(!dest.exists());
        place_engine_config(&source, &dest, ExistingEngineConfig::Keep, None).unwrap();
        assert!(fs::read_to_string(&dest)
            .unwrap()
            .contains("driver = \"cgroupfs\""));
        fs::write(&dest, fs::read_to_string(&dest).unwrap() + "# edited\n").unwrap();
        assert!(!remove_if_installed(&dest, &source).unwrap());
    }

    #[test]
    fn invalid_engine_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.toml");
        fs::write(&source, "[cache]\nenabeld = false\n").unwrap();
        let dest = dir.path().join("config.toml");
        assert!(matches!(
            place_engine_config(&source, &dest, ExistingEngineConfig::Keep, None),
            Err(NodeError::EngineConfigInvalid { .. })
        ));
        assert!(!dest.exists());
    }

    #[test]
    fn overwrite_replaces_a_different_config_and_keeps_the_first_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("etc/wedge/config.toml");
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::write(&dest, "# the operator's\n").unwrap();
        let first = dir.path().join("first.toml");
        fs::write(
            &first,
            "[cache]\nenabled = false\n[cgroup]\ndriver = \"auto\"\n",
        )
        .unwrap();

        let Copied::Replaced { previous, .. } =
            place_engine_config(&first, &dest, ExistingEngineConfig::Replace, None).unwrap()
        else {
            panic!("not replaced");
        };
        let saved = previous_path(&dest);
        assert_eq!(
            saved,
            dir.path().join("etc/wedge/config.toml.wedge-previous")
        );
        assert_eq!(previous.as_deref(), Some(saved.as_path()));
        assert_eq!(fs::read(&dest).unwrap(), fs::read(&first).unwrap());
        assert_eq!(fs::read_to_string(&saved).unwrap(), "# the operator's\n");

        // The same content again: nothing to do.
        assert!(matches!(
            place_engine_config(&first, &dest, ExistingEngineConfig::Replace, None).unwrap(),
            Copied::AlreadyThere { .. }
        ));
        // A new ConfigMap: replaced, and the operator's original stays the saved one.
        let second = dir.path().join("second.toml");
        fs::write(
            &second,
            "[cache]\nenabled = true\n[cgroup]\ndriver = \"auto\"\n",
        )
        .unwrap();
        assert_eq!(
            place_engine_config(&second, &dest, ExistingEngineConfig::Replace, None).unwrap(),
            Copied::Replaced {
                sha256: sha256_file(&second).unwrap(),
                previous: None
            }
        );
        assert_eq!(fs::read(&dest).unwrap(), fs::read(&second).unwrap());
        assert_eq!(fs::read_to_string(&saved).unwrap(), "# the operator's\n");
        // No temp file is left beside them.
        let mut names: Vec<String> = fs::read_dir(dest.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["config.toml", "config.toml.wedge-previous"]);
    }

    #[test]
    fn overwrite_never_replaces_with_an_invalid_config() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("config.toml");
        fs::write(&dest, "# the operator's\n").unwrap();
        let source = dir.path().join("source.toml");
        fs::write(&source, "[cache]\nenabeld = false\n").unwrap();
        assert!(matches!(
            place_engine_config(&source, &dest, ExistingEngineConfig::Replace, None),
            Err(NodeError::EngineConfigInvalid { .. })
        ));
        assert_eq!(fs::read_to_string(&dest).unwrap(), "# the operator's\n");
        assert!(!previous_path(&dest).exists());
    }
}
