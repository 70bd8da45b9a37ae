//! A node whose containerd is a service of an init other than systemd: a private PID and
//! mount namespace whose PID 1, a shell standing in for sysvinit or busybox init, starts
//! containerd through an LSB init script, `/etc/init.d/containerd` (start, stop, status,
//! restart). Its /run and /etc/init.d are tmpfs of its own, so whoever looks at the node
//! through its PID 1 finds init scripts and nothing of the machine's (no systemd, no
//! OpenRC). The namespace dies with PID 1, and containerd with it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Each restart through the init script appends a line here (in the containerd's temp dir).
pub const RESTARTS_FILE: &str = "init-restarts";
const PID_FILE: &str = "containerd.pid";
const READY_FILE: &str = "init-ready";

/// Starts the stand-in init for a containerd run as `containerd --config CONFIG` with `PATH`
/// `search_path`, logging to `log`; returns once PID 1 has started it. The child is
/// `unshare`, which takes the namespace's PID 1 down with it when killed.
pub fn start(
    dir: &Path,
    containerd: &Path,
    config: &Path,
    search_path: &str,
    log: &Path,
) -> Result<Child> {
    let script = dir.join("containerd.init");
    std::fs::write(
        &script,
        init_script(dir, containerd, config, search_path, log),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    let init = dir.join("stand-in-init.sh");
    std::fs::write(&init, pid1_script(dir, &script))?;
    let _ = std::fs::remove_file(dir.join(READY_FILE));
    let child = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--propagation",
            "private",
            "--mount-proc",
            "/bin/sh",
        ])
        .arg(&init)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?,
        )
        .spawn()
        .context("cannot run unshare (util-linux)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join(READY_FILE).exists() {
        if Instant::now() > deadline {
            bail!("the stand-in init did not start containerd");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// How many times the init script restarted containerd.
pub fn restarts(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(RESTARTS_FILE))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// The pid (in the machine's namespace) of the stand-in's PID 1, the child of `unshare`.
pub fn pid1(unshare: &Child) -> Result<i32> {
    let children = PathBuf::from(format!("/proc/{0}/task/{0}/children", unshare.id()));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("unshare {} has no child", unshare.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid1_script(dir: &Path, script: &Path) -> String {
    format!(
        r#"set -e
mount -t tmpfs -o mode=755 stand-in-run /run
mount -t tmpfs -o mode=755 stand-in-init.d /etc/init.d
cp '{script}' /etc/init.d/containerd
/etc/init.d/containerd start
: > '{ready}'
trap 'exit 0' TERM
while :; do sleep 1 & wait $! || true; done
"#,
        script = script.display(),
        ready = dir.join(READY_FILE).display(),
    )
}

fn init_script(
    dir: &Path,
    containerd: &Path,
    config: &Path,
    search_path: &str,
    log: &Path,
) -> String {
    format!(
        r#"#!/bin/sh
# LSB-style init script of the stand-in node's containerd.
PIDFILE='{pidfile}'
export PATH='{search_path}'
running() {{ [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }}
case "$1" in
  start)
    running && exit 0
    '{containerd}' --config '{config}' </dev/null >>'{log}' 2>&1 &
    echo $! > "$PIDFILE"
    ;;
  stop)
    running || exit 0
    pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$PIDFILE"
    ;;
  status)
    running
    ;;
  restart)
    "$0" stop && "$0" start && echo restarted >> '{restarts}'
    ;;
  *)
    echo "usage: $0 start|stop|status|restart" >&2
    exit 2
    ;;
esac
"#,
        pidfile = dir.join(PID_FILE).display(),
        containerd = containerd.display(),
        config = config.display(),
        log = log.display(),
        restarts = dir.join(RESTARTS_FILE).display(),
    )
}
