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

/// The pod's name and namespace as CRI records them in every container's spec.
const SANDBOX_NAME_ANNOTATION: &str = "io.kubernetes.cri.sandbox-name";
const SANDBOX_NAMESPACE_ANNOTATION: &str = "io.kubernetes.cri.sandbox-namespace";

/// How log lines name a container's pod: `namespace/name` as kubectl shows it, else the
/// sandbox id; None outside CRI.
pub fn pod_label(annotations: &std::collections::HashMap<String, String>) -> Option<String> {
    let name = annotations.get(SANDBOX_NAME_ANNOTATION);
    let namespace = annotations.get(SANDBOX_NAMESPACE_ANNOTATION);
    match (namespace, name) {
        (Some(namespace), Some(name)) => Some(format!("{namespace}/{name}")),
        _ => annotations.get(SANDBOX_ID_ANNOTATION).cloned(),
    }
}

/// The Kubernetes namespace of the container's pod; None outside CRI.
pub fn kubernetes_namespace(
    annotations: &std::collections::HashMap<String, String>,
) -> Option<&str> {
    annotations
        .get(SANDBOX_NAMESPACE_ANNOTATION)
        .map(String::as_str)
}

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

    /// What a wasm container makes of this mount. WASI reaches files only through
    /// directories: a bound directory becomes a preopen, a bound file (`/etc/hosts`,
    /// `/dev/termination-log`) is bound into the runner's root, and a filesystem instance
    /// (proc, sysfs, tmpfs…) has no use. What runc would refuse is refused here too.
    pub fn for_wasm(&self) -> Result<WasmMount, String> {
        let destination = &self.destination;
        if !destination.starts_with('/') {
            return Err(format!(
                "mount destination {destination:?} is not an absolute path"
            ));
        }
        if destination.split('/').any(|part| part == "..") {
            return Err(format!(
                "mount destination {destination:?} climbs out of the container's root"
            ));
        }
        if !self.is_bind() {
            return Ok(WasmMount::Unused);
        }
        let Some(source) = &self.source else {
            return Err(format!("bind mount {destination:?} has no source"));
        };
        let metadata = std::fs::metadata(source).map_err(|err| {
            format!(
                "mount source {} (for {destination}) cannot be used: {err}",
                source.display()
            )
        })?;
        let readonly = self.is_readonly();
        if metadata.is_dir() {
            Ok(WasmMount::Preopen(Preopen {
                host: source.clone(),
                guest: destination.clone(),
                readonly,
            }))
        } else if metadata.is_file() {
            Ok(WasmMount::File(FileBind {
                host: source.clone(),
                guest: destination.clone(),
                readonly,
            }))
        } else {
            Err(format!(
                "mount source {} (for {destination}) is neither a directory nor a regular \
                 file; a wasm container can use only those",
                source.display()
            ))
        }
    }
}

/// A mount as a wasm container uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmMount {
    Preopen(Preopen),
    File(FileBind),
    /// A filesystem instance (proc, sysfs, tmpfs, devpts…): WASI has no use for it.
    Unused,
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
        let invalid = |reason: String| InvalidSpec {
            path: path.clone(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|err| invalid(err.to_string()))?;
        // serde_json's own error names the field and value at fault ("unknown variant
        // `RLIMIT_BOGUS`… at line 1 column 212"); oci-spec's load says only "serde failed".
        let spec: Spec = serde_json::from_slice(&bytes).map_err(|err| invalid(err.to_string()))?;
        let container = Self::from_spec(bundle, &spec).map_err(invalid)?;
        container.check(&spec).map_err(invalid)?;
        Ok(container)
    }

    /// What no runtime can run, refused by name as runc refuses it.
    fn check(&self, spec: &Spec) -> std::result::Result<(), String> {
        if !self.cwd.starts_with('/') {
            return Err(format!(
                "process.cwd {:?} is not an absolute path",
                self.cwd
            ));
        }
        if let Some(adj) = self
            .oom_score_adj
            .filter(|adj| !(-1000..=1000).contains(adj))
        {
            return Err(format!("process.oomScoreAdj {adj} is outside -1000..1000"));
        }
        if let Some((name, soft, hard)) = self.rlimits.iter().find(|(_, soft, hard)| soft > hard) {
            return Err(format!(
                "process.rlimits {name}: soft limit {soft} is above hard limit {hard}"
            ));
        }
        if let Some(limit) = self.resources.memory_limit.filter(|limit| *limit < -1) {
            return Err(format!(
                "linux.resources.memory.limit {limit} is negative (-1 means no limit)"
            ));
        }
        let linux = spec.linux().as_ref();
        let maps_ids = linux.is_some_and(|linux| {
            linux
                .uid_mappings()
                .as_ref()
                .is_some_and(|maps| !maps.is_empty())
                || linux
                    .gid_mappings()
                    .as_ref()
                    .is_some_and(|maps| !maps.is_empty())
        });
        let user_namespace = self
            .namespaces
            .iter()
            .any(|(kind, _)| *kind == LinuxNamespaceType::User);
        if maps_ids && !user_namespace {
            return Err(
                "linux.uidMappings/gidMappings are given but the spec asks for no user \
                 namespace"
                    .into(),
            );
        }
        Ok(())
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

    fn bind(source: &Path, destination: &str) -> MountSpec {
        MountSpec {
            destination: destination.into(),
            source: Some(source.to_path_buf()),
            kind: Some("bind".into()),
            options: vec!["rbind".into(), "ro".into()],
        }
    }

    #[test]
    fn a_wasm_container_uses_directories_and_files_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            bind(dir.path(), "/data").for_wasm(),
            Ok(WasmMount::Preopen(Preopen { readonly: true, .. }))
        ));
        assert!(matches!(
            bind(&file, "/etc/hosts").for_wasm(),
            Ok(WasmMount::File(_))
        ));
        let proc_mount = MountSpec {
            destination: "/proc".into(),
            source: Some("proc".into()),
            kind: Some("proc".into()),
            options: vec![],
        };
        assert_eq!(proc_mount.for_wasm(), Ok(WasmMount::Unused));
        let refused = [
            (bind(&dir.path().join("absent"), "/data"), "absent"),
            (bind(Path::new("/dev/null"), "/null"), "neither a directory"),
            (bind(dir.path(), "data"), "not an absolute path"),
            (bind(dir.path(), "/../../escape"), "climbs out"),
        ];
        for (mount, needle) in refused {
            let reason = mount.for_wasm().unwrap_err();
            assert!(reason.contains(needle), "{reason}");
        }
    }

    #[test]
    fn specs_no_runtime_can_run_are_refused_by_name() {
        // A spec with `process_extra` inside `process` and `top_extra` at the top level.
        let spec = |cwd: &str, process_extra: &str, top_extra: &str| {
            format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}}{top_extra},
                   "process":{{"args":["/a.wasm"],"cwd":"{cwd}","user":{{"uid":0,"gid":0}}{process_extra}}}}}"#
            )
        };
        let cases = [
            (spec("work", "", ""), "\"work\" is not an absolute"),
            (spec("/", r#","oomScoreAdj":5000"#, ""), "oomScoreAdj 5000"),
            (
                spec(
                    "/",
                    r#","rlimits":[{"type":"RLIMIT_NOFILE","soft":100,"hard":10}]"#,
                    "",
                ),
                "RLIMIT_NOFILE: soft limit 100 is above hard limit 10",
            ),
            (
                spec(
                    "/",
                    r#","rlimits":[{"type":"RLIMIT_BOGUS","soft":1,"hard":1}]"#,
                    "",
                ),
                "RLIMIT_BOGUS",
            ),
            (
                spec("/", "", r#","linux":{"resources":{"memory":{"limit":-5}}}"#),
                "memory.limit -5",
            ),
            (
                spec(
                    "/",
                    "",
                    r#","linux":{"uidMappings":[{"containerID":0,"hostID":1000,"size":1}]}"#,
                ),
                "no user namespace",
            ),
        ];
        for (json, needle) in cases {
            let dir = tempfile::tempdir().unwrap();
            write_spec(dir.path(), &json);
            let err = ContainerSpec::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}\n{err}");
        }
    }
}
