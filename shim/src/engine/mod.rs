//! The wasmtime side of a runner: the one place that builds a `wasmtime::Config`, loading a
//! program (compiled or from the cache), and running it as a WASI command.

pub mod cache;
pub mod cache_partition;
pub mod command;
mod context;
mod deadline;
pub mod http;
pub mod memory_bound;
mod outgoing;
pub mod program;
mod shared_instances;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Trap};
use wasmtime_wasi::{I32Exit, WasiView};
use wasmtime_wasi_http::WasiHttpView;
use wedge_runtime_config::{WasmFeature, WasmOptions};

pub use command::{PreparedCommand, ReadyCommand};
pub use context::{CommandContext, Preopen};
pub use deadline::EpochTicker;
pub use http::{http_handler_export, HttpWorld, PreparedServer, ReadyServer};
pub use program::{compile_here, load_program, CompileArtifact, Program, ProgramOrigin};

/// Exit status of a module that trapped: 128 + SIGABRT, as a native program that aborts.
pub const TRAP_EXIT_CODE: i32 = 134;

/// Exit status when the host fails the module (not a trap, not `proc_exit`).
pub const HOST_ERROR_EXIT_CODE: i32 = 1;

/// Exit status of a module stopped at its deadline: what `timeout(1)` uses, so scripts and
/// operators read it the same way.
pub const DEADLINE_EXIT_CODE: i32 = 124;

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

/// What the engine will run: a core module as a command, a component as a command (one
/// instance), or an HTTP server (instances from a pool, per request or shared by requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineRole {
    CoreCommand,
    ComponentCommand,
    HttpServer,
}

impl EngineRole {
    /// The role a program's bytes call for: a component exporting an HTTP handler (0.2's
    /// `incoming-handler` or 0.3's `handler`) is served, everything else runs as a command.
    pub fn of(bytes: &[u8]) -> EngineRole {
        match wasm_kind(bytes) {
            Some(WasmKind::Component) if http_handler_export(bytes).is_some() => {
                EngineRole::HttpServer
            }
            Some(WasmKind::Component) => EngineRole::ComponentCommand,
            _ => EngineRole::CoreCommand,
        }
    }
}

/// Every WASI interface a component may import, 0.2 and 0.3 side by side, with `wasi:http`'s
/// types and outgoing requests of both.
pub(crate) fn link_wasi_and_http<T>(linker: &mut Linker<T>) -> Result<(), Rejected>
where
    T: WasiView + WasiHttpView + 'static,
{
    wasmtime_wasi::p2::add_to_linker_async(linker)
        .map_err(|err| Rejected::from_wasmtime("cannot link WASI 0.2", &err))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
        .map_err(|err| Rejected::from_wasmtime("cannot link wasi:http 0.2", &err))?;
    wasmtime_wasi::p3::add_to_linker(linker)
        .map_err(|err| Rejected::from_wasmtime("cannot link WASI 0.3", &err))?;
    wasmtime_wasi_http::p3::add_to_linker(linker)
        .map_err(|err| Rejected::from_wasmtime("cannot link wasi:http 0.3", &err))
}

fn listing(names: &[&str]) -> String {
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}

/// The options that change generated code, as a string the cache key covers. wasmtime's own
/// compatibility hash covers them too; this keeps the key honest if an option is ever applied
/// outside `Config`.
pub fn codegen_options(options: &WasmOptions) -> String {
    let features: Vec<&str> = options.features.iter().map(|f| f.name()).collect();
    format!(
        "opt-level=speed;epochs;fuel={};features={}",
        options.fuel.is_some(),
        features.join(",")
    )
}

/// The engine of one runner. Options that change generated code go here and nowhere else.
pub fn new_engine(options: &WasmOptions, role: EngineRole) -> Result<Engine, Rejected> {
    let mut config = Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Deadlines (commands) and request timeouts (servers) interrupt through epochs; the check
    // is one load and compare per loop header, cheap enough to keep always on and so keep one
    // compiled form per module.
    config.epoch_interruption(true);
    config.consume_fuel(options.fuel.is_some());
    // The component model's async (WASI 0.3) needs a store able to run tasks concurrently;
    // a core module never does, so its stores skip that bookkeeping.
    config.concurrency_support(role != EngineRole::CoreCommand);
    for feature in WasmFeature::ALL {
        enable_feature(&mut config, feature, options.features.contains(&feature));
    }
    if role == EngineRole::HttpServer {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(options)));
    }
    Engine::new(&config).map_err(|err| Rejected::from_wasmtime("cannot configure wasmtime", &err))
}

fn enable_feature(config: &mut Config, feature: WasmFeature, on: bool) {
    match feature {
        WasmFeature::BulkMemory => config.wasm_bulk_memory(on),
        WasmFeature::ReferenceTypes => config.wasm_reference_types(on),
        WasmFeature::MultiValue => config.wasm_multi_value(on),
        WasmFeature::Simd => config.wasm_simd(on),
        WasmFeature::RelaxedSimd => config.wasm_relaxed_simd(on),
        WasmFeature::TailCall => config.wasm_tail_call(on),
        WasmFeature::ExtendedConst => config.wasm_extended_const(on),
        WasmFeature::MultiMemory => config.wasm_multi_memory(on),
        WasmFeature::Threads => config.wasm_threads(on),
        WasmFeature::FunctionReferences => config.wasm_function_references(on),
        WasmFeature::Gc => config.wasm_gc(on),
        WasmFeature::Exceptions => config.wasm_exceptions(on),
        WasmFeature::Memory64 => config.wasm_memory64(on),
        WasmFeature::WideArithmetic => config.wasm_wide_arithmetic(on),
        WasmFeature::CustomPageSizes => config.wasm_custom_page_sizes(on),
    };
}

/// Slots for `pooling_instances` live requests. Slots are address space reserved once, not
/// memory: the container's cgroup still bounds what is touched.
fn pooling(options: &WasmOptions) -> PoolingAllocationConfig {
    let instances = options.pooling_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        // A component built with the WASI adapter holds a few core instances, memories and
        // tables (its module, the adapter, the shims between them).
        .total_core_instances(instances.saturating_mul(8))
        .total_memories(instances.saturating_mul(2))
        .total_tables(instances.saturating_mul(4))
        .total_stacks(instances)
        .max_memories_per_module(if options.features.contains(&WasmFeature::MultiMemory) {
            4
        } else {
            1
        })
        .max_tables_per_module(4)
        .max_unused_warm_slots(instances.min(16));
    if let Some(bytes) = options.pooled_memory {
        pool.max_memory_size(usize::try_from(bytes).unwrap_or(usize::MAX));
    }
    if options.features.contains(&WasmFeature::Gc) {
        pool.total_gc_heaps(instances);
    }
    pool
}

/// How a command ended, before it becomes an exit status.
#[derive(Debug)]
pub enum Outcome {
    Exited(i32),
    Trapped(String),
    HostError(String),
    /// Stopped by the epoch deadline (`wedge.dev/timeout`).
    DeadlineExceeded,
    /// Ran out of fuel (`wedge.dev/fuel`).
    OutOfFuel,
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Exited(code) => *code,
            Outcome::Trapped(_) => TRAP_EXIT_CODE,
            Outcome::HostError(_) => HOST_ERROR_EXIT_CODE,
            Outcome::DeadlineExceeded => DEADLINE_EXIT_CODE,
            Outcome::OutOfFuel => TRAP_EXIT_CODE,
        }
    }
}

fn classify(result: wasmtime::Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::Exited(0),
        Err(err) => {
            if let Some(exit) = err.downcast_ref::<I32Exit>() {
                Outcome::Exited(exit.0)
            } else if let Some(trap) = err.downcast_ref::<Trap>() {
                match trap {
                    Trap::Interrupt => Outcome::DeadlineExceeded,
                    Trap::OutOfFuel => Outcome::OutOfFuel,
                    _ => Outcome::Trapped(format!("{err:?}")),
                }
            } else {
                Outcome::HostError(format!("{err:?}"))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn default_options() -> WasmOptions {
        wedge_runtime_config::EngineConfig::default()
            .wasm_options(&Default::default(), None)
            .unwrap()
    }

    pub fn test_engine() -> Engine {
        new_engine(&default_options(), EngineRole::ComponentCommand).unwrap()
    }

    pub fn test_codegen() -> String {
        codegen_options(&default_options())
    }

    #[test]
    fn kinds_come_from_the_preamble() {
        assert_eq!(wasm_kind(b"\0asm\x01\0\0\0"), Some(WasmKind::CoreModule));
        assert_eq!(wasm_kind(b"\0asm\x0d\0\x01\0"), Some(WasmKind::Component));
        assert_eq!(wasm_kind(b"\x7fELF\x02\x01\x01\0"), None);
        assert_eq!(wasm_kind(b"\0asm"), None);
    }
}
