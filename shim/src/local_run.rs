//! `containerd-shim-wedge-v1 run-local BUNDLE`: one container, in the foreground, on a machine
//! without containerd — the developer's `wedge run`.
//!
//! It is the node's path, not a copy of it: the same task service takes Create, Start, Wait
//! and Delete, so the module meets the same engine, engine config, annotations, cgroup,
//! namespaces and confinement as in a pod. What containerd would supply comes from the
//! bundle's [`LocalRun`] file: the engine config's path, the image's wasm layer (instead of
//! the content store) and whether stdin is attached. The caller's own stdio is handed over by
//! its `/proc` paths, so the runner writes straight to the terminal or pipe it was given.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::{api, Task, TtrpcContext};
use containerd_shim_protos::protobuf::MessageDyn;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{debug, info_span, Instrument};
use wedge_runtime_config::local_run::{LocalRun, LOCAL_RUN_FILE};

use crate::content::ContentStore;
use crate::options;
use crate::shim::{reap_children, ShimError};
use crate::task::events::EventSink;
use crate::task::TaskService;

/// The namespace a local run's container is in (its log lines say so).
const LOCAL_NAMESPACE: &str = "wedge-local";

/// Signals the caller may send `wedge run` that go on to the module, as `ctr run` forwards
/// them.
const FORWARDED: [SignalKind; 4] = [
    SignalKind::interrupt(),
    SignalKind::terminate(),
    SignalKind::hangup(),
    SignalKind::quit(),
];

/// Runs the bundle's container to its end; its exit status.
pub async fn run(bundle: &Path) -> Result<u32, ShimError> {
    // First: a signal that came before its handler would end this process and leave the
    // container behind. Those that come during Create reach the module once it starts.
    let signals = forwarded_signals()?;
    let request = read_request(bundle)?;
    crate::logging::init_local(&request.id);
    // Runners are our children; as subreaper we also collect anything they leave.
    nix::sys::prctl::set_child_subreaper(true).map_err(|err| ShimError::Setup {
        context: "cannot become a subreaper",
        reason: err.to_string(),
    })?;
    let children = signal(SignalKind::child()).map_err(|source| ShimError::Io {
        context: "cannot watch SIGCHLD",
        source,
    })?;
    tokio::spawn(reap_children(children));
    let span = info_span!("local_run", id = %request.id, namespace = LOCAL_NAMESPACE);
    let status = run_container(bundle, request, signals)
        .instrument(span)
        .await;
    crate::telemetry::shutdown();
    status
}

fn read_request(bundle: &Path) -> Result<LocalRun, ShimError> {
    let path = bundle.join(LOCAL_RUN_FILE);
    let text = std::fs::read(&path).map_err(|source| ShimError::Io {
        context: "cannot read the local run request",
        source,
    })?;
    serde_json::from_slice(&text)
        .map_err(|err| ShimError::Arguments(format!("{}: {err}", path.display())))
}

async fn run_container(
    bundle: &Path,
    request: LocalRun,
    signals: mpsc::UnboundedReceiver<i32>,
) -> Result<u32, ShimError> {
    let service = TaskService::with_events(
        LOCAL_NAMESPACE,
        ContentStore::local(request.wasm_layer.clone()),
        Arc::new(DebugLog),
        Arc::new(ExitSignal::default()),
    )
    .await
    .map_err(task_error("cannot start the task service"))?;
    let ctx = TtrpcContext::default();
    let id = request.id.clone();
    let own_fd = |fd: i32| format!("/proc/{}/fd/{fd}", std::process::id());
    let create = api::CreateTaskRequest {
        id: id.clone(),
        bundle: bundle.display().to_string(),
        stdin: if request.stdin {
            own_fd(0)
        } else {
            String::new()
        },
        stdout: own_fd(1),
        stderr: own_fd(2),
        options: request
            .engine_config
            .as_deref()
            .map(options::config_path_option)
            .transpose()
            .map_err(task_error("cannot pass the engine config"))?
            .into(),
        ..Default::default()
    };
    service
        .create(&ctx, create)
        .await
        .map_err(rpc_error("create"))?;
    let outcome = start_and_wait(&service, &ctx, &id, signals).await;
    let deleted = service
        .delete(
            &ctx,
            api::DeleteRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .await;
    let status = outcome?;
    deleted.map_err(rpc_error("delete"))?;
    Ok(status)
}

async fn start_and_wait(
    service: &TaskService,
    ctx: &TtrpcContext,
    id: &str,
    mut signals: mpsc::UnboundedReceiver<i32>,
) -> Result<u32, ShimError> {
    let start = api::StartRequest {
        id: id.to_string(),
        ..Default::default()
    };
    service
        .start(ctx, start)
        .await
        .map_err(rpc_error("start"))?;
    let wait = api::WaitRequest {
        id: id.to_string(),
        ..Default::default()
    };
    let mut waiting = std::pin::pin!(service.wait(ctx, wait));
    loop {
        tokio::select! {
            waited = &mut waiting => {
                return waited.map(|response| response.exit_status).map_err(rpc_error("wait"));
            }
            Some(signal) = signals.recv() => {
                debug!(signal, "forwarding a signal to the module");
                let kill = api::KillRequest {
                    id: id.to_string(),
                    signal: signal as u32,
                    ..Default::default()
                };
                if let Err(err) = service.kill(ctx, kill).await {
                    debug!(error = %err, "the module could not be signalled");
                }
            }
        }
    }
}

/// The signals of [`FORWARDED`] as they arrive, by number.
fn forwarded_signals() -> Result<mpsc::UnboundedReceiver<i32>, ShimError> {
    let (send, receive) = mpsc::unbounded_channel();
    for kind in FORWARDED {
        let mut stream = signal(kind).map_err(|source| ShimError::Io {
            context: "cannot watch signals",
            source,
        })?;
        let send = send.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if send.send(kind.as_raw_value()).is_err() {
                    return;
                }
            }
        });
    }
    Ok(receive)
}

fn rpc_error(what: &'static str) -> impl FnOnce(containerd_shim_protos::ttrpc::Error) -> ShimError {
    move |err| {
        let reason = match err {
            containerd_shim_protos::ttrpc::Error::RpcStatus(status) => status.message().to_string(),
            other => other.to_string(),
        };
        ShimError::Setup {
            context: what,
            reason,
        }
    }
}

fn task_error(context: &'static str) -> impl FnOnce(crate::Error) -> ShimError {
    move |err| ShimError::Setup {
        context,
        reason: err.to_string(),
    }
}

/// A local run has nobody to hear task events; they go to the debug log.
struct DebugLog;

#[async_trait]
impl EventSink for DebugLog {
    async fn publish(&self, topic: String, _event: Box<dyn MessageDyn>) {
        debug!(%topic, "event");
    }
}
