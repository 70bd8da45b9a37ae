//! The limits of a container's `linux.resources` that Wedge applies itself.

use oci_spec::runtime::LinuxResources;

/// The limits Wedge applies to a wasm container (and reads back for Update).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// Bytes; None or negative = unlimited.
    pub memory_limit: Option<i64>,
    /// Memory + swap, bytes (v1 semantics, as in the OCI spec).
    pub memory_swap: Option<i64>,
    pub cpu_shares: Option<u64>,
    /// Microseconds per period; None or negative = unlimited.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub pids_limit: Option<i64>,
}

impl Resources {
    pub fn from_oci(resources: &LinuxResources) -> Self {
        let memory = resources.memory().as_ref();
        let cpu = resources.cpu().as_ref();
        Resources {
            memory_limit: memory.and_then(|memory| memory.limit()),
            memory_swap: memory.and_then(|memory| memory.swap()),
            cpu_shares: cpu.and_then(|cpu| cpu.shares()),
            cpu_quota: cpu.and_then(|cpu| cpu.quota()),
            cpu_period: cpu.and_then(|cpu| cpu.period()),
            pids_limit: resources.pids().as_ref().map(|pids| pids.limit()),
        }
    }

    /// The memory limit in bytes, when there is one.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory_limit
            .filter(|limit| *limit > 0)
            .map(|limit| limit as u64)
    }
}
