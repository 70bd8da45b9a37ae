//! `wedge node install` and `uninstall`, step by step. Install: shim, engine config,
//! containerd's config, restart, wait for the runtime, label. Uninstall undoes them in the
//! reverse order, starting with the label so the scheduler stops sending pods here.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use wedge_runtime_config::cgroup_driver;
use wedge_runtime_config::containerd::{
    inspect, plan_install, plan_uninstall, Location, Outcome, Plan,
};

use super::containerd_api;
use super::error::NodeError;
use super::error::Result;
use super::files::{self, Copied, ExistingEngineConfig};
use super::host_process::HostPid1;
use super::kube::{NodeLabeler, RuntimeCondition, CONDITION_TYPE, READY_LABEL};
use super::restart;
use super::target::NodeTarget;

/// How long containerd gets to come back after a restart.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart containerd through the host's service manager when its config changed (or
    /// it does not list the runtime yet).
    Auto,
    /// Never: tests, and operators who restart containerd themselves.
    Never,
}

#[derive(Debug, Clone)]
pub struct ChangeOptions {
    pub shim_source: PathBuf,
    /// Copied to the engine config path when nothing is there.
    pub engine_config: Option<PathBuf>,
    /// What install does with an engine config on the host that differs from it.
    pub existing_engine_config: ExistingEngineConfig,
    pub restart: RestartPolicy,
    pub label_node: bool,
    /// Print what would change and change nothing.
    pub dry_run: bool,
}

/// Lines of progress go to `out`; a failure stops at the step that failed.
pub async fn install(
    target: &NodeTarget,
    options: &ChangeOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let location = target.locate()?;
    let spec = target.spec();
    let plan = plan_install(&location, &spec)?;
    let shim = target.shim_path();
    let engine = target.engine_config_path();
    let shown = |path: &PathBuf| location.root.host_view(path).display().to_string();
    // containerd hands SystemdCgroup to runc's shim only: the engine config repeats it.
    let runc_systemd_cgroup = inspect(&location, &spec)?.systemd_cgroup;
    let driver = cgroup_driver::name(cgroup_driver::runc_driver(runc_systemd_cgroup));
    let driver_note = |source: &PathBuf| match std::fs::read_to_string(source) {
        Ok(text) if cgroup_driver::sets_driver(&text) => String::new(),
        _ => format!(", cgroup driver {driver} as runc's"),
    };
    if options.dry_run {
        say(
            out,
            format!(
                "would copy {} to {}",
                options.shim_source.display(),
                shown(&shim)
            ),
        );
        if let Some(source) = &options.engine_config {
            let verb = match (engine.exists(), options.existing_engine_config) {
                (false, _) => "would write",
                (true, ExistingEngineConfig::Keep) => "would keep the existing",
                (true, ExistingEngineConfig::Replace) => "would replace, if it differs,",
            };
            say(
                out,
                format!(
                    "{verb} {} (from {}{})",
                    shown(&engine),
                    source.display(),
                    driver_note(source)
                ),
            );
        }
        describe_plan(out, &location, &plan);
        describe_follow_up(out, &location, options, "set");
        return Ok(());
    }

    match files::install_shim(&options.shim_source, &shim)? {
        Copied::Written { sha256 } => say(
            out,
            format!("copied the shim to {} (sha256 {sha256})", shown(&shim)),
        ),
        Copied::AlreadyThere { sha256 } => say(
            out,
            format!("shim {} already current (sha256 {sha256})", shown(&shim)),
        ),
        // install_shim reports an older shim it wrote over as Written.
        Copied::Kept | Copied::Replaced { .. } => {}
    }
    if let Some(source) = &options.engine_config {
        match files::place_engine_config(
            source,
            &engine,
            options.existing_engine_config,
            runc_systemd_cgroup,
        )? {
            Copied::Written { .. } => say(
                out,
                format!("wrote {}{}", shown(&engine), driver_note(source)),
            ),
            Copied::Replaced { previous, .. } => say(
                out,
                match previous {
                    Some(previous) => format!(
                        "replaced {}{} (the replaced file is kept as {})",
                        shown(&engine),
                        driver_note(source),
                        shown(&previous)
                    ),
                    None => format!("replaced {}{}", shown(&engine), driver_note(source)),
                },
            ),
            Copied::AlreadyThere { .. } => say(out, format!("{} already current", shown(&engine))),
            Copied::Kept => say(
                out,
                format!("kept the existing {} (not overwritten)", shown(&engine)),
            ),
        }
    }
    let changed = report_outcome(out, plan.apply()?);
    let labeler = match options.label_node {
        true => Some(NodeLabeler::from_env()?),
        false => None,
    };
    if options.restart == RestartPolicy::Auto {
        let restarted = restart_and_wait(out, target, &location, changed, Some(&spec.name)).await;
        if let (Err(err), Some(labeler)) = (&restarted, &labeler) {
            // The node keeps no label, and says why on its own object, where an operator
            // looking at `kubectl describe node` finds it.
            let condition = RuntimeCondition {
                ready: false,
                reason: not_ready_reason(err),
                message: err.to_string(),
            };
            match labeler.set_condition(Some(&condition)).await {
                Ok(()) => say(
                    out,
                    format!(
                        "set node condition {CONDITION_TYPE}=False ({})",
                        condition.reason
                    ),
                ),
                Err(report_err) => say(out, format!("could not report on the node: {report_err}")),
            }
        }
        restarted?;
    } else if changed {
        say(
            out,
            "containerd was not restarted (--restart never): it reads the change at its next start",
        );
    }
    if let Some(labeler) = labeler {
        labeler.set_ready(Some("true")).await?;
        labeler
            .set_condition(Some(&RuntimeCondition {
                ready: true,
                reason: "RuntimeInstalled",
                message: format!("containerd lists runtime {:?}", spec.name),
            }))
            .await?;
        say(
            out,
            format!(
                "labelled node {} {READY_LABEL}=true, condition {CONDITION_TYPE}=True",
                labeler.node()
            ),
        );
    }
    Ok(())
}

/// The reason of the node condition when an install stops at the restart.
fn not_ready_reason(err: &NodeError) -> &'static str {
    match err {
        NodeError::NoServiceManager { .. }
        | NodeError::NoRunningService { .. }
        | NodeError::HostNamespace { .. }
        | NodeError::CommandFailed { .. } => "ContainerdNotRestarted",
        NodeError::RuntimeNotRegistered { .. } => "RuntimeNotRegistered",
        _ => "ContainerdNotReady",
    }
}

pub async fn uninstall(
    target: &NodeTarget,
    options: &ChangeOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let location = target.locate()?;
    let spec = target.spec();
    let plan = plan_uninstall(&location, &spec)?;
    let shim = target.shim_path();
    let engine = target.engine_config_path();
    let shown = |path: &PathBuf| location.root.host_view(path).display().to_string();
    if options.dry_run {
        describe_follow_up(out, &location, options, "remove");
        describe_plan(out, &location, &plan);
        say(out, format!("would remove {}", shown(&shim)));
        return Ok(());
    }

    if options.label_node {
        let labeler = NodeLabeler::from_env()?;
        labeler.set_ready(None).await?;
        labeler.set_condition(None).await?;
        say(
            out,
            format!(
                "removed {READY_LABEL} and condition {CONDITION_TYPE} from node {}",
                labeler.node()
            ),
        );
    }
    let changed = report_outcome(out, plan.apply()?);
    if options.restart == RestartPolicy::Auto && changed {
        restart_and_wait(out, target, &location, true, None).await?;
    } else if changed {
        say(out, "containerd was not restarted (--restart never): it drops the runtime at its next start");
    }
    if let Some(source) = &options.engine_config {
        if files::remove_if_installed(&engine, source)? {
            say(out, format!("removed {}", shown(&engine)));
            if let Some(dir) = engine.parent() {
                // Only if empty: the operator may keep other files there.
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
    if files::remove(&shim)? {
        say(out, format!("removed {}", shown(&shim)));
    }
    Ok(())
}

fn report_outcome(out: &mut dyn Write, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Unchanged => {
            say(out, "containerd config unchanged");
            false
        }
        Outcome::Changed(files) => {
            for file in files {
                say(out, format!("changed {}", file.display()));
            }
            true
        }
    }
}

/// Restarts containerd when its config changed or it does not list the runtime yet, then
/// waits until it answers (and, on install, lists the runtime).
async fn restart_and_wait(
    out: &mut dyn Write,
    target: &NodeTarget,
    location: &Location,
    config_changed: bool,
    runtime: Option<&str>,
) -> Result<()> {
    let registration = inspect(location, &target.spec())?;
    let socket = containerd_api::socket_path(
        &target.root,
        registration.socket.as_deref(),
        location.flavour.default_socket(),
    );
    if !config_changed {
        if let Some(name) = runtime {
            let live = containerd_api::query(&socket, name).await;
            if matches!(live, Ok(ref info) if info.runtime_registered == Some(true)) {
                say(
                    out,
                    "containerd already lists the runtime; no restart needed",
                );
                return Ok(());
            }
        }
    }
    let restarted = restart::restart(&HostPid1::default(), location.flavour)?;
    say(
        out,
        format!(
            "restarted {} through the host's {}",
            restarted.service, restarted.manager
        ),
    );
    let version = containerd_api::wait_ready(&socket, runtime, READY_TIMEOUT).await?;
    match runtime {
        Some(name) => say(out, format!("containerd {version} lists runtime {name:?}")),
        None => say(out, format!("containerd {version} is back")),
    }
    Ok(())
}

fn describe_plan(out: &mut dyn Write, location: &Location, plan: &Plan) {
    if plan.is_unchanged() {
        say(
            out,
            format!(
                "containerd config {} unchanged",
                location.root.host_view(&location.config).display()
            ),
        );
    } else {
        let _ = write!(out, "{}", plan.diff());
    }
}

fn describe_follow_up(
    out: &mut dyn Write,
    location: &Location,
    options: &ChangeOptions,
    label_verb: &str,
) {
    if options.restart == RestartPolicy::Auto {
        say(
            out,
            format!(
                "would restart {} through the host's service manager if its config changes",
                location.flavour.services().join(" or ")
            ),
        );
    }
    if options.label_node {
        say(
            out,
            format!("would {label_verb} the node label {READY_LABEL}"),
        );
    }
}

fn say(out: &mut dyn Write, line: impl AsRef<str>) {
    // Progress lines are best effort: a closed stdout must not abort a half-done install.
    let _ = writeln!(out, "{}", line.as_ref());
}
