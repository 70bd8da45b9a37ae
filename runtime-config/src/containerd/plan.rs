//! Install and uninstall as a list of file changes computed before anything is written: a
//! refusal leaves every file as it was, `--dry-run` prints the changes as a diff, and
//! [`Plan::apply`] writes them.

use std::path::{Path, PathBuf};

use super::atomic;
use super::diff;
use super::document::{self, EntryState};
use super::dropin;
use super::entry::RuntimeSpec;
use super::error::{ContainerdConfigError, Result};
use super::flavour::Location;
use super::schema::{self, SchemaVersion};
use super::template;

/// Appended to a config's name for the copy of it taken before the first change.
pub const BACKUP_SUFFIX: &str = ".wedge-backup";

/// What happens to a changed file's backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backup {
    /// Leave any backup as it is.
    Keep,
    /// Copy the file's current bytes to the backup unless a backup already exists: the
    /// backup is always the config as it was before the first install.
    WriteOnce,
    /// The file is being restored to the backup's bytes; the backup goes.
    Remove,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The file as seen from here (below the host root).
    pub path: PathBuf,
    /// The host's name for it, for messages and diffs.
    pub host_path: PathBuf,
    /// Contents expected now; `None`: the file does not exist.
    pub before: Option<String>,
    /// Contents to write; `None`: delete the file.
    pub after: Option<String>,
    pub backup: Backup,
}

impl FileChange {
    pub fn backup_path(&self) -> PathBuf {
        with_suffix(&self.path, BACKUP_SUFFIX)
    }
}

/// The changes one command makes; empty when the node is already as asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<FileChange>,
}

impl FromIterator<FileChange> for Plan {
    fn from_iter<I: IntoIterator<Item = FileChange>>(changes: I) -> Self {
        Plan {
            changes: changes.into_iter().collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    /// Host paths of the files written or removed.
    Changed(Vec<PathBuf>),
}

impl Plan {
    pub fn is_unchanged(&self) -> bool {
        self.changes.is_empty()
    }

    /// A unified diff of every change, host paths as labels.
    pub fn diff(&self) -> String {
        self.changes
            .iter()
            .map(|change| {
                let label = change.host_path.to_string_lossy();
                diff::unified(
                    label.trim_start_matches('/'),
                    change.before.as_deref(),
                    change.after.as_deref(),
                )
            })
            .collect()
    }

    /// Writes the changes, each file atomically. A file that no longer holds what the plan
    /// was computed from is refused (someone else is editing it).
    pub fn apply(&self) -> Result<Outcome> {
        if self.is_unchanged() {
            return Ok(Outcome::Unchanged);
        }
        for change in &self.changes {
            if atomic::read_optional(&change.path)? != change.before {
                return Err(ContainerdConfigError::ChangedMeanwhile {
                    path: change.path.clone(),
                });
            }
        }
        for change in &self.changes {
            let backup = change.backup_path();
            if let (Backup::WriteOnce, Some(before)) = (change.backup, &change.before) {
                if atomic::read_optional(&backup)?.is_none() {
                    atomic::write(&backup, before.as_bytes(), &change.path)?;
                }
            }
            match &change.after {
                Some(after) => atomic::write(&change.path, after.as_bytes(), &change.path)?,
                None => atomic::remove(&change.path)?,
            }
            if change.backup == Backup::Remove {
                atomic::remove(&backup)?;
            }
        }
        Ok(Outcome::Changed(
            self.changes
                .iter()
                .map(|change| change.host_path.clone())
                .collect(),
        ))
    }
}

pub fn plan_install(location: &Location, spec: &RuntimeSpec) -> Result<Plan> {
    if location.flavour.uses_k3s_templates() {
        return install_into_template(location, spec);
    }
    if let Some((target, version)) = k0s_dropin(location)? {
        return install_dropin_of(location, &target, version, spec, None);
    }
    install_into_config(location, spec)
}

pub fn plan_uninstall(location: &Location, spec: &RuntimeSpec) -> Result<Plan> {
    if location.flavour.uses_k3s_templates() {
        return uninstall_from_template(location, spec);
    }
    if let Some((target, _)) = k0s_dropin(location)? {
        return Ok(match atomic::read_optional(&target)? {
            Some(text) if dropin::is_ours(&text) => Plan {
                changes: vec![change(location, &target, Some(text), None, Backup::Keep)],
            },
            _ => Plan::default(),
        });
    }
    uninstall_from_config(location, spec)
}

/// The first line of a containerd config k0s writes and owns; it regenerates such a file,
/// so the runtime goes into a drop-in it merges instead.
pub const K0S_MANAGED_MARK: &str = "# k0s_managed=true";

/// On a k0s node whose containerd config k0s manages: the drop-in (`containerd.d/wedge.toml`
/// beside the config) and the schema version it must be written in. A config the user has
/// taken over (no mark) is patched like any other.
pub(super) fn k0s_dropin(location: &Location) -> Result<Option<(PathBuf, SchemaVersion)>> {
    if location.flavour != super::flavour::Flavour::K0s {
        return Ok(None);
    }
    let config = Config::read(&location.config)?;
    if !config
        .text
        .lines()
        .any(|line| line.trim() == K0S_MANAGED_MARK)
    {
        return Ok(None);
    }
    let dir = location.config.parent().unwrap_or(Path::new("/"));
    Ok(Some((
        dir.join("containerd.d").join("wedge.toml"),
        config.version,
    )))
}

/// A config file read and parsed.
pub(super) struct Config {
    pub(super) text: String,
    pub(super) doc: toml_edit::DocumentMut,
    pub(super) version: SchemaVersion,
}

impl Config {
    pub(super) fn read(path: &Path) -> Result<Self> {
        Self::parse(atomic::read(path)?, path)
    }

    fn parse(text: String, path: &Path) -> Result<Self> {
        let doc = document::parse(&text, path)?;
        let version = SchemaVersion::of(&doc, path)?;
        Ok(Config { text, doc, version })
    }
}

fn change(
    location: &Location,
    path: &Path,
    before: Option<String>,
    after: Option<String>,
    backup: Backup,
) -> FileChange {
    FileChange {
        path: path.to_path_buf(),
        host_path: location.root.host_view(path),
        before,
        after,
        backup,
    }
}

pub(super) fn dropin_target(location: &Location, config: &Config) -> Option<PathBuf> {
    dropin::target(
        &location.root,
        &location.config,
        &schema::imports(&config.doc),
    )
}

fn install_into_config(location: &Location, spec: &RuntimeSpec) -> Result<Plan> {
    let path = &location.config;
    let mut config = Config::read(path)?;
    let absent = document::entry_state(&config.doc, config.version, spec) == EntryState::Absent;
    if config.version == SchemaVersion::V3 && absent {
        if let Some(target) = dropin_target(location, &config) {
            schema::refuse_disabled_cri(&config.doc, config.version, path)?;
            let systemd = schema::systemd_cgroup(&config.doc, config.version);
            return install_dropin(location, &target, spec, systemd);
        }
    }
    Ok(patch_document(location, path, &mut config, spec)?
        .into_iter()
        .collect())
}

/// The change that adds the entry to a parsed config, if it is not there already.
fn patch_document(
    location: &Location,
    path: &Path,
    config: &mut Config,
    spec: &RuntimeSpec,
) -> Result<Option<FileChange>> {
    if !document::install(&mut config.doc, config.version, spec, path)? {
        return Ok(None);
    }
    Ok(Some(change(
        location,
        path,
        Some(config.text.clone()),
        Some(config.doc.to_string()),
        Backup::WriteOnce,
    )))
}

fn install_dropin(
    location: &Location,
    target: &Path,
    spec: &RuntimeSpec,
    systemd_cgroup: Option<bool>,
) -> Result<Plan> {
    install_dropin_of(location, target, SchemaVersion::V3, spec, systemd_cgroup)
}

fn install_dropin_of(
    location: &Location,
    target: &Path,
    version: SchemaVersion,
    spec: &RuntimeSpec,
    systemd_cgroup: Option<bool>,
) -> Result<Plan> {
    let desired = dropin::contents_for(version, spec, systemd_cgroup);
    match atomic::read_optional(target)? {
        Some(text) if text == desired => Ok(Plan::default()),
        Some(text) if !dropin::is_ours(&text) => Err(ContainerdConfigError::ForeignFile {
            path: target.to_path_buf(),
        }),
        before => Ok(Plan {
            changes: vec![change(
                location,
                target,
                before,
                Some(desired),
                Backup::Keep,
            )],
        }),
    }
}

fn uninstall_from_config(location: &Location, spec: &RuntimeSpec) -> Result<Plan> {
    let path = &location.config;
    let mut config = Config::read(path)?;
    let mut plan = Plan::default();
    if config.version == SchemaVersion::V3 {
        if let Some(target) = dropin_target(location, &config) {
            if let Some(text) = atomic::read_optional(&target)? {
                if dropin::is_ours(&text) {
                    plan.changes
                        .push(change(location, &target, Some(text), None, Backup::Keep));
                }
            }
        }
    }
    if document::uninstall(&mut config.doc, config.version, spec) {
        plan.changes.push(restore(location, path, config)?);
    }
    Ok(plan)
}

/// The change back to the config without the entry: the backup's exact bytes when the
/// result differs from the backup in whitespace at most (nobody else changed the file), else
/// the result, which keeps everyone else's edits.
fn restore(location: &Location, path: &Path, config: Config) -> Result<FileChange> {
    let after = config.doc.to_string();
    let backup = atomic::read_optional(&with_suffix(path, BACKUP_SUFFIX))?;
    Ok(match backup {
        Some(original) if same_but_whitespace(&original, &after) => change(
            location,
            path,
            Some(config.text),
            Some(original),
            Backup::Remove,
        ),
        _ => change(location, path, Some(config.text), Some(after), Backup::Keep),
    })
}

fn same_but_whitespace(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

pub(super) fn template_path(location: &Location, version: SchemaVersion) -> PathBuf {
    let dir = location.config.parent().unwrap_or(Path::new("/"));
    template::path_for(dir, version)
}

fn install_into_template(location: &Location, spec: &RuntimeSpec) -> Result<Plan> {
    let generated = Config::read(&location.config)?;
    schema::require_cri(&generated.doc, generated.version, &location.config)?;
    let path = template_path(location, generated.version);
    let systemd = schema::systemd_cgroup(&generated.doc, generated.version);
    let block = template::block(spec, generated.version, systemd);
    let Some(text) = atomic::read_optional(&path)? else {
        let created = template::append(template::BASE_ONLY, &block);
        return Ok(Plan {
            changes: vec![change(location, &path, None, Some(created), Backup::Keep)],
        });
    };
    if !template::is_go_template(&text) {
        let mut config = Config::parse(text, &path)?;
        return Ok(patch_document(location, &path, &mut config, spec)?
            .into_iter()
            .collect());
    }
    let after = match template::find_block(&text) {
        Some(range) if text[range.clone()].trim_start_matches('\n') == block => {
            return Ok(Plan::default())
        }
        // An older block of ours: replaced, at the end.
        Some(range) => template::append(
            &format!("{}{}", &text[..range.start], &text[range.end..]),
            &block,
        ),
        None if template::defines_runtime(&text, &spec.name) => {
            return Err(ContainerdConfigError::ConflictingRuntime {
                path: path.clone(),
                name: spec.name.clone(),
            })
        }
        None => template::append(&text, &block),
    };
    Ok(Plan {
        changes: vec![change(
            location,
            &path,
            Some(text),
            Some(after),
            Backup::WriteOnce,
        )],
    })
}

fn uninstall_from_template(location: &Location, spec: &RuntimeSpec) -> Result<Plan> {
    let generated = Config::read(&location.config)?;
    let path = template_path(location, generated.version);
    let Some(text) = atomic::read_optional(&path)? else {
        return Ok(Plan::default());
    };
    if !template::is_go_template(&text) {
        let mut config = Config::parse(text, &path)?;
        let mut plan = Plan::default();
        if document::uninstall(&mut config.doc, config.version, spec) {
            plan.changes.push(restore(location, &path, config)?);
        }
        return Ok(plan);
    }
    let Some(range) = template::find_block(&text) else {
        return Ok(Plan::default());
    };
    let remaining = format!("{}{}", &text[..range.start], &text[range.end..]);
    let backup = atomic::read_optional(&with_suffix(&path, BACKUP_SUFFIX))?;
    let (after, backup_action) = match backup {
        Some(original) if same_but_whitespace(&original, &remaining) => {
            (Some(original), Backup::Remove)
        }
        // The installer made this template; nothing but the base is left of it.
        None if remaining == template::BASE_ONLY => (None, Backup::Keep),
        _ => (Some(remaining), Backup::Keep),
    };
    Ok(Plan {
        changes: vec![change(location, &path, Some(text), after, backup_action)],
    })
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}
