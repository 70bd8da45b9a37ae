//! Typed messages between the shim and one container's runner process.
//!
//! They travel as JSON lines over a socketpair that the runner finds at [`CONTROL_FD`]. The
//! exchange mirrors `runc create` / `runc start`: the runner prepares everything at Create and
//! reports, then waits for the word to start the module.

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::{Preopen, ProgramOrigin};
use crate::sandbox::seccomp::Filters;
use crate::spec::{FileBind, Identity};
use wedge_runtime_config::WasmOptions;

/// The runner's end of the control socket.
pub const CONTROL_FD: i32 = 3;

/// Where the runner finds the module bytes when they come from an image layer: a sealed
/// memfd the shim filled from containerd's content store.
pub const MODULE_FD: i32 = 4;

/// Where the runner writes its log lines: a pipe the shim reads and passes on to its own
/// log, so that runner and shim lines reach containerd in one stream and one format.
pub const LOG_FD: i32 = 5;

/// The name the runner process shows in `ps`, and the cue for the binary to act as a runner.
pub const RUNNER_ARG0: &str = "wedge-runner";

/// What the runner needs to know to run one container's module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub container_id: String,
    /// Host path of the mounted root filesystem.
    pub rootfs: PathBuf,
    pub module: ModuleSource,
    /// The `#name` of the entrypoint: run this export of a core module instead of `_start`.
    pub export: Option<String>,
    /// argv as the module sees it; argv[0] is the module path as the spec gave it.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory inside the root filesystem, absolute.
    pub cwd: String,
    pub readonly_root: bool,
    /// containerd's stdin fifo, opened by the runner once the client attaches.
    pub stdin_fifo: Option<PathBuf>,
    /// The compiled-module cache; None when the engine config disables it.
    pub cache: Option<CacheSettings>,
    /// Who the module runs as, taken on after compilation.
    pub identity: Identity,
    /// The container's memory limit: it bounds the linear memories too.
    pub memory_limit: Option<u64>,
    /// Where the runner reads how much of that limit the runtime itself already uses.
    pub memory_usage_file: Option<PathBuf>,
    /// The container's directory mounts, seen by the module at their destinations.
    pub mounts: Vec<Preopen>,
    /// The container's file mounts, bound into its root filesystem.
    pub file_binds: Vec<FileBind>,
    /// Fork into a pid namespace, the pod's or a new one (set for the runner's children
    /// before exec).
    pub fork_into_pid_namespace: bool,
    /// Engine options settled from the engine config and the container's annotations.
    pub options: WasmOptions,
    /// The seccomp filters every thread of the runner gets before the guest runs.
    pub seccomp: Filters,
    /// The spec's AppArmor profile, changed to before the runner gives up root.
    pub apparmor_profile: Option<String>,
    /// How the runner logs: the shim's own level filter and line format.
    pub log: RunnerLog,
    /// The pod the container belongs to, for the runner's log lines.
    pub pod: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerLog {
    /// An `EnvFilter` directive, as the shim's own.
    pub filter: String,
    pub format: wedge_runtime_config::LogFormat,
    /// Report closed spans to the shim, which exports them (see `crate::telemetry`).
    pub spans: bool,
}

/// Where the module's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleSource {
    /// A file of the root filesystem, by its absolute path there.
    Rootfs { path: String },
    /// An image layer, already read and verified by the shim, at [`MODULE_FD`].
    Layer { digest: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// Shim → runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShimMessage {
    Prepare(Box<RunSpec>),
    Start,
}

/// Runner → shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerMessage {
    /// The module is compiled (or loaded from the cache), linked and ready to start.
    Ready { program: ProgramOrigin },
    /// The module cannot run; `reason` is for the user.
    Rejected { reason: String },
    /// The host could not set the runner up; `reason` is for the operator.
    Failed { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("control channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("control channel closed")]
    Closed,
    #[error("malformed control message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// The longest control message either side reads; a run spec is a few KiB.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 20;

pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Result<T, ProtocolError> {
    Ok(serde_json::from_slice(line)?)
}

/// Blocking send, for the runner side.
pub fn send<T: Serialize>(writer: &mut impl Write, message: &T) -> Result<(), ProtocolError> {
    writer.write_all(&encode(message)?)?;
    writer.flush()?;
    Ok(())
}

/// Blocking receive, for the runner side.
pub fn receive<T: for<'de> Deserialize<'de>>(
    reader: &mut impl BufRead,
) -> Result<T, ProtocolError> {
    let mut line = Vec::new();
    if reader
        .take(MAX_MESSAGE_BYTES)
        .read_until(b'\n', &mut line)?
        == 0
    {
        return Err(ProtocolError::Closed);
    }
    decode(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_lines() {
        let spec = RunSpec {
            container_id: "c1".into(),
            rootfs: "/run/bundle/rootfs".into(),
            module: ModuleSource::Layer {
                digest: "sha256:00".into(),
            },
            export: Some("run".into()),
            args: vec!["/app.wasm".into(), "a b".into()],
            env: vec![("K".into(), "v=1".into())],
            cwd: "/".into(),
            readonly_root: true,
            stdin_fifo: Some("/run/x/stdin".into()),
            cache: Some(CacheSettings {
                dir: "/var/lib/wedge/cache".into(),
                max_bytes: 1 << 30,
            }),
            identity: Identity {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![5],
            },
            memory_limit: Some(64 << 20),
            memory_usage_file: Some("/sys/fs/cgroup/memory/pods/c1/memory.usage_in_bytes".into()),
            mounts: vec![Preopen {
                host: "/var/lib/kubelet/pods/p/volumes/data".into(),
                guest: "/data".into(),
                readonly: true,
            }],
            file_binds: vec![FileBind {
                host: "/var/lib/containerd/sandboxes/p/hosts".into(),
                guest: "/etc/hosts".into(),
                readonly: false,
            }],
            fork_into_pid_namespace: true,
            options: wedge_runtime_config::EngineConfig::default()
                .wasm_options(&Default::default(), Some("9000"))
                .unwrap(),
            seccomp: Filters::for_container(None).unwrap(),
            apparmor_profile: Some("cri-containerd.apparmor.d".into()),
            log: RunnerLog {
                filter: "info".into(),
                format: wedge_runtime_config::LogFormat::Json,
                spans: true,
            },
            pod: Some("default/web".into()),
        };
        let mut wire = Vec::new();
        send(&mut wire, &ShimMessage::Prepare(Box::new(spec.clone()))).unwrap();
        send(&mut wire, &ShimMessage::Start).unwrap();
        let mut reader = std::io::BufReader::new(&wire[..]);
        assert_eq!(
            receive::<ShimMessage>(&mut reader).unwrap(),
            ShimMessage::Prepare(Box::new(spec))
        );
        assert_eq!(
            receive::<ShimMessage>(&mut reader).unwrap(),
            ShimMessage::Start
        );
        assert!(matches!(
            receive::<ShimMessage>(&mut reader),
            Err(ProtocolError::Closed)
        ));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Whatever the other side sends, reading answers a message or an error.
            #[test]
            fn any_bytes_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode::<RunnerMessage>(&bytes);
                let _ = decode::<ShimMessage>(&bytes);
                let _ = receive::<RunnerMessage>(&mut bytes.as_slice());
            }

            /// Any text (newlines, quotes, any unicode) travels as exactly one line and
            /// arrives unchanged.
            #[test]
            fn any_reason_travels_as_one_line(reason in any::<String>(), rejected in any::<bool>()) {
                let message = if rejected {
                    RunnerMessage::Rejected { reason }
                } else {
                    RunnerMessage::Failed { reason }
                };
                let line = encode(&message).unwrap();
                prop_assert_eq!(line.iter().filter(|byte| **byte == b'\n').count(), 1);
                prop_assert_eq!(line.last(), Some(&b'\n'));
                let mut reader = line.as_slice();
                prop_assert_eq!(receive::<RunnerMessage>(&mut reader).unwrap(), message);
            }
        }

        #[test]
        fn a_message_past_the_bound_is_refused_not_buffered() {
            let endless = vec![b'x'; MAX_MESSAGE_BYTES as usize + 10];
            let mut reader = endless.as_slice();
            assert!(matches!(
                receive::<RunnerMessage>(&mut reader),
                Err(ProtocolError::Malformed(_))
            ));
            // Only the bound was consumed.
            assert_eq!(reader.len(), 10);
        }
    }
}
