use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use wedge_cli::image::Platform;
use wedge_cli::wasm_image::{self, WasmImageRequest};

/// Build wasm container images and operate the Wedge runtime.
#[derive(Parser)]
#[command(name = "wedge", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Container images of wasm modules.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Pack a .wasm module into an OCI image archive for `ctr images import`.
    Build(BuildArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// The WebAssembly module (WASI preview1 command).
    module: PathBuf,
    /// Image name, NAME[:TAG]; the tag defaults to `latest`.
    #[arg(short, long)]
    tag: String,
    /// Output archive; defaults to the module's name with `.tar`.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Path of the module inside the image (default: /<file name>).
    #[arg(long)]
    module_path: Option<String>,
    /// Extra file to add, SOURCE:DEST (DEST absolute). Repeatable.
    #[arg(long = "file", value_name = "SOURCE:DEST")]
    files: Vec<String>,
    /// Default argument passed to the module (the image's CMD). Repeatable.
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    args: Vec<String>,
    /// Environment variable, KEY=VALUE. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory of the container.
    #[arg(long)]
    workdir: Option<String>,
    /// Platform to publish for, OS/ARCH. Repeatable (default: linux/amd64 and linux/arm64).
    #[arg(long = "platform", value_name = "OS/ARCH")]
    platforms: Vec<Platform>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Image(ImageCommand::Build(args)) => build(args),
    }
}

fn build(args: BuildArgs) -> Result<()> {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| args.module.with_extension("tar"));
    let request = WasmImageRequest {
        module: args.module,
        reference: args.tag,
        module_path: args.module_path,
        files: args.files,
        args: args.args,
        env: args.env,
        workdir: args.workdir,
        platforms: args.platforms,
    };
    let built = wasm_image::build(&request, &output)?;
    println!(
        "{} {} -> {}",
        built.reference,
        built.index_digest,
        output.display()
    );
    Ok(())
}
