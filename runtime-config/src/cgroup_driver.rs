//! Keeping Wedge's cgroup driver in step with runc's: containerd hands `SystemdCgroup` only
//! to runc's shim, so the engine config has to repeat the choice, and `wedge doctor` says
//! when the two disagree.

use crate::engine::CgroupDriver;

/// The driver runc's `SystemdCgroup` stands for (unset is containerd's default, cgroupfs).
pub fn runc_driver(systemd_cgroup: Option<bool>) -> CgroupDriver {
    if systemd_cgroup == Some(true) {
        CgroupDriver::Systemd
    } else {
        CgroupDriver::Cgroupfs
    }
}

/// What is wrong when Wedge would lay out cgroups other than runc does on this node, and the
/// setting that fixes it; None when they agree. `systemd_init`: PID 1 is systemd.
pub fn mismatch(
    runc_systemd_cgroup: Option<bool>,
    wedge: CgroupDriver,
    systemd_init: bool,
) -> Option<(String, String)> {
    let runc = runc_driver(runc_systemd_cgroup);
    // What `auto` chooses for the systemd-form paths that reveal the difference.
    let effective = match wedge {
        CgroupDriver::Auto if systemd_init => CgroupDriver::Systemd,
        CgroupDriver::Auto => CgroupDriver::Cgroupfs,
        other => other,
    };
    let name = |driver| match driver {
        CgroupDriver::Systemd => "systemd",
        _ => "cgroupfs",
    };
    (effective != runc).then(|| {
        (
            format!(
                "runc's cgroup driver is {} (SystemdCgroup {}) but Wedge's engine config \
                 gives {} on this node",
                name(runc),
                match runc_systemd_cgroup {
                    Some(value) => format!("= {value}"),
                    None => "unset".to_string(),
                },
                name(effective)
            ),
            format!(
                "set [cgroup] driver = \"{}\" in the engine config",
                name(runc)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mismatch_names_the_setting_that_fixes_it() {
        assert_eq!(mismatch(Some(true), CgroupDriver::Systemd, true), None);
        assert_eq!(mismatch(Some(true), CgroupDriver::Auto, true), None);
        assert_eq!(mismatch(None, CgroupDriver::Auto, false), None);
        assert_eq!(mismatch(Some(false), CgroupDriver::Cgroupfs, true), None);
        let (what, fix) = mismatch(Some(false), CgroupDriver::Auto, true).unwrap();
        assert!(what.contains("runc's cgroup driver is cgroupfs"), "{what}");
        assert!(fix.contains("driver = \"cgroupfs\""), "{fix}");
        let (_, fix) = mismatch(Some(true), CgroupDriver::Cgroupfs, true).unwrap();
        assert!(fix.contains("driver = \"systemd\""), "{fix}");
    }
}
