//! Extra processes in a running native container (`kubectl exec`, CRI ExecSync), run with
//! `runc exec`. Each has its own stdio and exit status, addressed by its exec id.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::container::{Status, StdioPaths};
use crate::error::{Error, Result};
use crate::exits::ExitStatus;
use crate::native::Console;

pub struct ExecProcess {
    /// The OCI process spec containerd sent, as runc reads it.
    pub spec: PathBuf,
    pub pid_file: PathBuf,
    pub stdio: StdioPaths,
    pub pid: Option<i32>,
    /// Whether the process spec asks for a terminal, and the terminal once it runs.
    pub terminal: bool,
    pub console: Option<Console>,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// Held until Start hands it to the task that waits for the process.
    exit_sender: Option<watch::Sender<Option<ExitStatus>>>,
}

impl ExecProcess {
    /// Records the process spec in the bundle; the process starts at Start.
    pub fn new(
        bundle: &Path,
        exec_id: &str,
        spec: &[u8],
        stdio: StdioPaths,
        terminal: bool,
    ) -> Result<Self> {
        check_exec_id(exec_id)?;
        let spec_path = bundle.join(format!("exec-{exec_id}.json"));
        std::fs::write(&spec_path, spec)
            .map_err(|err| Error::io("cannot write the exec process spec", &spec_path, err))?;
        let (exit_sender, exit) = watch::channel(None);
        Ok(ExecProcess {
            spec: spec_path,
            pid_file: bundle.join(format!("exec-{exec_id}.pid")),
            stdio,
            pid: None,
            terminal,
            console: None,
            exit,
            exit_sender: Some(exit_sender),
        })
    }

    pub fn status(&self) -> Status {
        if self.exit.borrow().is_some() {
            Status::Stopped
        } else if self.pid.is_some() {
            Status::Running
        } else {
            Status::Created
        }
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.borrow().clone()
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }

    /// The sender for the process's exit; only once, at Start.
    pub fn take_exit_sender(&mut self) -> Option<watch::Sender<Option<ExitStatus>>> {
        self.exit_sender.take()
    }

    /// Removes the files this exec put in the bundle.
    pub fn remove_files(&self) {
        let _ = std::fs::remove_file(&self.spec);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Exec ids become file names in the bundle: only a safe alphabet is accepted.
fn check_exec_id(exec_id: &str) -> Result<()> {
    let valid = !exec_id.is_empty()
        && exec_id.len() <= 128
        && exec_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !exec_id.starts_with('.');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "invalid exec id {exec_id:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_ids_are_checked_and_files_land_in_the_bundle() {
        let bundle = tempfile::tempdir().unwrap();
        let exec =
            ExecProcess::new(bundle.path(), "e1", b"{}", StdioPaths::default(), false).unwrap();
        assert_eq!(exec.status(), Status::Created);
        assert!(bundle.path().join("exec-e1.json").exists());
        exec.remove_files();
        assert!(!bundle.path().join("exec-e1.json").exists());
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(
                ExecProcess::new(bundle.path(), bad, b"{}", StdioPaths::default(), false).is_err(),
                "{bad:?}"
            );
        }
    }
}
