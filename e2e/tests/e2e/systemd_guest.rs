//! On a real systemd + cgroup v2 node (a qemu guest, see `wedge_e2e::guest`): Wedge
//! installed by `wedge node install`, which restarts containerd through systemd itself, then, with runc's systemd driver and again with
//! cgroupfs, a CRI pod with pause + busybox sidecar + wasm container: placement and limits
//! in the unified hierarchy, stats, pause/resume, update, OOM, and nothing left after the
//! pod. Minutes under software emulation, so outside `make test`: `make e2e-guest`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wedge_e2e::cri::BUSYBOX;
use wedge_e2e::guest::{self, Guest};
use wedge_e2e::{binaries, images, programs};

/// The checks `guest/run.sh` makes for each driver; every one must report ok.
const CHECKS: [&str; 28] = [
    "install",
    "engine-config-driver",
    "restarted-by-installer",
    "containerd-up",
    "reference-runp",
    "runp",
    "sidecar",
    "wasm-start",
    "wasm-running",
    "placement",
    "sidecar-beside",
    "memory-limit",
    "cpu-limit",
    "stats",
    "pause",
    "frozen",
    "resume",
    "thawed",
    "update",
    "updated-limit",
    "oom-start",
    "oom-exit",
    "oom-reason",
    "stop",
    "remove",
    "cgroups-gone",
    "no-runners",
    "uninstall",
];

/// The engine config the guest's installer places: the OOM container turns on multi-memory.
const ENGINE_CONFIG: &str =
    "allowed_annotations = [\"features\"]\n[wasm]\nallowed_features = [\"multi-memory\"]\n";

#[test]
#[ignore = "boots a qemu guest for several minutes: make e2e-guest"]
fn a_pod_runs_on_systemd_and_cgroup_v2_with_either_driver() -> Result<()> {
    let guest = Guest::prepare()?;
    let share = tempfile::Builder::new()
        .prefix("wedge-guest-")
        .tempdir_in("/var/tmp")?;
    let share = share.path();
    let kit = std::env::var_os("CRI_CONFORMANCE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/cri-conformance")
        });
    let crictl = kit.join("bin/crictl");
    ensure!(
        crictl.is_file(),
        "{} is missing: the guest drives CRI with the conformance kit's crictl (CRI_CONFORMANCE)",
        crictl.display()
    );
    std::fs::copy(&crictl, share.join("crictl"))?;
    std::fs::copy(binaries::path(binaries::SHIM)?, share.join(binaries::SHIM))?;
    std::fs::copy(binaries::path(binaries::CLI)?, share.join(binaries::CLI))?;
    std::fs::write(share.join("engine.toml"), ENGINE_CONFIG)?;
    std::fs::write(share.join("run.sh"), include_str!("../../guest/run.sh"))?;

    let images_dir = share.join("images");
    std::fs::create_dir_all(&images_dir)?;
    let work = tempfile::tempdir()?;
    let mut archives = vec![
        images::native_image(
            work.path(),
            "pause",
            Path::new(BUSYBOX),
            "/bin/busybox",
            &["/bin/busybox", "sleep", "2147483647"],
        )?,
        images::native_image(
            work.path(),
            "busybox",
            Path::new(BUSYBOX),
            "/bin/busybox",
            &["/bin/busybox"],
        )?,
    ];
    archives.push(images::wasm_image(
        work.path(),
        "spin",
        &programs::wat(programs::LOOP_WAT)?,
    )?);
    archives.push(images::wasm_image(
        work.path(),
        "memories",
        &programs::wat(programs::TWO_MEMORIES_WAT)?,
    )?);
    for (archive, reference) in &archives {
        let name = reference.replace(['/', ':'], "_");
        std::fs::copy(archive, images_dir.join(format!("{name}.tar")))?;
    }

    guest.boot(share, Duration::from_secs(40 * 60))?;
    let out = std::fs::read_to_string(share.join(guest::SCRIPT_OUTPUT)).with_context(|| {
        format!(
            "the guest's script left no output; console:\n{}",
            std::fs::read_to_string(share.join("console.log")).unwrap_or_default()
        )
    })?;
    println!("{out}");
    let failures: Vec<&str> = out
        .lines()
        .filter(|line| line.starts_with("FAIL"))
        .collect();
    let passed: BTreeSet<&str> = out
        .lines()
        .filter_map(|line| line.strip_prefix("ok "))
        .collect();
    let missing: Vec<String> = ["systemd", "cgroupfs"]
        .iter()
        .flat_map(|driver| CHECKS.iter().map(move |check| format!("{driver} {check}")))
        .filter(|check| !passed.contains(check.as_str()))
        .collect();
    ensure!(
        failures.is_empty() && missing.is_empty() && out.contains(guest::SCRIPT_DONE),
        "failed: {failures:#?}\nnot reported ok: {missing:#?}\n{out}"
    );
    ensure!(
        out.contains("PID 1 systemd") && out.contains("cgroup2fs"),
        "the guest is not a systemd + cgroup v2 node:\n{out}"
    );
    Ok(())
}
