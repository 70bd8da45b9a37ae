//! The node label that tells the scheduler Wedge is ready here, set and removed through the
//! in-cluster API with the pod's service account. reqwest with rustls is already in the tree
//! (oci-client uses it), so no Kubernetes client crate is pulled in for one PATCH.

use std::path::Path;

use super::error::{NodeError, Result};

pub const READY_LABEL: &str = "wedge.dev/ready";

const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

pub struct NodeLabeler {
    client: reqwest::Client,
    url: String,
    token: String,
    node: String,
}

impl NodeLabeler {
    /// From the in-cluster environment: `KUBERNETES_SERVICE_HOST`/`_PORT`, the service
    /// account's token and CA, and `NODE_NAME` (set from `spec.nodeName`).
    pub fn from_env() -> Result<Self> {
        let env = |name: &'static str| std::env::var(name).map_err(|_| NodeError::MissingEnv(name));
        let host = env("KUBERNETES_SERVICE_HOST")?;
        let port = env("KUBERNETES_SERVICE_PORT")?;
        let node = env("NODE_NAME")?;
        let valid_name = !node.is_empty()
            && node.len() <= 253
            && node
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid_name {
            return Err(NodeError::InvalidNodeName(node));
        }
        let dir = Path::new(SERVICE_ACCOUNT_DIR);
        let token = std::fs::read_to_string(dir.join("token"))
            .map_err(NodeError::io("cannot read", dir.join("token")))?;
        let ca = std::fs::read(dir.join("ca.crt"))
            .map_err(NodeError::io("cannot read", dir.join("ca.crt")))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&ca)
            .map_err(|err| NodeError::Kube(format!("service account CA: {err}")))?;
        let client = reqwest::Client::builder()
            .tls_certs_only(certificates)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|err| NodeError::Kube(err.to_string()))?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(NodeLabeler {
            client,
            url: format!("https://{host}:{port}/api/v1/nodes/{node}"),
            token: token.trim().to_string(),
            node,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Sets the ready label (`Some("true")`) or removes it (`None`), by JSON merge patch.
    pub async fn set_ready(&self, value: Option<&str>) -> Result<()> {
        let patch = serde_json::json!({ "metadata": { "labels": { READY_LABEL: value } } });
        let response = self
            .client
            .patch(&self.url)
            .bearer_auth(&self.token)
            .header("Content-Type", "application/merge-patch+json")
            .header("Accept", "application/json")
            .body(patch.to_string())
            .send()
            .await
            .map_err(|err| NodeError::Kube(err.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(NodeError::Kube(format!(
                "PATCH node {}: {status}: {}",
                self.node,
                body.chars().take(500).collect::<String>()
            )));
        }
        Ok(())
    }
}
