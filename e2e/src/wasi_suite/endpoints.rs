//! The HTTP servers a test's `servers` list asks for, on 127.0.0.1, for the component under
//! test to call: canned answers (a chunked body with trailers when asked), the request's body
//! echoed, or its method, path, headers and trailers echoed as headers. A `closed` server is
//! an address nothing listens on. Requests match an endpoint by method and exact request
//! target; anything else is a 404 with no body.
//!
//! HTTP/1.1 is spoken by hand, one request per connection: the tests need trailers sent to a
//! client that never asked for them (`TE: trailers`), which a general-purpose server holds
//! back.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::spec::{EndpointSpec, ServerSpec};

/// Running servers; they stop accepting when dropped.
pub struct Endpoints {
    stop: Arc<AtomicBool>,
    /// `HTTP_SERVER_<NAME>` = `127.0.0.1:PORT` for each server.
    pub env: BTreeMap<String, String>,
}

impl Endpoints {
    pub fn start(servers: &[ServerSpec]) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut env = BTreeMap::new();
        for server in servers {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let address = listener.local_addr()?;
            if server.kind.as_deref() == Some("closed") {
                // The port was free a moment ago and nothing listens on it now.
                drop(listener);
            } else {
                listener.set_nonblocking(true)?;
                let endpoints = Arc::new(server.endpoints.clone());
                let stop = stop.clone();
                std::thread::spawn(move || accept(listener, &endpoints, &stop));
            }
            env.insert(
                format!("HTTP_SERVER_{}", server.name.to_uppercase()),
                address.to_string(),
            );
        }
        Ok(Endpoints { stop, env })
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn accept(listener: TcpListener, endpoints: &Arc<Vec<EndpointSpec>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let endpoints = endpoints.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &endpoints);
                });
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return,
        }
    }
}

/// A request as it came: method, target, headers, body and trailers.
struct Received {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

fn serve(stream: TcpStream, endpoints: &[EndpointSpec]) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let request = read_request(&mut reader)?;
    let mut out = stream;
    let endpoint = endpoints.iter().find(|endpoint| {
        endpoint.method.eq_ignore_ascii_case(&request.method) && endpoint.path == request.target
    });
    let Some(endpoint) = endpoint else {
        return write_response(&mut out, 404, &[], Body::Full(Vec::new()));
    };
    match endpoint.mode.as_deref().unwrap_or("static") {
        "echo-body" => write_response(&mut out, 200, &[], Body::Full(request.body)),
        "echo-headers" => {
            let mut headers = vec![
                ("x-request-method".to_string(), request.method.clone()),
                ("x-request-path".to_string(), request.target.clone()),
            ];
            for (name, value) in &request.headers {
                headers.push((
                    format!("x-echo-{}", name.to_ascii_lowercase()),
                    value.clone(),
                ));
            }
            for (name, value) in &request.trailers {
                headers.push((
                    format!("x-trailer-{}", name.to_ascii_lowercase()),
                    value.clone(),
                ));
            }
            write_response(&mut out, 200, &headers, Body::Full(Vec::new()))
        }
        _ => {
            let canned = endpoint.response.clone().unwrap_or_default();
            let headers: Vec<(String, String)> = canned.headers.into_iter().collect();
            let body = match canned.chunks {
                Some(chunks) => Body::Chunked {
                    chunks,
                    trailers: canned.trailers.into_iter().collect(),
                },
                None => Body::Full(canned.body.into_bytes()),
            };
            write_response(&mut out, canned.status.unwrap_or(200), &headers, body)
        }
    }
}

fn read_request(reader: &mut impl BufRead) -> Result<Received> {
    let request_line = read_line(reader)?;
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line {request_line:?}");
    };
    let headers = read_fields(reader)?;
    let field = |name: &str| {
        headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_string())
    };
    let mut body = Vec::new();
    let mut trailers = Vec::new();
    if field("transfer-encoding").is_some_and(|coding| coding.eq_ignore_ascii_case("chunked")) {
        loop {
            let size_line = read_line(reader)?;
            let size = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .with_context(|| format!("bad chunk size {size_line:?}"))?;
            if size == 0 {
                trailers = read_fields(reader)?;
                break;
            }
            let mut chunk = vec![0; size];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            read_line(reader)?;
        }
    } else if let Some(length) = field("content-length") {
        let mut content = vec![0; length.parse().context("bad content-length")?];
        reader.read_exact(&mut content)?;
        body = content;
    }
    Ok(Received {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        body,
        trailers,
    })
}

/// Header (or trailer) fields up to the empty line that ends them.
fn read_fields(reader: &mut impl BufRead) -> Result<Vec<(String, String)>> {
    let mut fields = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            return Ok(fields);
        }
        if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
}

fn read_line(reader: &mut impl BufRead) -> Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        bail!("the client closed the connection");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

enum Body {
    Full(Vec<u8>),
    Chunked {
        chunks: Vec<String>,
        trailers: Vec<(String, String)>,
    },
}

fn write_response(
    out: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: Body,
) -> Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nconnection: close\r\n",
        reason(status)
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match body {
        Body::Full(body) => {
            head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
            out.write_all(head.as_bytes())?;
            out.write_all(&body)?;
        }
        Body::Chunked { chunks, trailers } => {
            head.push_str("transfer-encoding: chunked\r\n\r\n");
            for chunk in chunks.iter().filter(|chunk| !chunk.is_empty()) {
                head.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
            }
            head.push_str("0\r\n");
            for (name, value) in trailers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            out.write_all(head.as_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        418 => "I'm a teapot",
        500 => "Internal Server Error",
        _ => "Status",
    }
}
