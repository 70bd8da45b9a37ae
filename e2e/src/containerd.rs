//! A private containerd for one test: its own root, state, sockets and config under a temp
//! dir, the freshly built shim first on its PATH. It never touches a system containerd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::binaries;

/// File name of the harness's engine config in the temp dir.
pub const ENGINE_CONFIG: &str = "wedge.toml";

/// Directory in the temp dir that a containerd started with [`Containerd::start_cri_with`]
/// searches first for shims: where the test's `prepare` installs them.
pub const PREPARED_BIN: &str = "bin";

/// The tests' operator: pods may turn on multi-memory, and may not meter fuel (so that a
/// forbidden annotation can be tried); guests may not reach TEST-NET-1.
const ENGINE_OPTIONS: &str = r#"allowed_annotations = ["features", "timeout", "max-memory", "http-port", "http-max-concurrency", "http-request-timeout"]
[wasm]
allowed_features = ["multi-memory"]
[http]
header_timeout = "2s"
max_connections = 24
[network]
deny = ["192.0.2.0/24"]
"#;

/// containerd's runtime type for the Wedge shim.
pub const WEDGE_RUNTIME: &str = "io.containerd.wedge.v1";

/// Where `scripts/install-deps.sh` unpacks containerd 1.7 and 2.1 beside the system's 1.6.
pub const CONTAINERD_1_7_DIR: &str = "/opt/wedge-test/containerd-1.7/usr/bin";
pub const CONTAINERD_2_1_DIR: &str = "/opt/wedge-test/containerd-2.1/usr/bin";

/// Names the release most tests run on: `1.6` (the default), `1.7` or `2.1`.
pub const RELEASE_ENV: &str = "WEDGE_E2E_CONTAINERD";

/// Which containerd to run, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Release {
    /// The one on PATH (Debian bookworm: 1.6.20).
    V1_6,
    /// 1.7 from [`CONTAINERD_1_7_DIR`] (or `$WEDGE_CONTAINERD_1_7_DIR`): images whose layers
    /// are wasm need containerd >= 1.7.7.
    V1_7,
    /// 2.1 from [`CONTAINERD_2_1_DIR`] (or `$WEDGE_CONTAINERD_2_1_DIR`): config version 3,
    /// CRI `RuntimeConfig`, the task API v3.
    V2_1,
}

impl Release {
    pub const ALL: [Release; 3] = [Release::V1_6, Release::V1_7, Release::V2_1];

    /// The release named by [`RELEASE_ENV`], else 1.6. A name that is not a release stops
    /// the test rather than silently testing another one.
    pub fn under_test() -> Release {
        match std::env::var(RELEASE_ENV) {
            Err(_) => Release::V1_6,
            Ok(name) => Release::parse(&name)
                .unwrap_or_else(|| panic!("{RELEASE_ENV}={name}: expected 1.6, 1.7 or 2.1")),
        }
    }

    pub fn parse(name: &str) -> Option<Release> {
        Release::ALL
            .into_iter()
            .find(|release| release.name() == name.trim())
    }

    pub fn name(self) -> &'static str {
        match self {
            Release::V1_6 => "1.6",
            Release::V1_7 => "1.7",
            Release::V2_1 => "2.1",
        }
    }

    /// This release, or `oldest` when this one is older (a test that needs a feature).
    pub fn at_least(self, oldest: Release) -> Release {
        self.max(oldest)
    }

    pub fn bin_dir(self) -> Option<PathBuf> {
        let private = |variable: &str, default: &str| {
            Some(
                std::env::var_os(variable)
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(default)),
            )
        };
        match self {
            Release::V1_6 => None,
            Release::V1_7 => private("WEDGE_CONTAINERD_1_7_DIR", CONTAINERD_1_7_DIR),
            Release::V2_1 => private("WEDGE_CONTAINERD_2_1_DIR", CONTAINERD_2_1_DIR),
        }
    }

    /// The release's `containerd` binary.
    pub fn containerd(self) -> PathBuf {
        self.binary("containerd")
    }

    pub fn binary(self, name: &str) -> PathBuf {
        match self.bin_dir() {
            Some(bin) => bin.join(name),
            None => PathBuf::from(name),
        }
    }
}

/// A test's own step between writing containerd's files and starting it: gets containerd's
/// `config.toml` and the test's temp dir.
type Prepare<'a> = Box<dyn FnOnce(&Path, &Path) -> Result<()> + 'a>;

/// Who runs the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Supervisor {
    /// The harness, as its child.
    Harness,
    /// An init script under a stand-in init ([`crate::stand_in_init`]); the harness's child
    /// is the namespace's `unshare`.
    StandInInit,
}

pub struct Containerd {
    dir: tempfile::TempDir,
    /// The compiled-module cache: native code the runtime maps as root, so the engine
    /// config must name a root-only place for it, never one under /tmp.
    cache: tempfile::TempDir,
    daemon: Option<Child>,
    supervisor: Supervisor,
    release: Release,
    cri: Option<CriSetup>,
    /// The `PATH` containerd runs with: where it finds the shims.
    search_path: String,
}

/// Where the tests' compiled-module caches live: root-owned and root-only all the way down,
/// as the runtime requires of `cache.dir`.
const CACHE_PARENT: &str = "/var/lib/wedge-e2e";

/// A fresh directory for a compiled-module cache, gone when dropped.
pub fn private_cache_dir() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(CACHE_PARENT)?;
    Ok(tempfile::Builder::new()
        .prefix("cache-")
        .tempdir_in(CACHE_PARENT)?)
}

/// What a containerd with its CRI plugin on needs beyond the plain one: a CNI network of
/// its own (bridge, subnet and IPAM state unique to the test) and a cgroup parent for pods.
pub struct CriSetup {
    pub bridge: String,
    pub subnet: String,
    /// cgroupfs path (from a hierarchy's root) that the test's pods go under.
    pub cgroup_parent: String,
    /// The image of every pod's sandbox (pause) container.
    pub sandbox_image: String,
    /// containerd's registry `config_path` (a `hosts.toml` per registry host), when image
    /// pulls go to a registry of the test's.
    pub registry_hosts: Option<PathBuf>,
    /// Environment of the daemon, which its shims inherit.
    pub daemon_env: Vec<(String, String)>,
}

/// What a CRI containerd needs from the caller beyond the defaults: where images come
/// from, and what its environment (its shims') holds.
#[derive(Debug, Clone, Default)]
pub struct CriOptions {
    /// Default [`PAUSE_IMAGE`], which the caller imports.
    pub sandbox_image: Option<String>,
    pub registry_hosts: Option<PathBuf>,
    pub daemon_env: Vec<(String, String)>,
}

impl CriSetup {
    fn new(dir: &Path, options: CriOptions) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 250;
        let pid = std::process::id();
        let name = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        CriSetup {
            bridge: format!("wdg{}x{n}", pid % 100_000),
            subnet: format!("10.{}.{n}.0/24", 100 + pid % 100),
            cgroup_parent: format!("/{name}"),
            sandbox_image: options
                .sandbox_image
                .unwrap_or_else(|| PAUSE_IMAGE.to_string()),
            registry_hosts: options.registry_hosts,
            daemon_env: options.daemon_env,
        }
    }

    fn cni_config(&self, dir: &Path) -> String {
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": self.bridge,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": dir.join("cni-ipam"),
                },
            }, {
                // hostPort mappings, as kubelet's pods (and critest) ask for them.
                "type": "portmap",
                "capabilities": { "portMappings": true },
            }],
        })
        .to_string()
    }
}

impl Containerd {
    /// Starts the containerd under test ([`Release::under_test`]) and waits until it answers.
    pub fn start() -> Result<Self> {
        Self::start_release(Release::under_test())
    }

    /// Starts the given containerd release and waits until it answers.
    pub fn start_release(release: Release) -> Result<Self> {
        Self::launch(release, None, None, Supervisor::Harness)
    }

    /// Starts containerd with its CRI plugin on: runtime handler `wedge` (this shim) and
    /// `runc` (the reference), a sandbox image to be imported by the caller, CNI from
    /// Debian's plugins, netns mounts and runc state under the temp dir.
    pub fn start_cri(release: Release) -> Result<Self> {
        Self::launch(
            release,
            Some(CriOptions::default()),
            None,
            Supervisor::Harness,
        )
    }

    /// [`Self::start_cri`] with the sandbox image and registry of `options`.
    pub fn start_cri_options(release: Release, options: CriOptions) -> Result<Self> {
        Self::launch(release, Some(options), None, Supervisor::Harness)
    }

    /// [`Self::start_cri`] with `prepare` run after containerd's config and the engine
    /// config are written and before containerd starts; it gets the config's path and the
    /// temp dir. The config then lacks the `wedge` runtime: registering it is up to
    /// `prepare` (the installer under test). containerd looks for shims in the temp dir's
    /// [`PREPARED_BIN`] first.
    pub fn start_cri_with(
        release: Release,
        prepare: impl FnOnce(&Path, &Path) -> Result<()>,
    ) -> Result<Self> {
        Self::launch(
            release,
            Some(CriOptions::default()),
            Some(Box::new(prepare)),
            Supervisor::Harness,
        )
    }

    /// [`Self::start_cri_with`], with containerd a service of a stand-in init in a PID and
    /// mount namespace of its own, started and restarted through `/etc/init.d/containerd`
    /// there (see [`crate::stand_in_init`]): a node whose containerd the installer must
    /// restart without systemd.
    pub fn start_cri_under_stand_in_init(
        release: Release,
        prepare: impl FnOnce(&Path, &Path) -> Result<()>,
    ) -> Result<Self> {
        Self::launch(
            release,
            Some(CriOptions::default()),
            Some(Box::new(prepare)),
            Supervisor::StandInInit,
        )
    }

    /// The stand-in init's PID 1, as the machine sees it (see
    /// [`Self::start_cri_under_stand_in_init`]).
    pub fn stand_in_pid1(&self) -> Result<i32> {
        match (&self.daemon, self.supervisor) {
            (Some(unshare), Supervisor::StandInInit) => crate::stand_in_init::pid1(unshare),
            _ => bail!("this containerd runs without a stand-in init"),
        }
    }

    fn launch(
        release: Release,
        cri: Option<CriOptions>,
        prepare: Option<Prepare<'_>>,
        supervisor: Supervisor,
    ) -> Result<Self> {
        ensure!(
            nix::unistd::geteuid().is_root(),
            "the end-to-end tests start containerd and must run as root"
        );
        // Short prefix: shim socket paths must stay under the unix socket length limit.
        let dir = tempfile::Builder::new()
            .prefix("wedge-e2e-")
            .tempdir_in("/tmp")?;
        let bin_dir = release.bin_dir();
        if let Some(bin) = &bin_dir {
            ensure!(
                bin.join("containerd").exists(),
                "{} is missing: run scripts/install-deps.sh",
                bin.join("containerd").display()
            );
        }
        let cri = cri.map(|options| CriSetup::new(dir.path(), options));
        let config = dir.path().join("config.toml");
        let prepared = prepare.is_some();
        std::fs::write(
            &config,
            private_config(&release.containerd(), dir.path(), cri.as_ref(), !prepared)?,
        )?;
        let cache = private_cache_dir()?;
        std::fs::write(
            dir.path().join(ENGINE_CONFIG),
            format!(
                "{ENGINE_OPTIONS}[cache]\ndir = \"{}\"\n[runc]\nroot = \"{}\"\n",
                cache.path().join("cache").display(),
                dir.path().join("runc").display()
            ),
        )?;
        if let Some(prepare) = prepare {
            prepare(&config, dir.path()).context("the test's preparation of containerd failed")?;
        }
        // The shim under test first; then this release's own shims (runc). A prepared
        // containerd looks in the temp dir's `bin` before that: whatever `prepare` installs
        // there (the installer's shim) is what runs, not the build's copy.
        let mut path = String::new();
        if prepared {
            path.push_str(&format!("{}:", dir.path().join(PREPARED_BIN).display()));
        }
        path.push_str(&format!("{}:", binaries::dir()?.display()));
        if let Some(bin) = &bin_dir {
            path.push_str(&format!("{}:", bin.display()));
        }
        path.push_str(
            &std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        );
        let mut containerd = Containerd {
            dir,
            cache,
            daemon: None,
            supervisor,
            release,
            cri,
            search_path: path,
        };
        containerd.start_daemon()?;
        Ok(containerd)
    }

    /// Starts the daemon on the config in the temp dir (at first, or again after
    /// [`Self::stop_daemon`]) and waits until it answers; its log goes on in `containerd.log`.
    pub fn start_daemon(&mut self) -> Result<()> {
        if self.supervisor == Supervisor::StandInInit {
            let unshare = crate::stand_in_init::start(
                self.dir.path(),
                &self.release.containerd(),
                &self.dir.path().join("config.toml"),
                &self.search_path,
                &self.dir.path().join("containerd.log"),
            )?;
            self.daemon = Some(unshare);
            return self.wait_ready(Duration::from_secs(20));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("containerd.log"))?;
        let daemon_env = self
            .cri
            .as_ref()
            .map(|cri| cri.daemon_env.clone())
            .unwrap_or_default();
        let daemon = Command::new(self.release.containerd())
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .envs(daemon_env)
            .env("PATH", &self.search_path)
            // As under systemd, where containerd is a Type=notify unit: its shims inherit
            // NOTIFY_SOCKET (here a path nothing listens on).
            .env("NOTIFY_SOCKET", self.dir.path().join("systemd-notify"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start containerd (apt-get install containerd runc)")?;
        self.daemon = Some(daemon);
        self.wait_ready(Duration::from_secs(20))
    }

    /// Stops the daemon and starts it again on its (perhaps changed) config, as a node's
    /// service manager restarts containerd.
    pub fn restart_daemon(&mut self) -> Result<()> {
        self.stop_daemon();
        self.start_daemon()
    }

    /// The containerd daemon's pid, while it runs.
    pub fn daemon_pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|daemon| daemon.id() as i32)
    }

    /// The CRI plugin's network and cgroup setup, when started with [`Self::start_cri`].
    pub fn cri(&self) -> Option<&CriSetup> {
        self.cri.as_ref()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn release(&self) -> Release {
        self.release
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .ctr(&["version"])
                .map(|out| out.status.success())
                .unwrap_or(false)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("containerd did not come up; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The engine config every Wedge container of this containerd gets: its compiled-module
    /// cache lives under the temp dir, not on the host.
    pub fn engine_config(&self) -> PathBuf {
        self.dir.path().join(ENGINE_CONFIG)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache.path().join("cache")
    }

    /// A `ctr` command aimed at this containerd. A `run` on the Wedge runtime gets
    /// `--runtime-config-path` with [`Self::engine_config`].
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_with(&[], args)
    }

    /// [`Self::ctr_command`] with ctr's own options (such as `--timeout`) before `args`.
    pub fn ctr_command_with(&self, options: &[&str], args: &[&str]) -> Command {
        let mut command = Command::new(self.release.binary("ctr"));
        command.arg("--address").arg(self.socket()).args(options);
        if !args.contains(&"--namespace") {
            // A namespace per test: cgroups (/<namespace>/<id>) never collide between tests.
            command.arg("--namespace").arg(self.namespace());
        }
        match args {
            ["run", rest @ ..] if rest.contains(&WEDGE_RUNTIME) => {
                command
                    .arg("run")
                    .arg("--runtime-config-path")
                    .arg(self.engine_config())
                    .args(rest);
            }
            _ => {
                command.args(args);
            }
        }
        command
    }

    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.ctr_command(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run ctr")
    }

    /// Runs `ctr`, failing with its stderr if it fails.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<Output> {
        let out = self.ctr(args)?;
        ensure!(
            out.status.success(),
            "ctr {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    pub fn import(&self, archive: &Path) -> Result<()> {
        let archive = archive.to_str().context("archive path is not UTF-8")?;
        self.ctr_ok(&["images", "import", "--all-platforms", archive])?;
        Ok(())
    }

    /// Imports an archive into namespace `k8s.io`, where the CRI plugin finds images.
    pub fn import_for_cri(&self, archive: &Path) -> Result<()> {
        let archive = archive.to_str().context("archive path is not UTF-8")?;
        self.ctr_ok(&[
            "--namespace",
            "k8s.io",
            "images",
            "import",
            "--all-platforms",
            archive,
        ])?;
        Ok(())
    }

    /// `ctr run --rm` on the Wedge runtime, waiting for the container to end.
    pub fn run_wasm(&self, image: &str, id: &str, args: &[&str]) -> Result<Output> {
        let mut all = vec!["run", "--rm", "--runtime", WEDGE_RUNTIME, image, id];
        all.extend_from_slice(args);
        self.ctr(&all)
    }

    /// Processes that belong to this containerd's containers: shims (their command line names
    /// our socket) and runners (theirs names the bundle under our state dir).
    pub fn container_processes(&self) -> Vec<(i32, String)> {
        let marker = self.dir.path().to_string_lossy().into_owned();
        let own = self.daemon.as_ref().map(|child| child.id() as i32);
        processes_mentioning(&marker)
            .into_iter()
            .filter(|(pid, _)| Some(*pid) != own)
            .collect()
    }

    pub fn mounts(&self) -> Vec<String> {
        let marker = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(&marker))
            .map(str::to_string)
            .collect()
    }

    /// Bundles containerd still holds for tasks (it removes each after the task's delete).
    pub fn bundles(&self) -> Vec<PathBuf> {
        let tasks = self.dir.path().join("state/io.containerd.runtime.v2.task");
        let mut found = Vec::new();
        for namespace in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            for bundle in std::fs::read_dir(namespace.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                found.push(bundle.path());
            }
        }
        found
    }

    /// runc state directories of native containers still present (Wedge's and, in CRI
    /// tests, those of the `runc` reference handler).
    pub fn runc_containers(&self) -> Vec<PathBuf> {
        let roots = [
            self.dir.path().join("runc"),
            self.dir.path().join("runc-reference"),
        ];
        let mut found = Vec::new();
        for namespace in roots.iter().flat_map(std::fs::read_dir).flatten().flatten() {
            found.extend(
                std::fs::read_dir(namespace.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|entry| entry.path()),
            );
        }
        found
    }

    /// The containerd namespace `ctr` commands use: the temp dir's unique name.
    pub fn namespace(&self) -> String {
        self.dir
            .path()
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "default".into())
    }

    /// Where this test's containers get their cgroups: the pod parent under CRI, else the
    /// namespace's directory (containerd's default `/<namespace>/<id>`).
    fn cgroup_parent(&self) -> String {
        match &self.cri {
            Some(cri) => cri.cgroup_parent.clone(),
            None => format!("/{}", self.namespace()),
        }
    }

    /// cgroups still present below the test's cgroup parent, in any hierarchy.
    pub fn leftover_cgroups(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for parent in cgroup_dirs(&self.cgroup_parent()) {
            let mut pending: Vec<PathBuf> = child_dirs(&parent);
            while let Some(dir) = pending.pop() {
                pending.extend(child_dirs(&dir));
                found.push(dir);
            }
        }
        found
    }

    /// Fails unless every container is gone without a trace: no shim, runner or container
    /// process, no mount (rootfs or netns), no bundle, no runc state, no cgroup. Shims exit
    /// shortly after their last Delete, so this waits a little.
    pub fn assert_clean(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let processes = self.container_processes();
            let mounts = self.mounts();
            let bundles = self.bundles();
            let runc = self.runc_containers();
            let cgroups = self.leftover_cgroups();
            if processes.is_empty()
                && mounts.is_empty()
                && bundles.is_empty()
                && runc.is_empty()
                && cgroups.is_empty()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "left behind:\n processes: {processes:?}\n mounts: {mounts:?}\n bundles: \
                     {bundles:?}\n runc state: {runc:?}\n cgroups: {cgroups:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the containerd daemon (SIGTERM, SIGKILL after 10 s) and nothing else: shims and
    /// containers it leaves are still there for [`Self::assert_clean`] to find.
    pub fn stop_daemon(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            let pid = nix::unistd::Pid::from_raw(daemon.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = daemon.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }

    fn stop(&mut self) {
        self.stop_daemon();
        // Whatever a failed test left: kill it (shims and runners by command line,
        // container processes by cgroup) and unmount, so the temp dir can go.
        let mut leftovers: Vec<i32> = self
            .container_processes()
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        for cgroup in self.leftover_cgroups() {
            leftovers.extend(
                std::fs::read_to_string(cgroup.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|line| line.trim().parse::<i32>().ok()),
            );
        }
        for pid in &leftovers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if !leftovers.is_empty() {
            // Killed processes leave their cgroups once reaped.
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut mounts: Vec<String> = self
            .mounts()
            .iter()
            .filter_map(|line| line.split(' ').nth(4).map(str::to_string))
            .collect();
        mounts.sort_by_key(|mount| std::cmp::Reverse(mount.len()));
        for mount in mounts {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let mut cgroups = self.leftover_cgroups();
        cgroups.extend(cgroup_dirs(&self.cgroup_parent()));
        cgroups.sort_by_key(|dir| std::cmp::Reverse(dir.as_os_str().len()));
        for dir in cgroups {
            let _ = std::fs::remove_dir(dir);
        }
        if let Some(cri) = &self.cri {
            let _ = Command::new("ip")
                .args(["link", "delete", &cri.bridge])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sandbox (pause) image CRI tests import before their first pod.
pub const PAUSE_IMAGE: &str = "wedge.test/pause:latest";

/// `containerd config default` with every path moved under `dir`; the CRI plugin off (tests
/// talk to containerd directly) unless `cri` says how to set it up, with the `wedge` runtime
/// when `register_wedge`.
fn private_config(
    containerd: &Path,
    dir: &Path,
    cri: Option<&CriSetup>,
    register_wedge: bool,
) -> Result<String> {
    let out = Command::new(containerd)
        .args(["config", "default"])
        .output()
        .context("cannot run `containerd config default`")?;
    ensure!(out.status.success(), "containerd config default failed");
    let mut config: toml_edit::DocumentMut = String::from_utf8(out.stdout)?.parse()?;
    let layout = CriLayout::of(&config);
    let path = |name: &str| dir.join(name).display().to_string();
    config["root"] = toml_edit::value(path("root"));
    config["state"] = toml_edit::value(path("state"));
    config["grpc"]["address"] = toml_edit::value(path("containerd.sock"));
    config["ttrpc"]["address"] = toml_edit::value(path("containerd.sock.ttrpc"));
    config["debug"]["address"] = toml_edit::value(path("debug.sock"));
    config["debug"]["level"] = toml_edit::value("debug");
    let mut disabled = toml_edit::Array::new();
    match cri {
        Some(cri) => configure_cri(&mut config, &layout, dir, cri, register_wedge)?,
        None => {
            for plugin in layout.plugins() {
                disabled.push(plugin);
            }
        }
    }
    config["disabled_plugins"] = toml_edit::value(disabled);
    let plugins = config["plugins"]
        .as_table_like_mut()
        .context("containerd's default config has no plugins")?;
    if let Some(opt) = plugins.get_mut("io.containerd.internal.v1.opt") {
        opt["path"] = toml_edit::value(path("opt"));
    }
    // containerd 2 turns NRI on with a socket at a fixed host path, which tests running
    // side by side would fight over.
    if let Some(nri) = plugins.get_mut("io.containerd.nri.v1.nri") {
        nri["disable"] = toml_edit::value(true);
    }
    Ok(config.to_string())
}

/// Where a config version keeps the CRI settings: version 2 (containerd 1.x) has one plugin,
/// version 3 (containerd 2.x) splits it into the runtime, images and gRPC server plugins.
struct CriLayout {
    runtime: &'static str,
    images: &'static str,
    server: &'static str,
}

impl CriLayout {
    fn of(config: &toml_edit::DocumentMut) -> Self {
        if config.get("version").and_then(toml_edit::Item::as_integer) == Some(3) {
            CriLayout {
                runtime: "io.containerd.cri.v1.runtime",
                images: "io.containerd.cri.v1.images",
                server: "io.containerd.grpc.v1.cri",
            }
        } else {
            CriLayout {
                runtime: "io.containerd.grpc.v1.cri",
                images: "io.containerd.grpc.v1.cri",
                server: "io.containerd.grpc.v1.cri",
            }
        }
    }

    fn plugins(&self) -> Vec<&'static str> {
        let mut plugins = vec![self.server, self.runtime, self.images];
        plugins.dedup();
        plugins
    }

    fn split(&self) -> bool {
        self.runtime != self.images
    }
}

fn configure_cri(
    config: &mut toml_edit::DocumentMut,
    layout: &CriLayout,
    dir: &Path,
    cri: &CriSetup,
    register_wedge: bool,
) -> Result<()> {
    let path = |name: &str| dir.join(name).display().to_string();
    let cni_dir = dir.join("cni");
    std::fs::create_dir_all(&cni_dir)?;
    std::fs::write(cni_dir.join("10-wedge-e2e.conflist"), cri.cni_config(dir))?;
    let plugins = &mut config["plugins"];
    let runtime = plugins[layout.runtime]
        .as_table_like_mut()
        .context("containerd's default config has no CRI plugin section")?;
    // Root here cannot lower its own oom_score_adj (see ENVIRONMENT.md).
    runtime.insert("restrict_oom_score_adj", toml_edit::value(true));
    runtime.insert("netns_mounts_under_state_dir", toml_edit::value(true));
    plugins[layout.server]["stream_server_port"] = toml_edit::value("0");
    if layout.split() {
        plugins[layout.images]["pinned_images"]["sandbox"] = toml_edit::value(&cri.sandbox_image);
    } else {
        plugins[layout.images]["sandbox_image"] = toml_edit::value(&cri.sandbox_image);
    }
    if let Some(hosts) = &cri.registry_hosts {
        plugins[layout.images]["registry"]["config_path"] =
            toml_edit::value(hosts.display().to_string());
    }
    let cni = &mut plugins[layout.runtime]["cni"];
    if cni.get("bin_dirs").is_some() {
        let mut bin_dirs = toml_edit::Array::new();
        bin_dirs.push("/usr/lib/cni");
        cni["bin_dirs"] = toml_edit::value(bin_dirs);
    } else {
        cni["bin_dir"] = toml_edit::value("/usr/lib/cni");
    }
    cni["conf_dir"] = toml_edit::value(cni_dir.display().to_string());
    let runtimes = &mut plugins[layout.runtime]["containerd"]["runtimes"];
    runtimes["runc"]["options"]["Root"] = toml_edit::value(path("runc-reference"));
    if !register_wedge {
        return Ok(());
    }
    let mut annotations = toml_edit::Array::new();
    annotations.push("wedge.dev/*");
    let mut wedge = toml_edit::Table::new();
    wedge.insert("runtime_type", toml_edit::value(WEDGE_RUNTIME));
    wedge.insert("pod_annotations", toml_edit::value(annotations.clone()));
    wedge.insert("container_annotations", toml_edit::value(annotations));
    let mut options = toml_edit::Table::new();
    options.insert("ConfigPath", toml_edit::value(path(ENGINE_CONFIG)));
    wedge.insert("options", toml_edit::Item::Table(options));
    runtimes["wedge"] = toml_edit::Item::Table(wedge);
    Ok(())
}

/// `relative` (a cgroupfs path) in every mounted hierarchy where it exists.
fn cgroup_dirs(relative: &str) -> Vec<PathBuf> {
    let relative = relative.trim_start_matches('/');
    let mut found = Vec::new();
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = hierarchy.path().join(relative);
        if dir.is_dir() {
            found.push(dir);
        }
    }
    let unified = Path::new("/sys/fs/cgroup").join(relative);
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() && unified.is_dir() {
        found.push(unified);
    }
    found
}

fn child_dirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false))
        .map(|entry| entry.path())
        .collect()
}

/// (pid, command line) of every process whose command line contains `marker`.
fn processes_mentioning(marker: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let program = cmdline.split(' ').next().unwrap_or_default();
        let is_ctr = program.rsplit('/').next() == Some("ctr");
        if cmdline.contains(marker) && !is_ctr {
            found.push((pid, cmdline));
        }
    }
    found
}
