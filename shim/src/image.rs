//! The container's entrypoint in its root filesystem: where it is and whether it is WebAssembly
//! or a Linux program. (Images that carry the module as a layer are `content`'s job; the
//! choice between the two back ends is `backend::plan`'s.)

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

/// What the container's entrypoint is in its root filesystem.
#[derive(Debug)]
pub enum EntrypointFile {
    /// A WebAssembly binary, at this absolute path inside the root filesystem.
    Wasm { path: String },
    /// A regular file that is not WebAssembly: a Linux program, for runc.
    Native { path: String },
    /// Not there (or unreadable): the image's layers may still carry the module.
    Missing(Error),
    /// A FIFO, device, socket or directory: no program of any kind.
    NotAProgram(Error),
}

/// Looks at the entrypoint: resolves `arg0` to an absolute path inside the root filesystem
/// and reads its first bytes.
///
/// Lookup follows execve's rules: a name with a `/` is a path (relative to `cwd`), a bare
/// name is searched in the spec's `PATH`. Every lookup goes through a capability on the root
/// filesystem, so a symlink in the image cannot point the shim at a host file.
pub fn inspect_entrypoint(
    rootfs: &Path,
    arg0: &str,
    env: &[(String, String)],
    cwd: &str,
) -> EntrypointFile {
    match read_magic(rootfs, arg0, env, cwd) {
        Ok((path, true)) => EntrypointFile::Wasm { path },
        Ok((path, false)) => EntrypointFile::Native { path },
        Err(err @ Error::EntrypointNotRegular { .. }) => EntrypointFile::NotAProgram(err),
        Err(err) => EntrypointFile::Missing(err),
    }
}

/// The entrypoint's absolute path and whether it starts like a wasm binary.
fn read_magic(
    rootfs: &Path,
    arg0: &str,
    env: &[(String, String)],
    cwd: &str,
) -> Result<(String, bool)> {
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
    let is_wasm = has_wasm_magic(&magic[..read]);
    Ok((path, is_wasm))
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

    fn wasm_path(found: EntrypointFile) -> String {
        match found {
            EntrypointFile::Wasm { path } => path,
            other => panic!("not wasm: {other:?}"),
        }
    }

    fn missing(found: EntrypointFile) -> Error {
        match found {
            EntrypointFile::Missing(err) => err,
            other => panic!("not missing: {other:?}"),
        }
    }

    fn not_a_program(found: EntrypointFile) -> Error {
        match found {
            EntrypointFile::NotAProgram(err) => err,
            other => panic!("a program: {other:?}"),
        }
    }

    #[test]
    fn finds_absolute_relative_and_path_entrypoints() {
        let wasm: &[u8] = b"\0asm\x01\0\0\0";
        let root = rootfs_with(&[("/app/m.wasm", wasm), ("/usr/bin/tool", wasm)]);
        let r = root.path();
        assert_eq!(
            wasm_path(inspect_entrypoint(r, "/app/m.wasm", &[], "/")),
            "/app/m.wasm"
        );
        assert_eq!(
            wasm_path(inspect_entrypoint(r, "./m.wasm", &[], "/app")),
            "/app/./m.wasm"
        );
        assert_eq!(
            wasm_path(inspect_entrypoint(r, "tool", &[], "/")),
            "/usr/bin/tool"
        );
        let env = vec![("PATH".to_string(), "/app".to_string())];
        assert!(matches!(
            missing(inspect_entrypoint(r, "tool", &env, "/")),
            Error::EntrypointNotFound { .. }
        ));
    }

    #[test]
    fn tells_native_from_missing_and_escaping_entrypoints() {
        let root = rootfs_with(&[("/bin/sh", b"\x7fELF\x02\x01\x01\0")]);
        let r = root.path();
        assert!(matches!(
            inspect_entrypoint(r, "/bin/sh", &[], "/"),
            EntrypointFile::Native { path } if path == "/bin/sh"
        ));
        assert!(matches!(
            missing(inspect_entrypoint(r, "/missing.wasm", &[], "/")),
            Error::EntrypointNotFound { .. }
        ));

        let outside = rootfs_with(&[("/secret.wasm", b"\0asm\x01\0\0\0")]);
        std::os::unix::fs::symlink(outside.path().join("secret.wasm"), r.join("link.wasm"))
            .unwrap();
        assert!(matches!(
            missing(inspect_entrypoint(r, "/link.wasm", &[], "/")),
            Error::EntrypointNotFound { .. }
        ));
        assert!(matches!(
            missing(inspect_entrypoint(r, "/../secret.wasm", &[], "/")),
            Error::EntrypointNotFound { .. }
        ));
    }

    #[test]
    fn special_files_are_refused_at_once_with_their_type() {
        let root = rootfs_with(&[("/dir/x", b"")]);
        let r = root.path();
        nix::unistd::mkfifo(&r.join("app.wasm"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let started = std::time::Instant::now();
        let err = not_a_program(inspect_entrypoint(r, "/app.wasm", &[], "/"));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(
            matches!(&err, Error::EntrypointNotRegular { kind, .. } if kind.contains("FIFO")),
            "{err}"
        );
        assert!(err.to_string().contains("/app.wasm"), "{err}");
        let err = not_a_program(inspect_entrypoint(r, "/dir", &[], "/"));
        assert!(
            matches!(&err, Error::EntrypointNotRegular { kind, .. } if *kind == "directory"),
            "{err}"
        );
        let socket = std::os::unix::net::UnixListener::bind(r.join("sock.wasm")).unwrap();
        let err = not_a_program(inspect_entrypoint(r, "/sock.wasm", &[], "/"));
        assert!(err.to_string().contains("socket"), "{err}");
        drop(socket);
    }
}
