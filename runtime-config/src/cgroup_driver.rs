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

/// The driver's name in the engine config.
pub fn name(driver: CgroupDriver) -> &'static str {
    match driver {
        CgroupDriver::Auto => "auto",
        CgroupDriver::Cgroupfs => "cgroupfs",
        CgroupDriver::Systemd => "systemd",
    }
}

/// Whether an engine config's text chooses a cgroup driver itself (`[cgroup] driver`).
pub fn sets_driver(engine_config: &str) -> bool {
    engine_config
        .parse::<toml_edit::DocumentMut>()
        .ok()
        .and_then(|doc| doc.get("cgroup")?.get("driver").map(|_| ()))
        .is_some()
}

/// The engine config the node installer writes: `engine_config` as given when it chooses a
/// driver itself, else with `[cgroup] driver` set to the one runc follows on the node, so
/// that wasm and native containers lay out cgroups as runc's own containers do. Text that is
/// not TOML comes back unchanged for the config's own validation to report.
pub fn with_runc_driver(engine_config: &str, runc_systemd_cgroup: Option<bool>) -> String {
    let Ok(mut doc) = engine_config.parse::<toml_edit::DocumentMut>() else {
        return engine_config.to_string();
    };
    if sets_driver(engine_config) {
        return engine_config.to_string();
    }
    let driver = name(runc_driver(runc_systemd_cgroup));
    let cgroup = doc
        .entry("cgroup")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
    let Some(table) = cgroup.as_table_like_mut() else {
        // `cgroup` is not a table: leave it for validation to refuse.
        return engine_config.to_string();
    };
    table.insert("driver", toml_edit::value(driver));
    if let Some(mut key) = table.key_mut("driver") {
        key.leaf_decor_mut()
            .set_prefix("# Set by `wedge node install` from runc's SystemdCgroup on this node.\n");
    }
    doc.to_string()
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
    fn the_installer_copies_runc_s_driver_unless_the_config_chooses_one() {
        let written = with_runc_driver("[cache]\nmax_size_mb = 100\n", Some(true));
        let config = crate::EngineConfig::parse(&written, "test").unwrap();
        assert_eq!(config.cgroup.driver, CgroupDriver::Systemd);
        assert!(
            written.starts_with("[cache]\nmax_size_mb = 100\n"),
            "{written}"
        );
        let written = with_runc_driver("", None);
        let config = crate::EngineConfig::parse(&written, "test").unwrap();
        assert_eq!(config.cgroup.driver, CgroupDriver::Cgroupfs);
        // An existing [cgroup] table gains the key.
        let written = with_runc_driver("[cgroup]\n", Some(false));
        assert_eq!(
            crate::EngineConfig::parse(&written, "test")
                .unwrap()
                .cgroup
                .driver,
            CgroupDriver::Cgroupfs
        );
        // The operator's choice stands, even against runc's.
        let chosen = "[cgroup]\ndriver = \"auto\"\n";
        assert_eq!(with_runc_driver(chosen, Some(true)), chosen);
        assert!(sets_driver(chosen));
        assert!(!sets_driver("[cgroup]\n"));
        // Not TOML, or `cgroup` not a table: unchanged, for validation to refuse.
        assert_eq!(with_runc_driver("[[[", Some(true)), "[[[");
        assert_eq!(with_runc_driver("cgroup = 1\n", Some(true)), "cgroup = 1\n");
    }

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
