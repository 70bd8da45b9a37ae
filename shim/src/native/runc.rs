//! The `runc` command line, run through the shim's exit router (the reaper waits for every
//! child, so `Child::wait` cannot be used).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

/// What a process-starting runc command is about, for its errors.
struct StartedBy<'a> {
    id: &'a str,
    bundle: &'a Path,
    operation: &'static str,
    pid_file: &'a Path,
}

/// Where `runc exec` finds the container's bundle and the process spec, and writes the pid.
pub struct ExecFiles<'a> {
    pub bundle: &'a Path,
    pub process: &'a Path,
    pub pid_file: &'a Path,
}

/// The process's stdio for `runc create` / `runc exec`: inherited by that process.
pub type InitStdio = crate::stdio::NativeIo;

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

    /// `runc create`: sets the container up, its init waiting for `start`. Returns the pid.
    /// With `console_socket`, the init gets a terminal whose master runc sends there.
    pub async fn create(
        &self,
        exits: &ExitRouter,
        id: &str,
        bundle: &Path,
        stdio: InitStdio,
        console_socket: Option<PathBuf>,
    ) -> Result<i32> {
        std::fs::create_dir_all(&self.root)
            .map_err(|err| Error::io("cannot create the runc root", &self.root, err))?;
        let record = format!(
            "{}\n{}\n{}\n",
            self.binary.display(),
            self.root.display(),
            self.systemd_cgroup
        );
        std::fs::write(bundle.join(RECORD_FILE), record)
            .map_err(|err| Error::io("cannot record runc in", bundle, err))?;
        let pid_file = bundle.join(PID_FILE);
        let mut command = self.command(bundle, &["create", "--bundle"]);
        command.arg(bundle);
        let started = StartedBy {
            id,
            bundle,
            operation: "create",
            pid_file: &pid_file,
        };
        self.start_process(exits, command, started, stdio, console_socket)
            .await
    }

    /// `runc exec --detach`: starts the process described by `files.process` (an OCI
    /// process spec) in the running container; returns its pid. With `console_socket`, runc
    /// gives the process a terminal and sends its master there.
    pub async fn exec(
        &self,
        exits: &ExitRouter,
        id: &str,
        files: ExecFiles<'_>,
        stdio: InitStdio,
        console_socket: Option<PathBuf>,
    ) -> Result<i32> {
        let ExecFiles {
            bundle,
            process,
            pid_file,
        } = files;
        let mut command = self.command(bundle, &["exec", "--detach", "--process"]);
        command.arg(process);
        let started = StartedBy {
            id,
            bundle,
            operation: "exec",
            pid_file,
        };
        self.start_process(exits, command, started, stdio, console_socket)
            .await
    }

    /// Runs a runc command that starts a process (create, exec): adds the pid file, the
    /// console socket if the process gets a terminal, and the container id; `stdio` is
    /// inherited by that process. Returns the pid runc wrote.
    async fn start_process(
        &self,
        exits: &ExitRouter,
        mut command: Command,
        started: StartedBy<'_>,
        stdio: InitStdio,
        console_socket: Option<PathBuf>,
    ) -> Result<i32> {
        command.arg("--pid-file").arg(started.pid_file);
        if let Some(socket) = console_socket {
            command.arg("--console-socket").arg(socket);
        }
        command.arg(started.id);
        // runc itself writes its errors to the log, not to these.
        command
            .stdin(Stdio::from(stdio.stdin))
            .stdout(Stdio::from(stdio.stdout))
            .stderr(Stdio::from(stdio.stderr));
        let status = exits.run_inheriting(command).await?;
        if status != 0 {
            return Err(self.failure(started.bundle, started.id, started.operation, status));
        }
        read_pid(started.pid_file).ok_or_else(|| Error::Native {
            id: started.id.to_string(),
            operation: started.operation,
            reason: format!("runc wrote no pid to {}", started.pid_file.display()),
        })
    }

    /// `runc pause` (true) or `runc resume` (false): the freezer of the container's cgroup.
    pub async fn freeze(
        &self,
        exits: &ExitRouter,
        id: &str,
        bundle: &Path,
        frozen: bool,
    ) -> Result<()> {
        let operation = if frozen { "pause" } else { "resume" };
        self.simple(exits, id, bundle, operation, &[operation, id])
            .await
    }

    /// `runc update --resources FILE`: `resources` is the OCI LinuxResources JSON, passed
    /// through a file in the bundle (removed after).
    pub async fn update(
        &self,
        exits: &ExitRouter,
        id: &str,
        bundle: &Path,
        resources: &[u8],
    ) -> Result<()> {
        let file = bundle.join("wedge-update-resources.json");
        std::fs::write(&file, resources).map_err(|err| {
            Error::io("cannot write the resources for runc update to", &file, err)
        })?;
        let file_arg = file.display().to_string();
        let result = self
            .simple(
                exits,
                id,
                bundle,
                "update",
                &["update", "--resources", &file_arg, id],
            )
            .await;
        let _ = std::fs::remove_file(&file);
        result
    }

    pub async fn start(&self, exits: &ExitRouter, id: &str, bundle: &Path) -> Result<()> {
        self.simple(exits, id, bundle, "start", &["start", id])
            .await
    }

    pub async fn kill(
        &self,
        exits: &ExitRouter,
        id: &str,
        bundle: &Path,
        signal: Signal,
        all: bool,
    ) -> Result<()> {
        let number = (signal as i32).to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, number.as_str()]);
        match self.simple(exits, id, bundle, "kill", &args).await {
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
    pub async fn delete(&self, exits: &ExitRouter, id: &str, bundle: &Path) -> Result<()> {
        self.simple(exits, id, bundle, "delete", &["delete", "--force", id])
            .await?;
        let _ = std::fs::remove_file(bundle.join(PID_FILE));
        let _ = std::fs::remove_file(bundle.join(LOG_FILE));
        let _ = std::fs::remove_file(bundle.join(RECORD_FILE));
        Ok(())
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

    async fn simple(
        &self,
        exits: &ExitRouter,
        id: &str,
        bundle: &Path,
        operation: &'static str,
        args: &[&str],
    ) -> Result<()> {
        let output = exits.run(self.command(bundle, args)).await?;
        if output.code != 0 {
            return Err(self.failure(bundle, id, operation, output.code));
        }
        Ok(())
    }

    fn failure(&self, bundle: &Path, id: &str, operation: &'static str, code: u32) -> Error {
        let reason = last_error(&bundle.join(LOG_FILE))
            .unwrap_or_else(|| format!("{} exited with {code}", self.binary.display()));
        Error::Native {
            id: id.to_string(),
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
