//! Configuration that lives outside the shim binary: the engine config an operator writes
//! (`/etc/wedge/config.toml`, or the runtime options containerd passes), the per-pod
//! overrides of it (`wedge.dev/*` annotations), and the containerd config patching that
//! registers the runtime.

pub mod annotation_key;
pub mod annotations;
pub mod cgroup_driver;
pub mod containerd;
pub mod engine;
pub mod features;
pub mod host_rules;
pub mod local_run;
pub mod quantity;
pub mod trusted_path;
pub mod wasm_image;

pub use annotation_key::{AnnotationKey, ANNOTATION_PREFIX};
pub use annotations::{AnnotationError, HttpOptions, WasmOptions};
pub use engine::{
    CacheConfig, CgroupConfig, CgroupDriver, ConfigError, ConfigSource, EngineConfig, LogFormat,
    NetworkConfig, RuncConfig,
};
pub use features::WasmFeature;
