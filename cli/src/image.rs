//! Writes container images as OCI image-layout tar archives, the format
//! `ctr images import` reads.
//!
//! The root-filesystem form is one uncompressed layer holding the given files. Its index
//! names one image for several platforms: a wasm module runs on any of them, and each
//! importer unpacks the one that matches its node. (Images whose layer *is* the module are
//! `module_image`'s.)

use std::collections::HashMap;
use std::io::Write;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};

/// containerd reads the image name from this index annotation on import.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for the image's tag.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {0:?}: expected NAME[:TAG]")]
    InvalidReference(String),
    #[error("invalid platform {0:?}: expected OS/ARCH, e.g. linux/amd64")]
    InvalidPlatform(String),
    #[error("invalid path in image {0:?}: must be absolute, without '..'")]
    InvalidPath(String),
    #[error("cannot build OCI metadata: {0}")]
    Metadata(#[from] oci_spec::OciSpecError),
    #[error("cannot encode OCI metadata: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot read the component's interface: {0}")]
    Wasm(String),
    #[error(
        "the wasm artifact form carries the module alone: files beside it need the layer form"
    )]
    FilesInArtifact,
    #[error("cannot write the image archive: {0}")]
    Io(#[from] std::io::Error),
}

/// A file placed in the image's single layer.
#[derive(Debug, Clone)]
pub struct LayerFile {
    /// Absolute path inside the image.
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

impl std::str::FromStr for Platform {
    type Err = ImageError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((os, arch)) if !os.is_empty() && !arch.is_empty() && !arch.contains('/') => {
                Ok(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                })
            }
            _ => Err(ImageError::InvalidPlatform(text.to_string())),
        }
    }
}

/// The platforms a plain wasm image is published for by default.
pub fn default_platforms() -> Vec<Platform> {
    ["linux/amd64", "linux/arm64"]
        .iter()
        .filter_map(|text| text.parse().ok())
        .collect()
}

#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// `NAME[:TAG]`; a missing tag means `latest`.
    pub reference: String,
    pub files: Vec<LayerFile>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub platforms: Vec<Platform>,
}

/// What was written, for the caller to report.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub reference: String,
    pub index_digest: String,
    pub layer_digest: String,
}

/// `NAME[:TAG]` as container tools resolve it, with registry and tag made explicit:
/// `hello:v1` is `docker.io/library/hello:v1`, the name kubelet and containerd look the image
/// up by. A digest is refused: a build names what it makes by tag.
pub fn normalize_reference(reference: &str) -> Result<(String, String), ImageError> {
    let invalid = || ImageError::InvalidReference(reference.to_string());
    let parsed: oci_client::Reference = reference.parse().map_err(|_| invalid())?;
    if parsed.digest().is_some() {
        return Err(invalid());
    }
    let tag = parsed.tag().unwrap_or("latest").to_string();
    Ok((
        format!("{}/{}:{tag}", parsed.registry(), parsed.repository()),
        tag,
    ))
}

/// An image as a set of blobs and the descriptor of its top (an index or a manifest), ready
/// to be written as an OCI layout or pushed to a registry.
pub struct ImageContent {
    /// `NAME:TAG`, tag explicit.
    pub reference: String,
    pub tag: String,
    pub blobs: Blobs,
    pub top: Descriptor,
    /// The layer that carries the program (the rootfs tar, or the module itself).
    pub layer_digest: String,
}

/// Writes `spec` (the root-filesystem form) as an OCI image-layout tar archive to `out`.
pub fn write_oci_archive(spec: &ImageSpec, out: impl Write) -> Result<BuiltImage, ImageError> {
    write_layout(&rootfs_image(spec)?, out)
}

/// The root-filesystem form: the files in one tar layer, one manifest per platform, all
/// under an image index.
pub fn rootfs_image(spec: &ImageSpec) -> Result<ImageContent, ImageError> {
    rootfs_image_from_layer(spec, layer_tar(&spec.files)?)
}

/// The root-filesystem form around an uncompressed tar `layer` made elsewhere (`spec.files`
/// is not used): for layers with entries the builder does not write, such as special files.
pub fn rootfs_image_from_layer(
    spec: &ImageSpec,
    layer: Vec<u8>,
) -> Result<ImageContent, ImageError> {
    let (reference, tag) = normalize_reference(&spec.reference)?;
    let mut blobs = Blobs::default();

    let layer_digest = blobs.add(layer);
    let layer_descriptor = blobs.descriptor(MediaType::ImageLayer, &layer_digest)?;

    let mut manifests = Vec::new();
    for platform in &spec.platforms {
        let config = ImageConfigurationBuilder::default()
            .architecture(Arch::from(platform.architecture.as_str()))
            .os(Os::from(platform.os.as_str()))
            .config(process_config(
                &spec.entrypoint,
                &spec.cmd,
                &spec.env,
                &spec.workdir,
            )?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    // The layer is not compressed, so its diff id is its digest.
                    .diff_ids(vec![format!("sha256:{layer_digest}")])
                    .build()?,
            )
            .build()?;
        let config_digest = blobs.add(serde_json::to_vec(&config)?);
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(blobs.descriptor(MediaType::ImageConfig, &config_digest)?)
            .layers(vec![layer_descriptor.clone()])
            .build()?;
        let manifest_digest = blobs.add(serde_json::to_vec(&manifest)?);
        let mut manifest_descriptor =
            blobs.descriptor(MediaType::ImageManifest, &manifest_digest)?;
        manifest_descriptor.set_platform(Some(
            PlatformBuilder::default()
                .os(Os::from(platform.os.as_str()))
                .architecture(Arch::from(platform.architecture.as_str()))
                .build()?,
        ));
        manifests.push(manifest_descriptor);
    }

    let image_index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()?;
    let image_index_digest = blobs.add(serde_json::to_vec(&image_index)?);
    let top = blobs.descriptor(MediaType::ImageIndex, &image_index_digest)?;
    Ok(ImageContent {
        reference,
        tag,
        blobs,
        top,
        layer_digest: format!("sha256:{layer_digest}"),
    })
}

/// The OCI image config's process part: what containerd turns into `process.args` etc.
pub fn process_config(
    entrypoint: &[String],
    cmd: &[String],
    env: &[String],
    workdir: &Option<String>,
) -> Result<oci_spec::image::Config, ImageError> {
    Ok(ConfigBuilder::default()
        .entrypoint(entrypoint.to_vec())
        .cmd(cmd.to_vec())
        .env(env.to_vec())
        .working_dir(workdir.clone().unwrap_or_else(|| "/".into()))
        .build()?)
}

/// Writes `content` as an OCI image-layout tar archive: `index.json` names the top
/// descriptor with the annotations `ctr images import` reads the image name from.
pub fn write_layout(content: &ImageContent, out: impl Write) -> Result<BuiltImage, ImageError> {
    let mut named = content.top.clone();
    named.set_annotations(Some(HashMap::from([
        (CONTAINERD_IMAGE_NAME.to_string(), content.reference.clone()),
        (OCI_REF_NAME.to_string(), content.tag.clone()),
    ])));
    let layout_index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![named])
        .build()?;

    let mut archive = tar::Builder::new(out);
    append(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    append(
        &mut archive,
        "index.json",
        &serde_json::to_vec(&layout_index)?,
        0o644,
    )?;
    append_dir(&mut archive, "blobs/")?;
    append_dir(&mut archive, "blobs/sha256/")?;
    for (hex, bytes) in &content.blobs.0 {
        append(&mut archive, &format!("blobs/sha256/{hex}"), bytes, 0o644)?;
    }
    archive.into_inner()?.flush()?;

    Ok(BuiltImage {
        reference: content.reference.clone(),
        index_digest: content.top.digest().to_string(),
        layer_digest: content.layer_digest.clone(),
    })
}

/// Content-addressed blobs, kept in insertion order for a reproducible archive.
#[derive(Default)]
pub struct Blobs(Vec<(String, Vec<u8>)>);

impl Blobs {
    /// Stores `bytes` and returns their sha256 in hex.
    pub fn add(&mut self, bytes: Vec<u8>) -> String {
        let hex = sha256_hex(&bytes);
        if !self.0.iter().any(|(existing, _)| *existing == hex) {
            self.0.push((hex.clone(), bytes));
        }
        hex
    }

    pub fn get(&self, hex: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(existing, _)| existing == hex)
            .map(|(_, bytes)| bytes.as_slice())
    }

    /// A descriptor of a stored blob.
    pub fn descriptor(&self, media_type: MediaType, hex: &str) -> Result<Descriptor, ImageError> {
        let size = self
            .get(hex)
            .map(|bytes| bytes.len() as u64)
            .unwrap_or_default();
        descriptor(media_type, hex, size)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.0
            .iter()
            .map(|(hex, bytes)| (hex.as_str(), bytes.as_slice()))
    }
}

pub use wedge_runtime_config::wasm_image::sha256_hex;

fn descriptor(media_type: MediaType, hex: &str, size: u64) -> Result<Descriptor, ImageError> {
    let digest: Digest = format!("sha256:{hex}").parse()?;
    Ok(DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(size)
        .build()?)
}

/// The layer: parent directories first, then the files, all owned by root, timestamps zeroed
/// so the same inputs give the same digest.
pub(crate) fn layer_tar(files: &[LayerFile]) -> Result<Vec<u8>, ImageError> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for file in files {
        let relative = checked_relative(&file.path)?;
        let mut parent = String::new();
        let parents = relative.rsplit_once('/').map(|(dirs, _)| dirs);
        for component in parents.into_iter().flat_map(|dirs| dirs.split('/')) {
            parent.push_str(component);
            parent.push('/');
            if !dirs.contains(&parent) {
                dirs.push(parent.clone());
                append_dir(&mut layer, &parent)?;
            }
        }
        append(&mut layer, relative, &file.contents, file.mode)?;
    }
    Ok(layer.into_inner()?)
}

fn checked_relative(path: &str) -> Result<&str, ImageError> {
    let invalid = || ImageError::InvalidPath(path.to_string());
    let relative = path.strip_prefix('/').ok_or_else(invalid)?;
    if relative.is_empty()
        || relative
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(invalid());
    }
    Ok(relative)
}

/// A layer entry's header, owned by root with a zero timestamp: the same inputs give the
/// same digest.
pub fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn append<W: Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(), ImageError> {
    let mut header = header(tar::EntryType::Regular, bytes.len() as u64, mode);
    archive.append_data(&mut header, path, bytes)?;
    Ok(())
}

fn append_dir<W: Write>(archive: &mut tar::Builder<W>, path: &str) -> Result<(), ImageError> {
    let mut header = header(tar::EntryType::Directory, 0, 0o755);
    archive.append_data(&mut header, path, std::io::empty())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_archive(bytes: &[u8]) -> HashMap<String, Vec<u8>> {
        let mut archive = tar::Archive::new(bytes);
        let mut entries = HashMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mut contents = Vec::new();
            entry.read_to_end(&mut contents).unwrap();
            entries.insert(path, contents);
        }
        entries
    }

    fn blob(entries: &HashMap<String, Vec<u8>>, digest: &str) -> serde_json::Value {
        let hex = digest.trim_start_matches("sha256:");
        serde_json::from_slice(&entries[&format!("blobs/sha256/{hex}")]).unwrap()
    }

    fn spec() -> ImageSpec {
        ImageSpec {
            reference: "example.com/demo/hello".into(),
            files: vec![LayerFile {
                path: "/app/hello.wasm".into(),
                contents: b"\0asm\x01\0\0\0".to_vec(),
                mode: 0o755,
            }],
            entrypoint: vec!["/app/hello.wasm".into()],
            cmd: vec![],
            env: vec!["PATH=/".into()],
            workdir: None,
            platforms: default_platforms(),
        }
    }

    #[test]
    fn archive_is_a_named_multi_platform_oci_layout() {
        let mut out = Vec::new();
        let built = write_oci_archive(&spec(), &mut out).unwrap();
        assert_eq!(built.reference, "example.com/demo/hello:latest");
        let entries = read_archive(&out);
        assert!(entries.contains_key("oci-layout"));

        let index: serde_json::Value = serde_json::from_slice(&entries["index.json"]).unwrap();
        let named = &index["manifests"][0];
        assert_eq!(
            named["annotations"][CONTAINERD_IMAGE_NAME],
            "example.com/demo/hello:latest"
        );
        assert_eq!(named["annotations"][OCI_REF_NAME], "latest");

        let platforms = blob(&entries, named["digest"].as_str().unwrap());
        let manifests = platforms["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 2);
        for descriptor in manifests {
            let manifest = blob(&entries, descriptor["digest"].as_str().unwrap());
            let config = blob(&entries, manifest["config"]["digest"].as_str().unwrap());
            assert_eq!(config["os"], "linux");
            assert_eq!(
                config["architecture"],
                descriptor["platform"]["architecture"]
            );
            assert_eq!(config["config"]["Entrypoint"][0], "/app/hello.wasm");
            assert_eq!(config["rootfs"]["diff_ids"][0], built.layer_digest.as_str());
            assert_eq!(manifest["layers"][0]["digest"], built.layer_digest.as_str());
        }

        let layer = read_archive(&blob_bytes(&entries, &built.layer_digest));
        assert_eq!(layer["app/hello.wasm"], b"\0asm\x01\0\0\0");
        assert!(layer.contains_key("app/"));
    }

    fn blob_bytes(entries: &HashMap<String, Vec<u8>>, digest: &str) -> Vec<u8> {
        entries[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))].clone()
    }

    #[test]
    fn same_inputs_same_digest() {
        let first = write_oci_archive(&spec(), Vec::new()).unwrap();
        let second = write_oci_archive(&spec(), Vec::new()).unwrap();
        assert_eq!(first.index_digest, second.index_digest);
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(normalize_reference("has space").is_err());
        assert!(normalize_reference("name:").is_err());
        assert!(normalize_reference("Upper/Case:v1").is_err());
        assert!(normalize_reference(&format!("x@sha256:{}", "0".repeat(64))).is_err());
        assert_eq!(
            normalize_reference("localhost:5000/x").unwrap().0,
            "localhost:5000/x:latest"
        );
        assert_eq!(normalize_reference("x:v1").unwrap().1, "v1");
        // As kubelet and containerd name images.
        assert_eq!(
            normalize_reference("hello:v1").unwrap().0,
            "docker.io/library/hello:v1"
        );
        assert_eq!(
            normalize_reference("demo/hello").unwrap().0,
            "docker.io/demo/hello:latest"
        );
        assert_eq!(
            normalize_reference("wedge.test/x:latest").unwrap().0,
            "wedge.test/x:latest"
        );
        assert!("linux".parse::<Platform>().is_err());
        let mut escaping = spec();
        escaping.files[0].path = "/../etc/passwd".into();
        assert!(matches!(
            write_oci_archive(&escaping, Vec::new()),
            Err(ImageError::InvalidPath(_))
        ));
    }
}
