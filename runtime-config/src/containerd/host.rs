//! Host paths seen from wherever the installer runs: in a DaemonSet the node's `/` is mounted
//! somewhere else (`/host`), in tests it is a temp dir.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot(PathBuf);

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot(root.into())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Where the host's `path` is from here. A path already below the root is taken as it is,
    /// so callers may pass either the host's view (`/etc/containerd/config.toml`) or ours
    /// (`/host/etc/containerd/config.toml`).
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        if self.is_slash() || path.starts_with(&self.0) {
            return path.to_path_buf();
        }
        let relative: PathBuf = path
            .components()
            .filter(|component| !matches!(component, Component::RootDir | Component::Prefix(_)))
            .collect();
        self.0.join(relative)
    }

    /// The host's own name for a path we see below the root (for messages and for values
    /// written into configs the host's containerd reads).
    pub fn host_view(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        match path.strip_prefix(&self.0) {
            Ok(rest) if !self.is_slash() => Path::new("/").join(rest),
            _ => path.to_path_buf(),
        }
    }

    fn is_slash(&self) -> bool {
        self.0 == Path::new("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_root_changes_nothing() {
        let root = HostRoot::new("/");
        assert_eq!(root.resolve("/etc/x"), PathBuf::from("/etc/x"));
        assert_eq!(root.host_view("/etc/x"), PathBuf::from("/etc/x"));
    }

    #[test]
    fn other_root_prefixes_host_paths_once() {
        let root = HostRoot::new("/host");
        assert_eq!(root.resolve("/etc/x"), PathBuf::from("/host/etc/x"));
        assert_eq!(root.resolve("/host/etc/x"), PathBuf::from("/host/etc/x"));
        assert_eq!(root.host_view("/host/etc/x"), PathBuf::from("/etc/x"));
    }
}
