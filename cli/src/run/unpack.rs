//! Root filesystem layers applied to a directory, bottom first, with the OCI whiteouts
//! (`.wh.NAME` removes NAME, `.wh..wh..opq` empties its directory). Entries are extracted
//! with the tar crate's `unpack_in`, which refuses paths that climb out of the directory.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::RunError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// How a layer's tar stream is compressed, by its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

pub fn compression_of(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
        _ => None,
    }
}

/// Applies one layer to `rootfs`.
pub fn apply_layer(
    rootfs: &Path,
    bytes: &[u8],
    compression: Compression,
    layer: &str,
) -> Result<(), RunError> {
    let stream: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(bytes),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(bytes)),
    };
    let bad = |reason: String| RunError::Layer {
        layer: layer.to_string(),
        reason,
    };
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(|err| bad(err.to_string()))? {
        let mut entry = entry.map_err(|err| bad(err.to_string()))?;
        let path = entry
            .path()
            .map_err(|err| bad(err.to_string()))?
            .into_owned();
        let Some(relative) = inside(&path) else {
            return Err(bad(format!(
                "entry {} climbs out of the root",
                path.display()
            )));
        };
        let name = relative
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Removing through a symbolic link an earlier layer planted could reach the host.
        if through_symlink(rootfs, &relative) {
            return Err(bad(format!(
                "entry {} goes through a symbolic link of the image",
                path.display()
            )));
        }
        if name == OPAQUE_WHITEOUT {
            let dir = rootfs.join(relative.parent().unwrap_or(Path::new("")));
            empty_directory(&dir).map_err(|err| bad(format!("{}: {err}", dir.display())))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let target = rootfs.join(relative.with_file_name(hidden));
            remove_any(&target).map_err(|err| bad(format!("{}: {err}", target.display())))?;
            continue;
        }
        // A later layer replaces what an earlier one put at the same path.
        let target = rootfs.join(&relative);
        if !entry.header().entry_type().is_dir() {
            remove_any(&target).map_err(|err| bad(format!("{}: {err}", target.display())))?;
        }
        let unpacked = entry
            .unpack_in(rootfs)
            .map_err(|err| bad(format!("{}: {err}", path.display())))?;
        if !unpacked {
            return Err(bad(format!(
                "entry {} climbs out of the root",
                path.display()
            )));
        }
    }
    Ok(())
}

/// `path` as a relative path with no `..`, or None.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(relative)
}

/// Whether a directory on the way to `relative` under `rootfs` is a symbolic link.
fn through_symlink(rootfs: &Path, relative: &Path) -> bool {
    let mut prefix = rootfs.to_path_buf();
    let parents = relative
        .parent()
        .map(Path::components)
        .into_iter()
        .flatten();
    for component in parents {
        prefix.push(component);
        match std::fs::symlink_metadata(&prefix) {
            Ok(meta) if meta.file_type().is_symlink() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    }
}

fn empty_directory(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries {
        remove_any(&entry?.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, *content).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn later_layers_replace_and_whiteouts_remove() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let first = layer(&[
            ("a/keep", b"1"),
            ("a/gone", b"2"),
            ("b/x", b"3"),
            ("c", b"4"),
        ]);
        let second = layer(&[("a/.wh.gone", b""), ("b/.wh..wh..opq", b""), ("c", b"5")]);
        apply_layer(root, &first, Compression::None, "first").unwrap();
        apply_layer(root, &second, Compression::None, "second").unwrap();
        assert!(root.join("a/keep").exists());
        assert!(!root.join("a/gone").exists());
        assert!(root.join("b").is_dir() && !root.join("b/x").exists());
        assert_eq!(std::fs::read(root.join("c")).unwrap(), b"5");
    }

    #[test]
    fn gzip_layers_are_read() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&layer(&[("hello.wasm", b"\0asm")])).unwrap();
        let bytes = gz.finish().unwrap();
        apply_layer(dir.path(), &bytes, Compression::Gzip, "gz").unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("hello.wasm")).unwrap(),
            b"\0asm"
        );
    }

    #[test]
    fn a_whiteout_through_a_planted_symlink_removes_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"host").unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder.append_link(&mut header, "link", &outside).unwrap();
        let first = builder.into_inner().unwrap();
        apply_layer(&root, &first, Compression::None, "first").unwrap();
        let second = layer(&[("link/.wh.precious", b"")]);
        let err = apply_layer(&root, &second, Compression::None, "second").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(outside.join("precious").exists());
    }

    #[test]
    fn entries_that_climb_out_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // The tar builder refuses to write "..", so the name goes into the header raw.
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        header.set_size(1);
        header.set_mode(0o644);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"x"[..]).unwrap();
        let bytes = builder.into_inner().unwrap();
        let err = apply_layer(&root, &bytes, Compression::None, "evil").unwrap_err();
        assert!(err.to_string().contains("climbs out"), "{err}");
        assert!(!dir.path().join("escape").exists());
    }
}
