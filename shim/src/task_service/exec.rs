//! The exec half of the task service: processes added to a running native container.

use std::sync::Arc;

use containerd_shim::api;
use containerd_shim_protos::events::task::{TaskExecAdded, TaskExecStarted};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{Inner, ProcessState};
use crate::container::{wait_for_exit, Status, StdioPaths};
use crate::error::{Error, Result};
use crate::exec::ExecProcess;
use crate::exits::{now, ExitStatus};
use crate::native::console::start_with_stdio;
use crate::native::runc::ExecFiles;

impl Inner {
    /// Exec: records the process; it runs at Start.
    pub(super) async fn add_exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| Error::InvalidRequest("exec without a process spec".into()))?;
        self.with_container(&req.id, |container| {
            if container.runc().is_none() {
                return Err(Error::ExecUnsupported(container.id.clone()));
            }
            let status = container.status();
            if status != Status::Running {
                return Err(container.wrong_state(status, "exec", "running"));
            }
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
        self.publish(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
        .await;
        Ok(())
    }

    /// Start of an exec: `runc exec --detach`, then a task that reports its exit.
    pub(super) async fn start_exec(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<i32> {
        let (runc, bundle, spec, pid_file, stdio, terminal, exit_sender) =
            self.with_container(id, |container| {
                let runc = container
                    .runc()
                    .cloned()
                    .ok_or_else(|| Error::ExecUnsupported(id.to_string()))?;
                let bundle = container.bundle.clone();
                let exec = container.exec_mut(exec_id)?;
                let status = exec.status();
                let sender = exec
                    .take_exit_sender()
                    .filter(|_| status == Status::Created)
                    .ok_or_else(|| Error::WrongState {
                        id: exec_id.to_string(),
                        state: status.name(),
                        operation: "start",
                        wanted: "created",
                    })?;
                Ok((
                    runc,
                    bundle,
                    exec.spec.clone(),
                    exec.pid_file.clone(),
                    exec.stdio.clone(),
                    exec.terminal,
                    sender,
                ))
            })?;
        let started = start_with_stdio(&stdio, terminal, |init_stdio, socket| {
            let files = ExecFiles {
                bundle: &bundle,
                process: &spec,
                pid_file: &pid_file,
            };
            runc.exec(&self.exits, id, files, init_stdio, socket)
        })
        .await;
        let (pid, console) = match started {
            Ok(started) => started,
            Err(err) => {
                // The process never ran: it is stopped with the failure status.
                let _ = exit_sender.send(Some(ExitStatus {
                    code: 255,
                    at: now(),
                }));
                return Err(err);
            }
        };
        let exited = self.exits.watch(pid);
        self.with_container(id, |container| {
            let exec = container.exec_mut(exec_id)?;
            exec.pid = Some(pid);
            exec.console = console;
            Ok(())
        })?;
        self.publish(TaskExecStarted {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            pid: pid as u32,
            ..Default::default()
        })
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

    pub(super) fn exec_state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        self.with_container(id, |container| {
            let exec = container.exec(exec_id)?;
            Ok(ProcessState {
                id: exec_id,
                pid: exec.pid.unwrap_or_default(),
                status: exec.status(),
                stdio: &exec.stdio,
                exit: exec.exit_status(),
            }
            .response(&container.bundle, exec_id))
        })
    }

    pub(super) fn kill_exec(&self, id: &str, exec_id: &str, signal: Signal) -> Result<()> {
        self.with_container(id, |container| {
            let exec = container.exec(exec_id)?;
            match (exec.status(), exec.pid) {
                (Status::Running, Some(pid)) => match kill(Pid::from_raw(pid), signal) {
                    Ok(()) => Ok(()),
                    Err(nix::Error::ESRCH) => Err(Error::ProcessFinished),
                    Err(source) => Err(Error::Sys {
                        context: "cannot signal the exec process",
                        source,
                    }),
                },
                _ => Err(Error::ProcessFinished),
            }
        })
    }

    pub(super) async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<ExitStatus> {
        let exit =
            self.with_container(id, |container| Ok(container.exec(exec_id)?.exit_watch()))?;
        wait_for_exit(exit)
            .await
            .ok_or_else(|| Error::ExecNotFound(id.to_string(), exec_id.to_string()))
    }

    /// Delete of an exec: only once it has stopped (or never started).
    pub(super) fn delete_exec(&self, id: &str, exec_id: &str) -> Result<(i32, ExitStatus)> {
        self.with_container(id, |container| {
            let exec = container.exec(exec_id)?;
            let status = exec.status();
            if status == Status::Running {
                return Err(Error::WrongState {
                    id: exec_id.to_string(),
                    state: status.name(),
                    operation: "delete",
                    wanted: "stopped",
                });
            }
            let exit = exec
                .exit_status()
                .unwrap_or(ExitStatus { code: 0, at: now() });
            let pid = exec.pid.unwrap_or_default();
            if let Some(exec) = container.execs.remove(exec_id) {
                exec.remove_files();
            }
            Ok((pid, exit))
        })
    }
}
