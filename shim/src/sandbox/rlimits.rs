//! `process.rlimits`, set in the runner's child before exec (setrlimit is async-signal-safe),
//! so they bind compilation as well as the module.

use nix::sys::resource::{setrlimit, Resource};

use super::SandboxError;

pub struct Rlimits(Vec<(Resource, u64, u64)>);

impl Rlimits {
    pub fn from_spec(rlimits: &[(String, u64, u64)]) -> Result<Self, SandboxError> {
        rlimits
            .iter()
            .map(|(name, soft, hard)| {
                resource(name)
                    .map(|resource| (resource, *soft, *hard))
                    .ok_or_else(|| SandboxError::UnknownRlimit(name.clone()))
            })
            .collect::<Result<_, _>>()
            .map(Rlimits)
    }

    pub fn apply(&self) -> std::io::Result<()> {
        for (resource, soft, hard) in &self.0 {
            setrlimit(*resource, *soft, *hard)?;
        }
        Ok(())
    }
}

fn resource(name: &str) -> Option<Resource> {
    Some(match name {
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_specs() {
        assert!(Rlimits::from_spec(&[("RLIMIT_NOFILE".into(), 1024, 1024)]).is_ok());
        let Err(err) = Rlimits::from_spec(&[("RLIMIT_BOGUS".into(), 1, 1)]) else {
            panic!("accepted an unknown rlimit")
        };
        assert!(err.to_string().contains("RLIMIT_BOGUS"));
    }
}
