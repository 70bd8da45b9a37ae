//! Native Linux containers — the pod's pause container, sidecars, any image whose entrypoint
//! is not wasm — handed to `runc` the way containerd's own runc shim does it: `runc create`
//! with the container's stdio inherited, `runc start`, `runc kill`, `runc delete`. The init
//! process is reparented to the shim (a subreaper), whose reaper sees it exit.

pub mod console;
pub mod runc;

pub use console::Console;
pub use runc::Runc;
