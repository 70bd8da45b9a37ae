//! `make demo`: a private containerd, a wasm image built with `wedge image build`, and
//! `ctr run` on the Wedge runtime, narrated; everything is cleaned up at the end.

use std::process::Output;

use anyhow::{ensure, Result};
use wedge_e2e::{images, programs, Containerd, WEDGE_RUNTIME};

const GREETER_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    const char *who = argc > 1 ? argv[1] : "world";
    const char *from = getenv("GREETING_FROM");
    printf("Hello, %s! -- from a WebAssembly module%s%s\n", who, from ? " run by " : "", from ? from : "");
    return 0;
}
"#;

fn show(title: &str, command: &str, out: &Output) {
    println!("\n== {title}\n$ {command}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        println!("(stderr) {line}");
    }
    println!("(exit code {})", out.status.code().unwrap_or(-1));
}

fn main() -> Result<()> {
    let work = tempfile::tempdir()?;
    println!("Starting a private containerd (its own root, state and socket under /tmp)...");
    let containerd = Containerd::start()?;
    println!("containerd is up at {}", containerd.socket().display());

    let greeter = programs::compile_c(GREETER_C, work.path(), "greeter")?;
    let (archive, image) = images::wasm_image(work.path(), "greeter", &greeter)?;
    println!(
        "\nBuilt {} ({} bytes of wasm) with `wedge image build --tag {image}`",
        archive.display(),
        greeter.len()
    );
    containerd.import(&archive)?;
    println!("Imported it with `ctr images import`.");

    let out = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        WEDGE_RUNTIME,
        "--env",
        "GREETING_FROM=Wedge",
        &image,
        "demo-greeter",
        "/greeter.wasm",
        "Kubernetes",
    ])?;
    show(
        "A WASI module as a containerd task",
        &format!("ctr run --rm --runtime {WEDGE_RUNTIME} --env GREETING_FROM=Wedge {image} demo-greeter /greeter.wasm Kubernetes"),
        &out,
    );
    ensure!(out.status.success(), "the demo container failed");

    let (archive, trap) =
        images::wasm_image(work.path(), "trap", &programs::wat(programs::TRAP_WAT)?)?;
    containerd.import(&archive)?;
    let out = containerd.run_wasm(&trap, "demo-trap", &[])?;
    show(
        "A module that traps exits 134 with the trap on stderr",
        &format!("ctr run --rm --runtime {WEDGE_RUNTIME} {trap} demo-trap"),
        &out,
    );

    containerd.assert_clean()?;
    drop(containerd);
    println!("\nAll containers deleted; no shim, runner or mount left. containerd stopped.");
    Ok(())
}
