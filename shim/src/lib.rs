//! Wedge: a containerd shim v2 that runs WebAssembly modules as containers.
//!
//! The binary `containerd-shim-wedge-v1` serves containerd's Task API; each wasm container
//! runs in a runner process of its own, started from the same binary.

pub mod backend;
pub mod bootstrap;
pub mod content;
pub mod engine;
pub mod error;
pub mod exits;
pub mod image;
pub mod local_run;
pub mod log_lines;
pub mod logging;
pub mod options;
pub mod rootfs;
pub mod runc;
pub mod runner;
pub mod sandbox;
pub mod shim;
pub mod spec;
pub mod stdio;
pub mod task;
pub mod telemetry;

pub use error::{Error, Result};
pub use shim::RUNTIME_ID;
