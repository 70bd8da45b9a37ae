//! `make soak`: pods churning through CRI as kubelet drives them. Each cycle runs a pod on
//! handler `wedge` with a wasm container and a native sidecar, stops and removes them, and
//! times every CRI call; afterwards it reports what was left behind (processes, cgroups,
//! mounts, bundles, runc state, containerd's fds), containerd's and the shims' memory, and
//! the p50/p99 of each call. Any failure or leak makes the exit status non-zero.
//!
//! `wedge-soak [--cycles N] [--parallel P] [--containerd 1.6|1.7|2.1]`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wedge_e2e::cri::{sh, WEDGE_HANDLER};
use wedge_e2e::{programs, ContainerSpec, CriNode, Release};

const SLEEP_C: &str = "#include <unistd.h>\nint main(void) { sleep(3600); return 0; }\n";

struct Settings {
    cycles: usize,
    parallel: usize,
    release: Release,
}

fn settings() -> Result<Settings> {
    let mut settings = Settings {
        cycles: 1000,
        parallel: 8,
        release: Release::under_test(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--cycles" => settings.cycles = value.parse().context("--cycles")?,
            "--parallel" => settings.parallel = value.parse().context("--parallel")?,
            "--containerd" => {
                settings.release = Release::parse(&value)
                    .with_context(|| format!("unknown containerd release {value}"))?
            }
            other => bail!("unknown option {other}; usage: wedge-soak [--cycles N] [--parallel P] [--containerd 1.6|1.7|2.1]"),
        }
    }
    Ok(settings)
}

/// Durations of each CRI call, by call.
#[derive(Default)]
struct Timings(Mutex<BTreeMap<&'static str, Vec<Duration>>>);

impl Timings {
    fn time<T>(&self, call: &'static str, run: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let result = run();
        let elapsed = started.elapsed();
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(call)
            .or_default()
            .push(elapsed);
        result
    }
}

struct Images {
    wasm: String,
    busybox: String,
}

fn cycle(
    node: &CriNode,
    images: &Images,
    timings: &Timings,
    retried: &Mutex<Vec<String>>,
    name: &str,
) -> Result<()> {
    let pod = timings.time("RunPodSandbox", || node.run_pod(name, WEDGE_HANDLER))?;
    let wasm = timings.time("CreateContainer", || {
        node.create_container(
            &pod,
            &ContainerSpec {
                name: "app".into(),
                image: images.wasm.clone(),
                ..Default::default()
            },
        )
    })?;
    let sidecar = timings.time("CreateContainer", || {
        node.create_container(
            &pod,
            &ContainerSpec {
                name: "sidecar".into(),
                image: images.busybox.clone(),
                command: sh("exec sleep 3600"),
                ..Default::default()
            },
        )
    })?;
    for id in [&wasm, &sidecar] {
        timings.time("StartContainer", || node.start_container(id))?;
    }
    // The wasm container ends on SIGTERM; the sidecar is a pid 1 without a handler, which
    // only SIGKILL (a zero grace period) ends at once.
    timings.time("StopContainer", || node.stop_container(&wasm, 10))?;
    timings.time("StopContainer", || node.stop_container(&sidecar, 0))?;
    for id in [&wasm, &sidecar] {
        timings.time("RemoveContainer", || node.remove_container(id))?;
    }
    // kubelet retries a StopPodSandbox that failed; so does the soak, once, and reports it.
    timings.time("StopPodSandbox+RemovePodSandbox", || {
        match node.remove_pod(&pod) {
            Ok(()) => Ok(()),
            Err(first) => {
                retried
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(format!("{name}: {first:#}"));
                std::thread::sleep(Duration::from_secs(1));
                node.remove_pod(&pod)
            }
        }
    })
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() -> Result<()> {
    let settings = settings()?;
    let node = CriNode::start(settings.release)?;
    let work = tempfile::tempdir()?;
    let images = Images {
        wasm: node.wasm_image(
            "soak-sleep",
            &programs::compile_c(SLEEP_C, work.path(), "sleep")?,
        )?,
        busybox: node.busybox_image()?,
    };
    let daemon = node
        .containerd
        .daemon_pid()
        .context("containerd is not running")?;
    // One warm-up cycle: the first pod pays for image unpacking and the compile cache.
    let timings = Timings::default();
    let retried = Mutex::new(Vec::<String>::new());
    cycle(
        &node,
        &images,
        &Timings::default(),
        &retried,
        "soak-warm-up",
    )?;
    let rss_before = rss_kib(daemon).unwrap_or(0);
    let fds_before = fd_count(daemon);

    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<String>::new());
    let running = AtomicBool::new(true);
    let shim_peak = Mutex::new((0usize, 0u64));
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while running.load(Ordering::Relaxed) {
                let shims: Vec<u64> = node
                    .containerd
                    .container_processes()
                    .into_iter()
                    .filter(|(_, cmdline)| cmdline.contains("containerd-shim-wedge-v1"))
                    .filter_map(|(pid, _)| rss_kib(pid))
                    .collect();
                let mut peak = shim_peak.lock().unwrap_or_else(|p| p.into_inner());
                peak.0 = peak.0.max(shims.len());
                peak.1 = peak.1.max(shims.iter().copied().max().unwrap_or(0));
                drop(peak);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let workers: Vec<_> = (0..settings.parallel)
            .map(|worker| {
                let (node, images, timings, next, failures, retried) =
                    (&node, &images, &timings, &next, &failures, &retried);
                scope.spawn(move || loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= settings.cycles {
                        break;
                    }
                    let name = format!("soak-{worker}-{index}");
                    if let Err(err) = cycle(node, images, timings, retried, &name) {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{name}: {err:#}"));
                        // As kubelet would: the pod goes anyway (its containers with it),
                        // so that what stays behind is a leak, not an abandoned pod.
                        let _ = node.remove_pod_named(&name);
                    }
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.join();
        }
        running.store(false, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();

    // Shims exit shortly after their last pod goes.
    let leftovers = node.containerd.assert_clean().err();
    let rss_after = rss_kib(daemon).unwrap_or(0);
    let fds_after = fd_count(daemon);
    let failures = failures.into_inner().unwrap_or_default();
    let retried = retried.into_inner().unwrap_or_default();
    let (shims_peak, shim_rss_peak) = shim_peak.into_inner().unwrap_or_default();

    println!(
        "soak: {} cycles ({} pods, each a wasm container and a native sidecar), {} in parallel, \
         containerd {}, {:.0} s",
        settings.cycles,
        settings.cycles,
        settings.parallel,
        settings.release.name(),
        elapsed.as_secs_f64()
    );
    println!("failed cycles: {}", failures.len());
    for failure in failures.iter().take(10) {
        println!("  {failure}");
    }
    println!(
        "pod stops that failed and succeeded on kubelet's retry: {}",
        retried.len()
    );
    for retry in retried.iter().take(10) {
        println!("  {retry}");
    }
    if !failures.is_empty() || !retried.is_empty() || leftovers.is_some() {
        let log = std::path::Path::new("target/soak-containerd.log");
        if std::fs::write(log, node.containerd.log()).is_ok() {
            println!("containerd's log (shims included): {}", log.display());
        }
    }
    match &leftovers {
        None => println!("left behind: 0 processes, 0 cgroups, 0 mounts, 0 bundles, 0 runc state"),
        Some(err) => println!("left behind: {err:#}"),
    }
    println!(
        "containerd fds: {fds_before} before, {fds_after} after ({:+})",
        fds_after as i64 - fds_before as i64
    );
    println!(
        "containerd RSS: {:.1} MiB before, {:.1} MiB after",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    println!(
        "shims: at most {shims_peak} at once, the largest {:.1} MiB RSS",
        shim_rss_peak as f64 / 1024.0
    );
    println!(
        "{:<34} {:>7} {:>9} {:>9}",
        "CRI call", "calls", "p50 ms", "p99 ms"
    );
    let timings = timings.0.into_inner().unwrap_or_default();
    for (call, mut samples) in timings {
        samples.sort();
        println!(
            "{call:<34} {:>7} {:>9.1} {:>9.1}",
            samples.len(),
            percentile(&samples, 0.5).as_secs_f64() * 1000.0,
            percentile(&samples, 0.99).as_secs_f64() * 1000.0
        );
    }
    // A containerd that grows an fd per pod leaks; a few come and go with its own work.
    let fd_growth = fds_after.saturating_sub(fds_before);
    if !failures.is_empty() || leftovers.is_some() || fd_growth > 16 {
        bail!(
            "soak failed: {} failed cycles, leftovers: {}, containerd fds grew by {fd_growth}",
            failures.len(),
            leftovers.is_some()
        );
    }
    Ok(())
}
