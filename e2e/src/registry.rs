//! A private OCI registry for one test: Debian's `docker-registry` (distribution v2) on a
//! free 127.0.0.1 port, its storage in a temp dir.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub struct Registry {
    dir: tempfile::TempDir,
    process: Child,
    /// `127.0.0.1:PORT`
    pub address: String,
}

impl Registry {
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// A registry that lets only `user` with `password` in, by HTTP basic auth (htpasswd).
    pub fn start_with_basic_auth(user: &str, password: &str) -> Result<Self> {
        Self::start_with(Some((user, password)))
    }

    fn start_with(basic_auth: Option<(&str, &str)>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wedge-registry-")
            .tempdir()?;
        let auth = match basic_auth {
            None => String::new(),
            Some((user, password)) => {
                // distribution accepts bcrypt entries only.
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .context("cannot run htpasswd (apt-get install apache2-utils)")?;
                ensure!(out.status.success(), "htpasswd failed");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, &out.stdout)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: wedge-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };
        // Ask the kernel for a free port, then hand it to the registry.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: {address}\n{auth}",
                dir.path().join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let process = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start docker-registry (apt-get install docker-registry)")?;
        let registry = Registry {
            dir,
            process,
            address,
        };
        registry.wait_ready(Duration::from_secs(20))?;
        Ok(registry)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.get("/v2/").is_ok_and(|reply| {
                // 401: up, and asking for the credentials it was configured with.
                reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.1 401")
            }) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "registry did not come up; log:\n{}",
                    std::fs::read_to_string(self.dir.path().join("registry.log"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A bare HTTP GET, enough to see the registry answer.
    pub fn get(&self, path: &str) -> Result<String> {
        let mut stream = TcpStream::connect(&self.address)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        )?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
