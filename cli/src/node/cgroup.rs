//! Which cgroup hierarchy the host runs, read from a mountinfo table.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
    /// v1 controllers plus a cgroup2 mount (usually `/sys/fs/cgroup/unified`).
    Hybrid,
    Unknown,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
            CgroupVersion::Hybrid => "hybrid",
            CgroupVersion::Unknown => "unknown",
        })
    }
}

/// Reads the file system types of `/proc/<pid>/mountinfo` lines (the field after ` - `).
pub fn from_mountinfo(mountinfo: &str) -> CgroupVersion {
    let mut v1 = false;
    let mut v2 = false;
    for line in mountinfo.lines() {
        let Some((_, after)) = line.split_once(" - ") else {
            continue;
        };
        match after.split_whitespace().next() {
            Some("cgroup") => v1 = true,
            Some("cgroup2") => v2 = true,
            _ => {}
        }
    }
    match (v1, v2) {
        (true, true) => CgroupVersion::Hybrid,
        (true, false) => CgroupVersion::V1,
        (false, true) => CgroupVersion::V2,
        (false, false) => CgroupVersion::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "30 25 0:26 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n";
    const V2: &str = "29 25 0:25 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn versions() {
        assert_eq!(from_mountinfo(V1), CgroupVersion::V1);
        assert_eq!(from_mountinfo(V2), CgroupVersion::V2);
        assert_eq!(from_mountinfo(&format!("{V1}{V2}")), CgroupVersion::Hybrid);
        assert_eq!(from_mountinfo(""), CgroupVersion::Unknown);
    }
}
