//! Pods through containerd's CRI plugin, driven as kubelet drives it: runtime handler
//! `wedge` against the `runc` handler on the same containerd.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use k8s_cri::v1::ContainerState;
use wedge_e2e::cri::{BUSYBOX, RUNC_HANDLER, WEDGE_HANDLER};
use wedge_e2e::{images, programs, ContainerSpec, CriNode, Release};

fn busybox_image(node: &CriNode) -> Result<String> {
    let (archive, reference) = images::native_image(
        node.containerd.dir(),
        "busybox",
        Path::new(BUSYBOX),
        "/bin/busybox",
        &["/bin/busybox"],
    )?;
    node.containerd.import_for_cri(&archive)?;
    Ok(reference)
}

fn wasm_image(node: &CriNode, name: &str, module: &[u8]) -> Result<String> {
    let (archive, reference) = images::wasm_image(node.containerd.dir(), name, module)?;
    node.containerd.import_for_cri(&archive)?;
    Ok(reference)
}

fn sh(script: &str) -> Vec<String> {
    vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]
}

/// What a kubelet observes of a pod with one busybox sidecar: logs, exec, exit status after
/// a stop with a grace period, and a clean node afterwards.
fn native_pod_observations(node: &CriNode, handler: &str) -> Result<Vec<String>> {
    let busybox = busybox_image(node)?;
    let pod = node.run_pod(&format!("native-{handler}"), handler)?;
    let sidecar = node.run_container(
        &pod,
        &ContainerSpec {
            name: "sidecar".into(),
            image: busybox.clone(),
            command: sh(
                "echo started; echo oops >&2; trap 'echo bye; exit 7' TERM; \
                         while true; do sleep 0.1; done",
            ),
            ..Default::default()
        },
    )?;
    let mut seen = Vec::new();
    let status = node.status(&sidecar)?;
    seen.push(format!("state {}", status.state));
    let exec = node.exec_sync(&sidecar, &["/bin/busybox", "sh", "-c", "echo in; exit 3"])?;
    seen.push(format!(
        "exec {} {:?} {:?}",
        exec.exit_code,
        String::from_utf8_lossy(&exec.stdout),
        String::from_utf8_lossy(&exec.stderr)
    ));
    node.stop_container(&sidecar, 5)?;
    let status = node.wait_exited(&sidecar, Duration::from_secs(10))?;
    seen.push(format!("exit {} {}", status.exit_code, status.reason));
    let mut lines = node.log_lines(&pod, "sidecar")?;
    lines.sort();
    seen.push(format!("log {lines:?}"));
    node.remove_container(&sidecar)?;
    node.remove_pod(&pod)?;
    Ok(seen)
}

#[test]
fn a_native_pod_behaves_as_under_runc() -> Result<()> {
    let node = CriNode::start(Release::System)?;
    let wedge = native_pod_observations(&node, WEDGE_HANDLER)?;
    node.containerd.assert_clean()?;
    let runc = native_pod_observations(&node, RUNC_HANDLER)?;
    node.containerd.assert_clean()?;
    ensure!(wedge == runc, "wedge: {wedge:#?}\nrunc: {runc:#?}");
    ensure!(
        wedge[0] == format!("state {}", ContainerState::ContainerRunning as i32),
        "{wedge:?}"
    );
    Ok(())
}

#[test]
fn a_wasm_container_logs_and_exits_in_a_pod() -> Result<()> {
    let node = CriNode::start(Release::System)?;
    let module = programs::compile_c(programs::ECHO_C, node.containerd.dir(), "echo")?;
    let image = wasm_image(&node, "echo", &module)?;
    let pod = node.run_pod("wasm-echo", WEDGE_HANDLER)?;
    let id = node.run_container(
        &pod,
        &ContainerSpec {
            name: "echo".into(),
            image,
            args: vec!["hello".into(), "pod".into()],
            ..Default::default()
        },
    )?;
    let status = node.wait_exited(&id, Duration::from_secs(20))?;
    ensure!(
        status.exit_code == 0,
        "exit {} {} {}",
        status.exit_code,
        status.reason,
        status.message
    );
    let lines = node.log_lines(&pod, "echo")?;
    for expected in [
        ("stdout", "arg[1]=hello"),
        ("stdout", "arg[2]=pod"),
        ("stderr", "to stderr"),
    ] {
        ensure!(
            lines
                .iter()
                .any(|(stream, text)| (stream.as_str(), text.as_str()) == expected),
            "{expected:?} not in the CRI log: {lines:?}"
        );
    }
    node.remove_container(&id)?;
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}
