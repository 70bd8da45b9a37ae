//! The runner: one process per wasm container, started by the shim from its own binary.
//!
//! Keeping the module out of the shim's threads means a kill, a crash or a runaway module
//! touches only its own container, and compilation of untrusted wasm happens in a process
//! the container's limits can later apply to.
//!
//! Split by side: `launch` is what the shim does to start a runner and talk to it; `child`
//! is what runs inside the runner process; `protocol` is the control channel between them.

pub mod child;
pub mod launch;
pub mod protocol;

pub use child::main;
