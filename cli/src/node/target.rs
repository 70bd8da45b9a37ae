//! Which node, containerd and runtime a command is about, from the flags every `wedge node`
//! command shares.

use std::path::PathBuf;

use wedge_runtime_config::containerd::{Flavour, HostRoot, Location, RuntimeSpec};

use super::error::Result;

/// File name of the shim containerd looks for for runtime type `io.containerd.wedge.v1`.
pub const SHIM_NAME: &str = "containerd-shim-wedge-v1";

#[derive(Debug, Clone)]
pub struct NodeTarget {
    pub root: HostRoot,
    /// `None`: detect.
    pub flavour: Option<Flavour>,
    /// Overrides detection (a host path).
    pub containerd_config: Option<PathBuf>,
    /// The CRI runtime handler to register.
    pub runtime_name: String,
    /// Host directory the shim goes into.
    pub shim_dest: PathBuf,
    /// Host path of the engine config the runtime entry points the shim at.
    pub engine_config: PathBuf,
}

impl NodeTarget {
    pub fn spec(&self) -> RuntimeSpec {
        RuntimeSpec {
            name: self.runtime_name.clone(),
            engine_config_path: self.engine_config.display().to_string(),
            runtime_path: Some(self.root.host_view(self.shim_path()).display().to_string()),
            ..RuntimeSpec::default()
        }
    }

    pub fn locate(&self) -> Result<Location> {
        Ok(Location::find(
            &self.root,
            self.flavour,
            self.containerd_config.as_deref(),
        )?)
    }

    /// The installed shim, as seen from here.
    pub fn shim_path(&self) -> PathBuf {
        self.root.resolve(self.shim_dest.join(SHIM_NAME))
    }

    /// The engine config the runtime entry points the shim at, as seen from here.
    pub fn engine_config_path(&self) -> PathBuf {
        self.root.resolve(&self.engine_config)
    }
}
