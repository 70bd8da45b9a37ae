//! How the runtime stands on a node, for `wedge node status` and `wedge doctor`: which file
//! holds its entry, whether the installer wrote it, and what containerd will read.

use std::path::PathBuf;

use super::atomic;
use super::document::{self, EntryState};
use super::dropin;
use super::entry::RuntimeSpec;
use super::error::Result;
use super::flavour::Location;
use super::plan::{dropin_target, k0s_dropin, template_path, Config};

/// The CRI config k0s renders from its defaults and the drop-ins, which its containerd
/// imports.
const K0S_MERGED_CRI_CONFIG: &str = "/run/k0s/containerd-cri.toml";
use super::schema::{self, SchemaVersion};
use super::template;

/// Where the runtime is, or would be, registered, and in what state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Host path of the file holding (or meant to hold) the entry.
    pub file: PathBuf,
    pub state: EntryState,
    /// The config version containerd reads.
    pub version: SchemaVersion,
    /// Whether the config containerd actually reads names the runtime (for k3s and rke2: the
    /// config.toml they last generated, so false until they restart after an install).
    pub in_effective_config: bool,
    /// The runc runtime's `SystemdCgroup`, when set.
    pub systemd_cgroup: Option<bool>,
    /// containerd's socket as the config names it (`grpc.address`), host path.
    pub socket: Option<String>,
}

/// Reads how the runtime stands on the node, for `status` and `doctor`.
pub fn inspect(location: &Location, spec: &RuntimeSpec) -> Result<Registration> {
    let config = Config::read(&location.config)?;
    let mut registration = Registration {
        file: location.root.host_view(&location.config),
        state: document::entry_state(&config.doc, config.version, spec),
        version: config.version,
        in_effective_config: false,
        systemd_cgroup: schema::systemd_cgroup(&config.doc, config.version),
        socket: config
            .doc
            .get("grpc")
            .and_then(|grpc| grpc.get("address"))
            .and_then(|address| address.as_str())
            .filter(|address| !address.is_empty())
            .map(str::to_string),
    };
    registration.in_effective_config = registration.state != EntryState::Absent;
    if let Some((path, version)) = k0s_dropin(location)? {
        registration.file = location.root.host_view(&path);
        registration.state = match atomic::read_optional(&path)? {
            None => EntryState::Absent,
            Some(text) if dropin::is_ours(&text) => EntryState::Ours {
                current: text == dropin::contents_for(version, spec, None),
            },
            Some(text) => {
                let doc = document::parse(&text, &path)?;
                document::entry_state(&doc, version, spec)
            }
        };
        // What k0s merged its drop-ins into, and containerd reads.
        let merged = location.root.resolve(K0S_MERGED_CRI_CONFIG);
        registration.in_effective_config = match atomic::read_optional(&merged)? {
            Some(text) => document::parse(&text, &merged)
                .map(|doc| document::entry_state(&doc, version, spec) != EntryState::Absent)
                .unwrap_or(false),
            None => false,
        };
        return Ok(registration);
    }
    if location.flavour.uses_k3s_templates() {
        let path = template_path(location, config.version);
        registration.file = location.root.host_view(&path);
        registration.state = match atomic::read_optional(&path)? {
            None => EntryState::Absent,
            Some(text) if template::is_go_template(&text) => {
                let desired = template::block(spec, config.version, registration.systemd_cgroup);
                match template::find_block(&text) {
                    Some(range) => EntryState::Ours {
                        current: text[range].trim_start_matches('\n') == desired,
                    },
                    None if template::defines_runtime(&text, &spec.name) => {
                        EntryState::Foreign { same: false }
                    }
                    None => EntryState::Absent,
                }
            }
            Some(text) => {
                let doc = document::parse(&text, &path)?;
                let version = SchemaVersion::of(&doc, &path)?;
                document::entry_state(&doc, version, spec)
            }
        };
    } else if registration.state == EntryState::Absent && config.version == SchemaVersion::V3 {
        if let Some(path) = dropin_target(location, &config) {
            registration.file = location.root.host_view(&path);
            if let Some(text) = atomic::read_optional(&path)? {
                let desired = dropin::contents(spec, registration.systemd_cgroup);
                registration.state = if text == desired {
                    EntryState::Ours { current: true }
                } else if dropin::is_ours(&text) {
                    EntryState::Ours { current: false }
                } else {
                    let doc = document::parse(&text, &path)?;
                    document::entry_state(&doc, SchemaVersion::V3, spec)
                };
                registration.in_effective_config = registration.state != EntryState::Absent;
            }
        }
    }
    Ok(registration)
}
