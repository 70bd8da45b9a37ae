//! Configuration that lives outside the shim binary: the engine config an operator writes
//! (`/etc/wedge/config.toml`, or the runtime options containerd passes), the per-pod
//! overrides of it (`wedge.dev/*` annotations), and the containerd config patching that
//! registers the runtime.

pub mod annotations;
pub mod cgroup_driver;
pub mod containerd;
pub mod engine;
pub mod features;
pub mod quantity;

pub use annotations::{
    AnnotationError, AnnotationKey, HttpOptions, WasmOptions, ANNOTATION_PREFIX,
};
pub use engine::{
    CacheConfig, CgroupConfig, CgroupDriver, ConfigError, ConfigSource, EngineConfig,
    NetworkConfig, RuncConfig,
};
pub use features::WasmFeature;
