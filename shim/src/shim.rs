//! The shim binary's three lives, as containerd invokes them:
//! `start` (spawn or reuse the server for a pod and print its address), `delete` (clean up
//! after a server that died) and, with no action, the ttrpc server itself.
//!
//! The containerd-shim crate's own bootstrap only speaks task API v3 and answers `start` in
//! the JSON form of containerd 2.x; containerd 1.6 dials the printed text as the address and
//! 1.7 refuses v3. This bootstrap answers each release in its own form (see [`crate::bootstrap`])
//! and serves the same task service under both names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::asynchronous::monitor::monitor_notify_by_pid;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal};
use containerd_shim::{Flags, StartOpts};
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim_async::{create_task, Task};
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use containerd_shim_protos::ttrpc::r#async::Server;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::bootstrap::TaskApi;
use crate::exits::now;
use crate::task::TaskService;
use crate::{backend, logging, rootfs, spec};

/// containerd's name for this runtime; the binary is `containerd-shim-wedge-v1`.
pub const RUNTIME_ID: &str = "io.containerd.wedge.v1";

/// The task service names containerd 1.x (v2) and 2.x (v3) call; the messages are the same.
const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";

/// Exit status reported for a container whose shim died: it was killed.
const KILLED_EXIT_CODE: u32 = 128 + Signal::SIGKILL as u32;

/// Failures of the shim process itself, before or around serving.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("invalid arguments: {0}")]
    Arguments(String),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {reason}")]
    Setup {
        context: &'static str,
        reason: String,
    },
}

fn io_error(context: &'static str) -> impl FnOnce(std::io::Error) -> ShimError {
    move |source| ShimError::Io { context, source }
}

fn setup_error(context: &'static str) -> impl FnOnce(String) -> ShimError {
    move |reason| ShimError::Setup { context, reason }
}

/// Runs the action containerd asked for.
pub async fn run() -> Result<(), ShimError> {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let flags =
        containerd_shim::parse(&args).map_err(|err| ShimError::Arguments(err.to_string()))?;
    if flags.version {
        let version = format!("{RUNTIME_ID} {}\n", env!("CARGO_PKG_VERSION"));
        write_stdout(version.as_bytes()).await?;
        return Ok(());
    }
    match flags.action.as_str() {
        "start" => start(&flags).await,
        "delete" => delete(&flags).await,
        "" => serve(&flags).await,
        other => Err(ShimError::Arguments(format!("unknown action {other:?}"))),
    }
}

async fn write_stdout(bytes: &[u8]) -> Result<(), ShimError> {
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(bytes)
        .await
        .map_err(io_error("cannot write to stdout"))?;
    stdout
        .flush()
        .await
        .map_err(io_error("cannot write to stdout"))
}

/// `start`: make sure a server runs for this container's group (its pod) and print its
/// address. containerd reads stdout and stderr together here, so nothing else is printed.
async fn start(flags: &Flags) -> Result<(), ShimError> {
    let bundle = std::env::current_dir().map_err(io_error("cannot read the bundle directory"))?;
    let grouping = spec::grouping_id(&bundle, &flags.id);
    let opts = StartOpts {
        id: flags.id.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    let address = spawn(opts, &grouping, Vec::new())
        .await
        .map_err(|err| ShimError::Setup {
            context: "cannot start the shim server",
            reason: err.to_string(),
        })?;
    // containerd reconnects through this file after a restart.
    std::fs::write(bundle.join("address"), &address)
        .map_err(io_error("cannot record the shim address"))?;
    let api = TaskApi::of_containerd(Path::new(&flags.publish_binary));
    write_stdout(&api.start_answer(&address)).await
}

/// `delete`: the server died; kill what it left running and unmount the rootfs.
async fn delete(flags: &Flags) -> Result<(), ShimError> {
    logging::init(false, flags.debug, &flags.id);
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(io_error("cannot read the bundle directory"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let spec = spec::ContainerSpec::load(&bundle).ok();
    let pid =
        backend::clean_up_after_crash(&bundle, spec.as_ref(), &flags.namespace, &flags.id).await;
    let rootfs = spec
        .map(|spec| spec.rootfs)
        .unwrap_or_else(|| bundle.join("rootfs"));
    rootfs::unmount(&rootfs);
    info!(id = %flags.id, "cleaned up after a dead shim");
    let response = DeleteResponse {
        pid: pid.unwrap_or_default() as u32,
        exit_status: KILLED_EXIT_CODE,
        exited_at: MessageField::some(now()),
        ..Default::default()
    };
    let bytes = response
        .write_to_bytes()
        .map_err(|err| setup_error("cannot encode the delete response")(err.to_string()))?;
    write_stdout(&bytes).await
}

/// The server: the task service on the socket `start` chose, until the last container of
/// the group is deleted and containerd says Shutdown.
async fn serve(flags: &Flags) -> Result<(), ShimError> {
    logging::init(true, flags.debug, &flags.id);
    if flags.socket.is_empty() {
        return Err(ShimError::Arguments("-socket is required".into()));
    }
    // A server starts for a Create that is on its way.
    crate::sandbox::cgroup::warm_up_migration();
    // Runners are our children anyway; as subreaper we also collect anything they leave.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|err| setup_error("cannot become a subreaper")(err.to_string()))?;
    let children = signal(SignalKind::child()).map_err(io_error("cannot watch SIGCHLD"))?;
    tokio::spawn(reap_children(children));
    let mut terminate =
        signal(SignalKind::terminate()).map_err(io_error("cannot watch SIGTERM"))?;

    let socket_path = flags.socket.trim_start_matches("unix://").to_string();
    let Some(listener) = bind_socket(&socket_path)? else {
        info!(socket = %socket_path, "another server already serves this group");
        server_started()?;
        return Ok(());
    };

    let ttrpc_address = std::env::var("TTRPC_ADDRESS")
        .map_err(|_| ShimError::Arguments("TTRPC_ADDRESS is not set".into()))?;
    let publisher = RemotePublisher::new(&ttrpc_address).await.map_err(|err| {
        setup_error("cannot connect to containerd's event service")(err.to_string())
    })?;
    let shutdown = Arc::new(ExitSignal::default());
    let service = TaskService::new(
        &flags.namespace,
        &flags.address,
        publisher,
        Arc::clone(&shutdown),
    )
    .await
    .map_err(|err| setup_error("cannot start the task service")(err.to_string()))?;
    let service: Arc<dyn Task + Send + Sync> = Arc::new(service);

    let mut services = create_task(Arc::clone(&service));
    if let Some(v2) = create_task(service).remove(TASK_SERVICE_V3) {
        services.insert(TASK_SERVICE_V2.to_string(), v2);
    }
    let listener = Listener::try_from(listener).map_err(io_error("cannot listen"))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server
        .start()
        .await
        .map_err(|err| setup_error("cannot start the ttrpc server")(err.to_string()))?;
    server_started()?;
    info!(socket = %socket_path, "serving");

    tokio::select! {
        _ = shutdown.wait() => {}
        _ = terminate.recv() => info!("terminated by SIGTERM"),
    }
    info!("shutting down");
    if let Err(err) = server.shutdown().await {
        warn!(error = %err, "ttrpc server did not shut down cleanly");
    }
    let _ = std::fs::remove_file(&socket_path);
    crate::telemetry::shutdown();
    Ok(())
}

/// Binds the group's socket; `None` when a live server already owns it.
fn bind_socket(path: &str) -> Result<Option<std::os::unix::net::UnixListener>, ShimError> {
    if let Some(parent) = Path::new(path).parent() {
        std::fs::create_dir_all(parent).map_err(io_error("cannot create the socket directory"))?;
    }
    match std::os::unix::net::UnixListener::bind(path) {
        Ok(listener) => Ok(Some(listener)),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Ok(None);
            }
            // A stale socket from a server that died.
            std::fs::remove_file(path).map_err(io_error("cannot remove a stale socket"))?;
            std::os::unix::net::UnixListener::bind(path)
                .map(Some)
                .map_err(io_error("cannot bind the shim socket"))
        }
        Err(err) => Err(io_error("cannot bind the shim socket")(err)),
    }
}

/// `start` copies our stdout until it closes: closing it says the socket is ready.
fn server_started() -> Result<(), ShimError> {
    nix::unistd::dup2_stdout(std::io::stderr())
        .map_err(|err| setup_error("cannot close stdout")(err.to_string()))
}

/// Collects every exited child and announces it on the monitor, where `exits` routes it.
pub(crate) async fn reap_children(mut children: tokio::signal::unix::Signal) {
    while children.recv().await.is_some() {
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => break,
                Ok(_) => continue,
                Err(err) => {
                    error!(error = %err, "waitpid failed");
                    break;
                }
            };
            if let Err(err) = monitor_notify_by_pid(pid.as_raw(), code).await {
                warn!(pid = pid.as_raw(), error = %err, "cannot announce an exit");
            }
        }
    }
}
