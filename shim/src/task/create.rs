//! Create: the spec read, the root filesystem mounted, the back end chosen by
//! `backend::plan` and the container made by that back end, then registered.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api;
use tokio::sync::{oneshot, watch};
use tracing::{warn, Instrument};

use super::container::Placement;
use super::tasks::Tasks;
use crate::backend::plan::{plan, Plan};
use crate::backend::{native, wasm, CreateRequest, Created, GivenUp};
use crate::error::{Error, Result};
use crate::image::{inspect_entrypoint, Entrypoint};
use crate::sandbox::Driver;
use crate::spec::ContainerSpec;
use crate::stdio::StdioPaths;
use crate::{options, rootfs};

impl Tasks {
    /// Makes the container of `req`; its pid. On error nothing is left behind.
    ///
    /// The work runs on a task of its own, to its end: ttrpc drops a request's future when
    /// its deadline passes (kubelet's runtime-request-timeout against a slow compile), and a
    /// Create dropped halfway would leave a mount, a cgroup or a runc container that nobody
    /// owns. When nobody is left to hear the answer, the container is deleted again.
    pub async fn create(self: &Arc<Self>, req: api::CreateTaskRequest) -> Result<i32> {
        let in_flight = self.begin_create(&req.id)?;
        let (mut answer, answered) = oneshot::channel();
        let tasks = Arc::clone(self);
        tokio::spawn(
            async move {
                let (give_up, given_up) = watch::channel(false);
                let mut create =
                    std::pin::pin!(tasks.create_to_the_end(&req, GivenUp::new(given_up)));
                let created = tokio::select! {
                    created = &mut create => created,
                    () = answer.closed() => {
                        let _ = give_up.send(true);
                        create.await
                    }
                };
                if answer.send(created).is_err() {
                    tasks.undo_unanswered_create(&req.id).await;
                }
                drop(in_flight);
            }
            .in_current_span(),
        );
        answered
            .await
            .unwrap_or_else(|_| Err(Error::Internal("Create ended without an answer".into())))
    }

    /// Deletes a container whose Create nobody waits for any more (a container containerd
    /// does not know it has).
    async fn undo_unanswered_create(self: &Arc<Self>, id: &str) {
        if !self.containers().contains_key(id) {
            return;
        }
        warn!("containerd gave up waiting for Create: deleting the container again");
        // Still created: Delete ends its process first.
        if let Err(err) = self.delete_to_the_end(id).await {
            warn!(error = %err, "cannot delete the unanswered container");
        }
    }

    async fn create_to_the_end(
        self: &Arc<Self>,
        req: &api::CreateTaskRequest,
        given_up: GivenUp,
    ) -> Result<i32> {
        // Overlaps the slow first step of the runner's cgroup migration with the rest of
        // Create (a native container's runc migrates its init too).
        crate::sandbox::cgroup::warm_up_migration();
        let bundle = PathBuf::from(&req.bundle);
        let spec = ContainerSpec::load(&bundle)?;
        let pod = crate::spec::pod_label(&spec.annotations);
        if let Some(pod) = &pod {
            tracing::Span::current().record("pod", pod.as_str());
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        let rootfs = spec.rootfs.clone();
        let mounted = rootfs::mount(&req.rootfs, &rootfs).await?;
        let created = match self.make(req, &bundle, spec, &stdio, given_up).await {
            Ok(created) => created,
            Err(err) => {
                if mounted {
                    rootfs::unmount(&rootfs);
                }
                return Err(err);
            }
        };
        let pid = created.pid;
        let placement = Placement {
            id: req.id.clone(),
            pod,
            bundle,
            rootfs,
            rootfs_mounted: mounted,
            stdio,
        };
        self.register(placement, created);
        Ok(pid)
    }

    /// Everything of Create after the root filesystem is mounted; on error the back end
    /// has left nothing behind, and the caller unmounts.
    async fn make(
        &self,
        req: &api::CreateTaskRequest,
        bundle: &Path,
        spec: ContainerSpec,
        stdio: &StdioPaths,
        given_up: GivenUp,
    ) -> Result<Created> {
        let engine_config = options::engine_config(req.options.as_ref())?;
        crate::logging::apply_configured(engine_config.log_level, engine_config.log_format);
        // One decision for wasm and native containers alike, as runc's shim makes it.
        let driver = Driver::decide(engine_config.cgroup.driver, &spec.cgroups_path);
        let entrypoint = self.inspect_entrypoint(&spec).await?;
        let planned = plan(entrypoint, self.content.wasm_layer(&req.id)).await?;
        let request = CreateRequest {
            id: &req.id,
            namespace: &self.namespace,
            bundle,
            spec,
            stdio,
            terminal: req.terminal,
            engine_config: &engine_config,
            driver,
            exits: &self.exits,
            given_up,
        };
        match planned {
            Plan::Wasm(module) => wasm::create(request, module).await,
            Plan::Native => native::create(request).await,
        }
    }

    /// What the spec's entrypoint is in the root filesystem, looked at on a blocking
    /// thread: the image's file system can be slow or hostile, and the pod's other
    /// containers are served meanwhile.
    async fn inspect_entrypoint(
        &self,
        spec: &ContainerSpec,
    ) -> Result<Option<crate::image::EntrypointFile>> {
        let Some(entrypoint) = Entrypoint::parse(&spec.args) else {
            return Ok(None);
        };
        let (rootfs, env, cwd) = (spec.rootfs.clone(), spec.env.clone(), spec.cwd.clone());
        tokio::task::spawn_blocking(move || {
            inspect_entrypoint(&rootfs, &entrypoint.path, &env, &cwd)
        })
        .await
        .map(Some)
        .map_err(|err| Error::Internal(format!("looking for the entrypoint failed: {err}")))
    }
}
