//! `wedge image push`: uploads an OCI layout archive (as `wedge image build` writes it, in
//! any form) to a registry: blobs first, then manifests bottom-up, the top one under the tag.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot read archive {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("archive {path} is not an OCI image layout: {reason}")]
    Layout { path: PathBuf, reason: String },
    #[error("invalid registry reference {0:?}: {1}")]
    Reference(String, String),
    #[error("registry refused {what}: {reason}")]
    Registry { what: String, reason: String },
}

/// What was pushed.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: String,
    pub digest: String,
    pub blobs: usize,
}

/// Registries on the loopback interface are spoken to in plain HTTP, as a local test
/// registry is; others need TLS unless `plain_http` says otherwise.
pub fn uses_plain_http(registry: &str, plain_http: bool) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map(|(host, _)| host)
        .unwrap_or(registry);
    plain_http || matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

pub async fn push_archive(
    archive: &Path,
    target: &str,
    plain_http: bool,
) -> Result<Pushed, PushError> {
    let layout = Layout::read(archive)?;
    let reference: Reference = target.parse().map_err(|err: oci_client::ParseError| {
        PushError::Reference(target.into(), err.to_string())
    })?;
    let protocol = if uses_plain_http(reference.registry(), plain_http) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    client
        .auth(
            &reference,
            &RegistryAuth::Anonymous,
            RegistryOperation::Push,
        )
        .await
        .map_err(|err| PushError::Registry {
            what: format!("authentication for {reference}"),
            reason: err.to_string(),
        })?;
    let mut pusher = Pusher {
        client,
        reference,
        layout: &layout,
        blobs: 0,
    };
    let top = layout.top.clone();
    let digest = pusher.push_node(&top, true).await?;
    Ok(Pushed {
        reference: pusher.reference.whole(),
        digest,
        blobs: pusher.blobs,
    })
}

/// The blobs of an OCI layout archive and its top descriptor.
struct Layout {
    path: PathBuf,
    blobs: HashMap<String, Vec<u8>>,
    top: Descriptor,
}

impl Layout {
    fn read(path: &Path) -> Result<Self, PushError> {
        let read_error = |source| PushError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut archive = tar::Archive::new(file);
        let mut blobs = HashMap::new();
        let mut index = None;
        for entry in archive.entries().map_err(read_error)? {
            let mut entry = entry.map_err(read_error)?;
            let name = entry.path().map_err(read_error)?.display().to_string();
            let name = name.trim_start_matches("./").to_string();
            let mut bytes = Vec::new();
            if name == "index.json" || name.starts_with("blobs/sha256/") {
                entry.read_to_end(&mut bytes).map_err(read_error)?;
            }
            if name == "index.json" {
                index = Some(bytes);
            } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                if !hex.is_empty() {
                    blobs.insert(format!("sha256:{hex}"), bytes);
                }
            }
        }
        let layout_error = |reason: String| PushError::Layout {
            path: path.to_path_buf(),
            reason,
        };
        let index = index.ok_or_else(|| layout_error("no index.json".into()))?;
        let index = ImageIndex::from_reader(&index[..])
            .map_err(|err| layout_error(format!("index.json: {err}")))?;
        let top = match index.manifests()[..] {
            [ref top] => top.clone(),
            ref all => {
                return Err(layout_error(format!(
                    "index.json names {} images; push needs exactly one",
                    all.len()
                )))
            }
        };
        Ok(Layout {
            path: path.to_path_buf(),
            blobs,
            top,
        })
    }

    fn blob(&self, digest: &str) -> Result<&[u8], PushError> {
        self.blobs
            .get(digest)
            .map(Vec::as_slice)
            .ok_or_else(|| PushError::Layout {
                path: self.path.clone(),
                reason: format!("blob {digest} is missing"),
            })
    }
}

struct Pusher<'a> {
    client: Client,
    reference: Reference,
    layout: &'a Layout,
    blobs: usize,
}

impl Pusher<'_> {
    /// Pushes what `descriptor` points to and everything below it; the top goes under the
    /// tag, the rest by digest. Returns the digest.
    async fn push_node(&mut self, descriptor: &Descriptor, top: bool) -> Result<String, PushError> {
        let digest = descriptor.digest().to_string();
        let bytes = self.layout.blob(&digest)?.to_vec();
        let malformed = |what: &str, err: &dyn std::fmt::Display| PushError::Layout {
            path: self.layout.path.clone(),
            reason: format!("{what} {digest}: {err}"),
        };
        match descriptor.media_type() {
            MediaType::ImageIndex => {
                let index =
                    ImageIndex::from_reader(&bytes[..]).map_err(|err| malformed("index", &err))?;
                for child in index.manifests() {
                    Box::pin(self.push_node(child, false)).await?;
                }
            }
            MediaType::ImageManifest => {
                let manifest = ImageManifest::from_reader(&bytes[..])
                    .map_err(|err| malformed("manifest", &err))?;
                self.push_blob(manifest.config()).await?;
                for layer in manifest.layers() {
                    self.push_blob(layer).await?;
                }
            }
            other => {
                return Err(malformed("unsupported top media type", &other));
            }
        }
        let target = if top {
            self.reference.clone()
        } else {
            Reference::with_digest(
                self.reference.registry().to_string(),
                self.reference.repository().to_string(),
                digest.clone(),
            )
        };
        let content_type = http::HeaderValue::from_str(descriptor.media_type().as_ref())
            .map_err(|err| malformed("media type of", &err))?;
        self.client
            .push_manifest_raw(&target, bytes, content_type)
            .await
            .map_err(|err| PushError::Registry {
                what: format!("manifest {digest}"),
                reason: err.to_string(),
            })?;
        Ok(digest)
    }

    async fn push_blob(&mut self, descriptor: &Descriptor) -> Result<(), PushError> {
        let digest = descriptor.digest().to_string();
        let bytes = self.layout.blob(&digest)?.to_vec();
        self.client
            .push_blob(&self.reference, bytes, &digest)
            .await
            .map_err(|err| PushError::Registry {
                what: format!("blob {digest}"),
                reason: err.to_string(),
            })?;
        self.blobs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_use_plain_http() {
        assert!(uses_plain_http("127.0.0.1:5000", false));
        assert!(uses_plain_http("localhost:5000", false));
        assert!(uses_plain_http("localhost", false));
        assert!(!uses_plain_http("ghcr.io", false));
        assert!(uses_plain_http("ghcr.io", true));
    }

    #[test]
    fn archives_without_a_single_image_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tar");
        std::fs::write(&path, b"not a tar").unwrap();
        assert!(Layout::read(&path).is_err());
    }
}
