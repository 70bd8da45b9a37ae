//! `wedge node install` / `uninstall` on a fake host root holding the real
//! `containerd config default` output, and the patched config loaded by a real containerd
//! whose CRI plugin must then list the runtime (`wedge doctor` reads that over the socket).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use wedge_e2e::binaries;
use wedge_e2e::containerd::CONTAINERD_1_7_DIR;

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
    Ok(format!("{:x}", Sha256::digest(bytes)))
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

/// A containerd started with a config under a temp dir, stopped (by its pid) when dropped.
struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The default config with every path containerd writes moved under `dir`; CRI stays on,
/// with a CNI directory of its own (empty: no pod is started).
fn private_config(default: &str, dir: &Path) -> Result<String> {
    let mut config: toml_edit::DocumentMut = default.parse()?;
    let path = |name: &str| toml_edit::value(dir.join(name).display().to_string());
    config["root"] = path("root");
    config["state"] = path("state");
    config["grpc"]["address"] = path("containerd.sock");
    config["ttrpc"]["address"] = path("containerd.sock.ttrpc");
    config["debug"]["address"] = path("debug.sock");
    let cri = config["plugins"]["io.containerd.grpc.v1.cri"]
        .as_table_like_mut()
        .context("no CRI plugin section")?;
    cri.insert("stream_server_port", toml_edit::value("0"));
    config["plugins"]["io.containerd.grpc.v1.cri"]["cni"]["conf_dir"] = path("cni");
    if let Some(opt) = config["plugins"].get_mut("io.containerd.internal.v1.opt") {
        opt["path"] = path("opt");
    }
    Ok(config.to_string())
}

fn start_containerd(containerd: &Path, config: &Path, dir: &Path) -> Result<Daemon> {
    let log = std::fs::File::create(dir.join("containerd.log"))?;
    let child = Command::new(containerd)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start containerd")?;
    let daemon = Daemon { child };
    let socket = dir.join("containerd.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!(
                "containerd did not come up: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(daemon)
}

/// Installs into a private containerd's config, starts that containerd, and checks with
/// `wedge doctor` that its CRI plugin lists the runtime; after uninstall and a restart it
/// no longer does.
fn real_containerd_registers_the_runtime(containerd: &Path) -> Result<()> {
    require_root()?;
    // Short prefix: containerd's socket paths must stay under the unix socket length limit.
    let root = tempfile::Builder::new()
        .prefix("wedge-n")
        .tempdir_in("/tmp")?;
    let dir = root.path();
    let config = dir.join(CONFIG);
    std::fs::create_dir_all(config.parent().context("config dir")?)?;
    std::fs::create_dir_all(dir.join("cni"))?;
    let original = private_config(&default_config(containerd)?, dir)?;
    std::fs::write(&config, &original)?;
    // doctor looks for runc on the host's PATH, here the fake root's.
    let runc = dir.join("usr/bin/runc");
    std::fs::create_dir_all(runc.parent().context("runc dir")?)?;
    std::fs::write(&runc, "#!/bin/sh\n")?;
    std::fs::set_permissions(&runc, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    let extra = install_args(&binaries::path(binaries::SHIM)?);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    node("install", dir, &extra)?;

    let doctor = |expect_registered: bool| -> Result<String> {
        let flags = node_flags(dir);
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
    {
        let _daemon = start_containerd(containerd, &config, dir)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match doctor(true) {
                Ok(text) => {
                    assert!(text.contains("containerd version"), "{text}");
                    break;
                }
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    node("uninstall", dir, &["--restart", "never"])?;
    assert_eq!(std::fs::read_to_string(&config)?, original, "byte for byte");
    let _daemon = start_containerd(containerd, &config, dir)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match doctor(false) {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() > deadline => return Err(err),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn containerd_1_6_loads_the_patched_config() -> Result<()> {
    real_containerd_registers_the_runtime(Path::new("containerd"))
}

#[test]
fn containerd_1_7_loads_the_patched_config() -> Result<()> {
    let dir = std::env::var_os("WEDGE_CONTAINERD_1_7_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CONTAINERD_1_7_DIR));
    real_containerd_registers_the_runtime(&dir.join("containerd"))
}
