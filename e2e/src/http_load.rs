//! A small HTTP/1.1 client for the tests and the benchmark: single requests, and a load of
//! many requests over a fixed number of keep-alive connections with every latency recorded.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Status and body of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

pub fn get(address: SocketAddr, path: &str) -> Result<Answer> {
    one(address, Method::GET, path, Bytes::new())
}

pub fn post(address: SocketAddr, path: &str, body: &[u8]) -> Result<Answer> {
    one(address, Method::POST, path, Bytes::copy_from_slice(body))
}

fn one(address: SocketAddr, method: Method, path: &str, body: Bytes) -> Result<Answer> {
    runtime()?.block_on(async {
        let mut sender = connect(address).await?;
        send(&mut sender, address, method, path, body).await
    })
}

/// Status, headers and body of one answer.
#[derive(Debug, Clone)]
pub struct FullAnswer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// One request with any method, headers and body, on a connection of its own, answered
/// within `timeout`.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<FullAnswer> {
    let method = Method::from_bytes(method.as_bytes())
        .with_context(|| format!("invalid method {method:?}"))?;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, address.to_string());
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request.body(Full::new(Bytes::copy_from_slice(body)))?;
    runtime()?.block_on(async {
        tokio::time::timeout(timeout, async {
            let mut sender = connect(address).await?;
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await?.to_bytes();
            Ok(FullAnswer {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        })
        .await
        .with_context(|| format!("no answer from {address} within {timeout:?}"))?
    })
}

/// Waits until something accepts connections at `address`.
pub fn wait_listening(address: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() > deadline => {
                return Err(err).with_context(|| format!("nothing listens at {address}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub succeeded: usize,
    /// One line per failed request: status and body, or the error.
    pub failures: Vec<String>,
    pub elapsed: Duration,
    latencies: Vec<Duration>,
}

impl LoadReport {
    pub fn requests_per_second(&self) -> f64 {
        self.succeeded as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// The latency below which `fraction` of the successful requests completed.
    pub fn percentile(&self, fraction: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
}

/// `total` GETs of `path`, `in_flight` at a time, each connection kept alive; a request
/// counts as successful when it answers 200 with a body starting with `expect`.
pub fn load(
    address: SocketAddr,
    path: &str,
    expect: &str,
    total: usize,
    in_flight: usize,
) -> Result<LoadReport> {
    let next = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let started = Instant::now();
    runtime()?.block_on(async {
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..in_flight.max(1) {
            let (next, report) = (next.clone(), report.clone());
            let (path, expect) = (path.to_string(), expect.to_string());
            workers.spawn(async move {
                let mut sender = None;
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let began = Instant::now();
                    let outcome = async {
                        if sender.is_none() {
                            sender = Some(connect(address).await?);
                        }
                        let connection = sender.as_mut().context("no connection")?;
                        send(connection, address, Method::GET, &path, Bytes::new()).await
                    }
                    .await;
                    let latency = began.elapsed();
                    let mut report = report.lock().unwrap_or_else(|poison| poison.into_inner());
                    match outcome {
                        Ok(answer) if answer.status == 200 && answer.body.starts_with(&expect) => {
                            report.succeeded += 1;
                            report.latencies.push(latency);
                        }
                        Ok(answer) => report
                            .failures
                            .push(format!("{} {:?}", answer.status, answer.body)),
                        Err(err) => {
                            report.failures.push(format!("{err:#}"));
                            sender = None;
                        }
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
    });
    let mut report = Arc::try_unwrap(report)
        .map_err(|_| anyhow::anyhow!("a load worker outlived the run"))?
        .into_inner()
        .unwrap_or_else(|poison| poison.into_inner());
    report.elapsed = started.elapsed();
    Ok(report)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(address: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    address: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Answer> {
    sender.ready().await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, address.to_string())
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
