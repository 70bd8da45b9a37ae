//! The engine config: what an operator may tune about how Wedge runs wasm on a node.
//!
//! Unknown keys are errors, not warnings: a misspelt option silently ignored on a production
//! node is worse than a container that refuses to start with the key named.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the engine config lives when containerd passes no runtime options.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wedge/config.toml";

/// Default home of compiled modules.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/wedge/cache";

/// Default state root of runc for native containers (beside containerd's own runc shim's
/// `/run/containerd/runc`, never inside it).
pub const DEFAULT_RUNC_ROOT: &str = "/run/wedge/runc";

/// Default cap on the cache's total size.
pub const DEFAULT_CACHE_MAX_SIZE_MB: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    pub cache: CacheConfig,
    pub runc: RuncConfig,
}

/// How native (non-wasm) containers are handed to runc.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuncConfig {
    /// The runc binary: a path, or a name looked up in the shim's PATH.
    pub path: PathBuf,
    /// runc's state root; one directory per containerd namespace below it.
    pub root: PathBuf,
}

impl Default for RuncConfig {
    fn default() -> Self {
        RuncConfig {
            path: PathBuf::from("runc"),
            root: PathBuf::from(DEFAULT_RUNC_ROOT),
        }
    }
}

/// The compiled-module cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Off: every Create compiles.
    pub enabled: bool,
    /// Root-only directory of compiled modules.
    pub dir: PathBuf,
    /// Least-recently-used entries are removed past this total size.
    pub max_size_mb: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: PathBuf::from(DEFAULT_CACHE_DIR),
            max_size_mb: DEFAULT_CACHE_MAX_SIZE_MB,
        }
    }
}

impl CacheConfig {
    pub fn max_size_bytes(&self) -> u64 {
        self.max_size_mb.saturating_mul(1024 * 1024)
    }
}

/// Where a config comes from, in containerd's terms: a runtime's `ConfigBody` (inline TOML)
/// or `ConfigPath`, else the node-wide default file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    Body(String),
    Path(PathBuf),
    /// [`DEFAULT_CONFIG_PATH`] if it exists, else built-in defaults.
    NodeDefault,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the engine config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid engine config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl EngineConfig {
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        match source {
            ConfigSource::Body(body) => Self::parse(body, "(runtime option ConfigBody)"),
            ConfigSource::Path(path) => Self::load_file(path),
            ConfigSource::NodeDefault => {
                let path = Path::new(DEFAULT_CONFIG_PATH);
                match std::fs::read_to_string(path) {
                    Ok(text) => Self::parse(&text, DEFAULT_CONFIG_PATH),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        Ok(EngineConfig::default())
                    }
                    Err(source) => Err(ConfigError::Read {
                        path: path.to_path_buf(),
                        source,
                    }),
                }
            }
        }
    }

    fn load_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: EngineConfig =
            toml_edit::de::from_str(text).map_err(|err| ConfigError::Invalid {
                origin: origin.to_string(),
                message: one_line(&err.to_string()),
            })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !self.runc.root.is_absolute() {
            return Err(format!(
                "runc.root must be an absolute path, not {:?}",
                self.runc.root
            ));
        }
        if !self.cache.dir.is_absolute() {
            return Err(format!(
                "cache.dir must be an absolute path, not {:?}",
                self.cache.dir
            ));
        }
        Ok(())
    }
}

/// toml_edit's messages span several lines with a source excerpt; containerd shows errors on
/// one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('|') && !line.ends_with('|'))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_means_defaults() {
        let config = EngineConfig::parse("", "t").unwrap();
        assert_eq!(config, EngineConfig::default());
        assert_eq!(config.cache.dir, Path::new(DEFAULT_CACHE_DIR));
        assert_eq!(config.cache.max_size_bytes(), 1024 * 1024 * 1024);
    }

    #[test]
    fn reads_cache_settings() {
        let config = EngineConfig::parse(
            "[cache]\ndir = \"/tmp/c\"\nmax_size_mb = 5\nenabled = false\n",
            "t",
        )
        .unwrap();
        assert_eq!(config.cache.dir, Path::new("/tmp/c"));
        assert_eq!(config.cache.max_size_bytes(), 5 * 1024 * 1024);
        assert!(!config.cache.enabled);
        let config = EngineConfig::parse("[runc]\npath = \"/opt/runc\"\n", "t").unwrap();
        assert_eq!(config.runc.path, Path::new("/opt/runc"));
        assert_eq!(config.runc.root, Path::new(DEFAULT_RUNC_ROOT));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = EngineConfig::parse("[cache]\ndirectory = \"/x\"\n", "cfg.toml").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("cfg.toml") && text.contains("directory"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");

        let err = EngineConfig::parse("[cache]\ndir = \"relative\"\n", "cfg.toml").unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");

        let err = EngineConfig::parse("[cache\n", "cfg.toml").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid engine config cfg.toml"));
    }

    #[test]
    fn loads_from_a_path_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[cache]\nmax_size_mb = 7\n").unwrap();
        let config = EngineConfig::load(&ConfigSource::Path(path.clone())).unwrap();
        assert_eq!(config.cache.max_size_mb, 7);

        let err =
            EngineConfig::load(&ConfigSource::Path(dir.path().join("nope.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }
}
