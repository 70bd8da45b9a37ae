//! The official WASI 0.3 test suite (`wasm32-wasip3`) run through containerd: every test a
//! container on the Wedge runtime, every operation of its JSON done against the container
//! (`case`), results counted per world. A test that fails for a known reason (wasmtime 48's
//! own WASI implementation, the host library Wedge embeds, fails it too; or a container's
//! environment differs from a bare process's) is listed in [`KNOWN_FAILURES`] with the
//! reason; any other failure fails the run.

pub mod case;
pub mod endpoints;
pub mod spec;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

pub use case::SuiteTest;
use spec::TestSpec;

use crate::Containerd;

/// Tests that fail for a reason outside Wedge, and the reason. The first three fail under
/// `wasmtime run`/`serve` 48.0.8 with the suite's own flags too: the cause is in
/// wasmtime-wasi-http 48, which Wedge uses as is.
pub const KNOWN_FAILURES: &[(&str, &str)] = &[
    (
        "http-client-path-none",
        "wasmtime-wasi-http 48 refuses an outgoing request without a path \
         (HttpRequestUriInvalid); the test expects it sent as `/`",
    ),
    (
        "http-client-sent",
        "wasmtime-wasi-http 48 reports a request as sent after its DNS lookup failed",
    ),
    (
        "http-request",
        "wasmtime-wasi-http 48 refuses a relative path such as `a/b/c` on a new request",
    ),
    (
        "cli-env",
        "a container's environment always holds PATH (containerd's default spec, as for \
         any Linux container); the test wants exactly the two variables it sets",
    ),
];

/// Where the suite is: `$WASI_P3_SUITE`, else beside the project as in the shared workspace.
pub fn suite_dir() -> std::path::PathBuf {
    std::env::var_os("WASI_P3_SUITE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/wasi-testsuite-p3/tests")
        })
}

/// The bytes of the suite's component `name` (`http-service-echo`, say), for tests that
/// need a WASI 0.3 component built by a 0.3 toolchain.
pub fn component(name: &str) -> Result<Vec<u8>> {
    let path = suite_dir().join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| {
        format!(
            "cannot read the WASI 0.3 suite's {} (set WASI_P3_SUITE to its tests directory)",
            path.display()
        )
    })
}

/// The world a test exercises, from its name, for the per-world counts.
pub fn world(name: &str) -> &'static str {
    match name.split('-').next().unwrap_or_default() {
        "cli" | "run" => "wasi:cli",
        "filesystem" => "wasi:filesystem",
        "http" => "wasi:http",
        "sockets" => "wasi:sockets",
        "monotonic" | "multi" | "wall" => "wasi:clocks",
        "random" => "wasi:random",
        _ => "other",
    }
}

/// Every `NAME.wasm` in `dir` with its `NAME.json` (defaults when there is none), by name.
pub fn discover(dir: &Path) -> Result<Vec<SuiteTest>> {
    let mut tests = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|extension| extension != "wasm") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .context("a test file name is not UTF-8")?
            .to_string();
        let json = path.with_extension("json");
        let spec: TestSpec = if json.exists() {
            serde_json::from_slice(&std::fs::read(&json)?)
                .with_context(|| format!("cannot parse {}", json.display()))?
        } else {
            TestSpec::default()
        };
        tests.push(SuiteTest {
            name,
            wasm: path,
            spec,
            dir: dir.to_path_buf(),
        });
    }
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tests)
}

/// One test's result.
pub struct Outcome {
    pub name: String,
    pub elapsed: Duration,
    /// Why it failed; none when it passed.
    pub failure: Option<String>,
}

impl Outcome {
    pub fn known_reason(&self) -> Option<&'static str> {
        KNOWN_FAILURES
            .iter()
            .find(|(name, _)| *name == self.name)
            .map(|(_, reason)| *reason)
    }
}

/// Makes the engine config of `containerd` the default network policy, as a node's is: the
/// harness's own denies TEST-NET-1, an address the bind tests use for "not bindable here".
pub fn default_network_policy(containerd: &Containerd) -> Result<()> {
    let path = containerd.engine_config();
    let mut config: toml_edit::DocumentMut = std::fs::read_to_string(&path)?.parse()?;
    config.remove("network");
    std::fs::write(&path, config.to_string())?;
    Ok(())
}

/// Runs `tests` one after another in `containerd`, reporting each as it ends.
pub fn run_all(
    containerd: &Containerd,
    work: &Path,
    tests: &[SuiteTest],
    report: &mut dyn FnMut(&Outcome),
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for test in tests {
        let started = Instant::now();
        let failure = case::run(containerd, work, test)
            .err()
            .map(|err| format!("{err:#}"));
        let outcome = Outcome {
            name: test.name.clone(),
            elapsed: started.elapsed(),
            failure,
        };
        report(&outcome);
        outcomes.push(outcome);
    }
    outcomes
}

/// `(passed, failed)` per world.
pub fn counts(outcomes: &[Outcome]) -> BTreeMap<&'static str, (usize, usize)> {
    let mut counts: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for outcome in outcomes {
        let entry = counts.entry(world(&outcome.name)).or_default();
        match outcome.failure {
            None => entry.0 += 1,
            Some(_) => entry.1 += 1,
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worlds_come_from_the_names() {
        assert_eq!(world("cli-env"), "wasi:cli");
        assert_eq!(world("run-with-err"), "wasi:cli");
        assert_eq!(world("filesystem-io"), "wasi:filesystem");
        assert_eq!(world("multi-clock-wait"), "wasi:clocks");
        assert_eq!(world("sockets-udp-bind"), "wasi:sockets");
    }
}
