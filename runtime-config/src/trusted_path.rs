//! Paths of the engine config that the runtime trusts as root: `runc.path` is executed as
//! root for every native container, and `cache.dir` holds native code that runners map.
//! Whoever can change either file, or any directory on the way to it, is root on the node.
//!
//! So they are checked as sudo checks its own files: every component from `/` down, symlinks
//! followed (inside the given root, so a node's files can be checked from the installer's
//! container), must be owned by root and writable by nobody else; and the result must not
//! lie where pods or images can write as root (kubelet's and containerd's state, temp
//! directories), however its modes look.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Places whose content pods, images or unprivileged users write: the volumes and root
/// filesystems kubelet and containerd prepare are root-owned, and writable by any container
/// that runs as root.
const REFUSED_PLACES: &[(&str, &str)] = &[
    ("/var/lib/kubelet", "kubelet's pods and volumes"),
    ("/var/lib/containerd", "containerd's content and snapshots"),
    ("/run/containerd", "containerd's state and container roots"),
    (
        "/var/run/containerd",
        "containerd's state and container roots",
    ),
    ("/var/lib/rancher", "k3s/rke2 state and container roots"),
    ("/run/k3s", "k3s state and container roots"),
    ("/var/lib/k0s", "k0s state and container roots"),
    ("/run/k0s", "k0s state"),
    ("/tmp", "a temp directory"),
    ("/var/tmp", "a temp directory"),
    ("/dev/shm", "a temp directory"),
    ("/run/user", "users' own runtime directories"),
    ("/proc", "a kernel file system"),
    ("/sys", "a kernel file system"),
];

/// More symlinks than this on one path is a loop, as the kernel counts.
const MAX_SYMLINKS: usize = 40;

/// What the trusted path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    /// An existing regular file (a program run as root).
    File,
    /// A directory, made by the runtime if it is missing.
    Directory,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {path}: {reason}; the runtime will not trust it as root (fix the engine config)")]
pub struct UntrustedPath {
    pub key: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// Checks `path` (the engine config's `key`) as seen on the host, whose `/` is `root` here.
/// Returns the path with every symlink resolved (as seen on the host).
pub fn check(
    key: &'static str,
    root: &Path,
    path: &Path,
    leaf: Leaf,
) -> Result<PathBuf, UntrustedPath> {
    let refuse = |reason: String| UntrustedPath {
        key,
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_absolute() {
        return Err(refuse("not an absolute path".into()));
    }
    let on_host = |host: &Path| root.join(host.strip_prefix("/").unwrap_or(host));
    let mut resolved = PathBuf::from("/");
    check_owner_and_mode(
        &resolved,
        &std::fs::symlink_metadata(on_host(&resolved))
            .map_err(|err| refuse(format!("cannot inspect /: {err}")))?,
    )
    .map_err(refuse)?;
    let mut pending: Vec<PathBuf> = components_reversed(path);
    let mut symlinks = 0;
    let mut missing = false;
    while let Some(next) = pending.pop() {
        if next.as_os_str() == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&next);
        let meta = match std::fs::symlink_metadata(on_host(&candidate)) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && leaf == Leaf::Directory => {
                // The runtime makes what is missing, root-only, under a checked directory.
                resolved = candidate;
                resolved.extend(pending.drain(..).rev());
                missing = true;
                break;
            }
            Err(err) => {
                return Err(refuse(format!(
                    "cannot inspect {}: {err}",
                    candidate.display()
                )))
            }
        };
        check_owner_and_mode(&candidate, &meta).map_err(refuse)?;
        if meta.file_type().is_symlink() {
            symlinks += 1;
            if symlinks > MAX_SYMLINKS {
                return Err(refuse("too many levels of symbolic links".into()));
            }
            let target = std::fs::read_link(on_host(&candidate)).map_err(|err| {
                refuse(format!(
                    "cannot read the link {}: {err}",
                    candidate.display()
                ))
            })?;
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            pending.extend(components_reversed(&target));
            continue;
        }
        resolved = candidate;
    }
    if let Some((place, what)) = REFUSED_PLACES
        .iter()
        .find(|(place, _)| resolved.starts_with(place))
    {
        return Err(refuse(format!(
            "it resolves to {}, inside {place} ({what}), where pods or users write",
            resolved.display()
        )));
    }
    if !missing {
        let meta = std::fs::metadata(on_host(&resolved))
            .map_err(|err| refuse(format!("cannot inspect {}: {err}", resolved.display())))?;
        match leaf {
            Leaf::File if !meta.is_file() => return Err(refuse("not a regular file".into())),
            Leaf::Directory if !meta.is_dir() => return Err(refuse("not a directory".into())),
            _ => {}
        }
    }
    Ok(resolved)
}

/// Finds `name` as execvp would on `search_path` (a PATH value) when it has no slash; a
/// path with one is returned as it is.
pub fn find_program(name: &Path, search_path: &str) -> Option<PathBuf> {
    if name.components().count() != 1 || name.is_absolute() {
        return Some(name.to_path_buf());
    }
    search_path
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

fn components_reversed(path: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = path
        .components()
        .filter_map(|part| match part {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    parts.reverse();
    parts
}

fn check_owner_and_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if meta.uid() != 0 {
        return Err(format!(
            "{} is owned by uid {}, not root",
            path.display(),
            meta.uid()
        ));
    }
    // A symlink's own mode means nothing; what it points to is checked in turn.
    if !meta.file_type().is_symlink() && meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by {} (mode {:o})",
            path.display(),
            if meta.mode() & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{chown, symlink};

    use super::*;

    /// A fake host root under a root-owned, private directory (tests run as root).
    fn host() -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .tempdir_in("/var/lib")
            .unwrap_or_else(|_| tempfile::tempdir().unwrap());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in [
            "usr/sbin",
            "var/lib/wedge",
            "opt/tools",
            "var/lib/kubelet/pods/p/volumes/v",
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("usr/sbin/runc"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("usr/sbin/runc"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        dir
    }

    fn is_root() -> bool {
        std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
    }

    #[test]
    fn root_owned_paths_pass_and_resolve() {
        if !is_root() {
            return;
        }
        let host = host();
        let root = host.path();
        assert_eq!(
            check("runc.path", root, Path::new("/usr/sbin/runc"), Leaf::File).unwrap(),
            PathBuf::from("/usr/sbin/runc")
        );
        // Not there yet: made by the runtime under a checked parent.
        assert_eq!(
            check(
                "cache.dir",
                root,
                Path::new("/var/lib/wedge/cache"),
                Leaf::Directory
            )
            .unwrap(),
            PathBuf::from("/var/lib/wedge/cache")
        );
        // An absolute symlink resolves inside the root, not on this machine.
        symlink("/usr/sbin/runc", root.join("opt/tools/runc")).unwrap();
        assert_eq!(
            check("runc.path", root, Path::new("/opt/tools/runc"), Leaf::File).unwrap(),
            PathBuf::from("/usr/sbin/runc")
        );
    }

    #[test]
    fn a_component_others_can_change_is_refused_by_name() {
        if !is_root() {
            return;
        }
        let host = host();
        let root = host.path();
        std::fs::set_permissions(
            root.join("opt/tools"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        std::fs::write(root.join("opt/tools/runc"), "").unwrap();
        let err = check("runc.path", root, Path::new("/opt/tools/runc"), Leaf::File).unwrap_err();
        assert!(
            err.to_string()
                .contains("/opt/tools is writable by others (mode 777)"),
            "{err}"
        );
        assert!(
            err.to_string().contains("runc.path /opt/tools/runc"),
            "{err}"
        );
        std::fs::set_permissions(
            root.join("opt/tools"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        chown(root.join("opt/tools/runc"), Some(1000), None).unwrap();
        let err = check("runc.path", root, Path::new("/opt/tools/runc"), Leaf::File).unwrap_err();
        assert!(err.to_string().contains("owned by uid 1000"), "{err}");
        std::fs::set_permissions(
            root.join("usr/sbin"),
            std::fs::Permissions::from_mode(0o775),
        )
        .unwrap();
        let err = check("runc.path", root, Path::new("/usr/sbin/runc"), Leaf::File).unwrap_err();
        assert!(err.to_string().contains("writable by its group"), "{err}");
        assert!(check("runc.path", root, Path::new("runc"), Leaf::File)
            .unwrap_err()
            .reason
            .contains("absolute"));
    }

    #[test]
    fn kubelet_containerd_and_temp_places_are_refused_however_owned() {
        if !is_root() {
            return;
        }
        let host = host();
        let root = host.path();
        let err = check(
            "cache.dir",
            root,
            Path::new("/var/lib/kubelet/pods/p/volumes/v"),
            Leaf::Directory,
        )
        .unwrap_err();
        assert!(err.reason.contains("kubelet"), "{err}");
        // A root-owned link elsewhere does not launder the place it points to.
        symlink(
            "/var/lib/kubelet/pods/p/volumes/v",
            root.join("var/lib/wedge/cache"),
        )
        .unwrap();
        let err = check(
            "cache.dir",
            root,
            Path::new("/var/lib/wedge/cache"),
            Leaf::Directory,
        )
        .unwrap_err();
        assert!(err.reason.contains("/var/lib/kubelet"), "{err}");
        let err = check(
            "cache.dir",
            root,
            Path::new("/var/lib/../../tmp/x"),
            Leaf::Directory,
        )
        .unwrap_err();
        assert!(err.reason.contains("/tmp"), "{err}");
    }

    #[test]
    fn programs_are_found_as_execvp_finds_them() {
        if !is_root() {
            return;
        }
        let host = host();
        let sbin = host.path().join("usr/sbin");
        let path = format!("/nonexistent:{}", sbin.display());
        assert_eq!(
            find_program(Path::new("runc"), &path),
            Some(sbin.join("runc"))
        );
        assert_eq!(
            find_program(Path::new("/x/runc"), &path),
            Some(PathBuf::from("/x/runc"))
        );
        assert_eq!(find_program(Path::new("nope"), &path), None);
    }
}
