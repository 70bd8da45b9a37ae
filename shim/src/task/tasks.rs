//! The containers one shim serves, and what the Task API does to them: each operation asks
//! the container's lifecycle whether it is legal, lets the back end act, records the new
//! state and publishes what containerd must hear.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxResources;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;
use tracing::{info, warn, Instrument};

use super::container::{refusal, wait_for_exit, Container, Placement};
use super::events::{publish, EventSink};
use super::lifecycle::{Operation, Status};
use crate::backend::{Backend, Created};
use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::exits::{ExitRouter, ExitStatus};
use crate::rootfs;
use crate::sandbox::cgroup::oom::OomWatch;
use crate::sandbox::Cgroup;

pub struct Tasks {
    pub(super) namespace: String,
    pub(super) content: ContentStore,
    pub(super) events: Arc<dyn EventSink>,
    pub(super) exits: Arc<ExitRouter>,
    containers: Mutex<HashMap<String, Container>>,
    /// The ids whose Create is between its first step and its registration (or its undoing).
    creating: watch::Sender<BTreeSet<String>>,
    pub(super) shutdown: Arc<ExitSignal>,
    /// Task API requests being served (all but Wait and Shutdown).
    requests: watch::Sender<usize>,
}

/// Counts one Task API request as being served until dropped.
pub struct Busy(Arc<Tasks>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .requests
            .send_modify(|requests| *requests = requests.saturating_sub(1));
    }
}

/// Marks the Create of one id as in flight until dropped. It travels with the Create's own
/// task, which runs to its end even when containerd gives up on the request.
pub struct CreateInFlight {
    tasks: Arc<Tasks>,
    id: String,
}

impl Drop for CreateInFlight {
    fn drop(&mut self) {
        self.tasks.creating.send_modify(|creating| {
            creating.remove(&self.id);
        });
    }
}

impl Tasks {
    pub fn new(
        namespace: &str,
        content: ContentStore,
        events: Arc<dyn EventSink>,
        exits: Arc<ExitRouter>,
        shutdown: Arc<ExitSignal>,
    ) -> Self {
        Tasks {
            namespace: namespace.to_string(),
            content,
            events,
            exits,
            containers: Mutex::new(HashMap::new()),
            creating: watch::channel(BTreeSet::new()).0,
            shutdown,
            requests: watch::channel(0).0,
        }
    }

    pub(super) fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn with_container<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> Result<T>,
    ) -> Result<T> {
        let mut containers = self.containers();
        let container = containers
            .get_mut(id)
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        f(container)
    }

    /// Puts the pod of container `id` on the current span (the Task API call's), so that
    /// every line about the container names its pod too.
    pub fn record_pod(&self, id: &str) {
        let pod = self
            .containers()
            .get(id)
            .and_then(|container| container.pod.clone());
        if let Some(pod) = pod {
            tracing::Span::current().record("pod", pod.as_str());
        }
    }

    fn backend(&self, id: &str) -> Result<Arc<dyn Backend>> {
        self.with_container(id, |container| Ok(Arc::clone(&container.backend)))
    }

    /// The back end of a container whose state allows `operation`.
    fn backend_for(&self, id: &str, operation: Operation) -> Result<Arc<dyn Backend>> {
        self.with_container(id, |container| {
            container.check(operation)?;
            Ok(Arc::clone(&container.backend))
        })
    }

    /// Takes a container its back end has made into the shim's care: OOM events, the exit
    /// watch, and the container's place in the registry.
    pub fn register(self: &Arc<Self>, placement: Placement, created: Created) {
        let Created {
            backend,
            pid,
            exited,
            console,
        } = created;
        let oom_watch = backend
            .cgroup()
            .and_then(|cgroup| self.watch_oom(&placement.id, cgroup));
        let (exit_sender, exit_watch) = watch::channel(None);
        let id = placement.id.clone();
        let container = Container::new(placement, pid, backend, console, exit_watch, oom_watch);
        self.containers().insert(id.clone(), container);
        tokio::spawn(Arc::clone(self).on_exit(id.clone(), id, pid, exited, exit_sender));
    }

    /// Records the exit when a process (a runner, a runc init, an exec) ends, publishes
    /// TaskExit, then releases Wait and Delete. `process_id` is the container id for the
    /// container's own process, the exec id for an exec.
    pub(super) async fn on_exit(
        self: Arc<Self>,
        id: String,
        process_id: String,
        pid: i32,
        exited: oneshot::Receiver<ExitStatus>,
        exit_sender: watch::Sender<Option<ExitStatus>>,
    ) {
        let Ok(status) = exited.await else {
            return;
        };
        info!(id = %id, process = %process_id, pid, code = status.code, "process exited");
        let is_init = process_id == id;
        // Stopped at once, before TaskExit (whose publishing can take seconds): a Kill from
        // now on is answered "process finished" instead of signalling the pid. Wait and
        // Delete are released only after TaskExit, the order containerd relies on.
        let _ = self.with_container(&id, |container| {
            if is_init {
                container.lifecycle.exited();
            } else {
                container.exec_mut(&process_id)?.lifecycle.exited();
            }
            Ok(())
        });
        if is_init {
            if let Ok(backend) = self.backend(&id) {
                backend.init_exited().await;
            }
        }
        publish(
            self.events.as_ref(),
            TaskExit {
                container_id: id.clone(),
                id: process_id.clone(),
                pid: pid as u32,
                exit_status: status.code,
                exited_at: MessageField::some(status.at.clone()),
                ..Default::default()
            },
        )
        .await;
        let _ = exit_sender.send(Some(status));
    }

    pub async fn start(&self, id: &str) -> Result<i32> {
        let (backend, pid) = self.with_container(id, |container| {
            container
                .lifecycle
                .start()
                .map_err(|refused| refusal(id, refused))?;
            Ok((Arc::clone(&container.backend), container.pid))
        })?;
        backend.start().await?;
        Ok(pid)
    }

    /// Pause (true) or Resume (false).
    pub async fn freeze(&self, id: &str, frozen: bool) -> Result<()> {
        let operation = if frozen {
            Operation::Pause
        } else {
            Operation::Resume
        };
        let backend = self.backend_for(id, operation)?;
        backend.freeze(frozen).await?;
        self.with_container(id, |container| {
            // An exit that came in meanwhile wins: the container stays stopped.
            let _ = container.lifecycle.frozen(frozen);
            Ok(())
        })
    }

    pub async fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let backend = self.backend_for(id, Operation::Kill)?;
        backend.kill(signal, all).await
    }

    /// Delete of a created or stopped container: the back end ends a container that never
    /// started, the exit is awaited, then everything the container held is given back.
    ///
    /// Runs on a task of its own: a request containerd gives up on (its deadline passed)
    /// would otherwise be dropped between removing the container and unmounting its root.
    pub async fn delete(self: &Arc<Self>, id: &str) -> Result<(i32, ExitStatus)> {
        let tasks = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move { tasks.delete_to_the_end(&id).await }.in_current_span())
            .await
            .map_err(|err| Error::Internal(format!("Delete ended abnormally: {err}")))?
    }

    pub(super) async fn delete_to_the_end(&self, id: &str) -> Result<(i32, ExitStatus)> {
        let (backend, never_started, exit) = self.with_container(id, |container| {
            container.check(Operation::Delete)?;
            Ok((
                Arc::clone(&container.backend),
                container.status() == Status::Created,
                container.exit_watch(),
            ))
        })?;
        backend.delete(never_started).await?;
        let exit_status = wait_for_exit(exit)
            .await
            .ok_or_else(|| Error::Internal(format!("the exit status of {id} was lost")))?;
        let mut container = self
            .containers()
            .remove(id)
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        if let Err(refused) = container.lifecycle.deleted() {
            warn!(%refused, "deleted in an unexpected state");
        }
        if let Some(watch) = &container.oom_watch {
            watch.abort();
        }
        container.backend.release().await;
        if container.rootfs_mounted {
            rootfs::unmount(&container.rootfs);
        }
        Ok((container.pid, exit_status))
    }

    /// Every process of the container; of a stopped one, the process it was. containerd
    /// 1.7 and later, loading its shims after a restart, take a shim whose task lists no
    /// pid (or whose Pids fails) for one that never got its task, and delete the task: a
    /// container that ended while containerd was down would lose its exit status.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let (status, pid, backend) =
            self.with_container(id, |c| Ok((c.status(), c.pid, Arc::clone(&c.backend))))?;
        if status == Status::Stopped {
            return Ok(vec![pid]);
        }
        Ok(backend.pids())
    }

    pub fn stats(&self, id: &str) -> Result<Any> {
        self.backend(id)?.stats(id)
    }

    /// New `linux.resources` (OCI JSON) for a container.
    pub async fn update(&self, id: &str, json: &[u8]) -> Result<()> {
        let resources: LinuxResources = serde_json::from_slice(json)
            .map_err(|err| Error::InvalidRequest(format!("malformed resources: {err}")))?;
        self.backend(id)?.update(&resources, json).await
    }

    /// The exit status of the container's own process, once known.
    pub async fn wait(&self, id: &str) -> Result<ExitStatus> {
        let exit = self.with_container(id, |container| Ok(container.exit_watch()))?;
        wait_for_exit(exit)
            .await
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))
    }

    /// Counts a request as being served until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.requests.send_modify(|requests| *requests += 1);
        Busy(Arc::clone(self))
    }

    /// Waits until no request is being served.
    pub async fn requests_done(&self) {
        let mut requests = self.requests.subscribe();
        let _ = requests.wait_for(|requests| *requests == 0).await;
    }

    /// Marks the Create of `id` as in flight until the returned guard is dropped; refused
    /// while `id` exists or is being created (containerd retrying a Create it gave up on).
    pub fn begin_create(self: &Arc<Self>, id: &str) -> Result<CreateInFlight> {
        let registered = self.containers().contains_key(id);
        let mut began = false;
        self.creating.send_if_modified(|creating| {
            began = !registered && creating.insert(id.to_string());
            began
        });
        if !began {
            return Err(Error::ContainerExists(id.to_string()));
        }
        Ok(CreateInFlight {
            tasks: Arc::clone(self),
            id: id.to_string(),
        })
    }

    /// Waits until no Create is in flight, then tells whether the shim serves no container
    /// (and so may exit). A Create for the next container of the group can arrive just as
    /// the last one is deleted; like runc's shim, Shutdown lets it finish and then decides.
    pub async fn idle_once_creates_end(&self) -> bool {
        let mut creating = self.creating.subscribe();
        let _ = creating.wait_for(BTreeSet::is_empty).await;
        self.containers().is_empty()
    }

    /// Publishes TaskOOM for each OOM kill in the container's cgroup until the cgroup goes.
    fn watch_oom(self: &Arc<Self>, id: &str, cgroup: &Cgroup) -> Option<AbortHandle> {
        let mut watch = match OomWatch::new(cgroup) {
            Ok(watch) => watch,
            Err(err) => {
                warn!(error = %err, "no OOM events for this container");
                return None;
            }
        };
        let events = Arc::clone(&self.events);
        let container_id = id.to_string();
        let span = tracing::info_span!("oom", id = %container_id);
        let task = tokio::spawn(
            async move {
                while let Some(kills) = watch.next_kill().await {
                    info!(kills, "OOM kill in the container's cgroup");
                    publish(
                        events.as_ref(),
                        TaskOOM {
                            container_id: container_id.clone(),
                            ..Default::default()
                        },
                    )
                    .await;
                }
            }
            .instrument(span),
        );
        Some(task.abort_handle())
    }
}
