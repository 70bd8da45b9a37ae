//! The engine config: what an operator may tune about how Wedge runs wasm on a node.
//!
//! Unknown keys are errors, not warnings: a misspelt option silently ignored on a production
//! node is worse than a container that refuses to start with the key named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::annotation_key::AnnotationKey;
use crate::features::WasmFeature;
use crate::host_rules::HostPattern;
use crate::quantity;

/// Where the engine config lives when containerd passes no runtime options.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wedge/config.toml";

/// Default home of compiled modules.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/wedge/cache";

/// Default state root of runc for native containers (beside containerd's own runc shim's
/// `/run/containerd/runc`, never inside it).
pub const DEFAULT_RUNC_ROOT: &str = "/run/wedge/runc";

/// Default cap on the cache's total size.
pub const DEFAULT_CACHE_MAX_SIZE_MB: u64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// The shim's log level (`error`, `warn`, `info`, `debug`, `trace`); containerd's
    /// `--debug` and `RUST_LOG` still win.
    pub log_level: Option<LogLevel>,
    /// The shim's log lines: `text` (the default), `logfmt` or `json`; the
    /// `WEDGE_LOG_FORMAT` environment variable of containerd still wins.
    pub log_format: Option<LogFormat>,
    /// The `wedge.dev/<key>` annotations pods may use; any other is refused.
    pub allowed_annotations: Vec<AnnotationKey>,
    pub wasm: WasmConfig,
    pub limits: LimitsConfig,
    pub pooling: PoolingConfig,
    pub http: HttpConfig,
    pub network: NetworkConfig,
    pub cache: CacheConfig,
    pub runc: RuncConfig,
    pub cgroup: CgroupConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            log_level: None,
            log_format: None,
            allowed_annotations: AnnotationKey::ALLOWED_BY_DEFAULT.to_vec(),
            wasm: WasmConfig::default(),
            limits: LimitsConfig::default(),
            pooling: PoolingConfig::default(),
            http: HttpConfig::default(),
            network: NetworkConfig::default(),
            cache: CacheConfig::default(),
            runc: RuncConfig::default(),
            cgroup: CgroupConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// How one log line is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `TIME LEVEL span{field=value}: message field=value`, for people.
    #[default]
    Text,
    /// `time=… level=… span=… id=… pod=… msg="…" field=value`, for log pipelines.
    Logfmt,
    /// One JSON object per line with the same keys as `logfmt`.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "text" => Ok(LogFormat::Text),
            "logfmt" => Ok(LogFormat::Logfmt),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?} is not text, logfmt or json")),
        }
    }
}

/// Which wasm proposals the engine accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasmConfig {
    /// On for every container.
    pub features: Vec<WasmFeature>,
    /// What `wedge.dev/features` may add for one pod: the operator's maximum.
    pub allowed_features: Vec<WasmFeature>,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            features: WasmFeature::DEFAULTS.to_vec(),
            allowed_features: Vec::new(),
        }
    }
}

/// Bounds on what one module may use, on top of the container's cgroup limits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Size any one linear memory may grow to; none = only the container's memory limit.
    #[serde(deserialize_with = "quantity::optional_memory")]
    pub memory: Option<u64>,
    /// The most `wedge.dev/max-memory` may ask for.
    #[serde(deserialize_with = "quantity::optional_memory")]
    pub max_memory: Option<u64>,
    /// Wall-clock deadline of a command module (epoch interruption); none = no deadline.
    #[serde(deserialize_with = "quantity::optional_duration")]
    pub timeout: Option<Duration>,
    /// The longest `wedge.dev/timeout` may ask for.
    #[serde(deserialize_with = "quantity::optional_duration")]
    pub max_timeout: Option<Duration>,
    /// Instructions (fuel units) a command may execute; none = unmetered.
    pub fuel: Option<u64>,
    /// The most `wedge.dev/fuel` may ask for.
    pub max_fuel: Option<u64>,
}

/// The pooling instance allocator of HTTP servers: slots reserved once per container, so a
/// request's fresh instance costs no mmap.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolingConfig {
    /// Component instances alive at once (at least `http.max_concurrency`).
    pub instances: u32,
    /// Size of one instance's linear memory slot.
    #[serde(deserialize_with = "quantity::optional_memory")]
    pub memory_per_instance: Option<u64>,
}

pub const DEFAULT_POOLED_MEMORY: u64 = 256 << 20;

impl Default for PoolingConfig {
    fn default() -> Self {
        PoolingConfig {
            instances: 128,
            memory_per_instance: Some(DEFAULT_POOLED_MEMORY),
        }
    }
}

/// How a component exporting `wasi:http/incoming-handler` is served.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Port when neither `wedge.dev/http-port` nor the container's `PORT` names one.
    pub port: u16,
    /// Requests handled at once; further ones wait for a slot.
    pub max_concurrency: u32,
    /// Largest request body; a bigger one is answered 413 without calling the guest.
    #[serde(deserialize_with = "quantity::optional_memory")]
    pub max_request_body: Option<u64>,
    /// One request's deadline, guest CPU and I/O together, from its arrival (waiting for a
    /// concurrency slot counts): 503 when no slot frees in time, 504 when the guest is late.
    #[serde(deserialize_with = "quantity::duration")]
    pub request_timeout: Duration,
    /// How long a client has to send a request's headers, and how long a keep-alive
    /// connection may sit idle between requests; then the connection is closed.
    #[serde(deserialize_with = "quantity::duration")]
    pub header_timeout: Duration,
    /// Client connections open at once; one more is answered 503 and closed.
    pub max_connections: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            port: 8080,
            max_concurrency: 64,
            max_request_body: Some(10 << 20),
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// What guests may reach through `wasi:sockets` and `wasi:http/outgoing-handler`. The
/// default is a Linux container's: anything the pod's network allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Addresses a guest may bind, connect or send to.
    pub allow: Vec<IpNet>,
    /// Exceptions to `allow`.
    pub deny: Vec<IpNet>,
    pub tcp: bool,
    pub udp: bool,
    pub ip_name_lookup: bool,
    /// Names a guest may ask to reach (`wasi:http`), checked before any lookup.
    pub allow_hosts: Vec<HostPattern>,
    /// Exceptions to `allow_hosts`.
    pub deny_hosts: Vec<HostPattern>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            allow: vec![
                IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(ipnet::Ipv6Net::default()),
            ],
            deny: Vec::new(),
            tcp: true,
            udp: true,
            ip_name_lookup: true,
            allow_hosts: vec![HostPattern::any()],
            deny_hosts: Vec::new(),
        }
    }
}

impl NetworkConfig {
    /// Whether a guest may reach `address`. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`)
    /// reaches the IPv4 host, so it meets the IPv4 rules: a deny rule for an IPv4 range
    /// cannot be stepped around through an AAAA answer.
    pub fn permits(&self, address: std::net::IpAddr) -> bool {
        let address = address.to_canonical();
        self.allow.iter().any(|net| net.contains(&address))
            && !self.deny.iter().any(|net| net.contains(&address))
    }

    /// Whether a guest may ask for `host` (a name, or an IP literal as text) on `port`:
    /// the hostname rules, before anything is looked up or connected.
    pub fn permits_host(&self, host: &str, port: u16) -> bool {
        self.allow_hosts
            .iter()
            .any(|pattern| pattern.matches(host, port))
            && !self
                .deny_hosts
                .iter()
                .any(|pattern| pattern.matches(host, port))
    }

    /// Whether every name passes the hostname rules: only then may a guest look names up
    /// through `wasi:sockets`, whose resolver offers no way to check a name first.
    pub fn any_name_permitted(&self) -> bool {
        self.allow_hosts.iter().any(HostPattern::is_any) && self.deny_hosts.is_empty()
    }

    /// Whether any address at all may be reached: with none, nothing is worth a lookup.
    pub fn reaches_anything(&self) -> bool {
        !self.allow.is_empty()
    }
}

/// How the node lays out cgroups. containerd hands a shim other than runc's only
/// `ConfigPath`/`ConfigBody` of the runtime's options, not `SystemdCgroup`, so the driver
/// runc's shim follows is repeated here (the node installer copies it from the runc entry).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupConfig {
    pub driver: CgroupDriver,
}

/// runc's two cgroup managers, or `auto`: systemd only for a `slice:prefix:name` path on a
/// node whose PID 1 is systemd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Auto,
    Cgroupfs,
    Systemd,
}

/// How native (non-wasm) containers are handed to runc.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuncConfig {
    /// The runc binary: a path, or a name looked up in the shim's PATH.
    pub path: PathBuf,
    /// runc's state root; one directory per containerd namespace below it.
    pub root: PathBuf,
}

impl Default for RuncConfig {
    fn default() -> Self {
        RuncConfig {
            path: PathBuf::from("runc"),
            root: PathBuf::from(DEFAULT_RUNC_ROOT),
        }
    }
}

/// The compiled-module cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Off: every Create compiles.
    pub enabled: bool,
    /// Root-only directory of compiled modules.
    pub dir: PathBuf,
    /// Least-recently-used entries are removed past this total size.
    pub max_size_mb: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: PathBuf::from(DEFAULT_CACHE_DIR),
            max_size_mb: DEFAULT_CACHE_MAX_SIZE_MB,
        }
    }
}

impl CacheConfig {
    pub fn max_size_bytes(&self) -> u64 {
        self.max_size_mb.saturating_mul(1024 * 1024)
    }
}

/// Where a config comes from, in containerd's terms: a runtime's `ConfigBody` (inline TOML)
/// or `ConfigPath`, else the node-wide default file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    Body(String),
    Path(PathBuf),
    /// [`DEFAULT_CONFIG_PATH`] if it exists, else built-in defaults.
    NodeDefault,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the engine config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid engine config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl EngineConfig {
    pub fn load(source: &ConfigSource) -> Result<Self, ConfigError> {
        match source {
            ConfigSource::Body(body) => Self::parse(body, "(runtime option ConfigBody)"),
            ConfigSource::Path(path) => Self::load_file(path),
            ConfigSource::NodeDefault => {
                let path = Path::new(DEFAULT_CONFIG_PATH);
                match std::fs::read_to_string(path) {
                    Ok(text) => Self::parse(&text, DEFAULT_CONFIG_PATH),
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                        Ok(EngineConfig::default())
                    }
                    Err(source) => Err(ConfigError::Read {
                        path: path.to_path_buf(),
                        source,
                    }),
                }
            }
        }
    }

    fn load_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: EngineConfig =
            toml_edit::de::from_str(text).map_err(|err| ConfigError::Invalid {
                origin: origin.to_string(),
                message: one_line(&err.to_string()),
            })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        exceeds("limits.memory", self.limits.memory, self.limits.max_memory)?;
        exceeds(
            "limits.timeout",
            self.limits.timeout,
            self.limits.max_timeout,
        )?;
        exceeds("limits.fuel", self.limits.fuel, self.limits.max_fuel)?;
        if self.http.port == 0 {
            return Err("http.port must be a port number, not 0".into());
        }
        if self.http.max_connections == 0 {
            return Err("http.max_connections must be at least 1".into());
        }
        if self.http.header_timeout.is_zero() {
            return Err("http.header_timeout must be longer than 0s".into());
        }
        if self.http.max_concurrency == 0 {
            return Err("http.max_concurrency must be at least 1".into());
        }
        if self.pooling.instances < self.http.max_concurrency {
            return Err(format!(
                "pooling.instances ({}) must be at least http.max_concurrency ({})",
                self.pooling.instances, self.http.max_concurrency
            ));
        }
        if !self.runc.root.is_absolute() {
            return Err(format!(
                "runc.root must be an absolute path, not {:?}",
                self.runc.root
            ));
        }
        if !self.cache.dir.is_absolute() {
            return Err(format!(
                "cache.dir must be an absolute path, not {:?}",
                self.cache.dir
            ));
        }
        Ok(())
    }
}

/// A default above its own ceiling is a config mistake, not something to clamp quietly.
fn exceeds<T: PartialOrd + std::fmt::Debug>(
    key: &str,
    value: Option<T>,
    max: Option<T>,
) -> Result<(), String> {
    match (value, max) {
        (Some(value), Some(max)) if value > max => Err(format!(
            "{key} ({value:?}) is above max_{} ({max:?})",
            key.rsplit('.').next().unwrap_or(key)
        )),
        _ => Ok(()),
    }
}

/// toml_edit's messages span several lines with a source excerpt; containerd shows errors on
/// one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('|') && !line.ends_with('|'))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_means_defaults() {
        let config = EngineConfig::parse("", "t").unwrap();
        assert_eq!(config, EngineConfig::default());
        assert_eq!(config.cache.dir, Path::new(DEFAULT_CACHE_DIR));
        assert_eq!(config.cache.max_size_bytes(), 1024 * 1024 * 1024);
    }

    #[test]
    fn reads_cache_settings() {
        let config = EngineConfig::parse(
            "[cache]\ndir = \"/tmp/c\"\nmax_size_mb = 5\nenabled = false\n",
            "t",
        )
        .unwrap();
        assert_eq!(config.cache.dir, Path::new("/tmp/c"));
        assert_eq!(config.cache.max_size_bytes(), 5 * 1024 * 1024);
        assert!(!config.cache.enabled);
        let config = EngineConfig::parse("[cgroup]\ndriver = \"systemd\"\n", "t").unwrap();
        assert_eq!(config.cgroup.driver, CgroupDriver::Systemd);
        assert_eq!(EngineConfig::default().cgroup.driver, CgroupDriver::Auto);
        let err = EngineConfig::parse("[cgroup]\ndriver = \"cgroupv1\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("cgroupv1"), "{err}");
        let config = EngineConfig::parse("[runc]\npath = \"/opt/runc\"\n", "t").unwrap();
        assert_eq!(config.runc.path, Path::new("/opt/runc"));
        assert_eq!(config.runc.root, Path::new(DEFAULT_RUNC_ROOT));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = EngineConfig::parse("[cache]\ndirectory = \"/x\"\n", "cfg.toml").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("cfg.toml") && text.contains("directory"),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");

        let err = EngineConfig::parse("[cache]\ndir = \"relative\"\n", "cfg.toml").unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");

        let err = EngineConfig::parse("[cache\n", "cfg.toml").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid engine config cfg.toml"));
    }

    #[test]
    fn the_log_format_is_one_of_three() {
        let config = EngineConfig::parse("log_format = \"logfmt\"\n", "t").unwrap();
        assert_eq!(config.log_format, Some(LogFormat::Logfmt));
        assert_eq!(EngineConfig::default().log_format, None);
        let err = EngineConfig::parse("log_format = \"xml\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("log_format"), "{err}");
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
    }

    #[test]
    fn an_ipv4_address_in_ipv6_clothes_meets_the_ipv4_rules() {
        let config = EngineConfig::parse(
            "[network]\nallow = [\"0.0.0.0/0\", \"::/0\"]\ndeny = [\"169.254.0.0/16\"]\n",
            "t",
        )
        .unwrap();
        for address in ["169.254.169.254", "::ffff:169.254.169.254"] {
            assert!(
                !config.network.permits(address.parse().unwrap()),
                "{address} passed the deny rule"
            );
        }
        assert!(config.network.permits("::ffff:10.1.2.3".parse().unwrap()));
        let only_v4 = EngineConfig::parse("[network]\nallow = [\"10.0.0.0/8\"]\n", "t").unwrap();
        assert!(only_v4.network.permits("::ffff:10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn every_section_parses_and_the_network_policy_denies_before_it_allows() {
        let config = EngineConfig::parse(
            r#"log_level = "debug"
allowed_annotations = ["features"]
[wasm]
features = ["simd", "multi-memory"]
allowed_features = ["gc"]
[limits]
memory = "64Mi"
max_memory = "1Gi"
timeout = "30s"
max_timeout = "5m"
fuel = 1000
max_fuel = 5000
[pooling]
instances = 100
memory_per_instance = "128Mi"
[http]
port = 3000
max_concurrency = 16
max_request_body = "1Mi"
request_timeout = "5s"
[network]
allow = ["10.0.0.0/8", "::1/128"]
deny = ["10.0.0.1/32"]
udp = false
"#,
            "t",
        )
        .unwrap();
        assert_eq!(config.log_level, Some(LogLevel::Debug));
        assert_eq!(config.limits.memory, Some(64 << 20));
        assert_eq!(config.limits.max_timeout, Some(Duration::from_secs(300)));
        assert_eq!(config.http.request_timeout, Duration::from_secs(5));
        assert_eq!(config.pooling.memory_per_instance, Some(128 << 20));
        assert!(config.network.permits("10.1.2.3".parse().unwrap()));
        assert!(!config.network.permits("10.0.0.1".parse().unwrap()));
        assert!(!config.network.permits("192.168.1.1".parse().unwrap()));
        assert!(config.network.permits("::1".parse().unwrap()));
        assert!(!config.network.udp && config.network.tcp);
        assert!(EngineConfig::default()
            .network
            .permits("169.254.169.254".parse().unwrap()));

        for (text, key) in [
            (
                "[limits]\ntimeout = \"10m\"\nmax_timeout = \"1m\"\n",
                "limits.timeout",
            ),
            ("[http]\nmax_concurrency = 500\n", "pooling.instances"),
            ("[wasm]\nfeatures = [\"multimemory\"]\n", "multimemory"),
            ("[network]\nallow = [\"10.0.0.0/33\"]\n", "10.0.0.0/33"),
        ] {
            let err = EngineConfig::parse(text, "t").unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn loads_from_a_path_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[cache]\nmax_size_mb = 7\n").unwrap();
        let config = EngineConfig::load(&ConfigSource::Path(path.clone())).unwrap();
        assert_eq!(config.cache.max_size_mb, 7);

        let err =
            EngineConfig::load(&ConfigSource::Path(dir.path().join("nope.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }
}
