//! `make installer-image`: writes the node installer's image as an OCI image archive from
//! the workspace's own build, offline and without a container engine.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

/// Build the node installer image (wedge + the shim) as an OCI image archive.
#[derive(Parser)]
#[command(name = "wedge-installer-image")]
struct Args {
    /// Where the built `wedge` and `containerd-shim-wedge-v1` are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The image's name, as the manifests and the chart refer to it.
    #[arg(long, default_value = concat!("example.com/wedge/node-installer:", env!("CARGO_PKG_VERSION")))]
    tag: String,
    /// The archive to write.
    #[arg(long, default_value = "target/wedge-node-installer.tar")]
    output: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let built = wedge_cli::installer_image::build(&args.bin_dir, &args.tag, &args.output)?;
    println!(
        "{} {} -> {}",
        built.reference,
        built.index_digest,
        args.output.display()
    );
    Ok(())
}
