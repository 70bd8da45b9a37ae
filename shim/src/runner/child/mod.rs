//! Inside the runner process: read the spec from the shim, confine the process, compile or
//! load the module, wait for the go, run it.

mod compile;
mod confine;
mod pid_namespace;
mod stdin;

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

use super::protocol::{
    self, ModuleSource, RunSpec, RunnerMessage, ShimMessage, CONTROL_FD, LOG_FD, MODULE_FD,
};
use crate::engine::cache::{sha256_hex, ModuleCache};
use crate::engine::command::RunLimits;
use crate::engine::{
    self, codegen_options, load_program, memory_bound, CommandContext, EngineRole, Outcome,
    PreparedCommand, PreparedServer, Program, ProgramOrigin, ReadyCommand, ReadyServer, Rejected,
};
use crate::sandbox::descriptors;
use confine::{FileView, HostFailure};
use pid_namespace::SupervisorConfinement;
use stdin::StdinRelay;

/// Exit status when the runner cannot even talk to the shim; the shim reports the details.
const SETUP_FAILED_EXIT_CODE: i32 = 125;

/// Entry point of the runner process; never returns.
pub fn main() -> ! {
    let code = run();
    // Anything the module left in Rust's stdout buffer must reach the container's stdout.
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

fn run() -> i32 {
    // Only what the shim handed over on purpose stays open: a descriptor it inherited without
    // close-on-exec is nothing the guest should ever hold.
    if descriptors::close_all_except(&[0, 1, 2, CONTROL_FD, MODULE_FD, LOG_FD]).is_err() {
        return SETUP_FAILED_EXIT_CODE;
    }
    // SAFETY: the shim hands fd 3 to exactly this process as its control socket
    // (see `launch::spawn_runner`); nothing else in this process owns it.
    let control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let Ok(read_half) = control.try_clone() else {
        return SETUP_FAILED_EXIT_CODE;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = control;

    let spec = match protocol::receive::<ShimMessage>(&mut reader) {
        Ok(ShimMessage::Prepare(spec)) => *spec,
        _ => return SETUP_FAILED_EXIT_CODE,
    };
    crate::logging::init_runner(&spec.log, &spec.container_id, spec.pod.as_deref());
    let reject = |writer: &mut UnixStream, reason: String| {
        let _ = protocol::send(writer, &RunnerMessage::Rejected { reason });
        SETUP_FAILED_EXIT_CODE
    };
    let host_failed = |writer: &mut UnixStream, reason: String| {
        let _ = protocol::send(writer, &RunnerMessage::Failed { reason });
        SETUP_FAILED_EXIT_CODE
    };
    // Prepare comes once the shim has moved this process into the container's cgroup, so
    // the child is born there.
    let confined_notice = if spec.fork_into_pid_namespace {
        let supervisor = SupervisorConfinement {
            identity: &spec.identity,
            filters: &spec.seccomp,
        };
        match pid_namespace::fork_into_pid_namespace(supervisor) {
            Ok(notice) => Some(notice),
            Err(reason) => return host_failed(&mut writer, reason),
        }
    } else {
        None
    };
    let stdin = match spec.stdin_fifo.as_deref().map(StdinRelay::open).transpose() {
        Ok(stdin) => stdin,
        Err(err) => return host_failed(&mut writer, format!("cannot attach stdin: {err}")),
    };
    let prepared = tracing::info_span!("prepare").in_scope(|| {
        let started = std::time::Instant::now();
        let prepared = prepare(&spec);
        if let Ok((_, program)) = &prepared {
            tracing::debug!(
                origin = program.label(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "module loaded and confined"
            );
        }
        prepared
    });
    let (ready, program) = match prepared {
        Ok(prepared) => prepared,
        Err(NotReady::Module(Rejected(reason))) => return reject(&mut writer, reason),
        Err(NotReady::Host(HostFailure(reason))) => return host_failed(&mut writer, reason),
    };
    // Confined from here on: threads started now inherit it.
    if let Some(notice) = confined_notice {
        if let Err(reason) = notice.send() {
            return host_failed(&mut writer, reason);
        }
    }
    if let Some(stdin) = stdin {
        if let Err(err) = stdin.start() {
            return host_failed(&mut writer, format!("cannot start the stdin relay: {err}"));
        }
    }
    let program_label = program.label();
    if protocol::send(&mut writer, &RunnerMessage::Ready { program }).is_err() {
        return SETUP_FAILED_EXIT_CODE;
    }
    match protocol::receive::<ShimMessage>(&mut reader) {
        Ok(ShimMessage::Start) => {}
        // The shim deleted the container before starting it, or went away.
        _ => return SETUP_FAILED_EXIT_CODE,
    }
    drop((reader, writer));
    if let (Primed::Command(_), Some(timeout)) = (&ready, spec.options.timeout) {
        if let Err(err) = watch_deadline(timeout) {
            return host_failed_after_start(format!("cannot watch the deadline: {err}"));
        }
    }

    let outcome = tracing::info_span!("run").in_scope(|| {
        tracing::debug!(origin = program_label, "module started");
        let outcome = ready.run();
        tracing::debug!(exit_code = outcome.exit_code(), "module ended");
        outcome
    });
    report_to_stderr(&outcome, spec.options.timeout);
    outcome.exit_code()
}

/// How long past its deadline a command may take to be stopped by epochs before the runner
/// ends it from outside.
const DEADLINE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Epochs stop a command that computes; one waiting in the host (a sleep, a read, a 0.3 task
/// awaiting a stream) runs no instruction to interrupt. Past its deadline and a moment's
/// grace, the runner ends itself as the epoch path would: the same message, status 124.
fn watch_deadline(timeout: std::time::Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("wedge-deadline".into())
        .stack_size(64 << 10)
        .spawn(move || {
            std::thread::sleep(timeout.saturating_add(DEADLINE_GRACE));
            tracing::debug!("the deadline passed while the module waited in the host");
            report_to_stderr(&Outcome::DeadlineExceeded, Some(timeout));
            std::process::exit(engine::DEADLINE_EXIT_CODE);
        })?;
    Ok(())
}

/// A host failure once the shim has been told the container started: it goes to the
/// container's stderr, and the status is a host error's.
fn host_failed_after_start(reason: String) -> i32 {
    report_to_stderr(&Outcome::HostError(reason), None);
    engine::HOST_ERROR_EXIT_CODE
}

/// Why the runner could not get its program ready.
enum NotReady {
    /// The module's fault: the user's to fix, reported as an invalid argument.
    Module(Rejected),
    /// The host's: reported as an internal error.
    Host(HostFailure),
}

impl From<Rejected> for NotReady {
    fn from(rejected: Rejected) -> Self {
        NotReady::Module(rejected)
    }
}

impl From<HostFailure> for NotReady {
    fn from(failure: HostFailure) -> Self {
        NotReady::Host(failure)
    }
}

/// A program linked, with its context, waiting for Start.
enum Primed {
    Command(Box<ReadyCommand>),
    Server(Box<ReadyServer>),
}

impl Primed {
    fn run(self) -> Outcome {
        // A command is one instance on one thread; a server's requests spread over the
        // cores (wasm runs on the runtime's threads while a request is handled).
        let runtime = match &self {
            Primed::Command(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Primed::Server(_) => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(server_threads())
                .thread_stack_size(SERVER_THREAD_STACK)
                .enable_all()
                .build(),
        };
        let runtime = match runtime {
            Ok(runtime) => runtime,
            Err(err) => {
                return Outcome::HostError(format!("cannot start the runner's event loop: {err}"))
            }
        };
        match self {
            Primed::Command(command) => runtime.block_on(command.run()),
            Primed::Server(server) => {
                let stop = match runtime.block_on(async { termination_requested() }) {
                    Ok(stop) => stop,
                    Err(err) => {
                        return Outcome::HostError(format!("cannot watch for SIGTERM: {err}"))
                    }
                };
                pid_namespace::let_the_server_drain();
                runtime.block_on(server.serve(stop))
            }
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT, when a server drains. The handlers are in place
/// once this returns.
fn termination_requested() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Room for the host side of a request; wasm runs on its own fiber stacks.
const SERVER_THREAD_STACK: usize = 512 << 10;

fn server_threads() -> usize {
    std::thread::available_parallelism()
        .map(|cores| cores.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Everything before the guest's first instruction, done single-threaded and ending
/// confined (see `confine`): the program loaded, its WASI context built from the guest's own
/// mounts, the root pivoted, the container's user taken on and seccomp applied.
fn prepare(spec: &RunSpec) -> Result<(Primed, ProgramOrigin), NotReady> {
    let (bytes, sha256) = read_module(spec)?;
    let role = EngineRole::of(&bytes);
    let engine = engine::new_engine(&spec.options, role)?;
    let cache = match &spec.cache {
        None => Err("the cache is disabled in the engine config".to_string()),
        Some(settings) => ModuleCache::open(&settings.dir, settings.max_bytes)
            .map_err(|err| format!("cache unavailable: {err}")),
    };
    let (program, origin) = load_program(
        &engine,
        &codegen_options(&spec.options),
        &bytes,
        &sha256,
        cache.as_ref().map_err(Clone::clone),
        &|engine, kind, bytes| {
            compile::compile_in_child(engine, kind, bytes, &|| confine_compiler(spec))
        },
    )?;
    drop((bytes, cache));
    let memory_limit = linear_memory_bound(spec);
    let apparmor = spec
        .apparmor_profile
        .as_deref()
        .map(confine::AppArmorChange::open)
        .transpose()?;
    // The preopens are opened while still root, as runc sets up mounts before it drops to
    // the container's user: their host paths sit in root-only directories. Every access
    // through them afterwards is checked against the container's user.
    let view = FileView::prepare(
        &spec.rootfs,
        spec.readonly_root,
        &spec.mounts,
        &spec.file_binds,
    )?;
    let context = CommandContext {
        args: &spec.args,
        env: &spec.env,
        rootfs: &view.rootfs,
        readonly_root: spec.readonly_root,
        mounts: &view.mounts,
        memory_limit,
        network: &spec.options.network,
    };
    let ready = match (role, program) {
        (EngineRole::HttpServer, Program::Component(component)) => {
            let server = PreparedServer::new(&engine, &component)?;
            Primed::Server(Box::new(server.with_context(&context, &spec.options.http)?))
        }
        (_, program) => {
            let linked = PreparedCommand::new(&engine, program, spec.export.as_deref())?;
            let limits = RunLimits {
                deadline: spec.options.timeout,
                fuel: spec.options.fuel,
            };
            Primed::Command(Box::new(linked.with_context(&context, limits)?))
        }
    };
    drop(view);
    confine::require_single_thread()?;
    confine::pivot_into_rootfs(&spec.rootfs)?;
    if let Some(apparmor) = apparmor {
        apparmor.apply()?;
    }
    confine::become_container_user(&spec.identity)?;
    spec.seccomp
        .apply()
        .map_err(|err| HostFailure(format!("cannot apply seccomp: {err}")))?;
    Ok((ready, origin))
}

/// What the compile child does before it compiles: the guest's confinement, in a mount
/// namespace of its own (a pivot in the runner's would move the runner too).
fn confine_compiler(spec: &RunSpec) -> Result<(), Rejected> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|err| Rejected(format!("cannot give the compiler a mount namespace: {err}")))?;
    let view = FileView::prepare(&spec.rootfs, true, &[], &[])?;
    let apparmor = spec
        .apparmor_profile
        .as_deref()
        .map(confine::AppArmorChange::open)
        .transpose()?;
    confine::pivot_into_rootfs(&view.rootfs)?;
    if let Some(apparmor) = apparmor {
        apparmor.apply()?;
    }
    confine::become_container_user(&spec.identity)?;
    spec.seccomp
        .apply()
        .map_err(|err| Rejected(format!("cannot apply seccomp to the compiler: {err}")))
}

/// The bound for linear memories, from the engine options and the container's limit less
/// what the runtime already holds in the container's cgroup (compilation's leftovers, given
/// back first).
fn linear_memory_bound(spec: &RunSpec) -> Option<u64> {
    let in_use = spec.memory_limit.map_or(0, |_| memory_in_use(spec));
    memory_bound::linear_memory_bound(spec.options.max_memory, spec.memory_limit, in_use)
}

fn memory_in_use(spec: &RunSpec) -> u64 {
    // SAFETY: malloc_trim only returns free heap pages to the kernel; no pointer changes.
    unsafe {
        libc::malloc_trim(0);
    }
    spec.memory_usage_file
        .as_ref()
        .and_then(|file| std::fs::read_to_string(file).ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// The module's bytes and their hex sha256.
fn read_module(spec: &RunSpec) -> Result<(Vec<u8>, String), Rejected> {
    match &spec.module {
        ModuleSource::Rootfs { path } => {
            let bytes = read_from_rootfs(spec, path)?;
            let sha256 = sha256_hex(&bytes);
            Ok((bytes, sha256))
        }
        ModuleSource::Layer { digest } => {
            let sha256 = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| Rejected(format!("unsupported layer digest {digest}")))?;
            // SAFETY: the shim hands fd 4 to this process as the sealed memfd holding the
            // layer (see `launch::spawn_runner`); nothing else in this process owns it.
            let mut file = unsafe { File::from_raw_fd(MODULE_FD) };
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|err| Rejected(format!("cannot read layer {digest}: {err}")))?;
            Ok((bytes, sha256.to_string()))
        }
    }
}

/// Reads the module through a capability on the root filesystem, so that symlinks inside
/// the image cannot lead the runner outside it; only a regular file is read.
fn read_from_rootfs(spec: &RunSpec, path: &str) -> Result<Vec<u8>, Rejected> {
    let root = cap_std::fs::Dir::open_ambient_dir(&spec.rootfs, cap_std::ambient_authority())
        .map_err(|err| {
            Rejected(format!(
                "cannot open the root filesystem {}: {err}",
                spec.rootfs.display()
            ))
        })?;
    let mut file =
        crate::image::open_regular_file(&root, path).map_err(|err| Rejected(err.to_string()))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|err| Rejected(format!("cannot read {path}: {err}")))?;
    Ok(bytes)
}

/// Traps and host failures are the container's business: they go to its stderr, where
/// `ctr` and the CRI log show them, like a native program's crash message.
fn report_to_stderr(outcome: &Outcome, timeout: Option<std::time::Duration>) {
    let message = match outcome {
        Outcome::Exited(_) => return,
        Outcome::Trapped(message) => format!("wasm trap: {message}\n"),
        Outcome::HostError(message) => format!("wasm runtime error: {message}\n"),
        Outcome::DeadlineExceeded => format!(
            "wasm deadline: the module ran past its timeout{} and was stopped \
             (wedge.dev/timeout, limits.timeout)\n",
            timeout
                .map(|timeout| format!(
                    " of {}",
                    wedge_runtime_config::quantity::show_duration(timeout)
                ))
                .unwrap_or_default()
        ),
        Outcome::OutOfFuel => "wasm fuel exhausted: the module used all the fuel it was given \
             (wedge.dev/fuel, limits.fuel) and was stopped\n"
            .to_string(),
    };
    let mut stderr = std::io::stderr();
    let _ = stderr.write_all(message.as_bytes());
    let _ = stderr.flush();
}
