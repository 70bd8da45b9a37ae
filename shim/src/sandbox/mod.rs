//! What confines a wasm container before any of its code runs: its cgroup with runc's device
//! policy, its namespaces, its rlimits (all set up by the shim around the runner's exec), and
//! what the runner applies to itself before the guest's first instruction: the identity
//! (`privileges`), the spec's security fields (`security`) and seccomp (`seccomp`).

pub mod cgroup;
pub mod descriptors;
pub mod namespaces;
pub mod privileges;
pub mod rlimits;
pub mod seccomp;
pub mod security;

use std::path::PathBuf;

pub use cgroup::devices::DevicePolicy;
pub use cgroup::path::Driver;
pub use cgroup::{Cgroup, CgroupError};
pub use namespaces::Namespaces;
pub use rlimits::Rlimits;

use crate::spec::ContainerSpec;

/// What the shim sets up around one wasm runner: the cgroup (made and limited before the
/// runner exists, joined right after its exec, before it reads the module) and what the
/// runner's child does between fork and exec.
pub struct RunnerSandbox {
    pub cgroup: Cgroup,
    pub before_exec: BeforeExec,
}

impl RunnerSandbox {
    /// Opens the namespaces to join, checks the rlimits, creates and limits the cgroup.
    /// On error nothing is left behind.
    pub fn create(
        spec: &ContainerSpec,
        namespace: &str,
        id: &str,
        driver: Driver,
    ) -> Result<Self, SandboxError> {
        let before_exec = BeforeExec {
            namespaces: Namespaces::open(&spec.namespaces)?,
            rlimits: Rlimits::from_spec(&spec.rlimits)?,
            oom_score_adj: spec.oom_score_adj.and_then(oom_score_adj_to_write),
        };
        let devices = DevicePolicy::from_spec(&spec.device_rules).map_err(CgroupError::from)?;
        let cgroup = Cgroup::for_container(&spec.cgroups_path, namespace, id, driver)?;
        cgroup.create()?;
        let limited = cgroup
            .apply(&spec.resources)
            .and_then(|()| cgroup.apply_devices(&devices));
        if let Err(err) = limited {
            let _ = cgroup.remove();
            return Err(err.into());
        }
        Ok(RunnerSandbox {
            cgroup,
            before_exec,
        })
    }
}

/// The part of the sandbox the runner's child enters between fork and exec.
pub struct BeforeExec {
    namespaces: Namespaces,
    rlimits: Rlimits,
    oom_score_adj: Option<Vec<u8>>,
}

impl BeforeExec {
    /// True when the runner must fork into a pid namespace (the pod's or its own) once it
    /// is in its cgroup.
    pub fn forks_into_pid_namespace(&self) -> bool {
        self.namespaces.forks_into_pid_namespace()
    }

    /// Runs between fork and exec: only syscalls, no allocation.
    pub fn enter(&self) -> std::io::Result<()> {
        self.rlimits.apply()?;
        if let Some(value) = &self.oom_score_adj {
            use nix::fcntl::{open, OFlag};
            use nix::sys::stat::Mode;
            let file = open(
                c"/proc/self/oom_score_adj",
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            nix::unistd::write(&file, value)?;
        }
        self.namespaces.enter()
    }
}

/// The value to write for a requested `oomScoreAdj`, or None to keep the inherited one:
/// lowering it needs a privilege even root may lack (in a VM or a nested container), and
/// kubelet only ever asks to lower it for critical pods, where keeping the shim's value errs
/// on the safe side.
fn oom_score_adj_to_write(requested: i32) -> Option<Vec<u8>> {
    let current: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (requested > current).then(|| requested.clamp(-1000, 1000).to_string().into_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("cannot open the {kind} namespace {path}: {source}")]
    Namespace {
        kind: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "user namespaces are not supported for wasm containers (the spec asks for one); \
         run the pod with hostUsers: true"
    )]
    UserNamespace,
    #[error("unknown rlimit {0:?} in process.rlimits")]
    UnknownRlimit(String),
    #[error("{field}: {reason}")]
    Unsupported { field: &'static str, reason: String },
    #[error("{0}")]
    Seccomp(#[from] seccomp::SeccompError),
}

impl SandboxError {
    /// A spec asking for something Wedge cannot do, as opposed to a failure of the host.
    pub fn is_invalid_spec(&self) -> bool {
        match self {
            SandboxError::Seccomp(err) => err.is_invalid_spec(),
            other => matches!(
                other,
                SandboxError::UserNamespace
                    | SandboxError::UnknownRlimit(_)
                    | SandboxError::Unsupported { .. }
                    | SandboxError::Cgroup(CgroupError::InvalidPath(_))
            ),
        }
    }
}
