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
