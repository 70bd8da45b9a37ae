//! `wasi:http/outgoing-handler` under the same `[network]` policy as `wasi:sockets`.
//!
//! The destination is resolved once, every address checked, and the connection made to a
//! checked address. Handing the request to a client that resolves the name again would let
//! a DNS answer change between the check and the connect (DNS rebinding: a public address
//! for the check, 169.254.169.254 for the connect).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};
use wedge_runtime_config::NetworkConfig;

/// wasmtime's own defaults where the guest sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The response and the future that drives the connection to its end.
pub type OutgoingResponse = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

pub struct OutgoingPolicy {
    pub network: Arc<NetworkConfig>,
}

impl wasmtime_wasi_http::WasiHttpHooks for OutgoingPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = OutgoingResponse> + Send> {
        let network = Arc::clone(&self.network);
        Box::new(send_checked(request, options, network, system_resolver))
    }
}

async fn system_resolver(host: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((host.as_str(), port))
        .await?
        .collect())
}

/// Sends `request` to an address `resolve` gave for its host, once `network` permits every
/// address given.
pub async fn send_checked<R, F>(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    network: Arc<NetworkConfig>,
    resolve: R,
) -> OutgoingResponse
where
    R: FnOnce(String, u16) -> F,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>>,
{
    let (host, port) = destination(request.uri()).ok_or(Error::HttpRequestUriInvalid)?;
    let host = host.to_string();
    let tls = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
    permitted_before_lookup(&network, &host, port)?;
    let addresses = resolve(host.clone(), port)
        .await
        .map_err(|_| Error::DestinationNotFound)?;
    if addresses.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    if addresses
        .iter()
        .any(|address| !network.permits(address.ip()))
    {
        return Err(Error::DestinationIpProhibited);
    }
    let timeout = |pick: fn(&RequestOptions) -> Option<Duration>| {
        options.as_ref().and_then(pick).unwrap_or(DEFAULT_TIMEOUT)
    };
    let connect_timeout = timeout(|options| options.connect_timeout);
    let first_byte_timeout = timeout(|options| options.first_byte_timeout);
    let between_bytes_timeout = timeout(|options| options.between_bytes_timeout);

    let stream = connect_to_one(&addresses, connect_timeout).await?;
    let stream: Box<dyn Stream> = if tls {
        let server_name = server_name(&host)?;
        Box::new(
            tokio_rustls::TlsConnector::from(tls_config())
                .connect(server_name, stream)
                .await
                .map_err(Error::Tls)?,
        )
    } else {
        Box::new(stream)
    };
    let (mut sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // Origin form on the wire: scheme and authority go only to a proxy.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;

    let mut connection = Box::pin(connection);
    let mut connection_ended = false;
    let send = tokio::time::timeout(first_byte_timeout, sender.send_request(request));
    tokio::pin!(send);
    // The response arrives only while the connection is driven.
    let response = tokio::select! {
        response = &mut send => response,
        ended = &mut connection => {
            connection_ended = true;
            ended.map_err(Error::from)?;
            send.await
        }
    }
    .map_err(|_| Error::ConnectionReadTimeout)?
    .map_err(Error::from)?;
    let response = response.map(|incoming| {
        TimedBody {
            incoming,
            stall: Box::pin(tokio::time::sleep(between_bytes_timeout)),
            between_bytes: between_bytes_timeout,
        }
        .boxed_unsync()
    });
    let drive: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
        if connection_ended {
            return Ok(());
        }
        connection.await.map_err(|err| {
            if err.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(err)
            }
        })
    });
    Ok((response, drive))
}

/// What the policy decides from the request alone, before a name reaches any resolver: the
/// same switches as `wasi:sockets` (HTTP is TCP; a name needs name lookup), the hostname
/// rules, and whether any address may be reached at all. An IP literal is checked against
/// the address rules here too, so that it is never "resolved".
fn permitted_before_lookup(network: &NetworkConfig, host: &str, port: u16) -> Result<(), Error> {
    let literal = host.parse::<std::net::IpAddr>().ok();
    if !network.tcp || !network.reaches_anything() || !network.permits_host(host, port) {
        return Err(Error::HttpRequestDenied);
    }
    match literal {
        Some(address) if !network.permits(address) => Err(Error::DestinationIpProhibited),
        Some(_) => Ok(()),
        None if !network.ip_name_lookup => Err(Error::HttpRequestDenied),
        None => Ok(()),
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// The first of `addresses` that accepts a connection.
async fn connect_to_one(addresses: &[SocketAddr], timeout: Duration) -> Result<TcpStream, Error> {
    let mut last_error = Error::DestinationNotFound;
    for address in addresses {
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) => last_error = Error::Connect(err),
            Err(_) => last_error = Error::ConnectionTimeout,
        }
    }
    Err(last_error)
}

fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, Error> {
    use rustls::pki_types::ServerName;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    ServerName::try_from(host.to_string()).map_err(Error::InvalidDnsNameError)
}

/// The web's root certificates, as wasmtime's own client trusts; built once per runner.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }))
}

/// The host (an IPv6 literal without its brackets, so that it is not looked up as a name)
/// and port an outgoing request goes to.
pub fn destination(uri: &http::Uri) -> Option<(&str, u16)> {
    let authority = uri.authority()?;
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|literal| literal.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port))
}

/// A response body that fails when the server goes quiet for longer than the guest's
/// between-bytes timeout.
struct TimedBody {
    incoming: Incoming,
    stall: Pin<Box<tokio::time::Sleep>>,
    between_bytes: Duration,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.between_bytes;
                self.stall.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) if err.is_timeout() => {
                Poll::Ready(Some(Err(Error::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(Error::from(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.stall.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ipv6_literal_destinations_resolve_to_themselves() {
        let uri: http::Uri = "http://[::1]:8080/x".parse().unwrap();
        let (host, port) = destination(&uri).unwrap();
        assert_eq!((host, port), ("::1", 8080));
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .unwrap()
            .collect();
        assert_eq!(resolved, vec!["[::1]:8080".parse::<SocketAddr>().unwrap()]);
        let https: http::Uri = "https://example.com/".parse().unwrap();
        assert_eq!(destination(&https), Some(("example.com", 443)));
        let plain: http::Uri = "http://10.0.0.1/".parse().unwrap();
        assert_eq!(destination(&plain), Some(("10.0.0.1", 80)));
        let relative: http::Uri = "/only/a/path".parse().unwrap();
        assert_eq!(destination(&relative), None);
    }

    fn loopback_only() -> Arc<NetworkConfig> {
        Arc::new(NetworkConfig {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            ..NetworkConfig::default()
        })
    }

    fn get(uri: &str) -> http::Request<WasiBody> {
        http::Request::get(uri)
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    /// A one-shot HTTP server on loopback answering `body`.
    async fn serve_once(body: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        });
        address
    }

    /// The connection goes to the address that was checked, never to a second answer for
    /// the same name: a name the system cannot resolve at all is reached through the
    /// checked address alone.
    #[tokio::test]
    async fn the_connection_goes_to_the_address_that_was_checked() {
        let server = serve_once("checked").await;
        let resolver = move |host: String, port: u16| async move {
            assert_eq!((host.as_str(), port), ("rebinding.invalid", 8080));
            Ok(vec![server])
        };
        let (response, drive) = send_checked(
            get("http://rebinding.invalid:8080/x"),
            None,
            loopback_only(),
            resolver,
        )
        .await
        .unwrap();
        tokio::spawn(Box::into_pin(drive));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"checked");
    }

    /// A resolver stand-in that records every name it is asked for and answers loopback.
    fn recording_resolver(
        asked: &Arc<std::sync::Mutex<Vec<String>>>,
    ) -> impl FnOnce(String, u16) -> std::future::Ready<std::io::Result<Vec<SocketAddr>>> {
        let asked = Arc::clone(asked);
        move |host: String, port: u16| {
            asked.lock().unwrap().push(host);
            std::future::ready(Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]))
        }
    }

    /// A name the policy refuses never reaches the resolver: the lookup itself would carry
    /// it out of the node (`<secret>.attacker.example`).
    #[tokio::test]
    async fn a_refused_name_is_never_looked_up() {
        let refusing = [
            (
                "no address allowed",
                NetworkConfig {
                    allow: vec![],
                    ..NetworkConfig::default()
                },
            ),
            (
                "tcp off",
                NetworkConfig {
                    tcp: false,
                    ..NetworkConfig::default()
                },
            ),
            (
                "name lookup off",
                NetworkConfig {
                    ip_name_lookup: false,
                    ..NetworkConfig::default()
                },
            ),
            (
                "a denied name",
                NetworkConfig {
                    deny_hosts: vec!["*.attacker.example".parse().unwrap()],
                    ..NetworkConfig::default()
                },
            ),
            (
                "a name not allowed",
                NetworkConfig {
                    allow_hosts: vec!["api.example.com:443".parse().unwrap()],
                    ..NetworkConfig::default()
                },
            ),
        ];
        for (why, network) in refusing {
            let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
            let refused = send_checked(
                get("http://s3cr3t.attacker.example/"),
                None,
                Arc::new(network),
                recording_resolver(&asked),
            )
            .await;
            assert!(matches!(refused, Err(Error::HttpRequestDenied)), "{why}");
            assert!(
                asked.lock().unwrap().is_empty(),
                "{why}: looked up {asked:?}"
            );
        }
        // An allowed name is looked up, once.
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = serve_once("allowed").await;
        let allowed = NetworkConfig {
            allow_hosts: vec![format!("*.example.com:{}", server.port()).parse().unwrap()],
            ..(*loopback_only()).clone()
        };
        let (response, drive) = send_checked(
            get(&format!("http://api.example.com:{}/", server.port())),
            None,
            Arc::new(allowed),
            recording_resolver(&asked),
        )
        .await
        .unwrap();
        tokio::spawn(Box::into_pin(drive));
        assert_eq!(response.status(), 200);
        assert_eq!(*asked.lock().unwrap(), vec!["api.example.com".to_string()]);
    }

    /// An IP literal meets the address rules before anything else: never "resolved".
    #[tokio::test]
    async fn a_forbidden_ip_literal_is_refused_without_a_lookup() {
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = send_checked(
            get("http://169.254.169.254/latest/meta-data/"),
            None,
            loopback_only(),
            recording_resolver(&asked),
        )
        .await;
        assert!(matches!(refused, Err(Error::DestinationIpProhibited)));
        assert!(asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_answer_with_one_forbidden_address_is_refused() {
        let resolver = |_host: String, port: u16| async move {
            Ok(vec![
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from(([169, 254, 169, 254], port)),
            ])
        };
        let refused = send_checked(
            get("http://metadata.invalid/"),
            None,
            loopback_only(),
            resolver,
        )
        .await;
        assert!(matches!(refused, Err(Error::DestinationIpProhibited)));
    }
}
