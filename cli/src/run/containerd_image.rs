//! An image from containerd's content store, by name: what `ctr images pull` or the kubelet
//! left on this machine, read over containerd's socket into an [`OciArchive`].

use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetImageRequest, ReadContentRequest};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

use super::RunError;
use crate::oci_archive::OciArchive;

/// Manifests and indexes are small; a bigger one is not one.
const MAX_MANIFEST_BYTES: i64 = 4 << 20;

pub async fn fetch(socket: &Path, namespace: &str, name: &str) -> Result<OciArchive, RunError> {
    let unreachable = |reason: String| RunError::Containerd {
        socket: socket.to_path_buf(),
        reason,
    };
    let channel = containerd_client::connect(socket)
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    let store = Store {
        channel,
        namespace,
        name,
    };
    let image = ImagesClient::new(store.channel.clone())
        .get(store.request(GetImageRequest {
            name: name.to_string(),
        })?)
        .await
        .map_err(|status| match status.code() {
            Code::NotFound => RunError::NoSuchImage {
                name: name.to_string(),
                namespace: namespace.to_string(),
            },
            _ => unreachable(status.message().to_string()),
        })?
        .into_inner();
    let target = image
        .image
        .and_then(|image| image.target)
        .ok_or_else(|| store.invalid("containerd has no target descriptor for it".into()))?;
    let top = Descriptor::new(
        MediaType::from(target.media_type.as_str()),
        u64::try_from(target.size).unwrap_or_default(),
        target
            .digest
            .parse::<oci_spec::image::Digest>()
            .map_err(|_| store.invalid(format!("malformed digest {:?}", target.digest)))?,
    );
    let mut blobs = HashMap::new();
    store.gather(&top, &mut blobs, 0).await?;
    OciArchive::from_blobs(format!("{namespace}/{name}"), blobs, top).map_err(RunError::from)
}

struct Store<'a> {
    channel: Channel,
    namespace: &'a str,
    name: &'a str,
}

impl Store<'_> {
    fn request<T>(&self, message: T) -> Result<Request<T>, RunError> {
        let mut request = Request::new(message);
        let namespace = self
            .namespace
            .parse()
            .map_err(|_| self.invalid(format!("namespace {:?} is not valid", self.namespace)))?;
        request
            .metadata_mut()
            .insert("containerd-namespace", namespace);
        Ok(request)
    }

    fn invalid(&self, reason: String) -> RunError {
        RunError::Image {
            image: self.name.to_string(),
            reason,
        }
    }

    /// Reads `descriptor`'s blob and everything under it that this machine holds: an index's
    /// manifests for other platforms are usually not pulled, and are skipped.
    async fn gather(
        &self,
        descriptor: &Descriptor,
        blobs: &mut HashMap<String, Vec<u8>>,
        depth: usize,
    ) -> Result<(), RunError> {
        let digest = descriptor.digest().to_string();
        let is_index = *descriptor.media_type() == MediaType::ImageIndex;
        let is_manifest = *descriptor.media_type() == MediaType::ImageManifest;
        if (is_index || is_manifest) && descriptor.size() as i64 > MAX_MANIFEST_BYTES {
            return Err(self.invalid(format!("{digest} is too big for a manifest")));
        }
        let bytes = self.read(&digest).await?;
        if is_index && depth < 2 {
            let index = ImageIndex::from_reader(&bytes[..])
                .map_err(|err| self.invalid(format!("index {digest}: {err}")))?;
            for child in index.manifests() {
                match Box::pin(self.gather(child, blobs, depth + 1)).await {
                    Err(RunError::MissingBlob { .. }) => continue,
                    other => other?,
                }
            }
        } else if is_manifest {
            let manifest = ImageManifest::from_reader(&bytes[..])
                .map_err(|err| self.invalid(format!("manifest {digest}: {err}")))?;
            for blob in std::iter::once(manifest.config()).chain(manifest.layers()) {
                let blob_digest = blob.digest().to_string();
                let content = self.read(&blob_digest).await?;
                blobs.insert(blob_digest, content);
            }
        }
        blobs.insert(digest, bytes);
        Ok(())
    }

    async fn read(&self, digest: &str) -> Result<Vec<u8>, RunError> {
        let request = self.request(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })?;
        let missing = |_| RunError::MissingBlob {
            image: self.name.to_string(),
            digest: digest.to_string(),
        };
        let mut stream = ContentClient::new(self.channel.clone())
            .read(request)
            .await
            .map_err(missing)?
            .into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(missing)? {
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }
}
