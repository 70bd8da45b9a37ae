//! Which task API the shim announces when it answers `start`.
//!
//! containerd 2.x accepts a JSON answer naming task API v3 (`containerd.task.v3.Task`);
//! 1.7 accepts JSON only up to v2 and refuses anything above; 1.6 takes the answer as the
//! address itself. 1.7 and 2.x start shims with the same arguments and environment, so the
//! release is read from the containerd binary they name (`-publish-binary`): the Go build
//! information of every containerd from 2.0 on carries the module path
//! `github.com/containerd/containerd/v2`, also where containerd is built into another
//! binary (k3s). Whatever cannot be read gets the plain address, which every containerd
//! since 1.2 accepts (it then calls the v2 names, which the shim serves too).

use std::fs::File;
use std::path::Path;

use object::{Object, ObjectSection};

/// Task API versions as containerd numbers them in the `start` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskApi {
    V2,
    V3,
}

/// The ELF section where the Go linker keeps the build information.
const BUILD_INFO_SECTION: &str = ".go.buildinfo";
/// Build information beyond this is not containerd's (a sanity bound on what is read).
const MAX_BUILD_INFO: u64 = 4 << 20;
const MODULE_PREFIX: &[u8] = b"github.com/containerd/containerd/v";

impl TaskApi {
    /// The newest task API the containerd at `binary` speaks, as far as can be told.
    pub fn of_containerd(binary: &Path) -> TaskApi {
        match containerd_major(binary) {
            Some(major) if major >= 2 => TaskApi::V3,
            _ => TaskApi::V2,
        }
    }

    /// What `start` prints: the bare address for v2, the bootstrap JSON for v3.
    pub fn start_answer(self, address: &str) -> Vec<u8> {
        match self {
            TaskApi::V2 => address.as_bytes().to_vec(),
            TaskApi::V3 => serde_json::json!({
                "version": 3,
                "address": address,
                "protocol": "ttrpc",
            })
            .to_string()
            .into_bytes(),
        }
    }
}

/// The containerd major version named by `binary`'s Go build information, when it names one
/// above 1 (1.x binaries carry the module path without a version suffix).
fn containerd_major(binary: &Path) -> Option<u32> {
    let file = File::open(binary).ok()?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).ok()?;
    let section = elf.section_by_name(BUILD_INFO_SECTION)?;
    if section.size() > MAX_BUILD_INFO {
        return None;
    }
    major_in_build_info(section.data().ok()?)
}

/// The highest `N` in `github.com/containerd/containerd/vN` followed by `/`, a tab or a
/// newline (the path of the main package, or the module among the dependencies).
fn major_in_build_info(info: &[u8]) -> Option<u32> {
    let mut found = None;
    let mut rest = info;
    while let Some(at) = find(rest, MODULE_PREFIX) {
        let after = &rest[at + MODULE_PREFIX.len()..];
        let digits = after
            .iter()
            .take_while(|byte| byte.is_ascii_digit())
            .count();
        let ends_well = matches!(after.get(digits), Some(b'/' | b'\t' | b'\n'));
        if digits > 0 && ends_well {
            let major = std::str::from_utf8(&after[..digits]).ok()?.parse().ok();
            found = found.max(major);
        }
        rest = after;
    }
    found
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_path_tells_2_x_from_1_x() {
        let v2 = b"\xff Go buildinf:\x08\x02...path\tgithub.com/containerd/containerd/v2/cmd/containerd\nbuild\t-compiler=gc\n";
        assert_eq!(major_in_build_info(v2), Some(2));
        let v1 = b"path\tgithub.com/containerd/containerd/cmd/containerd\nbuild\t-compiler=gc\n";
        assert_eq!(major_in_build_info(v1), None);
        // containerd built into another program, as a dependency.
        let embedded = b"path\tgithub.com/k3s-io/k3s\nmod\tgithub.com/k3s-io/k3s\t(devel)\t\ndep\tgithub.com/containerd/containerd/v2\tv2.1.4\th1:x\n";
        assert_eq!(major_in_build_info(embedded), Some(2));
        // A look-alike module is not containerd.
        assert_eq!(
            major_in_build_info(b"dep\tgithub.com/containerd/containerd/vendored\n"),
            None
        );
        assert_eq!(
            major_in_build_info(b"github.com/containerd/containerd/v"),
            None
        );
    }

    #[test]
    fn unreadable_binaries_get_the_answer_every_containerd_accepts() {
        assert_eq!(
            TaskApi::of_containerd(Path::new("/nonexistent")),
            TaskApi::V2
        );
        // Not a Go program.
        assert_eq!(TaskApi::of_containerd(Path::new("/bin/sh")), TaskApi::V2);
        assert_eq!(TaskApi::V2.start_answer("unix:///a"), b"unix:///a");
        let v3: serde_json::Value =
            serde_json::from_slice(&TaskApi::V3.start_answer("unix:///a")).unwrap();
        assert_eq!(v3["version"], 3);
        assert_eq!(v3["address"], "unix:///a");
        assert_eq!(v3["protocol"], "ttrpc");
    }

    /// The containerd binaries the end-to-end tests run, where they are installed.
    #[test]
    fn installed_containerd_releases_are_recognised() {
        for (binary, expected) in [
            ("/usr/bin/containerd", TaskApi::V2),
            (
                "/opt/wedge-test/containerd-1.7/usr/bin/containerd",
                TaskApi::V2,
            ),
            (
                "/opt/wedge-test/containerd-2.1/usr/bin/containerd",
                TaskApi::V3,
            ),
        ] {
            if Path::new(binary).exists() {
                assert_eq!(
                    TaskApi::of_containerd(Path::new(binary)),
                    expected,
                    "{binary}"
                );
            }
        }
    }
}
