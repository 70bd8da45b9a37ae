//! The runtime entry Wedge adds under CRI's `containerd.runtimes`, laid out like its
//! neighbours so the patched file still reads as one piece.

use toml_edit::{Array, Item, Table};

use super::schema::SchemaVersion;

/// The line that marks a table (or a block of a template) as written by the installer;
/// uninstall removes only what carries it.
pub const MARKER: &str = "# added by wedge node install";

/// What to register. [`RuntimeSpec::default`] is Wedge's own entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSpec {
    /// The CRI runtime handler (a RuntimeClass's `handler`).
    pub name: String,
    /// containerd's runtime type, which names the shim binary.
    pub runtime_type: String,
    /// Host path of the shim, as `runtime_path`: containerd 1.7 and later start this file
    /// rather than search their PATH for the name the runtime type gives (1.6 ignores it).
    pub runtime_path: Option<String>,
    /// Host path of the engine config, passed to the shim as the `ConfigPath` option.
    pub engine_config_path: String,
    /// Annotation globs passed through to the shim, for pods and containers alike.
    pub annotations: Vec<String>,
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        RuntimeSpec {
            name: "wedge".into(),
            runtime_type: "io.containerd.wedge.v1".into(),
            runtime_path: None,
            engine_config_path: crate::engine::DEFAULT_CONFIG_PATH.into(),
            annotations: vec!["wedge.dev/*".into()],
        }
    }
}

/// Indentation of a runtime table's header and keys, and of its `options` sub-table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// Whitespace (blank lines, indentation) before the runtime table's header.
    pub table_prefix: String,
    pub table_keys: String,
    pub options_prefix: String,
    pub options_keys: String,
}

impl Layout {
    /// Copies the layout of an existing runtime table (normally `runc`).
    pub fn like(neighbour: Option<&Table>) -> Layout {
        let plain = Layout {
            table_prefix: "\n".into(),
            options_prefix: "\n".into(),
            ..Layout::default()
        };
        let Some(table) = neighbour else {
            return plain;
        };
        let options = table.get("options").and_then(Item::as_table);
        Layout {
            table_prefix: whitespace_prefix(table).unwrap_or(plain.table_prefix),
            table_keys: first_key_indent(table).unwrap_or_default(),
            options_prefix: options
                .and_then(whitespace_prefix)
                .unwrap_or(plain.options_prefix),
            options_keys: options.and_then(first_key_indent).unwrap_or_default(),
        }
    }

    /// The indentation of the header line itself (what follows the last newline).
    fn header_indent(&self) -> &str {
        self.table_prefix
            .rsplit('\n')
            .next()
            .unwrap_or(&self.table_prefix)
    }
}

fn whitespace_prefix(table: &Table) -> Option<String> {
    let prefix = table.decor().prefix()?.as_str()?;
    prefix
        .chars()
        .all(char::is_whitespace)
        .then(|| prefix.to_string())
}

fn first_key_indent(table: &Table) -> Option<String> {
    let (key, _) = table.iter().find(|(_, item)| item.is_value())?;
    let prefix = table.key(key)?.leaf_decor().prefix()?.as_str()?;
    prefix
        .chars()
        .all(|c| c == ' ' || c == '\t')
        .then(|| prefix.to_string())
}

/// The entry as it should be: `runtime_type`, annotations, and `options` with the engine
/// config path and, when the node's runc says, its cgroup driver.
/// Adds the runtime's table to a document of its own (a drop-in, a template block) at the
/// schema's runtimes path. Built from the leaf up: the table inside implicit parents, which
/// print no header of their own.
pub fn insert_nested(
    doc: &mut toml_edit::DocumentMut,
    version: SchemaVersion,
    spec: &RuntimeSpec,
    systemd_cgroup: Option<bool>,
    layout: &Layout,
) {
    let mut item = Item::Table(build(spec, systemd_cgroup, layout));
    let mut name = spec.name.as_str();
    for key in version.runtimes_path().into_iter().rev() {
        let mut parent = Table::new();
        parent.set_implicit(true);
        parent.insert(name, item);
        item = Item::Table(parent);
        name = key;
    }
    doc.insert(name, item);
}

pub fn build(spec: &RuntimeSpec, systemd_cgroup: Option<bool>, layout: &Layout) -> Table {
    let annotations = || {
        let mut array = Array::new();
        for glob in &spec.annotations {
            array.push(glob.as_str());
        }
        toml_edit::value(array)
    };
    let mut entry = Table::new();
    entry.insert("runtime_type", toml_edit::value(&spec.runtime_type));
    if let Some(path) = &spec.runtime_path {
        entry.insert("runtime_path", toml_edit::value(path));
    }
    entry.insert("pod_annotations", annotations());
    entry.insert("container_annotations", annotations());
    indent_keys(&mut entry, &layout.table_keys);

    let mut options = Table::new();
    options.insert("ConfigPath", toml_edit::value(&spec.engine_config_path));
    if let Some(systemd) = systemd_cgroup {
        options.insert("SystemdCgroup", toml_edit::value(systemd));
    }
    indent_keys(&mut options, &layout.options_keys);
    options
        .decor_mut()
        .set_prefix(layout.options_prefix.clone());

    entry.insert("options", Item::Table(options));
    let indent = layout.header_indent();
    let before_header = layout
        .table_prefix
        .strip_suffix(indent)
        .unwrap_or(&layout.table_prefix);
    entry
        .decor_mut()
        .set_prefix(format!("{before_header}{indent}{MARKER}\n{indent}"));
    entry
}

fn indent_keys(table: &mut Table, indent: &str) {
    let keys: Vec<String> = table.iter().map(|(key, _)| key.to_string()).collect();
    for key in keys {
        if let Some(mut key) = table.key_mut(&key) {
            key.leaf_decor_mut().set_prefix(indent);
        }
    }
}

/// Whether a table carries the installer's marker in the comment above its header.
pub fn is_marked(table: &Table) -> bool {
    table
        .decor()
        .prefix()
        .and_then(|prefix| prefix.as_str())
        .is_some_and(|prefix| prefix.lines().any(|line| line.trim() == MARKER))
}
