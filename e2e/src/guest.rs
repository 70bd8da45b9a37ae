//! A real systemd + cgroup v2 node for the tests that this VM (cgroup v1, no systemd as PID 1)
//! cannot be: a Debian bookworm guest under qemu's software emulation, with systemd as PID 1,
//! the unified cgroup hierarchy and containerd as a systemd unit. The disk is built once with
//! debootstrap and kept (`$WEDGE_GUEST_CACHE`, default `/var/tmp/wedge-guest`); every boot
//! runs on a throw-away snapshot of it. A oneshot unit mounts the host's share directory
//! (virtio 9p), runs its `run.sh` and powers the guest off.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// What the cached disk is built from; a different recipe rebuilds it.
/// D-Bus is there as on any systemd node: runc's systemd driver asks systemd through it.
const RECIPE: &str = "bookworm minbase 4: systemd systemd-sysv dbus linux-image-amd64 udev kmod \
                      iproute2 containerd runc containernetworking-plugins procps";
const PACKAGES: &str = "systemd,systemd-sysv,dbus,linux-image-amd64,udev,kmod,iproute2,\
                        containerd,runc,containernetworking-plugins,procps";
const MIRROR: &str = "http://deb.debian.org/debian";
const DISK_SIZE: &str = "4G";

/// The unit that runs the share's script at boot and powers the guest off after it.
const TEST_UNIT: &str = "[Unit]
Description=Wedge guest test
After=containerd.service
Wants=containerd.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'mkdir -p /mnt/wedge && mount -t 9p -o trans=virtio,version=9p2000.L wedge /mnt/wedge && /bin/bash /mnt/wedge/run.sh > /mnt/wedge/out.log 2>&1'
TimeoutStartSec=infinity
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Install]
WantedBy=multi-user.target
";

/// The cached guest: a disk image, its kernel and initrd.
pub struct Guest {
    dir: PathBuf,
}

impl Guest {
    /// The guest from the cache, built first when missing or made from another recipe
    /// (debootstrap, a few minutes; needs the Debian mirror).
    pub fn prepare() -> Result<Guest> {
        let dir = std::env::var_os("WEDGE_GUEST_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/wedge-guest"));
        let guest = Guest { dir };
        let stamp = guest.dir.join("recipe");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(RECIPE)
            || !guest.disk().is_file()
        {
            guest.build()?;
            std::fs::write(&stamp, RECIPE)?;
        }
        Ok(guest)
    }

    fn disk(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    fn build(&self) -> Result<()> {
        for tool in ["debootstrap", "qemu-system-x86_64", "mkfs.ext4"] {
            ensure!(
                which(tool),
                "{tool} is missing: apt-get install debootstrap qemu-system-x86 e2fsprogs"
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir)?;
        let rootfs = self.dir.join("rootfs");
        run(Command::new("debootstrap")
            .args([
                "--variant=minbase",
                &format!("--include={PACKAGES}"),
                "bookworm",
            ])
            .arg(&rootfs)
            .arg(MIRROR))
        .context("debootstrap of the guest failed")?;
        std::fs::write(rootfs.join("etc/hostname"), "wedge-guest\n")?;
        std::fs::write(rootfs.join("etc/fstab"), "/dev/vda / ext4 rw 0 1\n")?;
        std::fs::write(
            rootfs.join("etc/modules-load.d/wedge-9p.conf"),
            "9p\n9pnet_virtio\n",
        )?;
        let unit = rootfs.join("etc/systemd/system/wedge-guest.service");
        std::fs::write(&unit, TEST_UNIT)?;
        let wants = rootfs.join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants)?;
        let _ = std::fs::remove_file(wants.join("wedge-guest.service"));
        std::os::unix::fs::symlink(
            "/etc/systemd/system/wedge-guest.service",
            wants.join("wedge-guest.service"),
        )?;
        for (pattern, name) in [("vmlinuz-", "vmlinuz"), ("initrd.img-", "initrd.img")] {
            let found = std::fs::read_dir(rootfs.join("boot"))?
                .flatten()
                .find(|entry| entry.file_name().to_string_lossy().starts_with(pattern))
                .with_context(|| format!("the guest has no /boot/{pattern}*"))?;
            std::fs::copy(found.path(), self.dir.join(name))?;
        }
        let disk = self.disk();
        run(Command::new("truncate").args(["-s", DISK_SIZE]).arg(&disk))?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&rootfs)
            .arg(&disk))
        .context("mkfs.ext4 -d of the guest's disk failed")?;
        std::fs::remove_dir_all(&rootfs)?;
        Ok(())
    }

    /// Boots the guest with `share` mounted at /mnt/wedge; returns when it powered itself
    /// off (its `run.sh` ended), failing after `limit`. The serial console goes to
    /// `share/console.log`.
    pub fn boot(&self, share: &Path, limit: Duration) -> Result<()> {
        let console = std::fs::File::create(share.join("console.log"))?;
        let mut qemu = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-m",
                "2048",
                "-smp",
                "2",
                "-nographic",
                "-no-reboot",
            ])
            .args(["-nic", "none", "-snapshot"])
            .arg("-kernel")
            .arg(self.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(self.dir.join("initrd.img"))
            .args([
                "-append",
                "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 \
                 systemd.show_status=false",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio",
                self.disk().display()
            ))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=wedge,security_model=none,id=wedge",
                share.display()
            ))
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("cannot start qemu-system-x86_64")?;
        let deadline = Instant::now() + limit;
        let mut finished_at = None;
        loop {
            if let Some(status) = qemu.try_wait()? {
                ensure!(status.success(), "qemu ended with {status}");
                return Ok(());
            }
            // The script's last line is its own: once it is there, the results are in and a
            // guest stuck on its way down (systemd's shutdown waiting on a mount) costs only
            // a grace period, not the whole limit.
            if finished_at.is_none() && script_finished(&share.join(SCRIPT_OUTPUT)) {
                finished_at = Some(Instant::now());
            }
            if finished_at.is_some_and(|at| at.elapsed() > POWER_OFF_GRACE) {
                eprintln!(
                    "guest: the script finished but the guest did not power off; stopping qemu"
                );
                let _ = qemu.kill();
                let _ = qemu.wait();
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = qemu.kill();
                let _ = qemu.wait();
                bail!(
                    "the guest did not power off within {limit:?}; console: {}",
                    share.join("console.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Where the guest's script writes its results (in the share).
pub const SCRIPT_OUTPUT: &str = "out.log";
/// The line the script ends with.
pub const SCRIPT_DONE: &str = "guest: done";
/// How long a guest whose script has finished may take to power off.
const POWER_OFF_GRACE: Duration = Duration::from_secs(60);

fn script_finished(output: &Path) -> bool {
    std::fs::read_to_string(output).is_ok_and(|text| text.lines().any(|line| line == SCRIPT_DONE))
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|dir| dir.join(tool).is_file())
        })
        .unwrap_or(false)
}

fn run(command: &mut Command) -> Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
