//! The cgroup half of the task service: Stats, Update, Pids and TaskOOM events, for wasm
//! containers (the shim's cgroup) and native ones (runc's).

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api;
use containerd_shim_protos::events::task::TaskOOM;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::types::task::ProcessInfo;
use oci_spec::runtime::LinuxResources;
use tokio::task::AbortHandle;
use tracing::{info, warn, Instrument};

use super::Inner;
use crate::container::{Container, Status};
use crate::error::{Error, Result};
use crate::native::Runc;
use crate::sandbox::cgroup::oom::OomWatch;
use crate::sandbox::cgroup::Resources;
use crate::sandbox::Cgroup;

impl Inner {
    fn cgroup_of(&self, id: &str) -> Result<Cgroup> {
        self.with_container(id, |container| {
            container.cgroup.clone().ok_or(Error::Unsupported {
                operation: "stats without a cgroup",
            })
        })
    }

    pub(super) fn sandbox_error(
        id: &str,
        source: impl Into<crate::sandbox::SandboxError>,
    ) -> Error {
        Error::Sandbox {
            id: id.to_string(),
            source: source.into(),
        }
    }

    /// What acts on a container's processes as a whole: its runc (native), its cgroup and
    /// its bundle, taken under the lock once `check` accepts the container.
    pub(super) fn controls(
        &self,
        id: &str,
        check: impl FnOnce(&Container) -> Result<()>,
    ) -> Result<(Option<Runc>, Option<Cgroup>, PathBuf)> {
        self.with_container(id, |container| {
            check(container)?;
            Ok((
                container.runc().cloned(),
                container.cgroup.clone(),
                container.bundle.clone(),
            ))
        })
    }

    /// The container's cgroup metrics, in the message containerd decodes for CRI.
    pub(super) fn stats(&self, id: &str) -> Result<Any> {
        let cgroup = self.cgroup_of(id)?;
        let metrics = cgroup
            .metrics()
            .map_err(|err| Self::sandbox_error(id, err))?;
        metrics.to_any().map_err(|err| Error::Runner {
            id: id.to_string(),
            reason: format!("cannot encode metrics: {err}"),
        })
    }

    /// Every process of the container: the runner for wasm, all of the cgroup for native.
    pub(super) fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let (status, pid, cgroup, native) = self.with_container(id, |container| {
            Ok((
                container.status(),
                container.pid,
                container.cgroup.clone(),
                container.runc().is_some(),
            ))
        })?;
        if status == Status::Stopped {
            return Ok(Vec::new());
        }
        let pids = match (native, cgroup) {
            (true, Some(cgroup)) => cgroup.pids().unwrap_or_else(|_| vec![pid]),
            _ => vec![pid],
        };
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            })
            .collect())
    }

    /// New `linux.resources` for a running container.
    pub(super) async fn update(&self, req: &api::UpdateTaskRequest) -> Result<()> {
        let json = req
            .resources
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| Error::InvalidRequest("update without resources".into()))?;
        let resources: LinuxResources = serde_json::from_slice(&json)
            .map_err(|err| Error::InvalidRequest(format!("malformed resources: {err}")))?;
        let (runc, cgroup, bundle) = self.controls(&req.id, |_| Ok(()))?;
        match (runc, cgroup) {
            (Some(runc), _) => runc.update(&self.exits, &req.id, &bundle, &json).await,
            (None, Some(cgroup)) => cgroup
                .apply(&Resources::from_oci(&resources))
                .map_err(|err| Self::sandbox_error(&req.id, err)),
            (None, None) => Err(Error::Unsupported {
                operation: "update without a cgroup",
            }),
        }
    }

    /// Publishes TaskOOM for each OOM kill in the container's cgroup until the cgroup goes.
    pub(super) fn watch_oom(self: &Arc<Self>, id: &str, cgroup: &Cgroup) -> Option<AbortHandle> {
        let mut watch = match OomWatch::new(cgroup) {
            Ok(watch) => watch,
            Err(err) => {
                warn!(error = %err, "no OOM events for this container");
                return None;
            }
        };
        let inner = Arc::clone(self);
        let container_id = id.to_string();
        let span = tracing::info_span!("oom", id = %container_id);
        let task = tokio::spawn(
            async move {
                while let Some(kills) = watch.next_kill().await {
                    info!(kills, "OOM kill in the container's cgroup");
                    inner
                        .publish(TaskOOM {
                            container_id: container_id.clone(),
                            ..Default::default()
                        })
                        .await;
                }
            }
            .instrument(span),
        );
        Some(task.abort_handle())
    }
}
