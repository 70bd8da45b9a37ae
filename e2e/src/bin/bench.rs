//! `make bench`: cold start of `ctr run --rm` on Wedge against runc, on the same private
//! containerd in the same run, with medians and ratios; then the first (compiling) and the
//! cached start of a large module; then memory (PSS) per running container, shim included;
//! then requests/s and latency of an HTTP component in a pod against `wasmtime serve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wedge_e2e::cri::WEDGE_HANDLER;
use wedge_e2e::{
    binaries, components, http_load, images, programs, ContainerSpec, Containerd, CriNode, Release,
    WEDGE_RUNTIME,
};

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

const HELLO_C: &str = "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n";

const SLEEP_C: &str = "#include <unistd.h>\nint main(void) { sleep(3600); return 0; }\n";

/// Running containers per runtime in the memory benchmark (`WEDGE_BENCH_CONTAINERS`).
const MEMORY_CONTAINERS: usize = 20;

struct Subject {
    label: &'static str,
    runtime: &'static str,
    image: String,
    /// What stdout must contain.
    expect: &'static str,
    samples: Vec<Duration>,
}

/// Size the large module must reach: big enough that compiling it is real work.
const LARGE_MODULE_MIN_BYTES: usize = 5 * 1024 * 1024;

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn run_once(containerd: &Containerd, subject: &Subject, id: &str) -> Result<Duration> {
    let started = Instant::now();
    let out = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        subject.runtime,
        &subject.image,
        id,
    ])?;
    let elapsed = started.elapsed();
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(subject.expect),
        "{} run failed: {}",
        subject.label,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(elapsed)
}

fn main() -> Result<()> {
    let runs: usize = std::env::var("WEDGE_BENCH_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(15);
    let work = tempfile::tempdir()?;
    let containerd = Containerd::start()?;

    let hello_c = programs::compile_c(HELLO_C, work.path(), "hello-c")?;
    let hello_wat = programs::wat(programs::HELLO_WAT)?;
    let (archive, wasm_c) = images::wasm_image(work.path(), "hello-c", &hello_c)?;
    containerd.import(&archive)?;
    let (archive, wasm_wat) = images::wasm_image(work.path(), "hello-wat", &hello_wat)?;
    containerd.import(&archive)?;
    let (archive, busybox) = images::native_image(
        work.path(),
        "busybox-echo",
        Path::new("/bin/busybox"),
        "/bin/busybox",
        &["/bin/busybox", "echo", "hello"],
    )?;
    containerd.import(&archive)?;

    let mut subjects = [
        Subject {
            label: "runc: static busybox echo",
            runtime: RUNC_RUNTIME,
            image: busybox,
            expect: "hello",
            samples: vec![],
        },
        Subject {
            label: "wedge: WASI hello (C, wasi-libc)",
            runtime: WEDGE_RUNTIME,
            image: wasm_c,
            expect: "hello",
            samples: vec![],
        },
        Subject {
            label: "wedge: WASI hello (WAT)",
            runtime: WEDGE_RUNTIME,
            image: wasm_wat,
            expect: "hello",
            samples: vec![],
        },
    ];

    // Warm-up: page cache, snapshots, first-exec costs.
    for (index, subject) in subjects.iter().enumerate() {
        for warm in 0..2 {
            run_once(&containerd, subject, &format!("warm-{index}-{warm}"))?;
        }
    }
    // Interleaved, so that machine noise hits every subject alike.
    for run in 0..runs {
        for (index, subject) in subjects.iter_mut().enumerate() {
            let elapsed = run_once(&containerd, subject, &format!("bench-{index}-{run}"))?;
            subject.samples.push(elapsed);
        }
    }
    let runc = median(&subjects[0].samples);
    println!("\ncold start of `ctr run --rm` (median of {runs} runs, same containerd, same run)");
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>12}",
        "subject", "median ms", "min ms", "max ms", "vs runc"
    );
    for subject in &subjects {
        let med = median(&subject.samples);
        let min = subject.samples.iter().min().copied().unwrap_or_default();
        let max = subject.samples.iter().max().copied().unwrap_or_default();
        println!(
            "{:<36} {:>10.1} {:>10.1} {:>10.1} {:>11.2}x",
            subject.label,
            ms(med),
            ms(min),
            ms(max),
            med.as_secs_f64() / runc.as_secs_f64()
        );
    }
    println!("target: wedge ≤ 0.50x runc");

    let hello = median(&subjects[2].samples);
    large_module(&containerd, work.path(), runs, hello)?;
    memory(&containerd, work.path())?;
    containerd.assert_clean()?;
    drop(containerd);
    http(work.path())
}

/// Requests in each HTTP measurement (`WEDGE_BENCH_REQUESTS`), and how many at a time.
const HTTP_REQUESTS: usize = 5000;
const HTTP_IN_FLIGHT: usize = 16;

/// Requests per second and latency of the hello HTTP component (WASI 0.2) served from a
/// Wedge pod (through the pod IP), and of the same component under `wasmtime serve` on the
/// node; then the same for a WASI 0.3 service (the official suite's `http-service`, whose
/// instances take several requests each), all in the same run with the same client.
fn http(work: &Path) -> Result<()> {
    let requests: usize = std::env::var("WEDGE_BENCH_REQUESTS")
        .ok()
        .and_then(|requests| requests.parse().ok())
        .unwrap_or(HTTP_REQUESTS);
    let p2 = HttpSubject {
        label: "0.2 hello (incoming-handler)",
        name: "http-hello",
        component: components::http_hello_component()?,
        path: "/bench",
        expect: "hello",
        wasmtime_flags: &["-Scli"],
    };
    let p3 = match wedge_e2e::wasi_suite::component("http-service") {
        Ok(component) => Some(HttpSubject {
            label: "0.3 http-service (handler)",
            name: "http-service-p3",
            component,
            path: "/",
            expect: "hey",
            wasmtime_flags: &["-Scli", "-Sp3", "-Wcomponent-model-async"],
        }),
        Err(err) => {
            println!("\nHTTP WASI 0.3: SKIPPED, {err:#}");
            None
        }
    };
    let node = CriNode::start(Release::under_test())?;
    let mut rows = Vec::new();
    for subject in std::iter::once(&p2).chain(p3.as_ref()) {
        let reference = subject.under_wasmtime_serve(work, requests)?;
        let wedge = subject.in_a_wedge_pod(&node, requests)?;
        rows.push((subject.label, reference, wedge));
    }
    node.containerd.assert_clean()?;

    println!(
        "\nHTTP components: {requests} GETs each, {HTTP_IN_FLIGHT} in flight, keep-alive, same client"
    );
    println!(
        "{:<30} {:<28} {:>9} {:>8} {:>8} {:>13}",
        "component", "server", "req/s", "p50 ms", "p99 ms", "vs wasmtime"
    );
    for (label, reference, wedge) in &rows {
        for (server, report) in [
            ("wasmtime serve (127.0.0.1)", reference),
            ("wedge pod (pod IP)", wedge),
        ] {
            println!(
                "{:<30} {:<28} {:>9.0} {:>8.2} {:>8.2} {:>12.2}x",
                label,
                server,
                report.requests_per_second(),
                ms(report.percentile(0.50)),
                ms(report.percentile(0.99)),
                report.requests_per_second() / reference.requests_per_second()
            );
        }
    }
    if let [(_, _, p2), (_, _, p3)] = &rows[..] {
        println!(
            "wedge 0.3 / 0.2 req/s: {:.2}x",
            p3.requests_per_second() / p2.requests_per_second()
        );
    }
    Ok(())
}

struct HttpSubject {
    label: &'static str,
    /// Its image's and pod's name.
    name: &'static str,
    component: Vec<u8>,
    path: &'static str,
    /// What a good answer's body starts with.
    expect: &'static str,
    wasmtime_flags: &'static [&'static str],
}

impl HttpSubject {
    fn under_wasmtime_serve(&self, work: &Path, requests: usize) -> Result<http_load::LoadReport> {
        let file = work.join(format!("{}.wasm", self.name));
        std::fs::write(&file, &self.component)?;
        let wasmtime = wasmtime_cli()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut serve = std::process::Command::new(&wasmtime)
            .arg("serve")
            .args(self.wasmtime_flags)
            .args(["--addr", &address.to_string()])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", wasmtime.display()))?;
        let measured = measure_http(address, self.path, self.expect, requests);
        let _ = serve.kill();
        let _ = serve.wait();
        measured
    }

    fn in_a_wedge_pod(&self, node: &CriNode, requests: usize) -> Result<http_load::LoadReport> {
        let image = node.wasm_image(self.name, &self.component)?;
        let pod = node.run_pod(self.name, WEDGE_HANDLER)?;
        node.run_container(
            &pod,
            &ContainerSpec {
                name: "app".into(),
                image,
                ..Default::default()
            },
        )?;
        let ip: std::net::IpAddr = node.pod_ip(&pod)?.parse()?;
        let measured = measure_http(SocketAddr::new(ip, 8080), self.path, self.expect, requests);
        node.remove_pod(&pod)?;
        measured
    }
}

fn measure_http(
    address: SocketAddr,
    path: &str,
    expect: &str,
    requests: usize,
) -> Result<http_load::LoadReport> {
    http_load::wait_listening(address, Duration::from_secs(30))?;
    // Warm-up: connections, the allocator's slots, the code's pages.
    http_load::load(address, path, expect, 500, HTTP_IN_FLIGHT)?;
    let report = http_load::load(address, path, expect, requests, HTTP_IN_FLIGHT)?;
    ensure!(
        report.failures.is_empty(),
        "{address}: {} of {requests} failed: {:?}",
        report.failures.len(),
        report.failures.iter().take(3).collect::<Vec<_>>()
    );
    Ok(report)
}

/// The reference `wasmtime` CLI, built once by `make bench` (`WEDGE_BENCH_WASMTIME`
/// overrides).
fn wasmtime_cli() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WEDGE_BENCH_WASMTIME") {
        return Ok(PathBuf::from(path));
    }
    let built = binaries::dir()?.join("../wasmtime-cli/bin/wasmtime");
    ensure!(
        built.is_file(),
        "no wasmtime CLI at {}: `make bench` builds it",
        built.display()
    );
    Ok(built)
}

/// PSS of the processes that keep `count` sleeping containers alive: each one's shim and
/// its container process (the runner for Wedge, the container's init for runc).
fn memory(containerd: &Containerd, work: &Path) -> Result<()> {
    let count: usize = std::env::var("WEDGE_BENCH_CONTAINERS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(MEMORY_CONTAINERS);
    let sleeper = programs::compile_c(SLEEP_C, work, "sleep")?;
    let (archive, wasm) = images::wasm_image(work, "sleep", &sleeper)?;
    containerd.import(&archive)?;
    let (archive, native) = images::native_image(
        work,
        "busybox-sleep",
        Path::new("/bin/busybox"),
        "/bin/busybox",
        &["/bin/busybox", "sleep", "3600"],
    )?;
    containerd.import(&archive)?;
    println!(
        "
memory of {count} running containers (PSS from smaps_rollup, shim + container)"
    );
    println!(
        "{:<36} {:>12} {:>12} {:>14}",
        "runtime", "shims MB", "processes MB", "per container"
    );
    let mut per_container = Vec::new();
    for (label, runtime, image) in [
        ("runc: busybox sleep", RUNC_RUNTIME, &native),
        ("wedge: WASI sleep (C)", WEDGE_RUNTIME, &wasm),
    ] {
        let ids: Vec<String> = (0..count).map(|n| format!("mem-{n}")).collect();
        for id in &ids {
            containerd.ctr_ok(&["run", "--detach", "--runtime", runtime, image, id])?;
        }
        std::thread::sleep(Duration::from_millis(500));
        let tasks =
            String::from_utf8_lossy(&containerd.ctr_ok(&["tasks", "ls"])?.stdout).into_owned();
        let task_pids: Vec<i32> = tasks
            .lines()
            .filter(|line| line.starts_with("mem-"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
            .collect();
        ensure!(task_pids.len() == count, "not all containers run: {tasks}");
        let shims: Vec<i32> = containerd
            .container_processes()
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains("containerd-shim"))
            .map(|(pid, _)| pid)
            .collect();
        let shim_mb = pss_mb(&shims);
        let process_mb = pss_mb(&task_pids);
        let each = (shim_mb + process_mb) / count as f64;
        per_container.push(each);
        println!("{label:<36} {shim_mb:>12.2} {process_mb:>12.2} {each:>11.2} MB");
        for id in &ids {
            containerd.ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", id])?;
        }
        for id in &ids {
            wait_stopped(containerd, id)?;
            containerd.ctr_ok(&["tasks", "delete", id])?;
            containerd.ctr_ok(&["containers", "rm", id])?;
        }
    }
    println!(
        "wedge / runc per container: {:.2}x; target: wedge ≤ 2.5 MB",
        per_container[1] / per_container[0]
    );
    Ok(())
}

fn wait_stopped(containerd: &Containerd, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks =
            String::from_utf8_lossy(&containerd.ctr_ok(&["tasks", "ls"])?.stdout).into_owned();
        let running = tasks
            .lines()
            .any(|line| line.starts_with(&format!("{id} ")) && line.contains("RUNNING"));
        if !running {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{id} did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sum of the proportional set sizes of `pids`, in MB (10^6 bytes).
fn pss_mb(pids: &[i32]) -> f64 {
    let kilobytes: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Pss:"))
                .and_then(|value| {
                    value
                        .trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .sum();
    kilobytes as f64 * 1024.0 / 1e6
}

/// First start (compiles, cache emptied before each run) against cached start of a module
/// of several megabytes.
fn large_module(containerd: &Containerd, work: &Path, runs: usize, hello: Duration) -> Result<()> {
    let mut functions = 20_000;
    let module = loop {
        let module = programs::large_module(functions)?;
        if module.len() >= LARGE_MODULE_MIN_BYTES {
            break module;
        }
        functions = functions * 3 / 2;
    };
    let (archive, image) = images::wasm_image(work, "large", &module)?;
    containerd.import(&archive)?;
    let subject = Subject {
        label: "large",
        runtime: WEDGE_RUNTIME,
        image,
        expect: "",
        samples: vec![],
    };
    let first_runs = runs.clamp(1, 3);
    let mut first = Vec::new();
    for run in 0..first_runs {
        clear(&containerd.cache_dir())?;
        first.push(run_once(
            containerd,
            &subject,
            &format!("large-first-{run}"),
        )?);
    }
    let mut cached = Vec::new();
    for run in 0..runs.clamp(1, 7) {
        cached.push(run_once(
            containerd,
            &subject,
            &format!("large-cached-{run}"),
        )?);
    }
    let (first, cached) = (median(&first), median(&cached));
    println!(
        "\nlarge module: {:.1} MB, {functions} functions (median; first = compile, cache emptied)",
        module.len() as f64 / (1024.0 * 1024.0)
    );
    println!("{:<36} {:>10.1} ms", "first start (compiles)", ms(first));
    println!("{:<36} {:>10.1} ms", "cached start", ms(cached));
    println!(
        "{:<36} {:>10.1}x",
        "first / cached",
        first.as_secs_f64() / cached.as_secs_f64()
    );
    println!(
        "{:<36} {:>10.2}x",
        "cached large / WAT hello",
        cached.as_secs_f64() / hello.as_secs_f64()
    );
    Ok(())
}

/// Empties the cache, partitions and all.
fn clear(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
        _ => Ok(()),
    }
}
