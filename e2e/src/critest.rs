//! Kubernetes' CRI validation suite (critest) against a private containerd: the kit that
//! carries it, its offline image registry, one run per runtime handler, and the comparison
//! of a handler's results with the reference handler's.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Registry hosts critest pulls from; each is pointed at the kit's registry.
const REGISTRY_HOSTS: [&str; 3] = ["registry.k8s.io", "gcr.io", "docker.io"];

/// The sandbox image critest's pods expect, served by the kit's registry.
pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// Specs that cannot pass offline: the image is named by a digest of the real registry's.
const SKIPPED: &str = "public image with digest";

/// Why critest skips a spec for handler `wedge` that it runs for `runc`, when the reason is
/// containerd's and no runtime but runc could change it: containerd 2.1 learns a runtime's
/// features (recursive read-only mounts) only for runtime type `io.containerd.runc.v2`.
const CONTAINERD_ONLY_RUNC_FEATURES: &[&str] =
    &["runtime does not implement recursive readonly mounts"];

/// The conformance kit: critest, crictl and the stand-ins for the images critest pulls.
pub struct Kit {
    dir: PathBuf,
}

impl Kit {
    /// The kit at `dir`, or an error naming what is missing and what the kit is.
    pub fn locate(dir: &Path) -> Result<Kit> {
        let needed = [
            "bin/critest",
            "images/prepare.sh",
            "images/registry.py",
            "images/mkimages.py",
        ];
        let missing: Vec<&str> = needed
            .into_iter()
            .filter(|file| !dir.join(file).is_file())
            .collect();
        ensure!(
            missing.is_empty(),
            "the CRI conformance kit is not at {} (missing: {}). It holds critest and crictl \
             v1.32.0 (bin/), offline stand-ins for the images critest pulls and a tiny \
             registry (images/); point CRI_CONFORMANCE (make) or --kit at it",
            dir.display(),
            missing.join(", ")
        );
        // Absolute: critest runs in its own work directory.
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        Ok(Kit { dir })
    }

    /// Builds the stand-in images into `store` (static pause and no-new-privs programs,
    /// Debian's busybox).
    pub fn prepare_images(&self, store: &Path) -> Result<()> {
        let out = Command::new(self.dir.join("images/prepare.sh"))
            .arg(store)
            .stdin(Stdio::null())
            .output()
            .context("cannot run the kit's images/prepare.sh")?;
        ensure!(
            out.status.success(),
            "images/prepare.sh failed (it needs gcc and apt-get download busybox): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Serves `store` on a free 127.0.0.1 port until the returned registry is dropped.
    pub fn serve(&self, store: &Path, log: &Path) -> Result<KitRegistry> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(log)?;
        let process = Command::new("python3")
            .arg(self.dir.join("images/registry.py"))
            .arg(store)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the kit's registry (python3)")?;
        let registry = KitRegistry {
            process,
            address: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&registry.address).is_err() {
            ensure!(
                Instant::now() < deadline,
                "the kit's registry did not listen on {}",
                registry.address
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// Runs critest against containerd at `socket` with every pod on `handler`; the report
    /// and critest's output go to `work`.
    pub fn run(&self, socket: &Path, handler: &str, work: &Path) -> Result<SuiteResult> {
        let report = work.join(format!("critest-{handler}.json"));
        let log = std::fs::File::create(work.join(format!("critest-{handler}.log")))?;
        let endpoint = format!("unix://{}", socket.display());
        let status = Command::new(self.dir.join("bin/critest"))
            .arg(format!("--runtime-endpoint={endpoint}"))
            .arg(format!("--image-endpoint={endpoint}"))
            .arg(format!("--runtime-handler={handler}"))
            .arg(format!("--ginkgo.skip={SKIPPED}"))
            .arg(format!("--ginkgo.json-report={}", report.display()))
            .arg("--ginkgo.no-color")
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("cannot run critest")?;
        let text = std::fs::read_to_string(&report).with_context(|| {
            format!(
                "critest ({status}) wrote no report; see {}",
                work.join(format!("critest-{handler}.log")).display()
            )
        })?;
        SuiteResult::from_ginkgo_json(&text)
    }
}

/// The kit's registry process; killed when dropped.
pub struct KitRegistry {
    process: Child,
    /// `127.0.0.1:PORT`
    pub address: String,
}

impl KitRegistry {
    /// containerd's registry `config_path` under `dir`: every host critest pulls from is
    /// served by this registry over plain HTTP.
    pub fn write_hosts(&self, dir: &Path) -> Result<PathBuf> {
        let root = dir.join("certs.d");
        for host in REGISTRY_HOSTS {
            let host_dir = root.join(host);
            std::fs::create_dir_all(&host_dir)?;
            std::fs::write(
                host_dir.join("hosts.toml"),
                format!(
                    "server = \"http://{address}\"\n[host.\"http://{address}\"]\n  \
                     capabilities = [\"pull\", \"resolve\"]\n",
                    address = self.address
                ),
            )?;
        }
        Ok(root)
    }
}

impl Drop for KitRegistry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Each spec critest ran, by its full name, and whether it passed (failures with their
/// message's first line).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SuiteResult {
    pub passed: Vec<String>,
    pub failed: BTreeMap<String, String>,
    /// Skipped specs with critest's reason.
    pub skipped: BTreeMap<String, String>,
}

impl SuiteResult {
    /// Reads Ginkgo's JSON report: suites of spec reports, of which the `It` leaves are the
    /// specs (setup nodes are not counted; skipped specs neither pass nor fail).
    pub fn from_ginkgo_json(text: &str) -> Result<SuiteResult> {
        let suites: serde_json::Value =
            serde_json::from_str(text).context("critest's report is not JSON")?;
        let suites = suites
            .as_array()
            .context("critest's report is not a list of suites")?;
        let mut result = SuiteResult::default();
        for spec in suites
            .iter()
            .filter_map(|suite| suite["SpecReports"].as_array())
            .flatten()
        {
            if spec["LeafNodeType"] != "It" {
                if spec["State"] != "passed" && spec["State"] != "skipped" {
                    bail!(
                        "critest's {} failed: {}",
                        spec["LeafNodeType"],
                        first_line(&spec["Failure"]["Message"])
                    );
                }
                continue;
            }
            let mut name: Vec<&str> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .collect();
            name.extend(spec["LeafNodeText"].as_str());
            let name = name.join(" ");
            match spec["State"].as_str() {
                Some("passed") => result.passed.push(name),
                Some("skipped" | "pending") => {
                    result
                        .skipped
                        .insert(name, first_line(&spec["Failure"]["Message"]));
                }
                _ => {
                    result
                        .failed
                        .insert(name, first_line(&spec["Failure"]["Message"]));
                }
            }
        }
        result.passed.sort();
        Ok(result)
    }

    /// `N passed, M failed`
    pub fn counts(&self) -> String {
        format!("{} passed, {} failed", self.passed.len(), self.failed.len())
    }

    /// Specs the reference passes that critest skipped here for a reason only containerd
    /// can change (see [`CONTAINERD_ONLY_RUNC_FEATURES`]), with the reason.
    pub fn skipped_by_containerd<'a>(&'a self, reference: &SuiteResult) -> Vec<(&'a str, &'a str)> {
        self.skipped
            .iter()
            .filter(|(name, reason)| {
                reference.passed.contains(name)
                    && CONTAINERD_ONLY_RUNC_FEATURES.contains(&reason.as_str())
            })
            .map(|(name, reason)| (name.as_str(), reason.as_str()))
            .collect()
    }

    /// What keeps `self` (Wedge) from matching `reference` (runc): specs it fails that the
    /// reference passes, and a lower pass count once the specs containerd withholds from
    /// every runtime but runc ([`Self::skipped_by_containerd`]) are set aside.
    pub fn shortfall(&self, reference: &SuiteResult) -> Vec<String> {
        let mut problems: Vec<String> = self
            .failed
            .iter()
            .filter(|(name, _)| !reference.failed.contains_key(*name))
            .map(|(name, message)| format!("fails where runc passes: {name}: {message}"))
            .collect();
        let withheld = self.skipped_by_containerd(reference).len();
        if self.passed.len() + withheld < reference.passed.len() {
            problems.push(format!(
                "passes {} specs, runc {} ({withheld} withheld by containerd)",
                self.passed.len(),
                reference.passed.len()
            ));
        }
        problems
    }
}

/// The telling line of a failure message: Gomega's opens with "Unexpected error:" and a
/// dump of the error value (`<*status.Error | 0x…>:`) before the error's own text.
fn first_line(message: &serde_json::Value) -> String {
    let mut lines = message
        .as_str()
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty());
    let first = lines.clone().next();
    lines
        .find(|line| !line.starts_with("Unexpected error") && !line.starts_with('<'))
        .or(first)
        .unwrap_or("(no message)")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(specs: &[(&str, &str, &str)]) -> String {
        let specs: Vec<serde_json::Value> = specs
            .iter()
            .map(|(kind, name, state)| {
                serde_json::json!({
                    "ContainerHierarchyTexts": ["[sig-node] Container", "runtime should support"],
                    "LeafNodeType": kind,
                    "LeafNodeText": name,
                    "State": state,
                    "Failure": { "Message": format!("Unexpected error:\n  <*status.Error | 0xc0>: \n{name} went wrong\nat line 3") },
                })
            })
            .collect();
        serde_json::json!([{ "SuiteDescription": "CRI validation", "SpecReports": specs }])
            .to_string()
    }

    #[test]
    fn specs_are_the_it_leaves_and_skips_count_nowhere() {
        let result = SuiteResult::from_ginkgo_json(&report(&[
            ("BeforeSuite", "", "passed"),
            ("It", "starting a container", "passed"),
            ("It", "stopping twice", "failed"),
            ("It", "a benchmark", "skipped"),
        ]))
        .unwrap();
        assert_eq!(
            result.passed,
            ["[sig-node] Container runtime should support starting a container"]
        );
        assert_eq!(
            result.failed.values().collect::<Vec<_>>(),
            ["stopping twice went wrong"]
        );
        assert_eq!(result.counts(), "1 passed, 1 failed");
    }

    #[test]
    fn a_failed_setup_node_fails_the_run() {
        let err = SuiteResult::from_ginkgo_json(&report(&[("BeforeSuite", "", "failed")]));
        assert!(err.is_err());
    }

    #[test]
    fn wedge_falls_short_by_failures_runc_does_not_have_or_fewer_passes() {
        let runc =
            SuiteResult::from_ginkgo_json(&report(&[("It", "a", "passed"), ("It", "b", "failed")]))
                .unwrap();
        let same = runc.clone();
        assert!(same.shortfall(&runc).is_empty());
        let worse =
            SuiteResult::from_ginkgo_json(&report(&[("It", "a", "failed"), ("It", "b", "failed")]))
                .unwrap();
        let problems = worse.shortfall(&runc);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("support a: a went wrong"),
            "{problems:?}"
        );
        // Passing what runc fails is no shortfall.
        let better =
            SuiteResult::from_ginkgo_json(&report(&[("It", "a", "passed"), ("It", "b", "passed")]))
                .unwrap();
        assert!(better.shortfall(&runc).is_empty());
    }

    #[test]
    fn specs_containerd_withholds_from_non_runc_runtimes_are_named_not_counted_against() {
        let runc = SuiteResult::from_ginkgo_json(&report(&[
            ("It", "a", "passed"),
            ("It", "rro", "passed"),
        ]))
        .unwrap();
        let mut wedge = SuiteResult::from_ginkgo_json(&report(&[
            ("It", "a", "passed"),
            ("It", "rro", "skipped"),
        ]))
        .unwrap();
        // Skipped for another reason: a shortfall.
        assert_eq!(wedge.shortfall(&runc).len(), 1);
        for reason in wedge.skipped.values_mut() {
            *reason = "runtime does not implement recursive readonly mounts".into();
        }
        assert!(wedge.shortfall(&runc).is_empty());
        assert_eq!(wedge.skipped_by_containerd(&runc).len(), 1);
    }

    #[test]
    fn a_missing_kit_names_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let err = Kit::locate(dir.path()).err().unwrap().to_string();
        assert!(err.contains("bin/critest"), "{err}");
        assert!(err.contains("CRI_CONFORMANCE"), "{err}");
    }
}
