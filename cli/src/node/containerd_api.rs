//! Asking the running containerd: its version (the Version RPC) and whether its CRI plugin
//! lists a runtime handler (CRI `Status` with `verbose`, whose `config` entry is the CRI
//! config containerd actually loaded, as JSON).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::tonic::transport::Channel;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::StatusRequest;

use super::error::{NodeError, Result};

/// One call's limit: a socket that accepts but never answers must not hang `status`.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdInfo {
    pub version: String,
    pub revision: String,
    /// `None`: CRI did not answer (plugin disabled or not ready).
    pub runtime_registered: Option<bool>,
}

/// Version and registration of `runtime` as containerd on `socket` reports them.
pub async fn query(socket: &Path, runtime: &str) -> Result<ContainerdInfo> {
    let unreachable = |message: String| NodeError::ContainerdUnreachable {
        socket: socket.to_path_buf(),
        message,
    };
    let channel = tokio::time::timeout(CALL_TIMEOUT, containerd_client::connect(socket))
        .await
        .map_err(|_| unreachable("timed out connecting".into()))?
        .map_err(|err| unreachable(err.to_string()))?;
    let version = tokio::time::timeout(
        CALL_TIMEOUT,
        VersionClient::new(channel.clone()).version(()),
    )
    .await
    .map_err(|_| unreachable("Version timed out".into()))?
    .map_err(|status| unreachable(status.message().to_string()))?
    .into_inner();
    Ok(ContainerdInfo {
        version: version.version,
        revision: version.revision,
        runtime_registered: cri_lists_runtime(channel, runtime).await,
    })
}

async fn cri_lists_runtime(channel: Channel, runtime: &str) -> Option<bool> {
    let request = StatusRequest { verbose: true };
    let status = tokio::time::timeout(
        CALL_TIMEOUT,
        RuntimeServiceClient::new(channel).status(request),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    let config: serde_json::Value = serde_json::from_str(status.info.get("config")?).ok()?;
    Some(
        config
            .pointer("/containerd/runtimes")
            .and_then(|runtimes| runtimes.get(runtime))
            .is_some(),
    )
}

/// Waits until containerd answers on `socket` and (when `runtime` is given) its CRI plugin
/// lists the runtime. Returns containerd's version.
pub async fn wait_ready(socket: &Path, runtime: Option<&str>, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match query(socket, runtime.unwrap_or_default()).await {
            Ok(info) if runtime.is_none() || info.runtime_registered == Some(true) => {
                return Ok(info.version)
            }
            Ok(_) => NodeError::RuntimeNotRegistered {
                socket: socket.to_path_buf(),
                name: runtime.unwrap_or_default().to_string(),
            },
            Err(err) => err,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// containerd's socket as seen from here: the config's `grpc.address` (a host path) or the
/// flavour's default.
pub fn socket_path(
    root: &wedge_runtime_config::containerd::HostRoot,
    configured: Option<&str>,
    default: &str,
) -> PathBuf {
    root.resolve(configured.unwrap_or(default))
}
