//! Serving a component that exports an HTTP handler: an HTTP/1.1 server in the pod's network
//! namespace, a bound on requests in flight, a request body limit and a per-request deadline.
//! SIGTERM stops accepting and lets requests in flight finish. A 0.2 `incoming-handler` gets
//! one fresh instance per request from a pre-linked component and the pooling allocator; a
//! 0.3 `handler` may serve several requests from one instance (`shared_instances`).

use std::convert::Infallible;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits};
use wasmtime_wasi::filesystem::WasiFilesystemCtx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::handler::{ExpirationError, ProxyHandler};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};
use wedge_runtime_config::{HttpOptions, NetworkConfig};

use super::context::{store_limits, without_filesystem, CommandContext};
use super::deadline::{arm, EpochTicker};
use super::outgoing::OutgoingPolicy;
use super::shared_instances::SharedInstances;
use super::{link_wasi_and_http, Outcome, Rejected};

const INCOMING_HANDLER_0_2: &str = "wasi:http/incoming-handler@0.2.";
const HANDLER_0_3: &str = "wasi:http/handler@0.3.";

/// Which `wasi:http` a component serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpWorld {
    /// `wasi:http/incoming-handler@0.2.x`
    P2,
    /// `wasi:http/handler@0.3.x`
    P3,
}

/// The HTTP handler the component's top level exports, if any (0.3 first): read from the
/// binary before compiling, because a server's engine differs (pooling allocator).
pub fn http_handler_export(bytes: &[u8]) -> Option<HttpWorld> {
    let mut depth = 0usize;
    let mut found = None;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else {
            return None;
        };
        match payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports.into_iter().flatten() {
                    if export.name.name.starts_with(HANDLER_0_3) {
                        return Some(HttpWorld::P3);
                    }
                    if export.name.name.starts_with(INCOMING_HANDLER_0_2) {
                        found = Some(HttpWorld::P2);
                    }
                }
            }
            _ => {}
        }
    }
    found
}

/// Store data of one request (0.2), or of one instance serving requests (0.3).
pub(super) struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(super) limits: StoreLimits,
    outgoing: OutgoingPolicy,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outgoing,
        }
    }
}

/// The handler export, pre-linked.
enum HandlerPre {
    P2(ProxyPre<RequestState>),
    P3(ServicePre<RequestState>),
}

/// A component linked against WASI and wasi:http, ready to instantiate.
pub struct PreparedServer {
    engine: Engine,
    pre: HandlerPre,
}

impl PreparedServer {
    pub fn new(engine: &Engine, component: &Component) -> Result<Self, Rejected> {
        let mut linker = Linker::<RequestState>::new(engine);
        link_wasi_and_http(&mut linker)?;
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|err| Rejected::from_wasmtime("cannot link the component", &err))?;
        let pre = match ServicePre::new(instance_pre.clone()) {
            Ok(pre) => HandlerPre::P3(pre),
            Err(_) => HandlerPre::P2(ProxyPre::new(instance_pre).map_err(|err| {
                Rejected::from_wasmtime(
                    "the component's wasi:http handler (incoming-handler@0.2 or handler@0.3)",
                    &err,
                )
            })?),
        };
        tracing::debug!(
            wasi = match pre {
                HandlerPre::P2(_) => "0.2",
                HandlerPre::P3(_) => "0.3",
            },
            "component serves HTTP"
        );
        Ok(PreparedServer {
            engine: engine.clone(),
            pre,
        })
    }

    /// Opens the preopens and binds the port now, while still root and at Create: a port in
    /// use or a missing volume fails the container's creation with the reason.
    pub fn with_context(
        self,
        ctx: &CommandContext<'_>,
        http: &HttpOptions,
    ) -> Result<ReadyServer, Rejected> {
        let mut template = ctx.wasi_builder()?.build();
        let filesystem = template.filesystem().clone();
        let listener = bind_all_addresses(http.port)?;
        Ok(ReadyServer {
            engine: self.engine,
            pre: self.pre,
            listener,
            requests: RequestTemplate {
                args: ctx.args.to_vec(),
                env: ctx.env.to_vec(),
                memory_limit: ctx.memory_limit,
                network: Arc::new(ctx.network.clone()),
                filesystem,
            },
            options: http.clone(),
        })
    }
}

/// Dual-stack where the namespace has IPv6, else IPv4: "all addresses" as a Linux server's
/// `0.0.0.0`/`::` listen means.
fn bind_all_addresses(port: u16) -> Result<StdTcpListener, Rejected> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    StdTcpListener::bind(v6)
        .or_else(|_| StdTcpListener::bind(v4))
        .and_then(|listener| {
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .map_err(|err| Rejected(format!("cannot listen for HTTP on port {port}: {err}")))
}

/// What every request's WASI context is made of.
pub(super) struct RequestTemplate {
    args: Vec<String>,
    env: Vec<(String, String)>,
    memory_limit: Option<u64>,
    network: Arc<NetworkConfig>,
    /// The preopens, opened once as root at Create; every request shares the handles.
    filesystem: WasiFilesystemCtx,
}

impl RequestTemplate {
    pub(super) fn state(&self) -> RequestState {
        let mut wasi = without_filesystem(&self.args, &self.env, &self.network).build();
        *wasi.filesystem() = self.filesystem.clone();
        RequestState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: store_limits(self.memory_limit),
            outgoing: OutgoingPolicy {
                network: self.network.clone(),
            },
        }
    }
}

/// A server waiting for the container's Start.
pub struct ReadyServer {
    engine: Engine,
    pre: HandlerPre,
    listener: StdTcpListener,
    requests: RequestTemplate,
    options: HttpOptions,
}

/// How requests reach the guest.
enum Handler {
    /// A fresh 0.2 instance per request.
    PerRequest(Arc<PerRequest>),
    /// 0.3 instances that each take several requests.
    Shared(ProxyHandler<SharedInstances>),
}

/// A 0.2 handler and what each request's instance is made of.
struct PerRequest {
    engine: Engine,
    pre: ProxyPre<RequestState>,
    requests: RequestTemplate,
}

struct Server {
    handler: Handler,
    options: HttpOptions,
    in_flight: Arc<Semaphore>,
}

impl ReadyServer {
    /// Serves until `stop` resolves (the runner's SIGTERM or SIGINT), then drains; runs on a
    /// multi-threaded runtime.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()>) -> Outcome {
        tokio::pin!(stop);
        let listener = match TcpListener::from_std(self.listener) {
            Ok(listener) => listener,
            Err(err) => return Outcome::HostError(format!("cannot serve HTTP: {err}")),
        };
        let _ticker = match EpochTicker::start(&self.engine) {
            Ok(ticker) => ticker,
            Err(err) => {
                return Outcome::HostError(format!("cannot start the request clock: {err}"))
            }
        };
        let handler = match self.pre {
            HandlerPre::P2(pre) => Handler::PerRequest(Arc::new(PerRequest {
                engine: self.engine.clone(),
                pre,
                requests: self.requests,
            })),
            HandlerPre::P3(pre) => Handler::Shared(ProxyHandler::new(SharedInstances {
                engine: self.engine.clone(),
                pre: wasmtime_wasi_http::handler::ProxyPre::P3(pre),
                requests: self.requests,
                request_timeout: self.options.request_timeout,
            })),
        };
        let server = Arc::new(Server {
            in_flight: Arc::new(Semaphore::new(
                usize::try_from(self.options.max_concurrency).unwrap_or(usize::MAX),
            )),
            handler,
            options: self.options,
        });
        let connections = GracefulShutdown::new();
        let open_connections = Arc::new(Semaphore::new(
            usize::try_from(server.options.max_connections).unwrap_or(usize::MAX),
        ));
        let mut accept_backoff = AcceptBackoff::default();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => {
                            accept_backoff.succeeded();
                            stream
                        }
                        // Out of fds or a connection reset before accept: keep serving,
                        // but give the node room instead of spinning.
                        Err(err) => {
                            accept_backoff.failed(&err).await;
                            continue;
                        }
                    };
                    let Ok(slot) = open_connections.clone().try_acquire_owned() else {
                        tokio::spawn(refuse_connection(stream));
                        continue;
                    };
                    let server = server.clone();
                    let header_timeout = server.options.header_timeout;
                    let service = hyper::service::service_fn(move |request| {
                        let server = server.clone();
                        let span = if crate::logging::request_spans() {
                            tracing::info_span!(
                                "http_request",
                                method = %request.method(),
                                path = %request.uri().path(),
                                status = tracing::field::Empty,
                            )
                        } else {
                            tracing::Span::none()
                        };
                        async move {
                            let started = std::time::Instant::now();
                            let response = server.handle(request).await;
                            let status = response.status().as_u16();
                            tracing::Span::current().record("status", status);
                            tracing::debug!(
                                status,
                                elapsed_ms = started.elapsed().as_millis() as u64,
                                "request answered"
                            );
                            Ok::<_, Infallible>(response)
                        }
                        .instrument(span)
                    });
                    // The header timeout also ends idle keep-alive connections: hyper starts
                    // it whenever it waits for the next request's head.
                    let connection = http1::Builder::new()
                        .keep_alive(true)
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), service);
                    let connection = connections.watch(connection);
                    tokio::spawn(async move {
                        let _slot = slot;
                        // A client that goes away mid-request is its own business.
                        let _ = connection.await;
                    });
                }
                () = &mut stop => break,
            }
        }
        drop(listener);
        connections.shutdown().await;
        Outcome::Exited(0)
    }
}

type ServerResponse = Response<WasiBody>;

impl Server {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> ServerResponse {
        if let Some(max) = self.options.max_request_body {
            let declared = request
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok());
            if declared.is_some_and(|length| length > max) {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {max} bytes\n"),
                );
            }
        }
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let timeout = self.options.request_timeout;
        // One deadline from the request's arrival: the wait for a slot counts, so that an
        // overloaded server answers within the timeout instead of queueing without bound.
        let deadline = tokio::time::Instant::now() + timeout;
        let permit = match tokio::time::timeout_at(deadline, self.in_flight.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into()),
            Err(_) => {
                log_line(&format!(
                    "wasm http: {method} {path}: no free slot within the request timeout of \
                     {timeout:?} ({} requests at once)",
                    self.options.max_concurrency
                ));
                return plain(StatusCode::SERVICE_UNAVAILABLE, "overloaded\n".into());
            }
        };
        let request = self.limit_body(request);
        let per_request = match &self.handler {
            Handler::PerRequest(per_request) => per_request.clone(),
            Handler::Shared(handler) => {
                let _permit = permit;
                let request = with_absolute_uri(request);
                return match tokio::time::timeout_at(deadline, handler.handle(deadline, request))
                    .await
                {
                    Ok(Ok(response)) => response,
                    Ok(Err(err)) if err.downcast_ref::<ExpirationError>().is_some() => {
                        timed_out(&method, &path, timeout)
                    }
                    Ok(Err(err)) => {
                        log_line(&format!("wasm http: {method} {path}: {err:#}"));
                        plain(StatusCode::INTERNAL_SERVER_ERROR, "handler error\n".into())
                    }
                    Err(_) => timed_out(&method, &path, timeout),
                };
            }
        };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let guest = tokio::spawn(async move {
            let _permit = permit;
            tokio::time::timeout_at(deadline, per_request.call_guest(deadline, request, sender))
                .await
                .unwrap_or_else(|_| Err(wasmtime::Error::new(RequestTimedOut)))
        });
        let outcome = tokio::time::timeout_at(deadline, receiver).await;
        match outcome {
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(code))) => {
                log_line(&format!(
                    "wasm http: {method} {path}: the handler failed: {code:?}"
                ));
                plain(StatusCode::INTERNAL_SERVER_ERROR, "handler error\n".into())
            }
            Ok(Err(_)) => {
                // The guest returned, trapped or ran out of time without setting a response.
                let reason = match guest.await {
                    Ok(Ok(())) => "the handler set no response".to_string(),
                    Ok(Err(err)) if is_timeout(&err) => return timed_out(&method, &path, timeout),
                    Ok(Err(err)) => format!("{err:#}"),
                    Err(err) => format!("{err}"),
                };
                log_line(&format!("wasm http: {method} {path}: {reason}"));
                plain(StatusCode::INTERNAL_SERVER_ERROR, "handler error\n".into())
            }
            Err(_) => timed_out(&method, &path, timeout),
        }
    }

    /// The request with its body cut off at `max_request_body`, for a body that declared no
    /// length or lied about it.
    fn limit_body(&self, request: Request<Incoming>) -> Request<WasiBody> {
        match self.options.max_request_body {
            Some(max) => {
                let usize_max = usize::try_from(max).unwrap_or(usize::MAX);
                request.map(|body| {
                    Limited::new(body, usize_max)
                        .map_err(move |_| wasmtime_wasi_http::Error::HttpRequestBodySize(Some(max)))
                        .boxed_unsync()
                })
            }
            None => {
                request.map(|body| body.map_err(wasmtime_wasi_http::Error::from).boxed_unsync())
            }
        }
    }
}

impl PerRequest {
    /// Runs a 0.2 handler for `request` in an instance of its own; its CPU is cut off at
    /// `deadline` too.
    async fn call_guest(
        &self,
        deadline: tokio::time::Instant,
        request: Request<WasiBody>,
        sender: tokio::sync::oneshot::Sender<
            Result<ServerResponse, wasmtime_wasi_http::p2::bindings::http::types::ErrorCode>,
        >,
    ) -> wasmtime::Result<()> {
        let mut store = Store::new(&self.engine, self.requests.state());
        store.limiter(|state| &mut state.limits);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        arm(&mut store, Some(remaining), None)?;
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let response = store.data_mut().http().new_response_outparam(sender)?;
        let proxy = self.pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, request, response)
            .await
    }
}

/// The request with scheme (`http`) and authority (the Host header) in its URI, where a 0.3
/// handler reads them; an HTTP/1.1 server receives only the path. A Host that is no authority
/// leaves the URI as it came.
fn with_absolute_uri<B>(mut request: Request<B>) -> Request<B> {
    let authority = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|host| host.to_str().ok())
        .and_then(|host| host.parse::<http::uri::Authority>().ok());
    let mut parts = request.uri().clone().into_parts();
    if parts.authority.is_none() {
        parts.authority = authority;
    }
    if parts.scheme.is_none() {
        parts.scheme = Some(http::uri::Scheme::HTTP);
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
    request
}

/// The guest's own clock (epochs) or the wait for its response ran past the request timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request timed out")]
struct RequestTimedOut;

fn is_timeout(err: &wasmtime::Error) -> bool {
    err.downcast_ref::<RequestTimedOut>().is_some()
        || matches!(
            err.downcast_ref::<wasmtime::Trap>(),
            Some(wasmtime::Trap::Interrupt)
        )
}

/// A connection over `http.max_connections`: told so in one response, then closed.
async fn refuse_connection(mut stream: TcpStream) {
    const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
        content-type: text/plain\r\ncontent-length: 21\r\n\r\ntoo many connections\n";
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(REFUSAL)).await;
    let _ = stream.shutdown().await;
}

/// Failed accepts (out of fds, say) wait a little longer each time, up to a second, and
/// are logged once per run of failures, not once each.
#[derive(Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(5);
    const LONGEST: std::time::Duration = std::time::Duration::from_secs(1);

    async fn failed(&mut self, err: &std::io::Error) {
        if self.failures == 0 {
            log_line(&format!("wasm http: accept failed: {err}; backing off"));
        }
        let wait = Self::FIRST
            .saturating_mul(1 << self.failures.min(10))
            .min(Self::LONGEST);
        self.failures = self.failures.saturating_add(1);
        tokio::time::sleep(wait).await;
    }

    fn succeeded(&mut self) {
        if self.failures > 1 {
            log_line(&format!(
                "wasm http: accepting again after {} failed accepts",
                self.failures
            ));
        }
        self.failures = 0;
    }
}

fn timed_out(method: &hyper::Method, path: &str, timeout: std::time::Duration) -> ServerResponse {
    log_line(&format!(
        "wasm http: {method} {path}: no response within the request timeout of {timeout:?}"
    ));
    plain(StatusCode::GATEWAY_TIMEOUT, "request timed out\n".into())
}

fn plain(status: StatusCode, text: String) -> ServerResponse {
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// The container's stderr is where `kubectl logs` shows a failing request; the runtime's
/// log gets it too, with the container and the request.
pub(super) fn log_line(line: &str) {
    tracing::warn!("{line}");
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(format!("{line}\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_0_3_request_carries_scheme_and_authority() {
        let request = Request::builder()
            .uri("/whoami?x=1")
            .header("host", "pod.local:8080")
            .body(())
            .unwrap();
        assert_eq!(
            with_absolute_uri(request).uri().to_string(),
            "http://pod.local:8080/whoami?x=1"
        );
        let request = Request::builder()
            .uri("/whoami")
            .header("host", "not an authority")
            .body(())
            .unwrap();
        assert_eq!(with_absolute_uri(request).uri().to_string(), "/whoami");
    }

    #[test]
    fn finds_the_handler_export_at_the_top_level_only_and_prefers_0_3() {
        let server = wat::parse_str(
            r#"(component
                (core module $m (func (export "h")))
                (core instance $i (instantiate $m))
                (func $h (canon lift (core func $i "h")))
                (instance $handler (export "handle" (func $h)))
                (export "wasi:http/incoming-handler@0.2.6" (instance $handler)))"#,
        )
        .unwrap();
        assert_eq!(http_handler_export(&server), Some(HttpWorld::P2));
        let command = wat::parse_str(
            r#"(component
                (component $inner
                  (core module $m (func (export "h")))
                  (core instance $i (instantiate $m))
                  (func $h (canon lift (core func $i "h")))
                  (instance $handler (export "handle" (func $h)))
                  (export "wasi:http/incoming-handler@0.2.6" (instance $handler))))"#,
        )
        .unwrap();
        assert_eq!(http_handler_export(&command), None);
        assert_eq!(http_handler_export(b"\0asm\x01\0\0\0"), None);
        let both = wat::parse_str(
            r#"(component
                (core module $m (func (export "h")))
                (core instance $i (instantiate $m))
                (func $h (canon lift (core func $i "h")))
                (instance $old (export "handle" (func $h)))
                (instance $new (export "handle" (func $h)))
                (export "wasi:http/incoming-handler@0.2.6" (instance $old))
                (export "wasi:http/handler@0.3.0" (instance $new)))"#,
        )
        .unwrap();
        assert_eq!(http_handler_export(&both), Some(HttpWorld::P3));
    }
}
