//! What an operator sees of Wedge at work: log lines in the chosen format that name the
//! container and its pod, from the shim and from the runner (HTTP requests included), in
//! containerd's log where the shim's lines go.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use wedge_e2e::containerd::CriOptions;
use wedge_e2e::cri::WEDGE_HANDLER;
use wedge_e2e::http_load::{self, wait_listening};
use wedge_e2e::otlp_receiver::OtlpReceiver;
use wedge_e2e::{components, ContainerSpec, Containerd, CriNode, Release};

/// Puts `lines` at the top of the engine config every Create reads.
fn prepend_engine_config(node: &CriNode, lines: &str) -> Result<()> {
    let path = node.containerd.engine_config();
    let current = std::fs::read_to_string(&path)?;
    std::fs::write(&path, format!("{lines}{current}"))?;
    Ok(())
}

/// The JSON lines of containerd's log that are about container `id`.
fn json_lines_of(node: &CriNode, id: &str) -> Vec<Value> {
    node.containerd
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|value| value["id"] == id)
        .collect()
}

fn wait_for_line(
    node: &CriNode,
    id: &str,
    what: &str,
    matches: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = json_lines_of(node, id).into_iter().find(&matches) {
            return Ok(line);
        }
        if Instant::now() > deadline {
            let seen: Vec<String> = json_lines_of(node, id)
                .iter()
                .map(Value::to_string)
                .collect();
            bail!("no line {what} for {id}; its lines:\n{}", seen.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs pod `name` with the HTTP hello component, asks it for `path`, then stops and removes
/// it; the app container's id.
fn serve_one_request(node: &CriNode, name: &str, path: &str) -> Result<String> {
    let server = node.wasm_image("http-hello", &components::http_hello_component()?)?;
    let pod = node.run_pod_annotated(name, WEDGE_HANDLER, &[("wedge.dev/http-port", "8080")])?;
    let app = node.run_container(
        &pod,
        &ContainerSpec {
            name: "app".into(),
            image: server,
            ..Default::default()
        },
    )?;
    let ip: std::net::IpAddr = node.pod_ip(&pod)?.parse()?;
    let address = SocketAddr::new(ip, 8080);
    wait_listening(address, Duration::from_secs(20))?;
    let answer = http_load::get(address, path)?;
    ensure!(answer.status == 200, "{answer:?}");
    node.stop_container(&app, 10)?;
    node.remove_pod(&pod)?;
    Ok(app)
}

#[test]
fn json_logs_name_the_container_and_pod_from_shim_and_runner() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    prepend_engine_config(&node, "log_format = \"json\"\nlog_level = \"debug\"\n")?;
    let app = serve_one_request(&node, "observed", "/observed")?;

    let pod_label = "default/observed";
    for span in ["create", "start", "kill", "delete"] {
        let line = wait_for_line(&node, &app, &format!("in span {span}"), |line| {
            line["span"]
                .as_str()
                .is_some_and(|s| s.split(':').any(|part| part == span))
        })?;
        ensure!(line["pod"] == pod_label, "{span}: {line}");
        for key in ["time", "level", "msg"] {
            ensure!(line[key].is_string(), "{span}: no {key} in {line}");
        }
    }
    // From the runner, through the shim: the request, with its status.
    let request = wait_for_line(&node, &app, "for the HTTP request", |line| {
        line["span"]
            .as_str()
            .is_some_and(|s| s.ends_with("http_request"))
            && line["msg"] == "request answered"
    })?;
    ensure!(
        request["path"] == "/observed" && request["status"] == "200" && request["pod"] == pod_label,
        "{request}"
    );
    wait_for_line(&node, &app, "from the runner's prepare", |line| {
        line["span"]
            .as_str()
            .is_some_and(|s| s.starts_with("prepare"))
    })
    .context("runner lines")?;
    node.containerd.assert_clean()
}

#[test]
fn traces_go_to_the_otlp_endpoint_of_containerd_s_environment() -> Result<()> {
    let receiver = OtlpReceiver::start()?;
    let node = CriNode::attach(Containerd::start_cri_options(
        Release::under_test(),
        CriOptions {
            daemon_env: vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                receiver.endpoint.clone(),
            )],
            ..CriOptions::default()
        },
    )?)?;
    // The pod's shim exits with its last container and sends what it has batched.
    let app = serve_one_request(&node, "traced", "/traced/request")?;

    let deadline = Instant::now() + Duration::from_secs(15);
    let wanted = [
        // The Task API calls, with the container and its pod...
        "create",
        "start",
        "kill",
        "delete",
        app.as_str(),
        "default/traced",
        // ...and the runner's spans, relayed by the shim.
        "prepare",
        "http_request",
        "/traced/request",
    ];
    loop {
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|needle| !receiver.saw(needle))
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the OTLP receiver got {} requests and never saw {missing:?}",
                receiver.received().len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for request in receiver.received() {
        ensure!(
            request.path == "/v1/traces" && request.content_type == "application/x-protobuf",
            "{} {}",
            request.path,
            request.content_type
        );
    }
    node.containerd.assert_clean()
}
