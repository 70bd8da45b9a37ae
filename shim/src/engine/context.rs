//! The WASI view every program gets, command or HTTP handler: argv, env, the process's stdio,
//! its root filesystem and mounts, the network policy, and the bound on linear memories.

use std::path::Path;
use std::sync::Arc;

use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wedge_runtime_config::NetworkConfig;

use super::Rejected;

pub struct CommandContext<'a> {
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub rootfs: &'a Path,
    pub readonly_root: bool,
    pub mounts: &'a [Preopen],
    /// Total bytes any one linear memory may grow to.
    pub memory_limit: Option<u64>,
    pub network: &'a NetworkConfig,
}

/// A host directory the program sees at `guest` (a volume, an emptyDir).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Preopen {
    pub host: std::path::PathBuf,
    pub guest: String,
    pub readonly: bool,
}

fn fs_perms(readonly: bool) -> FsPerms {
    if readonly {
        FsPerms::ReadOnly
    } else {
        FsPerms::ReadWrite
    }
}

impl CommandContext<'_> {
    /// Opens the preopens now, so that a filesystem that cannot be opened is a Create error
    /// and not an exit code.
    pub(super) fn wasi_builder(&self) -> Result<WasiCtxBuilder, Rejected> {
        let mut builder = without_filesystem(self.args, self.env, self.network);
        builder
            .preopened_dir(self.rootfs, "/", fs_perms(self.readonly_root))
            .map_err(|err| Rejected::from_wasmtime("cannot open the root filesystem", &err))?;
        for mount in self.mounts {
            builder
                .preopened_dir(&mount.host, &mount.guest, fs_perms(mount.readonly))
                .map_err(|err| {
                    Rejected::from_wasmtime(
                        &format!(
                            "cannot open mount {} for {}",
                            mount.host.display(),
                            mount.guest
                        ),
                        &err,
                    )
                })?;
        }
        Ok(builder)
    }

    pub(super) fn store_limits(&self) -> StoreLimits {
        store_limits(self.memory_limit)
    }
}

/// Everything but the preopens: an HTTP server builds one of these per request and gives it
/// the directories opened once at Create.
pub(super) fn without_filesystem(
    args: &[String],
    env: &[(String, String)],
    network: &NetworkConfig,
) -> WasiCtxBuilder {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(args)
        .envs(env)
        .inherit_stdio()
        // The runner is a process of its own: blocking it on file I/O is what we want,
        // and it spares a thread pool.
        .allow_blocking_current_thread(true);
    apply_network_policy(&mut builder, network);
    builder
}

/// Bounds every linear memory of a store at `memory_limit` bytes, if given.
pub(super) fn store_limits(memory_limit: Option<u64>) -> StoreLimits {
    let mut limits = StoreLimitsBuilder::new();
    if let Some(bytes) = memory_limit {
        limits = limits.memory_size(usize::try_from(bytes).unwrap_or(usize::MAX));
    }
    limits.build()
}

/// `wasi:sockets` as the operator's `[network]` section says: which protocols, name lookup,
/// and which addresses a guest may bind, connect or send to. Its resolver cannot check a
/// name before it asks the node's DNS, so name lookup is there only while the hostname
/// rules let every name through and some address may be reached at all.
fn apply_network_policy(builder: &mut WasiCtxBuilder, policy: &NetworkConfig) {
    builder
        .allow_tcp(policy.tcp)
        .allow_udp(policy.udp)
        .allow_ip_name_lookup(
            policy.ip_name_lookup && policy.any_name_permitted() && policy.reaches_anything(),
        );
    let policy = Arc::new(policy.clone());
    builder.socket_addr_check(move |address, _use: SocketAddrUse| {
        let permitted = policy.permits(address.ip());
        Box::pin(async move { permitted })
    });
}
