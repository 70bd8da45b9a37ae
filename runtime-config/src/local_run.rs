//! What `wedge run` hands the shim binary for one container run on the developer's machine
//! (`containerd-shim-wedge-v1 run-local BUNDLE`): the parts of a Create that containerd would
//! otherwise supply. The bundle itself (`config.json`, `rootfs/`) is an ordinary OCI bundle.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The file in the bundle directory that holds a [`LocalRun`], as JSON.
pub const LOCAL_RUN_FILE: &str = "wedge-local-run.json";

/// The action of the shim binary that runs one bundle in the foreground.
pub const LOCAL_RUN_ACTION: &str = "run-local";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRun {
    /// The container id: names its cgroup and its log lines.
    pub id: String,
    /// The engine config to use, as containerd's `ConfigPath` runtime option would name it;
    /// None: the node default (`/etc/wedge/config.toml`, else built-in defaults).
    pub engine_config: Option<PathBuf>,
    /// The image's wasm layer, for images that carry the module as a layer rather than as
    /// a file of the root filesystem; what containerd's content store holds on a node.
    pub wasm_layer: Option<LocalLayer>,
    /// Attach the caller's stdin to the module.
    pub stdin: bool,
}

/// A wasm layer's bytes in a file, and what its descriptor says of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalLayer {
    pub path: PathBuf,
    pub digest: String,
    pub media_type: String,
}
