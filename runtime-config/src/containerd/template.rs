//! k3s and rke2 write containerd's config.toml afresh at every start, from their built-in
//! template or, when present, from `config.toml.tmpl` (`config-v3.toml.tmpl` for containerd
//! 2.x) beside it. Such a template is a Go text/template; since September 2023 releases it can
//! start with `{{ template "base" . }}`, which renders the built-in config, and add tables
//! after it. So the runtime goes into the template: appended as a marked block when the
//! template uses Go actions, patched as TOML when it is plain TOML, or in a new template made
//! of the base plus the block.

use std::path::{Path, PathBuf};

use toml_edit::DocumentMut;

use super::entry::{self, Layout, RuntimeSpec, MARKER};
use super::schema::SchemaVersion;

/// A template that renders exactly k3s' own config.
pub const BASE_ONLY: &str = "{{ template \"base\" . }}\n";

/// Closes the block the installer appends to a Go template.
pub const END_MARKER: &str = "# end of what wedge node install added";

/// The template k3s reads for a generated config of `version`, in `dir`: for containerd 2.x
/// `config-v3.toml.tmpl`, falling back (as k3s does) to an existing `config.toml.tmpl`.
pub fn path_for(dir: &Path, version: SchemaVersion) -> PathBuf {
    let v2 = dir.join("config.toml.tmpl");
    if version != SchemaVersion::V3 {
        return v2;
    }
    let v3 = dir.join("config-v3.toml.tmpl");
    if !v3.exists() && v2.exists() {
        return v2;
    }
    v3
}

/// Whether a template uses Go actions (and so cannot be read as TOML).
pub fn is_go_template(text: &str) -> bool {
    text.contains("{{")
}

/// The block appended to a Go template: the runtime's tables, between marker lines.
pub fn block(spec: &RuntimeSpec, version: SchemaVersion, systemd_cgroup: Option<bool>) -> String {
    let layout = Layout {
        table_prefix: String::new(),
        table_keys: "  ".into(),
        options_prefix: String::new(),
        options_keys: "  ".into(),
    };
    let mut doc = DocumentMut::new();
    entry::insert_nested(&mut doc, version, spec, systemd_cgroup, &layout);
    format!("{}{END_MARKER}\n", doc)
}

/// Appends `block` after one blank line.
pub fn append(text: &str, block: &str) -> String {
    let separator = if text.is_empty() || text.ends_with("\n\n") {
        ""
    } else if text.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    format!("{text}{separator}{block}")
}

/// The installer's block, as it stands in `text`: its byte range including the blank line
/// before it.
pub fn find_block(text: &str) -> Option<std::ops::Range<usize>> {
    let mut offset = 0;
    let mut start = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if start.is_none() && trimmed == MARKER {
            start = Some(offset);
        } else if let (Some(begin), true) = (start, trimmed == END_MARKER) {
            let end = offset + line.len();
            let begin = if text[..begin].ends_with("\n\n") {
                begin - 1
            } else {
                begin
            };
            return Some(begin..end);
        }
        offset += line.len();
    }
    None
}

/// Whether the template, outside the installer's block, defines a runtime called `name`
/// (a table header ending in `containerd.runtimes.<name>`, however quoted).
pub fn defines_runtime(text: &str, name: &str) -> bool {
    let outside = match find_block(text) {
        Some(range) => format!("{}{}", &text[..range.start], &text[range.end..]),
        None => text.to_string(),
    };
    let wanted = format!("containerd.runtimes.{name}");
    outside.lines().any(|line| {
        let line = line.trim();
        let Some(header) = line.strip_prefix('[').and_then(|h| h.strip_suffix(']')) else {
            return false;
        };
        let plain: String = header
            .chars()
            .filter(|c| !matches!(c, '"' | '\'' | ' ' | '\t'))
            .collect();
        plain.ends_with(&wanted)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_found_with_its_blank_line() {
        let spec = RuntimeSpec::default();
        let block = block(&spec, SchemaVersion::V2, Some(true));
        let text = append(BASE_ONLY, &block);
        let range = find_block(&text).unwrap();
        assert_eq!(&text[..range.start], BASE_ONLY);
        assert_eq!(range.end, text.len());
    }

    #[test]
    fn finds_runtime_headers_however_quoted() {
        let text = "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.'wedge']\n";
        assert!(defines_runtime(text, "wedge"));
        assert!(!defines_runtime(text, "runc"));
    }
}
