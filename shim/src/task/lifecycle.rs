//! The life of a container and of an exec process, as the Task API sees it:
//! created → running (⇄ paused) → stopped → deleted.
//!
//! Pure bookkeeping: which operation is legal in which state, and the state it leads to.
//! The task service asks here first and acts second; the back ends never decide states.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Made and waiting for Start (a wasm runner holding its module, a runc container
    /// created but not started).
    Created,
    Running,
    /// Frozen by Pause.
    Paused,
    /// The process has exited; its status is known.
    Stopped,
    /// Delete has run: only a lingering handle can still see this.
    Deleted,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Deleted => "deleted",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a client asks of a container or an exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Start,
    Pause,
    Resume,
    Kill,
    Exec,
    Delete,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Pause => "pause",
            Operation::Resume => "resume",
            Operation::Kill => "kill",
            Operation::Exec => "exec",
            Operation::Delete => "delete",
        }
    }

    /// The state(s) the operation needs, as the error text names them.
    fn wanted(self) -> &'static str {
        match self {
            Operation::Start => "created",
            Operation::Pause | Operation::Exec => "running",
            Operation::Resume => "paused",
            Operation::Kill => "created, running or paused",
            Operation::Delete => "created or stopped",
        }
    }
}

/// An operation the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is {state}; {operation} needs it {wanted}", operation = operation.name())]
pub struct Refused {
    pub state: Status,
    pub operation: Operation,
    pub wanted: &'static str,
}

/// Which kind of process a lifecycle belongs to: an exec cannot be paused on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Container,
    Exec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    kind: Kind,
    status: Status,
}

impl Lifecycle {
    pub fn container() -> Self {
        Lifecycle {
            kind: Kind::Container,
            status: Status::Created,
        }
    }

    pub fn exec() -> Self {
        Lifecycle {
            kind: Kind::Exec,
            status: Status::Created,
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether `operation` is legal now, without changing anything.
    pub fn check(&self, operation: Operation) -> Result<(), Refused> {
        use Operation::*;
        use Status::*;
        let legal = matches!(
            (self.kind, operation, self.status),
            (_, Start, Created)
                | (Kind::Container, Pause | Exec, Running)
                | (Kind::Container, Resume, Paused)
                | (_, Kill, Created | Running | Paused)
                | (_, Delete, Created | Stopped)
        );
        if legal {
            Ok(())
        } else {
            Err(Refused {
                state: self.status,
                operation,
                wanted: operation.wanted(),
            })
        }
    }

    /// Start accepted: the process runs from here on (the back end's start follows).
    pub fn start(&mut self) -> Result<(), Refused> {
        self.check(Operation::Start)?;
        self.status = Status::Running;
        Ok(())
    }

    /// A pause (true) or resume (false) the back end has carried out. An exit that came in
    /// meanwhile wins.
    pub fn frozen(&mut self, frozen: bool) -> Result<(), Refused> {
        self.check(if frozen {
            Operation::Pause
        } else {
            Operation::Resume
        })?;
        self.status = if frozen {
            Status::Paused
        } else {
            Status::Running
        };
        Ok(())
    }

    /// The process has exited, from whatever state it was in (a runner can die before
    /// Start); after Delete there is nothing left to record.
    pub fn exited(&mut self) {
        if self.status != Status::Deleted {
            self.status = Status::Stopped;
        }
    }

    /// Delete has finished.
    pub fn deleted(&mut self) -> Result<(), Refused> {
        self.check(Operation::Delete)?;
        self.status = Status::Deleted;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_OPERATIONS: [Operation; 6] = [
        Operation::Start,
        Operation::Pause,
        Operation::Resume,
        Operation::Kill,
        Operation::Exec,
        Operation::Delete,
    ];

    fn container_in(status: Status) -> Lifecycle {
        Lifecycle {
            kind: Kind::Container,
            status,
        }
    }

    fn exec_in(status: Status) -> Lifecycle {
        Lifecycle {
            kind: Kind::Exec,
            status,
        }
    }

    fn legal(lifecycle: &Lifecycle) -> Vec<Operation> {
        ALL_OPERATIONS
            .into_iter()
            .filter(|operation| lifecycle.check(*operation).is_ok())
            .collect()
    }

    #[test]
    fn a_container_allows_exactly_these_operations_in_each_state() {
        use Operation::*;
        let table = [
            (Status::Created, vec![Start, Kill, Delete]),
            (Status::Running, vec![Pause, Kill, Exec]),
            (Status::Paused, vec![Resume, Kill]),
            (Status::Stopped, vec![Delete]),
            (Status::Deleted, vec![]),
        ];
        for (status, operations) in table {
            assert_eq!(legal(&container_in(status)), operations, "{status}");
        }
    }

    #[test]
    fn an_exec_allows_exactly_these_operations_in_each_state() {
        use Operation::*;
        let table = [
            (Status::Created, vec![Start, Kill, Delete]),
            (Status::Running, vec![Kill]),
            (Status::Stopped, vec![Delete]),
            (Status::Deleted, vec![]),
        ];
        for (status, operations) in table {
            assert_eq!(legal(&exec_in(status)), operations, "{status}");
        }
    }

    #[test]
    fn a_container_walks_created_running_paused_stopped_deleted() {
        let mut lifecycle = Lifecycle::container();
        assert_eq!(lifecycle.status(), Status::Created);
        lifecycle.start().unwrap();
        assert_eq!(lifecycle.status(), Status::Running);
        lifecycle.frozen(true).unwrap();
        assert_eq!(lifecycle.status(), Status::Paused);
        lifecycle.frozen(false).unwrap();
        assert_eq!(lifecycle.status(), Status::Running);
        lifecycle.exited();
        assert_eq!(lifecycle.status(), Status::Stopped);
        lifecycle.deleted().unwrap();
        assert_eq!(lifecycle.status(), Status::Deleted);
        lifecycle.exited();
        assert_eq!(lifecycle.status(), Status::Deleted, "no life after delete");
    }

    #[test]
    fn a_process_can_exit_from_every_live_state() {
        for status in [Status::Created, Status::Running, Status::Paused] {
            let mut lifecycle = container_in(status);
            lifecycle.exited();
            assert_eq!(lifecycle.status(), Status::Stopped, "from {status}");
        }
    }

    #[test]
    fn a_created_container_can_be_deleted_without_running() {
        let mut lifecycle = Lifecycle::container();
        lifecycle.deleted().unwrap();
        assert_eq!(lifecycle.status(), Status::Deleted);
    }

    #[test]
    fn illegal_transitions_leave_the_state_and_say_what_was_needed() {
        let mut running = container_in(Status::Running);
        let refused = running.start().unwrap_err();
        assert_eq!(refused.state, Status::Running);
        assert_eq!(refused.operation, Operation::Start);
        assert_eq!(refused.to_string(), "is running; start needs it created");
        assert_eq!(running.status(), Status::Running);

        let refused = running.deleted().unwrap_err();
        assert_eq!(
            refused.to_string(),
            "is running; delete needs it created or stopped"
        );
        assert_eq!(running.status(), Status::Running);

        let mut stopped = container_in(Status::Stopped);
        assert!(stopped.frozen(true).is_err());
        assert!(stopped.frozen(false).is_err());
        assert!(stopped.start().is_err());
        assert_eq!(stopped.status(), Status::Stopped);

        let mut paused = container_in(Status::Paused);
        assert_eq!(
            paused.frozen(true).unwrap_err().to_string(),
            "is paused; pause needs it running"
        );
    }

    #[test]
    fn an_exec_is_never_paused() {
        let mut exec = exec_in(Status::Running);
        assert!(exec.frozen(true).is_err());
        assert!(exec.check(Operation::Exec).is_err());
        exec.exited();
        exec.deleted().unwrap();
    }
}
