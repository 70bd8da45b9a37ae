//! Which containerd a node runs and where its config lives: a packaged containerd, k3s' or
//! rke2's embedded one (config regenerated from a template at every start), microk8s', or
//! k0s' (a k0s-managed config that merges the drop-ins of `/etc/k0s/containerd.d`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::{ContainerdConfigError, Result};
use super::host::HostRoot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Containerd,
    K3s,
    Rke2,
    MicroK8s,
    K0s,
}

impl Flavour {
    /// Detection order: the Kubernetes distributions first, since their nodes may also carry
    /// a stray `/etc/containerd/config.toml` that nothing reads.
    pub const ALL: [Flavour; 5] = [
        Flavour::Rke2,
        Flavour::K3s,
        Flavour::MicroK8s,
        Flavour::K0s,
        Flavour::Containerd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::Containerd => "containerd",
            Flavour::K3s => "k3s",
            Flavour::Rke2 => "rke2",
            Flavour::MicroK8s => "microk8s",
            Flavour::K0s => "k0s",
        }
    }

    /// The host file the flavour's containerd configuration is read from (k3s and rke2:
    /// the config they generate; microk8s: the template its containerd.toml is made from).
    pub fn default_config(self) -> &'static str {
        match self {
            Flavour::Containerd => "/etc/containerd/config.toml",
            Flavour::K3s => "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
            Flavour::Rke2 => "/var/lib/rancher/rke2/agent/etc/containerd/config.toml",
            Flavour::MicroK8s => "/var/snap/microk8s/current/args/containerd-template.toml",
            Flavour::K0s => "/etc/k0s/containerd.toml",
        }
    }

    /// containerd's socket when the config does not name one.
    pub fn default_socket(self) -> &'static str {
        match self {
            Flavour::Containerd => "/run/containerd/containerd.sock",
            Flavour::K3s | Flavour::Rke2 => "/run/k3s/containerd/containerd.sock",
            Flavour::MicroK8s => "/var/snap/microk8s/common/run/containerd.sock",
            Flavour::K0s => "/run/k0s/containerd.sock",
        }
    }

    /// systemd units that run this containerd, in the order to try them (a k3s server or
    /// agent, an rke2 server or agent, a k0s worker or controller with a worker: k0s
    /// supervises its containerd and restarts it with itself).
    pub fn services(self) -> &'static [&'static str] {
        match self {
            Flavour::Containerd => &["containerd"],
            Flavour::K3s => &["k3s", "k3s-agent"],
            Flavour::Rke2 => &["rke2-server", "rke2-agent"],
            Flavour::MicroK8s => &["snap.microk8s.daemon-containerd"],
            Flavour::K0s => &["k0sworker", "k0scontroller"],
        }
    }

    /// Whether the runtime goes into a Go template the distribution renders at start.
    pub fn uses_k3s_templates(self) -> bool {
        matches!(self, Flavour::K3s | Flavour::Rke2)
    }

    /// The flavour a config path belongs to, from where it lives.
    fn of_path(path: &Path) -> Flavour {
        let text = path.to_string_lossy();
        if text.contains("/rancher/rke2/") {
            Flavour::Rke2
        } else if text.contains("/rancher/k3s/") {
            Flavour::K3s
        } else if text.contains("/microk8s/") {
            Flavour::MicroK8s
        } else if text.contains("/k0s/") {
            Flavour::K0s
        } else {
            Flavour::Containerd
        }
    }
}

impl fmt::Display for Flavour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown flavour {0:?}: expected containerd, k3s, rke2, microk8s or k0s")]
pub struct UnknownFlavour(String);

impl FromStr for Flavour {
    type Err = UnknownFlavour;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Flavour::ALL
            .into_iter()
            .find(|flavour| flavour.as_str() == text)
            .ok_or_else(|| UnknownFlavour(text.to_string()))
    }
}

/// A node's containerd config, found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub flavour: Flavour,
    pub root: HostRoot,
    /// The config file as seen from here (below the host root).
    pub config: PathBuf,
}

impl Location {
    /// Finds the config: `config` if given (a host path), else the first flavour (`flavour`,
    /// or each in [`Flavour::ALL`]) whose config file exists.
    pub fn find(root: &HostRoot, flavour: Option<Flavour>, config: Option<&Path>) -> Result<Self> {
        if let Some(config) = config {
            let path = root.resolve(config);
            if !path.is_file() {
                return Err(ContainerdConfigError::NotFound {
                    root: root.path().to_path_buf(),
                    looked: path.display().to_string(),
                });
            }
            return Ok(Location {
                flavour: flavour.unwrap_or_else(|| Flavour::of_path(&path)),
                root: root.clone(),
                config: path,
            });
        }
        let candidates = match flavour {
            Some(flavour) => vec![flavour],
            None => Flavour::ALL.to_vec(),
        };
        let found = candidates.iter().find_map(|flavour| {
            let path = root.resolve(flavour.default_config());
            path.is_file().then(|| Location {
                flavour: *flavour,
                root: root.clone(),
                config: path,
            })
        });
        found.ok_or_else(|| ContainerdConfigError::NotFound {
            root: root.path().to_path_buf(),
            looked: candidates
                .iter()
                .map(|flavour| flavour.default_config())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}
