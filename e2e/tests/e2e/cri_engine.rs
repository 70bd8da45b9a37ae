//! Engine options through pod annotations, as an operator's engine config allows them: wasm
//! proposals, deadlines, and the refusals a pod sees for keys it may not use.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use wedge_e2e::cri::WEDGE_HANDLER;
use wedge_e2e::{programs, ContainerSpec, CriNode, Release};

fn container(name: &str, image: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: image.to_string(),
        ..Default::default()
    }
}

/// Creates and starts `name` in a pod with `annotations`; returns the error StartContainer
/// gives (kubelet's `RunContainerError` message), after removing the pod.
fn refused(
    node: &CriNode,
    pod_name: &str,
    image: &str,
    annotations: &[(&str, &str)],
) -> Result<String> {
    let pod = node.run_pod_annotated(pod_name, WEDGE_HANDLER, annotations)?;
    let id = node.create_container(&pod, &container("app", image))?;
    let started = node.start_container(&id);
    node.remove_pod(&pod)?;
    match started {
        Ok(()) => anyhow::bail!("{pod_name}: the container started"),
        Err(err) => Ok(format!("{err:#}")),
    }
}

/// A module with two memories is refused without the multi-memory proposal and runs with
/// `wedge.dev/features: multi-memory`; keys the operator does not allow, unknown keys and
/// features beyond the operator's list are refused with a message naming them.
#[test]
fn wasm_features_and_annotations_follow_the_engine_config() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let two_memories = node.wasm_image("memories", &programs::wat(programs::TWO_MEMORIES_WAT)?)?;

    let error = refused(&node, "plain", &two_memories, &[])?;
    ensure!(
        error.contains("multi-memory") || error.contains("multiple memories"),
        "without the proposal: {error}"
    );

    let pod = node.run_pod_annotated(
        "multi",
        WEDGE_HANDLER,
        &[("wedge.dev/features", "multi-memory")],
    )?;
    let id = node.run_container(&pod, &container("app", &two_memories))?;
    let status = node.wait_exited(&id, Duration::from_secs(30))?;
    ensure!(
        status.exit_code == 0,
        "with multi-memory: exit {}",
        status.exit_code
    );
    node.remove_pod(&pod)?;

    let hello = node.wasm_image("hello", &programs::wat(programs::HELLO_WAT)?)?;
    for (annotation, value, expected) in [
        ("wedge.dev/fuel", "1000", "allowed_annotations"),
        (
            "wedge.dev/speed",
            "ludicrous",
            "unknown annotation wedge.dev/speed",
        ),
        ("wedge.dev/features", "gc", "wasm.allowed_features"),
        ("wedge.dev/timeout", "soon", "not a duration"),
    ] {
        let error = refused(&node, "refused", &hello, &[(annotation, value)])?;
        ensure!(
            error.contains(annotation) && error.contains(expected),
            "{annotation}={value}: {error}"
        );
    }
    node.containerd.assert_clean()
}

/// A module spinning past `wedge.dev/timeout` is interrupted: exit 124 and a stderr line
/// that says why.
#[test]
fn a_deadline_stops_a_spinning_module() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let spinner = node.wasm_image("spinner", &programs::wat(programs::LOOP_WAT)?)?;
    let pod = node.run_pod_annotated("deadline", WEDGE_HANDLER, &[("wedge.dev/timeout", "1s")])?;
    let started = std::time::Instant::now();
    let id = node.run_container(&pod, &container("spin", &spinner))?;
    let status = node.wait_exited(&id, Duration::from_secs(20))?;
    let elapsed = started.elapsed();
    ensure!(status.exit_code == 124, "exit {}", status.exit_code);
    ensure!(
        elapsed >= Duration::from_secs(1),
        "stopped after {elapsed:?}"
    );
    let lines = node.log_lines(&pod, "spin")?;
    lines
        .iter()
        .find(|(stream, text)| {
            stream == "stderr" && text.contains("deadline") && text.contains("1s")
        })
        .with_context(|| format!("no deadline message: {lines:?}"))?;
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}
