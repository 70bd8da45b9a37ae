//! The runner's namespaces: the ones the spec names by path (the pod's network, ipc and uts
//! namespaces under CRI) are joined, the others are new. Both happen in the runner's child
//! between fork and exec, where the process is still single-threaded.
//!
//! The pid namespace is the exception: joining or creating one only applies to a process's
//! children. The pod's shared pid namespace (a path in the spec) is joined here, or a new one
//! made (no path, the default, as runc does), for the runner's children, and the runner forks
//! once into it (`runner::child::pid_namespace`). A wasm module has no process API, but a
//! guest that escapes wasm must not see, signal or limit any process outside its container.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::LinuxNamespaceType;

use super::SandboxError;

pub struct Namespaces {
    joins: Vec<(OwnedFd, CloneFlags)>,
    unshare: CloneFlags,
}

impl Namespaces {
    /// True when the runner must fork into a pid namespace: the pod's, or one of its own.
    pub fn forks_into_pid_namespace(&self) -> bool {
        self.unshare.contains(CloneFlags::CLONE_NEWPID)
            || self
                .joins
                .iter()
                .any(|(_, flag)| *flag == CloneFlags::CLONE_NEWPID)
    }
}

impl Namespaces {
    /// Opens the namespaces to join now, in the shim, so that the child only calls setns.
    pub fn open(requested: &[(LinuxNamespaceType, Option<PathBuf>)]) -> Result<Self, SandboxError> {
        let mut joins = Vec::new();
        // The runner always gets a mount namespace of its own, whatever the spec says: it
        // pivots into the container's root there, which in a shared namespace would move
        // the host's processes too.
        let mut unshare = CloneFlags::CLONE_NEWNS;
        for (kind, path) in requested {
            let (flag, name) = match kind {
                LinuxNamespaceType::Network => (CloneFlags::CLONE_NEWNET, "network"),
                LinuxNamespaceType::Ipc => (CloneFlags::CLONE_NEWIPC, "ipc"),
                LinuxNamespaceType::Uts => (CloneFlags::CLONE_NEWUTS, "uts"),
                LinuxNamespaceType::Mount => (CloneFlags::CLONE_NEWNS, "mount"),
                // After the runner has joined its cgroup would be the place for a cgroup
                // namespace; wasm cannot read /proc, so the host's view is never exposed.
                LinuxNamespaceType::Pid => (CloneFlags::CLONE_NEWPID, "pid"),
                LinuxNamespaceType::Cgroup | LinuxNamespaceType::Time => continue,
                LinuxNamespaceType::User => return Err(SandboxError::UserNamespace),
            };
            if flag == CloneFlags::CLONE_NEWNS {
                if let Some(path) = path {
                    return Err(SandboxError::Unsupported {
                        field: "linux.namespaces",
                        reason: format!(
                            "joining the mount namespace {} is not supported for wasm \
                             containers: each one gets a mount namespace of its own",
                            path.display()
                        ),
                    });
                }
                continue;
            }
            match path {
                Some(path) => {
                    let namespace_error = |source| SandboxError::Namespace {
                        kind: name,
                        path: path.clone(),
                        source,
                    };
                    let file = std::fs::File::open(path).map_err(namespace_error)?;
                    // Checked here, by name, rather than as an EINVAL from setns in the
                    // runner's pre-exec: a regular file, or another kind of namespace.
                    if !is_namespace_of_kind(&file, flag) {
                        return Err(namespace_error(std::io::Error::other(format!(
                            "it is not a {name} namespace"
                        ))));
                    }
                    joins.push((OwnedFd::from(file), flag));
                }
                None => unshare |= flag,
            }
        }
        Ok(Namespaces { joins, unshare })
    }

    /// Joins and creates the namespaces. Runs between fork and exec: setns and unshare
    /// are plain syscalls, async-signal-safe.
    pub fn enter(&self) -> std::io::Result<()> {
        for (fd, flag) in &self.joins {
            setns(fd.as_fd(), *flag)?;
        }
        if !self.unshare.is_empty() {
            unshare(self.unshare)?;
        }
        Ok(())
    }
}

/// True when `file` is a namespace of the kind `flag` names: the kernel shows an open
/// namespace as `net:[4026531840]` (its kind, then its inode) under /proc/self/fd.
fn is_namespace_of_kind(file: &std::fs::File, flag: CloneFlags) -> bool {
    let kind = match flag {
        CloneFlags::CLONE_NEWNET => "net",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWPID => "pid",
        _ => return false,
    };
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .is_ok_and(|target| target.to_string_lossy().starts_with(&format!("{kind}:[")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths_and_unshares_the_rest() {
        let namespaces = Namespaces::open(&[
            (
                LinuxNamespaceType::Network,
                Some("/proc/self/ns/net".into()),
            ),
            (LinuxNamespaceType::Ipc, None),
            (LinuxNamespaceType::Pid, None),
            (LinuxNamespaceType::Mount, None),
        ])
        .unwrap();
        assert_eq!(namespaces.joins.len(), 1);
        assert_eq!(
            namespaces.unshare,
            CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS
        );
        assert!(namespaces.forks_into_pid_namespace());
        let shared =
            Namespaces::open(&[(LinuxNamespaceType::Pid, Some("/proc/self/ns/pid".into()))])
                .unwrap();
        assert!(shared.forks_into_pid_namespace());
        assert!(!shared.unshare.contains(CloneFlags::CLONE_NEWPID));
        // No pid namespace in the spec (hostPID): the runner stays in the host's.
        let host = Namespaces::open(&[(LinuxNamespaceType::Ipc, None)]).unwrap();
        assert!(!host.forks_into_pid_namespace());
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let missing = Namespaces::open(&[(
            LinuxNamespaceType::Network,
            Some("/nonexistent/netns".into()),
        )]);
        let Err(err) = missing else {
            panic!("opened a missing namespace")
        };
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
        assert!(matches!(
            Namespaces::open(&[(LinuxNamespaceType::User, None)]),
            Err(SandboxError::UserNamespace)
        ));
        let joined_mounts =
            Namespaces::open(&[(LinuxNamespaceType::Mount, Some("/proc/self/ns/mnt".into()))]);
        let Err(err) = joined_mounts else {
            panic!("joined a mount namespace")
        };
        assert!(err.to_string().contains("linux.namespaces"), "{err}");
        // No mount namespace in the spec: the runner gets one all the same.
        let unasked = Namespaces::open(&[]).unwrap();
        assert_eq!(unasked.unshare, CloneFlags::CLONE_NEWNS);
    }

    #[test]
    fn a_path_that_is_not_a_namespace_of_its_kind_is_refused_by_name() {
        for (kind, path) in [
            (LinuxNamespaceType::Network, "/etc/hostname"),
            (LinuxNamespaceType::Network, "/proc/self/ns/ipc"),
        ] {
            let Err(err) = Namespaces::open(&[(kind, Some(path.into()))]) else {
                panic!("{path} was taken for a network namespace");
            };
            let message = err.to_string();
            assert!(
                message.contains(path) && message.contains("not a network namespace"),
                "{message}"
            );
        }
    }
}
