//! A container's cgroup on cgroup v1 (one directory per controller hierarchy) or v2 (one
//! directory in the unified tree): created before the runner runs any wasm, limits from
//! `linux.resources`, freezer for Pause/Resume, metrics for Stats, removed at Delete.
//!
//! Only cgroupfs is written: with the systemd driver the path is the unit's directory, made
//! directly rather than through systemd's D-Bus API, which a shim per pod cannot afford.

pub mod devices;
pub mod oom;
pub mod path;
mod resources;
mod stats;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use crate::spec::Resources;
pub use stats::Metrics;

/// The controllers a wasm container is limited and measured by. cpuset is left alone: a new
/// v1 cpuset cgroup starts with no CPUs and would need the parent's copied in first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Cpu,
    Cpuacct,
    Pids,
    Freezer,
    /// v1 only: on v2 the device policy is a BPF program attached to the one directory.
    Devices,
}

impl Controller {
    const ALL: [Controller; 6] = [
        Controller::Memory,
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Pids,
        Controller::Freezer,
        Controller::Devices,
    ];

    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Pids => "pids",
            Controller::Freezer => "freezer",
            Controller::Devices => "devices",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid linux.cgroupsPath {0:?}")]
    InvalidPath(String),
    #[error("no cgroup hierarchy with the memory controller is mounted")]
    NoHierarchy,
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("device policy: {0}")]
    Devices(#[from] devices::DeviceError),
    #[error("no devices cgroup hierarchy is mounted: the device policy cannot be applied")]
    NoDevicesHierarchy,
    #[error("cgroup {path} did not become {state} within {timeout:?}")]
    Stuck {
        path: PathBuf,
        state: &'static str,
        timeout: Duration,
    },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// How this host mounts cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2 alone, mounted at this directory.
    Unified(PathBuf),
    /// cgroup v1: the mount point of each controller's hierarchy.
    Legacy(Vec<(Controller, PathBuf)>),
}

impl Layout {
    /// The host's layout, read once per process from its mount table.
    pub fn host() -> Result<&'static Layout, CgroupError> {
        static HOST: OnceLock<Option<Layout>> = OnceLock::new();
        HOST.get_or_init(|| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|text| Layout::from_mountinfo(&text))
        })
        .as_ref()
        .ok_or(CgroupError::NoHierarchy)
    }

    /// v2 when a cgroup2 filesystem is mounted at `/sys/fs/cgroup` (pure v2 hosts); else
    /// the v1 hierarchies (hybrid hosts keep an empty cgroup2 at `.../unified`).
    pub fn from_mountinfo(text: &str) -> Option<Layout> {
        let mut legacy = Vec::new();
        for line in text.lines() {
            let Some((mount, fs)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = mount.split(' ').nth(4) else {
                continue;
            };
            let mut fs_fields = fs.split(' ');
            let fs_type = fs_fields.next().unwrap_or_default();
            let super_options = fs_fields.nth(1).unwrap_or_default();
            match fs_type {
                "cgroup2" if mount_point == "/sys/fs/cgroup" => {
                    return Some(Layout::Unified(PathBuf::from(mount_point)));
                }
                "cgroup" => {
                    for controller in Controller::ALL {
                        if super_options.split(',').any(|opt| opt == controller.name()) {
                            legacy.push((controller, PathBuf::from(mount_point)));
                        }
                    }
                }
                _ => {}
            }
        }
        legacy
            .iter()
            .any(|(controller, _)| *controller == Controller::Memory)
            .then_some(Layout::Legacy(legacy))
    }
}

/// One container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    layout: Layout,
    relative: PathBuf,
    /// Below this process's own cgroup in each hierarchy rather than below the roots: where
    /// the cgroupfs driver puts a relative `cgroupsPath`, as runc does.
    below_own: bool,
}

/// Marks a recorded path as one below the shim's own cgroups (see [`Cgroup::record`]).
const BELOW_OWN_PREFIX: &str = "own:";

impl Cgroup {
    pub fn new(layout: Layout, relative: PathBuf) -> Self {
        Cgroup {
            layout,
            relative,
            below_own: false,
        }
    }

    /// The cgroup the spec names for container `id`, on this host, laid out by `driver`.
    pub fn for_container(
        cgroups_path: &str,
        namespace: &str,
        id: &str,
        driver: path::Driver,
    ) -> Result<Self, CgroupError> {
        let resolved = path::resolve(cgroups_path, namespace, id, driver)?;
        Ok(Cgroup {
            layout: Layout::host()?.clone(),
            relative: resolved.path,
            below_own: resolved.below_own_cgroup,
        })
    }

    /// How [`Cgroup::from_record`] finds this cgroup again (after a shim crash).
    pub fn record(&self) -> String {
        let prefix = if self.below_own { BELOW_OWN_PREFIX } else { "" };
        format!("{prefix}{}", self.relative.display())
    }

    /// The cgroup [`Cgroup::record`] described.
    pub fn from_record(record: &str) -> Result<Self, CgroupError> {
        let (below_own, relative) = match record.strip_prefix(BELOW_OWN_PREFIX) {
            Some(rest) => (true, Path::new(rest)),
            None => (false, Path::new(record)),
        };
        let clean = !relative.as_os_str().is_empty()
            && relative
                .components()
                .all(|part| matches!(part, std::path::Component::Normal(_)));
        if !clean {
            return Err(CgroupError::InvalidPath(record.to_string()));
        }
        Ok(Cgroup {
            layout: Layout::host()?.clone(),
            relative: relative.to_path_buf(),
            below_own,
        })
    }

    pub fn is_v2(&self) -> bool {
        matches!(self.layout, Layout::Unified(_))
    }

    /// The directory of `controller` (v1), or the one directory (v2).
    fn dir(&self, controller: Controller) -> Option<PathBuf> {
        let (mount, name) = match &self.layout {
            Layout::Unified(root) => (root.clone(), ""),
            Layout::Legacy(mounts) => mounts
                .iter()
                .find(|(c, _)| *c == controller)
                .map(|(_, mount)| (mount.clone(), controller.name()))?,
        };
        let base = if self.below_own {
            own_cgroup(name).unwrap_or_default()
        } else {
            PathBuf::new()
        };
        Some(mount.join(base).join(&self.relative))
    }

    /// Every distinct directory of this cgroup (v1 hierarchies can be co-mounted).
    fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Controller::ALL
            .iter()
            .filter_map(|controller| self.dir(*controller))
            .collect();
        dirs.dedup();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    pub fn path(&self) -> &Path {
        &self.relative
    }

    /// Makes the directories (and parents), and on v2 turns on the controllers on the way.
    pub fn create(&self) -> Result<(), CgroupError> {
        if let Layout::Unified(root) = &self.layout {
            enable_v2_controllers(root, &self.relative);
        }
        for dir in self.dirs() {
            if let Err(err) = std::fs::create_dir_all(&dir) {
                // Half a cgroup is none: what the hierarchies before this one got is undone
                // (v1 makes one directory per hierarchy).
                let _ = self.remove();
                return Err(io_error("create cgroup", &dir)(err));
            }
        }
        Ok(())
    }

    pub fn apply(&self, resources: &Resources) -> Result<(), CgroupError> {
        resources::apply(self, resources)
    }

    /// Limits which device nodes the cgroup's processes may open or create: the devices
    /// controller on v1, a BPF program on v2.
    pub fn apply_devices(&self, policy: &devices::DevicePolicy) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::Unified(root) => policy.apply_v2(&root.join(&self.relative))?,
            Layout::Legacy(_) => {
                let dir = self
                    .dir(Controller::Devices)
                    .ok_or(CgroupError::NoDevicesHierarchy)?;
                policy.apply_v1(&dir)?;
            }
        }
        Ok(())
    }

    /// Moves process `pid` (all its threads) into the cgroup, in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(io_error("join", &procs))?;
        }
        Ok(())
    }

    /// Freezes (Pause) or thaws (Resume) every process of the cgroup and waits until the
    /// kernel reports the new state.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let timeout = Duration::from_secs(5);
        let (file, value, state_file, done): (_, _, _, fn(&str, bool) -> bool) = match &self.layout
        {
            Layout::Unified(_) => (
                "cgroup.freeze",
                if frozen { "1" } else { "0" },
                "cgroup.events",
                |text, frozen| {
                    text.lines()
                        .any(|line| line == if frozen { "frozen 1" } else { "frozen 0" })
                },
            ),
            Layout::Legacy(_) => (
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
                "freezer.state",
                |text, frozen| text.trim() == if frozen { "FROZEN" } else { "THAWED" },
            ),
        };
        let dir = self
            .dir(Controller::Freezer)
            .ok_or(CgroupError::NoHierarchy)?;
        let control = dir.join(file);
        std::fs::write(&control, value).map_err(io_error("write", &control))?;
        let state = dir.join(state_file);
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&state).map_err(io_error("read", &state))?;
            if done(&text, frozen) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CgroupError::Stuck {
                    path: dir,
                    state: if frozen { "frozen" } else { "thawed" },
                    timeout,
                });
            }
            // v1 reports FREEZING while it works; asking again nudges it on.
            if !frozen || text.trim() == "FREEZING" {
                let _ = std::fs::write(&control, value);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let dir = self.dir(Controller::Pids).ok_or(CgroupError::NoHierarchy)?;
        let procs = dir.join("cgroup.procs");
        let text = std::fs::read_to_string(&procs).map_err(io_error("read", &procs))?;
        Ok(text
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect())
    }

    /// The file holding the cgroup's current memory use, in bytes.
    pub fn memory_usage_file(&self) -> Option<PathBuf> {
        let dir = self.dir(Controller::Memory)?;
        Some(match self.layout {
            Layout::Unified(_) => dir.join("memory.current"),
            Layout::Legacy(_) => dir.join("memory.usage_in_bytes"),
        })
    }

    pub fn metrics(&self) -> Result<Metrics, CgroupError> {
        stats::read(self)
    }

    /// Removes the directories. The processes are gone by now; a dying one can keep a
    /// directory busy for a moment, so EBUSY is retried briefly. Missing is fine.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        for dir in self.dirs() {
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => break,
                    Err(err)
                        if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(err) => return Err(io_error("remove cgroup", &dir)(err)),
                }
            }
        }
        Ok(())
    }
}

/// Makes the next migration into a cgroup cheap, in the background.
///
/// Moving a process between cgroups takes a global lock whose first writer waits for an
/// RCU grace period (13 ms here, most of a wasm container's Create); writers that follow
/// within about a grace period do not. Re-joining our own cgroup is a migration that changes
/// nothing, so doing it while Create mounts the rootfs and reads the spec means the runner's
/// own migration finds the lock warm. Best effort: failures only cost the time back.
pub fn warm_up_migration() {
    let _ = std::thread::Builder::new()
        .name("cgroup-warm-up".into())
        .stack_size(32 * 1024)
        .spawn(|| {
            let Ok(Some(procs)) = Layout::host().map(own_cgroup_procs) else {
                return;
            };
            let _ = std::fs::write(procs, std::process::id().to_string());
        });
}

/// `cgroup.procs` of the cgroup this process is in, in the memory hierarchy (v1) or the
/// unified tree (v2).
fn own_cgroup_procs(layout: &Layout) -> Option<PathBuf> {
    let (root, name) = match layout {
        Layout::Unified(root) => (root.clone(), ""),
        Layout::Legacy(mounts) => (
            mounts
                .iter()
                .find(|(controller, _)| *controller == Controller::Memory)?
                .1
                .clone(),
            Controller::Memory.name(),
        ),
    };
    Some(root.join(own_cgroup(name)?).join("cgroup.procs"))
}

/// The cgroup this process is in, relative to the hierarchy root, in the v1 hierarchy of
/// `controller` (they can differ: a node agent may have moved it in some only), or with ""
/// in the unified tree. Read once per process.
fn own_cgroup(controller: &str) -> Option<PathBuf> {
    static OWN: OnceLock<String> = OnceLock::new();
    let membership =
        OWN.get_or_init(|| std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    membership.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|name| name == controller)
        };
        matches.then(|| PathBuf::from(path.trim_start_matches('/')))
    })
}

/// On v2 a controller's files appear in a cgroup only when every ancestor lists it in
/// `cgroup.subtree_control`. Best effort: a controller the root does not offer stays off
/// and its limit is reported when written.
fn enable_v2_controllers(root: &Path, relative: &Path) {
    let mut dir = root.to_path_buf();
    let wanted = ["+memory", "+cpu", "+pids"];
    for part in relative.iter() {
        let control = dir.join("cgroup.subtree_control");
        for controller in wanted {
            let _ = std::fs::write(&control, controller);
        }
        dir.push(part);
        if !dir.exists() {
            let _ = std::fs::create_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests;
