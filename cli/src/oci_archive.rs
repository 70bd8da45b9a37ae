//! An OCI image held as its blobs: read from an OCI layout archive (as `wedge image build`
//! writes it) or gathered from containerd's content store. Every blob is checked against its
//! digest on the way in; an image is hostile until its bytes match what names them.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read archive {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is a WebAssembly binary, not an image archive: pack it first with \
         `wedge image build {path} --tag NAME:TAG`, then use the .tar it writes"
    )]
    WasmNotArchive { path: PathBuf },
    #[error(
        "{path} is not a tar archive (an OCI image layout, as `wedge image build` writes): \
         {reason}"
    )]
    NotTar { path: PathBuf, reason: String },
    #[error("{origin} is not a usable OCI image: {reason}")]
    Layout { origin: String, reason: String },
}

/// The blobs of one image, by digest, and the descriptor at its top.
pub struct OciArchive {
    /// The archive's path or the image's name, for messages.
    pub origin: String,
    blobs: HashMap<String, Vec<u8>>,
    pub top: Descriptor,
}

impl OciArchive {
    /// Reads an OCI layout archive whose `index.json` names exactly one image.
    pub fn read(path: &Path) -> Result<Self, ArchiveError> {
        let read_error = |source| ArchiveError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        let mut magic = [0u8; 4];
        let magic_len = file.read(&mut magic).map_err(read_error)?;
        if magic[..magic_len] == *b"\0asm" {
            return Err(ArchiveError::WasmNotArchive {
                path: path.to_path_buf(),
            });
        }
        let file = std::fs::File::open(path).map_err(read_error)?;
        let not_tar = |err: std::io::Error| ArchiveError::NotTar {
            path: path.to_path_buf(),
            reason: err.to_string(),
        };
        let origin = path.display().to_string();
        let mut archive = tar::Archive::new(file);
        let mut blobs = HashMap::new();
        let mut index = None;
        for entry in archive.entries().map_err(not_tar)? {
            let mut entry = entry.map_err(not_tar)?;
            let name = entry.path().map_err(not_tar)?.display().to_string();
            let name = name.trim_start_matches("./").to_string();
            let mut bytes = Vec::new();
            if name == "index.json" || name.starts_with("blobs/sha256/") {
                entry.read_to_end(&mut bytes).map_err(not_tar)?;
            }
            if name == "index.json" {
                index = Some(bytes);
            } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                if !hex.is_empty() {
                    let digest = format!("sha256:{hex}");
                    check_digest(&origin, &digest, &bytes)?;
                    blobs.insert(digest, bytes);
                }
            }
        }
        let layout_error = |reason: String| ArchiveError::Layout {
            origin: origin.clone(),
            reason,
        };
        let index = index.ok_or_else(|| layout_error("no index.json".into()))?;
        let index = ImageIndex::from_reader(&index[..])
            .map_err(|err| layout_error(format!("index.json: {err}")))?;
        let top = match index.manifests()[..] {
            [ref top] => top.clone(),
            ref all => {
                return Err(layout_error(format!(
                    "index.json names {} images; exactly one is needed",
                    all.len()
                )))
            }
        };
        Ok(OciArchive { origin, blobs, top })
    }

    /// An image from blobs fetched elsewhere; each is checked against its digest.
    pub fn from_blobs(
        origin: String,
        blobs: HashMap<String, Vec<u8>>,
        top: Descriptor,
    ) -> Result<Self, ArchiveError> {
        for (digest, bytes) in &blobs {
            check_digest(&origin, digest, bytes)?;
        }
        Ok(OciArchive { origin, blobs, top })
    }

    pub fn blob(&self, digest: &str) -> Result<&[u8], ArchiveError> {
        self.blobs
            .get(digest)
            .map(Vec::as_slice)
            .ok_or_else(|| ArchiveError::Layout {
                origin: self.origin.clone(),
                reason: format!("blob {digest} is missing"),
            })
    }
}

fn check_digest(origin: &str, digest: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
    let actual = format!("sha256:{:x}", Sha256::digest(bytes));
    if actual != digest {
        return Err(ArchiveError::Layout {
            origin: origin.to_string(),
            reason: format!("blob {digest} holds content of digest {actual}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wasm_binary_is_not_taken_for_an_archive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello.wasm");
        std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
        let err = OciArchive::read(&path).err().unwrap();
        assert!(matches!(err, ArchiveError::WasmNotArchive { .. }), "{err}");
        assert!(err.to_string().contains("wedge image build"), "{err}");
    }

    #[test]
    fn a_file_that_is_no_tar_is_named_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tar");
        std::fs::write(&path, b"not a tar").unwrap();
        let err = OciArchive::read(&path).err().unwrap();
        assert!(matches!(err, ArchiveError::NotTar { .. }), "{err}");
    }

    #[test]
    fn a_blob_that_is_not_what_its_digest_says_is_refused() {
        let digest = format!("sha256:{:x}", Sha256::digest(b"config"));
        let descriptor = Descriptor::new(
            oci_spec::image::MediaType::ImageConfig,
            6,
            digest.parse::<oci_spec::image::Digest>().unwrap(),
        );
        let blobs = HashMap::from([(digest, b"tampered".to_vec())]);
        let err = OciArchive::from_blobs("x".into(), blobs, descriptor)
            .err()
            .unwrap();
        assert!(err.to_string().contains("holds content of digest"), "{err}");
    }
}
