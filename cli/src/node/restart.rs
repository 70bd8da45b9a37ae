//! Restarting the host's containerd from inside the installer's pod: systemctl runs in the
//! namespaces of the host's PID 1 (`nsenter -t 1 …`), so the pod needs hostPID and the
//! privilege to enter them.

use std::process::Command;

use wedge_runtime_config::containerd::Flavour;

use super::error::{NodeError, Result};

/// The unit that runs this flavour's containerd on the host: the first of the flavour's
/// candidates that is active (a k3s server or agent).
pub fn active_unit(flavour: Flavour) -> Result<String> {
    require_systemd()?;
    for unit in flavour.services() {
        let active = host_systemctl(&["is-active", "--quiet", unit])
            .status()
            .map_err(NodeError::io("cannot run", "nsenter"))?
            .success();
        if active {
            return Ok(unit.to_string());
        }
    }
    Err(NodeError::NoActiveUnit {
        units: flavour
            .services()
            .iter()
            .map(|unit| unit.to_string())
            .collect(),
    })
}

/// `systemctl restart` of the flavour's unit; returns the unit.
pub fn restart(flavour: Flavour) -> Result<String> {
    let unit = active_unit(flavour)?;
    let args = ["restart", unit.as_str()];
    let output = host_systemctl(&args)
        .output()
        .map_err(NodeError::io("cannot run", "nsenter"))?;
    if !output.status.success() {
        return Err(NodeError::CommandFailed {
            command: format!("systemctl {}", args.join(" ")),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(unit)
}

fn require_systemd() -> Result<()> {
    let pid1 = std::fs::read_to_string("/proc/1/comm")
        .map(|comm| comm.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    if pid1 != "systemd" {
        return Err(NodeError::NoSystemd { pid1 });
    }
    Ok(())
}

fn host_systemctl(args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .args(["-t", "1", "-m", "-u", "-i", "-n", "-p", "--", "systemctl"])
        .args(args);
    command
}
