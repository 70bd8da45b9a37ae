//! Harness for Wedge's end-to-end tests, demo and benchmarks: a private containerd, the
//! binaries under test, and the wasm programs and images they run.

pub mod binaries;
pub mod cgroups;
pub mod components;
pub mod containerd;
pub mod cri;
pub mod critest;
pub mod ctr_case;
pub mod guest;
pub mod http_load;
pub mod images;
pub mod otlp_receiver;
pub mod programs;
pub mod registry;
pub mod stand_in_api;
pub mod stand_in_init;
pub mod wasi_suite;

pub use containerd::{private_cache_dir, Containerd, Release, WEDGE_RUNTIME};
pub use cri::{ContainerSpec, CriNode, Pod};
pub use ctr_case::CtrCase;
pub use registry::Registry;
