use super::*;

const HYBRID: &str = "\
25 1 0:23 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
30 25 0:28 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
31 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
32 25 0:30 / /sys/fs/cgroup/pids rw,nosuid shared:16 - cgroup cgroup rw,pids
33 25 0:31 / /sys/fs/cgroup/freezer rw,nosuid shared:17 - cgroup cgroup rw,freezer
";

const UNIFIED: &str = "\
25 1 0:23 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
";

#[test]
fn hybrid_hosts_use_the_v1_hierarchies() {
    let layout = Layout::from_mountinfo(HYBRID).unwrap();
    let Layout::Legacy(mounts) = &layout else {
        panic!("{layout:?}")
    };
    assert!(mounts.contains(&(Controller::Cpu, "/sys/fs/cgroup/cpu,cpuacct".into())));
    assert!(mounts.contains(&(Controller::Cpuacct, "/sys/fs/cgroup/cpu,cpuacct".into())));
    let cgroup = Cgroup::new(layout, "pods/c1".into());
    assert_eq!(
        cgroup.dirs(),
        vec![
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/pods/c1"),
            PathBuf::from("/sys/fs/cgroup/freezer/pods/c1"),
            PathBuf::from("/sys/fs/cgroup/memory/pods/c1"),
            PathBuf::from("/sys/fs/cgroup/pids/pods/c1"),
        ]
    );
}

#[test]
fn pure_v2_hosts_use_one_directory() {
    let layout = Layout::from_mountinfo(UNIFIED).unwrap();
    assert_eq!(layout, Layout::Unified("/sys/fs/cgroup".into()));
    let cgroup = Cgroup::new(layout, "pods/c1".into());
    assert_eq!(cgroup.dirs(), vec![PathBuf::from("/sys/fs/cgroup/pods/c1")]);
}

#[test]
fn v2_freeze_writes_and_waits_for_the_event() {
    let root = tempfile::tempdir().unwrap();
    let cgroup = Cgroup::new(Layout::Unified(root.path().into()), "c1".into());
    cgroup.create().unwrap();
    let dir = root.path().join("c1");
    std::fs::write(dir.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
    cgroup.freeze(true).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap(),
        "1"
    );
    assert!(root.path().join("cgroup.subtree_control").exists());
}

#[test]
fn a_cgroup_made_in_only_some_hierarchies_is_undone() {
    let root = tempfile::tempdir().unwrap();
    let memory = root.path().join("memory");
    std::fs::create_dir(&memory).unwrap();
    // A hierarchy where no directory can be made.
    let pids = root.path().join("pids");
    std::fs::write(&pids, "").unwrap();
    let layout = Layout::Legacy(vec![
        (Controller::Memory, memory.clone()),
        (Controller::Pids, pids),
    ]);
    let cgroup = Cgroup::new(layout, "pods/c1".into());
    assert!(cgroup.create().is_err());
    assert!(
        !memory.join("pods/c1").exists(),
        "the memory hierarchy kept the half-made cgroup"
    );
}
