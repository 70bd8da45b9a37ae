//! The command line of `wedge node …` and `wedge doctor`. Flag names are shared with the
//! deploy manifests and the Helm chart; change them together.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use wedge_runtime_config::containerd::{Flavour, HostRoot};

use super::error::{NodeError, Result};
use super::steps::{self, ChangeOptions, RestartPolicy};
use super::target::{NodeTarget, SHIM_NAME};
use super::{report, wait};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Copy the shim, register the runtime with containerd, restart it, label the node.
    Install(ChangeArgs),
    /// Undo `install`: label, runtime entry, restart, engine config, shim.
    Uninstall(ChangeArgs),
    /// Report the node's state; exits non-zero when there is a problem.
    Status(TargetArgs),
    /// Sleep until SIGTERM (the installer DaemonSet's main container).
    Wait,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlavourArg {
    Auto,
    Containerd,
    K3s,
    Rke2,
    Microk8s,
}

impl FlavourArg {
    fn flavour(self) -> Option<Flavour> {
        match self {
            FlavourArg::Auto => None,
            FlavourArg::Containerd => Some(Flavour::Containerd),
            FlavourArg::K3s => Some(Flavour::K3s),
            FlavourArg::Rke2 => Some(Flavour::Rke2),
            FlavourArg::Microk8s => Some(Flavour::MicroK8s),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestartArg {
    /// Through the host's systemd, when containerd's config changed.
    Auto,
    /// Leave containerd alone.
    Never,
}

#[derive(Args, Clone)]
pub struct TargetArgs {
    /// Where the host's root file system is; every host path is resolved under it.
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
    /// How containerd is packaged on the node.
    #[arg(long, value_enum, default_value = "auto")]
    pub flavour: FlavourArg,
    /// containerd's config (or k3s'/rke2's generated config.toml), instead of detecting it.
    #[arg(long, value_name = "PATH")]
    pub containerd_config: Option<PathBuf>,
    /// The CRI runtime handler to register (a RuntimeClass's handler).
    #[arg(long, default_value = "wedge")]
    pub runtime_name: String,
    /// Host directory for containerd-shim-wedge-v1.
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    pub shim_dest: PathBuf,
}

impl TargetArgs {
    fn target(&self) -> NodeTarget {
        NodeTarget {
            root: HostRoot::new(&self.host_root),
            flavour: self.flavour.flavour(),
            containerd_config: self.containerd_config.clone(),
            runtime_name: self.runtime_name.clone(),
            shim_dest: self.shim_dest.clone(),
        }
    }
}

#[derive(Args, Clone)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The shim to install (default: containerd-shim-wedge-v1 beside this wedge binary).
    #[arg(long, value_name = "PATH")]
    pub shim_source: Option<PathBuf>,
    /// Engine config copied to /etc/wedge/config.toml on the host when none is there
    /// (uninstall: removed when it still holds exactly this file).
    #[arg(long, value_name = "FILE")]
    pub engine_config: Option<PathBuf>,
    /// Whether to restart containerd after changing its config.
    #[arg(long, value_enum, default_value = "auto")]
    pub restart: RestartArg,
    /// Set (uninstall: remove) the node label wedge.dev/ready=true on the Node named by
    /// $NODE_NAME, through the in-cluster API.
    #[arg(long)]
    pub label_node: bool,
    /// Print what would change (a diff of containerd's config) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl ChangeArgs {
    fn options(&self) -> Result<ChangeOptions> {
        let shim_source = match &self.shim_source {
            Some(path) => path.clone(),
            None => {
                let exe = std::env::current_exe()
                    .map_err(NodeError::io("cannot locate", "the running wedge binary"))?;
                exe.with_file_name(SHIM_NAME)
            }
        };
        Ok(ChangeOptions {
            shim_source,
            engine_config: self.engine_config.clone(),
            restart: match self.restart {
                RestartArg::Auto => RestartPolicy::Auto,
                RestartArg::Never => RestartPolicy::Never,
            },
            label_node: self.label_node,
            dry_run: self.dry_run,
        })
    }
}

/// Runs a node command; `Ok(false)` when `status` found problems (exit non-zero).
pub fn run(command: NodeCommand) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NodeError::io("cannot start", "the async runtime"))?;
    let mut out = std::io::stdout();
    runtime.block_on(async {
        match command {
            NodeCommand::Install(args) => {
                steps::install(&args.target.target(), &args.options()?, &mut out).await?;
                Ok(true)
            }
            NodeCommand::Uninstall(args) => {
                steps::uninstall(&args.target.target(), &args.options()?, &mut out).await?;
                Ok(true)
            }
            NodeCommand::Status(args) => print_report(&args, &mut out).await,
            NodeCommand::Wait => {
                wait::until_terminated().await?;
                Ok(true)
            }
        }
    })
}

/// `wedge doctor`: the status report.
pub fn doctor(args: TargetArgs) -> Result<bool> {
    run(NodeCommand::Status(args))
}

async fn print_report(args: &TargetArgs, out: &mut dyn Write) -> Result<bool> {
    let report = report::gather(&args.target()).await;
    let _ = write!(out, "{report}");
    Ok(report.is_healthy())
}
