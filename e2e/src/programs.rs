//! The WASI programs the tests and the demo run, in WAT and in C.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// Writes "hello from wasm\n" and exits 0.
pub const HELLO_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasm\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// Exits through `proc_exit(42)`.
pub const EXIT_42_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 42))))"#;

/// Traps on `unreachable` inside a named function.
pub const TRAP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func $explode unreachable)
  (func (export "_start") (call $explode)))"#;

/// Spins forever without calling the host.
pub const LOOP_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $forever (br $forever))))"#;

/// Waits a minute in the host (`poll_oneoff` on the monotonic clock) without running an
/// instruction, then exits 0.
pub const SLEEP_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 60000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))"#;

/// Grows each of two linear memories by 40 MiB and touches every page: each stays under a
/// 64 MiB limit, together they do not. (Multi-memory is standard wasm.)
pub const TWO_MEMORIES_WAT: &str = r#"(module
  (memory $a 1)
  (memory $b 1)
  (func (export "_start")
    (local $at i32)
    (drop (memory.grow $a (i32.const 640)))
    (drop (memory.grow $b (i32.const 640)))
    (block $done
      (loop $touch
        (br_if $done (i32.ge_u (local.get $at) (i32.const 41943040)))
        (i32.store8 $a (local.get $at) (i32.const 1))
        (i32.store8 $b (local.get $at) (i32.const 1))
        (local.set $at (i32.add (local.get $at) (i32.const 4096)))
        (br $touch)))))"#;

/// A module that imports what no WASI host provides.
pub const UNKNOWN_IMPORT_WAT: &str = r#"(module
  (import "env" "launch_missiles" (func))
  (memory (export "memory") 1)
  (func (export "_start")))"#;

/// Prints argv, one `WEDGE_*` variable, writes stderr, echoes stdin or tries to write a
/// file, in C through
/// wasi-libc, the way real programs use WASI.
pub const ECHO_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) printf("arg[%d]=%s\n", i, argv[i]);
    const char *greeting = getenv("WEDGE_GREETING");
    printf("env WEDGE_GREETING=%s\n", greeting ? greeting : "(unset)");
    fprintf(stderr, "to stderr\n");
    if (argc > 1 && strcmp(argv[1], "stdin") == 0) {
        char line[256];
        while (fgets(line, sizeof line, stdin)) printf("stdin: %s", line);
    }
    if (argc > 1 && strcmp(argv[1], "write") == 0) {
        FILE *out = fopen("/written.txt", "w");
        printf("write: %s\n", out ? "ok" : "refused");
        if (out) fclose(out);
    }
    if (argc > 1 && strcmp(argv[1], "fail") == 0) return 3;
    return 0;
}
"#;

/// Probes files the way a volume-using program does. Arguments are steps: `read PATH`,
/// `write PATH TEXT`; each prints one line with the result or the error.
pub const FILES_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i++) {
        const char *path = argv[i + 1];
        if (strcmp(argv[i], "read") == 0) {
            i += 1;
            FILE *in = fopen(path, "r");
            if (!in) { printf("read %s: error %s\n", path, strerror(errno)); continue; }
            char text[256] = {0};
            size_t n = fread(text, 1, sizeof text - 1, in);
            fclose(in);
            if (n > 0 && text[n - 1] == '\n') text[n - 1] = 0;
            printf("read %s: %s\n", path, text);
        } else if (strcmp(argv[i], "write") == 0 && i + 2 < argc) {
            const char *text = argv[i + 2];
            i += 2;
            FILE *out = fopen(path, "w");
            if (!out) { printf("write %s: error %s\n", path, strerror(errno)); continue; }
            fprintf(out, "%s\n", text);
            fclose(out);
            printf("write %s: ok\n", path);
        }
    }
    return 0;
}
"#;

/// Allocates memory the way C programs do: `CHUNK_MIB COUNT` allocates COUNT chunks (0 =
/// until refused) and touches every byte. Exit 3 with a message when malloc says no.
pub const ALLOCATE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Keeps the compiler from eliding allocations nobody reads. */
char *volatile kept;

int main(int argc, char **argv) {
    int chunk = argc > 1 ? atoi(argv[1]) : 1;
    int count = argc > 2 ? atoi(argv[2]) : 0;
    for (int done = 0; count == 0 || done < count; done++) {
        char *block = malloc((size_t)chunk << 20);
        if (!block) {
            printf("allocation of %d MiB refused after %d MiB\n", chunk, done * chunk);
            return 3;
        }
        memset(block, 1, (size_t)chunk << 20);
        kept = block;
    }
    printf("allocated %d MiB\n", chunk * count);
    return 0;
}
"#;

/// A C command for the component tests: prints its argv and one env var, exits with the
/// status given as its first argument.
pub const STATUS_C: &str = r#"#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    const char *who = getenv("WHO");
    printf("hi %s\n", who ? who : "nobody");
    for (int i = 1; i < argc; i++) printf("arg%d=%s\n", i, argv[i]);
    return argc > 1 ? atoi(argv[1]) : 0;
}
"#;

/// A core module with a second entry point: `_start` prints "start", `status` returns 7
/// after `_initialize` ran.
pub const TWO_ENTRIES_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $ready (mut i32) (i32.const 0))
  (data (i32.const 16) "start\n")
  (func (export "_initialize") (global.set $ready (i32.const 7)))
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "status") (result i32) (global.get $ready)))"#;

/// A component that exports a plain function and no `wasi:cli/run`.
pub const NOT_A_COMMAND_COMPONENT_WAT: &str = r#"(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (func $f (canon lift (core func $i "f")))
  (export "say-hello" (func $f)))"#;

/// Turns a WASI preview1 command into a WASI preview2 command component with the preview1
/// adapter, as `wasm-tools component new --adapt` does.
pub fn componentize(core_module: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default()
        .module(core_module)?
        .adapter(
            "wasi_snapshot_preview1",
            wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        )?
        .validate(true)
        .encode()
        .context("cannot encode the component")
}

/// A large, valid command module: `functions` functions of arithmetic that `_start` never
/// calls, so it starts instantly once compiled but takes real work to compile.
pub fn large_module(functions: usize) -> Result<Vec<u8>> {
    let mut source = String::from("(module (memory (export \"memory\") 1)\n");
    for index in 0..functions {
        source.push_str(&format!(
            "(func $f{index} (param i32) (result i32) local.get 0"
        ));
        for step in 0..24 {
            source.push_str(&format!(
                " i32.const {} i32.mul i32.const {} i32.xor",
                index + step + 3,
                step * 7 + 1
            ));
        }
        source.push_str(")\n");
    }
    source.push_str("(func (export \"_start\")))");
    wat(&source)
}

pub fn wat(source: &str) -> Result<Vec<u8>> {
    wat::parse_str(source).context("invalid WAT")
}

/// A module that is cut off in the middle of its code section.
pub fn corrupt_module() -> Result<Vec<u8>> {
    let mut bytes = wat(HELLO_WAT)?;
    bytes.truncate(bytes.len() / 2);
    Ok(bytes)
}

/// Compiles C to a WASI preview1 command with Debian's clang and wasi-libc.
pub fn compile_c(source: &str, work: &Path, name: &str) -> Result<Vec<u8>> {
    let c_file = work.join(format!("{name}.c"));
    let wasm_file = work.join(format!("{name}.wasm"));
    std::fs::write(&c_file, source)?;
    let mut clang = clang_for_wasi();
    clang.arg("-o").arg(&wasm_file).arg(&c_file);
    run_clang(&mut clang, &wasm_file)
}

/// Debian's clang aimed at wasm32-wasi (wasi-libc), optimised; the caller adds the rest.
pub(crate) fn clang_for_wasi() -> Command {
    let mut clang = Command::new("clang");
    clang.args(["--target=wasm32-wasi", "-O2"]);
    clang
}

/// Runs a command from [`clang_for_wasi`] and reads the module it wrote to `wasm_file`.
pub(crate) fn run_clang(clang: &mut Command, wasm_file: &Path) -> Result<Vec<u8>> {
    let out = clang.output().context(
        "cannot run clang (apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32)",
    )?;
    ensure!(
        out.status.success(),
        "clang failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(wasm_file).with_context(|| format!("cannot read {}", wasm_file.display()))
}
