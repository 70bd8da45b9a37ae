//! Routes the exit statuses the shim's reaper collects to the runners waiting for them.
//!
//! The containerd-shim crate reaps every child on SIGCHLD and announces `(pid, status)` on
//! its monitor. A runner is registered under the same lock it is spawned under, so its
//! exit can never arrive before someone is listening for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// How a container's process ended, as containerd records it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitStatus {
    pub code: u32,
    pub at: Timestamp,
}

#[derive(Default)]
pub struct ExitRouter {
    waiting: Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>,
}

impl ExitRouter {
    /// Subscribes to the reaper and starts routing. Call once, before any child is spawned.
    pub async fn start() -> Result<Arc<Self>> {
        let mut subscription =
            monitor_subscribe(Topic::Pid)
                .await
                .map_err(|err| Error::Runner {
                    id: String::new(),
                    reason: format!("cannot subscribe to process exits: {err}"),
                })?;
        let router = Arc::new(ExitRouter::default());
        let routing = Arc::clone(&router);
        tokio::spawn(async move {
            while let Some(event) = subscription.rx.recv().await {
                if let Subject::Pid(pid) = event.subject {
                    routing.deliver(pid, event.exit_code);
                }
            }
        });
        Ok(router)
    }

    /// Runs `spawn` (which returns the new child and its pid) and registers the pid before
    /// any exit can be routed.
    pub fn spawn_watched<T>(
        &self,
        spawn: impl FnOnce() -> Result<(T, i32)>,
    ) -> Result<(T, oneshot::Receiver<ExitStatus>)> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let (child, pid) = spawn()?;
        let (sender, receiver) = oneshot::channel();
        waiting.insert(pid, sender);
        Ok((child, receiver))
    }

    fn deliver(&self, pid: i32, code: i32) {
        let sender = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
        // Children that are not runners (mount helpers) have nobody waiting.
        if let Some(sender) = sender {
            let status = ExitStatus {
                code: u32::try_from(code).unwrap_or(255),
                at: now(),
            };
            let _ = sender.send(status);
        }
    }
}

pub fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut timestamp = Timestamp::new();
    timestamp.seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    timestamp.nanos = since_epoch.subsec_nanos() as i32;
    timestamp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exits_reach_the_registered_waiter_only() {
        let router = ExitRouter::default();
        let ((), first) = router.spawn_watched(|| Ok(((), 100))).unwrap();
        let ((), second) = router.spawn_watched(|| Ok(((), 101))).unwrap();
        router.deliver(999, 1);
        router.deliver(101, 143);
        router.deliver(100, 0);
        assert_eq!(second.await.unwrap().code, 143);
        assert_eq!(first.await.unwrap().code, 0);
    }
}
