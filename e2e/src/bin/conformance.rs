//! `make conformance`: Kubernetes' CRI validation suite (critest) against the project's own
//! private containerd, every pod on handler `wedge` and, in the same run and on the same
//! containerd, on handler `runc` as the reference. Wedge must pass every spec runc passes.
//!
//! usage: wedge-conformance [--kit DIR] [--containerd 1.6,1.7,2.1] [--out DIR]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use wedge_e2e::containerd::CriOptions;
use wedge_e2e::critest::{Kit, SuiteResult, SANDBOX_IMAGE};
use wedge_e2e::{Containerd, Release};

/// The kit's place beside the project, as in the shared workspace.
const DEFAULT_KIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/cri-conformance");

struct Options {
    kit: PathBuf,
    releases: Vec<Release>,
    out: PathBuf,
}

fn options() -> Result<Options> {
    let mut options = Options {
        kit: std::env::var_os("CRI_CONFORMANCE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KIT)),
        releases: Release::ALL.to_vec(),
        out: PathBuf::from("target/conformance"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--kit" => options.kit = PathBuf::from(value()?),
            "--out" => options.out = PathBuf::from(value()?),
            "--containerd" => {
                options.releases = value()?
                    .split(',')
                    .map(|name| {
                        Release::parse(name).with_context(|| {
                            format!("--containerd {name}: expected 1.6, 1.7 or 2.1")
                        })
                    })
                    .collect::<Result<_>>()?;
            }
            other => bail!(
                "unknown argument {other}; usage: wedge-conformance [--kit DIR] \
                 [--containerd 1.6,1.7,2.1] [--out DIR]"
            ),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("conformance: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether Wedge matched runc on every containerd release asked for.
fn run() -> Result<bool> {
    let options = options()?;
    let kit = Kit::locate(&options.kit)?;
    std::fs::create_dir_all(&options.out)?;
    let out = options.out.canonicalize()?;
    let work = tempfile::Builder::new()
        .prefix("wedge-conformance-")
        .tempdir()?;
    let store = work.path().join("store");
    println!("conformance: building the kit's stand-in images");
    kit.prepare_images(&store)?;
    let registry = kit.serve(&store, &out.join("registry.log"))?;
    let hosts = registry.write_hosts(work.path())?;

    let mut lines = Vec::new();
    let mut all_problems = Vec::new();
    for release in &options.releases {
        let version = containerd_version(*release)?;
        println!("conformance: critest on {version}, handler wedge then runc");
        let release_out = out.join(format!("containerd-{}", release.name()));
        std::fs::create_dir_all(&release_out)?;
        let containerd = Containerd::start_cri_options(
            *release,
            CriOptions {
                sandbox_image: Some(SANDBOX_IMAGE.to_string()),
                registry_hosts: Some(hosts.clone()),
                ..CriOptions::default()
            },
        )?;
        let mut problems = Vec::new();
        let wedge = run_handler(&kit, &containerd, "wedge", &release_out, &mut problems)?;
        let runc = run_handler(&kit, &containerd, "runc", &release_out, &mut problems)?;
        let _ = std::fs::write(release_out.join("containerd.log"), containerd.log());
        problems.extend(wedge.shortfall(&runc));
        let line = format!(
            "{version}: wedge: {}; runc: {}",
            wedge.counts(),
            runc.counts()
        );
        println!("{line}");
        for (name, message) in &runc.failed {
            println!("  runc fails too: {name}: {message}");
        }
        for (name, reason) in wedge.skipped_by_containerd(&runc) {
            println!("  skipped for wedge only, by containerd ({reason}): {name}");
        }
        for problem in &problems {
            println!("  PROBLEM: {problem}");
        }
        lines.push(line);
        all_problems.extend(
            problems
                .into_iter()
                .map(|problem| format!("{version}: {problem}")),
        );
    }
    println!(
        "\nCRI conformance (critest v1.32.0; reports in {}):",
        out.display()
    );
    for line in &lines {
        println!("  {line}");
    }
    if all_problems.is_empty() {
        println!("Wedge passes every spec runc passes.");
        Ok(true)
    } else {
        println!("Wedge falls short of runc:");
        for problem in &all_problems {
            println!("  {problem}");
        }
        Ok(false)
    }
}

/// One critest run; anything it leaves behind (processes, mounts, bundles, runc state) is a
/// problem of its own.
fn run_handler(
    kit: &Kit,
    containerd: &Containerd,
    handler: &str,
    out: &Path,
    problems: &mut Vec<String>,
) -> Result<SuiteResult> {
    let result = kit.run(&containerd.socket(), handler, out)?;
    if let Err(err) = containerd.assert_clean() {
        problems.push(format!("critest on handler {handler} {err}"));
    }
    Ok(result)
}

/// `containerd --version`, shortened to `containerd 1.6.20`.
fn containerd_version(release: Release) -> Result<String> {
    let out = Command::new(release.containerd())
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {}", release.containerd().display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .nth(2)
        .map(|version| version.split(['~', '+']).next().unwrap_or(version))
        .unwrap_or(release.name());
    Ok(format!("containerd {version}"))
}
