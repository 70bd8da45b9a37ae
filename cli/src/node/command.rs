//! The command line of `wedge node …` and `wedge doctor`. Flag names are shared with the
//! deploy manifests and the Helm chart; change them together.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use wedge_runtime_config::containerd::{Flavour, HostRoot};

use super::error::{NodeError, Result};
use super::files::ExistingEngineConfig;
use super::report::Expected;
use super::steps::{self, ChangeOptions, RestartPolicy};
use super::target::{NodeTarget, SHIM_NAME};
use super::{report, wait};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Copy the shim, register the runtime with containerd, restart it, label the node.
    Install(ChangeArgs),
    /// Undo `install`: label, runtime entry, restart, engine config, shim.
    Uninstall(ChangeArgs),
    /// Report the node's state; exits non-zero when there is a problem (with --expect: when
    /// the node is not in the expected state).
    Status(StatusArgs),
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
    K0s,
}

impl FlavourArg {
    fn flavour(self) -> Option<Flavour> {
        match self {
            FlavourArg::Auto => None,
            FlavourArg::Containerd => Some(Flavour::Containerd),
            FlavourArg::K3s => Some(Flavour::K3s),
            FlavourArg::Rke2 => Some(Flavour::Rke2),
            FlavourArg::Microk8s => Some(Flavour::MicroK8s),
            FlavourArg::K0s => Some(Flavour::K0s),
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
    /// The CRI runtime handler to register (a RuntimeClass's handler); `--runtime-name` is
    /// the older spelling of the same flag.
    #[arg(long, alias = "runtime-name", default_value = "wedge")]
    pub runtime_class: String,
    /// Host directory for containerd-shim-wedge-v1.
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    pub shim_dest: PathBuf,
    /// Host path of the engine config the runtime entry points the shim at (where
    /// --engine-config is copied to).
    #[arg(long, value_name = "PATH", default_value = wedge_runtime_config::engine::DEFAULT_CONFIG_PATH)]
    pub engine_config_path: PathBuf,
}

impl TargetArgs {
    fn target(&self) -> NodeTarget {
        NodeTarget {
            root: HostRoot::new(&self.host_root),
            flavour: self.flavour.flavour(),
            containerd_config: self.containerd_config.clone(),
            runtime_name: self.runtime_class.clone(),
            shim_dest: self.shim_dest.clone(),
            engine_config: self.engine_config_path.clone(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExpectArg {
    /// Shim in place, runtime in containerd's config and listed by its CRI plugin, no
    /// problem found.
    Installed,
    /// Runtime in neither containerd's config nor its CRI plugin, shim gone.
    Uninstalled,
}

#[derive(Args, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Exit 0 only when the node is in this state (the installer's readiness probe); the
    /// reasons it is not are printed after the report.
    #[arg(long, value_enum, value_name = "STATE")]
    pub expect: Option<ExpectArg>,
}

#[derive(Args, Clone)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The shim to install (default: containerd-shim-wedge-v1 beside this wedge binary).
    #[arg(long, value_name = "PATH")]
    pub shim_source: Option<PathBuf>,
    /// Engine config copied to --engine-config-path on the host when none is there
    /// (uninstall: removed when it still holds exactly this file).
    #[arg(long, value_name = "FILE")]
    pub engine_config: Option<PathBuf>,
    /// Install: replace a /etc/wedge/config.toml that differs from --engine-config (the
    /// first file replaced is kept as config.toml.wedge-previous).
    #[arg(long, requires = "engine_config")]
    pub overwrite_engine_config: bool,
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
            existing_engine_config: if self.overwrite_engine_config {
                ExistingEngineConfig::Replace
            } else {
                ExistingEngineConfig::Keep
            },
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
pub fn doctor(target: TargetArgs) -> Result<bool> {
    run(NodeCommand::Status(StatusArgs {
        target,
        expect: None,
    }))
}

async fn print_report(args: &StatusArgs, out: &mut dyn Write) -> Result<bool> {
    let report = report::gather(&args.target.target()).await;
    let _ = write!(out, "{report}");
    let Some(expect) = args.expect else {
        return Ok(report.is_healthy());
    };
    let expected = match expect {
        ExpectArg::Installed => Expected::Installed,
        ExpectArg::Uninstalled => Expected::Uninstalled,
    };
    let reasons = report.mismatches(expected);
    if reasons.is_empty() {
        let _ = writeln!(out, "expected {expected}: yes");
    } else {
        let _ = writeln!(out, "expected {expected}: no");
        for reason in &reasons {
            let _ = writeln!(out, "  - {reason}");
        }
    }
    Ok(reasons.is_empty())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `wedge node …` on its own, as the binary parses it.
    #[derive(Parser)]
    struct NodeCli {
        #[command(subcommand)]
        command: NodeCommand,
    }

    fn parse(args: &[&str]) -> std::result::Result<NodeCommand, clap::Error> {
        NodeCli::try_parse_from(std::iter::once("node").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    /// The install step exactly as deploy/base/daemonset.yaml and the chart run it.
    #[test]
    fn the_manifests_install_arguments_parse() {
        let Ok(NodeCommand::Install(args)) = parse(&[
            "install",
            "--host-root=/host",
            "--flavour=auto",
            "--shim-source=/usr/local/bin/containerd-shim-wedge-v1",
            "--shim-dest=/usr/local/bin",
            "--engine-config=/etc/wedge-installer/config.toml",
            "--overwrite-engine-config",
            "--runtime-class=wedge",
            "--label-node",
            "--containerd-config=/etc/containerd/config.toml",
            "--dry-run",
        ]) else {
            panic!("install arguments refused");
        };
        assert_eq!(args.target.runtime_class, "wedge");
        assert_eq!(args.target.host_root, PathBuf::from("/host"));
        assert!(args.overwrite_engine_config && args.label_node && args.dry_run);
        let options = args.options().unwrap();
        assert_eq!(
            options.existing_engine_config,
            ExistingEngineConfig::Replace
        );
        assert_eq!(
            options.shim_source,
            PathBuf::from("/usr/local/bin/containerd-shim-wedge-v1")
        );
    }

    #[test]
    fn the_manifests_uninstall_and_probe_arguments_parse() {
        let node_flags = [
            "--host-root=/host",
            "--flavour=auto",
            "--shim-dest=/usr/local/bin",
            "--runtime-class=wedge",
        ];
        let mut uninstall = vec!["uninstall"];
        uninstall.extend(node_flags);
        uninstall.push("--label-node");
        assert!(matches!(parse(&uninstall), Ok(NodeCommand::Uninstall(_))));
        for (state, expected) in [
            ("installed", ExpectArg::Installed),
            ("uninstalled", ExpectArg::Uninstalled),
        ] {
            let expect = format!("--expect={state}");
            let mut status = vec!["status"];
            status.extend(node_flags);
            status.push(&expect);
            let Ok(NodeCommand::Status(args)) = parse(&status) else {
                panic!("status --expect={state} refused");
            };
            assert!(args.expect == Some(expected));
        }
        assert!(matches!(parse(&["wait"]), Ok(NodeCommand::Wait)));
        assert!(parse(&["status", "--expect=gone"]).is_err());
    }

    #[test]
    fn runtime_name_is_still_accepted() {
        let Ok(NodeCommand::Status(args)) = parse(&["status", "--runtime-name", "wasm"]) else {
            panic!("--runtime-name refused");
        };
        assert_eq!(args.target.runtime_class, "wasm");
        assert_eq!(args.target.target().runtime_name, "wasm");
    }

    #[test]
    fn overwrite_needs_an_engine_config_and_defaults_to_keeping() {
        assert!(parse(&["install", "--overwrite-engine-config"]).is_err());
        let Ok(NodeCommand::Install(args)) = parse(&["install", "--engine-config=/x.toml"]) else {
            panic!("install refused");
        };
        assert_eq!(
            args.options().unwrap().existing_engine_config,
            ExistingEngineConfig::Keep
        );
    }
}
