//! Notice of OOM kills in a container's cgroup, for the TaskOOM event kubelet turns into
//! reason `OOMKilled`. v1 signals through an eventfd registered on `memory.oom_control`; v2
//! through inotify on `memory.events`. Either way the `oom_kill` counter decides, so a wake-up
//! for another reason (v1 also signals when the cgroup is removed) is not mistaken for a kill.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

use super::{io_error, Cgroup, CgroupError, Controller, Layout};

const COUNTER_CHECKS: u32 = 50;
const COUNTER_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

pub struct OomWatch {
    wakeups: AsyncFd<OwnedFd>,
    counter: PathBuf,
    seen: u64,
    /// v1: the `memory.oom_control` file the eventfd is registered on stays open.
    _control: Option<File>,
}

impl OomWatch {
    /// Starts watching; must run inside a tokio runtime.
    pub fn new(cgroup: &Cgroup) -> Result<Self, CgroupError> {
        let dir = cgroup
            .dir(Controller::Memory)
            .ok_or(CgroupError::NoHierarchy)?;
        let sys = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |errno: Errno| CgroupError::Io {
                action,
                path,
                source: errno.into(),
            }
        };
        let (fd, counter, control) = match cgroup.layout {
            Layout::Legacy(_) => {
                let counter = dir.join("memory.oom_control");
                let control = File::open(&counter).map_err(io_error("open", &counter))?;
                let eventfd = EventFd::from_value_and_flags(
                    0,
                    EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
                )
                .map_err(sys("create an eventfd for", &counter))?;
                let registration = dir.join("cgroup.event_control");
                std::fs::write(
                    &registration,
                    format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd()),
                )
                .map_err(io_error("register for OOM events with", &registration))?;
                (OwnedFd::from(eventfd), counter, Some(control))
            }
            Layout::Unified(_) => {
                let counter = dir.join("memory.events");
                let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
                    .map_err(sys("create an inotify watch on", &counter))?;
                inotify
                    .add_watch(&counter, AddWatchFlags::IN_MODIFY)
                    .map_err(sys("watch", &counter))?;
                (OwnedFd::from(inotify), counter, None)
            }
        };
        // SAFETY: the AsyncFd owns the descriptor, so it stays open exactly as long as it is
        // registered with the reactor.
        let wakeups = unsafe { AsyncFd::register(fd) }
            .map_err(|err| io_error("poll", &counter)(err.into()))?;
        let seen = oom_kills(&counter).unwrap_or(0);
        Ok(OomWatch {
            wakeups,
            counter,
            seen,
            _control: control,
        })
    }

    /// Waits for the next OOM kill; None once the cgroup is gone.
    pub async fn next_kill(&mut self) -> Option<u64> {
        let mut buf = [0u8; 1024];
        loop {
            let mut ready = self.wakeups.readable().await.ok()?;
            match nix::unistd::read(ready.get_inner(), &mut buf) {
                Ok(_) | Err(Errno::EAGAIN) => ready.clear_ready(),
                Err(_) => return None,
            }
            // v1 notifies when the cgroup runs out of memory, just before the kernel picks
            // a victim: give the counter a moment to catch up.
            for _ in 0..COUNTER_CHECKS {
                let kills = oom_kills(&self.counter)?;
                if kills > self.seen {
                    self.seen = kills;
                    return Some(kills);
                }
                tokio::time::sleep(COUNTER_PAUSE).await;
            }
        }
    }
}

impl Cgroup {
    /// How many processes the kernel has OOM-killed in this cgroup so far; None when it
    /// cannot be read (no memory hierarchy, or the cgroup is gone).
    pub fn oom_kills(&self) -> Option<u64> {
        let dir = self.dir(Controller::Memory)?;
        let counter = match self.layout {
            Layout::Legacy(_) => dir.join("memory.oom_control"),
            Layout::Unified(_) => dir.join("memory.events"),
        };
        oom_kills(&counter)
    }
}

/// The `oom_kill` counter of `memory.oom_control` (v1) or `memory.events` (v2); None when
/// the cgroup is gone.
fn oom_kills(counter: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(counter).ok()?;
    Some(
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_v2_kill_is_noticed_and_a_removed_cgroup_ends_the_watch() {
        let root = tempfile::tempdir().unwrap();
        let cgroup = Cgroup::new(Layout::Unified(root.path().into()), "c1".into());
        cgroup.create().unwrap();
        let events = root.path().join("c1/memory.events");
        std::fs::write(&events, "oom 0\noom_kill 0\n").unwrap();
        let mut watch = OomWatch::new(&cgroup).unwrap();
        std::fs::write(&events, "oom 1\noom_kill 1\n").unwrap();
        assert_eq!(watch.next_kill().await, Some(1));
        std::fs::remove_file(&events).unwrap();
        assert_eq!(watch.next_kill().await, None);
    }
}
