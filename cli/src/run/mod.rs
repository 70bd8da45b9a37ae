//! `wedge run`: a `.wasm` module or component, an OCI image archive or an image in
//! containerd's store, run on this machine the way a node runs it.
//!
//! The CLI prepares an OCI bundle (root filesystem, `config.json` as containerd's default
//! spec would be for it, the wasm layer if the image has one) and hands it to the shim
//! binary's `run-local` action, which drives the very task service containerd drives: same
//! engine, engine config, annotations, cgroup, namespaces and confinement. Stdio is the
//! caller's; the exit status is the module's.

pub mod bundle;
pub mod containerd_image;
pub mod image_parts;
pub mod unpack;

use std::path::{Path, PathBuf};

use wedge_runtime_config::local_run::{LocalLayer, LocalRun, LOCAL_RUN_ACTION, LOCAL_RUN_FILE};

use crate::installer_image::host_platform;
use crate::oci_archive::{ArchiveError, OciArchive};
use bundle::ContainerSettings;

/// The shim binary, which also runs local containers.
pub const SHIM_BINARY: &str = "containerd-shim-wedge-v1";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "{0}: no such file (give a .wasm, an image archive, or the name of an image in containerd)"
    )]
    NoSuchInput(String),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    #[error("image {image}: containerd does not hold blob {digest}; pull the image again")]
    MissingBlob { image: String, digest: String },
    #[error("containerd has no image {name} in namespace {namespace} (see `ctr -n {namespace} images ls`)")]
    NoSuchImage { name: String, namespace: String },
    #[error("cannot read images from containerd at {socket}: {reason}")]
    Containerd { socket: PathBuf, reason: String },
    #[error("layer {layer}: {reason}")]
    Layer { layer: String, reason: String },
    #[error(
        "the image has neither an entrypoint nor a command: name the module to run, e.g. \
         `wedge run IMAGE -- /app.wasm`"
    )]
    NothingToRun,
    #[error("{SHIM_BINARY} was found neither beside wedge nor on PATH; pass --shim PATH")]
    NoShim,
    #[error("cannot prepare the container in {path}: {source}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {shim}: {source}")]
    Spawn {
        shim: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

/// What to run, as `wedge run` was told.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// A `.wasm` file, an OCI image archive, or an image name in containerd.
    pub input: String,
    /// Arguments after the module (they replace the image's command, as with `docker run`).
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub annotations: Vec<(String, String)>,
    pub memory_limit: Option<u64>,
    pub volumes: Vec<(String, String, bool)>,
    pub host_network: bool,
    pub readonly_root: bool,
    pub interactive: bool,
    pub engine_config: Option<PathBuf>,
    pub name: Option<String>,
    pub shim: Option<PathBuf>,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
}

/// Where the input points.
#[derive(Debug, PartialEq, Eq)]
enum Input {
    Module(PathBuf),
    Archive(PathBuf),
    ImageName(String),
}

fn classify(input: &str) -> Result<Input, RunError> {
    use std::io::Read;
    let path = Path::new(input);
    let starts_with_wasm_magic = std::fs::File::open(path).and_then(|mut file| {
        let mut magic = [0u8; 4];
        let read = file.read(&mut magic)?;
        Ok(magic[..read] == *b"\0asm")
    });
    match starts_with_wasm_magic {
        Ok(true) => Ok(Input::Module(path.to_path_buf())),
        Ok(false) => Ok(Input::Archive(path.to_path_buf())),
        // Something that looks like a path is a missing file, not an image name.
        Err(_)
            if input.starts_with(['.', '/'])
                || input.ends_with(".wasm")
                || input.ends_with(".tar") =>
        {
            Err(RunError::NoSuchInput(input.to_string()))
        }
        Err(_) => Ok(Input::ImageName(input.to_string())),
    }
}

/// A prepared bundle; removed when dropped.
pub struct PreparedBundle {
    pub dir: tempfile::TempDir,
    pub id: String,
}

/// Writes the bundle for `request`.
pub async fn prepare(request: &RunRequest) -> Result<PreparedBundle, RunError> {
    let id = request
        .name
        .clone()
        .unwrap_or_else(|| format!("wedge-run-{}", std::process::id()));
    let dir = tempfile::Builder::new()
        .prefix("wedge-run-")
        .tempdir()
        .map_err(|source| RunError::Bundle {
            path: std::env::temp_dir(),
            source,
        })?;
    let bundle_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunError::Bundle { path, source }
    };
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).map_err(bundle_error(&rootfs))?;

    let mut settings = ContainerSettings {
        id: id.clone(),
        env: Vec::new(),
        cwd: "/".into(),
        annotations: request.annotations.clone(),
        memory_limit: request.memory_limit,
        volumes: request.volumes.clone(),
        host_network: request.host_network,
        readonly_root: request.readonly_root,
        args: Vec::new(),
    };
    let image = match classify(&request.input)? {
        Input::Module(path) => {
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| "module.wasm".into());
            std::fs::copy(&path, rootfs.join(&name)).map_err(bundle_error(&path))?;
            settings.args = std::iter::once(format!("/{name}"))
                .chain(request.args.iter().cloned())
                .collect();
            None
        }
        Input::Archive(path) => Some(OciArchive::read(&path)?),
        Input::ImageName(name) => Some(
            containerd_image::fetch(
                &request.containerd_socket,
                &request.containerd_namespace,
                &name,
            )
            .await?,
        ),
    };
    let wasm_layer = match image {
        Some(image) => unpack_image(&image, dir.path(), &request.args, &mut settings)?,
        None => None,
    };
    if settings.args.is_empty() {
        return Err(RunError::NothingToRun);
    }
    settings.env.extend(request.env.iter().cloned());
    let spec = bundle::spec(&settings, &rootfs)?;
    let config = dir.path().join("config.json");
    spec.save(&config)
        .map_err(|err| RunError::Internal(format!("cannot write {}: {err}", config.display())))?;
    let local = LocalRun {
        id: id.clone(),
        engine_config: request.engine_config.clone(),
        wasm_layer,
        stdin: request.interactive,
    };
    let local_file = dir.path().join(LOCAL_RUN_FILE);
    let json = serde_json::to_vec(&local).map_err(|err| RunError::Internal(err.to_string()))?;
    std::fs::write(&local_file, json).map_err(bundle_error(&local_file))?;
    Ok(PreparedBundle { dir, id })
}

/// Puts the image's root filesystem layers under `bundle/rootfs` and its wasm layer beside
/// it, and takes the image's process defaults into `settings`.
fn unpack_image(
    image: &OciArchive,
    bundle: &Path,
    args: &[String],
    settings: &mut ContainerSettings,
) -> Result<Option<LocalLayer>, RunError> {
    let rootfs = bundle.join("rootfs");
    let parts = image_parts::image_parts(image, &host_platform())?;
    for layer in &parts.rootfs_layers {
        let media_type = layer.media_type().to_string();
        let compression = unpack::compression_of(&media_type).ok_or_else(|| RunError::Layer {
            layer: layer.digest().to_string(),
            reason: format!("media type {media_type} is not a layer wedge run unpacks"),
        })?;
        let bytes = image.blob(layer.digest().as_ref())?;
        unpack::apply_layer(&rootfs, bytes, compression, layer.digest().as_ref())?;
    }
    let wasm_layer = match &parts.wasm_layer {
        Some(layer) => {
            let path = bundle.join("wasm-layer");
            std::fs::write(&path, image.blob(layer.digest().as_ref())?).map_err(|source| {
                RunError::Bundle {
                    path: path.clone(),
                    source,
                }
            })?;
            Some(LocalLayer {
                path,
                digest: layer.digest().to_string(),
                media_type: layer.media_type().to_string(),
            })
        }
        None => None,
    };
    // As `docker run`: arguments given replace the image's command, not its entrypoint.
    let command = if args.is_empty() {
        &parts.cmd[..]
    } else {
        args
    };
    settings.args = parts.entrypoint.iter().chain(command).cloned().collect();
    settings.env = parts.env;
    if let Some(workdir) = parts.workdir {
        settings.cwd = workdir;
    }
    Ok(wasm_layer)
}

/// The shim binary: `--shim`, else beside this program, else on PATH.
pub fn find_shim(given: Option<&Path>) -> Result<PathBuf, RunError> {
    if let Some(given) = given {
        return Ok(given.to_path_buf());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(SHIM_BINARY)));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(SHIM_BINARY))
                .collect()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(on_path)
        .find(|candidate| candidate.is_file())
        .ok_or(RunError::NoShim)
}

/// Runs the prepared bundle with the shim in the foreground; the module's exit status.
/// Signals sent to `wedge run` go on to the shim, which hands them to the module.
pub async fn run_bundle(shim: &Path, bundle: &PreparedBundle) -> Result<i32, RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let spawn_error = |source| RunError::Spawn {
        shim: shim.to_path_buf(),
        source,
    };
    let mut streams = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
    ] {
        streams.push((kind, signal(kind).map_err(spawn_error)?));
    }
    let (forward, mut forwarded) = tokio::sync::mpsc::unbounded_channel();
    for (kind, mut stream) in streams {
        let forward = forward.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if forward.send(kind.as_raw_value()).is_err() {
                    return;
                }
            }
        });
    }
    // Only now, with every signal above caught: one sent while the shim starts goes on too.
    let mut child = tokio::process::Command::new(shim)
        .arg(LOCAL_RUN_ACTION)
        .arg(bundle.dir.path())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_error)?;
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(spawn_error)?;
                use std::os::unix::process::ExitStatusExt;
                return Ok(status
                    .code()
                    .or_else(|| status.signal().map(|signal| 128 + signal))
                    .unwrap_or(1));
            }
            Some(number) = forwarded.recv() => {
                if let (Some(pid), Ok(signal)) = (pid, nix::sys::signal::Signal::try_from(number)) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_told_apart_by_their_bytes_and_their_look() {
        let dir = tempfile::tempdir().unwrap();
        let module = dir.path().join("m.bin");
        std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
        let archive = dir.path().join("a.bin");
        std::fs::write(&archive, b"tar?").unwrap();
        let module_path = module.display().to_string();
        assert_eq!(classify(&module_path).unwrap(), Input::Module(module));
        let archive_path = archive.display().to_string();
        assert_eq!(classify(&archive_path).unwrap(), Input::Archive(archive));
        assert!(matches!(
            classify("./missing.wasm"),
            Err(RunError::NoSuchInput(_))
        ));
        assert!(matches!(
            classify("hello.wasm"),
            Err(RunError::NoSuchInput(_))
        ));
        assert_eq!(
            classify("docker.io/library/hello:v1").unwrap(),
            Input::ImageName("docker.io/library/hello:v1".into())
        );
    }
}
