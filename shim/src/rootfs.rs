//! Mounting and unmounting the container's root filesystem in its bundle.

use std::path::Path;

use containerd_shim::asynchronous::util::mount_rootfs;
use containerd_shim_protos::types::mount::Mount;

use crate::error::{Error, Result};

/// Mounts containerd's rootfs mounts, in order, on `target`. Returns whether anything was
/// mounted (an empty list means containerd already prepared `target`).
pub async fn mount(mounts: &[Mount], target: &Path) -> Result<bool> {
    for (index, mount) in mounts.iter().enumerate() {
        if let Err(err) = mount_rootfs(mount, target).await {
            if index > 0 {
                unmount(target);
            }
            return Err(Error::Mount {
                target: target.to_path_buf(),
                reason: err.to_string(),
            });
        }
    }
    Ok(!mounts.is_empty())
}

/// Unmounts everything at or below `target`. Failures are logged, not returned: cleanup
/// goes on with the rest.
pub fn unmount(target: &Path) {
    let Some(target_str) = target.to_str() else {
        tracing::warn!(target = %target.display(), "rootfs path is not UTF-8; not unmounted");
        return;
    };
    if let Err(err) = containerd_shim::mount::umount_recursive(Some(target_str), libc::MNT_DETACH) {
        tracing::warn!(target = %target.display(), error = %err, "failed to unmount rootfs");
    }
}
