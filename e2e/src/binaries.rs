//! Where the binaries under test are: the cargo target directory these tests were built in.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};

pub const SHIM: &str = "containerd-shim-wedge-v1";
pub const CLI: &str = "wedge";

/// The directory holding the workspace's binaries of the same profile as this executable
/// (`target/<profile>`; test executables live one level down, in `deps`).
pub fn dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WEDGE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    ensure!(
        dir.join(SHIM).is_file() && dir.join(CLI).is_file(),
        "{SHIM} and {CLI} are not built in {}: run `cargo build --release --workspace --bins` \
         first (make test does)",
        dir.display()
    );
    Ok(dir)
}

pub fn path(name: &str) -> Result<PathBuf> {
    Ok(dir()?.join(name))
}
