//! The WASI preview2 components the tests run: an HTTP handler and socket commands.
//!
//! They are written in C (e2e/wasm) against bindings that wit-bindgen generates, at build
//! time, from the WIT in e2e/wit: the WASI 0.2.12 interfaces the pinned wasmtime implements
//! and the worlds of these components. Debian's clang compiles them to preview1 core modules
//! and wit-component wraps those with the matching preview1 adapter.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER, WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
};
use wit_bindgen_core::wit_parser::Resolve;

use crate::programs::{clang_for_wasi, run_clang};

/// The interface an HTTP component exports.
pub const HTTP_HANDLER_EXPORT: &str = "wasi:http/incoming-handler@0.2.12";
/// The interface a command component exports.
pub const COMMAND_EXPORT: &str = "wasi:cli/run@0.2.12";

const WORLDS_WIT: &str = include_str!("../wit/test-components.wit");
const WASI_WIT: &[(&str, &str)] = &[
    ("cli.wit", include_str!("../wit/deps/cli.wit")),
    ("clocks.wit", include_str!("../wit/deps/clocks.wit")),
    ("filesystem.wit", include_str!("../wit/deps/filesystem.wit")),
    ("http.wit", include_str!("../wit/deps/http.wit")),
    ("io.wit", include_str!("../wit/deps/io.wit")),
    ("random.wit", include_str!("../wit/deps/random.wit")),
    ("sockets.wit", include_str!("../wit/deps/sockets.wit")),
];

const HTTP_HELLO_C: &str = include_str!("../wasm/http_hello.c");
const TCP_ECHO_C: &str = include_str!("../wasm/tcp_echo.c");
const IP_LOOKUP_C: &str = include_str!("../wasm/ip_lookup.c");
const SOCKET_ERRORS_H: &str = include_str!("../wasm/socket_errors.h");

/// How a C program becomes a component.
#[derive(Clone, Copy)]
enum Shape {
    /// `main` behind `wasi:cli/run`, through the command adapter.
    Command,
    /// A reactor (no `main`) whose exports are served through the proxy adapter.
    HttpProxy,
}

struct Recipe {
    /// The world in e2e/wit/test-components.wit whose bindings the program uses.
    world: &'static str,
    /// The program's own C file, and any headers it includes besides the bindings.
    source: (&'static str, &'static str),
    headers: &'static [(&'static str, &'static str)],
    shape: Shape,
}

/// A `wasi:http/proxy` component, one request per instance:
/// - any path: 200 `hello from wasm http: <METHOD> <path-with-query>\n`;
/// - `/sleep/<ms>`: waits that long on a monotonic-clock pollable, then `slept <ms>\n`;
/// - `POST /echo`: the request body;
/// - `/fetch/<host:port>/<path>`: an outgoing GET of `http://<host:port>/<path>`, answered
///   with `fetched <status>: <body>`, or 502 and the interface's error-code name;
/// - `/env/<NAME>`: exactly the value of the environment variable NAME (no newline), 404 if
///   unset.
///
/// All answers are `content-type: text/plain`.
pub fn http_hello_component() -> Result<Vec<u8>> {
    build(&Recipe {
        world: "http-hello",
        source: ("http_hello.c", HTTP_HELLO_C),
        headers: &[],
        shape: Shape::HttpProxy,
    })
}

/// A command that echoes on `0.0.0.0:$PORT` (7000 when unset) through wasi:sockets: prints
/// `listening on <port>` (flushed) once it listens, serves many TCP connections at once and
/// closes each on EOF. With the argument `udp` it echoes UDP datagrams instead. Needs the
/// host to grant network access (`wasmtime run -Sinherit-network -Stcp`); without it the
/// command prints `bind: access-denied` to stderr and exits 1.
pub fn tcp_echo_component() -> Result<Vec<u8>> {
    build(&Recipe {
        world: "sockets-command",
        source: ("tcp_echo.c", TCP_ECHO_C),
        headers: &[("socket_errors.h", SOCKET_ERRORS_H)],
        shape: Shape::Command,
    })
}

/// A command that resolves its one argument with wasi:sockets/ip-name-lookup and prints one
/// address a line, exit 0; or prints `cannot resolve <name>: <error-code>` to stderr and
/// exits 1. wasmtime answers `name-unresolvable` for a name that does not exist and
/// `permanent-resolver-failure` when lookups are not allowed.
pub fn ip_lookup_component() -> Result<Vec<u8>> {
    build(&Recipe {
        world: "sockets-command",
        source: ("ip_lookup.c", IP_LOOKUP_C),
        headers: &[("socket_errors.h", SOCKET_ERRORS_H)],
        shape: Shape::Command,
    })
}

fn build(recipe: &Recipe) -> Result<Vec<u8>> {
    let work = tempfile::tempdir().context("cannot create a temp dir for the component")?;
    let bindings = generate_bindings(work.path(), recipe.world)
        .with_context(|| format!("cannot generate C bindings for the world {}", recipe.world))?;
    for (name, text) in std::iter::once(&recipe.source).chain(recipe.headers) {
        let path = work.path().join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let core_module = compile(work.path(), recipe, &bindings)
        .with_context(|| format!("cannot compile {}", recipe.source.0))?;
    componentize(&core_module, recipe.shape)
        .with_context(|| format!("cannot make a component of {}", recipe.source.0))
}

/// Writes the WIT and the bindings for `world` under `work`; returns the files to link.
fn generate_bindings(work: &Path, world: &str) -> Result<Vec<PathBuf>> {
    let wit = work.join("wit");
    let deps = wit.join("deps");
    std::fs::create_dir_all(&deps).with_context(|| format!("cannot create {}", deps.display()))?;
    std::fs::write(wit.join("test-components.wit"), WORLDS_WIT)?;
    for (name, text) in WASI_WIT {
        std::fs::write(deps.join(name), text)?;
    }

    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_dir(&wit).context("invalid WIT")?;
    let world_id = resolve.select_world(&[package], Some(world))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world_id, &mut files)?;

    // A directory of their own, so the generated `<world>.c` cannot clash with a program's
    // source of the same name.
    let out = work.join("bindings");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut to_link = Vec::new();
    for (name, contents) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
        // The header is only included; the C glue and the object carrying the component type
        // (which tells wit-component what the module imports and exports) are linked.
        if name.ends_with(".c") || name.ends_with(".o") {
            to_link.push(path);
        }
    }
    Ok(to_link)
}

/// Compiles the program and its bindings to a preview1 core module with clang and wasi-libc.
fn compile(work: &Path, recipe: &Recipe, bindings: &[PathBuf]) -> Result<Vec<u8>> {
    let wasm_file = work.join("core.wasm");
    let mut clang = clang_for_wasi();
    clang
        // Errors in newer clang; failing on them here keeps the sources building there too.
        .args([
            "-Werror=incompatible-pointer-types",
            "-Werror=implicit-function-declaration",
            "-I",
        ])
        .arg(work.join("bindings"))
        .arg("-o")
        .arg(&wasm_file)
        .arg(work.join(recipe.source.0))
        .args(bindings);
    if let Shape::HttpProxy = recipe.shape {
        clang.arg("-mexec-model=reactor");
    }
    run_clang(&mut clang, &wasm_file)
}

fn componentize(core_module: &[u8], shape: Shape) -> Result<Vec<u8>> {
    let adapter = match shape {
        Shape::Command => WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        Shape::HttpProxy => WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
    };
    wit_component::ComponentEncoder::default()
        .module(core_module)?
        .adapter("wasi_snapshot_preview1", adapter)?
        .validate(true)
        .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the interfaces (or functions) a component exports.
    fn exports_of(component: &[u8]) -> Vec<String> {
        match wit_component::decode(component).expect("a decodable component") {
            wit_component::DecodedWasm::Component(resolve, world) => resolve.worlds[world]
                .exports
                .keys()
                .map(|key| resolve.name_world_key(key))
                .collect(),
            wit_component::DecodedWasm::WitPackage(..) => panic!("a WIT package, not a component"),
        }
    }

    #[test]
    fn http_hello_exports_the_incoming_handler() {
        let component = http_hello_component().unwrap();
        assert_eq!(exports_of(&component), [HTTP_HANDLER_EXPORT]);
    }

    #[test]
    fn socket_commands_export_run() {
        for component in [tcp_echo_component(), ip_lookup_component()] {
            assert_eq!(exports_of(&component.unwrap()), [COMMAND_EXPORT]);
        }
    }
}
