//! The runner's last steps before the guest's first instruction, in this order:
//!
//! 1. [`FileView::prepare`]: in the runner's own mount namespace (the shim unshares one for
//!    every runner), the root filesystem is bound onto itself, the spec's file mounts
//!    (`/etc/hosts`, `/etc/resolv.conf`…) are bound into it, and every volume is cloned as a
//!    detached mount, all `nodev,nosuid,noexec` (and read-only where asked). The guest's
//!    preopens are opened from these, so a device node in an image or a volume is refused by
//!    the kernel however the guest reaches it.
//! 2. [`pivot_into_rootfs`]: the runner's root becomes the container's root filesystem and
//!    the host's mount tree is detached: the cache, the bundle and other containers are out
//!    of reach; what the guest uses is held as descriptors and mappings.
//! 3. [`become_container_user`]: `process.user`, no capabilities in any set, no_new_privs.
//! 4. seccomp (`sandbox::seccomp`), the last step.
//!
//! Capabilities and no_new_privs belong to a thread, so all of this happens while the runner
//! is single-threaded ([`require_single_thread`]): every thread started afterwards inherits
//! the confinement, which makes it hold for every thread by construction.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::engine::{Preopen, Rejected};

/// The host could not confine the runner: nothing about the module, the operator's to fix.
#[derive(Debug)]
pub struct HostFailure(pub String);

impl From<HostFailure> for Rejected {
    /// Inside the compile child every failure is reported as text through one pipe.
    fn from(failure: HostFailure) -> Self {
        Rejected(failure.0)
    }
}
use crate::sandbox::privileges;
use crate::spec::{FileBind, Identity};

/// Fails unless this process has exactly one thread.
pub fn require_single_thread() -> Result<(), HostFailure> {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|tasks| tasks.count())
        .map_err(|err| HostFailure(format!("cannot count the runner's threads: {err}")))?;
    if threads == 1 {
        Ok(())
    } else {
        Err(HostFailure(format!(
            "internal error: the runner has {threads} threads before it is confined; \
             privileges are per thread, so it refuses to go on"
        )))
    }
}

/// The file systems the guest will see, mounted for it alone.
pub struct FileView {
    /// The root filesystem, bound onto itself with the guest's mount flags.
    pub rootfs: PathBuf,
    /// The volumes, as detached mounts reachable through `/proc/self/fd` until the pivot.
    pub mounts: Vec<Preopen>,
    /// Keeps the detached mounts alive until the preopens have been opened from them.
    _clones: Vec<OwnedFd>,
}

/// Flags of every mount the guest sees: a wasm guest executes nothing, and neither a device
/// node nor a set-id bit means anything to it.
const GUEST_MOUNT_FLAGS: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);

impl FileView {
    pub fn prepare(
        rootfs: &Path,
        readonly_root: bool,
        mounts: &[Preopen],
        file_binds: &[FileBind],
    ) -> Result<Self, Rejected> {
        // Nothing mounted below may reach the host's mount namespace, and nothing the host
        // mounts later needs to reach the runner.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(|err| Rejected(format!("cannot make the runner's mounts private: {err}")))?;
        mount(
            Some(rootfs),
            rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|err| {
            Rejected(format!(
                "cannot bind the root filesystem {}: {err}",
                rootfs.display()
            ))
        })?;
        // Before the root becomes read-only: a missing target is created in the image's
        // writable layer, as runc creates mount points.
        for bind in file_binds {
            bind_file_into(rootfs, bind).map_err(|err| {
                Rejected(format!(
                    "cannot bind {} at {}: {err}",
                    bind.host.display(),
                    bind.guest
                ))
            })?;
        }
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | GUEST_MOUNT_FLAGS;
        if readonly_root {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(None::<&str>, rootfs, None::<&str>, flags, None::<&str>).map_err(|err| {
            Rejected(format!(
                "cannot restrict the root filesystem {}: {err}",
                rootfs.display()
            ))
        })?;
        let mut clones = Vec::with_capacity(mounts.len());
        let mut preopens = Vec::with_capacity(mounts.len());
        for preopen in mounts {
            let clone = clone_for_guest(&preopen.host, preopen.readonly).map_err(|err| {
                Rejected(format!(
                    "cannot prepare mount {} for {}: {err}",
                    preopen.host.display(),
                    preopen.guest
                ))
            })?;
            preopens.push(Preopen {
                host: PathBuf::from(format!("/proc/self/fd/{}", clone.as_raw_fd())),
                guest: preopen.guest.clone(),
                readonly: preopen.readonly,
            });
            clones.push(clone);
        }
        Ok(FileView {
            rootfs: rootfs.to_path_buf(),
            mounts: preopens,
            _clones: clones,
        })
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// A detached copy of the mount tree at `host`, a directory or a file (like a recursive bind
/// mount that is attached nowhere), with the guest's mount flags on every mount of it.
fn clone_for_guest(host: &Path, readonly: bool) -> std::io::Result<OwnedFd> {
    let path = CString::new(host.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: open_tree reads a NUL-terminated path and returns a new descriptor or -1;
    // no memory of ours is written.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut set = MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC;
    if readonly {
        set |= MOUNT_ATTR_RDONLY;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (of the size passed) and the empty path; the
    // descriptor is ours.
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(tree)
}

const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// Binds the host file `bind.host` at `bind.guest` inside `rootfs`. The target is found (or
/// made) through a capability on the root filesystem, so a symlink in the image cannot
/// point the mount at a host path, and the mount is attached to that very file.
fn bind_file_into(rootfs: &Path, bind: &FileBind) -> std::io::Result<()> {
    use cap_std::fs::{Dir, OpenOptions};
    let root = Dir::open_ambient_dir(rootfs, cap_std::ambient_authority())?;
    let relative = Path::new(bind.guest.trim_start_matches('/'));
    if let Some(parent) = relative
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        root.create_dir_all(parent)?;
    }
    let target = root.open_with(relative, OpenOptions::new().write(true).create(true))?;
    let source = clone_for_guest(&bind.host, bind.readonly)?;
    // SAFETY: move_mount reads two empty paths and takes two descriptors of ours; no memory
    // of ours is written.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            source.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the bound root filesystem the runner's root and detaches the host's tree, as runc
/// does (`pivot_root(".", ".")`, then a lazy unmount of the old root stacked beneath).
pub fn pivot_into_rootfs(rootfs: &Path) -> Result<(), HostFailure> {
    let fail = |step: &str, err: nix::Error| {
        HostFailure(format!(
            "cannot make {} the runner's root ({step}): {err}",
            rootfs.display()
        ))
    };
    nix::unistd::chdir(rootfs).map_err(|err| fail("chdir", err))?;
    nix::unistd::pivot_root(".", ".").map_err(|err| fail("pivot_root", err))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|err| fail("detach the host's root", err))?;
    nix::unistd::chdir("/").map_err(|err| fail("chdir /", err))?;
    Ok(())
}

/// Takes on the container's user with no capabilities and no_new_privs, if the runner is
/// root (a runner started by an unprivileged shim has nothing to drop).
pub fn become_container_user(identity: &Identity) -> Result<(), HostFailure> {
    if nix::unistd::geteuid().is_root() {
        privileges::drop_to(identity).map_err(HostFailure)?;
    } else {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|err| HostFailure(format!("cannot set no_new_privs: {err}")))?;
    }
    Ok(())
}

/// A change to the spec's AppArmor profile, prepared while `/proc` is still in view and made
/// after the pivot (the profile would forbid the mounts) and before the runner gives up its
/// privileges (the profile is a privileged transition, refused under no_new_privs).
pub struct AppArmorChange {
    attribute: std::fs::File,
    profile: String,
}

impl AppArmorChange {
    pub fn open(profile: &str) -> Result<Self, HostFailure> {
        // The per-LSM file first (kernels with LSM stacking), then the classic one.
        let attribute = [
            "/proc/thread-self/attr/apparmor/current",
            "/proc/thread-self/attr/current",
        ]
        .iter()
        .find_map(|path| std::fs::OpenOptions::new().write(true).open(path).ok())
        .ok_or_else(|| {
            HostFailure(format!(
                "cannot apply AppArmor profile {profile}: the kernel offers no AppArmor \
                     attribute file"
            ))
        })?;
        Ok(AppArmorChange {
            attribute,
            profile: profile.to_string(),
        })
    }

    pub fn apply(mut self) -> Result<(), HostFailure> {
        use std::io::Write;
        self.attribute
            .write_all(format!("changeprofile {}", self.profile).as_bytes())
            .map_err(|err| {
                HostFailure(format!(
                    "cannot change to AppArmor profile {}: {err}",
                    self.profile
                ))
            })
    }
}
