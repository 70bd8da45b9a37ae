//! Which credentials a push presents to a registry: those given on the command line, else
//! what the docker config (`$DOCKER_CONFIG/config.json`, `~/.docker/config.json`) holds for
//! the registry (inline `auths`, `credHelpers`, `credsStore`), else none, as `docker push` and
//! the other OCI tools resolve them.

use std::fmt;
use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;

/// The key Docker Hub's credentials are stored under in a docker config.
const DOCKER_HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read docker config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("docker config {path} has no usable credentials for {registry}: {reason}")]
    Unusable {
        path: PathBuf,
        registry: String,
        reason: String,
    },
}

/// Credentials for one registry and where they came from, for messages.
#[derive(Clone)]
pub struct Credentials {
    pub auth: RegistryAuth,
    pub source: CredentialSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    None,
    CommandLine,
    DockerConfig(PathBuf),
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::None => f.write_str("no credentials"),
            CredentialSource::CommandLine => f.write_str("--username/--password-stdin"),
            CredentialSource::DockerConfig(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Credentials {
    pub fn anonymous() -> Self {
        Credentials {
            auth: RegistryAuth::Anonymous,
            source: CredentialSource::None,
        }
    }

    pub fn basic(username: String, password: String) -> Self {
        Credentials {
            auth: RegistryAuth::Basic(username, password),
            source: CredentialSource::CommandLine,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.source == CredentialSource::None
    }
}

/// The docker config file the environment names: `$DOCKER_CONFIG/config.json`, else
/// `$HOME/.docker/config.json`.
pub fn docker_config_path(
    docker_config: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    docker_config
        .map(PathBuf::from)
        .or_else(|| home.map(|home| Path::new(home).join(".docker")))
        .map(|dir| dir.join("config.json"))
}

/// The docker config's key for `registry` (as an OCI reference names it).
pub fn config_key(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_CONFIG_KEY,
        other => other,
    }
}

/// Credentials the docker config at `path` holds for `registry`; anonymous when there is no
/// such file or it has nothing for the registry.
pub fn from_docker_config(path: &Path, registry: &str) -> Result<Credentials, CredentialsError> {
    let config = match std::fs::read(path) {
        Ok(config) => config,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Credentials::anonymous())
        }
        Err(source) => {
            return Err(CredentialsError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let unusable = |reason: String| CredentialsError::Unusable {
        path: path.to_path_buf(),
        registry: registry.to_string(),
        reason,
    };
    match docker_credential::get_credential_from_reader(&config[..], config_key(registry)) {
        Ok(DockerCredential::UsernamePassword(username, password)) => Ok(Credentials {
            auth: RegistryAuth::Basic(username, password),
            source: CredentialSource::DockerConfig(path.to_path_buf()),
        }),
        // An identity token is an OAuth2 refresh token, which the registry client cannot
        // exchange; sending it as a bearer token would fail with a misleading 401.
        Ok(DockerCredential::IdentityToken(_)) => Err(unusable(
            "it holds an identity token, which wedge cannot use; pass --username and \
             --password-stdin instead"
                .into(),
        )),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(Credentials::anonymous()),
        // A helper that knows nothing of the registry answers as docker's helpers do.
        Err(CredentialRetrievalError::HelperFailure { stdout, .. })
            if stdout.contains("credentials not found") =>
        {
            Ok(Credentials::anonymous())
        }
        Err(CredentialRetrievalError::HelperFailure { helper, stderr, .. }) => Err(unusable(
            format!("credential helper {helper} failed: {}", stderr.trim()),
        )),
        Err(CredentialRetrievalError::HelperCommunicationError) => Err(unusable(
            "its credential helper (docker-credential-*) could not be run; is it on PATH?".into(),
        )),
        Err(err) => Err(unusable(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn config(dir: &Path, json: &str) -> PathBuf {
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        path
    }

    fn basic(credentials: &Credentials) -> Option<(&str, &str)> {
        match &credentials.auth {
            RegistryAuth::Basic(user, password) => Some((user, password)),
            _ => None,
        }
    }

    #[test]
    fn the_config_path_follows_docker_config_then_home() {
        assert_eq!(
            docker_config_path(Some(OsStr::new("/etc/d")), Some(OsStr::new("/root"))),
            Some(PathBuf::from("/etc/d/config.json"))
        );
        assert_eq!(
            docker_config_path(None, Some(OsStr::new("/root"))),
            Some(PathBuf::from("/root/.docker/config.json"))
        );
        assert_eq!(docker_config_path(None, None), None);
    }

    #[test]
    fn inline_auths_are_found_for_the_registry_host() {
        let dir = tempfile::tempdir().unwrap();
        // "user:secret" in base64.
        let path = config(
            dir.path(),
            r#"{"auths":{"registry.example:5000":{"auth":"dXNlcjpzZWNyZXQ="}}}"#,
        );
        let found = from_docker_config(&path, "registry.example:5000").unwrap();
        assert_eq!(basic(&found), Some(("user", "secret")));
        assert_eq!(found.source, CredentialSource::DockerConfig(path.clone()));
        let other = from_docker_config(&path, "other.example").unwrap();
        assert!(other.is_anonymous());
    }

    #[test]
    fn docker_hub_credentials_are_under_the_index_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = config(
            dir.path(),
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpzZWNyZXQ="}}}"#,
        );
        let found = from_docker_config(&path, "docker.io").unwrap();
        assert_eq!(basic(&found), Some(("user", "secret")));
    }

    #[test]
    fn a_missing_config_means_anonymous_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = from_docker_config(&dir.path().join("none.json"), "r.example").unwrap();
        assert!(missing.is_anonymous());
        let path = config(dir.path(), "{not json");
        let err = from_docker_config(&path, "r.example")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn identity_tokens_are_refused_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = config(
            dir.path(),
            r#"{"auths":{"r.example":{"identitytoken":"tok"}}}"#,
        );
        let err = from_docker_config(&path, "r.example")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--password-stdin"), "{err}");
    }

    #[test]
    fn a_missing_credential_helper_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = config(
            dir.path(),
            r#"{"credHelpers":{"r.example":"wedge-test-no-such-helper"}}"#,
        );
        let err = from_docker_config(&path, "r.example")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("credential helper"), "{err}");
    }
}
