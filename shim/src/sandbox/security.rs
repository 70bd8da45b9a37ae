//! The spec's security fields for a wasm container: each is honoured or refused at Create
//! with its name, never dropped in silence.
//!
//! - `linux.seccomp`: stacked on Wedge's own filter (`seccomp`), on every thread.
//! - `process.apparmorProfile`: changed to by the runner before it drops root; refused where
//!   the host has no AppArmor.
//! - `process.selinuxLabel`: refused; the runner never executes a new program, which is
//!   where SELinux labels a process.
//! - `linux.devices`: refused; a wasm guest reaches no device node (its mounts are `nodev`).
//! - `process.capabilities` and `process.noNewPrivileges`: a wasm container always runs with
//!   no capability in any set and with no_new_privs, stricter than any spec can ask.

use super::seccomp::Filters;
use super::SandboxError;
use crate::spec::ContainerSpec;

/// The confinement the runner applies on top of its own, as the spec asks.
#[derive(Debug)]
pub struct SecurityPlan {
    pub filters: Filters,
    pub apparmor_profile: Option<String>,
}

impl SecurityPlan {
    pub fn for_container(spec: &ContainerSpec) -> Result<Self, SandboxError> {
        Self::with_apparmor(spec, apparmor_enabled())
    }

    fn with_apparmor(spec: &ContainerSpec, apparmor_on_host: bool) -> Result<Self, SandboxError> {
        if let Some(label) = &spec.selinux_label {
            return Err(SandboxError::Unsupported {
                field: "process.selinuxLabel",
                reason: format!(
                    "{label}: SELinux labels are not applied to wasm containers; run the pod \
                     without an SELinux label or with another runtime class"
                ),
            });
        }
        if let Some(path) = spec.device_nodes.first() {
            return Err(SandboxError::Unsupported {
                field: "linux.devices",
                reason: format!(
                    "{}: a wasm container cannot use device nodes (its file systems are \
                     mounted nodev); run device users as a native container of the pod",
                    path.display()
                ),
            });
        }
        let apparmor_profile = match spec.apparmor_profile.as_deref() {
            None | Some("unconfined") => None,
            Some(profile) if apparmor_on_host => Some(profile.to_string()),
            Some(profile) => {
                return Err(SandboxError::Unsupported {
                    field: "process.apparmorProfile",
                    reason: format!(
                        "{profile}: AppArmor is not enabled on this node, so the profile \
                         cannot be applied"
                    ),
                })
            }
        };
        let filters = Filters::for_container(spec.seccomp.as_ref())?;
        Ok(SecurityPlan {
            filters,
            apparmor_profile,
        })
    }
}

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|value| value.trim() == "Y")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ContainerSpec {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        ContainerSpec::load(dir.path()).unwrap()
    }

    const PLAIN: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"args":["/app.wasm"],"cwd":"/","user":{"uid":0,"gid":0}}}"#;

    #[test]
    fn a_plain_spec_gets_the_baseline_filter() {
        let plan = SecurityPlan::with_apparmor(&spec(PLAIN), false).unwrap();
        assert_eq!(plan.filters, Filters::for_container(None).unwrap());
        assert_eq!(plan.apparmor_profile, None);
    }

    #[test]
    fn fields_that_cannot_be_honoured_are_named() {
        let with = |process_extra: &str, linux: &str| {
            spec(&format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
                  "process":{{"args":["/app.wasm"],"cwd":"/","user":{{"uid":0,"gid":0}}{process_extra}}},
                  "linux":{{{linux}}}}}"#
            ))
        };
        let refused = |spec: &ContainerSpec, apparmor: bool| {
            SecurityPlan::with_apparmor(spec, apparmor)
                .unwrap_err()
                .to_string()
        };
        let err = refused(
            &with(r#","selinuxLabel":"system_u:system_r:container_t:s0""#, ""),
            false,
        );
        assert!(err.contains("process.selinuxLabel"), "{err}");
        let err = refused(
            &with(
                "",
                r#""devices":[{"path":"/dev/fuse","type":"c","major":10,"minor":229}]"#,
            ),
            false,
        );
        assert!(
            err.contains("linux.devices") && err.contains("/dev/fuse"),
            "{err}"
        );
        let apparmor = with(r#","apparmorProfile":"cri-containerd.apparmor.d""#, "");
        let err = refused(&apparmor, false);
        assert!(err.contains("process.apparmorProfile"), "{err}");
        let plan = SecurityPlan::with_apparmor(&apparmor, true).unwrap();
        assert_eq!(
            plan.apparmor_profile.as_deref(),
            Some("cri-containerd.apparmor.d")
        );
        let unconfined = with(r#","apparmorProfile":"unconfined""#, "");
        assert!(SecurityPlan::with_apparmor(&unconfined, false).is_ok());
    }
}
