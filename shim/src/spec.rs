//! The parts of the bundle's OCI `config.json` the shim acts on.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

/// CRI puts every container of a pod under the pod sandbox's id; one shim serves them all.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Host path of the root filesystem (the spec's `root.path`, resolved against the bundle).
    pub rootfs: PathBuf,
    pub readonly_root: bool,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: String,
    pub terminal: bool,
}

impl ContainerSpec {
    pub fn load(bundle: &Path) -> Result<Self> {
        let path = bundle.join("config.json");
        let spec = Spec::load(&path).map_err(|err| Error::InvalidSpec {
            path: path.clone(),
            reason: err.to_string(),
        })?;
        Self::from_spec(bundle, &spec).map_err(|reason| Error::InvalidSpec { path, reason })
    }

    fn from_spec(bundle: &Path, spec: &Spec) -> std::result::Result<Self, String> {
        let root = spec.root().as_ref().ok_or("the spec has no root")?;
        let process = spec.process().as_ref().ok_or("the spec has no process")?;
        let env = process
            .env()
            .iter()
            .flatten()
            .map(|entry| match entry.split_once('=') {
                Some((key, value)) => (key.to_string(), value.to_string()),
                None => (entry.clone(), String::new()),
            })
            .collect();
        let cwd = process.cwd().display().to_string();
        Ok(ContainerSpec {
            rootfs: bundle.join(root.path()),
            readonly_root: root.readonly().unwrap_or(false),
            args: process.args().clone().unwrap_or_default(),
            env,
            cwd: if cwd.is_empty() { "/".into() } else { cwd },
            terminal: process.terminal().unwrap_or(false),
        })
    }
}

/// The shim grouping for a bundle: the pod sandbox id when CRI set one, else the container id.
pub fn grouping_id(bundle: &Path, container_id: &str) -> String {
    Spec::load(bundle.join("config.json"))
        .ok()
        .and_then(|spec| {
            spec.annotations()
                .as_ref()
                .and_then(|annotations| annotations.get(SANDBOX_ID_ANNOTATION).cloned())
        })
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| container_id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_spec(dir: &Path, json: &str) {
        std::fs::write(dir.join("config.json"), json).unwrap();
    }

    #[test]
    fn reads_process_and_root() {
        let dir = tempfile::tempdir().unwrap();
        write_spec(
            dir.path(),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
               "process":{"args":["/app.wasm","x"],"env":["A=1","B=x=y","C"],"cwd":"/data",
               "user":{"uid":0,"gid":0}}}"#,
        );
        let spec = ContainerSpec::load(dir.path()).unwrap();
        assert_eq!(spec.rootfs, dir.path().join("rootfs"));
        assert!(spec.readonly_root);
        assert_eq!(spec.args, ["/app.wasm", "x"]);
        assert_eq!(
            spec.env,
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y".to_string()),
                ("C".to_string(), String::new())
            ]
        );
        assert_eq!(spec.cwd, "/data");
        assert!(!spec.terminal);
    }

    #[test]
    fn a_broken_spec_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_spec(dir.path(), "{not json");
        let err = ContainerSpec::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }

    #[test]
    fn groups_by_sandbox_annotation() {
        let dir = tempfile::tempdir().unwrap();
        write_spec(
            dir.path(),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        );
        assert_eq!(grouping_id(dir.path(), "c1"), "pod1");
        assert_eq!(grouping_id(Path::new("/nonexistent"), "c1"), "c1");
    }
}
