//! Running a program as a WASI command: core modules through preview1 (`_start`, or a named
//! export for `path.wasm#name`), components through preview2's `wasi:cli/run`.

use std::path::Path;

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    Engine, ExternType, FuncType, InstancePre, Linker, Module, Store, StoreLimits,
    StoreLimitsBuilder, ValType,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{classify, Outcome, Program, Rejected};

/// The WASI reactor convention: a module that exports this wants it called once before any
/// other export.
const REACTOR_INIT: &str = "_initialize";

/// Store data of a core module: its preview1 context and the memory bound.
pub struct CoreState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// Store data of a component: its WASI context, the resource table it lives in and the
/// memory bound.
pub struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
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
        pre: CommandPre<ComponentState>,
    },
}

/// A program linked against WASI, ready to instantiate.
pub struct PreparedCommand {
    engine: Engine,
    linked: Linked,
}

/// The WASI view a command gets: argv, env, its root filesystem, its mounts and the
/// process's stdio; and the bound on its linear memories.
pub struct CommandContext<'a> {
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub rootfs: &'a Path,
    pub readonly_root: bool,
    pub mounts: &'a [Preopen],
    /// Total bytes any one linear memory may grow to (the container's memory limit).
    pub memory_limit: Option<u64>,
}

/// A host directory the command sees at `guest` (a volume, an emptyDir).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Preopen {
    pub host: std::path::PathBuf,
    pub guest: String,
    pub readonly: bool,
}

fn fs_perms(readonly: bool) -> FsPerms {
    if readonly {
        FsPerms::ReadOnly
    } else {
        FsPerms::ReadWrite
    }
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
    pub fn with_context(self, ctx: &CommandContext<'_>) -> Result<ReadyCommand, Rejected> {
        let mut builder = WasiCtxBuilder::new();
        builder
            .args(ctx.args)
            .envs(ctx.env)
            .inherit_stdio()
            // The runner is a process of its own: blocking it on file I/O is what we want,
            // and it spares a thread pool.
            .allow_blocking_current_thread(true);
        builder
            .preopened_dir(ctx.rootfs, "/", fs_perms(ctx.readonly_root))
            .map_err(|err| Rejected::from_wasmtime("cannot open the root filesystem", &err))?;
        for mount in ctx.mounts {
            builder
                .preopened_dir(&mount.host, &mount.guest, fs_perms(mount.readonly))
                .map_err(|err| {
                    Rejected::from_wasmtime(
                        &format!(
                            "cannot open mount {} for {}",
                            mount.host.display(),
                            mount.guest
                        ),
                        &err,
                    )
                })?;
        }
        let mut limits = StoreLimitsBuilder::new();
        if let Some(bytes) = ctx.memory_limit {
            limits = limits.memory_size(usize::try_from(bytes).unwrap_or(usize::MAX));
        }
        let limits = limits.build();
        let state = match self.linked {
            Linked::Core { pre, entry } => Ready::Core {
                pre,
                entry,
                state: CoreState {
                    wasi: builder.build_p1(),
                    limits,
                },
            },
            Linked::Component { pre } => Ready::Component {
                pre,
                state: ComponentState {
                    ctx: builder.build(),
                    table: ResourceTable::new(),
                    limits,
                },
            },
        };
        Ok(ReadyCommand {
            engine: self.engine,
            state,
        })
    }
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
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|err| Rejected::from_wasmtime("cannot link WASI preview2", &err))?;
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|err| Rejected::from_wasmtime("cannot link the component", &err))?;
    let pre = CommandPre::new(instance_pre).map_err(|_| {
        let component_type = component.component_type();
        let exports: Vec<&str> = component_type
            .exports(engine)
            .map(|(name, _)| name)
            .collect();
        Rejected(format!(
            "the component exports nothing runnable: it has no wasi:cli/run export \
             (it exports: {})",
            listing(&exports)
        ))
    })?;
    Ok(Linked::Component { pre })
}

fn listing(names: &[&str]) -> String {
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names.join(", ")
    }
}

enum Ready {
    Core {
        pre: InstancePre<CoreState>,
        entry: CoreEntry,
        state: CoreState,
    },
    Component {
        pre: CommandPre<ComponentState>,
        state: ComponentState,
    },
}

/// A command with its WASI context, waiting for the container's Start.
pub struct ReadyCommand {
    engine: Engine,
    state: Ready,
}

impl ReadyCommand {
    pub async fn run(self) -> Outcome {
        match self.state {
            Ready::Core { pre, entry, state } => {
                let mut store = Store::new(&self.engine, state);
                store.limiter(|state| &mut state.limits);
                run_core(&mut store, &pre, &entry).await
            }
            Ready::Component { pre, state } => {
                let mut store = Store::new(&self.engine, state);
                store.limiter(|state| &mut state.limits);
                let result = async {
                    let command = pre.instantiate_async(&mut store).await?;
                    command.wasi_cli_run().call_run(&mut store).await
                }
                .await;
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
    use super::super::new_engine;
    use super::*;

    fn prepare(wat: &str, export: Option<&str>) -> Result<PreparedCommand, Rejected> {
        let engine = new_engine().unwrap();
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
        let dir = tempfile::tempdir().unwrap();
        let ready = prepare(wat, export)
            .unwrap()
            .with_context(&CommandContext {
                args: &["m.wasm".to_string()],
                env: &[],
                rootfs: dir.path(),
                readonly_root: true,
                mounts: &[],
                memory_limit: limit,
            })
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
            err.0.contains("nothing runnable") && err.0.contains("hello"),
            "{err}"
        );
        let err = prepare(component, Some("hello")).err().unwrap();
        assert!(err.0.contains("is a component"), "{err}");
    }
}
