//! `containerd-shim-wedge-v1 run-local BUNDLE`: one container, in the foreground, on a machine
//! without containerd — the developer's `wedge run`.
//!
//! It is the node's path, not a copy of it: the same task service takes Create, Start, Wait
//! and Delete, so the module meets the same engine, engine config, annotations, cgroup,
//! namespaces and confinement as in a pod. What containerd would supply comes from the
//! bundle's [`LocalRun`] file: the engine config's path, the image's wasm layer (instead of
//! the content store) and whether stdin is attached. Stdio goes through fifos, as containerd
//! hands it over, copied to and from the caller's own.

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
    let fifos = StdioFifos::make(bundle, request.stdin)?;
    let create = api::CreateTaskRequest {
        id: id.clone(),
        bundle: bundle.display().to_string(),
        stdin: fifos.stdin_path(),
        stdout: fifos.stdout.display().to_string(),
        stderr: fifos.stderr.display().to_string(),
        options: request
            .engine_config
            .as_deref()
            .map(options::config_path_option)
            .transpose()
            .map_err(task_error("cannot pass the engine config"))?
            .into(),
        ..Default::default()
    };
    // Open before Create, which opens the write side: no output is lost.
    let output = fifos.open_readers()?;
    service
        .create(&ctx, create)
        .await
        .map_err(rpc_error("create"))?;
    let copies = tokio::spawn(output.copy_out());
    fifos.copy_stdin();
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
    // The module's last words, until its side of the fifos is closed.
    let _ = tokio::time::timeout(OUTPUT_DRAIN, copies).await;
    let status = outcome?;
    deleted.map_err(rpc_error("delete"))?;
    Ok(status)
}

/// How long output still in the fifos may take to reach the caller after the module ended.
const OUTPUT_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The container's stdio as containerd would hand it over: fifos in the bundle, which this
/// process copies to and from its own stdio (as `ctr run` does). Reopening the caller's
/// descriptors by their `/proc` paths instead would give the module a file description of
/// its own: its output and the caller's shell would overwrite each other in a file.
struct StdioFifos {
    stdin: Option<std::path::PathBuf>,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

/// The read sides of the output fifos, opened before the module can write.
struct OutputReaders {
    stdout: tokio::net::unix::pipe::Receiver,
    stderr: tokio::net::unix::pipe::Receiver,
}

impl StdioFifos {
    fn make(bundle: &Path, stdin: bool) -> Result<Self, ShimError> {
        let make = |name: &str| {
            let path = bundle.join(name);
            nix::unistd::mkfifo(
                &path,
                nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
            )
            .map(|()| path)
            .map_err(|err| ShimError::Setup {
                context: "cannot make the stdio fifos",
                reason: err.to_string(),
            })
        };
        Ok(StdioFifos {
            stdin: stdin.then(|| make("stdin")).transpose()?,
            stdout: make("stdout")?,
            stderr: make("stderr")?,
        })
    }

    fn stdin_path(&self) -> String {
        self.stdin
            .as_ref()
            .map(|path| path.display().to_string())
            .unwrap_or_default()
    }

    fn open_readers(&self) -> Result<OutputReaders, ShimError> {
        let open = |path: &Path| {
            tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(path)
                .map_err(|source| ShimError::Io {
                    context: "cannot open an output fifo",
                    source,
                })
        };
        Ok(OutputReaders {
            stdout: open(&self.stdout)?,
            stderr: open(&self.stderr)?,
        })
    }

    /// Copies this process's stdin to the module until the caller's end of input; the
    /// runner opened its side at Create.
    fn copy_stdin(&self) {
        let Some(path) = &self.stdin else {
            return;
        };
        let Ok(mut fifo) = tokio::net::unix::pipe::OpenOptions::new().open_sender(path) else {
            return;
        };
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut fifo).await;
        });
    }
}

impl OutputReaders {
    /// Copies the module's output to this process's own, each stream to its end.
    async fn copy_out(self) {
        let OutputReaders {
            mut stdout,
            mut stderr,
        } = self;
        let out = async {
            let mut to = tokio::io::stdout();
            let _ = tokio::io::copy(&mut stdout, &mut to).await;
            let _ = tokio::io::AsyncWriteExt::flush(&mut to).await;
        };
        let err = async {
            let mut to = tokio::io::stderr();
            let _ = tokio::io::copy(&mut stderr, &mut to).await;
            let _ = tokio::io::AsyncWriteExt::flush(&mut to).await;
        };
        tokio::join!(out, err);
    }
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
