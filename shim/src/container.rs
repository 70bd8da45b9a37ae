//! One container's life: created → running → stopped → deleted.
//!
//! The state is derived, not stored twice: a container is created while its runner waits
//! for Start, running once started, stopped once its exit status is known.

use std::path::PathBuf;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::exits::ExitStatus;
use crate::runner::spawn::Runner;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
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
    /// Present until Start hands the module its go.
    runner: Option<Runner>,
    exit: watch::Receiver<Option<ExitStatus>>,
}

/// What Create has put together for a new container.
pub struct NewContainer {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub rootfs_mounted: bool,
    pub stdio: StdioPaths,
    pub runner: Runner,
    pub exit: watch::Receiver<Option<ExitStatus>>,
}

impl Container {
    pub fn new(parts: NewContainer) -> Self {
        Container {
            id: parts.id,
            bundle: parts.bundle,
            rootfs: parts.rootfs,
            rootfs_mounted: parts.rootfs_mounted,
            stdio: parts.stdio,
            pid: parts.runner.pid,
            runner: Some(parts.runner),
            exit: parts.exit,
        }
    }

    pub fn status(&self) -> Status {
        if self.exit.borrow().is_some() {
            Status::Stopped
        } else if self.runner.is_some() {
            Status::Created
        } else {
            Status::Running
        }
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.borrow().clone()
    }

    /// A receiver that resolves once the process has exited, usable without the lock.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }

    /// Takes the runner's control channel for Start; fails unless the container is created.
    pub fn take_runner_for_start(&mut self) -> Result<Runner> {
        let status = self.status();
        match (status, self.runner.take()) {
            (Status::Created, Some(runner)) => Ok(runner),
            _ => Err(self.wrong_state(status, "start", "created")),
        }
    }

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

/// Waits until the exit status is known.
pub async fn wait_for_exit(mut exit: watch::Receiver<Option<ExitStatus>>) -> Option<ExitStatus> {
    exit.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|status| status.clone())
}
