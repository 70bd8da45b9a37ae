//! Registering the runtime in real containerd configs: containerd 1.6, 1.7 and 2.x defaults,
//! a version 1 config, k3s/rke2 generated configs and templates, microk8s' template, and the
//! configs that must be refused.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use toml_edit::DocumentMut;
use wedge_runtime_config::containerd::{
    inspect, plan_install, plan_uninstall, ContainerdConfigError, EntryState, Flavour, HostRoot,
    Location, Outcome, RuntimeSpec, BACKUP_SUFFIX, K3S_BASE_TEMPLATE, MARKER,
};

const ENGINE_CONFIG: &str = "/etc/wedge/config.toml";

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/containerd")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// A fake host root holding `text` at the flavour's config path.
struct Node {
    _dir: tempfile::TempDir,
    root: HostRoot,
    location: Location,
}

impl Node {
    fn new(flavour: Flavour, text: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = HostRoot::new(dir.path());
        let config = root.resolve(flavour.default_config());
        fs::create_dir_all(config.parent().unwrap()).unwrap();
        fs::write(&config, text).unwrap();
        let location = Location::find(&root, Some(flavour), None).unwrap();
        Node {
            _dir: dir,
            root,
            location,
        }
    }

    fn config(&self) -> &Path {
        &self.location.config
    }

    fn path(&self, host_path: &str) -> PathBuf {
        self.root.resolve(host_path)
    }

    fn read(&self, host_path: &str) -> String {
        fs::read_to_string(self.path(host_path)).unwrap()
    }

    fn install(&self) -> Outcome {
        plan_install(&self.location, &RuntimeSpec::default())
            .unwrap()
            .apply()
            .unwrap()
    }

    fn uninstall(&self) -> Outcome {
        plan_uninstall(&self.location, &RuntimeSpec::default())
            .unwrap()
            .apply()
            .unwrap()
    }
}

fn backup_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}{BACKUP_SUFFIX}", path.display()))
}

/// The runtime's table in a parsed config of the given CRI plugin.
fn entry<'a>(doc: &'a DocumentMut, plugin: &str) -> &'a toml_edit::Item {
    &doc["plugins"][plugin]["containerd"]["runtimes"]["wedge"]
}

fn assert_entry(text: &str, plugin: &str, systemd_cgroup: Option<bool>) {
    let doc: DocumentMut = text.parse().expect("the patched config parses");
    let wedge = entry(&doc, plugin);
    assert_eq!(
        wedge["runtime_type"].as_str(),
        Some("io.containerd.wedge.v1")
    );
    for key in ["pod_annotations", "container_annotations"] {
        let globs: Vec<_> = wedge[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} is an array"))
            .iter()
            .filter_map(|value| value.as_str())
            .collect();
        assert_eq!(globs, ["wedge.dev/*"], "{key}");
    }
    assert_eq!(wedge["options"]["ConfigPath"].as_str(), Some(ENGINE_CONFIG));
    assert_eq!(
        wedge["options"]
            .get("SystemdCgroup")
            .and_then(|v| v.as_bool()),
        systemd_cgroup
    );
}

/// Every line of `original` is still in `patched`, in order: nothing removed or rewritten.
fn assert_only_additions(original: &str, patched: &str) {
    let mut remaining = patched.lines();
    for line in original.lines() {
        assert!(
            remaining.any(|other| other == line),
            "line {line:?} of the original is missing from:\n{patched}"
        );
    }
}

/// The whole life of a main config: dry run, install, second install, uninstall.
fn round_trip(flavour: Flavour, fixture_name: &str, plugin: &str, systemd_cgroup: Option<bool>) {
    let original = fixture(fixture_name);
    let node = Node::new(flavour, &original);
    fs::set_permissions(node.config(), fs::Permissions::from_mode(0o640)).unwrap();

    let plan = plan_install(&node.location, &RuntimeSpec::default()).unwrap();
    let diff = plan.diff();
    assert!(diff.contains(MARKER), "{diff}");
    for line in diff.lines().skip(2) {
        assert!(
            line.starts_with('+') || line.starts_with(' ') || line.starts_with("@@"),
            "the dry run removes or changes a line: {line:?}\n{diff}"
        );
    }
    assert_eq!(
        fs::read_to_string(node.config()).unwrap(),
        original,
        "dry run wrote"
    );

    assert!(matches!(plan.apply().unwrap(), Outcome::Changed(_)));
    let patched = fs::read_to_string(node.config()).unwrap();
    assert_entry(&patched, plugin, systemd_cgroup);
    assert_only_additions(&original, &patched);
    assert_eq!(
        fs::read_to_string(backup_of(node.config())).unwrap(),
        original
    );
    let mode = fs::metadata(node.config()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "mode kept");
    assert_eq!(
        inspect(&node.location, &RuntimeSpec::default())
            .unwrap()
            .state,
        EntryState::Ours { current: true }
    );

    assert_eq!(node.install(), Outcome::Unchanged, "second install");
    assert_eq!(fs::read_to_string(node.config()).unwrap(), patched);

    assert!(matches!(node.uninstall(), Outcome::Changed(_)));
    assert_eq!(
        fs::read_to_string(node.config()).unwrap(),
        original,
        "byte for byte"
    );
    assert!(
        !backup_of(node.config()).exists(),
        "backup removed once restored"
    );
    assert_eq!(node.uninstall(), Outcome::Unchanged, "second uninstall");
}

#[test]
fn containerd_1_6_default() {
    round_trip(
        Flavour::Containerd,
        "containerd-1.6-default.toml",
        "io.containerd.grpc.v1.cri",
        Some(false),
    );
}

#[test]
fn containerd_1_7_default() {
    round_trip(
        Flavour::Containerd,
        "containerd-1.7-default.toml",
        "io.containerd.grpc.v1.cri",
        Some(false),
    );
}

#[test]
fn containerd_2_default_without_imports_is_patched_in_place() {
    round_trip(
        Flavour::Containerd,
        "containerd-2.x-default.toml",
        "io.containerd.cri.v1.runtime",
        None,
    );
}

#[test]
fn version_1_config() {
    round_trip(
        Flavour::Containerd,
        "containerd-version-1.toml",
        "cri",
        None,
    );
}

#[test]
fn microk8s_template() {
    round_trip(
        Flavour::MicroK8s,
        "microk8s-containerd-template.toml",
        "io.containerd.grpc.v1.cri",
        None,
    );
}

/// Without the backup (deleted by someone), uninstall still gives the original bytes back:
/// toml_edit removes exactly the tables install added.
#[test]
fn uninstall_without_backup_removes_exactly_the_addition() {
    for (flavour, name) in [
        (Flavour::Containerd, "containerd-1.6-default.toml"),
        (Flavour::Containerd, "containerd-1.7-default.toml"),
        (Flavour::Containerd, "containerd-2.x-default.toml"),
        (Flavour::Containerd, "containerd-version-1.toml"),
        (Flavour::MicroK8s, "microk8s-containerd-template.toml"),
    ] {
        let original = fixture(name);
        let node = Node::new(flavour, &original);
        node.install();
        fs::remove_file(backup_of(node.config())).unwrap();
        node.uninstall();
        assert_eq!(
            fs::read_to_string(node.config()).unwrap(),
            original,
            "{name}"
        );
    }
}

#[test]
fn comments_survive() {
    let original = fixture("microk8s-containerd-template.toml");
    let node = Node::new(Flavour::MicroK8s, &original);
    node.install();
    let patched = fs::read_to_string(node.config()).unwrap();
    let comments = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| line.trim_start().starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let mut expected = comments(&original);
    let kept: Vec<_> = comments(&patched)
        .into_iter()
        .filter(|line| line.trim() != MARKER)
        .collect();
    expected.sort();
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    assert_eq!(kept_sorted, expected);
}

#[test]
fn entry_sits_with_the_other_runtimes_and_matches_their_indentation() {
    let node = Node::new(Flavour::Containerd, &fixture("containerd-1.6-default.toml"));
    node.install();
    let patched = fs::read_to_string(node.config()).unwrap();
    let runc = patched
        .find("runtimes.runc.options]")
        .expect("runc options");
    let wedge = patched
        .find("        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wedge]\n")
        .expect("wedge header indented like runc's");
    let next = patched
        .find("untrusted_workload_runtime]")
        .expect("table after the runtimes");
    assert!(runc < wedge && wedge < next, "{patched}");
    assert!(patched.contains("\n          runtime_type = \"io.containerd.wedge.v1\"\n"));
    assert!(patched.contains("\n            ConfigPath = \"/etc/wedge/config.toml\"\n"));
}

#[test]
fn systemd_cgroup_mirrors_runc() {
    let text = fixture("containerd-1.7-default.toml")
        .replace("SystemdCgroup = false", "SystemdCgroup = true");
    let node = Node::new(Flavour::Containerd, &text);
    node.install();
    assert_entry(
        &fs::read_to_string(node.config()).unwrap(),
        "io.containerd.grpc.v1.cri",
        Some(true),
    );
}

#[test]
fn backup_is_written_once() {
    let original = fixture("containerd-1.7-default.toml");
    let node = Node::new(Flavour::Containerd, &original);
    node.install();
    // Someone edits the patched file; a later install with other settings must not take
    // the edited file as the original.
    let edited = format!(
        "# edited by an operator\n{}",
        fs::read_to_string(node.config()).unwrap()
    );
    fs::write(node.config(), &edited).unwrap();
    let spec = RuntimeSpec {
        engine_config_path: "/etc/wedge/other.toml".into(),
        ..RuntimeSpec::default()
    };
    let plan = plan_install(&node.location, &spec).unwrap();
    assert!(!plan.is_unchanged(), "an outdated entry of ours is updated");
    plan.apply().unwrap();
    assert_eq!(
        fs::read_to_string(backup_of(node.config())).unwrap(),
        original
    );
    let doc: DocumentMut = fs::read_to_string(node.config()).unwrap().parse().unwrap();
    assert_eq!(
        entry(&doc, "io.containerd.grpc.v1.cri")["options"]["ConfigPath"].as_str(),
        Some("/etc/wedge/other.toml")
    );

    // Uninstall removes only the entry: the operator's comment stays, so does the backup.
    plan_uninstall(&node.location, &spec)
        .unwrap()
        .apply()
        .unwrap();
    let after = fs::read_to_string(node.config()).unwrap();
    assert_eq!(after, format!("# edited by an operator\n{original}"));
    assert!(backup_of(node.config()).exists());
}

#[test]
fn identical_entry_defined_by_someone_else_is_left_alone() {
    let node = Node::new(Flavour::Containerd, &fixture("containerd-1.7-default.toml"));
    node.install();
    let theirs = fs::read_to_string(node.config())
        .unwrap()
        .replace(MARKER, "# ours now");
    fs::write(node.config(), &theirs).unwrap();
    assert_eq!(node.install(), Outcome::Unchanged);
    assert_eq!(node.uninstall(), Outcome::Unchanged, "not ours to remove");
    assert_eq!(fs::read_to_string(node.config()).unwrap(), theirs);
}

fn assert_refused(
    flavour: Flavour,
    text: &str,
    check: impl Fn(&ContainerdConfigError) -> bool,
) -> String {
    let node = Node::new(flavour, text);
    let err =
        plan_install(&node.location, &RuntimeSpec::default()).expect_err("install is refused");
    assert!(check(&err), "unexpected error: {err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&node.config().display().to_string()),
        "the message names the file: {message}"
    );
    assert_eq!(
        fs::read_to_string(node.config()).unwrap(),
        text,
        "left untouched"
    );
    assert!(!backup_of(node.config()).exists());
    message
}

#[test]
fn refuses_unknown_version() {
    let text = fixture("containerd-1.7-default.toml").replace("version = 2", "version = 4");
    let message = assert_refused(
        Flavour::Containerd,
        &text,
        |err| matches!(err, ContainerdConfigError::UnknownVersion { version, .. } if version == "4"),
    );
    assert!(message.contains("version 4"), "{message}");
}

#[test]
fn refuses_syntax_errors() {
    let text = fixture("containerd-1.7-default.toml").replace("[grpc]", "[grpc");
    assert_refused(Flavour::Containerd, &text, |err| {
        matches!(err, ContainerdConfigError::Syntax { .. })
    });
}

#[test]
fn refuses_config_without_cri_plugin() {
    let text = "version = 2\nroot = \"/var/lib/containerd\"\n\n[grpc]\n  address = \"/run/containerd/containerd.sock\"\n";
    assert_refused(Flavour::Containerd, text, |err| {
        matches!(err, ContainerdConfigError::NoCriPlugin { .. })
    });
}

#[test]
fn refuses_docker_config_with_cri_disabled() {
    assert_refused(
        Flavour::Containerd,
        &fixture("docker-containerd.toml"),
        |err| matches!(err, ContainerdConfigError::CriDisabled { plugin, .. } if plugin == "cri"),
    );
}

#[test]
fn refuses_wedge_runtime_defined_differently() {
    let text = format!(
        "{}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wedge]\n  runtime_type = \"io.containerd.other.v1\"\n",
        fixture("containerd-1.7-default.toml")
    );
    let message = assert_refused(
        Flavour::Containerd,
        &text,
        |err| matches!(err, ContainerdConfigError::ConflictingRuntime { name, .. } if name == "wedge"),
    );
    assert!(message.contains("\"wedge\""), "{message}");
}

#[test]
fn refuses_runtimes_that_are_not_a_table() {
    let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes = 3\n";
    assert_refused(
        Flavour::Containerd,
        text,
        |err| matches!(err, ContainerdConfigError::NotATable { key, .. } if key.ends_with("runtimes")),
    );
}

#[test]
fn containerd_2_with_imports_gets_a_drop_in() {
    let original = fixture("containerd-2.x-imports.toml");
    let node = Node::new(Flavour::Containerd, &original);
    let plan = plan_install(&node.location, &RuntimeSpec::default()).unwrap();
    assert!(
        plan.diff()
            .contains("+++ b/etc/containerd/conf.d/wedge.toml"),
        "{}",
        plan.diff()
    );
    plan.apply().unwrap();
    assert_eq!(
        fs::read_to_string(node.config()).unwrap(),
        original,
        "main config untouched"
    );
    let dropin = node.read("/etc/containerd/conf.d/wedge.toml");
    assert_entry(&dropin, "io.containerd.cri.v1.runtime", Some(true));
    assert_eq!(
        dropin.parse::<DocumentMut>().unwrap()["version"].as_integer(),
        Some(3)
    );
    let registration = inspect(&node.location, &RuntimeSpec::default()).unwrap();
    assert_eq!(
        registration.file,
        PathBuf::from("/etc/containerd/conf.d/wedge.toml")
    );
    assert_eq!(registration.state, EntryState::Ours { current: true });

    assert_eq!(node.install(), Outcome::Unchanged);
    node.uninstall();
    assert!(!node.path("/etc/containerd/conf.d/wedge.toml").exists());
    assert_eq!(fs::read_to_string(node.config()).unwrap(), original);
}

#[test]
fn drop_in_written_by_someone_else_is_refused() {
    let node = Node::new(Flavour::Containerd, &fixture("containerd-2.x-imports.toml"));
    let dropin = node.path("/etc/containerd/conf.d/wedge.toml");
    fs::create_dir_all(dropin.parent().unwrap()).unwrap();
    fs::write(&dropin, "version = 3\n").unwrap();
    let err = plan_install(&node.location, &RuntimeSpec::default()).unwrap_err();
    assert!(
        matches!(err, ContainerdConfigError::ForeignFile { .. }),
        "{err:?}"
    );
    assert_eq!(fs::read_to_string(&dropin).unwrap(), "version = 3\n");
}

const K3S_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd";

#[test]
fn k3s_without_template_gets_one_on_the_base_template() {
    let generated = fixture("k3s-generated-config.toml");
    let node = Node::new(Flavour::K3s, &generated);
    node.install();
    let template_path = format!("{K3S_DIR}/config.toml.tmpl");
    let template = node.read(&template_path);
    assert!(template.starts_with(K3S_BASE_TEMPLATE), "{template}");
    // What k3s renders: its base config with the block after it.
    let rendered = template.replacen(K3S_BASE_TEMPLATE, &generated, 1);
    assert_entry(&rendered, "io.containerd.grpc.v1.cri", Some(true));
    assert_eq!(
        fs::read_to_string(node.config()).unwrap(),
        generated,
        "k3s' own file untouched"
    );
    assert_eq!(
        inspect(&node.location, &RuntimeSpec::default())
            .unwrap()
            .state,
        EntryState::Ours { current: true }
    );

    assert_eq!(node.install(), Outcome::Unchanged);
    node.uninstall();
    assert!(
        !node.path(&template_path).exists(),
        "the template it made is gone"
    );
}

#[test]
fn k3s_existing_go_template_gets_a_block_and_is_restored() {
    let generated = fixture("k3s-generated-config.toml");
    let node = Node::new(Flavour::K3s, &generated);
    let template_path = node.path(&format!("{K3S_DIR}/config.toml.tmpl"));
    let original = "{{ template \"base\" . }}\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.\"crun\"]\n  runtime_type = \"io.containerd.runc.v2\"\n{{ if .NodeConfig.AgentConfig.Snapshotter }}# {{ .NodeConfig.AgentConfig.Snapshotter }}{{ end }}";
    fs::write(&template_path, original).unwrap();
    node.install();
    let patched = fs::read_to_string(&template_path).unwrap();
    assert!(patched.starts_with(original));
    assert!(patched.contains("containerd.runtimes.wedge]"));
    assert_eq!(
        fs::read_to_string(backup_of(&template_path)).unwrap(),
        original
    );
    assert_eq!(node.install(), Outcome::Unchanged);
    node.uninstall();
    assert_eq!(
        fs::read_to_string(&template_path).unwrap(),
        original,
        "byte for byte"
    );
    assert!(!backup_of(&template_path).exists());
}

#[test]
fn k3s_template_defining_wedge_is_refused() {
    let node = Node::new(Flavour::K3s, &fixture("k3s-generated-config.toml"));
    let template_path = node.path(&format!("{K3S_DIR}/config.toml.tmpl"));
    let original = "{{ template \"base\" . }}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.'wedge']\n  runtime_type = \"x\"\n";
    fs::write(&template_path, original).unwrap();
    let err = plan_install(&node.location, &RuntimeSpec::default()).unwrap_err();
    assert!(
        matches!(err, ContainerdConfigError::ConflictingRuntime { .. }),
        "{err:?}"
    );
    assert_eq!(fs::read_to_string(&template_path).unwrap(), original);
}

#[test]
fn k3s_plain_toml_template_is_patched_as_toml() {
    let generated = fixture("k3s-generated-config.toml");
    let node = Node::new(Flavour::K3s, &generated);
    let template_path = node.path(&format!("{K3S_DIR}/config.toml.tmpl"));
    fs::write(&template_path, &generated).unwrap();
    node.install();
    let patched = fs::read_to_string(&template_path).unwrap();
    assert_entry(&patched, "io.containerd.grpc.v1.cri", Some(true));
    node.uninstall();
    assert_eq!(fs::read_to_string(&template_path).unwrap(), generated);
}

#[test]
fn rke2_with_containerd_2_uses_the_v3_template() {
    let generated = fixture("rke2-generated-config-v3.toml");
    let node = Node::new(Flavour::Rke2, &generated);
    node.install();
    let template = node.read("/var/lib/rancher/rke2/agent/etc/containerd/config-v3.toml.tmpl");
    let rendered = template.replacen(K3S_BASE_TEMPLATE, &generated, 1);
    assert_entry(&rendered, "io.containerd.cri.v1.runtime", Some(true));
    node.uninstall();
    assert!(!node
        .path("/var/lib/rancher/rke2/agent/etc/containerd/config-v3.toml.tmpl")
        .exists());
}

#[test]
fn detection_prefers_the_distribution_over_a_stray_containerd_config() {
    let node = Node::new(Flavour::K3s, &fixture("k3s-generated-config.toml"));
    let stray = node.path("/etc/containerd/config.toml");
    fs::create_dir_all(stray.parent().unwrap()).unwrap();
    fs::write(&stray, fixture("containerd-1.6-default.toml")).unwrap();
    let found = Location::find(&node.root, None, None).unwrap();
    assert_eq!(found.flavour, Flavour::K3s);

    let overridden = Location::find(
        &node.root,
        None,
        Some(Path::new("/etc/containerd/config.toml")),
    )
    .unwrap();
    assert_eq!(overridden.flavour, Flavour::Containerd);
    assert_eq!(overridden.config, stray);
}

#[test]
fn nothing_found_names_the_places_looked() {
    let dir = tempfile::tempdir().unwrap();
    let err = Location::find(&HostRoot::new(dir.path()), None, None).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("/etc/containerd/config.toml"), "{message}");
    assert!(message.contains("/var/lib/rancher/k3s"), "{message}");
}

#[test]
fn k0s_managed_config_gets_a_drop_in_in_its_version() {
    let original = fixture("k0s-managed-containerd.toml");
    let node = Node::new(Flavour::K0s, &original);
    assert_eq!(
        Location::find(&node.root, None, None).unwrap().flavour,
        Flavour::K0s
    );
    let plan = plan_install(&node.location, &RuntimeSpec::default()).unwrap();
    assert!(
        plan.diff()
            .contains("+++ b/etc/k0s/containerd.d/wedge.toml"),
        "{}",
        plan.diff()
    );
    plan.apply().unwrap();
    assert_eq!(fs::read_to_string(node.config()).unwrap(), original);
    let dropin = node.read("/etc/k0s/containerd.d/wedge.toml");
    // k0s merges CRI drop-ins into a config of its containerd's version: 2 here.
    assert_entry(&dropin, "io.containerd.grpc.v1.cri", None);
    assert_eq!(
        dropin.parse::<DocumentMut>().unwrap()["version"].as_integer(),
        Some(2)
    );
    let registration = inspect(&node.location, &RuntimeSpec::default()).unwrap();
    assert_eq!(
        registration.file,
        PathBuf::from("/etc/k0s/containerd.d/wedge.toml")
    );
    assert_eq!(registration.state, EntryState::Ours { current: true });
    assert!(
        !registration.in_effective_config,
        "k0s has not merged it yet"
    );
    // What k0s renders once it has picked the drop-in up.
    let merged = node.path("/run/k0s/containerd-cri.toml");
    fs::create_dir_all(merged.parent().unwrap()).unwrap();
    fs::write(&merged, &dropin).unwrap();
    let registration = inspect(&node.location, &RuntimeSpec::default()).unwrap();
    assert!(registration.in_effective_config);

    assert_eq!(node.install(), Outcome::Unchanged);
    node.uninstall();
    assert!(!node.path("/etc/k0s/containerd.d/wedge.toml").exists());
    assert_eq!(fs::read_to_string(node.config()).unwrap(), original);
}

#[test]
fn k0s_config_taken_over_by_its_user_is_patched_in_place() {
    let original = fixture("containerd-1.7-default.toml");
    let node = Node::new(Flavour::K0s, &original);
    node.install();
    assert!(!node.path("/etc/k0s/containerd.d/wedge.toml").exists());
    // The runtime mirrors runc's SystemdCgroup, false in the default config.
    assert_entry(
        &fs::read_to_string(node.config()).unwrap(),
        "io.containerd.grpc.v1.cri",
        Some(false),
    );
    node.uninstall();
    assert_eq!(fs::read_to_string(node.config()).unwrap(), original);
}
