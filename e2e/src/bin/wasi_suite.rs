//! `make conformance` (and `make test` when the suite is there): the official WASI 0.3 test
//! suite, each test a container on the Wedge runtime in a private containerd.
//!
//! usage: wedge-wasi-suite [--suite DIR] [--containerd 1.7|2.1] [TEST...]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use wedge_e2e::wasi_suite::{self, Outcome};
use wedge_e2e::{Containerd, Release};

struct Options {
    suite: PathBuf,
    release: Release,
    only: Vec<String>,
}

fn options() -> Result<Options> {
    let mut options = Options {
        suite: wasi_suite::suite_dir(),
        // The layer form of images needs containerd 1.7.7 or later.
        release: Release::V2_1,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--suite" => options.suite = PathBuf::from(value()?),
            "--containerd" => {
                let name = value()?;
                options.release = Release::parse(&name)
                    .filter(|release| *release != Release::V1_6)
                    .with_context(|| format!("--containerd {name}: expected 1.7 or 2.1"))?;
            }
            other if other.starts_with('-') => bail!(
                "unknown argument {other}; usage: wedge-wasi-suite [--suite DIR] \
                 [--containerd 1.7|2.1] [TEST...]"
            ),
            test => options.only.push(test.to_string()),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("wedge-wasi-suite: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool> {
    let options = options()?;
    let mut tests = wasi_suite::discover(&options.suite)?;
    if !options.only.is_empty() {
        tests.retain(|test| options.only.contains(&test.name));
    }
    let containerd = Containerd::start_release(options.release)?;
    wasi_suite::default_network_policy(&containerd)?;
    let work = tempfile::tempdir()?;
    println!(
        "WASI 0.3 test suite ({} tests, {}) through containerd {}, runtime wedge",
        tests.len(),
        options.suite.display(),
        options.release.name()
    );
    let outcomes = wasi_suite::run_all(&containerd, work.path(), &tests, &mut |outcome| {
        print_outcome(outcome)
    });
    let clean = containerd.assert_clean();

    println!();
    let mut unexpected = 0;
    for (world, (passed, failed)) in wasi_suite::counts(&outcomes) {
        println!("{world:<16} {passed} passed, {failed} failed");
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    for outcome in &failed {
        if outcome.known_reason().is_none() {
            unexpected += 1;
        }
    }
    println!(
        "{:<16} {} passed, {} failed ({} known, {} unexpected)",
        "all",
        outcomes.len() - failed.len(),
        failed.len(),
        failed.len() - unexpected,
        unexpected
    );
    for outcome in &outcomes {
        if outcome.failure.is_none() && outcome.known_reason().is_some() {
            println!(
                "note: {} passes now; take it off the known failures",
                outcome.name
            );
        }
    }
    if let Err(err) = clean {
        println!("containers left something behind: {err:#}");
        return Ok(false);
    }
    Ok(unexpected == 0)
}

fn print_outcome(outcome: &Outcome) {
    let seconds = outcome.elapsed.as_secs_f64();
    match (&outcome.failure, outcome.known_reason()) {
        (None, _) => println!("PASS {} ({seconds:.1} s)", outcome.name),
        (Some(failure), Some(reason)) => println!(
            "FAIL {} ({seconds:.1} s), known: {reason}\n     {failure}",
            outcome.name
        ),
        (Some(failure), None) => println!("FAIL {} ({seconds:.1} s)\n     {failure}", outcome.name),
    }
}
