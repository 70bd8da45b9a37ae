//! `wedge image build`: a wasm module (and any extra files) as a plain container image whose
//! entrypoint is the module.

use std::path::{Path, PathBuf};

use crate::image::{self, BuiltImage, ImageError, ImageSpec, LayerFile, Platform};

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
    #[error("invalid --file {0:?}: expected SOURCE:DEST with DEST an absolute path")]
    InvalidFileMapping(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
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
}

pub fn build(request: &WasmImageRequest, output: &Path) -> Result<BuiltImage, BuildError> {
    let spec = image_spec(request)?;
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
    let built = image::write_oci_archive(&spec, temp.as_file_mut())?;
    temp.persist(output).map_err(|err| write_error(err.error))?;
    Ok(built)
}

fn image_spec(request: &WasmImageRequest) -> Result<ImageSpec, BuildError> {
    let module = read(&request.module)?;
    if !module.starts_with(b"\0asm") {
        return Err(BuildError::NotWasm(request.module.clone()));
    }
    let file_name = request
        .module
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "module.wasm".into());
    let module_path = request
        .module_path
        .clone()
        .unwrap_or_else(|| format!("/{file_name}"));

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
        }
    }

    #[test]
    fn builds_an_archive_and_refuses_non_wasm() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("hello.wasm");
        std::fs::write(&module, wat::parse_str("(module)").unwrap()).unwrap();
        let out = dir.path().join("hello.tar");
        let built = build(&request(module), &out).unwrap();
        assert_eq!(built.reference, "demo/hello:v1");
        assert!(std::fs::metadata(&out).unwrap().len() > 0);

        let native = dir.path().join("sh");
        std::fs::write(&native, b"\x7fELF").unwrap();
        let failed = dir.path().join("native.tar");
        assert!(matches!(
            build(&request(native), &failed),
            Err(BuildError::NotWasm(_))
        ));
        assert!(!failed.exists());
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
}
