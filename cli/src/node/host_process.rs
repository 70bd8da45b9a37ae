//! Running one of the host's own programs (systemctl, rc-service, an init script) in the
//! host's namespaces, from the installer's pod. The installer image carries no nsenter and
//! no shell: the namespaces of the host's PID 1 (visible through hostPID) are opened here
//! and joined in the child between fork and exec, and the child moves itself into PID 1's
//! cgroups, so the program runs exactly as if started on the host. (Without the move, a
//! containerd started by an init script would live in the installer pod's cgroup and die with
//! it.)

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use nix::sched::CloneFlags;

use super::error::{NodeError, Result};

/// The namespaces joined, in this order. The mount namespace goes last: joining it changes
/// the child's root and working directory to the host's, and the others are opened by fd so
/// their order does not matter otherwise. The PID namespace applies to the program's own
/// children (a service manager's helpers), not to the program itself.
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// The host as its PID 1 sees it: its root (to look for programs before running them) and
/// its namespaces.
#[derive(Debug, Clone)]
pub struct HostPid1 {
    /// `/proc/1` normally; a test's stand-in elsewhere.
    proc_pid1: PathBuf,
}

impl Default for HostPid1 {
    fn default() -> Self {
        HostPid1::at("/proc/1")
    }
}

impl HostPid1 {
    pub fn at(proc_pid1: impl Into<PathBuf>) -> Self {
        HostPid1 {
            proc_pid1: proc_pid1.into(),
        }
    }

    /// PID 1's command name, for messages ("unknown" when it cannot be read: no hostPID).
    pub fn command_name(&self) -> String {
        std::fs::read_to_string(self.proc_pid1.join("comm"))
            .map(|comm| comm.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    }

    /// A host path as seen from here, through PID 1's root.
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.proc_pid1
            .join("root")
            .join(host_path.trim_start_matches('/'))
    }

    /// The first of `candidates` (absolute host paths) that is an executable file on the host.
    pub fn find_program(&self, candidates: &[&str]) -> Option<String> {
        use std::os::unix::fs::PermissionsExt;
        candidates
            .iter()
            .find(|candidate| {
                std::fs::metadata(self.path(candidate))
                    .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            })
            .map(|found| found.to_string())
    }

    /// `program` (a host path) with `args`, to be run in PID 1's namespaces. The namespace
    /// files are opened now, so a failure to reach them is an error here, not in the child.
    pub fn command(&self, program: &str, args: &[&str]) -> Result<Command> {
        let namespaces = NAMESPACES
            .iter()
            .map(|(name, flag)| {
                let path = self.proc_pid1.join("ns").join(name);
                std::fs::File::open(&path)
                    .map(|file| (OwnedFd::from(file), *flag))
                    .map_err(|source| NodeError::HostNamespace { path, source })
            })
            .collect::<Result<Vec<_>>>()?;
        let namespaces: Arc<[(OwnedFd, CloneFlags)]> = namespaces.into();
        let cgroups: Arc<[std::fs::File]> = self.cgroup_procs_files()?.into();
        let mut command = Command::new(program);
        command.args(args);
        // A minimal, host-like environment: the pod's own (its PATH, service account paths)
        // means nothing on the host.
        command
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C");
        // SAFETY: the closure runs in the forked child before exec and only makes write(2)
        // and setns(2) calls on descriptors opened before the fork, with a static buffer (no
        // allocation, no lock): async-signal-safe. The Arcs keep the descriptors open until
        // the command is dropped.
        unsafe {
            command.pre_exec(move || {
                for mut procs in cgroups.iter() {
                    // "0" is the writer itself; moved before its cgroup namespace changes, while
                    // the files opened through PID 1's root still resolve.
                    procs.write_all(b"0")?;
                }
                for (fd, flag) in namespaces.iter() {
                    nix::sched::setns(fd, *flag).map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// PID 1's `cgroup.procs` in each hierarchy it is in and the host has mounted, opened
    /// for writing through PID 1's root.
    fn cgroup_procs_files(&self) -> Result<Vec<std::fs::File>> {
        let read = |name: &str| {
            let path = self.proc_pid1.join(name);
            std::fs::read_to_string(&path)
                .map_err(|source| NodeError::HostNamespace { path, source })
        };
        let memberships = read("cgroup")?;
        let mounts = read("mountinfo")?;
        cgroup_procs_paths(&memberships, &mounts)
            .into_iter()
            .map(|host_path| {
                let path = self.path(&host_path);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|source| NodeError::HostNamespace { path, source })
            })
            .collect()
    }

    /// Runs `program args` on the host; Ok(exit success) once it ends.
    pub fn status(&self, program: &str, args: &[&str]) -> Result<bool> {
        let status = self
            .command(program, args)?
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(NodeError::io("cannot run", Path::new(program)))?;
        Ok(status.success())
    }

    /// Runs `program args` on the host and fails with its stderr when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        let output = self
            .command(program, args)?
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(NodeError::io("cannot run", Path::new(program)))?;
        if !output.status.success() {
            let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if stderr.is_empty() {
                stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
            }
            return Err(NodeError::CommandFailed {
                command: format!("{program} {}", args.join(" ")),
                status: output.status.to_string(),
                stderr: stderr.chars().take(2000).collect(),
            });
        }
        Ok(())
    }
}

/// Where PID 1's `cgroup.procs` files are, as host paths: for each line of its
/// /proc/1/cgroup (`ID:CONTROLLERS:PATH`), the cgroup mount of that hierarchy in its
/// mountinfo (cgroup2 for the unified one, else the cgroup mount with those controllers or
/// that `name=`), the path below the mount's own root.
fn cgroup_procs_paths(memberships: &str, mountinfo: &str) -> Vec<String> {
    struct CgroupMount<'a> {
        root: &'a str,
        mount_point: &'a str,
        unified: bool,
        options: Vec<&'a str>,
    }
    let mounts: Vec<CgroupMount> = mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let mut after = after.split(' ');
            let fstype = after.next()?;
            let super_options = after.nth(1).unwrap_or("");
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(CgroupMount {
                root: fields.get(3)?,
                mount_point: fields.get(4)?,
                unified: fstype == "cgroup2",
                options: super_options.split(',').collect(),
            })
        })
        .collect();
    let mut paths = Vec::new();
    for line in memberships.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mount = mounts.iter().find(|mount| {
            if controllers.is_empty() {
                mount.unified
            } else {
                !mount.unified
                    && controllers
                        .split(',')
                        .all(|controller| mount.options.contains(&controller))
            }
        });
        let Some(mount) = mount else { continue };
        let below_root = match mount.root {
            "/" => Some(path),
            root => path.strip_prefix(root),
        };
        let Some(below_root) = below_root else {
            continue;
        };
        let dir = format!(
            "{}/{}",
            mount.mount_point.trim_end_matches('/'),
            below_root.trim_start_matches('/')
        );
        let file = format!("{}/cgroup.procs", dir.trim_end_matches('/'));
        if !paths.contains(&file) {
            paths.push(file);
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid1_s_cgroups_are_found_in_either_hierarchy() {
        let mountinfo = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let memberships = "4:memory:/init\n3:cpu,cpuacct:/\n2:pids:/\n1:name=systemd:/init.scope\n0::/init.scope\n";
        assert_eq!(
            cgroup_procs_paths(memberships, mountinfo),
            [
                "/sys/fs/cgroup/memory/init/cgroup.procs",
                "/sys/fs/cgroup/cpu,cpuacct/cgroup.procs",
                "/sys/fs/cgroup/systemd/init.scope/cgroup.procs",
                "/sys/fs/cgroup/unified/init.scope/cgroup.procs",
            ]
        );
        let unified = "35 30 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup_procs_paths("0::/\n", unified),
            ["/sys/fs/cgroup/cgroup.procs"]
        );
    }

    /// This process's own PID 1 view (`/proc/self`) stands in for the host: joining one's own
    /// namespaces is allowed as root and changes nothing, so the whole path (open, fork,
    /// setns, exec) runs for real.
    #[test]
    fn a_program_runs_in_the_namespaces_it_was_given() -> anyhow::Result<()> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(());
        }
        let host = HostPid1::at("/proc/self");
        let shell = host
            .find_program(&["/usr/bin/sh", "/bin/sh"])
            .ok_or_else(|| anyhow::anyhow!("no sh"))?;
        let output = host
            .command(&shell, &["-c", "readlink /proc/self/ns/mnt; pwd"])?
            .output()?;
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout)?;
        let mut lines = text.lines();
        assert_eq!(
            lines.next().map(str::to_string),
            std::fs::read_link("/proc/self/ns/mnt")
                .ok()
                .map(|link| link.display().to_string())
        );
        // Joining a mount namespace moves to its root.
        assert_eq!(lines.next(), Some("/"));
        Ok(())
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = HostPid1::at(dir.path())
            .command("/bin/true", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ns/cgroup"), "{err}");
        assert!(err.contains("hostPID"), "{err}");
    }

    #[test]
    fn programs_are_found_under_pid1_s_root_and_must_be_executable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("root/usr/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("plain"), "").unwrap();
        std::fs::write(bin.join("tool"), "").unwrap();
        std::fs::set_permissions(bin.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let host = HostPid1::at(dir.path());
        assert_eq!(host.find_program(&["/usr/bin/plain"]), None);
        assert_eq!(
            host.find_program(&["/bin/tool", "/usr/bin/tool"]),
            Some("/usr/bin/tool".into())
        );
    }
}
