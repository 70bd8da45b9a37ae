//! Where a container's cgroup lives, from the spec's `linux.cgroupsPath`.
//!
//! Two spellings reach a runtime: a cgroupfs path (`/kubepods/burstable/pod1/abc`, what the
//! cgroupfs driver and `ctr` give) and the systemd driver's `slice:prefix:name`
//! (`kubepods-burstable-pod1.slice:cri-containerd:abc`). Both end up as a directory relative
//! to every hierarchy's root; systemd's slices nest by their dashes.

use std::path::{Component, PathBuf};

use super::CgroupError;

/// The cgroup of container `id` as a path relative to a hierarchy root (no leading `/`).
pub fn resolve(cgroups_path: &str, namespace: &str, id: &str) -> Result<PathBuf, CgroupError> {
    let relative = if cgroups_path.is_empty() {
        // What containerd itself uses when a client sets no path.
        PathBuf::from(namespace).join(id)
    } else if is_systemd_form(cgroups_path) {
        systemd_path(cgroups_path)?
    } else {
        PathBuf::from(cgroups_path.trim_start_matches('/'))
    };
    let clean = relative
        .components()
        .all(|part| matches!(part, Component::Normal(_)));
    if !clean || relative.as_os_str().is_empty() {
        return Err(CgroupError::InvalidPath(cgroups_path.to_string()));
    }
    Ok(relative)
}

/// True for the systemd driver's `slice:prefix:name` form.
pub fn is_systemd_form(cgroups_path: &str) -> bool {
    !cgroups_path.starts_with('/') && cgroups_path.split(':').count() == 3
}

fn systemd_path(cgroups_path: &str) -> Result<PathBuf, CgroupError> {
    let invalid = || CgroupError::InvalidPath(cgroups_path.to_string());
    let mut parts = cgroups_path.split(':');
    let (Some(slice), Some(prefix), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut path = expand_slice(slice).ok_or_else(invalid)?;
    if name.ends_with(".slice") {
        path.push(
            expand_slice(name)
                .ok_or_else(invalid)?
                .file_name()
                .ok_or_else(invalid)?,
        );
    } else if prefix.is_empty() {
        path.push(format!("{name}.scope"));
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    Ok(path)
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    if stem == "-" {
        return Some(PathBuf::new());
    }
    if stem.is_empty() || stem.contains('/') || stem.starts_with('-') || stem.ends_with('-') {
        return None;
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if part.is_empty() {
            return None;
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroupfs_paths_are_relative_to_each_hierarchy() {
        assert_eq!(
            resolve("/kubepods/besteffort/pod1/abc", "k8s.io", "abc").unwrap(),
            PathBuf::from("kubepods/besteffort/pod1/abc")
        );
        assert_eq!(
            resolve("", "default", "c1").unwrap(),
            PathBuf::from("default/c1")
        );
    }

    #[test]
    fn systemd_slices_nest_by_dash() {
        assert_eq!(
            resolve(
                "kubepods-burstable-pod1.slice:cri-containerd:abc",
                "k8s.io",
                "abc"
            )
            .unwrap(),
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/\
                 cri-containerd-abc.scope"
            )
        );
        assert_eq!(
            resolve(":wedge:c1", "default", "c1").unwrap(),
            PathBuf::from("system.slice/wedge-c1.scope")
        );
        assert_eq!(
            resolve("-.slice::c1", "default", "c1").unwrap(),
            PathBuf::from("c1.scope")
        );
    }

    #[test]
    fn escapes_are_refused() {
        for bad in [
            "/a/../../etc",
            "/..",
            "bad-.slice:x:y",
            "a--b.slice:x:y",
            "x.slice/a:b:c",
        ] {
            assert!(resolve(bad, "default", "c1").is_err(), "{bad}");
        }
    }
}
