//! What of an OCI image a local run needs: the process defaults of its config and its
//! layers, split into root filesystem layers and the wasm layer, for this host's platform.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use wedge_runtime_config::wasm_image::WASM_LAYER_MEDIA_TYPES;

use super::RunError;
use crate::image::Platform;
use crate::oci_archive::OciArchive;

/// An index may point at an index (an OCI layout's nested image index); no deeper.
const MAX_INDEX_DEPTH: usize = 2;

#[derive(Debug, Default)]
pub struct ImageParts {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// Tar layers, bottom first.
    pub rootfs_layers: Vec<Descriptor>,
    pub wasm_layer: Option<Descriptor>,
}

pub fn image_parts(image: &OciArchive, host: &Platform) -> Result<ImageParts, RunError> {
    let manifest = manifest_for(image, &image.top, host, 0)?;
    let invalid = |reason: String| RunError::Image {
        image: image.origin.clone(),
        reason,
    };
    let config: serde_json::Value =
        serde_json::from_slice(image.blob(manifest.config().digest().as_ref())?)
            .map_err(|err| invalid(format!("its config is not JSON: {err}")))?;
    // An OCI image config and the wasm artifact's config both keep the process defaults in
    // `config`.
    let process = &config["config"];
    let strings = |key: &str| -> Vec<String> {
        process[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut parts = ImageParts {
        entrypoint: strings("Entrypoint"),
        cmd: strings("Cmd"),
        env: strings("Env"),
        workdir: process["WorkingDir"]
            .as_str()
            .filter(|dir| !dir.is_empty())
            .map(String::from),
        ..ImageParts::default()
    };
    for layer in manifest.layers() {
        let media_type = layer.media_type().to_string();
        if WASM_LAYER_MEDIA_TYPES.contains(&media_type.as_str()) {
            if parts.wasm_layer.replace(layer.clone()).is_some() {
                return Err(invalid(
                    "it has more than one wasm layer; Wedge runs images with exactly one".into(),
                ));
            }
        } else {
            parts.rootfs_layers.push(layer.clone());
        }
    }
    Ok(parts)
}

fn manifest_for(
    image: &OciArchive,
    descriptor: &Descriptor,
    host: &Platform,
    depth: usize,
) -> Result<ImageManifest, RunError> {
    let invalid = |reason: String| RunError::Image {
        image: image.origin.clone(),
        reason,
    };
    let bytes = image.blob(descriptor.digest().as_ref())?;
    match descriptor.media_type() {
        MediaType::ImageManifest => ImageManifest::from_reader(bytes)
            .map_err(|err| invalid(format!("manifest {}: {err}", descriptor.digest()))),
        MediaType::ImageIndex if depth < MAX_INDEX_DEPTH => {
            let index = ImageIndex::from_reader(bytes)
                .map_err(|err| invalid(format!("index {}: {err}", descriptor.digest())))?;
            let chosen = choose_platform(index.manifests(), host).ok_or_else(|| {
                let offered: Vec<String> = index
                    .manifests()
                    .iter()
                    .filter_map(|entry| entry.platform().as_ref())
                    .map(|platform| format!("{}/{}", platform.os(), platform.architecture()))
                    .collect();
                invalid(format!("its index lists no image ({})", offered.join(", ")))
            })?;
            manifest_for(image, chosen, host, depth + 1)
        }
        other => Err(invalid(format!(
            "unsupported media type {other} at its top"
        ))),
    }
}

/// As the shim picks on a node: a wasm platform (`*/wasm`, `wasi*/*`) first, then the
/// host's own, then the first entry.
fn choose_platform<'a>(entries: &'a [Descriptor], host: &Platform) -> Option<&'a Descriptor> {
    let platform_of = |entry: &Descriptor| {
        entry.platform().as_ref().map(|platform| {
            (
                platform.os().to_string(),
                platform.architecture().to_string(),
            )
        })
    };
    let is_host = |entry: &&Descriptor| {
        platform_of(entry).is_some_and(|(os, arch)| os == host.os && arch == host.architecture)
    };
    let is_wasm = |entry: &&Descriptor| {
        platform_of(entry).is_some_and(|(os, arch)| os.starts_with("wasi") || arch == "wasm")
    };
    entries
        .iter()
        .find(is_wasm)
        .or_else(|| entries.iter().find(is_host))
        .or_else(|| entries.first())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{DescriptorBuilder, PlatformBuilder};

    fn entry(os: &str, arch: &str, digest_byte: char) -> Descriptor {
        DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .size(1u64)
            .digest(
                format!("sha256:{}", digest_byte.to_string().repeat(64))
                    .parse::<oci_spec::image::Digest>()
                    .unwrap(),
            )
            .platform(
                PlatformBuilder::default()
                    .os(os)
                    .architecture(arch)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn wasm_wins_then_the_host_platform_then_the_first() {
        let host = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
        };
        let entries = [entry("linux", "amd64", 'b'), entry("wasip1", "wasm", 'c')];
        assert_eq!(choose_platform(&entries, &host), Some(&entries[1]));
        let entries = [entry("linux", "arm64", 'a'), entry("linux", "amd64", 'b')];
        assert_eq!(choose_platform(&entries, &host), Some(&entries[1]));
        let entries = [entry("linux", "s390x", 'a'), entry("linux", "arm64", 'b')];
        assert_eq!(choose_platform(&entries, &host), Some(&entries[0]));
        assert_eq!(choose_platform(&[], &host), None);
    }
}
