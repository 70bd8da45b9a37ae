//! The wasmtime side of a runner: the one place that builds a `wasmtime::Config`, the
//! compile/link step that can reject a module, and running a WASI preview1 command.

use std::path::Path;

use wasmtime::{Config, Engine, ExternType, InstancePre, Linker, Module, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

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

/// The engine every runner uses. Options that change generated code go here and nowhere else.
pub fn new_engine() -> Result<Engine, Rejected> {
    let mut config = Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    Engine::new(&config).map_err(|err| Rejected::from_wasmtime("cannot configure wasmtime", &err))
}

/// A module compiled and linked against WASI, ready to instantiate.
pub struct PreparedCommand {
    engine: Engine,
    pre: InstancePre<WasiP1Ctx>,
}

/// The WASI view a command gets: argv, env, its root filesystem and the process's stdio.
pub struct CommandContext<'a> {
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub rootfs: &'a Path,
    pub readonly_root: bool,
}

impl PreparedCommand {
    /// Compiles `bytes` and resolves its imports. Anything wrong with the module shows up
    /// here, before the container is reported created.
    pub fn compile(engine: &Engine, bytes: &[u8]) -> Result<Self, Rejected> {
        match wasm_kind(bytes) {
            Some(WasmKind::CoreModule) => {}
            Some(WasmKind::Component) => {
                return Err(Rejected(
                    "the entrypoint is a WebAssembly component; only core WASI preview1 \
                     modules are supported yet"
                        .into(),
                ))
            }
            None => {
                return Err(Rejected(
                    "the entrypoint is not a WebAssembly binary (bad magic or version)".into(),
                ))
            }
        }
        let module = Module::new(engine, bytes)
            .map_err(|err| Rejected::from_wasmtime("invalid wasm module", &err))?;
        require_command_export(&module)?;

        let mut linker: Linker<WasiP1Ctx> = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |ctx| ctx)
            .map_err(|err| Rejected::from_wasmtime("cannot link WASI", &err))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|err| Rejected::from_wasmtime("cannot link the module", &err))?;
        Ok(PreparedCommand {
            engine: engine.clone(),
            pre,
        })
    }

    /// Builds the WASI context now, so that a filesystem that cannot be opened is a Create
    /// error and not an exit code.
    pub fn with_context(self, ctx: &CommandContext<'_>) -> Result<ReadyCommand, Rejected> {
        let perms = if ctx.readonly_root {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        let mut builder = WasiCtxBuilder::new();
        builder
            .args(ctx.args)
            .envs(ctx.env)
            .inherit_stdio()
            // The runner is a process of its own: blocking it on file I/O is what we want,
            // and it spares a thread pool.
            .allow_blocking_current_thread(true);
        builder
            .preopened_dir(ctx.rootfs, "/", perms)
            .map_err(|err| Rejected::from_wasmtime("cannot open the root filesystem", &err))?;
        Ok(ReadyCommand {
            prepared: self,
            wasi: builder.build_p1(),
        })
    }
}

fn require_command_export(module: &Module) -> Result<(), Rejected> {
    match module.get_export("_start") {
        Some(ExternType::Func(_)) => Ok(()),
        _ => {
            let exports: Vec<&str> = module.exports().map(|export| export.name()).collect();
            Err(Rejected(format!(
                "the module has no _start function, so it is not a WASI command (it exports: {})",
                if exports.is_empty() {
                    "nothing".to_string()
                } else {
                    exports.join(", ")
                }
            )))
        }
    }
}

/// A command with its WASI context, waiting for the container's Start.
pub struct ReadyCommand {
    prepared: PreparedCommand,
    wasi: WasiP1Ctx,
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

impl ReadyCommand {
    pub async fn run(self) -> Outcome {
        let mut store = Store::new(&self.prepared.engine, self.wasi);
        let result = async {
            let instance = self.prepared.pre.instantiate_async(&mut store).await?;
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call_async(&mut store, ()).await
        }
        .await;
        classify(result)
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

    fn run_wat(wat: &str, rootfs: &Path) -> Outcome {
        let engine = new_engine().unwrap();
        let bytes = wat::parse_str(wat).unwrap();
        let ready = PreparedCommand::compile(&engine, &bytes)
            .unwrap()
            .with_context(&CommandContext {
                args: &["m.wasm".to_string()],
                env: &[],
                rootfs,
                readonly_root: true,
            })
            .unwrap();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(ready.run())
    }

    #[test]
    fn kinds_come_from_the_preamble() {
        assert_eq!(wasm_kind(b"\0asm\x01\0\0\0"), Some(WasmKind::CoreModule));
        assert_eq!(wasm_kind(b"\0asm\x0d\0\x01\0"), Some(WasmKind::Component));
        assert_eq!(wasm_kind(b"\x7fELF\x02\x01\x01\0"), None);
        assert_eq!(wasm_kind(b"\0asm"), None);
    }

    #[test]
    fn proc_exit_and_traps_become_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let exit42 = r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.const 42))))"#;
        assert_eq!(run_wat(exit42, dir.path()).exit_code(), 42);

        let trap = r#"(module (memory (export "memory") 1)
            (func (export "_start") unreachable))"#;
        match run_wat(trap, dir.path()) {
            Outcome::Trapped(message) => assert!(message.contains("unreachable"), "{message}"),
            other => panic!("expected a trap, got {other:?}"),
        }

        let ok = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;
        assert_eq!(run_wat(ok, dir.path()).exit_code(), 0);
    }

    #[test]
    fn rejects_what_cannot_run() {
        let engine = new_engine().unwrap();
        let no_start = wat::parse_str(r#"(module (func (export "main")))"#).unwrap();
        let err = PreparedCommand::compile(&engine, &no_start).err().unwrap();
        assert!(
            err.0.contains("no _start") && err.0.contains("main"),
            "{err}"
        );

        let mut corrupt = b"\0asm\x01\0\0\0".to_vec();
        corrupt.extend_from_slice(&[0xff; 16]);
        let err = PreparedCommand::compile(&engine, &corrupt).err().unwrap();
        assert!(err.0.starts_with("invalid wasm module"), "{err}");

        let unknown_import =
            wat::parse_str(r#"(module (import "env" "nope" (func)) (func (export "_start")))"#)
                .unwrap();
        let err = PreparedCommand::compile(&engine, &unknown_import)
            .err()
            .unwrap();
        assert!(err.0.contains("nope"), "{err}");
    }
}
