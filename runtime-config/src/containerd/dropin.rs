//! containerd 2.x merges the files its `imports` name into the main config (maps such as
//! `runtimes` are merged key by key), so on such a node the runtime gets a file of its own
//! and the main config is not touched.

use std::path::{Path, PathBuf};

use toml_edit::DocumentMut;

use super::entry::{self, Layout, RuntimeSpec};
use super::host::HostRoot;
use super::schema::SchemaVersion;

/// First line of a drop-in the installer wrote; uninstall deletes only such a file.
pub const HEADER: &str = "# written by wedge node install: the wedge runtime for containerd's CRI";

/// Where to put the drop-in for `config` (seen below `root`): in the directory of the first
/// import that is a glob over file names (`/etc/containerd/conf.d/*.toml`), named so the glob
/// matches it. `None` when no import is such a glob.
pub fn target(root: &HostRoot, config: &Path, imports: &[String]) -> Option<PathBuf> {
    let config_dir = root.host_view(config).parent()?.to_path_buf();
    imports.iter().find_map(|import| {
        let import = Path::new(import);
        let pattern = import.file_name()?.to_str()?;
        let dir = import.parent()?;
        let dir_is_plain = !dir.to_string_lossy().contains(['*', '?', '[']);
        let (prefix, suffix) = pattern.split_once('*')?;
        if !dir_is_plain || suffix.contains(['*', '?', '[']) || prefix.contains(['?', '[']) {
            return None;
        }
        let suffix = if suffix.is_empty() { ".toml" } else { suffix };
        // containerd reads relative imports from the main config's directory.
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            config_dir.join(dir)
        };
        Some(root.resolve(dir.join(format!("{prefix}wedge{suffix}"))))
    })
}

/// The whole drop-in: a version 3 config holding only the runtime.
pub fn contents(spec: &RuntimeSpec, systemd_cgroup: Option<bool>) -> String {
    contents_for(SchemaVersion::V3, spec, systemd_cgroup)
}

/// A drop-in in the schema of `version`: k0s merges its drop-ins into a CRI config of the
/// version its containerd reads (2 for containerd 1.x, 3 for 2.x).
pub fn contents_for(
    version: SchemaVersion,
    spec: &RuntimeSpec,
    systemd_cgroup: Option<bool>,
) -> String {
    let layout = Layout {
        table_prefix: "\n".into(),
        table_keys: "  ".into(),
        options_prefix: "\n".into(),
        options_keys: "  ".into(),
    };
    let mut doc = DocumentMut::new();
    doc.insert("version", toml_edit::value(version.number()));
    entry::insert_nested(&mut doc, version, spec, systemd_cgroup, &layout);
    format!("{HEADER}\n{doc}")
}

pub fn is_ours(text: &str) -> bool {
    text.lines().next() == Some(HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imports(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn glob_directory_gets_the_file() {
        let root = HostRoot::new("/host");
        let config = Path::new("/host/etc/containerd/config.toml");
        assert_eq!(
            target(&root, config, &imports(&["/etc/containerd/conf.d/*.toml"])),
            Some(PathBuf::from("/host/etc/containerd/conf.d/wedge.toml"))
        );
        assert_eq!(
            target(&root, config, &imports(&["conf.d/*"])),
            Some(PathBuf::from("/host/etc/containerd/conf.d/wedge.toml"))
        );
    }

    #[test]
    fn plain_files_and_directory_globs_are_not_targets() {
        let root = HostRoot::new("/");
        let config = Path::new("/etc/containerd/config.toml");
        assert_eq!(target(&root, config, &imports(&["/etc/a.toml"])), None);
        assert_eq!(target(&root, config, &imports(&["/etc/*/a*.toml"])), None);
    }

    #[test]
    fn a_version_2_drop_in_uses_the_cri_plugin_of_containerd_1() {
        let text = contents_for(SchemaVersion::V2, &RuntimeSpec::default(), None);
        assert!(is_ours(&text));
        let doc: DocumentMut = text.parse().unwrap();
        assert_eq!(doc["version"].as_integer(), Some(2));
        let entry = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["wedge"];
        assert_eq!(
            entry["runtime_type"].as_str(),
            Some("io.containerd.wedge.v1")
        );
    }

    #[test]
    fn contents_are_a_version_3_config() {
        let text = contents(&RuntimeSpec::default(), Some(true));
        assert!(is_ours(&text));
        let doc: DocumentMut = text.parse().unwrap();
        assert_eq!(doc["version"].as_integer(), Some(3));
        let entry =
            &doc["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["wedge"];
        assert_eq!(
            entry["runtime_type"].as_str(),
            Some("io.containerd.wedge.v1")
        );
        assert_eq!(entry["options"]["SystemdCgroup"].as_bool(), Some(true));
    }
}
