//! containerd's Task API over ttrpc: each RPC is parsed, routed to [`Tasks`], its events
//! published and its errors mapped to ttrpc codes. Nothing here knows a back end.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::{self, Status as ApiStatus};
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::event::Event;
use containerd_shim::{Task, TtrpcContext, TtrpcResult};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::types::task::ProcessInfo;
use nix::sys::signal::Signal;
use tracing::{info, instrument, warn};

use super::events::{self, EventSink};
use super::lifecycle::Status;
use super::tasks::Tasks;
use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::exits::{ExitRouter, ExitStatus};
use crate::stdio::StdioPaths;

/// How long an exiting shim waits for requests still being served.
const REQUESTS_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

pub struct TaskService {
    tasks: Arc<Tasks>,
}

impl TaskService {
    /// `containerd_address` is containerd's gRPC socket, for reading image content.
    pub async fn new(
        namespace: &str,
        containerd_address: &str,
        publisher: RemotePublisher,
        shutdown: Arc<ExitSignal>,
    ) -> Result<Self> {
        let content =
            ContentStore::new(containerd_address.trim_start_matches("unix://"), namespace);
        let events = Arc::new(events::Containerd::new(publisher, namespace));
        Self::with_events(namespace, content, events, shutdown).await
    }

    /// A task service whose events go to `events`.
    pub async fn with_events(
        namespace: &str,
        content: ContentStore,
        events: Arc<dyn EventSink>,
        shutdown: Arc<ExitSignal>,
    ) -> Result<Self> {
        let exits = ExitRouter::start().await?;
        Ok(TaskService {
            tasks: Arc::new(Tasks::new(namespace, content, events, exits, shutdown)),
        })
    }

    /// The registry behind the API, for tests that place containers in it directly.
    #[cfg(test)]
    pub(super) fn tasks(&self) -> &Arc<Tasks> {
        &self.tasks
    }

    async fn publish<E: Event + 'static>(&self, event: E) {
        events::publish(self.tasks.events.as_ref(), event).await;
    }

    fn exec_state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        self.tasks.with_container(id, |container| {
            let exec = container.exec(exec_id)?;
            Ok(ProcessView {
                id: exec_id,
                pid: exec.pid(),
                status: exec.lifecycle.status(),
                stdio: &exec.stdio,
                exit: exec.exit_status(),
            }
            .response(&container.bundle, exec_id))
        })
    }
}

/// What State reports of one process, the container's own or an exec.
struct ProcessView<'a> {
    id: &'a str,
    pid: i32,
    status: Status,
    stdio: &'a StdioPaths,
    exit: Option<ExitStatus>,
}

impl ProcessView<'_> {
    fn response(self, bundle: &Path, exec_id: &str) -> api::StateResponse {
        api::StateResponse {
            id: self.id.to_string(),
            bundle: bundle.display().to_string(),
            pid: self.pid as u32,
            status: api_status(self.status).into(),
            stdin: self.stdio.stdin.clone(),
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            terminal: false,
            exit_status: self.exit.as_ref().map(|e| e.code).unwrap_or_default(),
            exited_at: self.exit.map(|e| e.at).into(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        }
    }
}

fn api_status(status: Status) -> ApiStatus {
    match status {
        Status::Created => ApiStatus::CREATED,
        Status::Running => ApiStatus::RUNNING,
        Status::Paused => ApiStatus::PAUSED,
        Status::Stopped | Status::Deleted => ApiStatus::STOPPED,
    }
}

#[async_trait]
impl Task for TaskService {
    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        let pid = self.tasks.create(req.clone()).await.inspect_err(|err| {
            warn!(error = %err, "create failed");
        })?;
        info!(pid, "container created");
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint.clone(),
            pid: pid as u32,
            ..Default::default()
        })
        .await;
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        if !req.exec_id.is_empty() {
            let pid = self.tasks.start_exec(&req.id, &req.exec_id).await?;
            info!(pid, exec_id = %req.exec_id, "exec process started");
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        let pid = self.tasks.start(&req.id).await?;
        info!(pid, "container started");
        self.publish(TaskStart {
            container_id: req.id.clone(),
            pid: pid as u32,
            ..Default::default()
        })
        .await;
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        if !req.exec_id.is_empty() {
            return Ok(self.exec_state(&req.id, &req.exec_id)?);
        }
        let response = self.tasks.with_container(&req.id, |container| {
            Ok(ProcessView {
                id: &container.id,
                pid: container.pid,
                status: container.status(),
                stdio: &container.stdio,
                exit: container.exit_status(),
            }
            .response(&container.bundle, ""))
        })?;
        Ok(response)
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty, signal = req.signal))]
    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        let signal = Signal::try_from(req.signal as i32)
            .map_err(|_| Error::InvalidRequest(format!("invalid signal {}", req.signal)))?;
        if req.exec_id.is_empty() {
            // A wasm container has exactly one process, so `all` matters only under runc.
            self.tasks.kill(&req.id, signal, req.all).await?;
        } else {
            self.tasks.kill_exec(&req.id, &req.exec_id, signal)?;
        }
        info!("signal delivered");
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        if !req.exec_id.is_empty() {
            let (pid, exit) = self.tasks.delete_exec(&req.id, &req.exec_id)?;
            return Ok(api::DeleteResponse {
                pid: pid as u32,
                exit_status: exit.code,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            });
        }
        let (pid, exit) = self.tasks.delete(&req.id).await?;
        info!(pid, code = exit.code, "container deleted");
        self.publish(TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid: pid as u32,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at.clone()),
            ..Default::default()
        })
        .await;
        Ok(api::DeleteResponse {
            pid: pid as u32,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        self.tasks.record_pod(&req.id);
        let status = if req.exec_id.is_empty() {
            self.tasks.wait(&req.id).await?
        } else {
            self.tasks.wait_exec(&req.id, &req.exec_id).await?
        };
        Ok(api::WaitResponse {
            exit_status: status.code,
            exited_at: MessageField::some(status.at),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        let processes = self
            .tasks
            .pids(&req.id)?
            .into_iter()
            .map(|pid| ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        // Whoever relays a stdin fifo (the runner, or the shim's relay thread for runc
        // processes) sees EOF when the client closes its end; nothing is held open here.
        self.tasks.with_container(&req.id, |container| {
            if !req.exec_id.is_empty() {
                container.exec(&req.exec_id)?;
            }
            Ok(())
        })?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        let task_pid = self
            .tasks
            .with_container(&req.id, |container| Ok(container.pid))
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        // One shim may serve a whole pod: it stays while any container remains.
        if self.tasks.idle_once_creates_end().await {
            info!(requested_by = %req.id, "no containers left; shim exits");
            let tasks = Arc::clone(&self.tasks);
            tokio::spawn(async move {
                // A request still being served gets its answer first: containerd's exit
                // handling can delete the last container while a StopPodSandbox's Kill is
                // running, and ttrpc's shutdown does not wait for answers in flight.
                let _ = tokio::time::timeout(REQUESTS_DRAIN, tasks.requests_done()).await;
                tasks.shutdown.signal();
            });
        }
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        self.tasks.add_exec(&req).await?;
        info!(exec_id = %req.exec_id, "exec process added");
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        let console = self.tasks.with_container(&req.id, |container| {
            let console = if req.exec_id.is_empty() {
                container.console.clone()
            } else {
                container.exec(&req.exec_id)?.console.clone()
            };
            console.ok_or_else(|| {
                Error::InvalidRequest(format!("process of {} has no terminal", req.id))
            })
        })?;
        console.resize(req.width, req.height)?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        self.tasks.freeze(&req.id, true).await?;
        info!("container paused");
        self.publish(TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        })
        .await;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        self.tasks.freeze(&req.id, false).await?;
        info!("container resumed");
        self.publish(TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        })
        .await;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        let _ = req;
        Err(Error::Unsupported {
            operation: "checkpoint",
        }
        .into())
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        let json = req
            .resources
            .as_ref()
            .map(|any| any.value.as_slice())
            .ok_or_else(|| Error::InvalidRequest("update without resources".into()))?;
        self.tasks.update(&req.id, json).await?;
        info!("resources updated");
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, pod = tracing::field::Empty))]
    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let _busy = self.tasks.busy();
        self.tasks.record_pod(&req.id);
        let stats = self.tasks.stats(&req.id)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }
}
