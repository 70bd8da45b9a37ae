//! Adding and removing the runtime entry in a parsed config (a main config, microk8s'
//! template, or a k3s template that is plain TOML). Everything else in the document keeps its
//! bytes: toml_edit re-emits untouched parts as they were read.

use std::path::Path;

use toml_edit::{DocumentMut, Item, Table};

use super::content::same_item;
use super::entry::{self, Layout, RuntimeSpec};
use super::error::{ContainerdConfigError, Result};
use super::schema::{self, SchemaVersion};

/// What a config says about the runtime name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    Absent,
    /// Marked as added by the installer; `current` when it equals what install would write.
    Ours {
        current: bool,
    },
    /// Defined by someone else; `same` when it equals what install would write.
    Foreign {
        same: bool,
    },
}

pub fn parse(text: &str, path: &Path) -> Result<DocumentMut> {
    text.parse()
        .map_err(|err: toml_edit::TomlError| ContainerdConfigError::Syntax {
            path: path.to_path_buf(),
            message: err.to_string().trim().to_string(),
        })
}

/// The entry install would write into this document.
pub fn desired_entry(doc: &DocumentMut, version: SchemaVersion, spec: &RuntimeSpec) -> Table {
    let runtimes = runtimes(doc, version);
    let neighbour = runtimes
        .and_then(|runtimes| runtimes.get("runc"))
        .and_then(Item::as_table);
    entry::build(
        spec,
        schema::systemd_cgroup(doc, version),
        &Layout::like(neighbour),
    )
}

pub fn entry_state(doc: &DocumentMut, version: SchemaVersion, spec: &RuntimeSpec) -> EntryState {
    let Some(existing) = runtimes(doc, version).and_then(|runtimes| runtimes.get(&spec.name))
    else {
        return EntryState::Absent;
    };
    let same = same_item(existing, &Item::Table(desired_entry(doc, version, spec)));
    match existing.as_table() {
        Some(table) if entry::is_marked(table) => EntryState::Ours { current: same },
        _ => EntryState::Foreign { same },
    }
}

/// Adds (or brings up to date) the entry. Returns whether the document changed.
pub fn install(
    doc: &mut DocumentMut,
    version: SchemaVersion,
    spec: &RuntimeSpec,
    path: &Path,
) -> Result<bool> {
    schema::require_cri(doc, version, path)?;
    let mut desired = desired_entry(doc, version, spec);
    match entry_state(doc, version, spec) {
        EntryState::Ours { current: true } | EntryState::Foreign { same: true } => Ok(false),
        EntryState::Foreign { same: false } => Err(ContainerdConfigError::ConflictingRuntime {
            path: path.to_path_buf(),
            name: spec.name.clone(),
        }),
        state => {
            let runtimes = runtimes_mut(doc, version, path)?;
            if state != EntryState::Absent {
                // An outdated entry of ours: the new one takes its place in the file.
                if let Some(old) = runtimes.get(&spec.name).and_then(Item::as_table) {
                    desired.set_position(old.position());
                }
            }
            runtimes.insert(&spec.name, Item::Table(desired));
            Ok(true)
        }
    }
}

/// Removes the entry if the installer added it, and the header-less parent tables that only
/// existed to hold it. Returns whether the document changed.
pub fn uninstall(doc: &mut DocumentMut, version: SchemaVersion, spec: &RuntimeSpec) -> bool {
    if !matches!(entry_state(doc, version, spec), EntryState::Ours { .. }) {
        return false;
    }
    let path = version.runtimes_path();
    let removed = table_at_mut(doc, &path)
        .and_then(|runtimes| runtimes.remove(&spec.name))
        .is_some();
    for depth in (1..=path.len()).rev() {
        let (parents, [last, ..]) = path.split_at(depth - 1) else {
            break;
        };
        let Some(parent) = table_at_mut(doc, parents) else {
            break;
        };
        let leftover = parent
            .get(last)
            .and_then(Item::as_table)
            .is_some_and(|table| table.is_empty() && table.is_implicit());
        if !leftover {
            break;
        }
        parent.remove(last);
    }
    removed
}

fn table_at_mut<'a>(doc: &'a mut DocumentMut, path: &[&str]) -> Option<&'a mut Table> {
    path.iter().try_fold(doc.as_table_mut(), |table, key| {
        table.get_mut(key).and_then(Item::as_table_mut)
    })
}

fn runtimes(doc: &DocumentMut, version: SchemaVersion) -> Option<&dyn toml_edit::TableLike> {
    version
        .runtimes_path()
        .iter()
        .try_fold(doc.as_item(), |item, key| item.get(key))
        .and_then(Item::as_table_like)
}

/// The runtimes table, created (as implicit tables, which print no header) where missing.
fn runtimes_mut<'a>(
    doc: &'a mut DocumentMut,
    version: SchemaVersion,
    path: &Path,
) -> Result<&'a mut Table> {
    let mut table = doc.as_table_mut();
    let mut walked = Vec::new();
    for key in version.runtimes_path() {
        walked.push(key);
        let item = table.entry(key).or_insert_with(|| {
            let mut implicit = Table::new();
            implicit.set_implicit(true);
            Item::Table(implicit)
        });
        table = item
            .as_table_mut()
            .ok_or_else(|| ContainerdConfigError::NotATable {
                path: path.to_path_buf(),
                key: walked.join("."),
            })?;
    }
    Ok(table)
}
