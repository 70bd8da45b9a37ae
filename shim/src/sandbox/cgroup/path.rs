//! Where a container's cgroup lives, from the spec's `linux.cgroupsPath`.
//!
//! Two spellings reach a runtime: a cgroupfs path (`/kubepods/burstable/pod1/abc`, what the
//! cgroupfs driver and `ctr` give) and the systemd driver's `slice:prefix:name`
//! (`kubepods-burstable-pod1.slice:cri-containerd:abc`). Which one a path is read as is the
//! cgroup driver's decision, as in runc, never the path's shape alone: with the systemd
//! driver slices nest by their dashes; with cgroupfs an absolute path is taken from each
//! hierarchy's root and any other (a `slice:prefix:name` included) from the shim's own
//! cgroup, as runc's cgroupfs manager takes it from its own.

use std::path::{Component, Path, PathBuf};

use wedge_runtime_config::CgroupDriver;

use super::CgroupError;

/// The cgroup manager a container's cgroups are laid out by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

impl Driver {
    /// The engine config's driver; where it says `auto`, systemd only for a
    /// `slice:prefix:name` path on a node whose PID 1 is systemd.
    pub fn decide(configured: CgroupDriver, cgroups_path: &str) -> Driver {
        Self::decide_on(configured, cgroups_path, systemd_is_init())
    }

    fn decide_on(configured: CgroupDriver, cgroups_path: &str, systemd_init: bool) -> Driver {
        match configured {
            CgroupDriver::Systemd => Driver::Systemd,
            CgroupDriver::Cgroupfs => Driver::Cgroupfs,
            CgroupDriver::Auto if systemd_init && is_systemd_form(cgroups_path) => Driver::Systemd,
            CgroupDriver::Auto => Driver::Cgroupfs,
        }
    }
}

/// What sd_booted(3) checks.
fn systemd_is_init() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Where a container's cgroup is: `path` (relative, no leading `/`) below each hierarchy's
/// root, or below the shim's own cgroup in each hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub path: PathBuf,
    pub below_own_cgroup: bool,
}

/// The cgroup of container `id`.
pub fn resolve(
    cgroups_path: &str,
    namespace: &str,
    id: &str,
    driver: Driver,
) -> Result<Resolved, CgroupError> {
    let below_own_cgroup =
        driver == Driver::Cgroupfs && !cgroups_path.is_empty() && !cgroups_path.starts_with('/');
    let relative = if cgroups_path.is_empty() {
        // What containerd itself uses when a client sets no path.
        PathBuf::from(namespace).join(id)
    } else if driver == Driver::Systemd {
        if !is_systemd_form(cgroups_path) {
            return Err(CgroupError::InvalidPath(format!(
                "{cgroups_path} (the systemd cgroup driver expects slice:prefix:name)"
            )));
        }
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
    Ok(Resolved {
        path: relative,
        below_own_cgroup,
    })
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

    fn resolve(cgroups_path: &str, namespace: &str, id: &str) -> Result<PathBuf, CgroupError> {
        let driver = Driver::decide_on(CgroupDriver::Auto, cgroups_path, true);
        super::resolve(cgroups_path, namespace, id, driver).map(|resolved| resolved.path)
    }

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
    fn the_driver_comes_from_the_config_and_auto_needs_systemd_as_init() {
        let slice = "test.slice:cri-containerd:abc";
        assert_eq!(
            Driver::decide_on(CgroupDriver::Auto, slice, false),
            Driver::Cgroupfs
        );
        assert_eq!(
            Driver::decide_on(CgroupDriver::Auto, slice, true),
            Driver::Systemd
        );
        assert_eq!(
            Driver::decide_on(CgroupDriver::Auto, "/a/b", true),
            Driver::Cgroupfs
        );
        assert_eq!(
            Driver::decide_on(CgroupDriver::Cgroupfs, slice, true),
            Driver::Cgroupfs
        );
        assert_eq!(
            Driver::decide_on(CgroupDriver::Systemd, "/a/b", false),
            Driver::Systemd
        );
    }

    #[test]
    fn cgroupfs_takes_a_slice_path_from_its_own_cgroup_as_runc_does() {
        assert_eq!(
            super::resolve(
                "test.slice:cri-containerd:abc",
                "k8s.io",
                "abc",
                Driver::Cgroupfs
            )
            .unwrap(),
            Resolved {
                path: PathBuf::from("test.slice:cri-containerd:abc"),
                below_own_cgroup: true
            }
        );
        assert_eq!(
            super::resolve("/kubepods/abc", "k8s.io", "abc", Driver::Cgroupfs).unwrap(),
            Resolved {
                path: PathBuf::from("kubepods/abc"),
                below_own_cgroup: false
            }
        );
        let err = super::resolve("/kubepods/abc", "k8s.io", "abc", Driver::Systemd).unwrap_err();
        assert!(err.to_string().contains("slice:prefix:name"), "{err}");
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

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// cgroupfs paths, systemd triples and hostile spellings of both.
        fn cgroups_path() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "(/?[a-z.]{0,6}){0,4}(/\\.\\.){0,2}(/[a-z]{0,4}){0,2}",
                "[a-z-]{0,10}\\.slice:[a-z-]{0,8}:[a-z0-9.-]{0,12}",
                "[a-z./:-]{0,30}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            /// Whatever the spec says, the cgroup resolves below the hierarchy's root (or the
            /// shim's own cgroup) or is refused: never the root itself, never above it.
            #[test]
            fn a_cgroup_path_never_leaves_its_hierarchy(
                path in cgroups_path(),
                id in "[a-z0-9]{1,12}",
                systemd in any::<bool>(),
            ) {
                let driver = if systemd { Driver::Systemd } else { Driver::Cgroupfs };
                if let Ok(resolved) = resolve(&path, "k8s.io", &id, driver) {
                    prop_assert!(!resolved.path.as_os_str().is_empty());
                    prop_assert!(
                        resolved.path.components().all(|part| matches!(part, Component::Normal(_))),
                        "{:?} resolved to {:?}", path, resolved.path
                    );
                }
            }
        }
    }
}
