//! A stand-in for the Kubernetes API server, as much of it as the node installer uses: HTTPS
//! with a CA of its own, a service account directory (token, ca.crt) to mount where pods
//! find theirs, and every request recorded (method, path, content type, body) and answered
//! 200. Python's standard library serves it; openssl makes the certificates.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

pub const TOKEN: &str = "stand-in-service-account-token";

const SERVER: &str = r#"
import http.server, json, ssl, sys
port, cert, key, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Handler(http.server.BaseHTTPRequestHandler):
    def record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        with open(log, "a") as out:
            out.write(json.dumps({"method": self.command, "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "authorization": self.headers.get("Authorization"), "body": body}) + "\n")
        reply = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    do_GET = do_PATCH = do_POST = do_PUT = record
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// One recorded request.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
}

pub struct StandInApi {
    server: Child,
    pub port: u16,
    /// Holds `token` and `ca.crt`, as /var/run/secrets/kubernetes.io/serviceaccount does.
    pub service_account: PathBuf,
    log: PathBuf,
}

impl StandInApi {
    pub fn start(dir: &Path) -> Result<Self> {
        let dir = dir.join("stand-in-api");
        let service_account = dir.join("serviceaccount");
        std::fs::create_dir_all(&service_account)?;
        let file = |name: &str| dir.join(name).display().to_string();
        let openssl = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .context("cannot run openssl")?;
            ensure!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=stand-in-ca"];
        ca.extend(ec);
        let (ca_key, ca_crt) = (file("ca.key"), file("ca.crt"));
        ca.extend(["-keyout", &ca_key, "-out", &ca_crt]);
        openssl(&ca)?;
        let (key, csr, crt, ext) = (
            file("server.key"),
            file("server.csr"),
            file("server.crt"),
            file("server.ext"),
        );
        let mut request = vec!["req", "-subj", "/CN=kubernetes"];
        request.extend(ec);
        request.extend(["-keyout", &key, "-out", &csr]);
        openssl(&request)?;
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ])?;
        std::fs::copy(&ca_crt, service_account.join("ca.crt"))?;
        std::fs::write(service_account.join("token"), format!("{TOKEN}\n"))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = dir.join("requests.jsonl");
        let server = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(SERVER)
            .arg(port.to_string())
            .arg(&crt)
            .arg(&key)
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot run python3")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("the stand-in API server did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(StandInApi {
            server,
            port,
            service_account,
            log,
        })
    }

    /// The requests so far, oldest first.
    pub fn requests(&self) -> Result<Vec<Request>> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).context("a recorded request"))
            .collect()
    }
}

impl Drop for StandInApi {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
