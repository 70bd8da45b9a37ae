//! What a wasm image is made of, for every part that reads or writes one: the shim reads
//! its layers, the CLI builds and pushes images, the end-to-end tests build fixtures. One
//! list of media types and one digest function, so that the three never disagree.

use sha2::{Digest, Sha256};

/// Config of the CNCF wasm OCI artifact.
pub const WASM_ARTIFACT_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Layer of the CNCF wasm OCI artifact.
pub const WASM_ARTIFACT_LAYER: &str = "application/wasm";
/// A component as one layer (wasm-pkg-tools, wkg).
pub const COMPONENT_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// A module as one layer (runwasi's convention).
pub const MODULE_LAYER: &str = "application/vnd.w3c.wasm.module.v1+wasm";
/// A module as one layer (older OCI wasm tooling).
pub const CONTENT_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// Layer media types that carry a wasm module or component as the layer's bytes.
pub const WASM_LAYER_MEDIA_TYPES: [&str; 4] = [
    WASM_ARTIFACT_LAYER,
    COMPONENT_LAYER,
    MODULE_LAYER,
    CONTENT_LAYER,
];

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The hex sha256 of `bytes`, as blob names and cache keys spell it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The OCI digest of `bytes`: `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_spelled_as_oci_spells_them() {
        assert_eq!(
            sha256_digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }

    #[test]
    fn every_layer_type_is_a_wasm_layer() {
        for media_type in [
            WASM_ARTIFACT_LAYER,
            COMPONENT_LAYER,
            MODULE_LAYER,
            CONTENT_LAYER,
        ] {
            assert!(WASM_LAYER_MEDIA_TYPES.contains(&media_type));
        }
    }
}
