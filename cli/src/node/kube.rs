//! The node label that tells the scheduler Wedge is ready here, and the node condition that
//! tells an operator why it is not, set and removed through the in-cluster API with the
//! pod's service account. reqwest with rustls is already in the tree
//! (oci-client uses it), so no Kubernetes client crate is pulled in for one PATCH.

use std::path::Path;

use super::error::{NodeError, Result};

pub const READY_LABEL: &str = "wedge.dev/ready";

/// The node condition the installer keeps: `True` once containerd runs the runtime, `False`
/// with the reason when the install could not finish (containerd not restarted).
pub const CONDITION_TYPE: &str = "WedgeRuntimeReady";

/// What the installer reports in its node condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeCondition {
    pub ready: bool,
    /// CamelCase, as Kubernetes reasons are.
    pub reason: &'static str,
    pub message: String,
}

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
        self.patch(&self.url, "application/merge-patch+json", patch)
            .await
    }

    /// Sets the installer's node condition (`Some`) or removes it (`None`). A strategic
    /// merge patch of the status subresource merges conditions by type, so the kubelet's
    /// own conditions are left alone.
    pub async fn set_condition(&self, condition: Option<&RuntimeCondition>) -> Result<()> {
        let patch = condition_patch(condition, &chrono::Utc::now());
        self.patch(
            &format!("{}/status", self.url),
            "application/strategic-merge-patch+json",
            patch,
        )
        .await
    }

    async fn patch(&self, url: &str, content_type: &str, patch: serde_json::Value) -> Result<()> {
        let response = self
            .client
            .patch(url)
            .bearer_auth(&self.token)
            .header("Content-Type", content_type)
            .header("Accept", "application/json")
            .body(patch.to_string())
            .send()
            .await
            .map_err(|err| NodeError::Kube(err.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(NodeError::Kube(format!(
                "PATCH {url}: {status}: {}",
                body.chars().take(500).collect::<String>()
            )));
        }
        Ok(())
    }
}

fn condition_patch(
    condition: Option<&RuntimeCondition>,
    now: &chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    let entry = match condition {
        Some(condition) => {
            let now = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            serde_json::json!({
                "type": CONDITION_TYPE,
                "status": if condition.ready { "True" } else { "False" },
                "reason": condition.reason,
                "message": condition.message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            })
        }
        None => serde_json::json!({ "type": CONDITION_TYPE, "$patch": "delete" }),
    };
    serde_json::json!({ "status": { "conditions": [entry] } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_condition_is_merged_by_type_and_removed_by_type() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let set = condition_patch(
            Some(&RuntimeCondition {
                ready: false,
                reason: "ContainerdNotRestarted",
                message: "restart containerd".into(),
            }),
            &now,
        );
        assert_eq!(
            set,
            serde_json::json!({ "status": { "conditions": [{
                "type": "WedgeRuntimeReady",
                "status": "False",
                "reason": "ContainerdNotRestarted",
                "message": "restart containerd",
                "lastHeartbeatTime": "2027-01-15T08:00:00Z",
                "lastTransitionTime": "2027-01-15T08:00:00Z",
            }] } })
        );
        assert_eq!(
            condition_patch(None, &now),
            serde_json::json!({ "status": { "conditions": [
                { "type": "WedgeRuntimeReady", "$patch": "delete" }
            ] } })
        );
    }
}
