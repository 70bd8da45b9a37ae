//! Test images, built the way a user builds them: with `wedge image build`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use wedge_cli::image::{write_oci_archive, ImageSpec, LayerFile};
use wedge_cli::installer_image::host_platform;

use crate::binaries;

/// Writes `module` to `work/<name>.wasm`, packs it with `wedge image build` as image
/// `wedge.test/<name>:latest`, and returns the archive path and the image reference.
pub fn wasm_image(work: &Path, name: &str, module: &[u8]) -> Result<(PathBuf, String)> {
    built_image(work, name, module, &[])
}

/// Like [`wasm_image`], with extra `wedge image build` options (`--format layer`,
/// `--artifact`, `--layer-media-type T`, `--arg`, ...).
pub fn built_image(
    work: &Path,
    name: &str,
    module: &[u8],
    options: &[&str],
) -> Result<(PathBuf, String)> {
    let module_file = work.join(format!("{name}.wasm"));
    std::fs::write(&module_file, module)?;
    let archive = work.join(format!("{name}.tar"));
    let reference = format!("wedge.test/{name}:latest");
    let out = Command::new(binaries::path(binaries::CLI)?)
        .args(["image", "build", "--tag", &reference, "--output"])
        .arg(&archive)
        .args(options)
        .arg(&module_file)
        .output()?;
    ensure!(
        out.status.success(),
        "wedge image build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((archive, reference))
}

/// `wedge image push ARCHIVE REFERENCE`.
pub fn push(archive: &Path, reference: &str) -> Result<()> {
    let out = Command::new(binaries::path(binaries::CLI)?)
        .args(["image", "push"])
        .arg(archive)
        .arg(reference)
        .output()?;
    ensure!(
        out.status.success(),
        "wedge image push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// An image whose manifest has two wasm layers, which Wedge refuses to guess between.
pub fn two_layer_image(
    work: &Path,
    name: &str,
    first: &[u8],
    second: &[u8],
) -> Result<(PathBuf, String)> {
    use oci_spec::image::{ImageManifestBuilder, MediaType};
    use wedge_cli::image::{write_layout, Blobs, ImageContent};
    use wedge_cli::module_image::{module_image, ModuleForm, ModuleImageSpec, MODULE_LAYER};

    let reference = format!("wedge.test/{name}:latest");
    let single = module_image(&ModuleImageSpec {
        reference: reference.clone(),
        module: first.to_vec(),
        form: ModuleForm::Layer(None),
        entrypoint: vec!["/first.wasm".into()],
        cmd: vec![],
        env: vec![],
        workdir: None,
        files: vec![],
    })?;
    let manifest: serde_json::Value = serde_json::from_slice(
        single
            .blobs
            .get(
                single
                    .top
                    .digest()
                    .to_string()
                    .trim_start_matches("sha256:"),
            )
            .context("manifest blob")?,
    )?;
    let mut blobs = Blobs::default();
    let config_hex = manifest["config"]["digest"]
        .as_str()
        .context("config digest")?
        .trim_start_matches("sha256:")
        .to_string();
    blobs.add(
        single
            .blobs
            .get(&config_hex)
            .context("config blob")?
            .to_vec(),
    );
    let first_hex = blobs.add(first.to_vec());
    let second_hex = blobs.add(second.to_vec());
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(blobs.descriptor(MediaType::ImageConfig, &config_hex)?)
        .layers(vec![
            blobs.descriptor(MediaType::from(MODULE_LAYER), &first_hex)?,
            blobs.descriptor(MediaType::from(MODULE_LAYER), &second_hex)?,
        ])
        .build()?;
    let manifest_hex = blobs.add(serde_json::to_vec(&manifest)?);
    let top = blobs.descriptor(MediaType::ImageManifest, &manifest_hex)?;
    let content = ImageContent {
        reference: reference.clone(),
        tag: "latest".into(),
        blobs,
        top,
        layer_digest: format!("sha256:{first_hex}"),
    };
    let archive = work.join(format!("{name}.tar"));
    write_layout(&content, std::fs::File::create(&archive)?)?;
    Ok((archive, reference))
}

/// A Linux image holding one static binary at `path_in_image`, its entrypoint: the native
/// reference point for benchmarks and for "not wasm" errors.
pub fn native_image(
    work: &Path,
    name: &str,
    binary: &Path,
    path_in_image: &str,
    entrypoint: &[&str],
) -> Result<(PathBuf, String)> {
    let reference = format!("wedge.test/{name}:latest");
    let archive = work.join(format!("{name}.tar"));
    let spec = ImageSpec {
        reference: reference.clone(),
        files: vec![LayerFile {
            path: path_in_image.to_string(),
            contents: std::fs::read(binary)?,
            mode: 0o755,
        }],
        entrypoint: entrypoint.iter().map(|arg| arg.to_string()).collect(),
        cmd: vec![],
        env: vec!["PATH=/bin".into()],
        workdir: None,
        platforms: vec![host_platform()],
    };
    write_oci_archive(&spec, std::fs::File::create(&archive)?)?;
    Ok((archive, reference))
}

/// An image in `docker save` form, written here without the project's image builder: a
/// stand-in for images made by other tools. The module sits at `/usr/bin/<name>.wasm` and
/// the entrypoint names it bare, to be found through the image's `PATH`.
pub fn docker_save_archive(work: &Path, name: &str, module: &[u8]) -> Result<(PathBuf, String)> {
    use wedge_runtime_config::wasm_image::sha256_hex as hex;
    let reference = format!("wedge.test/{name}:docker");

    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["usr/", "usr/bin/"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        layer.append_data(&mut header, dir, std::io::empty())?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(module.len() as u64);
    layer.append_data(&mut header, format!("usr/bin/{name}.wasm"), module)?;
    let layer = layer.into_inner()?;
    let layer_hex = hex(&layer);

    let config = serde_json::json!({
        "architecture": host_platform().architecture,
        "os": "linux",
        "config": {
            "Entrypoint": [format!("{name}.wasm")],
            "Env": ["PATH=/usr/local/bin:/usr/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
    })
    .to_string()
    .into_bytes();
    let config_hex = hex(&config);
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [reference],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }])
    .to_string()
    .into_bytes();

    let archive = work.join(format!("{name}-docker.tar"));
    let mut out = tar::Builder::new(std::fs::File::create(&archive)?);
    for (path, bytes) in [
        (format!("{config_hex}.json"), config),
        (format!("{layer_hex}/layer.tar"), layer),
        ("manifest.json".to_string(), manifest),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        out.append_data(&mut header, path, bytes.as_slice())?;
    }
    out.into_inner()?;
    Ok((archive, reference))
}

/// A special file in a test image's layer: what a hostile image can carry.
pub enum SpecialFile<'a> {
    Fifo(&'a str),
    CharDevice {
        path: &'a str,
        major: u32,
        minor: u32,
    },
    Directory(&'a str),
}

/// A root-filesystem image for this host's platform holding `files` (path, bytes) and the
/// `special` entries, with `entrypoint`.
pub fn image_with_special_files(
    work: &Path,
    name: &str,
    files: &[(&str, &[u8])],
    special: &[SpecialFile<'_>],
    entrypoint: &[&str],
) -> Result<(PathBuf, String)> {
    let mut layer = tar::Builder::new(Vec::new());
    let entry = wedge_cli::image::header;
    for (path, bytes) in files {
        let mut header = entry(tar::EntryType::Regular, bytes.len() as u64, 0o755);
        layer.append_data(&mut header, path.trim_start_matches('/'), *bytes)?;
    }
    for file in special {
        let (path, mut header) = match file {
            SpecialFile::Fifo(path) => (path, entry(tar::EntryType::Fifo, 0, 0o666)),
            SpecialFile::Directory(path) => (path, entry(tar::EntryType::Directory, 0, 0o755)),
            SpecialFile::CharDevice { path, major, minor } => {
                // Readable by anyone: only the device policy stands in the way.
                let mut header = entry(tar::EntryType::Char, 0, 0o666);
                header.set_device_major(*major)?;
                header.set_device_minor(*minor)?;
                (path, header)
            }
        };
        layer.append_data(&mut header, path.trim_start_matches('/'), std::io::empty())?;
    }
    let reference = format!("wedge.test/{name}:latest");
    let spec = ImageSpec {
        reference: reference.clone(),
        files: vec![],
        entrypoint: entrypoint.iter().map(|arg| arg.to_string()).collect(),
        cmd: vec![],
        env: vec!["PATH=/bin".into()],
        workdir: None,
        platforms: vec![host_platform()],
    };
    let content = wedge_cli::image::rootfs_image_from_layer(&spec, layer.into_inner()?)?;
    let archive = work.join(format!("{name}.tar"));
    wedge_cli::image::write_layout(&content, std::fs::File::create(&archive)?)?;
    Ok((archive, reference))
}
