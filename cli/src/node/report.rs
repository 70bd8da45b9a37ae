//! `wedge node status` and `wedge doctor`: what the node looks like to Wedge, and every
//! problem found with what to do about it.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use wedge_runtime_config::containerd::{inspect, EntryState, Location, Registration};
use wedge_runtime_config::trusted_path::{self, Leaf};
use wedge_runtime_config::{cgroup_driver, EngineConfig};

use super::cgroup::{self, CgroupVersion};
use super::containerd_api;
use super::files;
use super::shim_lookup;
use super::target::NodeTarget;

/// Where runc is looked for on the host (containerd's own PATH on common distributions).
const HOST_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// The state `wedge node status --expect` checks the node against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Installed,
    Uninstalled,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::Installed => "installed",
            Expected::Uninstalled => "uninstalled",
        })
    }
}

/// What containerd's running CRI plugin says about the runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CriListing {
    /// containerd was not asked (its config could not be read), did not answer, or its CRI
    /// plugin did not.
    #[default]
    Unknown,
    Listed,
    NotListed,
}

/// Where Wedge's own pieces were found: what `--expect` decides on.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// The runtime's entry in containerd's config; `None` when the config could not be read.
    pub registration: Option<Registration>,
    pub cri: CriListing,
    /// The shim's host path, when a file is there.
    pub shim: Option<PathBuf>,
}

#[derive(Debug, Default)]
pub struct NodeReport {
    /// (topic, finding), in the order found.
    pub facts: Vec<(&'static str, String)>,
    pub problems: Vec<Problem>,
    pub presence: Presence,
    /// The runtime (CRI handler) the report is about.
    pub runtime: String,
}

impl NodeReport {
    fn fact(&mut self, topic: &'static str, finding: impl Into<String>) {
        self.facts.push((topic, finding.into()));
    }

    fn problem(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem {
            what: what.into(),
            fix: fix.into(),
        });
    }

    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }

    /// Why the node is not in the `expected` state; empty when it is.
    ///
    /// Installed: no problem at all and containerd's CRI plugin lists the runtime.
    /// Uninstalled: the runtime is in neither containerd's config nor its CRI plugin and the
    /// shim is gone. The problems an uninstalled node has by design (runtime not registered,
    /// shim missing) do not count, and neither do those that only matter to a node running
    /// Wedge (runc, cgroups, the engine config, which uninstall leaves in place); what could
    /// not be checked (containerd's config, containerd itself) does.
    pub fn mismatches(&self, expected: Expected) -> Vec<String> {
        let name = &self.runtime;
        let presence = &self.presence;
        let mut reasons = Vec::new();
        match expected {
            Expected::Installed => {
                reasons.extend(self.problems.iter().map(|problem| problem.what.clone()));
                if presence.cri == CriListing::Unknown {
                    reasons.push(format!(
                        "containerd's CRI plugin did not confirm that it lists runtime {name:?}"
                    ));
                }
            }
            Expected::Uninstalled => {
                match &presence.registration {
                    None => reasons.push(format!(
                        "cannot tell whether containerd's config registers runtime {name:?}: \
                         it could not be read (see the problems above)"
                    )),
                    Some(registration) => {
                        let file = registration.file.display();
                        match registration.state {
                            EntryState::Absent => {}
                            EntryState::Ours { .. } => reasons
                                .push(format!("runtime {name:?} is still registered in {file}")),
                            EntryState::Foreign { .. } => reasons.push(format!(
                                "runtime {name:?} is registered in {file}, not by wedge \
                                 (uninstall leaves it): remove it by hand"
                            )),
                        }
                        if registration.state == EntryState::Absent
                            && registration.in_effective_config
                        {
                            reasons.push(format!(
                                "the config containerd reads still names runtime {name:?}: \
                                 restart containerd so it is regenerated"
                            ));
                        }
                    }
                }
                match presence.cri {
                    CriListing::NotListed => {}
                    CriListing::Listed => reasons.push(format!(
                        "containerd's CRI plugin still lists runtime {name:?}: restart \
                         containerd so it rereads its config"
                    )),
                    CriListing::Unknown => reasons.push(format!(
                        "containerd's CRI plugin did not confirm that runtime {name:?} is gone"
                    )),
                }
                if let Some(shim) = &presence.shim {
                    reasons.push(format!("the shim {} is still there", shim.display()));
                }
            }
        }
        reasons
    }
}

impl fmt::Display for NodeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .facts
            .iter()
            .map(|(topic, _)| topic.len())
            .max()
            .unwrap_or(0);
        for (topic, finding) in &self.facts {
            writeln!(f, "{topic:width$}  {finding}")?;
        }
        if self.problems.is_empty() {
            return writeln!(f, "no problems found");
        }
        writeln!(f, "problems:")?;
        for problem in &self.problems {
            writeln!(f, "  - {}\n    fix: {}", problem.what, problem.fix)?;
        }
        Ok(())
    }
}

pub async fn gather(target: &NodeTarget) -> NodeReport {
    let mut report = NodeReport {
        runtime: target.runtime_name.clone(),
        ..NodeReport::default()
    };
    let spec = target.spec();
    let location = match target.locate() {
        Ok(location) => Some(location),
        Err(err) => {
            report.problem(
                err.to_string(),
                "pass --containerd-config PATH (and --flavour) for a config in another place",
            );
            None
        }
    };
    let registration = location.as_ref().and_then(|location| {
        report.fact(
            "containerd config",
            format!(
                "{} (flavour {})",
                location.root.host_view(&location.config).display(),
                location.flavour
            ),
        );
        match inspect(location, &spec) {
            Ok(registration) => Some(registration),
            Err(err) => {
                report.problem(err.to_string(), "fix the config by hand, then run again");
                None
            }
        }
    });
    if let (Some(location), Some(registration)) = (&location, &registration) {
        describe_registration(&mut report, location, registration, &spec.name);
        containerd_state(&mut report, target, location, registration).await;
    }
    report.presence.registration = registration.clone();
    cgroups(&mut report, target, registration.as_ref());
    runc(&mut report, target);
    shim(&mut report, target);
    engine_config(&mut report, target);
    report
}

fn describe_registration(
    report: &mut NodeReport,
    location: &Location,
    registration: &Registration,
    name: &str,
) {
    report.fact("config version", registration.version.number().to_string());
    let file = registration.file.display();
    let state = match registration.state {
        EntryState::Absent => {
            report.problem(
                format!("runtime {name:?} is not registered in {file}"),
                "run `wedge node install`",
            );
            "not registered".to_string()
        }
        EntryState::Ours { current: true } => "registered by wedge".to_string(),
        EntryState::Ours { current: false } => {
            report.problem(
                format!("the {name:?} entry in {file} is from another wedge version or edited"),
                "run `wedge node install` to bring it up to date",
            );
            "registered by wedge, outdated".to_string()
        }
        EntryState::Foreign { same: true } => "registered (not by wedge), as wedge would".into(),
        EntryState::Foreign { same: false } => {
            report.problem(
                format!("runtime {name:?} in {file} was defined by someone else, differently"),
                "remove it or install under another --runtime-class",
            );
            "defined differently by someone else".to_string()
        }
    };
    report.fact("runtime in config", format!("{state} ({file})"));
    if location.flavour.uses_k3s_templates()
        && registration.state != EntryState::Absent
        && !registration.in_effective_config
    {
        report.problem(
            format!(
                "{} has not regenerated its containerd config from the template yet",
                location.flavour
            ),
            format!("restart {}", location.flavour.services().join(" or ")),
        );
    }
}

async fn containerd_state(
    report: &mut NodeReport,
    target: &NodeTarget,
    location: &Location,
    registration: &Registration,
) {
    let socket = containerd_api::socket_path(
        &target.root,
        registration.socket.as_deref(),
        location.flavour.default_socket(),
    );
    report.fact(
        "containerd socket",
        target.root.host_view(&socket).display().to_string(),
    );
    match containerd_api::query(&socket, &target.runtime_name).await {
        Ok(info) => {
            report.fact(
                "containerd version",
                format!("{} ({})", info.version, info.revision),
            );
            report.presence.cri = match info.runtime_registered {
                Some(true) => CriListing::Listed,
                Some(false) => CriListing::NotListed,
                None => CriListing::Unknown,
            };
            let registered = match info.runtime_registered {
                Some(true) => "yes",
                Some(false) => {
                    report.problem(
                        format!(
                            "containerd's CRI plugin does not list runtime {:?}",
                            target.runtime_name
                        ),
                        format!(
                            "restart containerd ({}) so it reads its config",
                            location.flavour.services().join(" or ")
                        ),
                    );
                    "no"
                }
                None => "unknown (CRI did not answer Status)",
            };
            report.fact("runtime in CRI", registered);
            shim_resolution(report, target, location, &info.version);
        }
        Err(err) => report.problem(
            err.to_string(),
            "check that containerd runs and that the socket path is right",
        ),
    }
}

/// Whether the containerd that answered starts the installed shim: through the entry's
/// `runtime_path` (1.7 and later), or by looking the name up on its PATH (1.6).
fn shim_resolution(
    report: &mut NodeReport,
    target: &NodeTarget,
    location: &Location,
    version: &str,
) {
    let installed = target.shim_path();
    let shown = target.root.host_view(&installed).display().to_string();
    if shim_lookup::honours_runtime_path(version) == Some(true) {
        report.fact("shim containerd starts", format!("{shown} (runtime_path)"));
        return;
    }
    let process = shim_lookup::find_containerd(
        Path::new("/proc"),
        &[
            location.root.host_view(&location.config),
            location.config.clone(),
        ],
    );
    let (search_path, source) = match process.as_ref().and_then(|found| found.path.clone()) {
        Some(path) => (path, "its environment"),
        None => (
            shim_lookup::SERVICE_PATH.to_string(),
            "assumed, systemd's default: its environment could not be read",
        ),
    };
    let executable = process.and_then(|found| found.executable);
    let found = shim_lookup::looked_up(&search_path, executable.as_deref(), |path| {
        is_executable(&target.root.resolve(path))
    });
    let ignores = format!("containerd {version} ignores runtime_path and looks the shim up on its PATH ({source}: {search_path})");
    let fix = "install with --shim-dest set to a directory on containerd's PATH (such as \
               /usr/local/bin), or upgrade containerd to 1.7 or later, which starts runtime_path";
    match found {
        Some(path) if target.root.resolve(&path) == installed => {
            report.fact(
                "shim containerd starts",
                format!("{shown} (found on its PATH)"),
            );
        }
        Some(path) => {
            report.fact(
                "shim containerd starts",
                format!("{} (not the installed one)", path.display()),
            );
            report.problem(
                format!(
                    "{ignores}, where it finds {} before the installed {shown}",
                    path.display()
                ),
                fix,
            );
        }
        None => {
            report.fact("shim containerd starts", "none: containerd cannot find it");
            report.problem(
                format!(
                    "{ignores}, where there is no {}; the installed {shown} is not on it",
                    super::SHIM_NAME
                ),
                fix,
            );
        }
    }
}

fn cgroups(report: &mut NodeReport, target: &NodeTarget, registration: Option<&Registration>) {
    let mountinfo = std::fs::read_to_string(target.root.resolve("/proc/self/mountinfo"))
        .or_else(|_| std::fs::read_to_string("/proc/self/mountinfo"))
        .unwrap_or_default();
    let version = cgroup::from_mountinfo(&mountinfo);
    report.fact("cgroup version", version.to_string());
    if version == CgroupVersion::Unknown {
        report.problem(
            "no cgroup file system is mounted",
            "mount cgroup2 at /sys/fs/cgroup (or the v1 hierarchies)",
        );
    }
    let runc_systemd = registration.and_then(|registration| registration.systemd_cgroup);
    let driver = match runc_systemd {
        Some(true) => "systemd (runc's SystemdCgroup = true)",
        Some(false) => "cgroupfs (runc's SystemdCgroup = false)",
        None => "cgroupfs (containerd's default; runc's SystemdCgroup is not set)",
    };
    report.fact("cgroup driver", driver);
    // A file that cannot be read or parsed is the engine config check's to report.
    let wedge = std::fs::read_to_string(target.engine_config_path())
        .ok()
        .and_then(|text| EngineConfig::parse(&text, "engine config").ok())
        .map(|config| config.cgroup.driver)
        .unwrap_or_default();
    report.fact(
        "Wedge's cgroup driver",
        format!(
            "{} (engine config cgroup.driver)",
            format!("{wedge:?}").to_lowercase()
        ),
    );
    let systemd_init = target.root.resolve("/run/systemd/system").is_dir();
    if registration.is_some() {
        if let Some((what, fix)) = cgroup_driver::mismatch(runc_systemd, wedge, systemd_init) {
            report.problem(what, fix);
        }
    }
}

fn runc(report: &mut NodeReport, target: &NodeTarget) {
    let found = HOST_PATH
        .iter()
        .map(|dir| Path::new(dir).join("runc"))
        .find(|path| is_executable(&target.root.resolve(path)));
    match found {
        Some(path) => report.fact("runc", path.display().to_string()),
        None => {
            report.fact("runc", "not found");
            report.problem(
                format!("no runc in {} on the host", HOST_PATH.join(":")),
                "install runc: Wedge hands pause containers and sidecars to it",
            );
        }
    }
}

fn shim(report: &mut NodeReport, target: &NodeTarget) {
    let path = target.shim_path();
    let shown = target.root.host_view(&path).display().to_string();
    // Any file there counts as present: uninstall removes whatever has the shim's name.
    if std::fs::symlink_metadata(&path).is_ok() {
        report.presence.shim = Some(PathBuf::from(&shown));
    }
    if !is_executable(&path) {
        report.fact("shim", format!("{shown}: missing"));
        report.problem(
            format!("{shown} is missing or not executable"),
            "run `wedge node install`",
        );
        return;
    }
    match files::sha256_file(&path) {
        Ok(sha256) => report.fact("shim", format!("{shown} (sha256 {sha256})")),
        Err(err) => report.problem(err.to_string(), "check the file's permissions"),
    }
}

fn engine_config(report: &mut NodeReport, target: &NodeTarget) {
    let local = target.engine_config_path();
    let path = &target.root.host_view(&local);
    match std::fs::read_to_string(&local) {
        Ok(text) => match EngineConfig::parse(&text, &path.display().to_string()) {
            Ok(config) => {
                report.fact("engine config", format!("{} (valid)", path.display()));
                trusted_paths(report, target, &config);
            }
            Err(err) => {
                report.fact("engine config", format!("{} (invalid)", path.display()));
                report.problem(
                    err.to_string(),
                    "fix the engine config; the shim refuses to start containers with it",
                );
            }
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            report.fact(
                "engine config",
                format!("{} absent: built-in defaults", path.display()),
            );
            trusted_paths(report, target, &EngineConfig::default());
        }
        Err(err) => report.problem(
            format!("cannot read {}: {err}", path.display()),
            "check its permissions",
        ),
    }
}

/// The engine config's paths that the runtime trusts as root, checked as the shim checks
/// them at Create (with built-in defaults when there is no engine config, as the shim uses).
fn trusted_paths(report: &mut NodeReport, target: &NodeTarget, config: &EngineConfig) {
    let runc = if config.runc.path.is_absolute() {
        Some(config.runc.path.clone())
    } else {
        HOST_PATH
            .iter()
            .map(|dir| Path::new(dir).join(&config.runc.path))
            .find(|path| is_executable(&target.root.resolve(path)))
    };
    let mut checks = Vec::new();
    if config.cache.enabled {
        checks.push(("cache.dir", config.cache.dir.clone(), Leaf::Directory));
    }
    if let Some(runc) = runc {
        checks.push(("runc.path", runc, Leaf::File));
    }
    for (key, path, leaf) in checks {
        match trusted_path::check(key, target.root.path(), &path, leaf) {
            Ok(_) => report.fact(key, format!("{} (root's alone)", path.display())),
            Err(err) => report.problem(
                err.to_string(),
                "point it at a place that root owns and no one else can write, all the way \
                 from /; the shim refuses containers until then",
            ),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use wedge_runtime_config::containerd::{HostRoot, SchemaVersion};

    use super::*;
    use crate::node::files::ExistingEngineConfig;
    use crate::node::steps::{self, ChangeOptions, RestartPolicy};

    const CONTAINERD_1_6_DEFAULT: &str = include_str!(
        "../../../runtime-config/tests/fixtures/containerd/containerd-1.6-default.toml"
    );
    const CONFIG: &str = "/etc/containerd/config.toml";

    /// A node under `root` with containerd 1.6's default config (and no containerd running:
    /// its socket does not exist under the fake root).
    fn fake_node(root: &Path) -> NodeTarget {
        let config = HostRoot::new(root).resolve(CONFIG);
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, CONTAINERD_1_6_DEFAULT).unwrap();
        NodeTarget {
            root: HostRoot::new(root),
            flavour: None,
            containerd_config: Some(CONFIG.into()),
            runtime_name: "wedge".into(),
            shim_dest: "/usr/local/bin".into(),
            engine_config: wedge_runtime_config::engine::DEFAULT_CONFIG_PATH.into(),
        }
    }

    fn options(root: &Path) -> ChangeOptions {
        let shim_source = root.join("shim-source");
        std::fs::write(&shim_source, b"\x7fELF pretend").unwrap();
        ChangeOptions {
            shim_source,
            engine_config: None,
            existing_engine_config: ExistingEngineConfig::Keep,
            restart: RestartPolicy::Never,
            label_node: false,
            dry_run: false,
        }
    }

    fn report(presence: Presence, problems: &[&str]) -> NodeReport {
        NodeReport {
            problems: problems
                .iter()
                .map(|what| Problem {
                    what: what.to_string(),
                    fix: String::new(),
                })
                .collect(),
            presence,
            runtime: "wedge".into(),
            ..NodeReport::default()
        }
    }

    fn registration(state: EntryState, in_effective_config: bool) -> Option<Registration> {
        Some(Registration {
            file: CONFIG.into(),
            state,
            version: SchemaVersion::V2,
            in_effective_config,
            systemd_cgroup: None,
            socket: None,
        })
    }

    #[test]
    fn uninstalled_ignores_the_problems_of_a_node_without_wedge() {
        let gone = Presence {
            registration: registration(EntryState::Absent, false),
            cri: CriListing::NotListed,
            shim: None,
        };
        let node = report(
            gone.clone(),
            &[
                "runtime \"wedge\" is not registered",
                "/usr/local/bin/containerd-shim-wedge-v1 is missing or not executable",
                "no runc in /usr/bin on the host",
            ],
        );
        assert!(node.mismatches(Expected::Uninstalled).is_empty());
        assert!(!node.mismatches(Expected::Installed).is_empty());

        let listed = report(
            Presence {
                cri: CriListing::Listed,
                ..gone.clone()
            },
            &[],
        );
        let reasons = listed.mismatches(Expected::Uninstalled);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("still lists"), "{reasons:?}");

        // k3s: the template is clean but the config it generated is not yet.
        let stale = report(
            Presence {
                registration: registration(EntryState::Absent, true),
                ..gone.clone()
            },
            &[],
        );
        assert_eq!(stale.mismatches(Expected::Uninstalled).len(), 1);

        let unreadable = report(
            Presence {
                registration: None,
                ..gone
            },
            &["no containerd config found"],
        );
        assert_eq!(unreadable.mismatches(Expected::Uninstalled).len(), 1);
    }

    #[test]
    fn installed_needs_no_problem_and_the_runtime_listed() {
        let installed = Presence {
            registration: registration(EntryState::Ours { current: true }, true),
            cri: CriListing::Listed,
            shim: Some("/usr/local/bin/containerd-shim-wedge-v1".into()),
        };
        assert!(report(installed.clone(), &[])
            .mismatches(Expected::Installed)
            .is_empty());
        assert_eq!(
            report(installed.clone(), &["no runc"]).mismatches(Expected::Installed),
            ["no runc"]
        );
        let unconfirmed = report(
            Presence {
                cri: CriListing::Unknown,
                ..installed.clone()
            },
            &[],
        );
        assert_eq!(unconfirmed.mismatches(Expected::Installed).len(), 1);
        // Everything still there: not uninstalled, for each piece (config, CRI, shim).
        assert_eq!(
            report(installed, &[])
                .mismatches(Expected::Uninstalled)
                .len(),
            3
        );
    }

    #[tokio::test]
    async fn status_follows_install_and_uninstall_on_a_fake_root() {
        let dir = tempfile::tempdir().unwrap();
        let target = fake_node(dir.path());
        let options = options(dir.path());
        let mut out = Vec::new();

        let before = gather(&target).await;
        assert_eq!(
            before.presence.registration.as_ref().map(|r| r.state),
            Some(EntryState::Absent)
        );
        assert!(before.presence.shim.is_none());

        steps::install(&target, &options, &mut out).await.unwrap();
        let installed = gather(&target).await;
        assert_eq!(
            installed.presence.shim,
            Some(PathBuf::from("/usr/local/bin/containerd-shim-wedge-v1"))
        );
        let reasons = installed.mismatches(Expected::Uninstalled);
        assert!(
            reasons.iter().any(|r| r.contains("still registered"))
                && reasons.iter().any(|r| r.contains("shim")),
            "{reasons:?}"
        );
        // No containerd answers on the fake root's socket.
        assert_eq!(installed.presence.cri, CriListing::Unknown);
        assert!(!installed.mismatches(Expected::Installed).is_empty());

        steps::uninstall(&target, &options, &mut out).await.unwrap();
        let uninstalled = gather(&target).await;
        assert_eq!(
            std::fs::read_to_string(target.root.resolve(CONFIG)).unwrap(),
            CONTAINERD_1_6_DEFAULT
        );
        assert!(uninstalled.presence.shim.is_none());
        // All that is left is what only a running containerd can confirm.
        let reasons = uninstalled.mismatches(Expected::Uninstalled);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("did not confirm"), "{reasons:?}");
    }

    #[tokio::test]
    async fn doctor_reports_a_cgroup_driver_other_than_runcs() {
        let dir = tempfile::tempdir().unwrap();
        let target = fake_node(dir.path());
        let config = target.root.resolve(CONFIG);
        let systemd = std::fs::read_to_string(&config)
            .unwrap()
            .replace("SystemdCgroup = false", "SystemdCgroup = true");
        std::fs::write(&config, systemd).unwrap();
        let driver_problems = |report: &NodeReport| -> Vec<String> {
            report
                .problems
                .iter()
                .filter(|problem| problem.what.contains("cgroup driver"))
                .map(|problem| format!("{} / {}", problem.what, problem.fix))
                .collect()
        };
        // No systemd as PID 1 under the fake root: `auto` would choose cgroupfs.
        let problems = driver_problems(&gather(&target).await);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("driver = \"systemd\""), "{problems:?}");

        let engine = target.engine_config_path();
        std::fs::create_dir_all(engine.parent().unwrap()).unwrap();
        std::fs::write(&engine, "[cgroup]\ndriver = \"systemd\"\n").unwrap();
        let report = gather(&target).await;
        assert!(
            driver_problems(&report).is_empty(),
            "{:?}",
            driver_problems(&report)
        );
    }
}
