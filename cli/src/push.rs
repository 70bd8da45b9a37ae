//! `wedge image push`: uploads an OCI layout archive (as `wedge image build` writes it, in
//! any form) to a registry: blobs first, then manifests bottom-up, the top one under the tag.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};

use crate::oci_archive::{ArchiveError, OciArchive};
use crate::registry_credentials::{self, CredentialSource, Credentials, CredentialsError};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("invalid registry reference {0:?}: {1}")]
    Reference(String, String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot reach registry {registry} ({attempts}): {reason}")]
    Unreachable {
        registry: String,
        reason: String,
        attempts: Attempts,
    },
    #[error(
        "registry {registry} requires authentication (401 Unauthorized) and no credentials \
         were found for it: pass --username and --password-stdin, or log in so the docker \
         config holds them"
    )]
    CredentialsRequired { registry: String },
    #[error(
        "registry {registry} rejected the credentials from {source_of} (401 Unauthorized): \
         check the user name and password"
    )]
    CredentialsRejected {
        registry: String,
        source_of: CredentialSource,
    },
    #[error(
        "registry {registry} denied pushing to {repository} (403 Forbidden) with \
         {source_of}: the account may not push there"
    )]
    Denied {
        registry: String,
        repository: String,
        source_of: CredentialSource,
    },
    #[error(
        "registry {registry} has no repository {repository} (404 Not Found){detail}: some \
         registries need it created before the first push"
    )]
    RepositoryNotFound {
        registry: String,
        repository: String,
        detail: String,
    },
    #[error("registry {registry} failed on {what} ({attempts}): {reason}")]
    Unavailable {
        registry: String,
        what: String,
        reason: String,
        attempts: Attempts,
    },
    #[error("registry {registry} refused {what}: {reason}")]
    Registry {
        registry: String,
        what: String,
        reason: String,
    },
}

/// How many times a request was tried, for errors after retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts(pub u32);

impl std::fmt::Display for Attempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            1 => f.write_str("1 attempt"),
            n => write!(f, "{n} attempts"),
        }
    }
}

/// What was pushed.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: String,
    pub digest: String,
    pub blobs: usize,
}

/// How a push speaks to the registry.
#[derive(Clone)]
pub struct PushOptions {
    pub plain_http: bool,
    pub credentials: CredentialChoice,
    pub retry: RetryPolicy,
}

/// Credentials given on the command line, or the docker config to look them up in.
#[derive(Clone)]
pub enum CredentialChoice {
    Given(Credentials),
    DockerConfig(Option<PathBuf>),
}

/// Transient failures (no connection, timeouts, 429 and 5xx answers) are retried with
/// exponential backoff, as the registry clients of the ecosystem do.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub retries: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 4,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, retry: u32) -> Duration {
        self.first_backoff
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
            .min(self.max_backoff)
    }
}

/// Registries on the loopback interface are spoken to in plain HTTP, as a local test
/// registry is; others need TLS unless `plain_http` says otherwise.
pub fn uses_plain_http(registry: &str, plain_http: bool) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map(|(host, _)| host)
        .unwrap_or(registry);
    plain_http || matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

pub async fn push_archive(
    archive: &Path,
    target: &str,
    options: &PushOptions,
) -> Result<Pushed, PushError> {
    let layout = OciArchive::read(archive)?;
    let reference: Reference = target.parse().map_err(|err: oci_client::ParseError| {
        PushError::Reference(target.into(), err.to_string())
    })?;
    let credentials = match &options.credentials {
        CredentialChoice::Given(credentials) => credentials.clone(),
        CredentialChoice::DockerConfig(Some(path)) => {
            registry_credentials::from_docker_config(path, reference.registry())?
        }
        CredentialChoice::DockerConfig(None) => Credentials::anonymous(),
    };
    let protocol = if uses_plain_http(reference.registry(), options.plain_http) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    let mut pusher = Pusher {
        client,
        reference,
        credentials,
        retry: options.retry,
        layout: &layout,
        blobs: 0,
    };
    pusher
        .with_retries("authentication", |pusher| async move {
            pusher
                .client
                .auth(
                    &pusher.reference,
                    &pusher.credentials.auth,
                    RegistryOperation::Push,
                )
                .await
                .map(drop)
        })
        .await?;
    let top = layout.top.clone();
    let digest = pusher.push_node(&top, true).await?;
    Ok(Pushed {
        reference: pusher.reference.whole(),
        digest,
        blobs: pusher.blobs,
    })
}

struct Pusher<'a> {
    client: Client,
    reference: Reference,
    credentials: Credentials,
    retry: RetryPolicy,
    layout: &'a OciArchive,
    blobs: usize,
}

impl Pusher<'_> {
    /// Pushes what `descriptor` points to and everything below it; the top goes under the
    /// tag, the rest by digest. Returns the digest.
    async fn push_node(&mut self, descriptor: &Descriptor, top: bool) -> Result<String, PushError> {
        let digest = descriptor.digest().to_string();
        let bytes = self.layout.blob(&digest)?.to_vec();
        let malformed = |what: &str, err: &dyn std::fmt::Display| {
            PushError::Archive(ArchiveError::Layout {
                origin: self.layout.origin.clone(),
                reason: format!("{what} {digest}: {err}"),
            })
        };
        match descriptor.media_type() {
            MediaType::ImageIndex => {
                let index =
                    ImageIndex::from_reader(&bytes[..]).map_err(|err| malformed("index", &err))?;
                for child in index.manifests() {
                    Box::pin(self.push_node(child, false)).await?;
                }
            }
            MediaType::ImageManifest => {
                let manifest = ImageManifest::from_reader(&bytes[..])
                    .map_err(|err| malformed("manifest", &err))?;
                self.push_blob(manifest.config()).await?;
                for layer in manifest.layers() {
                    self.push_blob(layer).await?;
                }
            }
            other => {
                return Err(malformed("unsupported top media type", &other));
            }
        }
        let target = if top {
            self.reference.clone()
        } else {
            Reference::with_digest(
                self.reference.registry().to_string(),
                self.reference.repository().to_string(),
                digest.clone(),
            )
        };
        let content_type = http::HeaderValue::from_str(descriptor.media_type().as_ref())
            .map_err(|err| malformed("media type of", &err))?;
        let what = format!("manifest {digest}");
        self.with_retries(&what, |pusher| {
            let (target, bytes, content_type) = (&target, bytes.clone(), content_type.clone());
            async move {
                pusher
                    .client
                    .push_manifest_raw(target, bytes, content_type)
                    .await
                    .map(drop)
            }
        })
        .await?;
        Ok(digest)
    }

    async fn push_blob(&mut self, descriptor: &Descriptor) -> Result<(), PushError> {
        let digest = descriptor.digest().to_string();
        let bytes = self.layout.blob(&digest)?;
        let what = format!("blob {digest}");
        self.with_retries(&what, |pusher| {
            let (bytes, digest) = (bytes.to_vec(), &digest);
            async move {
                pusher
                    .client
                    .push_blob(&pusher.reference, bytes, digest)
                    .await
                    .map(drop)
            }
        })
        .await?;
        self.blobs += 1;
        Ok(())
    }

    /// Runs `request` until it succeeds, fails for good, or the retries are spent.
    async fn with_retries<'p, F, Fut>(&'p self, what: &str, request: F) -> Result<(), PushError>
    where
        F: Fn(&'p Self) -> Fut,
        Fut: Future<Output = Result<(), OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            match request(self).await {
                Ok(()) => return Ok(()),
                Err(err) if is_transient(&err) && attempt <= self.retry.retries => {
                    let wait = self.retry.backoff(attempt - 1);
                    eprintln!(
                        "wedge: {what}: {}; retrying in {:.1}s ({} of {} attempts)",
                        root_cause(&err),
                        wait.as_secs_f32(),
                        attempt + 1,
                        self.retry.retries + 1
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(err) => return Err(self.explain(err, what, Attempts(attempt))),
            }
        }
    }

    /// The error a user can act on, by what the registry answered.
    fn explain(&self, err: OciDistributionError, what: &str, attempts: Attempts) -> PushError {
        let registry = self.reference.registry().to_string();
        let repository = self.reference.repository().to_string();
        let source_of = self.credentials.source.clone();
        match answer(&err) {
            Answer::Status(401) if self.credentials.is_anonymous() => {
                PushError::CredentialsRequired { registry }
            }
            Answer::Status(401) => PushError::CredentialsRejected {
                registry,
                source_of,
            },
            Answer::Status(403) => PushError::Denied {
                registry,
                repository,
                source_of,
            },
            Answer::RepositoryUnknown(detail) => PushError::RepositoryNotFound {
                registry,
                repository,
                detail: detail.map(|d| format!(": {d}")).unwrap_or_default(),
            },
            Answer::Status(status) if status == 429 || status >= 500 => PushError::Unavailable {
                registry,
                what: what.into(),
                reason: root_cause(&err),
                attempts,
            },
            Answer::NoConnection => PushError::Unreachable {
                registry,
                reason: root_cause(&err),
                attempts,
            },
            Answer::Status(_) | Answer::Other => PushError::Registry {
                registry,
                what: what.into(),
                reason: root_cause(&err),
            },
        }
    }
}

/// What the registry said, as far as the error shows it.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    NoConnection,
    Status(u16),
    /// 404 for the repository itself (not for one of its blobs or manifests).
    RepositoryUnknown(Option<String>),
    Other,
}

fn answer(err: &OciDistributionError) -> Answer {
    match err {
        OciDistributionError::RequestError(err) if err.is_connect() || err.is_timeout() => {
            Answer::NoConnection
        }
        OciDistributionError::RequestError(err) => err
            .status()
            .map_or(Answer::Other, |s| Answer::Status(s.as_u16())),
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Answer::Status(401),
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope_answer(envelope).unwrap_or(Answer::Other)
        }
        OciDistributionError::ServerError { code, message, .. } => {
            let envelope = serde_json::from_str::<OciEnvelope>(message).ok();
            match envelope.as_ref().and_then(envelope_answer) {
                Some(answer) => answer,
                None if *code == 404 => Answer::RepositoryUnknown(None),
                None => Answer::Status(*code),
            }
        }
        _ => Answer::Other,
    }
}

fn envelope_answer(envelope: &OciEnvelope) -> Option<Answer> {
    let first = envelope.errors.first()?;
    Some(match first.code {
        OciErrorCode::Unauthorized => Answer::Status(401),
        OciErrorCode::Denied => Answer::Status(403),
        OciErrorCode::NameUnknown => Answer::RepositoryUnknown(
            Some(first.message.clone()).filter(|message| !message.is_empty()),
        ),
        OciErrorCode::Toomanyrequests => Answer::Status(429),
        _ => return None,
    })
}

/// Connection failures, timeouts, throttling and server errors may pass; the rest will not.
fn is_transient(err: &OciDistributionError) -> bool {
    match answer(err) {
        Answer::NoConnection => true,
        Answer::Status(status) => status == 429 || status >= 500,
        Answer::RepositoryUnknown(_) | Answer::Other => {
            matches!(err, OciDistributionError::RequestError(err) if err.is_request() || err.is_body())
        }
    }
}

/// The innermost cause ("Connection refused (os error 111)"), which the registry client's
/// own wrappers ("error sending request") hide.
fn root_cause(err: &OciDistributionError) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    match err {
        OciDistributionError::RequestError(_) => cause.to_string(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    #[test]
    fn loopback_registries_use_plain_http() {
        assert!(uses_plain_http("127.0.0.1:5000", false));
        assert!(uses_plain_http("localhost:5000", false));
        assert!(uses_plain_http("localhost", false));
        assert!(!uses_plain_http("ghcr.io", false));
        assert!(uses_plain_http("ghcr.io", true));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let policy = RetryPolicy::default();
        let waits: Vec<_> = (0..6).map(|retry| policy.backoff(retry)).collect();
        assert_eq!(waits[0], Duration::from_millis(500));
        assert_eq!(waits[1], Duration::from_secs(1));
        assert_eq!(waits[4], Duration::from_secs(8));
        assert_eq!(policy.backoff(40), Duration::from_secs(8));
    }

    /// A one-image archive to push.
    fn archive(dir: &Path) -> PathBuf {
        use crate::image::write_layout;
        use crate::module_image::{module_image, ModuleForm, ModuleImageSpec};
        let content = module_image(&ModuleImageSpec {
            reference: "wedge.test/hello:v1".into(),
            module: b"\0asm\x01\0\0\0".to_vec(),
            form: ModuleForm::Layer(None),
            entrypoint: vec!["/hello.wasm".into()],
            cmd: vec![],
            env: vec![],
            workdir: None,
            files: vec![],
        })
        .unwrap();
        let path = dir.join("hello.tar");
        write_layout(&content, std::fs::File::create(&path).unwrap()).unwrap();
        path
    }

    /// Requests a stand-in registry saw: "METHOD /path".
    type Seen = Arc<Mutex<Vec<String>>>;

    /// A registry stand-in on 127.0.0.1 that answers each request with what `answer` says
    /// for it (status, body), given the requests seen so far.
    fn stand_in_registry(
        answer: impl Fn(&str, &[String]) -> (u16, String) + Send + 'static,
    ) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let request = read_request(&stream);
                let (status, body) = {
                    let mut log = log.lock().unwrap();
                    let reply = answer(&request, &log);
                    log.push(request);
                    reply
                };
                let _ = write!(
                    &stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (address, seen)
    }

    fn read_request(stream: &TcpStream) -> String {
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        let _ = reader.read_line(&mut first);
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        let _ = reader.read_exact(&mut body);
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        format!("{method} {}", path.split('?').next().unwrap_or_default())
    }

    fn envelope(code: &str) -> String {
        format!(r#"{{"errors":[{{"code":"{code}","message":"{code} said the registry"}}]}}"#)
    }

    fn options(credentials: Credentials) -> PushOptions {
        PushOptions {
            plain_http: true,
            credentials: CredentialChoice::Given(credentials),
            retry: RetryPolicy {
                retries: 3,
                first_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(4),
            },
        }
    }

    fn push(address: &str, credentials: Credentials) -> PushError {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(push_archive(
                &archive(dir.path()),
                &format!("{address}/team/hello:v1"),
                &options(credentials),
            ))
            .expect_err("the push should fail")
    }

    const UPLOAD: &str = "POST /v2/team/hello/blobs/uploads/";

    #[test]
    fn a_refused_connection_is_retried_then_named() {
        let address = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let err = push(&address, Credentials::anonymous());
        let text = err.to_string();
        assert!(
            matches!(
                err,
                PushError::Unreachable {
                    attempts: Attempts(4),
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("cannot reach registry"), "{text}");
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
    }

    #[test]
    fn server_errors_are_retried_and_a_denial_is_not() {
        let (address, seen) = stand_in_registry(|request, seen| match request {
            "GET /v2/" => (200, "{}".into()),
            UPLOAD if seen.iter().filter(|r| *r == UPLOAD).count() < 2 => (503, "busy".into()),
            _ => (403, envelope("DENIED")),
        });
        let err = push(&address, Credentials::basic("dev".into(), "pw".into()));
        let text = err.to_string();
        assert!(matches!(err, PushError::Denied { .. }), "{text}");
        assert!(text.contains("403 Forbidden"), "{text}");
        assert!(text.contains("team/hello"), "{text}");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.iter().filter(|r| *r == UPLOAD).count(), 3, "{seen:?}");
    }

    #[test]
    fn server_errors_that_last_are_reported_with_the_attempts() {
        let (address, seen) = stand_in_registry(|request, _| match request {
            "GET /v2/" => (200, "{}".into()),
            _ => (502, "bad gateway".into()),
        });
        let err = push(&address, Credentials::anonymous());
        let text = err.to_string();
        assert!(
            matches!(
                err,
                PushError::Unavailable {
                    attempts: Attempts(4),
                    ..
                }
            ),
            "{text}"
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.iter().filter(|r| *r == UPLOAD).count(), 4, "{seen:?}");
    }

    #[test]
    fn a_401_asks_for_credentials_or_names_the_ones_rejected() {
        let (address, _) = stand_in_registry(|request, _| match request {
            "GET /v2/" => (200, "{}".into()),
            _ => (401, envelope("UNAUTHORIZED")),
        });
        let anonymous = push(&address, Credentials::anonymous());
        assert!(
            matches!(anonymous, PushError::CredentialsRequired { .. }),
            "{anonymous}"
        );
        assert!(anonymous.to_string().contains("--password-stdin"));
        let rejected = push(&address, Credentials::basic("dev".into(), "wrong".into()));
        assert!(
            matches!(rejected, PushError::CredentialsRejected { .. }),
            "{rejected}"
        );
        assert!(rejected.to_string().contains("--username"), "{rejected}");
    }

    #[test]
    fn a_missing_repository_is_named() {
        let (address, _) = stand_in_registry(|request, _| match request {
            "GET /v2/" => (200, "{}".into()),
            _ => (404, envelope("NAME_UNKNOWN")),
        });
        let err = push(&address, Credentials::anonymous());
        let text = err.to_string();
        assert!(
            matches!(err, PushError::RepositoryNotFound { .. }),
            "{text}"
        );
        assert!(text.contains("no repository team/hello"), "{text}");
    }
}
