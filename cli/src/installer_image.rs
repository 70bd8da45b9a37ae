//! The node installer's image, built here without a container engine: `wedge` and the shim
//! at /usr/local/bin, and, when they are dynamically linked, the loader and libraries the
//! build host's `ldd` names, at the paths it names. Static binaries (the release build of
//! deploy/installer/Dockerfile) need nothing beside them. Nothing else is in the image: no
//! shell, no package manager.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::{self, BuiltImage, ImageError, ImageSpec, LayerFile, Platform};

/// The two programs of the image, as built.
pub const PROGRAMS: [&str; 2] = ["wedge", "containerd-shim-wedge-v1"];
/// Where they go in the image (the manifests run `/usr/local/bin/wedge`).
pub const PROGRAM_DIR: &str = "/usr/local/bin";

#[derive(Debug, thiserror::Error)]
pub enum InstallerImageError {
    #[error("{path}: {source} (build the workspace first: make build)")]
    MissingProgram {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot strip {path}: {message}")]
    Strip { path: PathBuf, message: String },
    #[error("cannot run ldd on {path}: {message}")]
    Ldd { path: PathBuf, message: String },
    #[error("{program} needs {library}, which ldd could not find on this host")]
    LibraryNotFound { program: PathBuf, library: String },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// The files of the image: the programs from `bin_dir` (without their symbols and line
/// tables, a tenth of the size), then their shared libraries.
pub fn files(bin_dir: &Path) -> Result<Vec<LayerFile>, InstallerImageError> {
    let mut files = Vec::new();
    let mut libraries: Vec<String> = Vec::new();
    for program in PROGRAMS {
        let path = bin_dir.join(program);
        let contents = stripped(&path)?;
        files.push(LayerFile {
            path: format!("{PROGRAM_DIR}/{program}"),
            contents,
            mode: 0o755,
        });
        for library in shared_libraries(&path)? {
            if !libraries.contains(&library) {
                libraries.push(library);
            }
        }
    }
    for library in libraries {
        // Symlinks (ld-linux in /lib64) are followed: the image gets the file itself.
        let contents =
            std::fs::read(&library).map_err(|source| InstallerImageError::MissingProgram {
                path: PathBuf::from(&library),
                source,
            })?;
        files.push(LayerFile {
            path: library,
            contents,
            mode: 0o755,
        });
    }
    Ok(files)
}

/// `program` as `strip` leaves it (binutils, which the Rust toolchain's linking needs anyway).
fn stripped(program: &Path) -> Result<Vec<u8>, InstallerImageError> {
    let missing = |source| InstallerImageError::MissingProgram {
        path: program.to_path_buf(),
        source,
    };
    std::fs::metadata(program).map_err(missing)?;
    let out = tempfile::NamedTempFile::new().map_err(ImageError::Io)?;
    let output = Command::new("strip")
        .arg("-o")
        .arg(out.path())
        .arg(program)
        .output()
        .map_err(|err| InstallerImageError::Strip {
            path: program.to_path_buf(),
            message: err.to_string(),
        })?;
    if !output.status.success() {
        return Err(InstallerImageError::Strip {
            path: program.to_path_buf(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(std::fs::read(out.path()).map_err(ImageError::Io)?)
}

/// The absolute paths of what `program` loads at start, as `ldd` resolves them here; empty
/// for a static executable.
fn shared_libraries(program: &Path) -> Result<Vec<String>, InstallerImageError> {
    let output =
        Command::new("ldd")
            .arg(program)
            .output()
            .map_err(|err| InstallerImageError::Ldd {
                path: program.to_path_buf(),
                message: err.to_string(),
            })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if text.contains("not a dynamic executable") || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(InstallerImageError::Ldd {
            path: program.to_path_buf(),
            message: stderr.trim().to_string(),
        });
    }
    parse_ldd(program, &text)
}

fn parse_ldd(program: &Path, text: &str) -> Result<Vec<String>, InstallerImageError> {
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("statically linked") {
            return Ok(Vec::new());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)", "/lib64/ld-linux-x86-64.so.2
        // (0x…)", "linux-vdso.so.1 (0x…)" (the kernel's, nothing to copy).
        let path = match line.split_once(" => ") {
            Some((library, rest)) => match rest.split_whitespace().next() {
                Some(path) if path.starts_with('/') => path,
                _ => {
                    return Err(InstallerImageError::LibraryNotFound {
                        program: program.to_path_buf(),
                        library: library.to_string(),
                    })
                }
            },
            None => match line.split_whitespace().next() {
                Some(path) if path.starts_with('/') => path,
                _ => continue,
            },
        };
        found.push(path.to_string());
    }
    Ok(found)
}

/// The image's platform: this host's, which is what the binaries were built for.
pub fn host_platform() -> Platform {
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

/// Writes the installer image named `reference` from the programs in `bin_dir` to `output`
/// (an OCI image-layout tar, for `ctr images import` or `wedge image push`).
pub fn build(
    bin_dir: &Path,
    reference: &str,
    output: &Path,
) -> Result<BuiltImage, InstallerImageError> {
    let spec = ImageSpec {
        reference: reference.to_string(),
        files: files(bin_dir)?,
        entrypoint: vec![format!("{PROGRAM_DIR}/wedge")],
        cmd: vec!["node".into(), "install".into(), "--help".into()],
        env: vec![format!("PATH={PROGRAM_DIR}")],
        workdir: None,
        platforms: vec![host_platform()],
    };
    let file = std::fs::File::create(output).map_err(ImageError::Io)?;
    Ok(image::write_oci_archive(
        &spec,
        std::io::BufWriter::new(file),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_files_to_copy() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(Path::new("wedge"), text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(parse_ldd(Path::new("wedge"), "\tstatically linked\n")
            .unwrap()
            .is_empty());
        let err = parse_ldd(Path::new("wedge"), "\tlibfoo.so.1 => not found\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("libfoo.so.1"), "{err}");
    }
}
