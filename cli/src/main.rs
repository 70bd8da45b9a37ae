use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use wedge_cli::image::Platform;
use wedge_cli::module_image::ModuleForm;
use wedge_cli::node::command::{self as node, NodeCommand, TargetArgs};
use wedge_cli::push::{self, CredentialChoice, PushOptions, RetryPolicy};
use wedge_cli::registry_credentials::{self, Credentials};
use wedge_cli::wasm_image::{self, ImageFormat, WasmImageRequest};

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
    /// Install Wedge on this Kubernetes node, remove it, or report its state.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Check this node for what Wedge needs; exits non-zero when something is wrong.
    Doctor(TargetArgs),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Pack a .wasm module or component into an OCI image archive for `ctr images import`.
    Build(BuildArgs),
    /// Push an image archive written by `build` to an OCI registry.
    Push(PushArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// The module as a file in a root filesystem (any containerd).
    Rootfs,
    /// The module as the image's layer, with an OCI image config (containerd >= 1.7.7).
    Layer,
    /// The CNCF wasm OCI artifact (config application/vnd.wasm.config.v0+json, layer
    /// application/wasm); run through CRI.
    Artifact,
}

#[derive(Args)]
struct PushArgs {
    /// An OCI image archive, as `wedge image build` writes it.
    archive: PathBuf,
    /// Where to push: REGISTRY/REPOSITORY[:TAG].
    reference: String,
    /// Speak plain HTTP to the registry (always done for localhost and 127.0.0.1).
    #[arg(long)]
    plain_http: bool,
    /// User name for the registry; the password is read from standard input. Without it,
    /// credentials come from the docker config ($DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json: auths, credHelpers, credsStore).
    #[arg(short, long, requires = "password_stdin")]
    username: Option<String>,
    /// Read the password (or token) for --username from standard input.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// How often a request is retried after a transient failure (no connection, timeout,
    /// 429 or 5xx), with exponential backoff from 0.5 s.
    #[arg(long, default_value_t = 4, value_name = "N")]
    retries: u32,
}

#[derive(Args)]
struct BuildArgs {
    /// The WebAssembly module (WASI preview1 command) or component (wasi:cli/run).
    module: PathBuf,
    /// Image form.
    #[arg(long, value_enum, default_value = "rootfs")]
    format: Format,
    /// Same as `--format artifact`.
    #[arg(long, conflicts_with = "format")]
    artifact: bool,
    /// Media type of the module layer in the `layer` form (default: by module kind).
    #[arg(long, value_name = "MEDIA_TYPE")]
    layer_media_type: Option<String>,
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
        Command::Image(ImageCommand::Push(args)) => push(args),
        Command::Node(command) => exit_unhealthy(node::run(command)?),
        Command::Doctor(args) => exit_unhealthy(node::doctor(args)?),
    }
}

/// A report with problems has been printed; the exit status says so to scripts and probes.
fn exit_unhealthy(healthy: bool) -> Result<()> {
    if !healthy {
        std::process::exit(1);
    }
    Ok(())
}

fn push(args: PushArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let credentials = match args.username {
        Some(username) => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            if password.is_empty() {
                anyhow::bail!("--password-stdin: standard input holds no password");
            }
            CredentialChoice::Given(Credentials::basic(username, password))
        }
        None => CredentialChoice::DockerConfig(registry_credentials::docker_config_path(
            std::env::var_os("DOCKER_CONFIG").as_deref(),
            std::env::var_os("HOME").as_deref(),
        )),
    };
    let options = PushOptions {
        plain_http: args.plain_http,
        credentials,
        retry: RetryPolicy {
            retries: args.retries,
            ..RetryPolicy::default()
        },
    };
    let pushed = runtime.block_on(push::push_archive(
        &args.archive,
        &args.reference,
        &options,
    ))?;
    println!(
        "{} {} ({} blobs)",
        pushed.reference, pushed.digest, pushed.blobs
    );
    Ok(())
}

fn build(args: BuildArgs) -> Result<()> {
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| args.module.with_extension("tar"));
    let format = match (args.artifact, args.format) {
        (true, _) | (_, Format::Artifact) => ImageFormat::Module(ModuleForm::Artifact),
        (_, Format::Layer) => ImageFormat::Module(ModuleForm::Layer(args.layer_media_type)),
        (_, Format::Rootfs) => ImageFormat::Rootfs,
    };
    let request = WasmImageRequest {
        module: args.module,
        reference: args.tag,
        module_path: args.module_path,
        files: args.files,
        args: args.args,
        env: args.env,
        workdir: args.workdir,
        platforms: args.platforms,
        format,
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
