//! The node installer as the DaemonSet runs it. The image `make installer-image` writes
//! (built by the same code, from the binaries under test) is imported into one private
//! containerd and run there with runc: privileged, the host's root at /host, the service
//! account of a stand-in API server mounted where pods find theirs. The node it installs on
//! is a second private containerd, a service of a stand-in init without systemd. Without
//! the host's PID namespace the installer cannot restart containerd: it says so, marks the
//! node's condition and fails. With it, the installer restarts containerd through the
//! node's init script, labels the node, and a CRI pod on handler `wedge` runs there.

use std::path::Path;
use std::process::Output;

use anyhow::{ensure, Context, Result};
use wedge_e2e::containerd::{ENGINE_CONFIG, PREPARED_BIN};
use wedge_e2e::cri::WEDGE_HANDLER;
use wedge_e2e::stand_in_api::{self, StandInApi};
use wedge_e2e::{binaries, stand_in_init, Containerd, CriNode, Release};

const INSTALLER_REFERENCE: &str = "wedge.test/node-installer:e2e";
const NODE_NAME: &str = "edge-node-1";

/// Runs the installer container on `runner` as the DaemonSet's init container would, with
/// the host's PID namespace when `host_pid` is given.
fn run_installer(
    runner: &Containerd,
    node: &Containerd,
    api: &StandInApi,
    name: &str,
    host_pid: Option<i32>,
) -> Result<Output> {
    let dir = node.dir();
    let host_root = "type=bind,src=/,dst=/host,options=rbind:rw".to_string();
    let service_account = format!(
        "type=bind,src={},dst=/var/run/secrets/kubernetes.io/serviceaccount,options=rbind:ro",
        api.service_account.display()
    );
    let port = format!("KUBERNETES_SERVICE_PORT={}", api.port);
    let node_name = format!("NODE_NAME={NODE_NAME}");
    let pid_namespace = host_pid.map(|pid| format!("pid:/proc/{pid}/ns/pid"));
    let config = format!("--containerd-config={}", dir.join("config.toml").display());
    let shim_dest = format!("--shim-dest={}", dir.join(PREPARED_BIN).display());
    let engine_config = format!("--engine-config-path={}", dir.join(ENGINE_CONFIG).display());
    let mut args = vec![
        "run",
        "--rm",
        "--privileged",
        "--net-host",
        "--mount",
        &host_root,
        "--mount",
        &service_account,
        "--env",
        "KUBERNETES_SERVICE_HOST=127.0.0.1",
        "--env",
        &port,
        "--env",
        &node_name,
    ];
    if let Some(namespace) = &pid_namespace {
        args.extend(["--with-ns", namespace]);
    }
    args.extend([
        INSTALLER_REFERENCE,
        name,
        "/usr/local/bin/wedge",
        "node",
        "install",
        "--host-root=/host",
        &config,
        &shim_dest,
        &engine_config,
        "--runtime-class=wedge",
        "--label-node",
    ]);
    runner.ctr(&args)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_installer_image_restarts_a_containerd_without_systemd_and_reports_on_the_node() -> Result<()>
{
    let node = Containerd::start_cri_under_stand_in_init(Release::V1_6, |_, _| Ok(()))?;
    let runner = Containerd::start_release(Release::V1_6)?;
    let api = StandInApi::start(runner.dir())?;

    let archive = runner.dir().join("installer.tar");
    wedge_cli::installer_image::build(&binaries::dir()?, INSTALLER_REFERENCE, &archive)?;
    runner.import(&archive)?;

    // Its own PID namespace: PID 1 is the installer itself, no service manager in sight.
    let refused = run_installer(&runner, &node, &api, "installer-no-host-pid", None)?;
    let said = text(&refused);
    ensure!(
        !refused.status.success(),
        "installed without a restart: {said}"
    );
    ensure!(
        said.contains("cannot restart containerd")
            && said.contains("\"wedge\"")
            && said.contains("hostPID"),
        "the installer did not say why it could not restart containerd: {said}"
    );
    ensure!(
        said.contains("set node condition WedgeRuntimeReady=False"),
        "{said}"
    );
    let requests = api.requests()?;
    let condition = requests
        .iter()
        .find(|request| request.path == format!("/api/v1/nodes/{NODE_NAME}/status"))
        .context("no node condition was reported")?;
    ensure!(
        condition.method == "PATCH"
            && condition.content_type.as_deref() == Some("application/strategic-merge-patch+json")
            && condition.authorization.as_deref()
                == Some(&*format!("Bearer {}", stand_in_api::TOKEN)),
        "{condition:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&condition.body)?;
    let reported = &body["status"]["conditions"][0];
    ensure!(
        reported["type"] == "WedgeRuntimeReady"
            && reported["status"] == "False"
            && reported["reason"] == "ContainerdNotRestarted"
            && reported["message"]
                .as_str()
                .is_some_and(|message| message.contains("cannot restart containerd")),
        "condition {reported}"
    );
    ensure!(
        !requests
            .iter()
            .any(|request| request.path == format!("/api/v1/nodes/{NODE_NAME}")),
        "the node was labelled although containerd was not restarted: {requests:?}"
    );
    ensure!(stand_in_init::restarts(node.dir()) == 0);

    // As the DaemonSet runs it: the host's PID namespace.
    let pid1 = node.stand_in_pid1()?;
    let installed = run_installer(&runner, &node, &api, "installer", Some(pid1))?;
    let said = text(&installed);
    ensure!(installed.status.success(), "the installer failed: {said}");
    ensure!(
        said.contains("restarted containerd through the host's init scripts"),
        "{said}"
    );
    ensure!(
        stand_in_init::restarts(node.dir()) == 1,
        "the init script restarted containerd {} times",
        stand_in_init::restarts(node.dir())
    );
    let requests = api.requests()?;
    let label = requests
        .iter()
        .find(|request| request.path == format!("/api/v1/nodes/{NODE_NAME}"))
        .context("the node was not labelled")?;
    ensure!(
        label.body.contains("\"wedge.dev/ready\":\"true\""),
        "label patch {label:?}"
    );
    let last: serde_json::Value =
        serde_json::from_str(&requests.last().context("no request")?.body)?;
    ensure!(
        last["status"]["conditions"][0]["status"] == "True",
        "the last condition reported: {last}"
    );

    // The restarted containerd outlived the installer's container (it runs in the init's
    // cgroup, not the container's) and runs wasm pods through the installed shim.
    let alive = node.ctr(&["version"])?;
    ensure!(
        alive.status.success(),
        "containerd died with the installer's container: {}",
        text(&alive)
    );
    let installed_shim = node.dir().join(PREPARED_BIN).join(binaries::SHIM);
    ensure!(
        installed_shim.is_file(),
        "no shim at {}",
        installed_shim.display()
    );
    let node = CriNode::attach(node)?;
    let pod = node.run_hello_pod("after-install", WEDGE_HANDLER)?;
    node.remove_pod(&pod)?;
    ensure!(
        Path::new(&installed_shim).is_file(),
        "the shim went away with the pod"
    );
    Ok(())
}
