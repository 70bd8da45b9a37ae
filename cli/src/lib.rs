//! The library behind the `wedge` command: image building today, node operations later.

pub mod image;
pub mod wasm_image;
