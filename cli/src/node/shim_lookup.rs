//! Which shim file a running containerd will start for the runtime. containerd 1.7 and
//! later start the entry's `runtime_path` when it has one; 1.6 ignores that key and looks the
//! shim's name up on its own PATH, then in its own directory. The PATH is read from the
//! containerd process when it can be (hostPID and the privilege to read its environment),
//! else taken to be systemd's default for services.

use std::path::{Path, PathBuf};

use super::target::SHIM_NAME;

/// systemd's PATH for services, which most packaged containerds run with.
pub const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether a containerd of this version (`1.6.20~ds1`, `v2.1.0`) starts `runtime_path`.
pub fn honours_runtime_path(version: &str) -> Option<bool> {
    let mut numbers = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    let major = numbers.next()?.ok()?;
    let minor = numbers.next()?.ok()?;
    Some((major, minor) >= (1, 7))
}

/// A containerd process's PATH and executable, as far as they can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdProcess {
    pub path: Option<String>,
    pub executable: Option<PathBuf>,
}

/// The containerd running on one of `configs` (the same file by its host path and as seen
/// from here), found in one pass over `proc`'s processes by name and by its `--config`/`-c`
/// argument (none: the default /etc/containerd/config.toml).
pub fn find_containerd(proc: &Path, configs: &[PathBuf]) -> Option<ContainerdProcess> {
    let entries = std::fs::read_dir(proc).ok()?;
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "containerd" {
            continue;
        }
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let runs_on_config = config_argument(&args).is_some_and(|config| configs.contains(&config));
        if !runs_on_config {
            continue;
        }
        let path = std::fs::read(dir.join("environ")).ok().and_then(|environ| {
            environ
                .split(|b| *b == 0)
                .find_map(|var| var.strip_prefix(b"PATH="))
                .map(|path| String::from_utf8_lossy(path).into_owned())
        });
        return Some(ContainerdProcess {
            path,
            executable: std::fs::read_link(dir.join("exe")).ok(),
        });
    }
    None
}

fn config_argument(args: &[String]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" || arg == "-c" {
            return args.next().map(PathBuf::from);
        }
        if let Some(value) = arg
            .strip_prefix("--config=")
            .or_else(|| arg.strip_prefix("-c="))
        {
            return Some(PathBuf::from(value));
        }
    }
    Some(PathBuf::from("/etc/containerd/config.toml"))
}

/// The file containerd 1.6 starts for the shim: the first `containerd-shim-wedge-v1` on
/// `search_path`, else beside containerd's executable. `exists` says whether a host path is
/// an executable file.
pub fn looked_up(
    search_path: &str,
    containerd_executable: Option<&Path>,
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let beside = containerd_executable.and_then(Path::parent);
    search_path
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(Path::new)
        .chain(beside)
        .map(|dir| dir.join(SHIM_NAME))
        .find(|candidate| exists(candidate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_1_7_honour_runtime_path() {
        assert_eq!(honours_runtime_path("1.6.20~ds1"), Some(false));
        assert_eq!(honours_runtime_path("v1.7.24"), Some(true));
        assert_eq!(honours_runtime_path("2.1.9+ds1"), Some(true));
        assert_eq!(honours_runtime_path("v1.10.0"), Some(true));
        assert_eq!(honours_runtime_path("devel"), None);
    }

    #[test]
    fn the_config_argument_names_the_containerd() {
        let args = |list: &[&str]| list.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_argument(&args(&["containerd", "--config", "/a.toml"])),
            Some("/a.toml".into())
        );
        assert_eq!(
            config_argument(&args(&["containerd", "-c", "/k3s/config.toml", "-a", "/s"])),
            Some("/k3s/config.toml".into())
        );
        assert_eq!(
            config_argument(&args(&["/usr/bin/containerd"])),
            Some("/etc/containerd/config.toml".into())
        );
    }

    #[test]
    fn the_first_shim_on_path_wins_then_containerd_s_own_directory() {
        let present = [
            PathBuf::from("/usr/bin/containerd-shim-wedge-v1"),
            PathBuf::from("/opt/containerd/bin/containerd-shim-wedge-v1"),
        ];
        let exists = |path: &Path| present.iter().any(|found| found == path);
        assert_eq!(
            looked_up("/usr/local/bin:/usr/bin", None, exists),
            Some("/usr/bin/containerd-shim-wedge-v1".into())
        );
        assert_eq!(
            looked_up(
                "/usr/local/bin",
                Some(Path::new("/opt/containerd/bin/containerd")),
                exists
            ),
            Some("/opt/containerd/bin/containerd-shim-wedge-v1".into())
        );
        assert_eq!(looked_up("/usr/local/bin", None, exists), None);
    }
}
