//! Configuration that lives outside the shim binary: the engine config an operator writes
//! (`/etc/wedge/config.toml`, or the runtime options containerd passes), and — later — the
//! containerd config patching that registers the runtime.

pub mod engine;

pub use engine::{CacheConfig, ConfigError, ConfigSource, EngineConfig, RuncConfig};
