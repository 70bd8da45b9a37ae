//! Wasm servers in pods, reached the way Kubernetes reaches any pod: an HTTP component
//! (`wasi:http/incoming-handler`) from the node through the pod IP and from a sidecar through
//! localhost, a WASI 0.3 one (`wasi:http/handler`), and a TCP server written against
//! `wasi:sockets`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wedge_e2e::cri::{sh, WEDGE_HANDLER};
use wedge_e2e::http_load::{self, wait_listening};
use wedge_e2e::{components, wasi_suite, ContainerSpec, CriNode, Release};

fn pod_address(node: &CriNode, pod: &wedge_e2e::Pod, port: u16) -> Result<SocketAddr> {
    let ip: std::net::IpAddr = node.pod_ip(pod)?.parse()?;
    Ok(SocketAddr::new(ip, port))
}

/// A WASI 0.3 component (the official suite's echo service, exporting
/// `wasi:http/handler@0.3.0` and importing 0.2 and 0.3 packages side by side) serves through
/// the pod IP as a 0.2 one does: request and response bodies and headers, a 404 from the
/// guest, the body limit, 200 requests with 16 in flight (several on one instance), and
/// SIGTERM ends it with status 0.
#[test]
fn a_wasi_0_3_http_component_serves_through_the_pod_ip() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let image = node.wasm_image("http-p3-echo", &wasi_suite::component("http-service-echo")?)?;
    let pod =
        node.run_pod_annotated("http-p3", WEDGE_HANDLER, &[("wedge.dev/http-port", "8080")])?;
    let app = node.run_container(
        &pod,
        &ContainerSpec {
            name: "app".into(),
            image,
            ..Default::default()
        },
    )?;
    let address = pod_address(&node, &pod, 8080)?;
    wait_listening(address, Duration::from_secs(20))?;
    let timeout = Duration::from_secs(10);

    let answer = http_load::request(address, "POST", "/echo", &[], b"hello, echo", timeout)?;
    ensure!(
        answer.status == 200
            && answer.body == "hello, echo"
            && answer
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                == Some("application/octet-stream"),
        "{answer:?}"
    );
    let ping = [("x-echo".to_string(), "ping".to_string())];
    let answer = http_load::request(address, "GET", "/reflect-header", &ping, b"", timeout)?;
    ensure!(
        answer.status == 200
            && answer.headers.get("x-echoed").and_then(|v| v.to_str().ok()) == Some("ping"),
        "{answer:?}"
    );
    let answer = http_load::request(address, "GET", "/whatever", &[], b"", timeout)?;
    ensure!(answer.status == 404, "{answer:?}");
    // The body limit holds for 0.3 as for 0.2: answered before the body is sent.
    let mut client = TcpStream::connect(address)?;
    client.set_read_timeout(Some(timeout))?;
    write!(
        client,
        "POST /echo HTTP/1.1\r\nhost: pod\r\ncontent-length: {}\r\n\r\n",
        (10 << 20) + 1
    )?;
    let mut status_line = String::new();
    BufReader::new(&client).read_line(&mut status_line)?;
    ensure!(status_line.starts_with("HTTP/1.1 413"), "{status_line:?}");
    let load = http_load::load(address, "/reflect-header", "", 200, 16)?;
    ensure!(
        load.failures.is_empty() && load.succeeded == 200,
        "{} failed: {:?}",
        load.failures.len(),
        load.failures.iter().take(3).collect::<Vec<_>>()
    );

    node.stop_container(&app, 10)?;
    let status = node.wait_exited(&app, Duration::from_secs(20))?;
    ensure!(status.exit_code == 0, "exit status {}", status.exit_code);
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// An HTTP component answers from the node through the pod IP and from a busybox sidecar
/// through localhost, with the container's env; 200 requests with 16 in flight all succeed;
/// request bodies come through, a body over the limit is refused with 413 and a request past
/// its timeout answered 504; outgoing requests reach the sidecar and not an address the
/// engine config's network policy denies; SIGTERM lets a request in
/// flight finish, then the container exits 0.
#[test]
fn an_http_component_serves_like_any_pod() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let server = node.wasm_image("http-hello", &components::http_hello_component()?)?;
    let busybox = node.busybox_image()?;
    let pod = node.run_pod_annotated(
        "http",
        WEDGE_HANDLER,
        &[
            ("wedge.dev/http-port", "8080"),
            ("wedge.dev/http-request-timeout", "3s"),
        ],
    )?;
    let sidecar = node.run_container(
        &pod,
        &ContainerSpec {
            name: "sidecar".into(),
            image: busybox.clone(),
            command: sh("mkdir -p /www && echo from-the-sidecar > /www/note.txt \
                         && exec /bin/busybox httpd -f -p 8081 -h /www"),
            ..Default::default()
        },
    )?;
    let app = node.run_container(
        &pod,
        &ContainerSpec {
            name: "app".into(),
            image: server,
            env: vec![("GREETING".into(), "hello-from-env".into())],
            ..Default::default()
        },
    )?;
    let address = pod_address(&node, &pod, 8080)?;
    wait_listening(address, Duration::from_secs(20))?;

    let answer = http_load::get(address, "/from/the/node?x=1")?;
    ensure!(
        answer.status == 200 && answer.body == "hello from wasm http: GET /from/the/node?x=1\n",
        "{answer:?}"
    );
    let answer = http_load::get(address, "/env/GREETING")?;
    ensure!(answer.body == "hello-from-env", "{answer:?}");
    let answer = http_load::post(address, "/echo", b"a body to send back")?;
    ensure!(answer.body == "a body to send back", "{answer:?}");
    // A client announcing a body over the limit is answered before it sends it.
    let mut client = TcpStream::connect(address)?;
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        client,
        "POST /echo HTTP/1.1\r\nhost: pod\r\ncontent-length: {}\r\n\r\n",
        (10 << 20) + 1
    )?;
    let mut status_line = String::new();
    BufReader::new(&client).read_line(&mut status_line)?;
    ensure!(
        status_line.starts_with("HTTP/1.1 413"),
        "a body of 10 MiB + 1: {status_line:?}"
    );
    let started = Instant::now();
    let answer = http_load::get(address, "/sleep/10000")?;
    ensure!(
        answer.status == 504 && started.elapsed() < Duration::from_secs(8),
        "past the request timeout: {} after {:?}",
        answer.status,
        started.elapsed()
    );
    let answer = http_load::get(address, "/fetch/192.0.2.1:80/denied")?;
    ensure!(
        answer.status == 502 && answer.body.contains("destination-IP-prohibited"),
        "an address the network policy denies: {answer:?}"
    );
    let answer = http_load::get(address, "/fetch/127.0.0.1:8081/note.txt")?;
    ensure!(
        answer.status == 200 && answer.body.contains("fetched 200: from-the-sidecar"),
        "outgoing request: {answer:?}"
    );

    let from_sidecar = node.exec_sync(
        &sidecar,
        &[
            "/bin/busybox",
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/from/the/sidecar",
        ],
    )?;
    let text = String::from_utf8_lossy(&from_sidecar.stdout);
    ensure!(
        from_sidecar.exit_code == 0 && text == "hello from wasm http: GET /from/the/sidecar\n",
        "sidecar: exit {} {text:?} {}",
        from_sidecar.exit_code,
        String::from_utf8_lossy(&from_sidecar.stderr)
    );

    let report = http_load::load(address, "/load", "hello from wasm http", 200, 16)?;
    ensure!(
        report.succeeded == 200 && report.failures.is_empty(),
        "{} succeeded, failures: {:?}",
        report.succeeded,
        report.failures
    );

    // A slow request in flight when the container is stopped still gets its answer.
    let slow = std::thread::spawn(move || http_load::get(address, "/sleep/1500"));
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    node.stop_container(&app, 30)?;
    let stopped_after = stopping.elapsed();
    let answer = slow
        .join()
        .map_err(|_| anyhow::anyhow!("the slow request panicked"))??;
    ensure!(
        answer.body == "slept 1500\n",
        "in flight during SIGTERM: {answer:?}"
    );
    let status = node.status(&app)?;
    ensure!(
        status.exit_code == 0,
        "after the drain: exit {}",
        status.exit_code
    );
    ensure!(
        stopped_after < Duration::from_secs(10),
        "the drain took {stopped_after:?}"
    );
    ensure!(
        TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_err(),
        "still listening after the stop"
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// A TCP echo server on wasi:sockets answers from the node through the pod IP (two clients
/// at once) and from a sidecar through localhost; the UDP echo answers a datagram from the
/// node; a name lookup resolves.
#[test]
fn a_tcp_echo_component_is_reachable() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let echo_image = node.wasm_image("tcp-echo", &components::tcp_echo_component()?)?;
    let busybox = node.busybox_image()?;
    let pod = node.run_pod("tcp", WEDGE_HANDLER)?;
    node.run_container(
        &pod,
        &ContainerSpec {
            name: "echo".into(),
            image: echo_image.clone(),
            env: vec![("PORT".into(), "7000".into())],
            ..Default::default()
        },
    )?;
    let sidecar = node.run_container(
        &pod,
        &ContainerSpec {
            name: "sidecar".into(),
            image: busybox,
            command: sh("sleep 3600"),
            ..Default::default()
        },
    )?;
    node.wait_for_log(&pod, "echo", "listening on 7000")?;
    let address = pod_address(&node, &pod, 7000)?;
    let mut first = TcpStream::connect(address).context("first client")?;
    let mut second = TcpStream::connect(address).context("second client")?;
    for (client, line) in [(&mut second, "second\n"), (&mut first, "first\n")] {
        client.set_read_timeout(Some(Duration::from_secs(10)))?;
        client.write_all(line.as_bytes())?;
        let mut echoed = String::new();
        BufReader::new(&*client).read_line(&mut echoed)?;
        ensure!(echoed == line, "echoed {echoed:?} for {line:?}");
    }
    let from_sidecar = node.exec_sync(
        &sidecar,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo from-the-sidecar | /bin/busybox nc -w 2 127.0.0.1 7000",
        ],
    )?;
    let text = String::from_utf8_lossy(&from_sidecar.stdout);
    ensure!(text.contains("from-the-sidecar"), "sidecar got {text:?}");

    // The same program echoing UDP datagrams, and a name lookup, through wasi:sockets.
    node.run_container(
        &pod,
        &ContainerSpec {
            name: "udp".into(),
            image: echo_image.clone(),
            args: vec!["udp".into()],
            env: vec![("PORT".into(), "7001".into())],
            ..Default::default()
        },
    )?;
    node.wait_for_log(&pod, "udp", "listening on 7001")?;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    socket.send_to(b"datagram", pod_address(&node, &pod, 7001)?)?;
    let mut buffer = [0u8; 64];
    let (length, _) = socket.recv_from(&mut buffer).context("no UDP echo")?;
    ensure!(
        &buffer[..length] == b"datagram",
        "UDP echo {:?}",
        &buffer[..length]
    );

    let lookup = node.wasm_image("ip-lookup", &components::ip_lookup_component()?)?;
    let id = node.run_container(
        &pod,
        &ContainerSpec {
            name: "lookup".into(),
            image: lookup,
            args: vec!["localhost".into()],
            ..Default::default()
        },
    )?;
    let status = node.wait_exited(&id, Duration::from_secs(20))?;
    let lines = node.stdout_lines(&pod, "lookup")?;
    ensure!(
        status.exit_code == 0 && lines.iter().any(|line| line == "127.0.0.1"),
        "lookup: exit {} {lines:?}",
        status.exit_code
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// The status line and headers of one response on `stream`, then its body (by
/// content-length); the status code.
fn read_response(reader: &mut BufReader<&TcpStream>) -> Result<u16> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {status_line:?}"))?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse()?;
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(status)
}

/// Waits until the server closes `stream` (EOF or reset); how long that took.
fn closed_within(mut stream: &TcpStream, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit))?;
    let mut buffer = [0u8; 512];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(started.elapsed()),
            Ok(_) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(started.elapsed())
            }
            Err(err) => anyhow::bail!("still open after {:?}: {err}", started.elapsed()),
        }
    }
}

/// The harness's engine config gives `http.header_timeout = "2s"` and
/// `http.max_connections = 24`. A client that never finishes its request head is closed
/// after the header timeout while others are served; an idle keep-alive connection is closed
/// too; connection 25 is refused with 503; with one request at a time, a request queued
/// behind a slow one is answered within its request timeout (503 or 504), not after it.
#[test]
fn an_http_component_holds_off_abusive_clients() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let server = node.wasm_image("http-hello", &components::http_hello_component()?)?;
    let pod = node.run_pod_annotated(
        "abuse",
        WEDGE_HANDLER,
        &[
            ("wedge.dev/http-port", "8080"),
            ("wedge.dev/http-max-concurrency", "1"),
            ("wedge.dev/http-request-timeout", "2s"),
        ],
    )?;
    node.run_container(
        &pod,
        &ContainerSpec {
            name: "app".into(),
            image: server,
            ..Default::default()
        },
    )?;
    let address = pod_address(&node, &pod, 8080)?;
    wait_listening(address, Duration::from_secs(20))?;

    // Slowloris: half a request head, never finished.
    let slow = TcpStream::connect(address)?;
    (&slow).write_all(b"GET / HTTP/1.1\r\nhost: pod\r\nx-slow: ")?;
    let answer = http_load::get(address, "/meanwhile")?;
    ensure!(
        answer.status == 200,
        "served beside a slow client: {answer:?}"
    );
    let after = closed_within(&slow, Duration::from_secs(10))?;
    ensure!(
        after < Duration::from_secs(5),
        "the slow client was closed only after {after:?}"
    );

    // An idle keep-alive connection: one request, then silence.
    let idle = TcpStream::connect(address)?;
    (&idle).write_all(b"GET /once HTTP/1.1\r\nhost: pod\r\n\r\n")?;
    let status = read_response(&mut BufReader::new(&idle))?;
    ensure!(status == 200, "keep-alive request: {status}");
    let after = closed_within(&idle, Duration::from_secs(10))?;
    ensure!(
        after < Duration::from_secs(5),
        "the idle connection was closed only after {after:?}"
    );

    // The connection cap.
    let held: Vec<TcpStream> = (0..24)
        .map(|_| TcpStream::connect(address))
        .collect::<std::io::Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let extra = TcpStream::connect(address)?;
    extra.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut refusal = String::new();
    BufReader::new(&extra).read_to_string(&mut refusal)?;
    ensure!(
        refusal.starts_with("HTTP/1.1 503") && refusal.contains("too many connections"),
        "connection 25: {refusal:?}"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match http_load::get(address, "/after-the-crowd") {
            Ok(answer) if answer.status == 200 => break,
            other if Instant::now() > deadline => anyhow::bail!("after the crowd: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }

    // Overload: one slot, a slow request in it, another behind it.
    let first = std::thread::spawn(move || http_load::get(address, "/sleep/5000"));
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let queued = http_load::get(address, "/sleep/5000")?;
    let waited = started.elapsed();
    ensure!(
        matches!(queued.status, 503 | 504) && waited < Duration::from_millis(3200),
        "queued behind a slow request: {} after {waited:?}",
        queued.status
    );
    let first = first
        .join()
        .map_err(|_| anyhow::anyhow!("the first request panicked"))??;
    ensure!(first.status == 504, "the slow request: {first:?}");

    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}
