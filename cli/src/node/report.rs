//! `wedge node status` and `wedge doctor`: what the node looks like to Wedge, and every
//! problem found with what to do about it.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use wedge_runtime_config::containerd::{inspect, EntryState, Location, Registration};
use wedge_runtime_config::EngineConfig;

use super::cgroup::{self, CgroupVersion};
use super::containerd_api;
use super::files;
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

#[derive(Debug, Default)]
pub struct NodeReport {
    /// (topic, finding), in the order found.
    pub facts: Vec<(&'static str, String)>,
    pub problems: Vec<Problem>,
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
    let mut report = NodeReport::default();
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
                "remove it or install under another --runtime-name",
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
        }
        Err(err) => report.problem(
            err.to_string(),
            "check that containerd runs and that the socket path is right",
        ),
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
    let driver = match registration.and_then(|registration| registration.systemd_cgroup) {
        Some(true) => "systemd (runc's SystemdCgroup = true)",
        Some(false) => "cgroupfs (runc's SystemdCgroup = false)",
        None => "cgroupfs (containerd's default; runc's SystemdCgroup is not set)",
    };
    report.fact("cgroup driver", driver);
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
            Ok(_) => report.fact("engine config", format!("{} (valid)", path.display())),
            Err(err) => {
                report.fact("engine config", format!("{} (invalid)", path.display()));
                report.problem(
                    err.to_string(),
                    "fix the engine config; the shim refuses to start containers with it",
                );
            }
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => report.fact(
            "engine config",
            format!("{} absent: built-in defaults", path.display()),
        ),
        Err(err) => report.problem(
            format!("cannot read {}: {err}", path.display()),
            "check its permissions",
        ),
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
