//! One test of the suite as a container: the component packed as a wasm layer (with the
//! test's `root` directory as the filesystem layer beside it), run by `ctr run` on the Wedge
//! runtime in the host's network namespace, and each operation of its JSON done against it:
//! stdin written, stdout and stderr read while it runs, HTTP requests sent to the port Wedge
//! serves it on, signals sent through containerd, TCP connections made to the address it
//! prints, and its exit status checked.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wedge_cli::image::{write_layout, LayerFile};
use wedge_cli::module_image::{module_image, ModuleForm, ModuleImageSpec};

use super::endpoints::Endpoints;
use super::spec::{Operation, RequestSpec, TestSpec};
use crate::{http_load, Containerd, WEDGE_RUNTIME};

/// How long any one operation may take.
const STEP: Duration = Duration::from_secs(20);

/// A test of the suite: `NAME.wasm` and what its `NAME.json` says (defaults when it has none).
pub struct SuiteTest {
    pub name: String,
    pub wasm: PathBuf,
    pub spec: TestSpec,
    /// Where the JSON is: `root` is relative to it.
    pub dir: PathBuf,
}

/// Runs `test` in `containerd`; the error says which operation failed and how.
pub fn run(containerd: &Containerd, work: &Path, test: &SuiteTest) -> Result<()> {
    let image = import_image(containerd, work, test)?;
    let endpoints = Endpoints::start(&test.spec.servers)?;
    let id = format!("p3-{}", test.name);
    let mut container: Option<Container> = None;
    let result = (|| {
        for operation in test.spec.operations() {
            step(
                containerd,
                test,
                &image,
                &id,
                &endpoints,
                &mut container,
                &operation,
            )
            .with_context(|| format!("{operation:?}"))?;
        }
        ensure!(container.is_none(), "the test never waited for its run");
        Ok(())
    })();
    if let Some(container) = container.take() {
        container.stop(containerd, &id);
    }
    let _ = containerd.ctr(&["images", "rm", &image]);
    result
}

/// The running container and the connections the test opened to it.
struct Container {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Stream,
    stderr: Stream,
    http: Option<SocketAddr>,
    connections: BTreeMap<String, TcpStream>,
}

impl Container {
    fn stop(mut self, containerd: &Containerd, id: &str) {
        let _ = containerd.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        wait_with_timeout(&mut self.child, STEP);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = containerd.ctr(&["tasks", "delete", "--force", id]);
        let _ = containerd.ctr(&["containers", "delete", id]);
    }
}

#[allow(clippy::too_many_arguments)]
fn step(
    containerd: &Containerd,
    test: &SuiteTest,
    image: &str,
    id: &str,
    endpoints: &Endpoints,
    container: &mut Option<Container>,
    operation: &Operation,
) -> Result<()> {
    if let Operation::Run { args, env } = operation {
        ensure!(
            container.is_none(),
            "a second run before the first was waited for"
        );
        let mut env = env.clone();
        env.extend(endpoints.env.clone());
        *container = Some(start(containerd, test, image, id, args, &env)?);
        return Ok(());
    }
    let running = container.as_mut().context("no run before this operation")?;
    match operation {
        Operation::Run { .. } => unreachable!("handled above"),
        Operation::Write { payload, .. } => {
            let stdin = running.stdin.as_mut().context("stdin is closed")?;
            stdin.write_all(payload.as_bytes())?;
            stdin.flush()?;
        }
        Operation::Read {
            id: stream,
            payload,
        } => {
            let stream = match stream.as_str() {
                "stdout" => &running.stdout,
                "stderr" => &running.stderr,
                other => bail!("no stream {other:?}"),
            };
            let read = stream.take(payload.len(), STEP);
            ensure!(
                read == payload.as_bytes(),
                "read {:?}, expected {payload:?}",
                String::from_utf8_lossy(&read)
            );
        }
        Operation::Request(request) => {
            let address = running.http.context("the test is not an HTTP service")?;
            if let Err(err) = check_request(address, request) {
                let stderr = running
                    .stderr
                    .take_until(Duration::from_millis(200), |_| None);
                bail!("{err:#}; stderr: {}", excerpt(&stderr));
            }
        }
        Operation::Kill { signal } => {
            containerd.ctr_ok(&["tasks", "kill", "--signal", signal, id])?;
        }
        Operation::Connect {
            id: name,
            protocol_type,
        } => {
            ensure!(protocol_type == "tcp", "only TCP connections are tested");
            let line = running.stdout.line(STEP);
            let address: SocketAddr = line
                .trim()
                .parse()
                .with_context(|| format!("the component printed {line:?}, not HOST:PORT"))?;
            let stream = TcpStream::connect_timeout(&address, STEP)
                .with_context(|| format!("cannot connect to {address}"))?;
            stream.set_read_timeout(Some(STEP))?;
            running.connections.insert(name.clone(), stream);
        }
        Operation::Send { id: name, payload } => {
            let stream = running
                .connections
                .get_mut(name)
                .with_context(|| format!("no connection {name:?}"))?;
            stream.write_all(payload.as_bytes())?;
        }
        Operation::Recv { id: name, payload } => {
            let stream = running
                .connections
                .get_mut(name)
                .with_context(|| format!("no connection {name:?}"))?;
            let mut buffer = vec![0; payload.len().max(1)];
            let read = stream.read(&mut buffer)?;
            ensure!(
                &buffer[..read] == payload.as_bytes(),
                "received {:?}, expected {payload:?}",
                String::from_utf8_lossy(&buffer[..read])
            );
        }
        Operation::Wait { exit_code } => {
            let mut finished = container.take().context("no run to wait for")?;
            drop(finished.stdin.take());
            let status = wait_with_timeout(&mut finished.child, STEP);
            // What the container wrote last may still be on its way through ctr.
            finished.stderr.take_until(Duration::from_secs(2), |_| None);
            let stderr = String::from_utf8_lossy(&finished.stderr.all()).into_owned();
            let status = match status {
                Some(status) => status,
                None => {
                    finished.stop(containerd, id);
                    bail!(
                        "still running after {STEP:?}; stderr: {}",
                        excerpt(stderr.as_bytes())
                    );
                }
            };
            let code = status.code().unwrap_or(-1);
            ensure!(
                code == *exit_code,
                "exit status {code}, expected {exit_code}; stderr: {}",
                excerpt(stderr.as_bytes())
            );
        }
    }
    Ok(())
}

fn start(
    containerd: &Containerd,
    test: &SuiteTest,
    image: &str,
    id: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
) -> Result<Container> {
    let http = if test.spec.is_http_service() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    } else {
        None
    };
    let mut options = vec!["run", "--rm", "--runtime", WEDGE_RUNTIME];
    // The host's network only for tests that use one: ctr's host networking also brings the
    // host's /etc/hosts and /etc/resolv.conf (and a HOSTNAME variable) into the container.
    if test.spec.uses_network() {
        options.push("--net-host");
    }
    let env: Vec<String> = env
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    for variable in &env {
        options.extend(["--env", variable.as_str()]);
    }
    let port_annotation = http.map(|address| format!("wedge.dev/http-port={}", address.port()));
    if let Some(annotation) = &port_annotation {
        options.extend(["--annotation", annotation.as_str()]);
    }
    let argv0 = format!("{}.wasm", test.name);
    options.extend([image, id, argv0.as_str()]);
    options.extend(args.iter().map(String::as_str));
    let mut child = containerd
        .ctr_command(&options)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start ctr run")?;
    let stdout = Stream::capture(child.stdout.take().context("no stdout")?);
    let stderr = Stream::capture(child.stderr.take().context("no stderr")?);
    let stdin = child.stdin.take();
    if let Some(address) = http {
        if let Err(err) = http_load::wait_listening(address, STEP) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{err:#}; stderr: {}", excerpt(&stderr.all()));
        }
    }
    Ok(Container {
        child,
        stdin,
        stdout,
        stderr,
        http,
        connections: BTreeMap::new(),
    })
}

fn check_request(address: SocketAddr, request: &RequestSpec) -> Result<()> {
    let headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let answer = http_load::request(
        address,
        &request.method,
        &request.path,
        &headers,
        request.body.as_bytes(),
        STEP,
    )?;
    let expected = &request.response;
    ensure!(
        answer.status == expected.status,
        "{} {} answered {} (body {:?}), expected {}",
        request.method,
        request.path,
        answer.status,
        answer.body,
        expected.status
    );
    for (name, value) in &expected.headers {
        let got = answer
            .headers
            .get(name.as_str())
            .and_then(|got| got.to_str().ok());
        ensure!(
            got == Some(value.as_str()),
            "header {name}: {got:?}, expected {value:?}"
        );
    }
    ensure!(
        answer.body == expected.body,
        "body {:?}, expected {:?}",
        answer.body,
        expected.body
    );
    Ok(())
}

/// Packs the test as an image of the layer form: the component as its wasm layer and, when
/// the test has a `root`, that directory's files as the filesystem layer (so the guest's `/`
/// holds them and nothing else). Returns the image's name.
fn import_image(containerd: &Containerd, work: &Path, test: &SuiteTest) -> Result<String> {
    let module = std::fs::read(&test.wasm)
        .with_context(|| format!("cannot read {}", test.wasm.display()))?;
    let files = match &test.spec.root {
        Some(root) => root_files(&test.dir.join(root))?,
        None => Vec::new(),
    };
    let content = module_image(&ModuleImageSpec {
        reference: format!("wedge.test/p3-{}:latest", test.name),
        module,
        form: ModuleForm::Layer(None),
        entrypoint: vec![format!("{}.wasm", test.name)],
        cmd: vec![],
        env: vec![],
        workdir: None,
        files,
    })?;
    let archive = work.join(format!("{}.tar", test.name));
    let built = write_layout(&content, std::fs::File::create(&archive)?)?;
    containerd.import(&archive)?;
    std::fs::remove_file(&archive)?;
    Ok(built.reference)
}

/// Every regular file under `root`, by its path from `root`; `*.cleanup` files are what
/// earlier runs left and are not part of the test.
fn root_files(root: &Path) -> Result<Vec<LayerFile>> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            let metadata = entry.metadata()?;
            if metadata.is_dir() {
                pending.push(path);
            } else if metadata.is_file()
                && path
                    .extension()
                    .is_none_or(|extension| extension != "cleanup")
            {
                let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
                files.push(LayerFile {
                    path: format!("/{relative}"),
                    contents: std::fs::read(&path)?,
                    // Writable by the guest, as a copy the test may change.
                    mode: metadata.permissions().mode() | 0o200,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The lines of a guest's stderr worth reading in a report: its message, not the wasm
/// backtrace after it.
fn excerpt(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .filter(|line| !line.contains("RUST_BACKTRACE"))
        .take(8)
        .collect();
    lines.join("\n     ")
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Output of the container, read by a thread as it comes; the test takes it in order.
struct Stream {
    shared: Arc<(Mutex<StreamState>, Condvar)>,
}

#[derive(Default)]
struct StreamState {
    bytes: Vec<u8>,
    taken: usize,
    closed: bool,
}

impl Stream {
    fn capture(mut source: impl Read + Send + 'static) -> Stream {
        let shared: Arc<(Mutex<StreamState>, Condvar)> = Arc::default();
        let writer = shared.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                let read = source.read(&mut buffer).unwrap_or(0);
                let (state, changed) = &*writer;
                let mut state = state.lock().unwrap_or_else(|poison| poison.into_inner());
                if read == 0 {
                    state.closed = true;
                    changed.notify_all();
                    return;
                }
                state.bytes.extend_from_slice(&buffer[..read]);
                changed.notify_all();
            }
        });
        Stream { shared }
    }

    /// The next `count` bytes, or fewer if the stream ends or `timeout` passes first.
    fn take(&self, count: usize, timeout: Duration) -> Vec<u8> {
        self.take_until(timeout, |unread| (unread.len() >= count).then_some(count))
    }

    /// The next line, without its newline.
    fn line(&self, timeout: Duration) -> String {
        let line = self.take_until(timeout, |unread| {
            unread
                .iter()
                .position(|byte| *byte == b'\n')
                .map(|at| at + 1)
        });
        String::from_utf8_lossy(&line).trim_end().to_string()
    }

    fn take_until(&self, timeout: Duration, ready: impl Fn(&[u8]) -> Option<usize>) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let (state, changed) = &*self.shared;
        let mut state = state.lock().unwrap_or_else(|poison| poison.into_inner());
        loop {
            let unread = &state.bytes[state.taken..];
            let count = match ready(unread) {
                Some(count) => Some(count),
                None if state.closed || Instant::now() >= deadline => Some(unread.len()),
                None => None,
            };
            if let Some(count) = count {
                let taken = unread[..count].to_vec();
                state.taken += count;
                return taken;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            state = changed
                .wait_timeout(state, wait)
                .map(|(state, _)| state)
                .unwrap_or_else(|poison| poison.into_inner().0);
        }
    }

    /// Everything the stream carried, read or not (for messages).
    fn all(&self) -> Vec<u8> {
        let (state, _) = &*self.shared;
        let state = state.lock().unwrap_or_else(|poison| poison.into_inner());
        state.bytes.clone()
    }
}
