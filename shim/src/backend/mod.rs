//! The two ways a container runs, behind one interface: a wasm runner ([`wasm`]) or a Linux
//! container under runc ([`native`]). The task service decides nothing about either: it asks
//! [`plan`] which one a container needs, has that back end create it, and from then on calls
//! [`Backend`]. Every difference between the two lives in its back end's module.

pub mod native;
pub mod plan;
pub mod wasm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxResources;
use tokio::sync::oneshot;
use tracing::warn;
use wedge_runtime_config::EngineConfig;

use crate::error::{Error, Result};
use crate::exits::{ExitRouter, ExitStatus};
use crate::runc::Console;
use crate::sandbox::{Cgroup, CgroupError, Driver};
use crate::spec::ContainerSpec;
use crate::stdio::StdioPaths;

/// Everything Create knows about a container, for the back end that makes it.
pub struct CreateRequest<'a> {
    pub id: &'a str,
    pub namespace: &'a str,
    pub bundle: &'a Path,
    pub spec: ContainerSpec,
    pub stdio: &'a StdioPaths,
    /// The client asked for a terminal (the spec may ask too).
    pub terminal: bool,
    pub engine_config: &'a EngineConfig,
    pub driver: Driver,
    pub exits: &'a Arc<ExitRouter>,
    /// Set when containerd stops waiting for this Create.
    pub given_up: GivenUp,
}

/// Tells a Create that nobody waits for it any more (the request's deadline passed): a
/// back end may stop a long step early, through its own error path.
#[derive(Clone)]
pub struct GivenUp(tokio::sync::watch::Receiver<bool>);

impl GivenUp {
    pub fn new(given_up: tokio::sync::watch::Receiver<bool>) -> Self {
        GivenUp(given_up)
    }

    /// Never resolves while the request is still waited for.
    pub async fn wait(&self) {
        let mut given_up = self.0.clone();
        if given_up.wait_for(|given_up| *given_up).await.is_err() {
            // The sender went without giving up: the answer was delivered.
            std::future::pending::<()>().await;
        }
    }
}

/// A container its back end has made: waiting for Start.
pub struct Created {
    pub backend: Arc<dyn Backend>,
    pub pid: i32,
    /// Resolves when the container's process (the runner, runc's init) exits.
    pub exited: oneshot::Receiver<ExitStatus>,
    /// The terminal of a container started with one.
    pub console: Option<Console>,
}

/// A process to add to a running container (`kubectl exec`).
pub struct ExecRequest<'a> {
    /// The OCI process spec containerd sent, written to the bundle.
    pub process: &'a Path,
    pub pid_file: &'a Path,
    pub stdio: &'a StdioPaths,
    pub terminal: bool,
}

/// What the task service asks of a container once it exists. The task service has already
/// checked the container's state (see `task::lifecycle`); a back end only acts.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The cgroup whose OOM kills and metrics are the container's, if the shim can see one.
    fn cgroup(&self) -> Option<&Cgroup>;

    /// Lets the created container run.
    async fn start(&self) -> Result<()>;

    /// Signals the container's process; with `all`, every process of the container.
    async fn kill(&self, signal: Signal, all: bool) -> Result<()>;

    /// Pause (true) or resume (false).
    async fn freeze(&self, frozen: bool) -> Result<()>;

    /// New `linux.resources`; `json` is the same resources as the client sent them.
    async fn update(&self, resources: &LinuxResources, json: &[u8]) -> Result<()>;

    /// Every process of the running container.
    fn pids(&self) -> Vec<i32>;

    /// Starts an extra process in the running container; its pid and terminal.
    async fn exec(&self, request: ExecRequest<'_>) -> Result<(i32, Option<Console>)>;

    /// Whether [`Backend::exec`] can work at all (checked when the exec is added).
    fn supports_exec(&self) -> bool;

    /// The container's own process has exited (before TaskExit is published).
    async fn init_exited(&self);

    /// Delete, before the exit is awaited: ends a container that never started.
    /// `never_started` is true when the container is still created.
    async fn delete(&self, never_started: bool) -> Result<()>;

    /// Delete, after the exit: gives back what the back end made for the container.
    async fn release(&self);

    /// The container's cgroup metrics, in the message containerd decodes for CRI.
    fn stats(&self, id: &str) -> Result<Any> {
        let cgroup = self.cgroup().ok_or(Error::Unsupported {
            operation: "stats without a cgroup",
        })?;
        let metrics = cgroup.metrics().map_err(|err| sandbox_error(id, err))?;
        metrics
            .to_any()
            .map_err(|err| Error::Internal(format!("cannot encode the metrics of {id}: {err}")))
    }
}

pub(crate) fn sandbox_error(id: &str, source: impl Into<crate::sandbox::SandboxError>) -> Error {
    Error::Sandbox {
        id: id.to_string(),
        source: source.into(),
    }
}

/// `shim delete` after the serving shim died: kills what it left running (a runner, a runc
/// container) and removes what it made, by what the bundle records. The runner's pid, if
/// one was recorded.
pub async fn clean_up_after_crash(
    bundle: &Path,
    spec: Option<&ContainerSpec>,
    namespace: &str,
    id: &str,
) -> Option<i32> {
    let pid = wasm::kill_stray_runner(bundle);
    if !native::clean_up_after_crash(bundle, id) {
        if let Some(spec) = spec {
            wasm::remove_cgroup_after_crash(bundle, spec, namespace, id).await;
        }
    }
    pid
}

/// Runs a cgroup operation that can wait in the kernel (a migration waits for an RCU grace
/// period, a freeze or a busy rmdir is polled, a limit write can sit in reclaim) on a
/// blocking thread, so that the pod's other containers are served meanwhile.
pub(crate) async fn off_the_event_loop<T: Send + 'static>(
    cgroup: Cgroup,
    operation: impl FnOnce(&Cgroup) -> std::result::Result<T, CgroupError> + Send + 'static,
) -> std::result::Result<T, CgroupError> {
    let path: PathBuf = cgroup.path().to_path_buf();
    tokio::task::spawn_blocking(move || operation(&cgroup))
        .await
        .unwrap_or_else(|err| {
            Err(CgroupError::Io {
                action: "finish an operation on",
                path,
                source: std::io::Error::other(err.to_string()),
            })
        })
}

/// Removes a cgroup the shim made; a failure is logged (Delete must not fail over it).
pub(crate) async fn remove_cgroup(cgroup: Cgroup) {
    if let Err(err) = off_the_event_loop(cgroup, Cgroup::remove).await {
        warn!(error = %err, "cannot remove the container's cgroup");
    }
}
