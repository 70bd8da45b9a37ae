//! `wedge node wait`: the DaemonSet's long-running container after the install init
//! container; it does nothing until the pod is stopped.

use super::error::{NodeError, Result};

/// Returns on SIGTERM or SIGINT.
pub async fn until_terminated() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).map_err(NodeError::io("cannot watch", "SIGTERM"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(NodeError::io("cannot watch", "SIGINT"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
