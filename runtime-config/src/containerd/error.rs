//! Why a containerd config was refused or could not be changed. Every variant names the file,
//! so an operator reading the installer's log knows which one to look at.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ContainerdConfigError {
    #[error("no containerd config found under {root}; looked for: {looked}")]
    NotFound { root: PathBuf, looked: String },

    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },

    #[error("{path}: config version {version} is not one this installer knows (1, 2 or 3)")]
    UnknownVersion { path: PathBuf, version: String },

    #[error(
        "{path}: no CRI plugin section [plugins.{plugin}]; this config does not look like one \
         that serves Kubernetes"
    )]
    NoCriPlugin { path: PathBuf, plugin: String },

    #[error("{path}: the CRI plugin is disabled (disabled_plugins lists {plugin:?})")]
    CriDisabled { path: PathBuf, plugin: String },

    #[error("{path}: `{key}` is expected to be a table but is not")]
    NotATable { path: PathBuf, key: String },

    #[error(
        "{path}: runtime {name:?} is already defined differently and was not added by wedge; \
         remove it or install under another --runtime-class"
    )]
    ConflictingRuntime { path: PathBuf, name: String },

    #[error("{path} exists and was not written by wedge; refusing to overwrite it")]
    ForeignFile { path: PathBuf },

    #[error("{path} changed while it was being patched; run the command again")]
    ChangedMeanwhile { path: PathBuf },
}

pub type Result<T, E = ContainerdConfigError> = std::result::Result<T, E>;
