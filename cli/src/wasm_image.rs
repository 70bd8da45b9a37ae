//! `wedge image build`: a wasm module as a container image, in one of three forms: a plain
//! image whose root filesystem holds the module (and any extra files) as its entrypoint, or
//! an image whose layer is the module (`layer`, or the CNCF `artifact`).

use std::path::{Path, PathBuf};

use crate::image::{self, BuiltImage, ImageContent, ImageError, ImageSpec, LayerFile, Platform};
use crate::module_image::{module_image, ModuleForm, ModuleImageSpec};
use wedge_runtime_config::wasm_image::WASM_LAYER_MEDIA_TYPES;

/// Which form of image to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFormat {
    /// The module as a file in an ordinary root filesystem (works with any containerd).
    Rootfs,
    /// The module as the image's layer (containerd >= 1.7.7 / 1.6.25).
    Module(ModuleForm),
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a WebAssembly binary (it does not start with \\0asm)")]
    NotWasm(PathBuf),
    #[error(
        "--file and --platform apply to the rootfs form only; a {0} image holds just the module"
    )]
    RootfsOnlyOption(&'static str),
    #[error("invalid --file {0:?}: expected SOURCE:DEST with DEST an absolute path")]
    InvalidFileMapping(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --env {0:?}: expected KEY=VALUE")]
    InvalidEnv(String),
    #[error(
        "unknown --layer-media-type {given:?}: nodes read a wasm layer of one of {known}",
        known = WASM_LAYER_MEDIA_TYPES.join(", ")
    )]
    UnknownLayerMediaType { given: String },
    #[error(
        "--platform {0} is not one a node pulls: containerd on a Kubernetes node matches \
         linux/ARCH ({arches})",
        arches = NODE_ARCHITECTURES.join(", ")
    )]
    UnpulledPlatform(String),
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// The architectures of Linux nodes containerd runs on, as OCI platforms spell them.
const NODE_ARCHITECTURES: [&str; 8] = [
    "amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64", "loong64",
];

/// Refuses flags that would build an image no node runs as asked.
fn check_flags(request: &WasmImageRequest) -> Result<(), BuildError> {
    if let Some(entry) = request
        .env
        .iter()
        .find(|entry| entry.split_once('=').is_none_or(|(key, _)| key.is_empty()))
    {
        return Err(BuildError::InvalidEnv(entry.clone()));
    }
    if let ImageFormat::Module(ModuleForm::Layer(Some(media_type))) = &request.format {
        if !WASM_LAYER_MEDIA_TYPES.contains(&media_type.as_str()) {
            return Err(BuildError::UnknownLayerMediaType {
                given: media_type.clone(),
            });
        }
    }
    if let Some(platform) = request.platforms.iter().find(|platform| {
        platform.os != "linux" || !NODE_ARCHITECTURES.contains(&platform.architecture.as_str())
    }) {
        return Err(BuildError::UnpulledPlatform(format!(
            "{}/{}",
            platform.os, platform.architecture
        )));
    }
    Ok(())
}

/// Inputs of `wedge image build`.
#[derive(Debug, Clone)]
pub struct WasmImageRequest {
    pub module: PathBuf,
    pub reference: String,
    /// Where the module lives in the image; default `/<file name>`.
    pub module_path: Option<String>,
    /// `SOURCE:DEST` pairs of extra files.
    pub files: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub platforms: Vec<Platform>,
    pub format: ImageFormat,
}

pub fn build(request: &WasmImageRequest, output: &Path) -> Result<BuiltImage, BuildError> {
    let content = image_content(request)?;
    // Write to a temporary file beside the target and rename, so a failed build never leaves
    // a truncated archive under the requested name.
    let dir = output
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let write_error = |source| BuildError::Write {
        path: output.to_path_buf(),
        source,
    };
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(write_error)?;
    let built = image::write_layout(&content, temp.as_file_mut())?;
    temp.persist(output).map_err(|err| write_error(err.error))?;
    Ok(built)
}

fn image_content(request: &WasmImageRequest) -> Result<ImageContent, BuildError> {
    check_flags(request)?;
    let form = match &request.format {
        ImageFormat::Rootfs => return Ok(image::rootfs_image(&image_spec(request)?)?),
        ImageFormat::Module(form) => form.clone(),
    };
    if !request.files.is_empty() || !request.platforms.is_empty() {
        return Err(BuildError::RootfsOnlyOption(match form {
            ModuleForm::Artifact => "artifact",
            ModuleForm::Layer(_) => "layer",
        }));
    }
    let module = read_module(&request.module)?;
    Ok(module_image(&ModuleImageSpec {
        reference: request.reference.clone(),
        module,
        form,
        entrypoint: vec![module_path(request)],
        cmd: request.args.clone(),
        env: request.env.clone(),
        workdir: request.workdir.clone(),
        files: vec![],
    })?)
}

fn read_module(path: &Path) -> Result<Vec<u8>, BuildError> {
    let module = read(path)?;
    if !module.starts_with(b"\0asm") {
        return Err(BuildError::NotWasm(path.to_path_buf()));
    }
    Ok(module)
}

fn module_path(request: &WasmImageRequest) -> String {
    request.module_path.clone().unwrap_or_else(|| {
        let file_name = request
            .module
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "module.wasm".into());
        format!("/{file_name}")
    })
}

fn image_spec(request: &WasmImageRequest) -> Result<ImageSpec, BuildError> {
    let module = read_module(&request.module)?;
    let module_path = module_path(request);

    let mut files = vec![LayerFile {
        path: module_path.clone(),
        contents: module,
        mode: 0o755,
    }];
    for mapping in &request.files {
        let (source, dest) = mapping
            .split_once(':')
            .filter(|(source, dest)| !source.is_empty() && dest.starts_with('/'))
            .ok_or_else(|| BuildError::InvalidFileMapping(mapping.clone()))?;
        files.push(LayerFile {
            path: dest.to_string(),
            contents: read(Path::new(source))?,
            mode: 0o644,
        });
    }

    Ok(ImageSpec {
        reference: request.reference.clone(),
        files,
        entrypoint: vec![module_path],
        cmd: request.args.clone(),
        env: request.env.clone(),
        workdir: request.workdir.clone(),
        platforms: if request.platforms.is_empty() {
            image::default_platforms()
        } else {
            request.platforms.clone()
        },
    })
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|source| BuildError::Read {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(module: PathBuf) -> WasmImageRequest {
        WasmImageRequest {
            module,
            reference: "demo/hello:v1".into(),
            module_path: None,
            files: vec![],
            args: vec![],
            env: vec![],
            workdir: None,
            platforms: vec![],
            format: ImageFormat::Rootfs,
        }
    }

    #[test]
    fn builds_an_archive_and_refuses_non_wasm() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("hello.wasm");
        std::fs::write(&module, wat::parse_str("(module)").unwrap()).unwrap();
        let out = dir.path().join("hello.tar");
        let built = build(&request(module), &out).unwrap();
        assert_eq!(built.reference, "docker.io/demo/hello:v1");
        assert!(std::fs::metadata(&out).unwrap().len() > 0);

        let native = dir.path().join("sh");
        std::fs::write(&native, b"\x7fELF").unwrap();
        let failed = dir.path().join("native.tar");
        assert!(matches!(
            build(&request(native), &failed),
            Err(BuildError::NotWasm(_))
        ));
        assert!(!failed.exists());
        let mut artifact = request(dir.path().join("hello.wasm"));
        artifact.format = ImageFormat::Module(ModuleForm::Artifact);
        artifact.files = vec!["x:/x".into()];
        assert!(matches!(
            build(&artifact, &failed),
            Err(BuildError::RootfsOnlyOption("artifact"))
        ));
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 3, "only hello.wasm, hello.tar and sh remain");
    }

    #[test]
    fn extra_files_need_absolute_destinations() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.wasm");
        std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
        let mut req = request(module);
        req.files = vec!["data.txt:relative".into()];
        assert!(matches!(
            image_spec(&req),
            Err(BuildError::InvalidFileMapping(_))
        ));
    }

    /// Flags that would build an image no node runs, or runs differently than asked, are
    /// refused by name before anything is written.
    #[test]
    fn flags_no_node_can_honour_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("hello.wasm");
        std::fs::write(&module, wat::parse_str("(module)").unwrap()).unwrap();
        let out = dir.path().join("refused.tar");
        let mut no_equals = request(module.clone());
        no_equals.env = vec!["GOOD=1".into(), "NOEQUALS".into()];
        let mut junk_media_type = request(module.clone());
        junk_media_type.format = ImageFormat::Module(ModuleForm::Layer(Some("junk".into())));
        let mut wasi_platform = request(module.clone());
        wasi_platform.platforms = vec!["wasi/wasm".parse().unwrap()];
        let mut unknown_arch = request(module);
        unknown_arch.platforms = vec!["linux/amd46".parse().unwrap()];
        for (request, needle) in [
            (no_equals, "--env \"NOEQUALS\""),
            (junk_media_type, "\"junk\""),
            (wasi_platform, "wasi/wasm"),
            (unknown_arch, "linux/amd46"),
        ] {
            let err = build(&request, &out).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(!out.exists(), "an archive was written for: {err}");
        }
    }
}
