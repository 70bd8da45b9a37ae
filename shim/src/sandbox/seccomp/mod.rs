//! Seccomp for the wasm runner: Wedge's own baseline, then the spec's `linux.seccomp`, as a
//! stack of filters that every thread of the runner takes on before the guest runs.
//!
//! The kernel runs every filter of a thread on each syscall and keeps the most restrictive
//! answer (kill, then trap, errno, trace, log, allow), so stacking only ever narrows: the
//! baseline holds whatever the spec says, and the spec's profile holds on top of it.
//!
//! seccompiler gives each filter one action for the syscalls it matches and one for the
//! rest, so a profile becomes one filter for its `defaultAction` (syscalls some rule matches
//! → allow, others → the default) and one per other action of its rules (matched → that
//! action, others → allow). Rules follow runc: a rule whose action is the default one is
//! redundant and skipped, conditions on distinct arguments must all hold, conditions that
//! repeat an argument are alternatives, and syscall names this arch lacks are skipped.
//!
//! Between two filters of equal action the newest one's errno wins, so the spec's filters
//! come after the baseline: a container sees the errno its profile asks for.

mod baseline;
mod install;
mod profile;

use oci_spec::runtime::LinuxSeccomp;
use seccompiler::{BackendError, BpfProgram, TargetArch};
use serde::{Deserialize, Serialize};

use baseline::baseline;
use install::install;
use profile::translate;

/// The seccomp filters of one container's runner, in the order they are installed: Wedge's
/// baseline first, then the spec's profile. They travel from the shim to the runner inside
/// its run spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filters {
    #[serde(with = "wire")]
    programs: Vec<BpfProgram>,
}

impl Filters {
    /// The baseline, and on top of it `profile` (the spec's `linux.seccomp`) when there is one.
    /// Refuses, naming the field, anything of the profile the runner cannot honour.
    pub fn for_container(profile: Option<&LinuxSeccomp>) -> Result<Filters, SeccompError> {
        let native = Native::get()?;
        let mut programs = baseline(&native)?;
        if let Some(profile) = profile {
            programs.extend(translate(profile, &native)?);
        }
        Ok(Filters { programs })
    }

    /// Installs every filter on every thread of this process (TSYNC), in order. The caller
    /// has set no_new_privs. On error some filters may already be in place, and the guest
    /// must not run.
    pub fn apply(&self) -> Result<(), SeccompError> {
        let native = Native::get()?;
        // The list came through a message: whatever it holds, the baseline comes first.
        if !self.programs.starts_with(&baseline(&native)?) {
            return Err(SeccompError::Internal(
                "the seccomp filters to apply do not start with Wedge's baseline".to_string(),
            ));
        }
        let count = self.programs.len();
        for (index, program) in self.programs.iter().enumerate() {
            install(program).map_err(|failure| failure.into_error(index + 1, count))?;
        }
        Ok(())
    }
}

/// The arch the runner runs on, as the filters name it.
struct Native {
    target: TargetArch,
    /// `AUDIT_ARCH_*`, what the kernel tells a filter in `seccomp_data.arch`.
    audit_arch: u32,
}

impl Native {
    fn get() -> Result<Native, SeccompError> {
        let arch = std::env::consts::ARCH;
        let audit_arch = match arch {
            "x86_64" => 0xC000_003E,
            "aarch64" => 0xC000_00B7,
            "riscv64" => 0xC000_00F3,
            _ => return Err(SeccompError::UnsupportedArch(arch)),
        };
        let target = TargetArch::try_from(arch).map_err(|_| SeccompError::UnsupportedArch(arch))?;
        Ok(Native { target, audit_arch })
    }
}

/// The number of a syscall on this arch, by the name libseccomp (and so every OCI profile)
/// uses; None when this arch has no such syscall.
fn syscall_number(name: &str) -> Option<i64> {
    let sysno = name
        .parse::<syscalls::Sysno>()
        .ok()
        .or_else(|| match name {
            // The syscalls crate names the generic table's newfstatat (aarch64, riscv64) after
            // its C name.
            "newfstatat" => "fstatat".parse().ok(),
            _ => None,
        })?;
    Some(i64::from(sysno.id()))
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The spec's profile asks for something the runner cannot honour.
    #[error("{field}: {reason}")]
    InvalidSpec { field: String, reason: String },
    #[error("seccomp filters are not available on {0} (Wedge builds them for x86_64, aarch64 and riscv64)")]
    UnsupportedArch(&'static str),
    #[error("{0}")]
    Internal(String),
    #[error(
        "cannot install seccomp filter {index} of {count}: no_new_privs is not set and the \
         runner lacks CAP_SYS_ADMIN"
    )]
    NoNewPrivs { index: usize, count: usize },
    #[error("cannot install seccomp filter {index} of {count}: {source}")]
    Install {
        index: usize,
        count: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot install seccomp filter {index} of {count}: thread {tid} has seccomp filters of \
         its own and cannot take these on"
    )]
    ThreadSync {
        index: usize,
        count: usize,
        tid: libc::c_long,
    },
}

impl SeccompError {
    /// A spec asking for something Wedge cannot do, as opposed to a failure of the host.
    pub fn is_invalid_spec(&self) -> bool {
        matches!(self, SeccompError::InvalidSpec { .. })
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> SeccompError {
    SeccompError::InvalidSpec {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn internal(err: &BackendError) -> SeccompError {
    SeccompError::Internal(format!("cannot build a seccomp filter: {err}"))
}

/// The filters on the wire: each instruction as `[code, jt, jf, k]`.
mod wire {
    use seccompiler::{sock_filter, BpfProgram};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Instruction = (u16, u8, u8, u32);

    pub fn serialize<S: Serializer>(
        programs: &[BpfProgram],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        programs
            .iter()
            .map(|program| {
                program
                    .iter()
                    .map(|insn| (insn.code, insn.jt, insn.jf, insn.k))
                    .collect::<Vec<Instruction>>()
            })
            .collect::<Vec<_>>()
            .serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<BpfProgram>, D::Error> {
        let programs = Vec::<Vec<Instruction>>::deserialize(deserializer)?;
        Ok(programs
            .into_iter()
            .map(|program| {
                program
                    .into_iter()
                    .map(|(code, jt, jf, k)| sock_filter { code, jt, jf, k })
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
