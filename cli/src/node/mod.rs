//! `wedge node …` and `wedge doctor`: put Wedge on a Kubernetes node (shim, engine config,
//! containerd's runtime entry, restart, node label), take it off again, and say what state
//! the node is in. Host paths go through a host root, so the same code runs on the node, in
//! the installer's pod (host mounted at `/host`) and in tests (a temp dir).

pub mod cgroup;
pub mod command;
pub mod containerd_api;
pub mod error;
pub mod files;
pub mod host_process;
pub mod kube;
pub mod report;
pub mod restart;
pub mod shim_lookup;
pub mod steps;
pub mod target;
pub mod wait;

pub use error::NodeError;
pub use report::{gather as status, NodeReport};
pub use steps::{install, uninstall, ChangeOptions, RestartPolicy};
pub use target::{NodeTarget, SHIM_NAME};
