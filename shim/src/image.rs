//! Decides what a container runs: finds the entrypoint in the root filesystem and checks
//! that it is WebAssembly. (Images that carry the module as a layer are `content`'s job.)

use std::io::Read;
use std::path::Path;

use cap_std::fs::{Dir, File, FileTypeExt, OpenOptions, OpenOptionsExt};

use crate::engine::has_wasm_magic;
use crate::error::{Error, Result};

/// Search path when the spec sets no `PATH`, the same default runc's images assume.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `process.args[0]`, split into the module path and an optional `#name` of the export to
/// run instead of `_start` (`/app.wasm#serve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrypoint {
    pub path: String,
    pub export: Option<String>,
}

impl Entrypoint {
    pub fn parse(args: &[String]) -> Option<Self> {
        let arg0 = args.first()?;
        Some(match arg0.rsplit_once('#') {
            Some((path, name)) if !path.is_empty() && !name.is_empty() && !name.contains('/') => {
                Entrypoint {
                    path: path.to_string(),
                    export: Some(name.to_string()),
                }
            }
            _ => Entrypoint {
                path: arg0.to_string(),
                export: None,
            },
        })
    }
}

/// Resolves the entrypoint path to an absolute path inside the root filesystem and checks that the file
/// there is a WebAssembly binary.
///
/// Lookup follows execve's rules: a name with a `/` is a path (relative to `cwd`), a bare
/// name is searched in the spec's `PATH`. Every lookup goes through a capability on the root
/// filesystem, so a symlink in the image cannot point the shim at a host file.
pub fn resolve_wasm_entrypoint(
    rootfs: &Path,
    arg0: &str,
    env: &[(String, String)],
    cwd: &str,
) -> Result<String> {
    let root = Dir::open_ambient_dir(rootfs, cap_std::ambient_authority())
        .map_err(|err| Error::io("cannot open the root filesystem", rootfs, err))?;

    let path = if arg0.contains('/') {
        join(cwd, arg0)
    } else {
        search_path(&root, arg0, env).ok_or_else(|| Error::EntrypointNotFound {
            path: arg0.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not found in any directory of PATH",
            ),
        })?
    };

    let mut file = open_regular_file(&root, &path)?;
    let mut magic = [0u8; 4];
    let read = file
        .read(&mut magic)
        .map_err(|source| Error::EntrypointNotFound {
            path: path.clone(),
            source,
        })?;
    if !has_wasm_magic(&magic[..read]) {
        return Err(Error::NotWasm { path });
    }
    Ok(path)
}

/// Opens the entrypoint `path` (absolute, inside `root`) for reading without ever blocking,
/// and only if it is a regular file: opening a FIFO would wait for a writer that never
/// comes, and a device, socket or directory is no program.
pub fn open_regular_file(root: &Dir, path: &str) -> Result<File> {
    // Looked at first, so that a socket (which cannot be opened at all) is named as one.
    if let Ok(metadata) = root.metadata(relative(path)) {
        if let Some(kind) = file_type_name(metadata.file_type()) {
            return Err(Error::EntrypointNotRegular {
                path: path.to_string(),
                kind,
            });
        }
    }
    let mut options = OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
    let file =
        root.open_with(relative(path), &options)
            .map_err(|source| Error::EntrypointNotFound {
                path: path.to_string(),
                source,
            })?;
    // Looked at again on the opened file: the image could have changed in between.
    let file_type = file
        .metadata()
        .map_err(|source| Error::EntrypointNotFound {
            path: path.to_string(),
            source,
        })?
        .file_type();
    match file_type_name(file_type) {
        None => Ok(file),
        Some(kind) => Err(Error::EntrypointNotRegular {
            path: path.to_string(),
            kind,
        }),
    }
}

/// What a non-regular file is, for the user; None for a regular file.
fn file_type_name(file_type: cap_std::fs::FileType) -> Option<&'static str> {
    if file_type.is_file() {
        None
    } else if file_type.is_dir() {
        Some("directory")
    } else if file_type.is_fifo() {
        Some("FIFO (named pipe)")
    } else if file_type.is_char_device() {
        Some("character device")
    } else if file_type.is_block_device() {
        Some("block device")
    } else if file_type.is_socket() {
        Some("socket")
    } else {
        Some("special file")
    }
}

fn search_path(root: &Dir, name: &str, env: &[(String, String)]) -> Option<String> {
    let search = env
        .iter()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| value.as_str())
        .unwrap_or(DEFAULT_PATH);
    search
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| join("/", &format!("{dir}/{name}")))
        .find(|candidate| {
            root.metadata(relative(candidate))
                .map(|meta| meta.is_file())
                .unwrap_or(false)
        })
}

/// `path` made absolute against `cwd`, as the module will see it.
fn join(cwd: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{}", cwd.trim_end_matches('/'), path)
    }
}

fn relative(path: &str) -> &str {
    match path.trim_start_matches('/') {
        "" => ".",
        rest => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn rootfs_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, bytes) in files {
            let full = dir.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, bytes).unwrap();
        }
        dir
    }

    #[test]
    fn export_names_follow_a_hash() {
        let parse = |arg: &str| Entrypoint::parse(&args(&[arg, "x"])).unwrap();
        assert_eq!(
            parse("/app.wasm#serve"),
            Entrypoint {
                path: "/app.wasm".into(),
                export: Some("serve".into())
            }
        );
        assert_eq!(parse("/app.wasm").export, None);
        assert_eq!(parse("/a#b/app.wasm").path, "/a#b/app.wasm");
        assert_eq!(parse("/app.wasm#").path, "/app.wasm#");
        assert_eq!(Entrypoint::parse(&[]), None);
    }

    #[test]
    fn finds_absolute_relative_and_path_entrypoints() {
        let wasm: &[u8] = b"\0asm\x01\0\0\0";
        let root = rootfs_with(&[("/app/m.wasm", wasm), ("/usr/bin/tool", wasm)]);
        let r = root.path();
        assert_eq!(
            resolve_wasm_entrypoint(r, "/app/m.wasm", &[], "/").unwrap(),
            "/app/m.wasm"
        );
        assert_eq!(
            resolve_wasm_entrypoint(r, "./m.wasm", &[], "/app").unwrap(),
            "/app/./m.wasm"
        );
        assert_eq!(
            resolve_wasm_entrypoint(r, "tool", &[], "/").unwrap(),
            "/usr/bin/tool"
        );
        let env = vec![("PATH".to_string(), "/app".to_string())];
        assert!(matches!(
            resolve_wasm_entrypoint(r, "tool", &env, "/"),
            Err(Error::EntrypointNotFound { .. })
        ));
    }

    #[test]
    fn refuses_missing_native_and_escaping_entrypoints() {
        let root = rootfs_with(&[("/bin/sh", b"\x7fELF\x02\x01\x01\0")]);
        let r = root.path();
        assert!(matches!(
            resolve_wasm_entrypoint(r, "/bin/sh", &[], "/"),
            Err(Error::NotWasm { .. })
        ));
        assert!(matches!(
            resolve_wasm_entrypoint(r, "/missing.wasm", &[], "/"),
            Err(Error::EntrypointNotFound { .. })
        ));

        let outside = rootfs_with(&[("/secret.wasm", b"\0asm\x01\0\0\0")]);
        std::os::unix::fs::symlink(outside.path().join("secret.wasm"), r.join("link.wasm"))
            .unwrap();
        assert!(matches!(
            resolve_wasm_entrypoint(r, "/link.wasm", &[], "/"),
            Err(Error::EntrypointNotFound { .. })
        ));
        assert!(matches!(
            resolve_wasm_entrypoint(r, "/../secret.wasm", &[], "/"),
            Err(Error::EntrypointNotFound { .. })
        ));
    }

    #[test]
    fn special_files_are_refused_at_once_with_their_type() {
        let root = rootfs_with(&[("/dir/x", b"")]);
        let r = root.path();
        nix::unistd::mkfifo(&r.join("app.wasm"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = std::time::Instant::now();
        let err = resolve_wasm_entrypoint(r, "/app.wasm", &[], "/").unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(
            matches!(&err, Error::EntrypointNotRegular { kind, .. } if kind.contains("FIFO")),
            "{err}"
        );
        assert!(err.to_string().contains("/app.wasm"), "{err}");
        let err = resolve_wasm_entrypoint(r, "/dir", &[], "/").unwrap_err();
        assert!(
            matches!(&err, Error::EntrypointNotRegular { kind, .. } if *kind == "directory"),
            "{err}"
        );
        let socket = std::os::unix::net::UnixListener::bind(r.join("sock.wasm")).unwrap();
        let err = resolve_wasm_entrypoint(r, "/sock.wasm", &[], "/").unwrap_err();
        assert!(err.to_string().contains("socket"), "{err}");
        drop(socket);
    }
}
