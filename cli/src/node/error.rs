//! Why a node step failed. Each variant says what to do where there is something to do.

use std::path::PathBuf;

use wedge_runtime_config::containerd::ContainerdConfigError;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ContainerdConfigError),

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("the copy of the shim at {path} has sha256 {found}, the source {expected}")]
    ShimDigestMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },

    #[error("engine config {path} is invalid: {message}")]
    EngineConfigInvalid { path: PathBuf, message: String },

    #[error(
        "cannot restart containerd: the host's PID 1 is {pid1:?} and none of systemd, OpenRC \
         or /etc/init.d was found on the host (in a pod, hostPID: true is needed to see the \
         host's PID 1); restart containerd yourself, or install with --restart never"
    )]
    NoServiceManager { pid1: String },

    #[error(
        "cannot restart containerd: none of {services:?} is running under the host's \
         {manager}; restart containerd yourself, or install with --restart never"
    )]
    NoRunningService {
        manager: &'static str,
        services: Vec<String>,
    },

    #[error(
        "cannot open the host's namespace {path}: {source} (the installer needs hostPID: true \
         and privileged to restart containerd)"
    )]
    HostNamespace {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },

    #[error("containerd on {socket} did not answer: {message}")]
    ContainerdUnreachable { socket: PathBuf, message: String },

    #[error(
        "containerd on {socket} answers but its CRI plugin does not list runtime {name:?}; \
         see containerd's log for why it rejected the config"
    )]
    RuntimeNotRegistered { socket: PathBuf, name: String },

    #[error("{0} is not set: --label-node needs the in-cluster environment (and NODE_NAME from the downward API)")]
    MissingEnv(&'static str),

    #[error("node name {0:?} is not a valid Kubernetes object name")]
    InvalidNodeName(String),

    #[error("Kubernetes API: {0}")]
    Kube(String),
}

impl NodeError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| NodeError::Io { what, path, source }
    }
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;
