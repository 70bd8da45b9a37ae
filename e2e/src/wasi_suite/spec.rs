//! A test's JSON, as the official WASI test suite writes it: the operation-based form, and the
//! older form (`args`, `env`, `root`, `exit_code`, `stdout`, `stderr`) turned into operations.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TestSpec {
    pub proposals: Vec<String>,
    pub world: Option<String>,
    /// A directory (relative to the JSON) the guest sees as `/`.
    pub root: Option<String>,
    pub servers: Vec<ServerSpec>,
    pub operations: Vec<Operation>,
    // The older form.
    args: Vec<String>,
    env: BTreeMap<String, String>,
    exit_code: Option<i32>,
    stdout: Option<String>,
    stderr: Option<String>,
}

impl TestSpec {
    /// The operations to run: the file's own, else those its older fields describe (`run`, a
    /// `read` per expected stream, `wait`).
    pub fn operations(&self) -> Vec<Operation> {
        if !self.operations.is_empty() {
            return self.operations.clone();
        }
        let mut operations = vec![Operation::Run {
            args: self.args.clone(),
            env: self.env.clone(),
        }];
        for (stream, payload) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if let Some(payload) = payload.as_ref().filter(|payload| !payload.is_empty()) {
                operations.push(Operation::Read {
                    id: stream.to_string(),
                    payload: payload.clone(),
                });
            }
        }
        operations.push(Operation::Wait {
            exit_code: self.exit_code.unwrap_or(0),
        });
        operations
    }

    /// Whether the test talks to the network: sockets, HTTP, or servers to call.
    pub fn uses_network(&self) -> bool {
        self.is_http_service()
            || !self.servers.is_empty()
            || self
                .proposals
                .iter()
                .any(|proposal| proposal == "sockets" || proposal == "http")
    }

    /// Whether the component is an HTTP service the runner sends requests to.
    pub fn is_http_service(&self) -> bool {
        self.world.as_deref() == Some("wasi:http/service")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Operation {
    Run {
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    Wait {
        #[serde(default)]
        exit_code: i32,
    },
    Read {
        #[serde(default = "stdout")]
        id: String,
        #[serde(default)]
        payload: String,
    },
    Write {
        #[serde(default = "stdin")]
        id: String,
        #[serde(default)]
        payload: String,
    },
    Request(RequestSpec),
    Kill {
        #[serde(default = "sigterm")]
        signal: String,
    },
    Connect {
        #[serde(default = "server")]
        id: String,
        #[serde(default = "tcp")]
        protocol_type: String,
    },
    Send {
        id: String,
        #[serde(default)]
        payload: String,
    },
    Recv {
        id: String,
        #[serde(default)]
        payload: String,
    },
}

fn stdout() -> String {
    "stdout".into()
}
fn stdin() -> String {
    "stdin".into()
}
fn sigterm() -> String {
    "SIGTERM".into()
}
fn server() -> String {
    "server".into()
}
fn tcp() -> String {
    "tcp".into()
}
fn get() -> String {
    "GET".into()
}
fn root_path() -> String {
    "/".into()
}
fn ok() -> u16 {
    200
}

/// A request the runner sends to the component, and the response it expects: the status,
/// each named header with that value (others may come too), and exactly this body.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestSpec {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "root_path")]
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub response: ExpectedResponse,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedResponse {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

impl Default for ExpectedResponse {
    fn default() -> Self {
        ExpectedResponse {
            status: 200,
            headers: BTreeMap::new(),
            body: String::new(),
        }
    }
}

/// An HTTP server the runner starts for the component to call; its address reaches the
/// guest as `HTTP_SERVER_<NAME>=127.0.0.1:PORT`.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerSpec {
    pub name: String,
    /// `listening` (the default) or `closed`: an address nothing listens on.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EndpointSpec {
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "root_path")]
    pub path: String,
    /// `static` (the default: answer `response`), `echo-body` or `echo-headers`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub response: Option<CannedResponse>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CannedResponse {
    pub status: Option<u16>,
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// A chunked body, one chunk per entry, then `trailers`.
    pub chunks: Option<Vec<String>>,
    pub trailers: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_older_form_becomes_run_read_wait() {
        let spec: TestSpec =
            serde_json::from_str(r#"{"args": ["a"], "stdout": "hi", "exit_code": 3}"#).unwrap();
        let operations = spec.operations();
        assert!(matches!(&operations[0], Operation::Run { args, .. } if args == &["a"]));
        assert!(
            matches!(&operations[1], Operation::Read { id, payload } if id == "stdout" && payload == "hi")
        );
        assert!(matches!(operations[2], Operation::Wait { exit_code: 3 }));
        let spec: TestSpec = serde_json::from_str(r#"{"root": "fs-tests.dir"}"#).unwrap();
        assert_eq!(spec.root.as_deref(), Some("fs-tests.dir"));
        assert_eq!(spec.operations().len(), 2);
    }

    #[test]
    fn requests_default_to_a_get_of_slash_expecting_an_empty_200() {
        let spec: TestSpec = serde_json::from_str(
            r#"{"world": "wasi:http/service", "operations": [{"type": "run"},
                {"type": "request"}, {"type": "kill", "signal": "SIGINT"}, {"type": "wait"}]}"#,
        )
        .unwrap();
        assert!(spec.is_http_service());
        let Operation::Request(request) = &spec.operations()[1] else {
            panic!("not a request");
        };
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/")
        );
        assert_eq!(request.response.status, 200);
        assert!(request.response.body.is_empty());
    }
}
