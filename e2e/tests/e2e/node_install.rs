//! `wedge node install` / `uninstall` on a fake host root holding the real
//! `containerd config default` output, and the patched config loaded by a real containerd
//! whose CRI plugin must then list the runtime (`wedge doctor` reads that over the socket);
//! and the whole way to a running pod: the installer registers the runtime in the CRI
//! harness's containerd, a `wedge` pod runs, uninstall gives the config its bytes back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use wedge_e2e::binaries;
use wedge_e2e::containerd::{ENGINE_CONFIG, PREPARED_BIN};
use wedge_e2e::cri::WEDGE_HANDLER;
use wedge_e2e::{Containerd, CriNode, Release};

const CONFIG: &str = "etc/containerd/config.toml";
const SHIM_DEST: &str = "usr/local/bin";

fn require_root() -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the end-to-end tests start containerd and must run as root"
    );
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(wedge_runtime_config::wasm_image::sha256_hex(&bytes))
}

/// `containerd config default` of the given binary.
fn default_config(containerd: &Path) -> Result<String> {
    let out = Command::new(containerd)
        .args(["config", "default"])
        .output()
        .with_context(|| format!("cannot run {} config default", containerd.display()))?;
    ensure!(out.status.success(), "containerd config default failed");
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs `wedge` with `args`, failing with its output when it fails.
fn wedge(args: &[&str]) -> Result<Output> {
    let out = Command::new(binaries::path(binaries::CLI)?)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .context("cannot run wedge")?;
    ensure!(
        out.status.success(),
        "wedge {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The flags every command of these tests passes: the fake host and its config.
fn node_flags(root: &Path) -> Vec<String> {
    vec![
        "--host-root".into(),
        root.display().to_string(),
        "--containerd-config".into(),
        root.join(CONFIG).display().to_string(),
        "--shim-dest".into(),
        root.join(SHIM_DEST).display().to_string(),
    ]
}

fn node(command: &str, root: &Path, extra: &[&str]) -> Result<Output> {
    let flags = node_flags(root);
    let mut args = vec!["node", command];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(extra);
    wedge(&args)
}

fn install_args(shim: &Path) -> Vec<String> {
    vec![
        "--restart".into(),
        "never".into(),
        "--shim-source".into(),
        shim.display().to_string(),
    ]
}

#[test]
fn install_then_uninstall_restores_the_node() -> Result<()> {
    require_root()?;
    let root = tempfile::Builder::new()
        .prefix("wedge-node-")
        .tempdir_in("/tmp")?;
    let config = root.path().join(CONFIG);
    std::fs::create_dir_all(config.parent().context("config dir")?)?;
    let original = default_config(Path::new("containerd"))?;
    std::fs::write(&config, &original)?;
    let shim_source = binaries::path(binaries::SHIM)?;
    let extra = install_args(&shim_source);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();

    node("install", root.path(), &extra)?;
    let shim = root.path().join(SHIM_DEST).join(binaries::SHIM);
    assert_eq!(sha256(&shim)?, sha256(&shim_source)?, "shim copied intact");
    let patched = std::fs::read_to_string(&config)?;
    let doc: toml_edit::DocumentMut = patched.parse()?;
    let entry = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["wedge"];
    assert_eq!(
        entry["runtime_type"].as_str(),
        Some("io.containerd.wedge.v1")
    );
    assert_eq!(
        entry["options"]["ConfigPath"].as_str(),
        Some("/etc/wedge/config.toml")
    );
    let backup = PathBuf::from(format!("{}.wedge-backup", config.display()));
    assert_eq!(
        std::fs::read_to_string(&backup)?,
        original,
        "backup of the original"
    );

    let again = node("install", root.path(), &extra)?;
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("unchanged"),
        "second install: {}",
        String::from_utf8_lossy(&again.stdout)
    );
    assert_eq!(std::fs::read_to_string(&config)?, patched);

    node("uninstall", root.path(), &["--restart", "never"])?;
    assert_eq!(std::fs::read_to_string(&config)?, original, "byte for byte");
    assert!(!shim.exists(), "shim removed");
    assert!(!backup.exists(), "backup removed after restoring it");
    Ok(())
}

/// containerd hands `SystemdCgroup` to runc's shim only, so the installer repeats it in the
/// engine config it writes: a node whose runc uses the systemd driver gets Wedge's systemd
/// driver, one on cgroupfs gets cgroupfs, and an engine config that chooses stays as it is.
#[test]
fn install_gives_the_engine_config_runc_s_cgroup_driver() -> Result<()> {
    require_root()?;
    let shim_source = binaries::path(binaries::SHIM)?;
    for (systemd_cgroup, given, expected) in [
        (true, "[cache]\nenabled = false\n", "systemd"),
        (false, "[cache]\nenabled = false\n", "cgroupfs"),
        (
            true,
            "[cache]\nenabled = false\n[cgroup]\ndriver = \"cgroupfs\"\n",
            "cgroupfs",
        ),
    ] {
        let root = tempfile::Builder::new()
            .prefix("wedge-node-")
            .tempdir_in("/tmp")?;
        let config = root.path().join(CONFIG);
        std::fs::create_dir_all(config.parent().context("config dir")?)?;
        let mut doc: toml_edit::DocumentMut = default_config(Path::new("containerd"))?.parse()?;
        doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"]["options"]
            ["SystemdCgroup"] = toml_edit::value(systemd_cgroup);
        std::fs::write(&config, doc.to_string())?;
        let source = root.path().join("installer-engine.toml");
        std::fs::write(&source, given)?;
        let mut extra = install_args(&shim_source);
        extra.extend(["--engine-config".into(), source.display().to_string()]);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();

        let out = node("install", root.path(), &extra)?;
        let engine = root.path().join("etc/wedge/config.toml");
        let written = wedge_runtime_config::EngineConfig::parse(
            &std::fs::read_to_string(&engine)?,
            "installed engine config",
        )?;
        ensure!(
            wedge_runtime_config::cgroup_driver::name(written.cgroup.driver) == expected,
            "SystemdCgroup = {systemd_cgroup}, given {given:?}: driver {:?}; install said {}",
            written.cgroup.driver,
            String::from_utf8_lossy(&out.stdout)
        );
        ensure!(!written.cache.enabled, "the given settings were kept");

        let engine_args = [
            "--restart",
            "never",
            "--engine-config",
            extra[extra.len() - 1],
        ];
        node("uninstall", root.path(), &engine_args)?;
        ensure!(
            !engine.exists(),
            "uninstall left the engine config it wrote"
        );
    }
    Ok(())
}

/// Installs into the CRI config of a harness containerd (the `wedge` runtime not yet
/// registered), restarts it, and checks with `wedge doctor` that its CRI plugin lists the
/// runtime; after uninstall and a restart it no longer does.
fn real_containerd_registers_the_runtime(release: Release) -> Result<()> {
    require_root()?;
    let mut original = None;
    let mut containerd = Containerd::start_cri_with(release, |config, dir| {
        original = Some(std::fs::read_to_string(config)?);
        // doctor looks for runc on the host's PATH, here the fake root's.
        let runc = dir.join("usr/bin/runc");
        std::fs::create_dir_all(runc.parent().context("runc dir")?)?;
        std::fs::write(&runc, "#!/bin/sh\n")?;
        std::fs::set_permissions(&runc, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        cri_node("install", config, dir)?;
        Ok(())
    })?;
    let original = original.context("prepare did not run")?;
    let dir = containerd.dir().to_path_buf();
    let config = dir.join("config.toml");

    let doctor = |expect_registered: bool| -> Result<String> {
        let flags = cri_node_flags(&config, &dir);
        let mut args = vec!["doctor"];
        args.extend(flags.iter().map(String::as_str));
        let out = Command::new(binaries::path(binaries::CLI)?)
            .args(&args)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|line| line.starts_with("runtime in CRI"))
            .with_context(|| format!("no CRI line in:\n{text}"))?;
        let expected = if expect_registered { "yes" } else { "no" };
        ensure!(line.ends_with(expected), "expected {expected}:\n{text}");
        ensure!(
            out.status.success() == expect_registered,
            "doctor's exit status ({}) disagrees:\n{text}",
            out.status
        );
        Ok(text)
    };
    let text = doctor(true)?;
    ensure!(text.contains("containerd version"), "{text}");

    containerd.stop_daemon();
    cri_node("uninstall", &config, &dir)?;
    assert_eq!(std::fs::read_to_string(&config)?, original, "byte for byte");
    containerd.restart_daemon()?;
    doctor(false)?;
    containerd.assert_clean()
}

#[test]
fn containerd_1_6_loads_the_patched_config() -> Result<()> {
    real_containerd_registers_the_runtime(Release::V1_6)
}

#[test]
fn containerd_1_7_loads_the_patched_config() -> Result<()> {
    real_containerd_registers_the_runtime(Release::V1_7)
}

/// The flags of the CRI test: the harness's temp dir as the host root, its containerd
/// config, and as the shim's directory the one that containerd searches first.
fn cri_node_flags(config: &Path, dir: &Path) -> Vec<String> {
    vec![
        "--host-root".into(),
        dir.display().to_string(),
        "--containerd-config".into(),
        config.display().to_string(),
        "--shim-dest".into(),
        dir.join(PREPARED_BIN).display().to_string(),
    ]
}

fn cri_node(command: &str, config: &Path, dir: &Path) -> Result<Output> {
    let flags = cri_node_flags(config, dir);
    let mut args = vec!["node", command];
    args.extend(flags.iter().map(String::as_str));
    args.extend(["--restart", "never"]);
    wedge(&args)
}

/// Points the runtime entry the installer wrote at the harness's engine config: the
/// installer writes the host's /etc/wedge/config.toml, which (absent, or the host's own)
/// would put the shim's compiled-module cache in the real /var/lib/wedge and its runc state
/// in the host's; the harness's engine config keeps both under the temp dir, where the leak
/// checks look.
fn aim_engine_config_at_the_test(config: &Path, dir: &Path) -> Result<()> {
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(config)?.parse()?;
    let entry = doc
        .get_mut("plugins")
        .and_then(|plugins| plugins.get_mut("io.containerd.grpc.v1.cri"))
        .and_then(|cri| cri.get_mut("containerd"))
        .and_then(|containerd| containerd.get_mut("runtimes"))
        .and_then(|runtimes| runtimes.get_mut(WEDGE_HANDLER))
        .and_then(toml_edit::Item::as_table_like_mut)
        .context("wedge node install did not register the runtime")?;
    let options = entry
        .get_mut("options")
        .and_then(toml_edit::Item::as_table_like_mut)
        .context("the runtime entry has no options")?;
    ensure!(
        options.get("ConfigPath").and_then(|path| path.as_str()) == Some("/etc/wedge/config.toml"),
        "the installer's ConfigPath: {:?}",
        options.get("ConfigPath").map(ToString::to_string)
    );
    options.insert(
        "ConfigPath",
        toml_edit::value(dir.join(ENGINE_CONFIG).display().to_string()),
    );
    std::fs::write(config, doc.to_string())?;
    Ok(())
}

/// Acceptance of the installer: containerd's default config (the harness's private copy,
/// without the `wedge` runtime) → `wedge node install` → containerd started on the result →
/// a pod with handler `wedge` runs a wasm container through the installed shim; after
/// `wedge node uninstall` the config holds its original bytes again.
#[test]
fn installed_runtime_runs_a_cri_pod_and_uninstall_restores_the_config() -> Result<()> {
    require_root()?;
    let mut original = None;
    let mut node = CriNode::start_with(Release::V1_6, |config, dir| {
        original = Some(std::fs::read(config)?);
        cri_node("install", config, dir)?;
        aim_engine_config_at_the_test(config, dir)
    })?;
    let original = original.context("prepare did not run")?;
    let dir = node.containerd.dir().to_path_buf();
    let config = dir.join("config.toml");
    let installed_shim = dir.join(PREPARED_BIN).join(binaries::SHIM);
    assert_eq!(
        sha256(&installed_shim)?,
        sha256(&binaries::path(binaries::SHIM)?)?,
        "the shim beside wedge was installed"
    );

    let pod = node.run_hello_pod("installed", WEDGE_HANDLER)?;
    // The pod's shim (alive until the pod goes) runs from where the installer put it.
    let shims = node.wedge_shim_executables();
    ensure!(
        !shims.is_empty() && shims.iter().all(|exe| *exe == installed_shim),
        "shim processes run {shims:?}, not {}",
        installed_shim.display()
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()?;

    node.containerd.stop_daemon();
    cri_node("uninstall", &config, &dir)?;
    ensure!(
        std::fs::read(&config)? == original,
        "after uninstall the config differs from the original:\n{}",
        String::from_utf8_lossy(&std::fs::read(&config)?)
    );
    ensure!(!installed_shim.exists(), "uninstall left the shim");
    ensure!(
        !PathBuf::from(format!("{}.wedge-backup", config.display())).exists(),
        "uninstall left the backup"
    );
    node.containerd.assert_clean()
}

/// The node flags of a shim installed where containerd's PATH does not reach: the real
/// host root, the harness's config, the shim in a directory of its own.
fn off_path_flags(dir: &Path) -> Vec<String> {
    vec![
        "--host-root=/".into(),
        format!("--containerd-config={}", dir.join("config.toml").display()),
        format!("--shim-dest={}", dir.join("off-path").display()),
        format!("--engine-config-path={}", dir.join(ENGINE_CONFIG).display()),
    ]
}

/// Installs the shim off containerd's PATH and asks the readiness probe's question
/// (`wedge node status --expect installed`); returns the node, the report and whether the
/// probe passed.
fn install_off_path(release: Release) -> Result<(CriNode, String, bool)> {
    require_root()?;
    let node = CriNode::start_with(release, |_config, dir| {
        let mut args = vec!["node".to_string(), "install".into()];
        args.extend(off_path_flags(dir));
        args.extend(["--restart".into(), "never".into()]);
        wedge(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        Ok(())
    })?;
    let mut args = vec!["node".to_string(), "status".into()];
    args.extend(off_path_flags(node.containerd.dir()));
    args.push("--expect=installed".into());
    let out = Command::new(binaries::path(binaries::CLI)?)
        .args(&args)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((node, text, out.status.success()))
}

#[test]
fn containerd_1_6_cannot_find_a_shim_off_its_path_and_the_readiness_probe_fails() -> Result<()> {
    let (node, text, ready) = install_off_path(Release::V1_6)?;
    ensure!(!ready, "the probe passed:\n{text}");
    ensure!(
        text.contains("ignores runtime_path")
            && text.contains(&node.containerd.dir().join("off-path").display().to_string()),
        "the report does not say why:\n{text}"
    );
    Ok(())
}

#[test]
fn containerd_1_7_starts_the_shim_at_its_runtime_path() -> Result<()> {
    let (node, text, ready) = install_off_path(Release::V1_7)?;
    ensure!(ready, "the probe failed:\n{text}");
    ensure!(text.contains("(runtime_path)"), "{text}");
    let installed = node.containerd.dir().join("off-path").join(binaries::SHIM);
    let pod = node.run_hello_pod("off-path", WEDGE_HANDLER)?;
    let shims = node.wedge_shim_executables();
    ensure!(
        !shims.is_empty() && shims.iter().all(|exe| *exe == installed),
        "shim processes run {shims:?}, not {}",
        installed.display()
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}
