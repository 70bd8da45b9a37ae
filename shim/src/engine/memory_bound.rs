//! How large the linear memories of a module may grow.

/// Room kept for the runtime's own allocations while the module runs (WASI buffers, the
/// async stack): without it a module growing to the limit would be OOM-killed a few pages
/// short instead of seeing its `memory.grow` fail.
pub const HOST_HEADROOM: u64 = 2 << 20;

/// The bound for linear memories: the engine options' own bound, and the container's memory
/// limit minus what the runtime already holds in the container's cgroup (`in_use`) and the
/// headroom; the smaller of the two, or none when neither is set.
pub fn linear_memory_bound(
    options_bound: Option<u64>,
    container_limit: Option<u64>,
    in_use: u64,
) -> Option<u64> {
    let from_cgroup = container_limit.map(|limit| limit.saturating_sub(in_use + HOST_HEADROOM));
    match (options_bound, from_cgroup) {
        (Some(options), Some(cgroup)) => Some(options.min(cgroup)),
        (options, cgroup) => options.or(cgroup),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_smaller_bound_wins_and_the_headroom_is_kept() {
        assert_eq!(linear_memory_bound(None, None, 5 * MIB), None);
        assert_eq!(
            linear_memory_bound(Some(64 * MIB), None, 5 * MIB),
            Some(64 * MIB)
        );
        assert_eq!(
            linear_memory_bound(None, Some(64 * MIB), 10 * MIB),
            Some(64 * MIB - 10 * MIB - HOST_HEADROOM)
        );
        assert_eq!(
            linear_memory_bound(Some(16 * MIB), Some(64 * MIB), 10 * MIB),
            Some(16 * MIB)
        );
    }

    #[test]
    fn a_limit_already_used_up_leaves_no_room() {
        assert_eq!(linear_memory_bound(None, Some(MIB), 4 * MIB), Some(0));
    }
}
