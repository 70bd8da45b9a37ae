//! Running a program as a WASI command: core modules through preview1 (`_start`, or a named
//! export for `path.wasm#name`), components through `wasi:cli/run`, 0.3 (async, driven on
//! the store's concurrent event loop) or 0.2. A component sees WASI 0.2 and 0.3 side by side,
//! `wasi:http` included (outgoing requests under the same `[network]` policy as sockets):
//! components built from 0.3 toolchains often import packages of both.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Engine, ExternType, FuncType, InstancePre, Linker, Module, Store, StoreLimits, ValType,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::context::CommandContext;
use super::deadline::{arm, EpochTicker};
use super::outgoing::OutgoingPolicy;
use super::{classify, link_wasi_and_http, listing, Outcome, Program, Rejected};

/// The WASI reactor convention: a module that exports this wants it called once before any
/// other export.
const REACTOR_INIT: &str = "_initialize";

/// Store data of a core module: its preview1 context and the memory bound.
pub struct CoreState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// Store data of a component: its WASI and wasi:http contexts, the resource table they live
/// in, the memory bound and the policy for outgoing requests.
pub struct ComponentState {
    ctx: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: StoreLimits,
    outgoing: OutgoingPolicy,
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outgoing,
        }
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// What a core module runs: `_start`, or a named export with no parameters whose single
/// `i32` result, if it has one, is the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CoreEntry {
    Start,
    Export {
        name: String,
        returns_status: bool,
        initialize: bool,
    },
}

enum Linked {
    Core {
        pre: InstancePre<CoreState>,
        entry: CoreEntry,
    },
    Component {
        pre: ComponentCommand,
    },
}

/// The `wasi:cli/run` a component exports: 0.3 when it has one, else 0.2.
enum ComponentCommand {
    P3(wasmtime_wasi::p3::bindings::CommandPre<ComponentState>),
    P2(wasmtime_wasi::p2::bindings::CommandPre<ComponentState>),
}

impl ComponentCommand {
    pub fn wasi_version(&self) -> &'static str {
        match self {
            ComponentCommand::P3(_) => "0.3",
            ComponentCommand::P2(_) => "0.2",
        }
    }
}

/// A program linked against WASI, ready to instantiate.
pub struct PreparedCommand {
    engine: Engine,
    linked: Linked,
}

impl PreparedCommand {
    /// Resolves the program's imports and its entry point; `export` is the `#name` of the
    /// entrypoint, if any. Anything wrong shows up here, before the container is created.
    pub fn new(engine: &Engine, program: Program, export: Option<&str>) -> Result<Self, Rejected> {
        let linked = match program {
            Program::Core(module) => link_core(engine, &module, export)?,
            Program::Component(component) => {
                if let Some(name) = export {
                    return Err(Rejected(format!(
                        "#{name} names an export of a core module, but the entrypoint is a \
                         component; components run through wasi:cli/run"
                    )));
                }
                link_component(engine, &component)?
            }
        };
        Ok(PreparedCommand {
            engine: engine.clone(),
            linked,
        })
    }

    /// Builds the WASI context now, so that a filesystem that cannot be opened is a Create
    /// error and not an exit code.
    pub fn with_context(
        self,
        ctx: &CommandContext<'_>,
        limits: RunLimits,
    ) -> Result<ReadyCommand, Rejected> {
        let mut builder = ctx.wasi_builder()?;
        let store_limits = ctx.store_limits();
        let state = match self.linked {
            Linked::Core { pre, entry } => Ready::Core {
                pre,
                entry,
                state: CoreState {
                    wasi: builder.build_p1(),
                    limits: store_limits,
                },
            },
            Linked::Component { pre } => Ready::Component {
                pre,
                state: ComponentState {
                    ctx: builder.build(),
                    http: WasiHttpCtx::new(),
                    table: ResourceTable::new(),
                    limits: store_limits,
                    outgoing: OutgoingPolicy {
                        network: Arc::new(ctx.network.clone()),
                    },
                },
            },
        };
        Ok(ReadyCommand {
            engine: self.engine,
            state,
            limits,
        })
    }
}

/// How long and how much a command may run; none = unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunLimits {
    pub deadline: Option<Duration>,
    pub fuel: Option<u64>,
}

fn link_core(engine: &Engine, module: &Module, export: Option<&str>) -> Result<Linked, Rejected> {
    let entry = match export {
        None => {
            require_func(module, "_start", "so it is not a WASI command")?;
            CoreEntry::Start
        }
        Some(name) => {
            let ty = require_func(module, name, "")?;
            let results: Vec<ValType> = ty.results().collect();
            let returns_status = match (ty.params().len(), &results[..]) {
                (0, []) => false,
                (0, [ValType::I32]) => true,
                _ => {
                    return Err(Rejected(format!(
                        "export {name} has type {ty}; an entrypoint export takes no \
                         parameters and returns nothing or an i32 exit status"
                    )))
                }
            };
            CoreEntry::Export {
                name: name.to_string(),
                returns_status,
                initialize: matches!(module.get_export(REACTOR_INIT), Some(ExternType::Func(_))),
            }
        }
    };
    let mut linker: Linker<CoreState> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state| &mut state.wasi)
        .map_err(|err| Rejected::from_wasmtime("cannot link WASI", &err))?;
    let pre = linker
        .instantiate_pre(module)
        .map_err(|err| Rejected::from_wasmtime("cannot link the module", &err))?;
    Ok(Linked::Core { pre, entry })
}

fn require_func(module: &Module, name: &str, why: &str) -> Result<FuncType, Rejected> {
    match module.get_export(name) {
        Some(ExternType::Func(ty)) => Ok(ty),
        _ => {
            let exports: Vec<&str> = module.exports().map(|export| export.name()).collect();
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(", {why}")
            };
            Err(Rejected(format!(
                "the module has no {name} function{why} (it exports: {})",
                listing(&exports)
            )))
        }
    }
}

fn link_component(engine: &Engine, component: &Component) -> Result<Linked, Rejected> {
    let mut linker = wasmtime::component::Linker::<ComponentState>::new(engine);
    link_wasi_and_http(&mut linker)?;
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|err| Rejected::from_wasmtime("cannot link the component", &err))?;
    let pre = match wasmtime_wasi::p3::bindings::CommandPre::new(instance_pre.clone()) {
        Ok(pre) => ComponentCommand::P3(pre),
        Err(_) => ComponentCommand::P2(
            wasmtime_wasi::p2::bindings::CommandPre::new(instance_pre).map_err(|_| {
                let component_type = component.component_type();
                let exports: Vec<&str> = component_type
                    .exports(engine)
                    .map(|(name, _)| name)
                    .collect();
                Rejected(format!(
                    "the component exports nothing runnable: it has neither a wasi:cli/run \
                     export (0.2.x or 0.3.x) nor a wasi:http handler (it exports: {})",
                    listing(&exports)
                ))
            })?,
        ),
    };
    tracing::debug!(wasi = pre.wasi_version(), "component runs as a command");
    Ok(Linked::Component { pre })
}

enum Ready {
    Core {
        pre: InstancePre<CoreState>,
        entry: CoreEntry,
        state: CoreState,
    },
    Component {
        pre: ComponentCommand,
        state: ComponentState,
    },
}

/// A command with its WASI context, waiting for the container's Start.
pub struct ReadyCommand {
    engine: Engine,
    state: Ready,
    limits: RunLimits,
}

impl ReadyCommand {
    pub async fn run(self) -> Outcome {
        // The deadline counts from Start, as a native process's time does.
        let _ticker = match self.limits.deadline {
            Some(_) => match EpochTicker::start(&self.engine) {
                Ok(ticker) => Some(ticker),
                Err(err) => {
                    return Outcome::HostError(format!("cannot start the deadline clock: {err}"))
                }
            },
            None => None,
        };
        let RunLimits { deadline, fuel } = self.limits;
        match self.state {
            Ready::Core { pre, entry, state } => {
                let mut store = Store::new(&self.engine, state);
                store.limiter(|state| &mut state.limits);
                if let Err(err) = arm(&mut store, deadline, fuel) {
                    return classify(Err(err));
                }
                run_core(&mut store, &pre, &entry).await
            }
            Ready::Component { pre, state } => {
                let mut store = Store::new(&self.engine, state);
                store.limiter(|state| &mut state.limits);
                if let Err(err) = arm(&mut store, deadline, fuel) {
                    return classify(Err(err));
                }
                let result = match pre {
                    ComponentCommand::P2(pre) => {
                        async {
                            let command = pre.instantiate_async(&mut store).await?;
                            command.wasi_cli_run().call_run(&mut store).await
                        }
                        .await
                    }
                    // The run export is an async task: the event loop drives it and every
                    // task it spawns until `run` returns.
                    ComponentCommand::P3(pre) => {
                        async {
                            let command = pre.instantiate_async(&mut store).await?;
                            store
                                .run_concurrent(async |store| {
                                    command.wasi_cli_run().call_run(store).await
                                })
                                .await?
                        }
                        .await
                    }
                };
                match result {
                    Ok(Ok(())) => Outcome::Exited(0),
                    // `wasi:cli/run` returning an error is a plain failure, status 1.
                    Ok(Err(())) => Outcome::Exited(1),
                    Err(err) => classify(Err(err)),
                }
            }
        }
    }
}

async fn run_core(
    store: &mut Store<CoreState>,
    pre: &InstancePre<CoreState>,
    entry: &CoreEntry,
) -> Outcome {
    let instance = match pre.instantiate_async(&mut *store).await {
        Ok(instance) => instance,
        Err(err) => return classify(Err(err)),
    };
    let result = async {
        match entry {
            CoreEntry::Start => {
                let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
                start.call_async(&mut *store, ()).await?;
                Ok(0)
            }
            CoreEntry::Export {
                name,
                returns_status,
                initialize,
            } => {
                if *initialize {
                    let init = instance.get_typed_func::<(), ()>(&mut *store, REACTOR_INIT)?;
                    init.call_async(&mut *store, ()).await?;
                }
                if *returns_status {
                    let func = instance.get_typed_func::<(), i32>(&mut *store, name)?;
                    func.call_async(&mut *store, ()).await
                } else {
                    let func = instance.get_typed_func::<(), ()>(&mut *store, name)?;
                    func.call_async(&mut *store, ()).await?;
                    Ok(0)
                }
            }
        }
    }
    .await;
    match result {
        Ok(status) => Outcome::Exited(status),
        Err(err) => classify(Err(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{default_options, test_engine};
    use super::*;

    fn prepare(wat: &str, export: Option<&str>) -> Result<PreparedCommand, Rejected> {
        let engine = test_engine();
        let bytes = wat::parse_str(wat).unwrap();
        let program = match super::super::wasm_kind(&bytes).unwrap() {
            super::super::WasmKind::CoreModule => {
                Program::Core(Module::new(&engine, &bytes).unwrap())
            }
            super::super::WasmKind::Component => {
                Program::Component(Component::new(&engine, &bytes).unwrap())
            }
        };
        PreparedCommand::new(&engine, program, export)
    }

    fn run(wat: &str, export: Option<&str>) -> Outcome {
        run_with_memory_limit(wat, export, None)
    }

    fn run_with_memory_limit(wat: &str, export: Option<&str>, limit: Option<u64>) -> Outcome {
        run_limited(wat, export, limit, RunLimits::default())
    }

    fn run_limited(
        wat: &str,
        export: Option<&str>,
        memory_limit: Option<u64>,
        limits: RunLimits,
    ) -> Outcome {
        let dir = tempfile::tempdir().unwrap();
        let network = default_options().network;
        let ready = prepare(wat, export)
            .unwrap()
            .with_context(
                &CommandContext {
                    args: &["m.wasm".to_string()],
                    env: &[],
                    rootfs: dir.path(),
                    readonly_root: true,
                    mounts: &[],
                    memory_limit,
                    network: &network,
                },
                limits,
            )
            .unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(ready.run())
    }

    #[test]
    fn the_memory_limit_fails_memory_grow_inside_wasm() {
        // Exit status 1 when growing by 256 pages (16 MiB) fails, 0 when it works.
        let grow = r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start")
              (call $exit (i32.eq (memory.grow (i32.const 256)) (i32.const -1)))))"#;
        assert_eq!(
            run_with_memory_limit(grow, None, Some(8 << 20)).exit_code(),
            1
        );
        assert_eq!(
            run_with_memory_limit(grow, None, Some(32 << 20)).exit_code(),
            0
        );
        assert_eq!(run_with_memory_limit(grow, None, None).exit_code(), 0);
    }

    #[test]
    fn a_deadline_stops_a_spinning_module() {
        let spin = r#"(module (memory (export "memory") 1)
            (func (export "_start") (loop $forever (br $forever))))"#;
        let limits = RunLimits {
            deadline: Some(Duration::from_millis(50)),
            fuel: None,
        };
        let started = std::time::Instant::now();
        let outcome = run_limited(spin, None, None, limits);
        assert!(matches!(outcome, Outcome::DeadlineExceeded), "{outcome:?}");
        assert_eq!(outcome.exit_code(), super::super::DEADLINE_EXIT_CODE);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn proc_exit_and_traps_become_exit_codes() {
        let exit42 = r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.const 42))))"#;
        assert_eq!(run(exit42, None).exit_code(), 42);

        let trap = r#"(module (memory (export "memory") 1)
            (func (export "_start") unreachable))"#;
        match run(trap, None) {
            Outcome::Trapped(message) => assert!(message.contains("unreachable"), "{message}"),
            other => panic!("expected a trap, got {other:?}"),
        }

        let ok = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;
        assert_eq!(run(ok, None).exit_code(), 0);
    }

    #[test]
    fn named_exports_run_after_initialize() {
        let reactor = r#"(module (memory (export "memory") 1)
            (global $g (mut i32) (i32.const 0))
            (func (export "_initialize") (global.set $g (i32.const 7)))
            (func (export "status") (result i32) (global.get $g))
            (func (export "nothing"))
            (func (export "takes") (param i32) (result i32) (local.get 0)))"#;
        assert_eq!(run(reactor, Some("status")).exit_code(), 7);
        assert_eq!(run(reactor, Some("nothing")).exit_code(), 0);
        let err = prepare(reactor, Some("takes")).err().unwrap();
        assert!(err.0.contains("export takes has type"), "{err}");
        let err = prepare(reactor, Some("missing")).err().unwrap();
        assert!(
            err.0.contains("no missing function") && err.0.contains("status"),
            "{err}"
        );
    }

    #[test]
    fn rejects_what_cannot_run() {
        let err = prepare(r#"(module (func (export "main")))"#, None)
            .err()
            .unwrap();
        assert!(
            err.0.contains("no _start") && err.0.contains("main"),
            "{err}"
        );

        let unknown_import = r#"(module (import "env" "nope" (func)) (func (export "_start")))"#;
        let err = prepare(unknown_import, None).err().unwrap();
        assert!(err.0.contains("nope"), "{err}");
    }

    #[test]
    fn a_component_exits_with_any_status_through_exit_with_code() {
        let component = r#"(component
            (import "wasi:cli/exit@0.2.6" (instance $exit
                (export "exit-with-code" (func (param "status-code" u8)))))
            (core func $exit_lowered (canon lower (func $exit "exit-with-code")))
            (core module $m
                (import "host" "exit" (func $exit (param i32)))
                (func (export "run") (result i32) (call $exit (i32.const 9)) (i32.const 0)))
            (core instance $host (export "exit" (func $exit_lowered)))
            (core instance $i (instantiate $m (with "host" (instance $host))))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $run_instance (export "run" (func $run)))
            (export "wasi:cli/run@0.2.6" (instance $run_instance)))"#;
        assert_eq!(run(component, None).exit_code(), 9);
    }

    #[test]
    fn components_without_wasi_cli_run_list_their_exports() {
        let component = r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (export "hello" (func $f)))"#;
        let err = prepare(component, None).err().unwrap();
        assert!(
            err.0.contains("nothing runnable")
                && err.0.contains("(0.2.x or 0.3.x)")
                && err.0.contains("hello"),
            "{err}"
        );
        let err = prepare(component, Some("hello")).err().unwrap();
        assert!(err.0.contains("is a component"), "{err}");
    }
}
