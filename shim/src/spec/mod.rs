//! The parts of the bundle's OCI `config.json` the shim acts on.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxNamespaceType, LinuxSeccomp, Spec};
use serde::{Deserialize, Serialize};

use crate::engine::Preopen;

mod resources;
pub use resources::Resources;

/// The bundle's `config.json` cannot be read, or asks for something no container can be.
#[derive(Debug, thiserror::Error)]
#[error("invalid OCI spec {path}: {reason}")]
pub struct InvalidSpec {
    pub path: PathBuf,
    pub reason: String,
}

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
    /// `linux.cgroupsPath` as given (cgroupfs or systemd form; empty when unset).
    pub cgroups_path: String,
    pub resources: Resources,
    /// Namespaces the spec asks for; `Some(path)` to join an existing one (the pod's).
    pub namespaces: Vec<(LinuxNamespaceType, Option<PathBuf>)>,
    pub identity: Identity,
    /// (resource name as in the spec, e.g. `RLIMIT_NOFILE`, soft, hard)
    pub rlimits: Vec<(String, u64, u64)>,
    pub mounts: Vec<MountSpec>,
    pub oom_score_adj: Option<i32>,
    /// The spec's annotations: CRI's own and, where the runtime allows them, the pod's.
    pub annotations: std::collections::HashMap<String, String>,
    /// `linux.resources.devices`: the device cgroup rules on top of the default policy.
    pub device_rules: Vec<LinuxDeviceCgroup>,
    /// `linux.seccomp`, applied on top of Wedge's own filter.
    pub seccomp: Option<LinuxSeccomp>,
    /// `process.apparmorProfile`.
    pub apparmor_profile: Option<String>,
    /// `process.selinuxLabel`.
    pub selinux_label: Option<String>,
    /// Paths of `linux.devices`: nodes the spec wants created in the container.
    pub device_nodes: Vec<PathBuf>,
}

/// Who the container's process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// One OCI mount, as much of it as a wasm container can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub destination: String,
    pub source: Option<PathBuf>,
    pub kind: Option<String>,
    pub options: Vec<String>,
}

impl MountSpec {
    /// A bind mount (kubelet's volumes, emptyDirs, /etc/hosts…) as opposed to a filesystem
    /// instance (proc, sysfs, tmpfs, devpts…).
    pub fn is_bind(&self) -> bool {
        self.kind.as_deref() == Some("bind")
            || self
                .options
                .iter()
                .any(|opt| opt == "bind" || opt == "rbind")
    }

    /// `ro`, or `rro` (recursively read-only, the OCI option for CRI's recursiveReadOnly):
    /// a wasm container's read-only volumes are read-only all the way down either way.
    pub fn is_readonly(&self) -> bool {
        self.options.iter().any(|opt| opt == "ro" || opt == "rro")
    }

    /// The directory a wasm module sees at this mount's destination. WASI reaches files
    /// only through directories, so file binds (`/etc/hosts`, `/dev/termination-log`) and
    /// filesystem instances (proc, sysfs, tmpfs…) have no preopen.
    pub fn as_preopen(&self) -> Option<Preopen> {
        let source = self.source.as_ref()?;
        (self.is_bind() && source.is_dir()).then(|| Preopen {
            host: source.clone(),
            guest: self.destination.clone(),
            readonly: self.is_readonly(),
        })
    }
}

/// A file the container's spec binds into it (kubelet's `/etc/hosts`, `/etc/resolv.conf`,
/// `/etc/hostname`, `/dev/termination-log`): the runner binds it into its root, where both
/// the guest and the runner's own name lookups find it, as runc does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileBind {
    pub host: PathBuf,
    pub guest: String,
    pub readonly: bool,
}

impl MountSpec {
    pub fn as_file_bind(&self) -> Option<FileBind> {
        let source = self.source.as_ref()?;
        (self.is_bind() && source.is_file()).then(|| FileBind {
            host: source.clone(),
            guest: self.destination.clone(),
            readonly: self.is_readonly(),
        })
    }
}

impl ContainerSpec {
    /// The container's `PORT` variable, the conventional way to tell a server its port.
    pub fn port_variable(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|(key, _)| key == "PORT")
            .map(|(_, value)| value.as_str())
    }

    pub fn load(bundle: &Path) -> Result<Self, InvalidSpec> {
        let path = bundle.join("config.json");
        let spec = Spec::load(&path).map_err(|err| InvalidSpec {
            path: path.clone(),
            reason: err.to_string(),
        })?;
        Self::from_spec(bundle, &spec).map_err(|reason| InvalidSpec { path, reason })
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
        let linux = spec.linux().as_ref();
        let user = process.user();
        let identity = Identity {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
        };
        let rlimits = process
            .rlimits()
            .iter()
            .flatten()
            .map(|rlimit| {
                // The serde name is the spec's own spelling (RLIMIT_NOFILE…).
                let name = serde_json::to_value(rlimit.typ())
                    .ok()
                    .and_then(|value| value.as_str().map(str::to_string))
                    .unwrap_or_default();
                (name, rlimit.soft(), rlimit.hard())
            })
            .collect();
        let mounts = spec
            .mounts()
            .iter()
            .flatten()
            .map(|mount| MountSpec {
                destination: mount.destination().display().to_string(),
                source: mount.source().clone(),
                kind: mount.typ().clone(),
                options: mount.options().clone().unwrap_or_default(),
            })
            .collect();
        Ok(ContainerSpec {
            rootfs: bundle.join(root.path()),
            readonly_root: root.readonly().unwrap_or(false),
            args: process.args().clone().unwrap_or_default(),
            env,
            cwd: if cwd.is_empty() { "/".into() } else { cwd },
            terminal: process.terminal().unwrap_or(false),
            cgroups_path: linux
                .and_then(|linux| linux.cgroups_path().as_ref())
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            resources: linux
                .and_then(|linux| linux.resources().as_ref())
                .map(Resources::from_oci)
                .unwrap_or_default(),
            namespaces: linux
                .and_then(|linux| linux.namespaces().as_ref())
                .into_iter()
                .flatten()
                .map(|namespace| (namespace.typ(), namespace.path().clone()))
                .collect(),
            identity,
            rlimits,
            mounts,
            oom_score_adj: process.oom_score_adj(),
            annotations: spec.annotations().clone().unwrap_or_default(),
            device_rules: linux
                .and_then(|linux| linux.resources().as_ref())
                .and_then(|resources| resources.devices().clone())
                .unwrap_or_default(),
            seccomp: linux.and_then(|linux| linux.seccomp().clone()),
            apparmor_profile: process.apparmor_profile().clone().filter(|p| !p.is_empty()),
            selinux_label: process.selinux_label().clone().filter(|l| !l.is_empty()),
            device_nodes: linux
                .and_then(|linux| linux.devices().as_ref())
                .into_iter()
                .flatten()
                .map(|device| device.path().clone())
                .collect(),
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
        assert_eq!(spec.identity, Identity::default());
    }

    #[test]
    fn reads_the_sandbox_parts() {
        let dir = tempfile::tempdir().unwrap();
        write_spec(
            dir.path(),
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
               "process":{"args":["/app.wasm"],"cwd":"/",
                 "user":{"uid":1000,"gid":1001,"additionalGids":[5,6]},
                 "rlimits":[{"type":"RLIMIT_NOFILE","soft":1024,"hard":4096}]},
               "mounts":[{"destination":"/data","type":"bind","source":"/var/pod/vol",
                          "options":["rbind","ro"]},
                         {"destination":"/proc","type":"proc","source":"proc"}],
               "linux":{"cgroupsPath":"/pods/p1/c1",
                 "resources":{"memory":{"limit":67108864},"cpu":{"shares":512},
                              "pids":{"limit":20}},
                 "namespaces":[{"type":"network","path":"/run/netns/p1"},{"type":"mount"}]}}"#,
        );
        let spec = ContainerSpec::load(dir.path()).unwrap();
        assert_eq!(
            spec.identity,
            Identity {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![5, 6]
            }
        );
        assert_eq!(spec.rlimits, [("RLIMIT_NOFILE".to_string(), 1024, 4096)]);
        assert_eq!(spec.cgroups_path, "/pods/p1/c1");
        assert_eq!(spec.resources.memory_bytes(), Some(64 << 20));
        assert_eq!(spec.resources.cpu_shares, Some(512));
        assert_eq!(spec.resources.pids_limit, Some(20));
        assert_eq!(
            spec.namespaces,
            [
                (LinuxNamespaceType::Network, Some("/run/netns/p1".into())),
                (LinuxNamespaceType::Mount, None)
            ]
        );
        assert!(spec.mounts[0].is_bind() && spec.mounts[0].is_readonly());
        assert!(!spec.mounts[1].is_bind());
        let recursive = MountSpec {
            destination: "/data".into(),
            source: Some("/v".into()),
            kind: Some("bind".into()),
            options: vec!["rbind".into(), "rro".into()],
        };
        assert!(recursive.is_readonly());
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
