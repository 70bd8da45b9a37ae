//! `make bench`: cold start of `ctr run --rm` on Wedge against runc, on the same private
//! containerd in the same run, with medians and ratios.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use wedge_e2e::{images, programs, Containerd, WEDGE_RUNTIME};

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

const HELLO_C: &str = "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n";

struct Subject {
    label: &'static str,
    runtime: &'static str,
    image: String,
    samples: Vec<Duration>,
}

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
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("hello"),
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
            samples: vec![],
        },
        Subject {
            label: "wedge: WASI hello (C, wasi-libc)",
            runtime: WEDGE_RUNTIME,
            image: wasm_c,
            samples: vec![],
        },
        Subject {
            label: "wedge: WASI hello (WAT)",
            runtime: WEDGE_RUNTIME,
            image: wasm_wat,
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
    containerd.assert_clean()?;

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
    Ok(())
}
