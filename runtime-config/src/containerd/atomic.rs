//! Replacing a file so that a reader (containerd, k3s, a crash) sees the old bytes or the new
//! ones, never half: a temp file in the same directory, fsync, rename, fsync the directory.
//! The new file keeps the old one's mode and owner.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::error::{ContainerdConfigError, Result};

/// Mode of a config file the installer creates.
const NEW_FILE_MODE: u32 = 0o644;

pub fn write(path: &Path, contents: &[u8], like: &Path) -> Result<()> {
    let existing = fs::metadata(like).ok();
    let mode = existing
        .as_ref()
        .map_or(NEW_FILE_MODE, |meta| meta.mode() & 0o7777);
    let owner = existing.as_ref().map(|meta| (meta.uid(), meta.gid()));
    replace_file(path, contents, mode, owner).map_err(|source| ContainerdConfigError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Puts `contents` at `path` with `mode` (and `owner`, if given) so that a reader sees the old
/// file or the new one, never part of it; creates the directory if needed.
pub fn replace_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.wedge-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(contents)?;
        // The umask may have narrowed the mode given to open.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

pub fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(ContainerdConfigError::Write {
                path: path.to_path_buf(),
                source: err,
            })
        }
        _ => {
            if let Some(dir) = path.parent() {
                let _ = File::open(dir).and_then(|dir| dir.sync_all());
            }
            Ok(())
        }
    }
}

/// The file's text, `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ContainerdConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| ContainerdConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}
