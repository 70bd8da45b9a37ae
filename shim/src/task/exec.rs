//! Extra processes in a running container (`kubectl exec`, CRI ExecSync), for back ends
//! that have them. Each has its own stdio, lifecycle and exit status, addressed by its exec
//! id; the process spec containerd sends is kept in the bundle until Delete.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api;
use containerd_shim_protos::events::task::{TaskExecAdded, TaskExecStarted};
use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::container::{refusal, wait_for_exit};
use super::events::publish;
use super::lifecycle::{Lifecycle, Operation};
use super::tasks::Tasks;
use crate::backend::ExecRequest;
use crate::error::{Error, Result};
use crate::exits::{now, ExitStatus, ProcessHandle};
use crate::runc::Console;
use crate::stdio::StdioPaths;

/// Exit status of an exec whose process never started.
const NEVER_STARTED_EXIT_CODE: u32 = 255;

pub struct ExecProcess {
    /// The OCI process spec containerd sent, as the back end reads it.
    pub spec: PathBuf,
    pub pid_file: PathBuf,
    pub stdio: StdioPaths,
    /// The running process, once Start has run it.
    pub process: Option<Arc<ProcessHandle>>,
    /// Whether the process spec asks for a terminal, and the terminal once it runs.
    pub terminal: bool,
    pub console: Option<Console>,
    pub lifecycle: Lifecycle,
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
            process: None,
            terminal,
            console: None,
            lifecycle: Lifecycle::exec(),
            exit,
            exit_sender: Some(exit_sender),
        })
    }

    /// The process's pid; 0 before Start.
    pub fn pid(&self) -> i32 {
        self.process.as_ref().map_or(0, |process| process.pid())
    }

    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.borrow().clone()
    }

    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
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

impl Tasks {
    /// Exec: records the process; it runs at Start.
    pub async fn add_exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| Error::InvalidRequest("exec without a process spec".into()))?;
        self.with_container(&req.id, |container| {
            if !container.backend.supports_exec() {
                return Err(Error::ExecUnsupported(container.id.clone()));
            }
            container.check(Operation::Exec)?;
            if container.execs.contains_key(&req.exec_id) {
                return Err(Error::ExecExists(req.id.clone(), req.exec_id.clone()));
            }
            let stdio = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
            };
            let exec =
                ExecProcess::new(&container.bundle, &req.exec_id, &spec, stdio, req.terminal)?;
            container.execs.insert(req.exec_id.clone(), exec);
            Ok(())
        })?;
        publish(
            self.events.as_ref(),
            TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        )
        .await;
        Ok(())
    }

    /// Start of an exec: the back end starts the process, then a task reports its exit.
    pub async fn start_exec(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<i32> {
        let (backend, spec, pid_file, stdio, terminal, exit_sender) =
            self.with_container(id, |container| {
                let backend = Arc::clone(&container.backend);
                let exec = container.exec_mut(exec_id)?;
                exec.lifecycle
                    .start()
                    .map_err(|refused| refusal(exec_id, refused))?;
                let sender = exec
                    .exit_sender
                    .take()
                    .ok_or_else(|| Error::Internal(format!("exec {exec_id} started twice")))?;
                Ok((
                    backend,
                    exec.spec.clone(),
                    exec.pid_file.clone(),
                    exec.stdio.clone(),
                    exec.terminal,
                    sender,
                ))
            })?;
        let request = ExecRequest {
            process: &spec,
            pid_file: &pid_file,
            stdio: &stdio,
            terminal,
        };
        let (pid, console) = match backend.exec(request).await {
            Ok(started) => started,
            Err(err) => {
                // The process never ran: it is stopped with the failure status.
                let _ = self.with_container(id, |container| {
                    container.exec_mut(exec_id)?.lifecycle.exited();
                    Ok(())
                });
                let _ = exit_sender.send(Some(ExitStatus {
                    code: NEVER_STARTED_EXIT_CODE,
                    at: now(),
                }));
                return Err(err);
            }
        };
        let (exited, process) = self.exits.watch(pid);
        self.with_container(id, |container| {
            let exec = container.exec_mut(exec_id)?;
            exec.process = Some(Arc::new(process));
            exec.console = console;
            Ok(())
        })?;
        publish(
            self.events.as_ref(),
            TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: pid as u32,
                ..Default::default()
            },
        )
        .await;
        tokio::spawn(Arc::clone(self).on_exit(
            id.to_string(),
            exec_id.to_string(),
            pid,
            exited,
            exit_sender,
        ));
        Ok(pid)
    }

    /// Signals a running exec process; one that has not started or has ended is gone.
    pub fn kill_exec(&self, id: &str, exec_id: &str, signal: Signal) -> Result<()> {
        let process = self.with_container(id, |container| {
            let exec = container.exec(exec_id)?;
            match (exec.lifecycle.check(Operation::Kill), &exec.process) {
                (Ok(()), Some(process)) => Ok(Arc::clone(process)),
                _ => Err(Error::ProcessFinished),
            }
        })?;
        process.signal(signal)
    }

    pub async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<ExitStatus> {
        let exit =
            self.with_container(id, |container| Ok(container.exec(exec_id)?.exit_watch()))?;
        wait_for_exit(exit)
            .await
            .ok_or_else(|| Error::ExecNotFound(id.to_string(), exec_id.to_string()))
    }

    /// Delete of an exec: only once it has stopped (or never started).
    pub fn delete_exec(&self, id: &str, exec_id: &str) -> Result<(i32, ExitStatus)> {
        self.with_container(id, |container| {
            let exec = container.exec_mut(exec_id)?;
            exec.lifecycle
                .deleted()
                .map_err(|refused| refusal(exec_id, refused))?;
            let exit = exec
                .exit_status()
                .unwrap_or(ExitStatus { code: 0, at: now() });
            let pid = exec.pid();
            if let Some(exec) = container.execs.remove(exec_id) {
                exec.remove_files();
            }
            Ok((pid, exit))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::lifecycle::Status;

    #[test]
    fn exec_ids_are_checked_and_files_land_in_the_bundle() {
        let bundle = tempfile::tempdir().unwrap();
        let exec =
            ExecProcess::new(bundle.path(), "e1", b"{}", StdioPaths::default(), false).unwrap();
        assert_eq!(exec.lifecycle.status(), Status::Created);
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
