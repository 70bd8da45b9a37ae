//! The native back end: a Linux container (the pod's pause, sidecars, any image whose
//! entrypoint is not wasm) handed to runc the way containerd's own runc shim does it. runc
//! makes the cgroup; the shim only reads it for stats and OOM events.

use std::path::Path;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources};
use tracing::{info, warn};

use super::{Backend, CreateRequest, Created, ExecRequest};
use crate::error::{Error, Result};
use crate::exits::{has_exited, ProcessHandle};
use crate::runc::console::start_with_stdio;
use crate::runc::{Console, Runc};
use crate::runc::{ExecFiles, RuncContainer};
use crate::sandbox::{Cgroup, Driver};
use wedge_runtime_config::trusted_path::{self, Leaf, UntrustedPath};

pub struct NativeContainer {
    runc: RuncContainer,
    pid: i32,
    /// The init process, held since `runc create` named it (the shim reaps it).
    init: ProcessHandle,
    /// runc's cgroup of the container, found by the same path rules.
    cgroup: Option<Cgroup>,
    /// The container has no pid namespace of its own (it shares the pod's or the host's):
    /// its processes outlive its init unless the shim kills them when the init ends.
    kill_all_on_exit: bool,
}

/// Create for a Linux container: `runc create` with the container's stdio.
pub async fn create(request: CreateRequest<'_>) -> Result<Created> {
    let CreateRequest {
        id,
        namespace,
        bundle,
        spec,
        stdio,
        terminal,
        engine_config,
        driver,
        exits,
        // `runc create` is short and has no safe midpoint to stop at: an unanswered Create
        // is deleted once it ends.
        given_up: _,
    } = request;
    let runc_path = engine_config.runc.path.clone();
    tokio::task::spawn_blocking(move || trusted_runc(&runc_path))
        .await
        .map_err(|err| Error::Internal(format!("checking runc.path failed: {err}")))??;
    let runc = Runc::new(
        &engine_config.runc.path,
        &engine_config.runc.root,
        namespace,
    )
    .with_systemd_cgroup(driver == Driver::Systemd)
    .bind(exits.clone(), id, bundle);
    let terminal = terminal || spec.terminal;
    let (pid, console) =
        start_with_stdio(stdio, terminal, |stdio, socket| runc.create(stdio, socket)).await?;
    let (exited, init) = exits.watch(pid);
    info!(pid, "native container created by runc");
    let own_pid_namespace = spec
        .namespaces
        .iter()
        .any(|(kind, path)| *kind == LinuxNamespaceType::Pid && path.is_none());
    // runc made it (same path rules); the shim reads it for Stats and OOM events.
    let cgroup = Cgroup::for_container(&spec.cgroups_path, namespace, id, driver)
        .map_err(|err| warn!(error = %err, "no cgroup for stats and OOM events"))
        .ok();
    let container = NativeContainer {
        runc,
        pid,
        init,
        cgroup,
        kill_all_on_exit: !own_pid_namespace,
    };
    Ok(Created {
        backend: std::sync::Arc::new(container),
        pid,
        exited,
        console,
    })
}

#[async_trait]
impl Backend for NativeContainer {
    fn cgroup(&self) -> Option<&Cgroup> {
        self.cgroup.as_ref()
    }

    async fn start(&self) -> Result<()> {
        self.runc.start().await
    }

    /// To the init directly where that reaches everything asked for; through runc, which
    /// knows the container's processes, for `all` in a shared pid namespace.
    async fn kill(&self, signal: Signal, all: bool) -> Result<()> {
        // The init alone, or SIGKILL to an init whose pid namespace dies with it: signalled
        // at once. Through `runc kill` (a process spawned per call) the answer came late
        // enough that containerd 1.6, handling the exit meanwhile, closed the connection
        // the Kill was on ("ttrpc: closed" in StopContainer and StopPodSandbox).
        if !all || (signal == Signal::SIGKILL && !self.kill_all_on_exit) {
            return self.init.signal(signal);
        }
        self.runc.kill(signal, all).await.map_err(|err| {
            // A stop racing the container's own exit: runc finds nothing to signal before
            // the shim has reaped it. containerd expects "not found" then, as runc's own
            // shim answers.
            if has_exited(self.pid) {
                Error::ProcessFinished
            } else {
                err
            }
        })
    }

    async fn freeze(&self, frozen: bool) -> Result<()> {
        self.runc.freeze(frozen).await
    }

    async fn update(&self, _resources: &LinuxResources, json: &[u8]) -> Result<()> {
        self.runc.update(json).await
    }

    /// Every process in runc's cgroup; the init alone when it cannot be read.
    fn pids(&self) -> Vec<i32> {
        self.cgroup
            .as_ref()
            .and_then(|cgroup| cgroup.pids().ok())
            .unwrap_or_else(|| vec![self.pid])
    }

    async fn exec(&self, request: ExecRequest<'_>) -> Result<(i32, Option<Console>)> {
        let files = ExecFiles {
            process: request.process,
            pid_file: request.pid_file,
        };
        start_with_stdio(request.stdio, request.terminal, |stdio, socket| {
            self.runc.exec(files, stdio, socket)
        })
        .await
    }

    fn supports_exec(&self) -> bool {
        true
    }

    /// Kills what the init leaves behind when the container has no pid namespace of its own
    /// (as runc's own shim does): no namespace teardown ends them, and they would hold the
    /// container's stdio open, which containerd waits on before Delete.
    async fn init_exited(&self) {
        if !self.kill_all_on_exit {
            return;
        }
        match self.runc.kill(Signal::SIGKILL, true).await {
            Ok(()) | Err(Error::ProcessFinished) => {}
            Err(err) => warn!(error = %err, "cannot kill what the container's init left"),
        }
    }

    /// `runc delete --force` kills a container that never started, too.
    async fn delete(&self, _never_started: bool) -> Result<()> {
        self.runc.delete().await
    }

    /// runc removed the cgroup and its state at delete.
    async fn release(&self) {}
}

/// `runc delete --force` of a container the dead server created, if it was a native one
/// (runc is recorded in its bundle); true when it was.
pub(super) fn clean_up_after_crash(bundle: &std::path::Path, id: &str) -> bool {
    let Some(runc) = Runc::recorded_in(bundle) else {
        return false;
    };
    match runc.force_delete_blocking(id, bundle) {
        Ok(true) => {}
        Ok(false) => warn!(id, "runc delete --force failed"),
        Err(err) => warn!(id, error = %err, "cannot run runc delete"),
    }
    true
}

/// runc runs as root for every native container: the program the shim would run (found on
/// PATH as exec finds it) must be one only root can change. A runc that is not there is
/// left for runc's own error.
fn trusted_runc(path: &Path) -> std::result::Result<(), UntrustedPath> {
    let search_path = std::env::var("PATH").unwrap_or_default();
    match trusted_path::find_program(path, &search_path) {
        Some(found) => {
            trusted_path::check("runc.path", Path::new("/"), &found, Leaf::File).map(drop)
        }
        None => Ok(()),
    }
}
