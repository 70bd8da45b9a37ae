//! The wasmtime side of a runner: the one place that builds a `wasmtime::Config`, loading a
//! program (compiled or from the cache), and running it as a WASI command.

pub mod cache;
pub mod command;
pub mod program;

use wasmtime::{Config, Engine, Trap};
use wasmtime_wasi::I32Exit;

pub use command::{CommandContext, Preopen, PreparedCommand, ReadyCommand};
pub use program::{load_program, Program, ProgramOrigin};

/// Exit status of a module that trapped: 128 + SIGABRT, as a native program that aborts.
pub const TRAP_EXIT_CODE: i32 = 134;

/// Exit status when the host fails the module (not a trap, not `proc_exit`).
pub const HOST_ERROR_EXIT_CODE: i32 = 1;

const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// The module failed to load; the text is meant for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

impl Rejected {
    fn from_wasmtime(what: &str, err: &wasmtime::Error) -> Self {
        // `{:#}` prints the whole cause chain on one line.
        Rejected(format!("{what}: {err:#}"))
    }
}

/// Which binary format a wasm file holds, from its 8-byte preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    CoreModule,
    Component,
}

impl WasmKind {
    pub fn describe(self) -> &'static str {
        match self {
            WasmKind::CoreModule => "core module",
            WasmKind::Component => "component",
        }
    }
}

/// True when `bytes` start like any WebAssembly binary (module or component).
pub fn has_wasm_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(WASM_MAGIC)
}

pub fn wasm_kind(bytes: &[u8]) -> Option<WasmKind> {
    if !has_wasm_magic(bytes) || bytes.len() < 8 {
        return None;
    }
    // Version 1 in little-endian u32 is a core module; a component has version 0x0d and
    // layer 1 in the upper half.
    match bytes[4..8] {
        [1, 0, 0, 0] => Some(WasmKind::CoreModule),
        [_, _, 1, 0] => Some(WasmKind::Component),
        _ => None,
    }
}

/// Engine options that change generated code, as a string the cache key covers. wasmtime's
/// own compatibility hash covers them too; this keeps the key honest if an option is ever
/// applied outside `Config`.
const CODEGEN_OPTIONS: &str = "opt-level=speed";

/// The engine every runner uses. Options that change generated code go here and nowhere else.
pub fn new_engine() -> Result<Engine, Rejected> {
    let mut config = Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    Engine::new(&config).map_err(|err| Rejected::from_wasmtime("cannot configure wasmtime", &err))
}

/// How a command ended, before it becomes an exit status.
#[derive(Debug)]
pub enum Outcome {
    Exited(i32),
    Trapped(String),
    HostError(String),
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(code) => *code,
            Outcome::Trapped(_) => TRAP_EXIT_CODE,
            Outcome::HostError(_) => HOST_ERROR_EXIT_CODE,
        }
    }
}

fn classify(result: wasmtime::Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::Exited(0),
        Err(err) => {
            if let Some(exit) = err.downcast_ref::<I32Exit>() {
                Outcome::Exited(exit.0)
            } else if err.downcast_ref::<Trap>().is_some() {
                Outcome::Trapped(format!("{err:?}"))
            } else {
                Outcome::HostError(format!("{err:?}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_preamble() {
        assert_eq!(wasm_kind(b"\0asm\x01\0\0\0"), Some(WasmKind::CoreModule));
        assert_eq!(wasm_kind(b"\0asm\x0d\0\x01\0"), Some(WasmKind::Component));
        assert_eq!(wasm_kind(b"\x7fELF\x02\x01\x01\0"), None);
        assert_eq!(wasm_kind(b"\0asm"), None);
    }
}
