//! The bad-input corpus: hostile or broken OCI specs, `wedge.dev/*` annotations, images,
//! modules, mounts and engine configs, each run through `ctr` against a private containerd.
//!
//! Every case must be refused (or, for a program that fails on its own, end) with a message
//! that names the problem and reaches the `ctr` user; after each case nothing may be left
//! behind, and no shim may have panicked. `WEDGE_CORPUS_VERBOSE=1` prints every answer.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use wedge_e2e::images::{self, SpecialFile};
use wedge_e2e::{programs, CtrCase, Release};

/// The runtime flag in the one-token form, so the harness adds no engine config of its own.
const RUNTIME: &str = "--runtime=io.containerd.wedge.v1";

/// What a case must end in.
enum Expect {
    /// `ctr run` fails and its output contains every one of these (case-insensitive).
    Refused(&'static [&'static str]),
    /// The container runs and ends with this exit code, its output containing these.
    Exits(i32, &'static [&'static str]),
}

struct BadInput {
    name: &'static str,
    image: String,
    /// `ctr run` options before the image.
    options: Vec<String>,
    args: Vec<String>,
    /// An OCI spec replacing ctr's own (`ctr run --config`).
    spec: Option<Value>,
    /// An engine config replacing the harness's.
    engine_config: Option<&'static str>,
    expect: Expect,
}

impl BadInput {
    fn new(name: &'static str, image: &str, expect: Expect) -> Self {
        BadInput {
            name,
            image: image.to_string(),
            options: Vec::new(),
            args: Vec::new(),
            spec: None,
            engine_config: None,
            expect,
        }
    }

    fn options(mut self, options: &[&str]) -> Self {
        self.options = options.iter().map(|option| option.to_string()).collect();
        self
    }

    fn spec(mut self, spec: Value) -> Self {
        self.spec = Some(spec);
        self
    }

    fn engine_config(mut self, toml: &'static str) -> Self {
        self.engine_config = Some(toml);
        self
    }
}

struct Corpus {
    case: CtrCase,
    /// ctr's default OCI spec, read once.
    default_spec: std::cell::OnceCell<Value>,
}

impl Corpus {
    fn new() -> Result<Self> {
        Ok(Corpus {
            case: CtrCase::new()?,
            default_spec: std::cell::OnceCell::new(),
        })
    }

    fn image(&self, name: &str, module: &[u8]) -> Result<String> {
        self.case.image(name, module)
    }

    fn hello(&self) -> Result<String> {
        self.image("hello", &programs::wat(programs::HELLO_WAT)?)
    }

    /// ctr's default spec for a container running `/hello.wasm` from a root filesystem
    /// directory of the test's own, changed by `change`.
    fn spec(&self, change: impl FnOnce(&mut Value)) -> Result<Value> {
        let rootfs = self.path("rootfs");
        if !rootfs.exists() {
            std::fs::create_dir_all(&rootfs)?;
            std::fs::write(
                rootfs.join("hello.wasm"),
                programs::wat(programs::HELLO_WAT)?,
            )?;
        }
        let mut spec = match self.default_spec.get() {
            Some(spec) => spec.clone(),
            None => {
                let out = self.case.containerd.ctr_ok(&["oci", "spec"])?;
                let spec: Value = serde_json::from_slice(&out.stdout).context("ctr oci spec")?;
                self.default_spec.get_or_init(|| spec).clone()
            }
        };
        spec["root"] = json!({"path": rootfs, "readonly": true});
        spec["process"]["args"] = json!(["/hello.wasm"]);
        spec["linux"]["cgroupsPath"] =
            json!(format!("/{}/corpus", self.case.containerd.namespace()));
        change(&mut spec);
        Ok(spec)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.case.work.path().join(name)
    }

    /// Runs every case; returns the failures, one line each.
    fn run(&self, cases: Vec<BadInput>) -> Result<Vec<String>> {
        let verbose = std::env::var_os("WEDGE_CORPUS_VERBOSE").is_some();
        let mut failures = Vec::new();
        for (index, case) in cases.into_iter().enumerate() {
            let id = format!("bad-{index}");
            let mut command = vec!["run".to_string(), "--rm".into(), RUNTIME.into()];
            let config = match case.engine_config {
                Some(toml) => {
                    let path = self.path(&format!("{id}.toml"));
                    std::fs::write(&path, toml)?;
                    path
                }
                None => self.case.containerd.engine_config(),
            };
            command.push("--runtime-config-path".into());
            command.push(config.display().to_string());
            if let Some(spec) = &case.spec {
                let path = self.path(&format!("{id}.json"));
                std::fs::write(&path, serde_json::to_vec(spec)?)?;
                command.push("--config".into());
                command.push(path.display().to_string());
            }
            command.extend(case.options.iter().cloned());
            // With a spec of its own, ctr takes the root filesystem from the spec.
            if case.spec.is_none() {
                command.push(case.image.clone());
            }
            command.push(id.clone());
            command.extend(case.args.iter().cloned());
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            let out = self.case.containerd.ctr(&args)?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if verbose {
                eprintln!(
                    "[{}] exit {:?}: {}",
                    case.name,
                    out.status.code(),
                    text.trim()
                );
            }
            let lower = text.to_lowercase();
            let contains_all = |needles: &[&str]| {
                needles
                    .iter()
                    .all(|needle| lower.contains(&needle.to_lowercase()))
            };
            let verdict = match case.expect {
                Expect::Refused(needles) if out.status.success() => {
                    Some(format!("ran although it should be refused ({needles:?})"))
                }
                Expect::Refused(needles) if !contains_all(needles) => {
                    Some(format!("refused without naming {needles:?}"))
                }
                Expect::Exits(code, needles)
                    if out.status.code() != Some(code) || !contains_all(needles) =>
                {
                    Some(format!("expected exit {code} naming {needles:?}"))
                }
                _ => None,
            };
            if let Some(verdict) = verdict {
                failures.push(format!(
                    "{}: {verdict}; ctr said: {}",
                    case.name,
                    text.trim()
                ));
            }
            let _ = self.case.containerd.ctr(&["containers", "rm", &id]);
            if let Err(err) = self.case.containerd.assert_clean() {
                failures.push(format!("{}: {err:#}", case.name));
            }
        }
        let log = self.case.containerd.log();
        if log.contains("panicked") {
            failures.push(format!("a shim panicked:\n{log}"));
        }
        Ok(failures)
    }
}

fn report(failures: Vec<String>) -> Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    bail!(
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    )
}

/// The OCI runtime spec: paths, sizes, namespaces, rlimits, resources.
#[test]
fn bad_oci_specs_are_refused_by_name() -> Result<()> {
    let corpus = Corpus::new()?;
    let hello = corpus.hello()?;
    let spec = |change: fn(&mut Value)| corpus.spec(change);
    let mut cases =
        vec![
        BadInput::new(
            "spec: no process args",
            &hello,
            Expect::Refused(&["args must not be empty"]),
        )
            .spec(spec(|s| s["process"]["args"] = json!([]))?),
        BadInput::new(
            "spec: relative cwd",
            &hello,
            Expect::Refused(&["process.cwd", "\"work\" is not an absolute path"]),
        )
        .spec(spec(|s| s["process"]["cwd"] = json!("work"))?),
        BadInput::new(
            "spec: unknown rlimit",
            &hello,
            Expect::Refused(&["unknown variant `RLIMIT_BOGUS`"]),
        )
        .spec(spec(|s| {
            s["process"]["rlimits"] = json!([{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}])
        })?),
        BadInput::new(
            "spec: rlimit soft above hard",
            &hello,
            Expect::Refused(&["RLIMIT_NOFILE: soft limit 100 is above hard limit 10"]),
        )
        .spec(spec(|s| {
            s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 100}])
        })?),
        BadInput::new(
            "spec: unknown namespace type",
            &hello,
            Expect::Refused(&["unknown variant `bogus`"]),
        )
        .spec(spec(|s| {
            s["linux"]["namespaces"]
                .as_array_mut()
                .expect("ctr's spec lists namespaces")
                .push(json!({"type": "bogus"}))
        })?),
        BadInput::new(
            "spec: namespace path that does not exist",
            &hello,
            Expect::Refused(&["network namespace /proc/999999999/ns/net", "no such file"]),
        )
        .spec(spec(|s| {
            let namespaces = s["linux"]["namespaces"]
                .as_array_mut()
                .expect("ctr's spec lists namespaces");
            namespaces.retain(|ns| ns["type"] != "network");
            namespaces.push(json!({"type": "network", "path": "/proc/999999999/ns/net"}))
        })?),
        BadInput::new(
            "spec: namespace path that is not a namespace",
            &hello,
            Expect::Refused(&["/etc/hostname", "not a network namespace"]),
        )
        .spec(spec(|s| {
            let namespaces = s["linux"]["namespaces"]
                .as_array_mut()
                .expect("ctr's spec lists namespaces");
            namespaces.retain(|ns| ns["type"] != "network");
            namespaces.push(json!({"type": "network", "path": "/etc/hostname"}))
        })?),
        BadInput::new(
            "spec: oom_score_adj out of range",
            &hello,
            Expect::Refused(&["oomScoreAdj 5000 is outside"]),
        )
        .spec(spec(|s| s["process"]["oomScoreAdj"] = json!(5000))?),
        BadInput::new(
            "spec: memory limit below what a module needs",
            &hello,
            Expect::Refused(&["ran out of memory while its module was loaded", "65536 bytes"]),
        )
        .options(&["--memory-limit", "65536"]),
        BadInput::new(
            "spec: negative memory limit",
            &hello,
            Expect::Refused(&["memory.limit -5 is negative"]),
        )
        .spec(spec(|s| s["linux"]["resources"]["memory"] = json!({"limit": -5}))?),
        BadInput::new(
            "spec: cpu quota without period",
            &hello,
            Expect::Refused(&["cpu.cfs_period_us", "invalid argument"]),
        )
        .spec(spec(|s| s["linux"]["resources"]["cpu"] = json!({"quota": 1000, "period": 0}))?),
        BadInput::new(
            "spec: relative cgroups path escaping its parent",
            &hello,
            Expect::Refused(&["invalid linux.cgroupsPath \"/../../escape\""]),
        )
        .spec(spec(|s| s["linux"]["cgroupsPath"] = json!("/../../escape"))?),
        BadInput::new(
            "spec: device rule of an unknown type",
            &hello,
            Expect::Refused(&["unknown variant `z`"]),
        )
        .spec(spec(|s| {
            s["linux"]["resources"]["devices"] =
                json!([{"allow": true, "type": "z", "major": 1, "minor": 3, "access": "rwm"}])
        })?),
        BadInput::new(
            "spec: seccomp with an unknown action",
            &hello,
            Expect::Refused(&["unknown variant `SCMP_ACT_EXPLODE`"]),
        )
        .spec(spec(|s| {
            s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_EXPLODE", "syscalls": []})
        })?),
        BadInput::new(
            "spec: apparmor profile the node does not have",
            &hello,
            Expect::Refused(&["apparmorProfile", "wedge-no-such-profile"]),
        )
        .spec(spec(|s| s["process"]["apparmorProfile"] = json!("wedge-no-such-profile"))?),
        BadInput::new(
            "spec: a terminal for a wasm container",
            &hello,
            Expect::Refused(&["terminal (tty) is not supported for wasm containers"]),
        )
        .spec(spec(|s| s["process"]["terminal"] = json!(true))?),
        BadInput::new(
            "spec: entrypoint outside the root",
            &hello,
            Expect::Refused(&["../../../usr/bin/true", "no such file"]),
        )
        .spec(spec(|s| s["process"]["args"] = json!(["../../../usr/bin/true"]))?),
    ];
    // ctr 2.x reads id mappings itself (and fails on a runtime that is not runc's) before
    // the shim sees the spec.
    if Release::under_test() < Release::V2_1 {
        cases.push(
            BadInput::new(
                "spec: uid map without a user namespace",
                &hello,
                Expect::Refused(&["uidMappings", "no user namespace"]),
            )
            .spec(spec(|s| {
                s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 1}])
            })?),
        );
    }
    report(corpus.run(cases)?)?;
    corpus.case.containerd.assert_clean()
}

/// `wedge.dev/*` annotations, as a pod's author writes them.
#[test]
fn bad_annotations_are_refused_by_name() -> Result<()> {
    let corpus = Corpus::new()?;
    let hello = corpus.hello()?;
    let annotated = |name, annotation: &'static str, needles: &'static [&'static str]| {
        BadInput::new(name, &hello, Expect::Refused(needles)).options(&["--annotation", annotation])
    };
    let cases = vec![
        annotated(
            "annotation: unknown wedge.dev key",
            "wedge.dev/turbo=on",
            &["wedge.dev/turbo"],
        ),
        annotated(
            "annotation: timeout that is not a duration",
            "wedge.dev/timeout=forever",
            &["wedge.dev/timeout", "forever"],
        ),
        annotated(
            "annotation: negative timeout",
            "wedge.dev/timeout=-5s",
            &["wedge.dev/timeout"],
        ),
        annotated(
            "annotation: max-memory that is not a quantity",
            "wedge.dev/max-memory=lots",
            &["wedge.dev/max-memory", "lots"],
        ),
        annotated(
            "annotation: max-memory overflowing",
            "wedge.dev/max-memory=99999999999999999999Ei",
            &["wedge.dev/max-memory"],
        ),
        annotated(
            "annotation: http-port out of range",
            "wedge.dev/http-port=99999",
            &["wedge.dev/http-port", "99999"],
        ),
        annotated(
            "annotation: zero http concurrency",
            "wedge.dev/http-max-concurrency=0",
            &["wedge.dev/http-max-concurrency"],
        ),
        annotated(
            "annotation: unknown wasm feature",
            "wedge.dev/features=teleportation",
            &["teleportation"],
        ),
        annotated(
            "annotation: a feature the operator did not allow",
            "wedge.dev/features=threads",
            &["threads"],
        ),
        annotated(
            "annotation: fuel the operator did not allow",
            "wedge.dev/fuel=1000",
            &["wedge.dev/fuel"],
        ),
    ];
    report(corpus.run(cases)?)?;
    corpus.case.containerd.assert_clean()
}

/// Modules and components: truncated, empty, wrong world, missing imports, traps.
#[test]
fn bad_modules_are_refused_by_name() -> Result<()> {
    let corpus = Corpus::new()?;
    let images = std::cell::Cell::new(0);
    let module = |name, bytes: Vec<u8>, expect| -> Result<BadInput> {
        images.set(images.get() + 1);
        let image = corpus.image(&format!("module-{}", images.get()), &bytes)?;
        Ok(BadInput::new(name, &image, expect))
    };
    let hello = programs::wat(programs::HELLO_WAT)?;
    let mut cases = vec![
        module(
            "module: truncated in its code section",
            programs::corrupt_module()?,
            Expect::Refused(&["invalid wasm module", "unexpected end-of-file"]),
        )?,
        module(
            "module: only the magic number",
            b"\0asm".to_vec(),
            Expect::Refused(&["not a WebAssembly binary (bad magic or version)"]),
        )?,
        module(
            "module: a future binary version",
            [&b"\0asm\x02\0\0\0"[..], &hello[8..]].concat(),
            Expect::Refused(&["not a WebAssembly binary (bad magic or version)"]),
        )?,
        module(
            "module: imports what no host provides",
            programs::wat(programs::UNKNOWN_IMPORT_WAT)?,
            Expect::Refused(&["unknown import: `env::launch_missiles`"]),
        )?,
        module(
            "module: no _start",
            programs::wat(r#"(module (memory (export "memory") 1) (func (export "main")))"#)?,
            Expect::Refused(&["no _start function", "it exports: memory, main"]),
        )?,
        module(
            "module: start function that traps",
            programs::wat(
                r#"(module (func $boom unreachable) (start $boom) (func (export "_start")))"#,
            )?,
            Expect::Exits(134, &["wasm `unreachable` instruction executed"]),
        )?,
        module(
            "module: a memory larger than the limit allows at start",
            programs::wat(r#"(module (memory (export "memory") 65536) (func (export "_start")))"#)?,
            Expect::Exits(
                1,
                &["memory minimum size of 65536 pages exceeds memory limits"],
            ),
        )?
        .options(&["--memory-limit", "67108864"]),
        module(
            "module: a memory wasm32 cannot address",
            programs::wat(r#"(module (memory (export "memory") 65537) (func (export "_start")))"#)
                .unwrap_or_else(|_| b"\0asm\x01\0\0\0\x05\x05\x01\x00\x81\x80\x04".to_vec()),
            Expect::Refused(&["memory size must be at most 0x10000 65536-byte pages"]),
        )?,
        module(
            "component: exports neither run nor an HTTP handler",
            programs::wat(programs::NOT_A_COMMAND_COMPONENT_WAT)?,
            Expect::Refused(&[
                "neither a wasi:cli/run export (0.2.x or 0.3.x)",
                "it exports: say-hello",
            ]),
        )?,
        module(
            "component: a component cut in half",
            {
                let mut component = programs::componentize(&hello)?;
                component.truncate(component.len() / 2);
                component
            },
            Expect::Refused(&["invalid wasm component", "out of bounds"]),
        )?,
    ];
    let in_rootfs = |name, file: &'static [u8], expect| -> Result<BadInput> {
        images.set(images.get() + 1);
        let (archive, reference) = images::image_with_special_files(
            corpus.case.work.path(),
            &format!("module-{}", images.get()),
            &[("/app.wasm", file)],
            &[],
            &["/app.wasm"],
        )?;
        corpus.case.containerd.import(&archive)?;
        Ok(BadInput::new(name, &reference, expect))
    };
    cases.push(in_rootfs(
        "module: an empty file at the entrypoint",
        b"",
        Expect::Refused(&["exec /app.wasm: exec format error"]),
    )?);
    cases.push(in_rootfs(
        "module: a text file named .wasm",
        b"just words, not wasm\n",
        Expect::Refused(&["exec /app.wasm: exec format error"]),
    )?);
    report(corpus.run(cases)?)?;
    corpus.case.containerd.assert_clean()
}

/// Images: layer layouts, media types, entrypoints that are not programs.
#[test]
fn bad_images_are_refused_by_name() -> Result<()> {
    let corpus = Corpus::new()?;
    let work = corpus.case.work.path();
    let import = |(archive, reference): (PathBuf, String)| -> Result<String> {
        corpus.case.containerd.import(&archive)?;
        Ok(reference)
    };
    let text_entrypoint = import(images::image_with_special_files(
        work,
        "text-entrypoint",
        &[("/app/run", b"just some words\n")],
        &[],
        &["/app/run"],
    )?)?;
    let directory_entrypoint = import(images::image_with_special_files(
        work,
        "directory-entrypoint",
        &[],
        &[SpecialFile::Directory("/app")],
        &["/app"],
    )?)?;
    let fifo_entrypoint = import(images::image_with_special_files(
        work,
        "fifo-entrypoint",
        &[],
        &[SpecialFile::Fifo("/app.wasm")],
        &["/app.wasm"],
    )?)?;
    let missing_entrypoint = import(images::image_with_special_files(
        work,
        "missing-entrypoint",
        &[("/other", b"x")],
        &[],
        &["/app.wasm"],
    )?)?;
    let cases = vec![
        BadInput::new(
            "image: entrypoint is a text file",
            &text_entrypoint,
            Expect::Refused(&["exec /app/run: exec format error"]),
        ),
        BadInput::new(
            "image: entrypoint is a directory",
            &directory_entrypoint,
            Expect::Refused(&["entrypoint /app is a directory, not a regular file"]),
        ),
        BadInput::new(
            "image: entrypoint is a fifo",
            &fifo_entrypoint,
            Expect::Refused(&["entrypoint /app.wasm is a FIFO"]),
        ),
        BadInput::new(
            "image: entrypoint missing, no wasm layer",
            &missing_entrypoint,
            Expect::Refused(&["stat /app.wasm: no such file or directory"]),
        ),
    ];
    report(corpus.run(cases)?)?;
    corpus.case.containerd.assert_clean()
}

/// Mounts a wasm container would get as preopens, and the engine config.
#[test]
fn bad_mounts_and_engine_configs_are_refused_by_name() -> Result<()> {
    let corpus = Corpus::new()?;
    let hello = corpus.hello()?;
    let (archive, busybox) = images::native_image(
        corpus.case.work.path(),
        "busybox",
        Path::new(wedge_e2e::cri::BUSYBOX),
        "/bin/busybox",
        &["/bin/busybox", "true"],
    )?;
    corpus.case.containerd.import(&archive)?;
    let outside = corpus.path("outside");
    std::fs::create_dir_all(&outside)?;
    let fifo = corpus.path("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU)?;
    let device = "/dev/null";
    let mount = |name, source: &Path, destination: &str, needles: &'static [&'static str]| {
        BadInput::new(name, &hello, Expect::Refused(needles)).options(&[
            "--mount",
            &format!(
                "type=bind,src={},dst={destination},options=rbind:ro",
                source.display()
            ),
        ])
    };
    let cases = vec![
        mount(
            "mount: source that does not exist",
            &corpus.path("absent"),
            "/data",
            &["absent", "no such file"],
        ),
        mount(
            "mount: relative destination",
            &outside,
            "data",
            &["\"data\"", "not an absolute path"],
        ),
        mount(
            "mount: destination climbing out of the root",
            &outside,
            "/../../../escape",
            &["escape", "climbs out"],
        ),
        mount(
            "mount: a device as a preopen",
            Path::new(device),
            "/dev-null",
            &["/dev/null", "neither a directory nor a regular file"],
        ),
        mount(
            "mount: source a fifo",
            &fifo,
            "/fifo",
            &["fifo", "neither a directory nor a regular file"],
        ),
        BadInput::new(
            "engine config: not TOML",
            &hello,
            Expect::Refused(&["toml"]),
        )
        .engine_config("this is [not toml"),
        BadInput::new(
            "engine config: unknown key",
            &hello,
            Expect::Refused(&["turbo"]),
        )
        .engine_config("turbo = true\n"),
        BadInput::new(
            "engine config: cache size that is not a size",
            &hello,
            Expect::Refused(&["max_size_mb", "invalid type"]),
        )
        .engine_config("[cache]\nmax_size_mb = \"huge\"\n"),
        BadInput::new(
            "engine config: network rule that is not a CIDR",
            &hello,
            Expect::Refused(&["not-a-cidr"]),
        )
        .engine_config("[network]\nallow = [\"not-a-cidr\"]\n"),
        BadInput::new(
            "engine config: zero header timeout",
            &hello,
            Expect::Refused(&["header_timeout"]),
        )
        .engine_config("[http]\nheader_timeout = \"0s\"\n"),
        BadInput::new(
            "engine config: log level that does not exist",
            &hello,
            Expect::Refused(&["log_level"]),
        )
        .engine_config("log_level = \"chatty\"\n"),
        // Paths the runtime trusts as root, in places others can write.
        BadInput::new(
            "engine config: cache in a temp directory",
            &hello,
            Expect::Refused(&[
                "cache.dir /tmp/wedge-planted-cache",
                "/tmp is writable by others",
            ]),
        )
        .engine_config("[cache]\ndir = \"/tmp/wedge-planted-cache\"\n"),
        BadInput::new(
            "engine config: cache in a pod's volume",
            &hello,
            Expect::Refused(&[
                "cache.dir",
                "/var/lib/kubelet",
                "kubelet's pods and volumes",
            ]),
        )
        .engine_config(
            "[cache]\ndir = \"/var/lib/kubelet/pods/p/volumes/kubernetes.io~empty-dir/c\"\n",
        ),
        BadInput::new(
            "engine config: runc in a temp directory",
            &busybox,
            Expect::Refused(&["runc.path /tmp/runc-planted", "/tmp is writable by others"]),
        )
        .engine_config("[runc]\npath = \"/tmp/runc-planted\"\n"),
    ];
    report(corpus.run(cases)?)?;
    corpus.case.containerd.assert_clean()
}
