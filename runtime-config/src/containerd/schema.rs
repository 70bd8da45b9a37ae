//! Where a config of each schema version keeps CRI's runtimes. containerd 1.x reads versions
//! 1 and 2, containerd 2.x reads 2 and 3; the plugin holding `containerd.runtimes` moved twice.

use std::path::Path;

use toml_edit::{DocumentMut, Item};

use super::error::{ContainerdConfigError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaVersion {
    /// containerd 1.x without a `version` key: plugin `cri`.
    V1,
    /// containerd 1.3 – 1.7 (also read by 2.x): plugin `io.containerd.grpc.v1.cri`.
    V2,
    /// containerd 2.x: runtimes moved to plugin `io.containerd.cri.v1.runtime`.
    V3,
}

impl SchemaVersion {
    /// Reads `version`; a missing one means 1, as containerd itself assumes.
    pub fn of(doc: &DocumentMut, path: &Path) -> Result<Self> {
        let Some(item) = doc.get("version") else {
            return Ok(SchemaVersion::V1);
        };
        match item.as_integer() {
            Some(1) => Ok(SchemaVersion::V1),
            Some(2) => Ok(SchemaVersion::V2),
            Some(3) => Ok(SchemaVersion::V3),
            _ => Err(ContainerdConfigError::UnknownVersion {
                path: path.to_path_buf(),
                version: item.to_string().trim().to_string(),
            }),
        }
    }

    pub fn number(self) -> i64 {
        match self {
            SchemaVersion::V1 => 1,
            SchemaVersion::V2 => 2,
            SchemaVersion::V3 => 3,
        }
    }

    /// The plugin whose `containerd.runtimes` table lists CRI's runtime handlers.
    pub fn cri_runtime_plugin(self) -> &'static str {
        match self {
            SchemaVersion::V1 => "cri",
            SchemaVersion::V2 => "io.containerd.grpc.v1.cri",
            SchemaVersion::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    /// Names under which `disabled_plugins` can switch that plugin off.
    fn cri_plugin_ids(self) -> &'static [&'static str] {
        match self {
            SchemaVersion::V1 | SchemaVersion::V2 => &["cri", "io.containerd.grpc.v1.cri"],
            SchemaVersion::V3 => &["io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"],
        }
    }

    /// Keys from the document root to the table of runtimes.
    pub fn runtimes_path(self) -> [&'static str; 4] {
        [
            "plugins",
            self.cri_runtime_plugin(),
            "containerd",
            "runtimes",
        ]
    }
}

/// Refuses a config whose CRI plugin is switched off or absent: a runtime registered there
/// would never be seen by kubelet.
pub fn require_cri(doc: &DocumentMut, version: SchemaVersion, path: &Path) -> Result<()> {
    refuse_disabled_cri(doc, version, path)?;
    let plugin = version.cri_runtime_plugin();
    let present = doc
        .get("plugins")
        .and_then(|plugins| plugins.get(plugin))
        .is_some();
    if !present {
        return Err(ContainerdConfigError::NoCriPlugin {
            path: path.to_path_buf(),
            plugin: format!("{plugin:?}"),
        });
    }
    Ok(())
}

/// Refuses a config that lists the CRI plugin in `disabled_plugins` (Docker's packaged
/// containerd config does).
pub fn refuse_disabled_cri(doc: &DocumentMut, version: SchemaVersion, path: &Path) -> Result<()> {
    let disabled = doc
        .get("disabled_plugins")
        .and_then(Item::as_array)
        .into_iter()
        .flatten()
        .filter_map(|value| value.as_str())
        .find(|id| version.cri_plugin_ids().contains(id));
    if let Some(plugin) = disabled {
        return Err(ContainerdConfigError::CriDisabled {
            path: path.to_path_buf(),
            plugin: plugin.to_string(),
        });
    }
    Ok(())
}

/// The node's cgroup driver as the config tells runc: `SystemdCgroup` of the default runtime,
/// else of `runc`. `None` when neither says (containerd then uses cgroupfs).
pub fn systemd_cgroup(doc: &DocumentMut, version: SchemaVersion) -> Option<bool> {
    let [plugins, plugin, containerd, runtimes] = version.runtimes_path();
    let section = doc.get(plugins)?.get(plugin)?.get(containerd)?;
    let default_runtime = section
        .get("default_runtime_name")
        .and_then(Item::as_str)
        .unwrap_or("runc");
    let runtimes = section.get(runtimes)?;
    [default_runtime, "runc"].iter().find_map(|name| {
        runtimes
            .get(name)?
            .get("options")?
            .get("SystemdCgroup")?
            .as_bool()
    })
}

/// Paths or globs listed in `imports`.
pub fn imports(doc: &DocumentMut) -> Vec<String> {
    doc.get("imports")
        .and_then(Item::as_array)
        .into_iter()
        .flatten()
        .filter_map(|value| value.as_str().map(str::to_string))
        .collect()
}
