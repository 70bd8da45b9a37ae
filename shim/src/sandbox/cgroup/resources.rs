//! `linux.resources` as cgroup files: v1 and v2 spell the same limits differently.

use super::{io_error, Cgroup, CgroupError, Controller, Layout};
use crate::spec::Resources;

/// How a container's limits are written to its cgroup.
trait CgroupFiles {
    /// (controller, file, value) for every limit set, in the order the kernel accepts them.
    fn files(&self, v2: bool) -> Vec<(Controller, &'static str, String)>;
}

impl CgroupFiles for Resources {
    fn files(&self, v2: bool) -> Vec<(Controller, &'static str, String)> {
        let mut files = Vec::new();
        let limit_or = |value: Option<i64>, unlimited: &str| match value {
            Some(value) if value > 0 => value.to_string(),
            _ => unlimited.to_string(),
        };
        if v2 {
            if self.memory_limit.is_some() {
                files.push((
                    Controller::Memory,
                    "memory.max",
                    limit_or(self.memory_limit, "max"),
                ));
            }
            if let (Some(swap), Some(memory)) = (self.memory_swap, self.memory_bytes()) {
                // v2 limits swap alone; the spec gives memory + swap.
                let swap_only = if swap < 0 {
                    "max".to_string()
                } else {
                    (swap as u64).saturating_sub(memory).to_string()
                };
                files.push((Controller::Memory, "memory.swap.max", swap_only));
            }
            if let Some(shares) = self.cpu_shares {
                files.push((
                    Controller::Cpu,
                    "cpu.weight",
                    shares_to_weight(shares).to_string(),
                ));
            }
            if self.cpu_quota.is_some() || self.cpu_period.is_some() {
                let period = self.cpu_period.unwrap_or(100_000);
                files.push((
                    Controller::Cpu,
                    "cpu.max",
                    format!("{} {period}", limit_or(self.cpu_quota, "max")),
                ));
            }
            if self.pids_limit.is_some() {
                files.push((
                    Controller::Pids,
                    "pids.max",
                    limit_or(self.pids_limit, "max"),
                ));
            }
        } else {
            if self.memory_limit.is_some() {
                files.push((
                    Controller::Memory,
                    "memory.limit_in_bytes",
                    limit_or(self.memory_limit, "-1"),
                ));
            }
            if let Some(shares) = self.cpu_shares {
                files.push((Controller::Cpu, "cpu.shares", shares.to_string()));
            }
            if let Some(period) = self.cpu_period {
                files.push((Controller::Cpu, "cpu.cfs_period_us", period.to_string()));
            }
            if self.cpu_quota.is_some() {
                files.push((
                    Controller::Cpu,
                    "cpu.cfs_quota_us",
                    limit_or(self.cpu_quota, "-1"),
                ));
            }
            if self.pids_limit.is_some() {
                files.push((
                    Controller::Pids,
                    "pids.max",
                    limit_or(self.pids_limit, "max"),
                ));
            }
        }
        files
    }
}

/// cgroup v2 `cpu.weight` (1..10000) for v1 `cpu.shares` (2..262144), the mapping every
/// OCI runtime uses, so a pod gets the same share on either version.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

pub(super) fn apply(cgroup: &Cgroup, resources: &Resources) -> Result<(), CgroupError> {
    let v2 = matches!(cgroup.layout, Layout::Unified(_));
    for (controller, file, value) in resources.files(v2) {
        let Some(dir) = cgroup.dir(controller) else {
            continue;
        };
        let path = dir.join(file);
        std::fs::write(&path, &value).map_err(io_error("write a limit to", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Resources {
        Resources {
            memory_limit: Some(64 << 20),
            memory_swap: Some(96 << 20),
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            pids_limit: Some(32),
        }
    }

    #[test]
    fn v1_files() {
        let files = limits().files(false);
        let names: Vec<_> = files
            .iter()
            .map(|(_, file, value)| format!("{file}={value}"))
            .collect();
        assert_eq!(
            names,
            [
                "memory.limit_in_bytes=67108864",
                "cpu.shares=512",
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=50000",
                "pids.max=32"
            ]
        );
    }

    #[test]
    fn v2_files() {
        let root = tempfile::tempdir().unwrap();
        let cgroup = Cgroup::new(Layout::Unified(root.path().into()), "pod/c1".into());
        cgroup.create().unwrap();
        cgroup.apply(&limits()).unwrap();
        let read =
            |file: &str| std::fs::read_to_string(root.path().join("pod/c1").join(file)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "33554432");
        assert_eq!(read("cpu.weight"), "20");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("pids.max"), "32");
        let unlimited = Resources {
            memory_limit: Some(-1),
            cpu_quota: Some(-1),
            ..Default::default()
        };
        cgroup.apply(&unlimited).unwrap();
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");
    }

    #[test]
    fn shares_map_onto_weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
