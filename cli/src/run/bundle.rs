//! The OCI bundle of a local run: `config.json` as containerd's default spec would have it
//! for this container (namespaces, capabilities, masked paths, device policy, a cgroup of
//! its own), with the image's and the caller's process settings and annotations.

use std::path::Path;

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use super::RunError;

/// The capabilities containerd's default spec grants (the runner drops them all anyway
/// before the guest runs).
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY_PATHS: [&str; 6] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/sys/devices/virtual/powercap",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process and sandbox of one local container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSettings {
    pub id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub annotations: Vec<(String, String)>,
    pub memory_limit: Option<u64>,
    /// Host directory or file, destination, read-only.
    pub volumes: Vec<(String, String, bool)>,
    /// Share the caller's network namespace instead of getting an empty one of its own.
    pub host_network: bool,
    pub readonly_root: bool,
}

/// The spec for `settings` whose root is `rootfs`, checked by the OCI spec parser.
pub fn spec(settings: &ContainerSettings, rootfs: &Path) -> Result<Spec, RunError> {
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if !settings.host_network {
        namespaces.push(json!({"type": "network"}));
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    for (source, destination, readonly) in &settings.volumes {
        let mut options = vec!["rbind", "rprivate"];
        if *readonly {
            options.push("ro");
        }
        mounts.push(
            json!({"destination": destination, "type": "bind", "source": source,
                           "options": options}),
        );
    }
    let mut env = vec![DEFAULT_PATH.to_string()];
    env.extend(settings.env.iter().cloned());
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(limit) = settings.memory_limit {
        resources["memory"] = json!({"limit": limit});
    }
    let annotations: serde_json::Map<String, Value> = settings
        .annotations
        .iter()
        .map(|(key, value)| (key.clone(), Value::String(value.clone())))
        .collect();
    let document = json!({
        "ociVersion": "1.1.0",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": settings.args,
            "env": env,
            "cwd": settings.cwd,
            "capabilities": {
                "bounding": DEFAULT_CAPABILITIES,
                "effective": DEFAULT_CAPABILITIES,
                "permitted": DEFAULT_CAPABILITIES,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs, "readonly": settings.readonly_root},
        "hostname": settings.id,
        "mounts": mounts,
        "annotations": annotations,
        "linux": {
            "resources": resources,
            "cgroupsPath": format!("/wedge-local/{}", settings.id),
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    });
    serde_json::from_value(document).map_err(|err| RunError::Internal(format!("spec: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_carries_the_process_limits_and_annotations() {
        let settings = ContainerSettings {
            id: "dev1".into(),
            args: vec!["/hello.wasm".into(), "x".into()],
            env: vec!["WHO=dev".into()],
            cwd: "/".into(),
            annotations: vec![("wedge.dev/timeout".into(), "5s".into())],
            memory_limit: Some(64 << 20),
            volumes: vec![("/srv/data".into(), "/data".into(), true)],
            host_network: false,
            readonly_root: false,
        };
        let spec = spec(&settings, Path::new("/tmp/b/rootfs")).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap()[1], "x");
        assert!(process
            .env()
            .as_ref()
            .unwrap()
            .contains(&"WHO=dev".to_string()));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_ref().unwrap(),
            Path::new("/wedge-local/dev1")
        );
        let limit = linux
            .resources()
            .as_ref()
            .unwrap()
            .memory()
            .as_ref()
            .unwrap()
            .limit();
        assert_eq!(limit, Some(64 << 20));
        let namespaces = linux.namespaces().as_ref().unwrap();
        assert_eq!(namespaces.len(), 5);
        let annotations = spec.annotations().as_ref().unwrap();
        assert_eq!(annotations["wedge.dev/timeout"], "5s");
        let data = spec.mounts().as_ref().unwrap().last().unwrap();
        assert!(data.options().as_ref().unwrap().contains(&"ro".to_string()));
    }

    #[test]
    fn the_host_network_leaves_out_the_network_namespace() {
        let settings = ContainerSettings {
            id: "dev2".into(),
            args: vec!["/x.wasm".into()],
            cwd: "/".into(),
            host_network: true,
            ..ContainerSettings::default()
        };
        let spec = spec(&settings, Path::new("/r")).unwrap();
        let namespaces = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(namespaces
            .iter()
            .all(|ns| ns.typ() != oci_spec::runtime::LinuxNamespaceType::Network));
    }
}
