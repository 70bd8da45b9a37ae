//! containerd's Task API, served over ttrpc: each RPC checks its request, does its work
//! through `container`, `runner` and friends, and maps errors to ttrpc codes. Exec
//! processes (native containers) are in `exec`.

mod exec;
mod resources;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use containerd_shim::api::{self, Status as ApiStatus};
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::event::Event;
use containerd_shim::{Task, TtrpcContext, TtrpcResult};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::ttrpc::context::Context;
use nix::sys::signal::Signal;
use tokio::sync::{oneshot, watch};
use tracing::{info, instrument, warn};

use crate::container::{
    wait_for_exit, Container, Engine, NewContainer, Starting, Status, StdioPaths,
};
use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::exits::{ExitRouter, ExitStatus};
use crate::image::Entrypoint;
use crate::native::console::start_with_stdio;
use crate::native::Runc;
use crate::runner::module_fd::sealed_memfd;
use crate::runner::protocol::{CacheSettings, ModuleSource, RunSpec};
use crate::runner::spawn::{spawn_runner, Runner};
use crate::sandbox::security::SecurityPlan;
use crate::sandbox::{Cgroup, CgroupError, Driver, RunnerSandbox};
use crate::spec::MountSpec;
use crate::{image, options, rootfs, spec, stdio};
use oci_spec::runtime::LinuxNamespaceType;

/// Name of the file in the bundle that records the runner's pid, for `shim delete` after a
/// shim crash.
pub const RUNNER_PID_FILE: &str = "wedge-runner.pid";

/// Name of the file in the bundle that records a wasm container's cgroup (relative to the
/// hierarchy roots), for `shim delete` after a shim crash: where it is depends on the
/// driver of the engine config that Create was given.
pub const CGROUP_FILE: &str = "wedge-cgroup";

pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    content: ContentStore,
    publisher: RemotePublisher,
    exits: Arc<ExitRouter>,
    containers: Mutex<HashMap<String, Container>>,
    shutdown: Arc<ExitSignal>,
}

impl TaskService {
    /// `containerd_address` is containerd's gRPC socket, for reading image content.
    pub async fn new(
        namespace: &str,
        containerd_address: &str,
        publisher: RemotePublisher,
        shutdown: Arc<ExitSignal>,
    ) -> Result<Self> {
        Ok(TaskService {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                content: ContentStore::new(
                    containerd_address.trim_start_matches("unix://"),
                    namespace,
                ),
                publisher,
                exits: ExitRouter::start().await?,
                containers: Mutex::new(HashMap::new()),
                shutdown,
            }),
        })
    }
}

impl Inner {
    fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn with_container<T>(
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

    async fn publish<E: Event>(&self, event: E) {
        let topic = event.topic();
        if let Err(err) = self
            .publisher
            .publish(Context::default(), &topic, &self.namespace, Box::new(event))
            .await
        {
            warn!(%topic, error = %err, "failed to publish event");
        }
    }

    async fn create(self: &Arc<Self>, req: &api::CreateTaskRequest) -> Result<i32> {
        if self.containers().contains_key(&req.id) {
            return Err(Error::ContainerExists(req.id.clone()));
        }
        // Overlaps the slow first step of the runner's cgroup migration with the rest of
        // Create (a native container's runc migrates its init too).
        crate::sandbox::cgroup::warm_up_migration();
        let bundle = PathBuf::from(&req.bundle);
        let spec = spec::ContainerSpec::load(&bundle)?;

        let mounted = rootfs::mount(&req.rootfs, &spec.rootfs).await?;
        match self.launch(req, &bundle, spec.clone(), mounted).await {
            Ok(pid) => Ok(pid),
            Err(err) => {
                if mounted {
                    rootfs::unmount(&spec.rootfs);
                }
                Err(err)
            }
        }
    }

    /// Everything of Create after the root filesystem is mounted; on error the caller
    /// unmounts, and this function leaves no runner behind.
    async fn launch(
        self: &Arc<Self>,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        spec: spec::ContainerSpec,
        rootfs_mounted: bool,
    ) -> Result<i32> {
        let engine_config = options::engine_config(req.options.as_ref())?;
        crate::logging::apply_configured_level(engine_config.log_level);
        // One decision for wasm and native containers alike, as runc's shim makes it.
        let driver = Driver::decide(engine_config.cgroup.driver, &spec.cgroups_path);
        let entrypoint = Entrypoint::parse(&spec.args);
        let (module, module_fd) = match self
            .locate_module(&req.id, &spec, entrypoint.as_ref())
            .await?
        {
            Plan::Wasm { .. } if req.terminal || spec.terminal => {
                return Err(Error::TerminalUnsupported)
            }
            Plan::Wasm { module, module_fd } => (module, module_fd),
            Plan::Native => {
                let runc = Runc::new(
                    &engine_config.runc.path,
                    &engine_config.runc.root,
                    &self.namespace,
                )
                .with_systemd_cgroup(driver == Driver::Systemd);
                return self
                    .launch_native(req, bundle, spec, rootfs_mounted, runc, driver)
                    .await;
            }
        };
        let options = engine_config
            .wasm_options(&spec.annotations, spec.port_variable())
            .map_err(Error::Annotation)?;
        let security = SecurityPlan::for_container(&spec).map_err(|source| Error::Sandbox {
            id: req.id.clone(),
            source,
        })?;
        let io = stdio::open(&req.stdin, &req.stdout, &req.stderr)?;
        let RunnerSandbox {
            cgroup,
            before_exec,
        } = RunnerSandbox::create(&spec, &self.namespace, &req.id, driver).map_err(|source| {
            Error::Sandbox {
                id: req.id.clone(),
                source,
            }
        })?;
        let enter_pod_pid_namespace = before_exec.joins_pod_pids();
        let spawned = self.exits.spawn_watched(|| {
            let runner = spawn_runner(&req.id, bundle, io.runner, module_fd, before_exec)?;
            let pid = runner.pid;
            Ok((runner, pid))
        });
        let (mut runner, exited) = match spawned {
            Ok(spawned) => spawned,
            Err(err) => {
                remove_cgroup(cgroup).await;
                return Err(err);
            }
        };
        let pid = runner.pid;
        // Before the runner reads its first message: the module is read, compiled and run
        // inside the container's limits.
        if let Err(source) =
            off_the_event_loop(cgroup.clone(), move |cgroup| cgroup.add_process(pid)).await
        {
            abandon(runner, exited).await;
            remove_cgroup(cgroup).await;
            return Err(Error::Sandbox {
                id: req.id.clone(),
                source: source.into(),
            });
        }
        let mut args = spec.args;
        if let (Some(arg0), Some(entrypoint)) = (args.first_mut(), &entrypoint) {
            // The module sees its path as argv[0], without the `#name` that chose the export.
            arg0.clone_from(&entrypoint.path);
        }
        let run_spec = RunSpec {
            container_id: req.id.clone(),
            rootfs: spec.rootfs.clone(),
            module,
            export: entrypoint.and_then(|entrypoint| entrypoint.export),
            args,
            env: spec.env,
            cwd: spec.cwd,
            readonly_root: spec.readonly_root,
            stdin_fifo: io.stdin_fifo,
            cache: engine_config.cache.enabled.then(|| CacheSettings {
                dir: engine_config.cache.dir.clone(),
                max_bytes: engine_config.cache.max_size_bytes(),
            }),
            identity: spec.identity.clone(),
            memory_limit: spec.resources.memory_bytes(),
            memory_usage_file: cgroup.memory_usage_file(),
            mounts: spec
                .mounts
                .iter()
                .filter_map(MountSpec::as_preopen)
                .collect(),
            file_binds: spec
                .mounts
                .iter()
                .filter_map(MountSpec::as_file_bind)
                .collect(),
            enter_pod_pid_namespace,
            options,
            seccomp: security.filters,
            apparmor_profile: security.apparmor_profile,
        };
        match runner.prepare(run_spec).await {
            Ok(program) => {
                info!(origin = program.label(), detail = ?program, "module ready");
            }
            Err(err) => {
                abandon(runner, exited).await;
                remove_cgroup(cgroup).await;
                return Err(err);
            }
        }
        if let Err(err) = std::fs::write(bundle.join(RUNNER_PID_FILE), pid.to_string()) {
            warn!(error = %err, "cannot record the runner pid in the bundle");
        }
        if let Err(err) = std::fs::write(bundle.join(CGROUP_FILE), cgroup.record()) {
            warn!(error = %err, "cannot record the cgroup in the bundle");
        }

        let engine = Engine::Wasm {
            runner: Some(runner),
            paused: false,
        };
        self.register(
            req,
            bundle,
            spec.rootfs,
            rootfs_mounted,
            pid,
            engine,
            exited,
            Some(cgroup),
        );
        Ok(pid)
    }

    /// Create for a Linux container: `runc create` with the container's stdio.
    async fn launch_native(
        self: &Arc<Self>,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        spec: spec::ContainerSpec,
        rootfs_mounted: bool,
        runc: Runc,
        driver: Driver,
    ) -> Result<i32> {
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        let terminal = req.terminal || spec.terminal;
        let (pid, console) = start_with_stdio(&paths, terminal, |stdio, socket| {
            runc.create(&self.exits, &req.id, bundle, stdio, socket)
        })
        .await?;
        let exited = self.exits.watch(pid);
        info!(pid, "native container created by runc");
        let own_pid_namespace = spec
            .namespaces
            .iter()
            .any(|(kind, path)| *kind == LinuxNamespaceType::Pid && path.is_none());
        let engine = Engine::Native {
            runc,
            started: false,
            paused: false,
            kill_all_on_exit: !own_pid_namespace,
        };
        // runc made it (same path rules); the shim reads it for Stats and OOM events.
        let cgroup = Cgroup::for_container(&spec.cgroups_path, &self.namespace, &req.id, driver)
            .map_err(|err| warn!(error = %err, "no cgroup for stats and OOM events"))
            .ok();
        self.register(
            req,
            bundle,
            spec.rootfs,
            rootfs_mounted,
            pid,
            engine,
            exited,
            cgroup,
        );
        if let Some(console) = console {
            self.with_container(&req.id, |container| {
                container.console = Some(console);
                Ok(())
            })?;
        }
        Ok(pid)
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        self: &Arc<Self>,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        rootfs: PathBuf,
        rootfs_mounted: bool,
        pid: i32,
        engine: Engine,
        exited: oneshot::Receiver<ExitStatus>,
        cgroup: Option<Cgroup>,
    ) {
        let oom_watch = cgroup
            .as_ref()
            .and_then(|cgroup| self.watch_oom(&req.id, cgroup));
        let (exit_sender, exit_watch) = watch::channel(None);
        let container = Container::new(NewContainer {
            id: req.id.clone(),
            bundle: bundle.to_path_buf(),
            rootfs,
            rootfs_mounted,
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
            },
            pid,
            engine,
            exit: exit_watch,
            cgroup,
            oom_watch,
        });
        self.containers().insert(req.id.clone(), container);
        tokio::spawn(Arc::clone(self).on_exit(
            req.id.clone(),
            req.id.clone(),
            pid,
            exited,
            exit_sender,
        ));
    }

    /// Decides wasm or native: a wasm file at the entrypoint in the root filesystem, else
    /// the wasm layer of the container's image (its bytes go to the runner as a memfd), else
    /// a Linux container for runc (which reports a missing entrypoint itself).
    async fn locate_module(
        &self,
        id: &str,
        spec: &spec::ContainerSpec,
        entrypoint: Option<&Entrypoint>,
    ) -> Result<Plan> {
        let in_rootfs = match entrypoint {
            // The image's file system can be slow or hostile: look on a blocking thread, so
            // that the pod's other containers are served meanwhile.
            Some(entrypoint) => {
                let (rootfs, path, env, cwd) = (
                    spec.rootfs.clone(),
                    entrypoint.path.clone(),
                    spec.env.clone(),
                    spec.cwd.clone(),
                );
                tokio::task::spawn_blocking(move || {
                    image::resolve_wasm_entrypoint(&rootfs, &path, &env, &cwd)
                })
                .await
                .unwrap_or_else(|err| {
                    Err(Error::Runner {
                        id: id.to_string(),
                        reason: format!("looking for the entrypoint failed: {err}"),
                    })
                })
            }
            None => Err(Error::NoEntrypoint),
        };
        match in_rootfs {
            Ok(path) => {
                return Ok(Plan::Wasm {
                    module: ModuleSource::Rootfs { path },
                    module_fd: None,
                })
            }
            // A native binary: no image layer is going to change that.
            Err(Error::NotWasm { .. }) => return Ok(Plan::Native),
            // A FIFO, device or directory at the entrypoint is no program of any kind.
            Err(err @ Error::EntrypointNotRegular { .. }) => return Err(err),
            Err(_) => {}
        }
        match self.content.wasm_layer(id).await? {
            Some(layer) => {
                info!(digest = %layer.digest, media_type = %layer.media_type,
                      size = layer.bytes.len(), "module from image layer");
                let fd = sealed_memfd(&layer.bytes)?;
                Ok(Plan::Wasm {
                    module: ModuleSource::Layer {
                        digest: layer.digest,
                    },
                    module_fd: Some(fd),
                })
            }
            None => Ok(Plan::Native),
        }
    }

    /// Publishes TaskExit when a process (a runner, a runc init, an exec) ends, then
    /// releases Wait and Delete. `process_id` is the container id for the container's own
    /// process, the exec id for an exec.
    async fn on_exit(
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
        if process_id == id {
            self.kill_what_the_init_left(&id).await;
        }
        self.publish(TaskExit {
            container_id: id,
            id: process_id,
            pid: pid as u32,
            exit_status: status.code,
            exited_at: MessageField::some(status.at.clone()),
            ..Default::default()
        })
        .await;
        let _ = exit_sender.send(Some(status));
    }

    /// Kills the processes a native container's init leaves behind when it has no pid
    /// namespace of its own (as runc's own shim does): no namespace teardown ends them, and
    /// they would hold the container's stdio open, which containerd waits on before Delete.
    async fn kill_what_the_init_left(&self, id: &str) {
        let found = self.with_container(id, |container| {
            Ok(container
                .runc_to_kill_all_on_exit()
                .map(|runc| (runc.clone(), container.bundle.clone())))
        });
        let Ok(Some((runc, bundle))) = found else {
            return;
        };
        match runc
            .kill(&self.exits, id, &bundle, Signal::SIGKILL, true)
            .await
        {
            Ok(()) | Err(Error::ProcessFinished) => {}
            Err(err) => warn!(id, error = %err, "cannot kill what the container's init left"),
        }
    }

    async fn start(&self, id: &str) -> Result<i32> {
        let (starting, pid, bundle) = self.with_container(id, |container| {
            Ok((
                container.begin_start()?,
                container.pid,
                container.bundle.clone(),
            ))
        })?;
        match starting {
            Starting::Wasm(runner) => runner.start().await?,
            Starting::Native(runc) => runc.start(&self.exits, id, &bundle).await?,
        }
        Ok(pid)
    }

    /// Pause (true) or Resume (false): runc's for a native container, the cgroup freezer
    /// for a wasm one.
    async fn freeze(&self, id: &str, frozen: bool) -> Result<()> {
        let (wanted, operation) = if frozen {
            (Status::Running, "pause")
        } else {
            (Status::Paused, "resume")
        };
        let (runc, cgroup, bundle) = self.controls(id, |container| {
            let status = container.status();
            if status != wanted {
                return Err(container.wrong_state(status, operation, wanted.name()));
            }
            Ok(())
        })?;
        match (runc, cgroup) {
            (Some(runc), _) => runc.freeze(&self.exits, id, &bundle, frozen).await?,
            (None, Some(cgroup)) => off_the_event_loop(cgroup, move |cgroup| cgroup.freeze(frozen))
                .await
                .map_err(|err| Self::sandbox_error(id, err))?,
            (None, None) => return Err(Error::Unsupported { operation }),
        }
        self.with_container(id, |container| {
            container.set_paused(frozen);
            Ok(())
        })
    }

    async fn kill(&self, id: &str, signal: Signal, all: bool) -> Result<()> {
        let native = self.with_container(id, |container| {
            match container.runc() {
                // Through runc, which knows the container's processes (`all`) and its pid
                // namespace; a stopped container has nothing to signal.
                Some(runc) if container.status() != Status::Stopped => Ok(Some((
                    runc.clone(),
                    container.bundle.clone(),
                    container.pid,
                ))),
                _ => container.signal(signal).map(|()| None),
            }
        })?;
        if let Some((runc, bundle, pid)) = native {
            if let Err(err) = runc.kill(&self.exits, id, &bundle, signal, all).await {
                // A stop racing the container's own exit: runc finds nothing to signal
                // before the shim has reaped it. containerd expects "not found" then, as
                // runc's own shim answers.
                return Err(if has_exited(pid) {
                    Error::ProcessFinished
                } else {
                    err
                });
            }
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(i32, ExitStatus)> {
        let (exit, runc, bundle) = self.with_container(id, |container| {
            let runc = container.runc().cloned();
            match container.status() {
                status @ (Status::Running | Status::Paused) => {
                    return Err(container.wrong_state(status, "delete", "stopped"))
                }
                // A created wasm container was never started: end its waiting runner first
                // (runc's delete --force does that for a native one).
                Status::Created if runc.is_none() => {
                    container.signal(Signal::SIGKILL).or_else(|err| match err {
                        Error::ProcessFinished => Ok(()),
                        other => Err(other),
                    })?;
                }
                Status::Created | Status::Stopped => {}
            }
            Ok((container.exit_watch(), runc, container.bundle.clone()))
        })?;
        if let Some(runc) = runc {
            runc.delete(&self.exits, id, &bundle).await?;
        }
        let exit_status = wait_for_exit(exit).await.ok_or_else(|| Error::Runner {
            id: id.to_string(),
            reason: "exit status lost".into(),
        })?;
        let container = self
            .containers()
            .remove(id)
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))?;
        if let Some(watch) = &container.oom_watch {
            watch.abort();
        }
        if let (true, Some(cgroup)) = (container.owns_cgroup(), container.cgroup.clone()) {
            remove_cgroup(cgroup).await;
        }
        if container.rootfs_mounted {
            rootfs::unmount(&container.rootfs);
        }
        let _ = std::fs::remove_file(container.bundle.join(RUNNER_PID_FILE));
        let _ = std::fs::remove_file(container.bundle.join(CGROUP_FILE));
        Ok((container.pid, exit_status))
    }
}

/// True when process `pid` is gone or a zombie waiting to be reaped.
fn has_exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which ends at the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

/// What Create runs.
enum Plan {
    Wasm {
        module: ModuleSource,
        module_fd: Option<std::os::fd::OwnedFd>,
    },
    Native,
}

/// Runs a cgroup operation that can wait in the kernel (a migration waits for an RCU grace
/// period, a freeze or a busy rmdir is polled) on a blocking thread, so that the pod's other
/// containers are served meanwhile.
async fn off_the_event_loop<T: Send + 'static>(
    cgroup: Cgroup,
    operation: impl FnOnce(&Cgroup) -> std::result::Result<T, CgroupError> + Send + 'static,
) -> std::result::Result<T, CgroupError> {
    let path = cgroup.path().to_path_buf();
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
async fn remove_cgroup(cgroup: Cgroup) {
    if let Err(err) = off_the_event_loop(cgroup, Cgroup::remove).await {
        warn!(error = %err, "cannot remove the container's cgroup");
    }
}

/// Ends a runner that will not become a container and waits until it is reaped.
async fn abandon(runner: Runner, exited: oneshot::Receiver<ExitStatus>) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(runner.pid), Signal::SIGKILL);
    drop(runner);
    let _ = exited.await;
}

/// What State reports of one process, the container's own or an exec.
struct ProcessState<'a> {
    id: &'a str,
    pid: i32,
    status: Status,
    stdio: &'a StdioPaths,
    exit: Option<ExitStatus>,
}

impl ProcessState<'_> {
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
        Status::Stopped => ApiStatus::STOPPED,
    }
}

#[async_trait]
impl Task for TaskService {
    #[instrument(skip_all, fields(id = %req.id))]
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self.inner.create(&req).await.inspect_err(|err| {
            warn!(error = %err, "create failed");
        })?;
        info!(pid, "container created");
        self.inner
            .publish(TaskCreate {
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

    #[instrument(skip_all, fields(id = %req.id))]
    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if !req.exec_id.is_empty() {
            let pid = self.inner.start_exec(&req.id, &req.exec_id).await?;
            info!(pid, exec_id = %req.exec_id, "exec process started");
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        let pid = self.inner.start(&req.id).await?;
        info!(pid, "container started");
        self.inner
            .publish(TaskStart {
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

    #[instrument(skip_all, fields(id = %req.id))]
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        if !req.exec_id.is_empty() {
            return Ok(self.inner.exec_state(&req.id, &req.exec_id)?);
        }
        let response = self.inner.with_container(&req.id, |container| {
            Ok(ProcessState {
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

    #[instrument(skip_all, fields(id = %req.id, signal = req.signal))]
    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let signal = Signal::try_from(req.signal as i32)
            .map_err(|_| Error::InvalidRequest(format!("invalid signal {}", req.signal)))?;
        if req.exec_id.is_empty() {
            // A wasm container has exactly one process, so `all` matters only under runc.
            self.inner.kill(&req.id, signal, req.all).await?;
        } else {
            self.inner.kill_exec(&req.id, &req.exec_id, signal)?;
        }
        info!("signal delivered");
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let (pid, exit) = self.inner.delete_exec(&req.id, &req.exec_id)?;
            return Ok(api::DeleteResponse {
                pid: pid as u32,
                exit_status: exit.code,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            });
        }
        let (pid, exit) = self.inner.delete(&req.id).await?;
        info!(pid, code = exit.code, "container deleted");
        self.inner
            .publish(TaskDelete {
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

    #[instrument(skip_all, fields(id = %req.id))]
    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let status = if req.exec_id.is_empty() {
            let exit = self
                .inner
                .with_container(&req.id, |container| Ok(container.exit_watch()))?;
            wait_for_exit(exit)
                .await
                .ok_or_else(|| Error::ContainerNotFound(req.id.clone()))?
        } else {
            self.inner.wait_exec(&req.id, &req.exec_id).await?
        };
        Ok(api::WaitResponse {
            exit_status: status.code,
            exited_at: MessageField::some(status.at),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let processes = self.inner.pids(&req.id)?;
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        // Whoever relays a stdin fifo (the runner, or the shim's relay thread for runc
        // processes) sees EOF when the client closes its end; nothing is held open here.
        self.inner.with_container(&req.id, |container| {
            if !req.exec_id.is_empty() {
                container.exec(&req.exec_id)?;
            }
            Ok(())
        })?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .inner
            .with_container(&req.id, |container| Ok(container.pid))
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        // One shim may serve a whole pod: it stays while any container remains.
        if self.inner.containers().is_empty() {
            info!(requested_by = %req.id, "no containers left; shim exits");
            self.inner.shutdown.signal();
        }
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        self.inner.add_exec(&req).await?;
        info!(exec_id = %req.exec_id, "exec process added");
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let console = self.inner.with_container(&req.id, |container| {
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

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.inner.freeze(&req.id, true).await?;
        info!("container paused");
        self.inner
            .publish(TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            })
            .await;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        self.inner.freeze(&req.id, false).await?;
        info!("container resumed");
        self.inner
            .publish(TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            })
            .await;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let _ = req;
        Err(Error::Unsupported {
            operation: "checkpoint",
        }
        .into())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        self.inner.update(&req).await?;
        info!("resources updated");
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let stats = self.inner.stats(&req.id)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }
}
