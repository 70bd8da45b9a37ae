use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use wedge_cli::image::Platform;
use wedge_cli::module_image::ModuleForm;
use wedge_cli::node::command::{self as node, NodeCommand, TargetArgs};
use wedge_cli::push::{self, CredentialChoice, PushOptions, RetryPolicy};
use wedge_cli::registry_credentials::{self, Credentials};
use wedge_cli::run::{self as wedge_run, RunRequest};
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
    /// Run a .wasm module or component, an image archive or an image in containerd here,
    /// as a node would (same engine, engine config, annotations and sandbox); exits with
    /// the module's status.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// A .wasm module or component, an OCI image archive (`wedge image build`), or the
    /// name of an image in containerd (`ctr images pull`).
    input: String,
    /// Arguments for the module; for an image they replace its command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
    /// Environment variable, KEY=VALUE. Repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Annotation of the container, KEY=VALUE, as a pod's `wedge.dev/*` annotations.
    /// Repeatable.
    #[arg(short, long = "annotation", value_name = "KEY=VALUE", value_parser = key_value)]
    annotations: Vec<(String, String)>,
    /// Memory limit of the container (bytes, or with a unit: 64Mi, 1G).
    #[arg(short, long, value_parser = memory)]
    memory: Option<u64>,
    /// Bind a host directory or file into the container, HOST:DEST[:ro]. Repeatable.
    #[arg(short, long = "volume", value_name = "HOST:DEST[:ro]", value_parser = volume)]
    volumes: Vec<(String, String, bool)>,
    /// `none`: a network namespace of its own with loopback only (as `ctr run`); `host`:
    /// this machine's network, to reach an HTTP component from here.
    #[arg(long, value_enum, default_value = "none")]
    network: Network,
    /// Make the container's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Attach standard input to the module.
    #[arg(short, long)]
    interactive: bool,
    /// Engine config to use (default: /etc/wedge/config.toml if present, else built-in).
    #[arg(long, value_name = "PATH")]
    engine_config: Option<PathBuf>,
    /// Container id (names its cgroup); default wedge-run-PID.
    #[arg(long)]
    name: Option<String>,
    /// The shim binary (default: beside wedge, else on PATH).
    #[arg(long, value_name = "PATH")]
    shim: Option<PathBuf>,
    /// containerd's socket, for image names.
    #[arg(
        long,
        default_value = "/run/containerd/containerd.sock",
        value_name = "PATH"
    )]
    containerd_address: PathBuf,
    /// containerd namespace of image names (`k8s.io` holds the kubelet's images).
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Network {
    None,
    Host,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn memory(text: &str) -> Result<u64, String> {
    wedge_runtime_config::quantity::parse_memory(text).map_err(|err| err.to_string())
}

fn volume(text: &str) -> Result<(String, String, bool), String> {
    let (source, rest) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not HOST:DEST[:ro]"))?;
    let (destination, readonly) = match rest.rsplit_once(':') {
        Some((destination, "ro")) => (destination, true),
        Some((destination, "rw")) => (destination, false),
        _ => (rest, false),
    };
    if !destination.starts_with('/') {
        return Err(format!("{text:?}: DEST must be an absolute path"));
    }
    let source =
        std::fs::canonicalize(source).map_err(|err| format!("{text:?}: {source}: {err}"))?;
    Ok((
        source.display().to_string(),
        destination.to_string(),
        readonly,
    ))
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
        Command::Run(args) => run(args),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let request = RunRequest {
        input: args.input,
        args: args.args,
        env: args
            .env
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect(),
        annotations: args.annotations,
        memory_limit: args.memory,
        volumes: args.volumes,
        host_network: args.network == Network::Host,
        readonly_root: args.read_only,
        interactive: args.interactive,
        engine_config: args.engine_config,
        name: args.name,
        shim: args.shim,
        containerd_socket: args.containerd_address,
        containerd_namespace: args.namespace,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(async {
        let shim = wedge_run::find_shim(request.shim.as_deref())?;
        let bundle = wedge_run::prepare(&request).await?;
        wedge_run::run_bundle(&shim, &bundle).await
    })?;
    // The bundle (a temp dir) is gone by now; the exit status is the module's.
    drop(runtime);
    std::process::exit(status);
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
    let pushed = runtime.block_on(push::push_archive(&args.archive, &args.reference, &options))?;
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
