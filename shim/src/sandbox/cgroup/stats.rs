//! Cgroup metrics in the messages containerd decodes for `crictl stats` / `kubectl top`:
//! `io.containerd.cgroups.v1.Metrics` or `io.containerd.cgroups.v2.Metrics`.

use std::collections::HashMap;
use std::path::Path;

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};

use super::{io_error, Cgroup, CgroupError, Controller, Layout};

/// v1 reports user/system CPU in clock ticks (USER_HZ, 100 on Linux).
const NANOS_PER_TICK: u64 = 10_000_000;

pub enum Metrics {
    V1(v1::Metrics),
    V2(v2::Metrics),
}

impl Metrics {
    /// Packed for the Stats response. The type URL is the bare message name: that is how
    /// containerd's own shims send it and how its type registry finds the message.
    pub fn to_any(&self) -> Result<Any, containerd_shim_protos::protobuf::Error> {
        let (type_url, value) = match self {
            Metrics::V1(metrics) => (
                "io.containerd.cgroups.v1.Metrics",
                metrics.write_to_bytes()?,
            ),
            Metrics::V2(metrics) => (
                "io.containerd.cgroups.v2.Metrics",
                metrics.write_to_bytes()?,
            ),
        };
        let mut any = Any::new();
        any.type_url = type_url.to_string();
        any.value = value;
        Ok(any)
    }

    /// Memory in use (bytes), for logs and tests.
    pub fn memory_usage(&self) -> u64 {
        match self {
            Metrics::V1(metrics) => metrics.memory.usage.usage,
            Metrics::V2(metrics) => metrics.memory.usage,
        }
    }

    /// CPU time used (nanoseconds).
    pub fn cpu_nanos(&self) -> u64 {
        match self {
            Metrics::V1(metrics) => metrics.cpu.usage.total,
            Metrics::V2(metrics) => metrics.cpu.usage_usec * 1000,
        }
    }
}

pub(super) fn read(cgroup: &Cgroup) -> Result<Metrics, CgroupError> {
    match &cgroup.layout {
        Layout::Legacy(_) => read_v1(cgroup).map(Metrics::V1),
        Layout::Unified(_) => {
            let dir = cgroup
                .dir(Controller::Memory)
                .ok_or(CgroupError::NoHierarchy)?;
            read_v2(&dir).map(Metrics::V2)
        }
    }
}

fn read_file(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(io_error("read", path))
}

/// A number file; "max" (v2's unlimited) reads as u64::MAX, absent files as 0.
fn number(dir: &Path, file: &str) -> u64 {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|text| {
            let text = text.trim();
            if text == "max" {
                Some(u64::MAX)
            } else {
                text.parse().ok()
            }
        })
        .unwrap_or(0)
}

/// `key value` lines (memory.stat, cpu.stat, cpuacct.stat, memory.events).
fn key_values(dir: &Path, file: &str) -> HashMap<String, u64> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn read_v1(cgroup: &Cgroup) -> Result<v1::Metrics, CgroupError> {
    let mut metrics = v1::Metrics::new();
    if let Some(dir) = cgroup.dir(Controller::Cpuacct) {
        let mut usage = v1::CPUUsage::new();
        usage.total = read_file(&dir.join("cpuacct.usage"))?
            .trim()
            .parse()
            .unwrap_or(0);
        let ticks = key_values(&dir, "cpuacct.stat");
        usage.user = ticks.get("user").copied().unwrap_or(0) * NANOS_PER_TICK;
        usage.kernel = ticks.get("system").copied().unwrap_or(0) * NANOS_PER_TICK;
        usage.per_cpu = std::fs::read_to_string(dir.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|value| value.parse().ok())
            .collect();
        let mut cpu = v1::CPUStat::new();
        cpu.usage = MessageField::some(usage);
        if let Some(cpu_dir) = cgroup.dir(Controller::Cpu) {
            let stat = key_values(&cpu_dir, "cpu.stat");
            let mut throttling = v1::Throttle::new();
            throttling.periods = stat.get("nr_periods").copied().unwrap_or(0);
            throttling.throttled_periods = stat.get("nr_throttled").copied().unwrap_or(0);
            throttling.throttled_time = stat.get("throttled_time").copied().unwrap_or(0);
            cpu.throttling = MessageField::some(throttling);
        }
        metrics.cpu = MessageField::some(cpu);
    }
    if let Some(dir) = cgroup.dir(Controller::Memory) {
        let stat = key_values(&dir, "memory.stat");
        let get = |key: &str| stat.get(key).copied().unwrap_or(0);
        let mut memory = v1::MemoryStat::new();
        memory.cache = get("cache");
        memory.rss = get("rss");
        memory.rss_huge = get("rss_huge");
        memory.mapped_file = get("mapped_file");
        memory.dirty = get("dirty");
        memory.writeback = get("writeback");
        memory.pg_fault = get("pgfault");
        memory.pg_maj_fault = get("pgmajfault");
        memory.inactive_anon = get("inactive_anon");
        memory.active_anon = get("active_anon");
        memory.inactive_file = get("inactive_file");
        memory.active_file = get("active_file");
        memory.unevictable = get("unevictable");
        memory.hierarchical_memory_limit = get("hierarchical_memory_limit");
        memory.total_cache = get("total_cache");
        memory.total_rss = get("total_rss");
        memory.total_mapped_file = get("total_mapped_file");
        memory.total_inactive_anon = get("total_inactive_anon");
        memory.total_active_anon = get("total_active_anon");
        memory.total_inactive_file = get("total_inactive_file");
        memory.total_active_file = get("total_active_file");
        memory.total_unevictable = get("total_unevictable");
        let mut usage = v1::MemoryEntry::new();
        usage.usage = read_file(&dir.join("memory.usage_in_bytes"))?
            .trim()
            .parse()
            .unwrap_or(0);
        usage.limit = number(&dir, "memory.limit_in_bytes");
        usage.max = number(&dir, "memory.max_usage_in_bytes");
        usage.failcnt = number(&dir, "memory.failcnt");
        memory.usage = MessageField::some(usage);
        metrics.memory = MessageField::some(memory);
        let oom = key_values(&dir, "memory.oom_control");
        let mut control = v1::MemoryOomControl::new();
        control.oom_kill_disable = oom.get("oom_kill_disable").copied().unwrap_or(0);
        control.under_oom = oom.get("under_oom").copied().unwrap_or(0);
        control.oom_kill = oom.get("oom_kill").copied().unwrap_or(0);
        metrics.memory_oom_control = MessageField::some(control);
    }
    if let Some(dir) = cgroup.dir(Controller::Pids) {
        let mut pids = v1::PidsStat::new();
        pids.current = number(&dir, "pids.current");
        pids.limit = match number(&dir, "pids.max") {
            u64::MAX => 0,
            limit => limit,
        };
        metrics.pids = MessageField::some(pids);
    }
    Ok(metrics)
}

fn read_v2(dir: &Path) -> Result<v2::Metrics, CgroupError> {
    let mut metrics = v2::Metrics::new();
    let cpu_stat = key_values(dir, "cpu.stat");
    let get = |stats: &HashMap<String, u64>, key: &str| stats.get(key).copied().unwrap_or(0);
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = get(&cpu_stat, "usage_usec");
    cpu.user_usec = get(&cpu_stat, "user_usec");
    cpu.system_usec = get(&cpu_stat, "system_usec");
    cpu.nr_periods = get(&cpu_stat, "nr_periods");
    cpu.nr_throttled = get(&cpu_stat, "nr_throttled");
    cpu.throttled_usec = get(&cpu_stat, "throttled_usec");
    metrics.cpu = MessageField::some(cpu);

    let stat = key_values(dir, "memory.stat");
    let mut memory = v2::MemoryStat::new();
    memory.anon = get(&stat, "anon");
    memory.file = get(&stat, "file");
    memory.kernel_stack = get(&stat, "kernel_stack");
    memory.slab = get(&stat, "slab");
    memory.sock = get(&stat, "sock");
    memory.shmem = get(&stat, "shmem");
    memory.file_mapped = get(&stat, "file_mapped");
    memory.file_dirty = get(&stat, "file_dirty");
    memory.inactive_anon = get(&stat, "inactive_anon");
    memory.active_anon = get(&stat, "active_anon");
    memory.inactive_file = get(&stat, "inactive_file");
    memory.active_file = get(&stat, "active_file");
    memory.unevictable = get(&stat, "unevictable");
    memory.pgfault = get(&stat, "pgfault");
    memory.pgmajfault = get(&stat, "pgmajfault");
    memory.usage = read_file(&dir.join("memory.current"))?
        .trim()
        .parse()
        .unwrap_or(0);
    memory.usage_limit = number(dir, "memory.max");
    memory.swap_usage = number(dir, "memory.swap.current");
    memory.swap_limit = number(dir, "memory.swap.max");
    memory.max_usage = number(dir, "memory.peak");
    metrics.memory = MessageField::some(memory);

    let events = key_values(dir, "memory.events");
    let mut memory_events = v2::MemoryEvents::new();
    memory_events.low = get(&events, "low");
    memory_events.high = get(&events, "high");
    memory_events.max = get(&events, "max");
    memory_events.oom = get(&events, "oom");
    memory_events.oom_kill = get(&events, "oom_kill");
    metrics.memory_events = MessageField::some(memory_events);

    let mut pids = v2::PidsStat::new();
    pids.current = number(dir, "pids.current");
    pids.limit = match number(dir, "pids.max") {
        u64::MAX => 0,
        limit => limit,
    };
    metrics.pids = MessageField::some(pids);
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_metrics_from_files() {
        let root = tempfile::tempdir().unwrap();
        let cgroup = Cgroup::new(Layout::Unified(root.path().into()), "c1".into());
        cgroup.create().unwrap();
        let dir = root.path().join("c1");
        let write = |file: &str, text: &str| std::fs::write(dir.join(file), text).unwrap();
        write(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        write("memory.current", "4096000\n");
        write("memory.max", "max\n");
        write(
            "memory.stat",
            "anon 3000000\nfile 1000000\ninactive_file 200000\n",
        );
        write("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        write("pids.current", "1\n");
        write("pids.max", "32\n");
        let metrics = cgroup.metrics().unwrap();
        assert_eq!(metrics.memory_usage(), 4_096_000);
        assert_eq!(metrics.cpu_nanos(), 1_500_000);
        let Metrics::V2(v2) = &metrics else {
            panic!("v1 metrics from a v2 layout")
        };
        assert_eq!(v2.memory.usage_limit, u64::MAX);
        assert_eq!(v2.memory.inactive_file, 200_000);
        assert_eq!(v2.memory_events.oom_kill, 1);
        assert_eq!(v2.pids.limit, 32);
        let any = metrics.to_any().unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        assert_eq!(v2::Metrics::parse_from_bytes(&any.value).unwrap(), *v2);
    }
}
