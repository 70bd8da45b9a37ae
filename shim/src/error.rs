//! The shim's one error type and its mapping to ttrpc status codes.

use std::path::PathBuf;

use containerd_shim_protos::ttrpc::{self, Code};

/// Everything that can go wrong while serving containerd.
///
/// Each variant names the thing it failed on, so the message that reaches `ctr` or kubelet
/// says what to fix without a trip to the shim log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} not found")]
    ContainerNotFound(String),

    #[error("container {0} already exists")]
    ContainerExists(String),

    #[error(
        "exec is not supported in wasm container {0}: a wasm module is one process; exec into \
         a sidecar of the pod instead"
    )]
    ExecUnsupported(String),

    #[error("exec process {1} of container {0} not found")]
    ExecNotFound(String, String),

    #[error("exec process {1} of container {0} already exists")]
    ExecExists(String, String),

    #[error("{operation} is not supported by this runtime")]
    Unsupported { operation: &'static str },

    #[error("container {id} is {state}; {operation} needs it {wanted}")]
    WrongState {
        id: String,
        state: &'static str,
        operation: &'static str,
        wanted: &'static str,
    },

    #[error("process already finished")]
    ProcessFinished,

    #[error(transparent)]
    InvalidSpec(#[from] crate::spec::InvalidSpec),

    #[error("{0}")]
    InvalidRequest(String),

    #[error("entrypoint {path} not found in the container's root filesystem: {source}")]
    EntrypointNotFound {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "entrypoint {path} is a {kind}, not a regular file: a wasm entrypoint must be a \
         regular file of the image"
    )]
    EntrypointNotRegular { path: String, kind: &'static str },

    #[error("{field}: {reason}")]
    UnsupportedSpecField { field: &'static str, reason: String },

    #[error("the container has no entrypoint: process.args is empty")]
    NoEntrypoint,

    #[error("terminal (tty) is not supported for wasm containers; run without a tty")]
    TerminalUnsupported,

    #[error("unsupported stdio URI {0}: only fifos, files and file:// URIs are supported")]
    UnsupportedStdio(String),

    #[error("image {image} cannot run as wasm: {reason}")]
    ImageLayout { image: String, reason: String },

    #[error("cannot {what} {subject} through containerd's API: {reason}")]
    ContentStore {
        what: &'static str,
        subject: String,
        reason: String,
    },

    #[error("{0}")]
    EngineConfig(#[from] wedge_runtime_config::ConfigError),
    #[error("{0}")]
    UntrustedPath(#[from] wedge_runtime_config::trusted_path::UntrustedPath),
    #[error("{0}")]
    Annotation(wedge_runtime_config::AnnotationError),

    #[error("wasm module rejected: {0}")]
    ModuleRejected(String),

    #[error(
        "container {id} ran out of memory while its module was loaded (compiled, linked and \
         given its memories) within the container's memory limit{limit}: raise the limit"
    )]
    OutOfMemoryWhileLoading { id: String, limit: String },

    #[error(
        "the create of {0} was given up: its request's deadline passed while the module was loaded"
    )]
    GivenUp(String),

    #[error("failed to mount the root filesystem at {target}: {reason}")]
    Mount { target: PathBuf, reason: String },

    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Sys {
        context: &'static str,
        #[source]
        source: nix::Error,
    },

    #[error("runc {operation} of container {id} failed: {reason}")]
    Native {
        id: String,
        operation: &'static str,
        reason: String,
    },

    #[error("cannot set up the sandbox of container {id}: {source}")]
    Sandbox {
        id: String,
        #[source]
        source: crate::sandbox::SandboxError,
    },
    #[error("wasm runner of container {id} failed: {reason}")]
    Runner { id: String, reason: String },

    /// A failure of the shim or the host, not of the request: the operator's to look into.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// The ttrpc code containerd (and through it the CRI plugin) turns back into its own
    /// error kinds: NOT_FOUND becomes `errdefs.ErrNotFound`, and so on.
    pub fn code(&self) -> Code {
        match self {
            Error::ContainerNotFound(_) | Error::ProcessFinished | Error::ExecNotFound(..) => {
                Code::NOT_FOUND
            }
            Error::ContainerExists(_) | Error::ExecExists(..) => Code::ALREADY_EXISTS,
            Error::ExecUnsupported(_) | Error::Unsupported { .. } => Code::UNIMPLEMENTED,
            Error::WrongState { .. } | Error::UntrustedPath(_) => Code::FAILED_PRECONDITION,
            Error::InvalidSpec(_)
            | Error::InvalidRequest(_)
            | Error::NoEntrypoint
            | Error::EntrypointNotRegular { .. }
            | Error::UnsupportedSpecField { .. }
            | Error::TerminalUnsupported
            | Error::UnsupportedStdio(_)
            | Error::ModuleRejected(_)
            | Error::ImageLayout { .. }
            | Error::EngineConfig(_)
            | Error::Annotation(_) => Code::INVALID_ARGUMENT,
            Error::ContentStore { .. } => Code::UNAVAILABLE,
            Error::OutOfMemoryWhileLoading { .. } => Code::RESOURCE_EXHAUSTED,
            Error::GivenUp(_) => Code::DEADLINE_EXCEEDED,
            Error::EntrypointNotFound { .. } => Code::NOT_FOUND,
            Error::Sandbox { source, .. } if source.is_invalid_spec() => Code::INVALID_ARGUMENT,
            Error::Sandbox { .. }
            | Error::Mount { .. }
            | Error::Io { .. }
            | Error::Sys { .. }
            | Error::Runner { .. }
            | Error::Native { .. }
            | Error::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(err: Error) -> Self {
        // The whole source chain goes into the message: it is all the user gets to see.
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        ttrpc::Error::RpcStatus(ttrpc::get_status(err.code(), message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_containerd_errdefs() {
        assert_eq!(Error::ContainerNotFound("c".into()).code(), Code::NOT_FOUND);
        assert_eq!(Error::ProcessFinished.code(), Code::NOT_FOUND);
        assert_eq!(Error::TerminalUnsupported.code(), Code::INVALID_ARGUMENT);
        assert_eq!(
            Error::Unsupported {
                operation: "checkpoint"
            }
            .code(),
            Code::UNIMPLEMENTED
        );
    }

    #[test]
    fn ttrpc_status_keeps_the_cause() {
        let err = Error::EntrypointNotFound {
            path: "/app.wasm".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let ttrpc::Error::RpcStatus(status) = ttrpc::Error::from(err) else {
            panic!("expected an RPC status");
        };
        assert_eq!(status.code(), Code::NOT_FOUND);
        assert!(
            status.message().contains("/app.wasm"),
            "{}",
            status.message()
        );
    }
}
