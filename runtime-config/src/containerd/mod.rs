//! Registering a runtime with containerd's CRI plugin on a node, whatever packages containerd:
//! finding the config ([`Location::find`]), computing the change ([`plan_install`],
//! [`plan_uninstall`]), showing it ([`Plan::diff`]) and writing it ([`Plan::apply`]).
//!
//! Edits go through toml_edit, so comments and tables the installer does not own keep their
//! bytes. What install adds is marked ([`MARKER`]) and uninstall removes only that; when the
//! result means the same as the backup taken before the first install, the backup's exact
//! bytes are put back.

mod atomic;
mod content;
mod diff;
mod document;
mod dropin;
mod entry;
mod error;
mod flavour;
mod host;
mod inspect;
mod plan;
mod schema;
mod template;

pub use atomic::replace_file;
pub use document::EntryState;
pub use entry::{RuntimeSpec, MARKER};
pub use error::ContainerdConfigError;
pub use flavour::{Flavour, Location, UnknownFlavour};
pub use host::HostRoot;
pub use inspect::{inspect, Registration};
pub use plan::{plan_install, plan_uninstall, Backup, FileChange, Outcome, Plan, BACKUP_SUFFIX};
pub use schema::SchemaVersion;
pub use template::{BASE_ONLY as K3S_BASE_TEMPLATE, END_MARKER};
