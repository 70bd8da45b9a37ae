//! The `runc` command line, run through the shim's exit router (the reaper waits for every
//! child, so `Child::wait` cannot be used).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::sys::signal::Signal;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::exits::ExitRouter;

/// runc's error log in the bundle, read when a command fails.
const LOG_FILE: &str = "runc-log.json";
/// Where `runc create` writes the init pid.
const PID_FILE: &str = "init.pid";
/// Which runc and state root a native container was created with, for `shim delete` after
/// the serving shim died: the binary path and the root on two lines.
const RECORD_FILE: &str = "wedge-runc";

/// One runc binary with its state root (per containerd namespace).
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    /// The container's cgroupsPath is in the systemd driver's `slice:prefix:name` form.
    systemd_cgroup: bool,
}

/// Where `runc exec` finds the process spec, and where it writes the pid.
pub struct ExecFiles<'a> {
    pub process: &'a Path,
    pub pid_file: &'a Path,
}

/// The process's stdio for `runc create` / `runc exec`: inherited by that process.
pub type InitStdio = crate::stdio::OpenedStdio;

impl Runc {
    pub fn new(binary: &Path, root: &Path, namespace: &str) -> Self {
        Runc {
            binary: binary.to_path_buf(),
            root: root.join(namespace),
            systemd_cgroup: false,
        }
    }

    /// Has runc manage the cgroup through systemd, as kubelet's systemd driver expects.
    pub fn with_systemd_cgroup(mut self, systemd_cgroup: bool) -> Self {
        self.systemd_cgroup = systemd_cgroup;
        self
    }

    fn command(&self, bundle: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(bundle.join(LOG_FILE))
            .arg("--log-format")
            .arg("json");
        if self.systemd_cgroup {
            command.arg("--systemd-cgroup");
        }
        // containerd under systemd is a Type=notify unit and its shims inherit NOTIFY_SOCKET;
        // given it, `runc start` waits for the container to send READY=1 there, which a pod's
        // process never does: Start would hang. runc's own shim drops it too.
        command
            .env_remove("NOTIFY_SOCKET")
            .args(args)
            .current_dir(bundle);
        command
    }

    /// The runc a bundle's container was created with, if it is a native container.
    pub fn recorded_in(bundle: &Path) -> Option<Runc> {
        let record = std::fs::read_to_string(bundle.join(RECORD_FILE)).ok()?;
        let mut lines = record.lines();
        Some(Runc {
            binary: PathBuf::from(lines.next()?),
            root: PathBuf::from(lines.next()?),
            systemd_cgroup: lines.next() == Some("true"),
        })
    }

    /// `runc delete --force` without the serving shim (its reaper is gone, so a plain wait
    /// works): for `shim delete` after a crash.
    pub fn force_delete_blocking(&self, id: &str, bundle: &Path) -> std::io::Result<bool> {
        let status = self
            .command(bundle, &["delete", "--force", id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        Ok(status.success())
    }

    /// Binds this runc to one container: every later command is about that container.
    pub fn bind(self, exits: Arc<ExitRouter>, id: &str, bundle: &Path) -> RuncContainer {
        RuncContainer {
            runc: self,
            exits,
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
        }
    }
}

/// One container's runc: the binary and state root, the container's id and bundle, and the
/// shim's exit router (which reaps what runc starts), fixed once at Create.
#[derive(Clone)]
pub struct RuncContainer {
    runc: Runc,
    exits: Arc<ExitRouter>,
    id: String,
    bundle: PathBuf,
}

impl RuncContainer {
    /// `runc create`: sets the container up, its init waiting for `start`. Returns the pid.
    /// With `console_socket`, the init gets a terminal whose master runc sends there.
    pub async fn create(&self, stdio: InitStdio, console_socket: Option<PathBuf>) -> Result<i32> {
        let runc = &self.runc;
        std::fs::create_dir_all(&runc.root)
            .map_err(|err| Error::io("cannot create the runc root", &runc.root, err))?;
        let record = format!(
            "{}\n{}\n{}\n",
            runc.binary.display(),
            runc.root.display(),
            runc.systemd_cgroup
        );
        std::fs::write(self.bundle.join(RECORD_FILE), record)
            .map_err(|err| Error::io("cannot record runc in", &self.bundle, err))?;
        let pid_file = self.bundle.join(PID_FILE);
        let mut command = runc.command(&self.bundle, &["create", "--bundle"]);
        command.arg(&self.bundle);
        self.start_process(command, "create", &pid_file, stdio, console_socket)
            .await
    }

    /// `runc exec --detach`: starts the process described by `files.process` (an OCI
    /// process spec) in the running container; returns its pid. With `console_socket`, runc
    /// gives the process a terminal and sends its master there.
    pub async fn exec(
        &self,
        files: ExecFiles<'_>,
        stdio: InitStdio,
        console_socket: Option<PathBuf>,
    ) -> Result<i32> {
        let mut command = self
            .runc
            .command(&self.bundle, &["exec", "--detach", "--process"]);
        command.arg(files.process);
        self.start_process(command, "exec", files.pid_file, stdio, console_socket)
            .await
    }

    /// Runs a runc command that starts a process (create, exec): adds the pid file, the
    /// console socket if the process gets a terminal, and the container id; `stdio` is
    /// inherited by that process. Returns the pid runc wrote.
    async fn start_process(
        &self,
        mut command: Command,
        operation: &'static str,
        pid_file: &Path,
        stdio: InitStdio,
        console_socket: Option<PathBuf>,
    ) -> Result<i32> {
        command.arg("--pid-file").arg(pid_file);
        if let Some(socket) = console_socket {
            command.arg("--console-socket").arg(socket);
        }
        command.arg(&self.id);
        // runc itself writes its errors to the log, not to these.
        command
            .stdin(Stdio::from(stdio.stdin))
            .stdout(Stdio::from(stdio.stdout))
            .stderr(Stdio::from(stdio.stderr));
        let status = self.exits.run_inheriting(command).await?;
        if status != 0 {
            return Err(self.failure(operation, status));
        }
        read_pid(pid_file).ok_or_else(|| Error::Native {
            id: self.id.clone(),
            operation,
            reason: format!("runc wrote no pid to {}", pid_file.display()),
        })
    }

    /// `runc pause` (true) or `runc resume` (false): the freezer of the container's cgroup.
    pub async fn freeze(&self, frozen: bool) -> Result<()> {
        let operation = if frozen { "pause" } else { "resume" };
        self.simple(operation, &[operation, &self.id]).await
    }

    /// `runc update --resources FILE`: `resources` is the OCI LinuxResources JSON, passed
    /// through a file in the bundle (removed after).
    pub async fn update(&self, resources: &[u8]) -> Result<()> {
        let file = self.bundle.join("wedge-update-resources.json");
        std::fs::write(&file, resources).map_err(|err| {
            Error::io("cannot write the resources for runc update to", &file, err)
        })?;
        let file_arg = file.display().to_string();
        let result = self
            .simple("update", &["update", "--resources", &file_arg, &self.id])
            .await;
        let _ = std::fs::remove_file(&file);
        result
    }

    pub async fn start(&self) -> Result<()> {
        self.simple("start", &["start", &self.id]).await
    }

    /// `runc kill [--all]`.
    pub async fn kill(&self, signal: Signal, all: bool) -> Result<()> {
        let number = (signal as i32).to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([self.id.as_str(), number.as_str()]);
        match self.simple("kill", &args).await {
            // The process ended between containerd's request and runc's look (a stop racing
            // the exit): what containerd expects then is "not found", as runc's own shim
            // answers, not a failure of the stop.
            Err(Error::Native { reason, .. }) if already_gone(&reason) => {
                Err(Error::ProcessFinished)
            }
            other => other,
        }
    }

    /// `runc delete --force`: removes the container's state, killing it if need be.
    pub async fn delete(&self) -> Result<()> {
        self.simple("delete", &["delete", "--force", &self.id])
            .await?;
        for file in [PID_FILE, LOG_FILE, RECORD_FILE] {
            let _ = std::fs::remove_file(self.bundle.join(file));
        }
        Ok(())
    }

    async fn simple(&self, operation: &'static str, args: &[&str]) -> Result<()> {
        let output = self
            .exits
            .run(self.runc.command(&self.bundle, args))
            .await?;
        if output.code != 0 {
            return Err(self.failure(operation, output.code));
        }
        Ok(())
    }

    fn failure(&self, operation: &'static str, code: u32) -> Error {
        let reason = last_error(&self.bundle.join(LOG_FILE))
            .unwrap_or_else(|| format!("{} exited with {code}", self.runc.binary.display()));
        Error::Native {
            id: self.id.clone(),
            operation,
            reason,
        }
    }
}

fn read_pid(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
}

#[derive(Deserialize)]
struct LogLine {
    level: String,
    msg: String,
}

/// The last error runc logged, which is what it would have printed.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<LogLine>(line).ok())
        .find(|line| line.level == "error")
        .map(|line| line.msg)
}

/// runc's words for a kill that found no process left to signal.
fn already_gone(reason: &str) -> bool {
    [
        "container not running",
        "process already finished",
        "no such process",
    ]
    .iter()
    .any(|words| reason.contains(words))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_logged_error_is_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"first\",\"time\":\"t\"}\n\
             {\"level\":\"info\",\"msg\":\"noise\",\"time\":\"t\"}\n\
             {\"level\":\"error\",\"msg\":\"exec: \\\"/nope\\\": no such file\",\"time\":\"t\"}\n",
        )
        .unwrap();
        assert_eq!(last_error(&log).unwrap(), "exec: \"/nope\": no such file");
        assert_eq!(last_error(&dir.path().join("none")), None);
    }

    #[test]
    fn runc_never_sees_systemd_s_notify_socket() {
        let runc = Runc::new(Path::new("runc"), Path::new("/run/wedge/runc"), "k8s.io");
        let command = runc.command(Path::new("/tmp/bundle"), &["start", "c1"]);
        assert!(command
            .get_envs()
            .any(|(key, value)| key == "NOTIFY_SOCKET" && value.is_none()));
    }

    #[test]
    fn a_kill_that_finds_the_process_gone_is_recognised() {
        assert!(already_gone(
            "runc kill failed: container not running: unknown"
        ));
        assert!(already_gone("os: process already finished"));
        assert!(!already_gone("permission denied"));
    }
}
