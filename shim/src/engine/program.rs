//! Turning wasm bytes into a loaded program: from the compiled-module cache when a verified
//! entry exists, else by compiling (in the runner's compile child) and storing the result.

use serde::{Deserialize, Serialize};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use super::cache::{CacheKey, Lookup, ModuleCache};
use super::{wasm_kind, Rejected, WasmKind};

/// A compiled core module or component.
pub enum Program {
    Core(Module),
    Component(Component),
}

impl Program {
    pub fn kind(&self) -> WasmKind {
        match self {
            Program::Core(_) => WasmKind::CoreModule,
            Program::Component(_) => WasmKind::Component,
        }
    }
}

/// Where a program came from; the runner reports it to the shim, which logs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "origin")]
pub enum ProgramOrigin {
    /// Loaded from a verified cache entry: nothing was compiled.
    Cached,
    /// Compiled and stored in the cache.
    Compiled,
    /// A cache entry was found but could not be trusted; it was removed and the program
    /// compiled again.
    Recompiled { reason: String },
    /// Compiled without the cache (disabled, unusable or full of errors).
    Uncached { reason: String },
}

impl ProgramOrigin {
    pub fn label(&self) -> &'static str {
        match self {
            ProgramOrigin::Cached => "cached",
            ProgramOrigin::Compiled => "compiled",
            ProgramOrigin::Recompiled { .. } => "recompiled",
            ProgramOrigin::Uncached { .. } => "uncached",
        }
    }
}

/// Turns wasm bytes of a kind into a serialised wasmtime artifact for an engine. The runner
/// compiles in a child process of its own (so that no compiler thread outlives the
/// compilation in the process that runs the guest); tests compile in place.
pub type CompileArtifact<'a> = dyn Fn(&Engine, WasmKind, &[u8]) -> Result<Vec<u8>, Rejected> + 'a;

/// Compiles and serialises in this process.
pub fn compile_here(engine: &Engine, kind: WasmKind, bytes: &[u8]) -> Result<Vec<u8>, Rejected> {
    let program = compile(engine, kind, bytes)?;
    serialize(&program).map_err(Rejected)
}

/// Loads `bytes` (whose sha256 is `sha256`) through `cache`, or compiles them with `compile`
/// when the cache is `Err` (the reason it is unavailable) or has no usable entry. A fresh
/// artifact is stored and then loaded from the cache like any other entry, so that every
/// container of a module maps the same pages.
pub fn load_program(
    engine: &Engine,
    codegen_options: &str,
    bytes: &[u8],
    sha256: &str,
    cache: Result<&ModuleCache, String>,
    compile: &CompileArtifact<'_>,
) -> Result<(Program, ProgramOrigin), Rejected> {
    let kind = wasm_kind(bytes).ok_or_else(|| {
        Rejected("the entrypoint is not a WebAssembly binary (bad magic or version)".into())
    })?;
    let cache = match cache {
        Ok(cache) => cache,
        Err(reason) => {
            let artifact = compile(engine, kind, bytes)?;
            return Ok((
                from_fresh_artifact(engine, kind, &artifact)?,
                ProgramOrigin::Uncached { reason },
            ));
        }
    };
    let key = CacheKey::new(engine, sha256, kind, codegen_options);
    let removed = match cache.lookup(&key) {
        Lookup::Hit(entry) => match deserialize(engine, kind, entry) {
            Ok(program) => return Ok((program, ProgramOrigin::Cached)),
            Err(reason) => {
                cache.remove(&key);
                Some(reason)
            }
        },
        Lookup::Miss => None,
        Lookup::Removed { reason } => Some(reason),
    };
    let artifact = compile(engine, kind, bytes)?;
    let stored = cache
        .store(&key, &artifact)
        .map_err(|err| format!("cannot store the compiled module: {err}"));
    let from_cache = match &stored {
        Ok(()) => match cache.lookup(&key) {
            Lookup::Hit(entry) => deserialize(engine, kind, entry).ok(),
            _ => None,
        },
        Err(_) => None,
    };
    let program = match from_cache {
        Some(program) => program,
        None => from_fresh_artifact(engine, kind, &artifact)?,
    };
    let origin = match (removed, stored) {
        (_, Err(reason)) => ProgramOrigin::Uncached { reason },
        (Some(reason), Ok(())) => ProgramOrigin::Recompiled { reason },
        (None, Ok(())) => ProgramOrigin::Compiled,
    };
    Ok((program, origin))
}

fn compile(engine: &Engine, kind: WasmKind, bytes: &[u8]) -> Result<Program, Rejected> {
    match kind {
        WasmKind::CoreModule => Module::new(engine, bytes)
            .map(Program::Core)
            .map_err(|err| Rejected::from_wasmtime("invalid wasm module", &err)),
        WasmKind::Component => Component::new(engine, bytes)
            .map(Program::Component)
            .map_err(|err| Rejected::from_wasmtime("invalid wasm component", &err)),
    }
}

fn serialize(program: &Program) -> Result<Vec<u8>, String> {
    match program {
        Program::Core(module) => module.serialize(),
        Program::Component(component) => component.serialize(),
    }
    .map_err(|err| format!("cannot serialise the compiled module: {err:#}"))
}

/// Loads an artifact that `compile` has just produced with this very engine.
fn from_fresh_artifact(
    engine: &Engine,
    kind: WasmKind,
    artifact: &[u8],
) -> Result<Program, Rejected> {
    let result = match kind {
        // SAFETY: the artifact comes straight from this runtime's own compiler (in this
        // process or its compile child) for this engine; it never touched the disk.
        WasmKind::CoreModule => unsafe { Module::deserialize(engine, artifact) }.map(Program::Core),
        // SAFETY: as above.
        WasmKind::Component => {
            unsafe { Component::deserialize(engine, artifact) }.map(Program::Component)
        }
    };
    result.map_err(|err| Rejected::from_wasmtime("cannot load the compiled module", &err))
}

fn deserialize(
    engine: &Engine,
    kind: WasmKind,
    entry: super::cache::CacheEntry,
) -> Result<Program, String> {
    let result = match kind {
        // SAFETY: the artifact was written by this runtime into a root-only directory and its
        // sha256 and length were checked against the record written with it just now
        // (`ModuleCache::lookup`); wasmtime itself checks that it was compiled by a
        // compatible engine.
        WasmKind::CoreModule => {
            unsafe { Module::deserialize_open_file(engine, entry.file) }.map(Program::Core)
        }
        // SAFETY: as above; components can only be deserialised from a path, which is the
        // verified entry in the root-only directory.
        WasmKind::Component => {
            unsafe { Component::deserialize_file(engine, &entry.path) }.map(Program::Component)
        }
    };
    result.map_err(|err| format!("wasmtime refused the cached artifact: {err:#}"))
}

#[cfg(test)]
mod tests {
    use super::super::cache::sha256_hex;
    use super::super::tests::{test_codegen, test_engine};
    use super::*;

    const WAT: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

    fn load_cached(engine: &Engine, bytes: &[u8], cache: &ModuleCache) -> (Program, ProgramOrigin) {
        load_program(
            engine,
            &test_codegen(),
            bytes,
            &sha256_hex(bytes),
            Ok(cache),
            &compile_here,
        )
        .unwrap()
    }

    #[test]
    fn second_load_comes_from_the_cache_and_bad_entries_are_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path(), 1 << 30).unwrap();
        let engine = test_engine();
        let bytes = wat::parse_str(WAT).unwrap();

        let (_, origin) = load_cached(&engine, &bytes, &cache);
        assert_eq!(origin, ProgramOrigin::Compiled);
        let (_, origin) = load_cached(&engine, &bytes, &cache);
        assert_eq!(origin, ProgramOrigin::Cached);

        // Corrupt the artifact but keep its length: the checksum catches it.
        let artifact = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .unwrap();
        let mut content = std::fs::read(&artifact).unwrap();
        let middle = content.len() / 2;
        content[middle] ^= 0xff;
        std::fs::write(&artifact, &content).unwrap();
        let (_, origin) = load_cached(&engine, &bytes, &cache);
        assert!(
            matches!(origin, ProgramOrigin::Recompiled { .. }),
            "{origin:?}"
        );
        let (_, origin) = load_cached(&engine, &bytes, &cache);
        assert_eq!(origin, ProgramOrigin::Cached);
    }

    #[test]
    fn an_artifact_of_another_engine_is_refused_by_wasmtime() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ModuleCache::open(dir.path(), 1 << 30).unwrap();
        let engine = test_engine();
        let bytes = wat::parse_str(WAT).unwrap();
        let digest = sha256_hex(&bytes);
        // A well-formed entry under the right key whose content is not a wasmtime artifact.
        let key = CacheKey::new(&engine, &digest, WasmKind::CoreModule, &test_codegen());
        cache.store(&key, b"not an ELF artifact").unwrap();
        let (_, origin) = load_cached(&engine, &bytes, &cache);
        match origin {
            ProgramOrigin::Recompiled { reason } => {
                assert!(reason.contains("wasmtime refused"), "{reason}")
            }
            other => panic!("expected a recompile, got {other:?}"),
        }
    }

    #[test]
    fn without_a_cache_it_compiles() {
        let engine = test_engine();
        let bytes = wat::parse_str(WAT).unwrap();
        let (_, origin) = load_program(
            &engine,
            &test_codegen(),
            &bytes,
            "x",
            Err("disabled".into()),
            &compile_here,
        )
        .unwrap();
        assert_eq!(
            origin,
            ProgramOrigin::Uncached {
                reason: "disabled".into()
            }
        );
        let err = load_program(
            &engine,
            &test_codegen(),
            b"\x7fELF....",
            "x",
            Err("off".into()),
            &compile_here,
        )
        .err()
        .unwrap();
        assert!(err.0.contains("not a WebAssembly binary"), "{err}");
    }
}
