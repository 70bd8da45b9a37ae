//! One container's life: created → running → stopped → deleted.
//!
//! The state is derived, not stored twice: a container is created until Start (a wasm
//! runner still waiting for its go, a runc container not yet started), running after,
//! stopped once its exit status is known.

use std::path::PathBuf;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::exec::ExecProcess;
use crate::exits::ExitStatus;
use crate::native::{Console, Runc};
use crate::runner::spawn::Runner;
use crate::sandbox::Cgroup;

/// What runs the container.
pub enum Engine {
    /// A wasm runner; the control channel is present until Start hands the module its go.
    /// The shim made its cgroup and removes it at Delete.
    Wasm {
        runner: Option<Runner>,
        paused: bool,
    },
    /// A Linux container under runc.
    Native {
        runc: Runc,
        started: bool,
        paused: bool,
        /// The container has no pid namespace of its own (it shares the pod's or the host's):
        /// its processes outlive its init unless the shim kills them when the init ends.
        kill_all_on_exit: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    /// Frozen by Pause.
    Paused,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// The stdio strings containerd gave at Create, reported back by State.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Whether the shim mounted `rootfs` and so must unmount it.
    pub rootfs_mounted: bool,
    pub stdio: StdioPaths,
    pub pid: i32,
    engine: Engine,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// Exec processes by exec id (native containers only).
    pub execs: HashMap<String, ExecProcess>,
    /// The container's cgroup: made by the shim for wasm, by runc for native containers.
    pub cgroup: Option<Cgroup>,
    /// The task publishing TaskOOM for this container, ended at Delete.
    pub oom_watch: Option<AbortHandle>,
    /// The terminal of a native container started with one.
    pub console: Option<Console>,
}

/// What Create has put together for a new container.
pub struct NewContainer {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub rootfs_mounted: bool,
    pub stdio: StdioPaths,
    pub pid: i32,
    pub engine: Engine,
    pub exit: watch::Receiver<Option<ExitStatus>>,
    pub cgroup: Option<Cgroup>,
    pub oom_watch: Option<AbortHandle>,
}

impl Container {
    pub fn new(parts: NewContainer) -> Self {
        Container {
            id: parts.id,
            bundle: parts.bundle,
            rootfs: parts.rootfs,
            rootfs_mounted: parts.rootfs_mounted,
            stdio: parts.stdio,
            pid: parts.pid,
            engine: parts.engine,
            exit: parts.exit,
            execs: HashMap::new(),
            cgroup: parts.cgroup,
            oom_watch: parts.oom_watch,
            console: None,
        }
    }

    pub fn status(&self) -> Status {
        let (waiting_for_start, frozen) = match &self.engine {
            Engine::Wasm { runner, paused } => (runner.is_some(), *paused),
            Engine::Native {
                started, paused, ..
            } => (!started, *paused),
        };
        if self.exit.borrow().is_some() {
            Status::Stopped
        } else if waiting_for_start {
            Status::Created
        } else if frozen {
            Status::Paused
        } else {
            Status::Running
        }
    }

    /// Records a completed pause (true) or resume (false).
    pub fn set_paused(&mut self, now_paused: bool) {
        match &mut self.engine {
            Engine::Native { paused, .. } | Engine::Wasm { paused, .. } => *paused = now_paused,
        }
    }

    /// True when the shim made the cgroup and so removes it at Delete.
    pub fn owns_cgroup(&self) -> bool {
        matches!(self.engine, Engine::Wasm { .. })
    }

    /// The runc of a native container whose remaining processes are to be killed when its
    /// init ends (see [`Engine::Native`]).
    pub fn runc_to_kill_all_on_exit(&self) -> Option<&Runc> {
        match &self.engine {
            Engine::Native {
                runc,
                kill_all_on_exit: true,
                ..
            } => Some(runc),
            _ => None,
        }
    }

    /// The runc of a native container, None for wasm.
    pub fn runc(&self) -> Option<&Runc> {
        match &self.engine {
            Engine::Native { runc, .. } => Some(runc),
            Engine::Wasm { .. } => None,
        }
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.borrow().clone()
    }

    /// A receiver that resolves once the process has exited, usable without the lock.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }

    /// What Start needs, taken under the lock; fails unless the container is created. A
    /// native container counts as started from here on (runc start follows at once).
    pub fn begin_start(&mut self) -> Result<Starting> {
        let status = self.status();
        if status != Status::Created {
            return Err(self.wrong_state(status, "start", "created"));
        }
        match &mut self.engine {
            Engine::Wasm { runner, .. } => runner
                .take()
                .map(Starting::Wasm)
                .ok_or(Error::ProcessFinished),
            Engine::Native { runc, started, .. } => {
                *started = true;
                Ok(Starting::Native(runc.clone()))
            }
        }
    }

    /// Signals the process directly (wasm runners; runc containers go through `runc kill`).
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if self.status() == Status::Stopped {
            return Err(Error::ProcessFinished);
        }
        match kill(Pid::from_raw(self.pid), signal) {
            Ok(()) => Ok(()),
            Err(nix::Error::ESRCH) => Err(Error::ProcessFinished),
            Err(source) => Err(Error::Sys {
                context: "cannot signal the wasm runner",
                source,
            }),
        }
    }

    pub fn wrong_state(
        &self,
        state: Status,
        operation: &'static str,
        wanted: &'static str,
    ) -> Error {
        Error::WrongState {
            id: self.id.clone(),
            state: state.name(),
            operation,
            wanted,
        }
    }
}

impl Container {
    pub fn exec(&self, exec_id: &str) -> Result<&ExecProcess> {
        self.execs
            .get(exec_id)
            .ok_or_else(|| Error::ExecNotFound(self.id.clone(), exec_id.to_string()))
    }

    pub fn exec_mut(&mut self, exec_id: &str) -> Result<&mut ExecProcess> {
        let id = self.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::ExecNotFound(id, exec_id.to_string()))
    }
}

/// What [`Container::begin_start`] hands out.
pub enum Starting {
    Wasm(Runner),
    Native(Runc),
}

/// Waits until the exit status is known.
pub async fn wait_for_exit(mut exit: watch::Receiver<Option<ExitStatus>>) -> Option<ExitStatus> {
    exit.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|status| status.clone())
}
