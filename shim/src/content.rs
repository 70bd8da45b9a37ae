//! Wasm layers from containerd's content store: for images that ship the module as a layer
//! (CNCF wasm artifacts and friends) rather than as a file in a root filesystem.
//!
//! The shim asks containerd, over the socket and in the namespace it was started with, which
//! image the container was made from, walks that image's index and manifest, and reads the
//! wasm layer, checking its digest.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetContainerRequest, GetImageRequest, ReadContentRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os};
use sha2::{Digest, Sha256};
use tracing::debug;

use wedge_runtime_config::local_run::LocalLayer;
use wedge_runtime_config::wasm_image::{self, WASM_LAYER_MEDIA_TYPES};

use crate::error::{Error, Result};
use crate::runner::launch::module_fd::ModuleMemfd;

/// Manifests and indexes are small; anything bigger is not one.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Bigger than any module a runner could sensibly compile.
const MAX_LAYER_BYTES: u64 = 1 << 30;
/// An index may point at an index (an OCI layout's nested image index); no deeper.
const MAX_INDEX_DEPTH: usize = 2;

/// A wasm layer read from the content store, its digest verified.
pub struct WasmLayer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// The verified bytes, sealed.
    pub module: OwnedFd,
}

/// Where wasm layers come from: containerd's API as the shim sees it (the daemon's socket
/// and the namespace of its tasks), or, for `wedge run`, the one layer it extracted.
pub struct ContentStore {
    source: Source,
}

enum Source {
    Containerd { address: PathBuf, namespace: String },
    Local(Option<LocalLayer>),
}

impl ContentStore {
    pub fn new(address: impl Into<PathBuf>, namespace: &str) -> Self {
        ContentStore {
            source: Source::Containerd {
                address: address.into(),
                namespace: namespace.to_string(),
            },
        }
    }

    /// The store of a local run: every container gets `layer`, if any.
    pub fn local(layer: Option<LocalLayer>) -> Self {
        ContentStore {
            source: Source::Local(layer),
        }
    }

    /// The wasm layer of the image container `id` was created from, or None when the
    /// container has no image or the image has no wasm layer.
    pub async fn wasm_layer(&self, id: &str) -> Result<Option<WasmLayer>> {
        match &self.source {
            Source::Containerd { address, namespace } => {
                from_containerd(address, namespace, id).await
            }
            Source::Local(None) => Ok(None),
            Source::Local(Some(layer)) => local_layer(layer).map(Some),
        }
    }
}

/// The layer `wedge run` wrote, checked against its digest like one from containerd.
fn local_layer(layer: &LocalLayer) -> Result<WasmLayer> {
    let image = layer.path.display().to_string();
    let bytes = std::fs::read(&layer.path)
        .map_err(|err| Error::io("cannot read the wasm layer", &layer.path, err))?;
    let actual = format!("sha256:{}", wasm_image::hex(&Sha256::digest(&bytes)));
    if actual != layer.digest {
        return Err(Error::ImageLayout {
            image,
            reason: format!("its wasm layer is {actual}, not {}", layer.digest),
        });
    }
    if bytes.len() as u64 > MAX_LAYER_BYTES {
        return Err(Error::ImageLayout {
            image,
            reason: format!("its wasm layer is {} bytes, over the limit", bytes.len()),
        });
    }
    Ok(WasmLayer {
        digest: actual,
        media_type: layer.media_type.clone(),
        size: bytes.len() as u64,
        module: crate::runner::launch::module_fd::sealed_memfd(&bytes)?,
    })
}

async fn from_containerd(address: &Path, namespace: &str, id: &str) -> Result<Option<WasmLayer>> {
    let channel = containerd_client::connect(address)
        .await
        .map_err(|err| Error::ContentStore {
            what: "connect to",
            subject: address.display().to_string(),
            reason: err.to_string(),
        })?;
    let session = Session { channel, namespace };
    let Some(image) = session.container_image(id).await? else {
        return Ok(None);
    };
    let target = session.image_target(&image).await?;
    let Some(manifest) = session.manifest(&image, target, 0).await? else {
        return Ok(None);
    };
    let wasm_layers: Vec<&Descriptor> = manifest
        .layers()
        .iter()
        .filter(|layer| is_wasm_layer(layer.media_type()))
        .collect();
    let layer = match wasm_layers[..] {
        [] => return Ok(None),
        [layer] => layer,
        [..] => {
            return Err(Error::ImageLayout {
                image,
                reason: format!(
                    "it has {} wasm layers; Wedge runs images with exactly one wasm \
                     layer (linking several modules is not supported)",
                    wasm_layers.len()
                ),
            })
        }
    };
    if layer.size() > MAX_LAYER_BYTES {
        return Err(Error::ImageLayout {
            image,
            reason: format!("its wasm layer is {} bytes, over the limit", layer.size()),
        });
    }
    let module = session.read_into_memfd(&image, layer).await?;
    debug!(%image, digest = %layer.digest(), size = layer.size(), "read wasm layer");
    Ok(Some(WasmLayer {
        digest: layer.digest().to_string(),
        media_type: layer.media_type().to_string(),
        size: layer.size(),
        module,
    }))
}

pub fn is_wasm_layer(media_type: &MediaType) -> bool {
    WASM_LAYER_MEDIA_TYPES.contains(&media_type.to_string().as_str())
}

struct Session<'a> {
    channel: Channel,
    namespace: &'a str,
}

impl Session<'_> {
    fn request<T>(&self, message: T) -> Result<Request<T>> {
        let mut request = Request::new(message);
        let namespace = self.namespace.parse().map_err(|_| Error::ContentStore {
            what: "use namespace",
            subject: self.namespace.to_string(),
            reason: "not valid in a gRPC header".into(),
        })?;
        request
            .metadata_mut()
            .insert("containerd-namespace", namespace);
        Ok(request)
    }

    async fn container_image(&self, id: &str) -> Result<Option<String>> {
        let request = self.request(GetContainerRequest { id: id.to_string() })?;
        let response = ContainersClient::new(self.channel.clone())
            .get(request)
            .await
            .map_err(|status| match status.code() {
                containerd_client::tonic::Code::NotFound => {
                    Error::ContainerNotFound(id.to_string())
                }
                _ => api_error("look up container", id, status),
            })?;
        Ok(response
            .into_inner()
            .container
            .map(|container| container.image)
            .filter(|image| !image.is_empty()))
    }

    async fn image_target(&self, image: &str) -> Result<Descriptor> {
        let request = self.request(GetImageRequest {
            name: image.to_string(),
        })?;
        let response = ImagesClient::new(self.channel.clone())
            .get(request)
            .await
            .map_err(|status| api_error("look up image", image, status))?;
        let target = response
            .into_inner()
            .image
            .and_then(|image| image.target)
            .ok_or_else(|| Error::ImageLayout {
                image: image.to_string(),
                reason: "containerd has no target descriptor for it".into(),
            })?;
        let digest: oci_spec::image::Digest =
            target.digest.parse().map_err(|_| Error::ImageLayout {
                image: image.to_string(),
                reason: format!("malformed target digest {:?}", target.digest),
            })?;
        let size = u64::try_from(target.size).unwrap_or_default();
        Ok(Descriptor::new(
            MediaType::from(target.media_type.as_str()),
            size,
            digest,
        ))
    }

    /// The image manifest that may hold a wasm layer: `descriptor` itself, or the best
    /// platform of an index (a `wasm` architecture first, then this node's, then the first).
    async fn manifest(
        &self,
        image: &str,
        descriptor: Descriptor,
        depth: usize,
    ) -> Result<Option<ImageManifest>> {
        let malformed = |what: &str, err: &dyn std::fmt::Display| Error::ImageLayout {
            image: image.to_string(),
            reason: format!("malformed {what} {}: {err}", descriptor.digest()),
        };
        if descriptor.size() > MAX_MANIFEST_BYTES {
            return Ok(None);
        }
        if is_index(descriptor.media_type()) {
            if depth >= MAX_INDEX_DEPTH {
                return Ok(None);
            }
            let bytes = self.read_verified(image, &descriptor).await?;
            let index =
                ImageIndex::from_reader(&bytes[..]).map_err(|err| malformed("index", &err))?;
            let Some(chosen) = choose_manifest(index.manifests()) else {
                return Ok(None);
            };
            return Box::pin(self.manifest(image, chosen.clone(), depth + 1)).await;
        }
        if !is_manifest(descriptor.media_type()) {
            return Ok(None);
        }
        let bytes = self.read_verified(image, &descriptor).await?;
        let manifest =
            ImageManifest::from_reader(&bytes[..]).map_err(|err| malformed("manifest", &err))?;
        Ok(Some(manifest))
    }

    /// A layer streamed into a sealed memfd and checked on the way: the shim holds one
    /// chunk at a time, never the module (up to [`MAX_LAYER_BYTES`]).
    async fn read_into_memfd(&self, image: &str, descriptor: &Descriptor) -> Result<OwnedFd> {
        let mut memfd = ModuleMemfd::new()?;
        self.read_checked(image, descriptor, |chunk| memfd.append(chunk))
            .await?;
        memfd.seal()
    }

    /// Reads a blob and checks that it is what its descriptor says.
    async fn read_verified(&self, image: &str, descriptor: &Descriptor) -> Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(descriptor.size() as usize);
        self.read_checked(image, descriptor, |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })
        .await?;
        Ok(bytes)
    }

    /// Streams a blob from containerd into `take`, chunk by chunk, checking its length and
    /// digest against `descriptor` on the way.
    async fn read_checked(
        &self,
        image: &str,
        descriptor: &Descriptor,
        mut take: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let digest = descriptor.digest().to_string();
        let request = self.request(ReadContentRequest {
            digest: digest.clone(),
            offset: 0,
            size: 0,
        })?;
        let mut stream = ContentClient::new(self.channel.clone())
            .read(request)
            .await
            .map_err(|status| api_error("read blob", &digest, status))?
            .into_inner();
        let mut check = StreamingCheck::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|status| api_error("read blob", &digest, status))?
        {
            check.update(&chunk.data);
            if check.length > descriptor.size() {
                break;
            }
            take(&chunk.data)?;
        }
        check
            .verify(&digest, descriptor.size())
            .map_err(|reason| Error::ImageLayout {
                image: image.to_string(),
                reason,
            })
    }
}

fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex)
        || media_type.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn is_manifest(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageManifest)
        || media_type.to_string() == "application/vnd.docker.distribution.manifest.v2+json"
}

/// A blob's length and sha256 taken as it streams by.
struct StreamingCheck {
    hasher: Sha256,
    length: u64,
}

impl StreamingCheck {
    fn new() -> Self {
        StreamingCheck {
            hasher: Sha256::new(),
            length: 0,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.length += bytes.len() as u64;
    }

    /// Compares what went by with the descriptor.
    fn verify(self, digest: &str, size: u64) -> std::result::Result<(), String> {
        let Some(expected) = digest.strip_prefix("sha256:") else {
            return Err(format!("unsupported digest algorithm in {digest}"));
        };
        if self.length != size {
            return Err(format!(
                "blob {digest} is {} bytes, its descriptor says {size}",
                self.length
            ));
        }
        let actual = wasm_image::hex(&self.hasher.finalize());
        if actual != expected {
            return Err(format!(
                "blob {digest} does not match its digest (content hashes to sha256:{actual})"
            ));
        }
        Ok(())
    }
}

fn choose_manifest(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let arch = |d: &Descriptor| d.platform().as_ref().map(|p| p.architecture().clone());
    let os = |d: &Descriptor| d.platform().as_ref().map(|p| p.os().clone());
    manifests
        .iter()
        .find(|d| arch(d) == Some(Arch::Wasm))
        .or_else(|| {
            manifests
                .iter()
                .find(|d| os(d) == Some(Os::Linux) && arch(d) == Some(Arch::default()))
        })
        .or_else(|| manifests.first())
}

fn api_error(what: &'static str, subject: &str, status: containerd_client::tonic::Status) -> Error {
    if status.code() == containerd_client::tonic::Code::NotFound {
        return Error::ImageLayout {
            image: subject.to_string(),
            reason: format!("containerd cannot {what}: {}", status.message()),
        };
    }
    Error::ContentStore {
        what,
        subject: subject.to_string(),
        reason: status.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks length and sha256 of a blob against its descriptor.
    fn verify_blob(bytes: &[u8], digest: &str, size: u64) -> std::result::Result<(), String> {
        let mut check = StreamingCheck::new();
        check.update(bytes);
        check.verify(digest, size)
    }
    use oci_spec::image::{DescriptorBuilder, PlatformBuilder};

    fn descriptor(arch: Arch, os: Os) -> Descriptor {
        DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .size(1u64)
            .digest(
                "sha256:0000000000000000000000000000000000000000000000000000000000000000"
                    .parse::<oci_spec::image::Digest>()
                    .unwrap(),
            )
            .platform(
                PlatformBuilder::default()
                    .architecture(arch)
                    .os(os)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn wasm_platform_wins_then_the_node() {
        let linux = descriptor(Arch::default(), Os::Linux);
        let arm = descriptor(Arch::ARM64, Os::Linux);
        let wasm = descriptor(Arch::Wasm, Os::Other("wasip1".into()));
        let list = [arm.clone(), linux.clone(), wasm.clone()];
        assert_eq!(choose_manifest(&list), Some(&wasm));
        let list = [arm.clone(), linux.clone()];
        assert_eq!(choose_manifest(&list), Some(&linux));
        assert_eq!(choose_manifest(std::slice::from_ref(&arm)), Some(&arm));
        assert_eq!(choose_manifest(&[]), None);
    }

    #[test]
    fn blobs_are_checked_against_size_and_digest() {
        let digest = wasm_image::sha256_digest(b"abc");
        assert!(verify_blob(b"abc", &digest, 3).is_ok());
        assert!(verify_blob(b"abc", &digest, 4).unwrap_err().contains("4"));
        assert!(verify_blob(b"abd", &digest, 3)
            .unwrap_err()
            .contains("does not match"));
        assert!(verify_blob(b"abc", "sha512:00", 3)
            .unwrap_err()
            .contains("unsupported"));
    }

    #[test]
    fn the_four_wasm_media_types_are_recognised() {
        for media_type in WASM_LAYER_MEDIA_TYPES {
            assert!(is_wasm_layer(&MediaType::from(media_type)), "{media_type}");
        }
        assert!(!is_wasm_layer(&MediaType::ImageLayer));
        assert!(!is_wasm_layer(&MediaType::ImageLayerGzip));
    }
}
