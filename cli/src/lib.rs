//! The library behind the `wedge` command: image building and pushing today, node operations
//! later.

pub mod image;
pub mod installer_image;
pub mod module_image;
pub mod node;
pub mod oci_archive;
pub mod push;
pub mod registry_credentials;
pub mod run;
pub mod wasm_image;
