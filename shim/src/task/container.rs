//! What the task service keeps of one container: where it lives, its back end, its
//! lifecycle, its exit and its exec processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::exec::ExecProcess;
use super::lifecycle::{Lifecycle, Operation, Refused, Status};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::exits::ExitStatus;
use crate::runc::Console;
use crate::stdio::StdioPaths;

pub struct Container {
    pub id: String,
    /// The pod it belongs to, for log lines (see `spec::pod_label`).
    pub pod: Option<String>,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Whether the shim mounted `rootfs` and so must unmount it.
    pub rootfs_mounted: bool,
    pub stdio: StdioPaths,
    pub pid: i32,
    pub backend: Arc<dyn Backend>,
    pub lifecycle: Lifecycle,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// Exec processes by exec id.
    pub execs: HashMap<String, ExecProcess>,
    /// The task publishing TaskOOM for this container, ended at Delete.
    pub oom_watch: Option<AbortHandle>,
    /// The terminal of a container started with one.
    pub console: Option<Console>,
}

/// Where a new container lives, as Create found it.
pub struct Placement {
    pub id: String,
    pub pod: Option<String>,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub rootfs_mounted: bool,
    pub stdio: StdioPaths,
}

impl Container {
    /// A container made by its back end, waiting for Start.
    pub fn new(
        placement: Placement,
        pid: i32,
        backend: Arc<dyn Backend>,
        console: Option<Console>,
        exit: watch::Receiver<Option<ExitStatus>>,
        oom_watch: Option<AbortHandle>,
    ) -> Self {
        let Placement {
            id,
            pod,
            bundle,
            rootfs,
            rootfs_mounted,
            stdio,
        } = placement;
        Container {
            id,
            pod,
            bundle,
            rootfs,
            rootfs_mounted,
            stdio,
            pid,
            backend,
            lifecycle: Lifecycle::container(),
            exit,
            execs: HashMap::new(),
            oom_watch,
            console,
        }
    }

    pub fn status(&self) -> Status {
        self.lifecycle.status()
    }

    /// Fails unless `operation` is legal in the container's state, with the error the
    /// client gets.
    pub fn check(&self, operation: Operation) -> Result<()> {
        self.lifecycle
            .check(operation)
            .map_err(|refused| refusal(&self.id, refused))
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.borrow().clone()
    }

    /// A receiver that resolves once the process has exited, usable without the lock.
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }

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

/// The error for an operation the state of process `id` refuses. Signalling a process that
/// has exited is "not found", as containerd expects of a stop racing an exit.
pub fn refusal(id: &str, refused: Refused) -> Error {
    if refused.operation == Operation::Kill && refused.state == Status::Stopped {
        return Error::ProcessFinished;
    }
    Error::WrongState {
        id: id.to_string(),
        state: refused.state.name(),
        operation: refused.operation.name(),
        wanted: refused.wanted,
    }
}

/// Waits until the exit status is known.
pub async fn wait_for_exit(mut exit: watch::Receiver<Option<ExitStatus>>) -> Option<ExitStatus> {
    exit.wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|status| status.clone())
}
