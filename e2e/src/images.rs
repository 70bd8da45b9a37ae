//! Test images, built the way a user builds them: with `wedge image build`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Result};
use wedge_cli::image::{write_oci_archive, ImageSpec, LayerFile, Platform};

use crate::binaries;

/// Writes `module` to `work/<name>.wasm`, packs it with `wedge image build` as image
/// `wedge.test/<name>:latest`, and returns the archive path and the image reference.
pub fn wasm_image(work: &Path, name: &str, module: &[u8]) -> Result<(PathBuf, String)> {
    let module_file = work.join(format!("{name}.wasm"));
    std::fs::write(&module_file, module)?;
    let archive = work.join(format!("{name}.tar"));
    let reference = format!("wedge.test/{name}:latest");
    let out = Command::new(binaries::path(binaries::CLI)?)
        .args(["image", "build", "--tag", &reference, "--output"])
        .arg(&archive)
        .arg(&module_file)
        .output()?;
    ensure!(
        out.status.success(),
        "wedge image build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
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

fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
    }
}

/// An image in `docker save` form, written here without the project's image builder: a
/// stand-in for images made by other tools. The module sits at `/usr/bin/<name>.wasm` and
/// the entrypoint names it bare, to be found through the image's `PATH`.
pub fn docker_save_archive(work: &Path, name: &str, module: &[u8]) -> Result<(PathBuf, String)> {
    use sha2::{Digest, Sha256};
    let hex = |bytes: &[u8]| -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
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
