//! A CRI client that drives a private containerd the way kubelet does: pods and containers
//! by gRPC on containerd's socket, images imported into namespace `k8s.io` beforehand (as
//! with `imagePullPolicy: IfNotPresent`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use containerd_client::tonic;
use containerd_client::tonic::transport::Channel;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStats, ContainerStatsRequest,
    ContainerStatus, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest,
    ExecSyncResponse, ImageSpec, Int64Value, KeyValue, LinuxContainerResources,
    LinuxContainerSecurityContext, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    ListPodSandboxRequest, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, SecurityProfile, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, UpdateContainerResourcesRequest,
};

use crate::containerd::{Containerd, Release, PAUSE_IMAGE};
use crate::images;

/// The CRI runtime handler of this project, and the one it is compared against.
pub const WEDGE_HANDLER: &str = "wedge";
pub const RUNC_HANDLER: &str = "runc";

/// Debian's static busybox (package busybox-static): the pause process and the sidecars.
pub const BUSYBOX: &str = "/bin/busybox";

/// A containerd with CRI on, the pause image imported, and a client for it.
pub struct CriNode {
    pub containerd: Containerd,
    client: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    runtime: tokio::runtime::Runtime,
    logs: PathBuf,
}

/// A pod as the test asked for it: its id and the config CreateContainer must repeat.
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

/// What a test says about one container; the rest is filled as kubelet would.
#[derive(Default, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// (host path, container path, read-only)
    pub mounts: Vec<(PathBuf, String, bool)>,
    pub memory_limit: Option<i64>,
    /// CFS quota in microseconds per 100 ms period (`resources.limits.cpu`).
    pub cpu_quota: Option<i64>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    /// The container's seccomp profile (`securityContext.seccompProfile`).
    pub seccomp: Option<SecurityProfile>,
    /// A stdin for the container (`kubectl run -i`).
    pub stdin: bool,
    /// A terminal for the container (`kubectl run -t`).
    pub tty: bool,
    pub annotations: HashMap<String, String>,
}

/// A busybox `sh -c script` command line.
pub fn sh(script: &str) -> Vec<String> {
    vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]
}

impl CriNode {
    /// Starts containerd with CRI and imports the locally built pause image.
    pub fn start(release: Release) -> Result<Self> {
        Self::attach(Containerd::start_cri(release)?)
    }

    /// [`Self::start`] with `prepare` run before containerd starts, and without the `wedge`
    /// runtime unless `prepare` registers it (see [`Containerd::start_cri_with`]).
    pub fn start_with(
        release: Release,
        prepare: impl FnOnce(&Path, &Path) -> Result<()>,
    ) -> Result<Self> {
        Self::attach(Containerd::start_cri_with(release, prepare)?)
    }

    /// Imports the pause image into a started containerd (one started with its CRI plugin)
    /// and connects to its CRI plugin.
    pub fn attach(containerd: Containerd) -> Result<Self> {
        let (archive, reference) = images::native_image(
            containerd.dir(),
            "pause",
            Path::new(BUSYBOX),
            "/bin/busybox",
            &["/bin/busybox", "sleep", "2147483647"],
        )?;
        anyhow::ensure!(reference == PAUSE_IMAGE, "pause image is {reference}");
        containerd.import_for_cri(&archive)?;
        // Several threads may drive calls at once (the soak): each call runs on its
        // caller's thread, the connection's I/O on the runtime's own workers.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let socket = containerd.socket();
        let channel = runtime
            .block_on(containerd_client::connect(&socket))
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        let logs = containerd.dir().join("pod-logs");
        std::fs::create_dir_all(&logs)?;
        let node = CriNode {
            containerd,
            client: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            runtime,
            logs,
        };
        node.wait_for_image(PAUSE_IMAGE)?;
        Ok(node)
    }

    /// Imports an image archive into `k8s.io` and waits until the CRI plugin knows
    /// `reference`: containerd 2 fills the CRI's image cache from events, a moment after
    /// the import returns.
    pub fn import(&self, archive: &Path, reference: &str) -> Result<()> {
        self.containerd.import_for_cri(archive)?;
        self.wait_for_image(reference)
    }

    /// Waits until the CRI plugin knows `reference` (see [`Self::import`]).
    pub fn wait_for_image(&self, reference: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut images = self.images.clone();
            let found = self
                .runtime
                .block_on(images.image_status(k8s_cri::v1::ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: reference.to_string(),
                        ..Default::default()
                    }),
                    verbose: false,
                }))
                .map(|response| response.into_inner().image.is_some())
                .unwrap_or(false);
            if found {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the CRI plugin does not know the imported image {reference}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The static busybox as a native image in `k8s.io`: the sidecar of most tests.
    pub fn busybox_image(&self) -> Result<String> {
        let (archive, reference) = images::native_image(
            self.containerd.dir(),
            "busybox",
            Path::new(BUSYBOX),
            "/bin/busybox",
            &["/bin/busybox"],
        )?;
        self.import(&archive, &reference)?;
        Ok(reference)
    }

    /// `module` as a wasm image in `k8s.io`.
    /// A pod on `handler` whose one wasm container prints the hello greeting and exits 0;
    /// fails unless it did. The pod is left for the caller to inspect and remove.
    pub fn run_hello_pod(&self, pod_name: &str, handler: &str) -> Result<Pod> {
        let hello = self.wasm_image("hello", &crate::programs::wat(crate::programs::HELLO_WAT)?)?;
        let pod = self.run_pod(pod_name, handler)?;
        let id = self.run_container(
            &pod,
            &ContainerSpec {
                name: "hello".into(),
                image: hello,
                ..Default::default()
            },
        )?;
        let status = self.wait_exited(&id, Duration::from_secs(30))?;
        anyhow::ensure!(status.exit_code == 0, "hello exited {}", status.exit_code);
        let lines = self.stdout_lines(&pod, "hello")?;
        anyhow::ensure!(
            lines.iter().any(|line| line == "hello from wasm"),
            "hello's stdout: {lines:?}"
        );
        Ok(pod)
    }

    /// The executables of this containerd's running shims of the Wedge runtime.
    pub fn wedge_shim_executables(&self) -> Vec<std::path::PathBuf> {
        self.containerd
            .container_processes()
            .into_iter()
            .filter_map(|(pid, _)| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
            .filter(|exe| {
                exe.file_name()
                    .is_some_and(|name| name == crate::binaries::SHIM)
            })
            .collect()
    }

    pub fn wasm_image(&self, name: &str, module: &[u8]) -> Result<String> {
        let (archive, reference) = images::wasm_image(self.containerd.dir(), name, module)?;
        self.import(&archive, &reference)?;
        Ok(reference)
    }

    /// Waits until a line of the container's CRI log contains `needle`.
    pub fn wait_for_log(&self, pod: &Pod, container: &str, needle: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.log_lines(pod, container).unwrap_or_default();
            if lines.iter().any(|(_, text)| text.contains(needle)) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{needle:?} never reached the log of {container}: {lines:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The stdout lines of the container's CRI log.
    pub fn stdout_lines(&self, pod: &Pod, container: &str) -> Result<Vec<String>> {
        Ok(self
            .log_lines(pod, container)?
            .into_iter()
            .filter(|(stream, _)| stream == "stdout")
            .map(|(_, text)| text)
            .collect())
    }

    fn call<T, F>(&self, what: &str, request: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.runtime
            .block_on(request)
            .map(|response| response.into_inner())
            .map_err(|status| anyhow::anyhow!("CRI {what}: {}", status.message()))
    }

    /// RunPodSandbox with `handler`, the pod's logs and cgroups under the test's dirs; each
    /// container in a pid namespace of its own, as kubelet does by default.
    pub fn run_pod(&self, name: &str, handler: &str) -> Result<Pod> {
        self.run_pod_with(name, handler, NamespaceMode::Container, &[])
    }

    /// A pod with `shareProcessNamespace: true`: one pid namespace for all its containers.
    pub fn run_pod_sharing_pids(&self, name: &str, handler: &str) -> Result<Pod> {
        self.run_pod_with(name, handler, NamespaceMode::Pod, &[])
    }

    /// A pod with annotations (`metadata.annotations` of a Kubernetes pod).
    pub fn run_pod_annotated(
        &self,
        name: &str,
        handler: &str,
        annotations: &[(&str, &str)],
    ) -> Result<Pod> {
        self.run_pod_with(name, handler, NamespaceMode::Container, annotations)
    }

    /// The pod's IP on the CNI network, as kubelet reports it in `status.podIP`.
    pub fn pod_ip(&self, pod: &Pod) -> Result<String> {
        let mut client = self.client.clone();
        let status = self.call(
            "PodSandboxStatus",
            client.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            }),
        )?;
        status
            .status
            .and_then(|status| status.network)
            .map(|network| network.ip)
            .filter(|ip| !ip.is_empty())
            .context("the pod has no IP")
    }

    /// A pod whose `cgroup_parent` is `parent`, as kubelet (or critest) gives it.
    pub fn run_pod_in_cgroup(&self, name: &str, handler: &str, parent: &str) -> Result<Pod> {
        self.run_pod_under(name, handler, NamespaceMode::Container, &[], Some(parent))
    }

    fn run_pod_with(
        &self,
        name: &str,
        handler: &str,
        pids: NamespaceMode,
        annotations: &[(&str, &str)],
    ) -> Result<Pod> {
        self.run_pod_under(name, handler, pids, annotations, None)
    }

    fn run_pod_under(
        &self,
        name: &str,
        handler: &str,
        pids: NamespaceMode,
        annotations: &[(&str, &str)],
        cgroup_parent: Option<&str>,
    ) -> Result<Pod> {
        let cri = self
            .containerd
            .cri()
            .context("containerd was started without CRI")?;
        let log_directory = self.logs.join(name);
        std::fs::create_dir_all(&log_directory)?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.display().to_string(),
            annotations: annotations
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent
                    .map(str::to_string)
                    .unwrap_or_else(|| cri.cgroup_parent.clone()),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid: pids as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client.clone();
        let response = self.call(
            "RunPodSandbox",
            client.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            }),
        )?;
        Ok(Pod {
            id: response.pod_sandbox_id,
            config,
        })
    }

    /// CreateContainer in `pod`; its log goes to `<pod log dir>/<name>.log`.
    pub fn create_container(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .env
                .iter()
                .map(|(key, value)| KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            mounts: spec
                .mounts
                .iter()
                .map(|(host, container, readonly)| Mount {
                    container_path: container.clone(),
                    host_path: host.display().to_string(),
                    readonly: *readonly,
                    ..Default::default()
                })
                .collect(),
            log_path: format!("{}.log", spec.name),
            stdin: spec.stdin,
            tty: spec.tty,
            annotations: spec.annotations.clone(),
            linux: Some(k8s_cri::v1::LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    memory_limit_in_bytes: spec.memory_limit.unwrap_or(0),
                    cpu_quota: spec.cpu_quota.unwrap_or(0),
                    cpu_period: spec.cpu_quota.map_or(0, |_| 100_000),
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    run_as_user: spec.run_as_user.map(|value| Int64Value { value }),
                    run_as_group: spec.run_as_group.map(|value| Int64Value { value }),
                    supplemental_groups: spec.supplemental_groups.clone(),
                    seccomp: spec.seccomp.clone(),
                    // As kubelet: the pod's namespace choices, repeated per container.
                    namespace_options: pod
                        .config
                        .linux
                        .as_ref()
                        .and_then(|linux| linux.security_context.as_ref())
                        .and_then(|context| context.namespace_options.clone()),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let mut client = self.client.clone();
        let response = self.call(
            "CreateContainer",
            client.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }),
        )?;
        Ok(response.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let mut client = self.client.clone();
        self.call(
            "StartContainer",
            client.start_container(StartContainerRequest {
                container_id: id.into(),
            }),
        )?;
        Ok(())
    }

    /// StartContainer with a deadline, as kubelet's runtime-request-timeout sets one;
    /// containerd passes it on to the shim.
    pub fn start_container_within(&self, id: &str, deadline: Duration) -> Result<()> {
        let mut client = self.client.clone();
        let mut request = tonic::Request::new(StartContainerRequest {
            container_id: id.into(),
        });
        request.set_timeout(deadline);
        self.call("StartContainer", client.start_container(request))?;
        Ok(())
    }

    /// CreateContainer + StartContainer.
    pub fn run_container(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let id = self.create_container(pod, spec)?;
        self.start_container(&id)?;
        Ok(id)
    }

    pub fn status(&self, id: &str) -> Result<ContainerStatus> {
        let mut client = self.client.clone();
        self.call(
            "ContainerStatus",
            client.container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            }),
        )?
        .status
        .context("ContainerStatus without a status")
    }

    /// Polls ContainerStatus until the container has exited (as kubelet's PLEG does).
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(id)?;
            if status.state == ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} still in state {} after {timeout:?}",
                    status.state
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse> {
        let mut client = self.client.clone();
        self.call(
            "ExecSync",
            client.exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|arg| arg.to_string()).collect(),
                timeout: 10,
            }),
        )
    }

    /// UpdateContainerResources with a new memory limit, as kubelet's in-place resize does.
    pub fn update_memory_limit(&self, id: &str, bytes: i64) -> Result<()> {
        let mut client = self.client.clone();
        self.call(
            "UpdateContainerResources",
            client.update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(LinuxContainerResources {
                    memory_limit_in_bytes: bytes,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )?;
        Ok(())
    }

    /// The host pid of a container's process (`ctr tasks ls` in namespace k8s.io).
    pub fn task_pid(&self, id: &str) -> Result<i32> {
        let out = self
            .containerd
            .ctr_ok(&["--namespace", "k8s.io", "tasks", "ls"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find(|line| line.starts_with(id))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|pid| pid.parse().ok())
            .with_context(|| format!("no task {id} in: {text}"))
    }

    pub fn stats(&self, id: &str) -> Result<ContainerStats> {
        let mut client = self.client.clone();
        self.call(
            "ContainerStats",
            client.container_stats(ContainerStatsRequest {
                container_id: id.into(),
            }),
        )?
        .stats
        .context("ContainerStats without stats")
    }

    /// StopContainer with kubelet's grace period in seconds.
    pub fn stop_container(&self, id: &str, grace_seconds: i64) -> Result<()> {
        let mut client = self.client.clone();
        self.call(
            "StopContainer",
            client.stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: grace_seconds,
            }),
        )?;
        Ok(())
    }

    /// [`Self::stop_container`], failing when containerd has not answered within `limit`
    /// (a stop that hangs, not a slow one: the limit is far above any normal stop).
    pub fn stop_container_within(
        &self,
        id: &str,
        grace_seconds: i64,
        limit: Duration,
    ) -> Result<()> {
        let mut client = self.client.clone();
        let request = client.stop_container(StopContainerRequest {
            container_id: id.into(),
            timeout: grace_seconds,
        });
        self.runtime
            .block_on(async { tokio::time::timeout(limit, request).await })
            .map_err(|_| {
                anyhow::anyhow!("CRI StopContainer of {id} hung (no answer in {limit:?})")
            })?
            .map_err(|status| anyhow::anyhow!("CRI StopContainer: {}", status.message()))?;
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let mut client = self.client.clone();
        self.call(
            "RemoveContainer",
            client.remove_container(RemoveContainerRequest {
                container_id: id.into(),
            }),
        )?;
        Ok(())
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does when a pod is deleted.
    pub fn remove_pod(&self, pod: &Pod) -> Result<()> {
        self.stop_and_remove_pod(&pod.id)
    }

    /// StopPodSandbox, then RemovePodSandbox, as kubelet ends a pod.
    fn stop_and_remove_pod(&self, id: &str) -> Result<()> {
        let mut client = self.client.clone();
        self.call(
            "StopPodSandbox",
            client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }),
        )?;
        self.call(
            "RemovePodSandbox",
            client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            }),
        )?;
        Ok(())
    }

    /// Stops and removes every pod named `name` (its containers with it), as kubelet does
    /// with a pod whose teardown failed halfway.
    pub fn remove_pod_named(&self, name: &str) -> Result<()> {
        let mut client = self.client.clone();
        let pods = self.call(
            "ListPodSandbox",
            client.list_pod_sandbox(ListPodSandboxRequest::default()),
        )?;
        for pod in pods.items {
            if pod
                .metadata
                .as_ref()
                .is_some_and(|metadata| metadata.name == name)
            {
                self.stop_and_remove_pod(&pod.id)?;
            }
        }
        Ok(())
    }

    /// The lines of a container's CRI log file, without their timestamp and stream tags.
    pub fn log_lines(&self, pod: &Pod, container: &str) -> Result<Vec<(String, String)>> {
        let path = Path::new(&pod.config.log_directory).join(format!("{container}.log"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(4, ' ');
                let _time = fields.next()?;
                let stream = fields.next()?;
                let _tag = fields.next()?;
                Some((stream.to_string(), fields.next().unwrap_or("").to_string()))
            })
            .collect())
    }
}
