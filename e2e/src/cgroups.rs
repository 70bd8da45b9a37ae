//! Where a process sits in the v1 cgroup hierarchies, as tests look it up.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// `pid`'s cgroup in the v1 hierarchy of `controller`, as `/proc/<pid>/cgroup` says it
/// (absolute within the hierarchy).
pub fn of(pid: i32, controller: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|name| name == controller)
                .then(|| PathBuf::from(path))
        })
        .with_context(|| format!("{pid} has no {controller} cgroup:\n{text}"))
}

/// The directory of `pid`'s cgroup in the v1 hierarchy of `controller`.
pub fn dir(pid: i32, controller: &str) -> Result<PathBuf> {
    let path = of(pid, controller)?;
    let mount = std::fs::read_dir("/sys/fs/cgroup")?
        .flatten()
        .map(|entry| entry.path())
        .find(|dir| {
            dir.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.split(',').any(|part| part == controller))
        })
        .with_context(|| format!("no {controller} hierarchy mounted"))?;
    Ok(mount.join(path.strip_prefix("/").unwrap_or(&path)))
}
