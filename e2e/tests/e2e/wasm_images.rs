//! Wasm as registries ship it: modules and components, in every accepted layer media type,
//! through a real registry, and the compiled-module cache. Wasm-layer images need
//! containerd 1.7; the root-filesystem form runs on the system's 1.6 too.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wedge_e2e::{images, programs, Containerd, Registry, Release, WEDGE_RUNTIME};

use wedge_runtime_config::wasm_image::{sha256_digest, WASM_LAYER_MEDIA_TYPES};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails unless `ctr run` ended with `code` and printed every line of `expected`.
fn expect_run(out: &Output, code: i32, expected: &[&str]) -> Result<()> {
    let stdout = text(&out.stdout);
    ensure!(
        out.status.code() == Some(code),
        "exit {:?}, wanted {code}; stdout {stdout:?}; stderr {:?}",
        out.status.code(),
        text(&out.stderr)
    );
    for line in expected {
        ensure!(
            stdout.lines().any(|l| l == *line),
            "no line {line:?} in {stdout:?}"
        );
    }
    Ok(())
}

fn expect_refused(out: &Output, message: &[&str]) -> Result<()> {
    let stderr = text(&out.stderr);
    ensure!(
        !out.status.success(),
        "ctr run succeeded: {}",
        text(&out.stdout)
    );
    for part in message {
        ensure!(stderr.contains(part), "{part:?} not in {stderr:?}");
    }
    Ok(())
}

fn status_module(work: &Path) -> Result<Vec<u8>> {
    programs::compile_c(programs::STATUS_C, work, "status")
}

/// Where the runner of container `id` got its program from, as the shim logs it.
fn program_origin(containerd: &Containerd, id: &str) -> Result<String> {
    let needle = format!("{{id={id}}}: module ready origin=\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = containerd.log();
        if let Some(rest) = log
            .lines()
            .find_map(|line| line.split_once(&needle).map(|(_, r)| r))
        {
            return Ok(rest.split('"').next().unwrap_or_default().to_string());
        }
        if Instant::now() > deadline {
            bail!("no 'module ready' line for {id} in the containerd log");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_wasm_layer_media_type_runs_from_an_imported_archive() -> Result<()> {
    let containerd = Containerd::start_release(Release::under_test().at_least(Release::V1_7))?;
    let work = tempfile::tempdir()?;
    let module = status_module(work.path())?;
    for (index, media_type) in WASM_LAYER_MEDIA_TYPES.iter().enumerate() {
        let name = format!("layer{index}");
        let (archive, reference) = images::built_image(
            work.path(),
            &name,
            &module,
            &[
                "--format",
                "layer",
                "--layer-media-type",
                media_type,
                "--env",
                "WHO=layers",
            ],
        )?;
        containerd.import(&archive)?;
        let out = containerd.run_wasm(&reference, &name, &["/status.wasm", "5", "x y"])?;
        expect_run(&out, 5, &["hi layers", "arg1=5", "arg2=x y"])
            .map_err(|err| err.context(media_type.to_string()))?;
    }
    containerd.assert_clean()
}

#[test]
fn a_component_runs_as_a_wasi_preview2_command() -> Result<()> {
    let work = tempfile::tempdir()?;
    let component = programs::componentize(&status_module(work.path())?)?;
    ensure!(component[4..8] == [0x0d, 0, 1, 0], "not a component");

    // A plain image on the system's containerd...
    let containerd = Containerd::start()?;
    let (archive, reference) =
        images::built_image(work.path(), "component", &component, &["--env", "WHO=p2"])?;
    containerd.import(&archive)?;
    // The preview1 adapter ends a failing command through `wasi:cli/exit.exit(err)`, which
    // carries no status: 1, as under `wasmtime run`.
    let out = containerd.run_wasm(&reference, "p2", &["/component.wasm", "9", "two"])?;
    expect_run(&out, 1, &["hi p2", "arg1=9", "arg2=two"])?;
    let out = containerd.run_wasm(&reference, "p2-ok", &[])?;
    expect_run(&out, 0, &["hi p2"])?;
    containerd.assert_clean()?;
    drop(containerd);

    // ...and the component as an image layer on 1.7.
    let containerd = Containerd::start_release(Release::under_test().at_least(Release::V1_7))?;
    let (archive, reference) = images::built_image(
        work.path(),
        "component-layer",
        &component,
        &["--format", "layer", "--env", "WHO=layer"],
    )?;
    containerd.import(&archive)?;
    let out = containerd.run_wasm(&reference, "p2-layer", &["/component.wasm", "4"])?;
    expect_run(&out, 1, &["hi layer", "arg1=4"])?;
    containerd.assert_clean()
}

#[test]
fn images_pushed_to_a_registry_are_pulled_and_run() -> Result<()> {
    let registry = Registry::start()?;
    let containerd = Containerd::start_release(Release::under_test().at_least(Release::V1_7))?;
    let work = tempfile::tempdir()?;
    let module = status_module(work.path())?;
    let component = programs::componentize(&module)?;

    let mut forms: Vec<(String, &[u8], Vec<&str>)> = vec![
        ("rootfs".into(), &module, vec![]),
        (
            "component-layer".into(),
            &component,
            vec!["--format", "layer"],
        ),
        ("artifact".into(), &component, vec!["--artifact"]),
    ];
    for (index, media_type) in WASM_LAYER_MEDIA_TYPES.iter().enumerate() {
        let options = vec!["--format", "layer", "--layer-media-type", media_type];
        forms.push((format!("module-layer{index}"), &module, options));
    }
    for (name, program, mut options) in forms {
        let name = name.as_str();
        options.extend(["--env", "WHO=registry"]);
        let (archive, _) = images::built_image(work.path(), name, program, &options)?;
        let remote = format!("{}/wedge/{name}:v1", registry.address);
        images::push(&archive, &remote)?;
        containerd.ctr_ok(&["images", "pull", "--plain-http", &remote])?;
        if name == "artifact" {
            // `ctr run` refuses the CNCF config media type before any runtime is involved;
            // the artifact form runs through CRI. Here: it is pulled whole.
            let listed = text(&containerd.ctr_ok(&["images", "ls", "-q"])?.stdout);
            ensure!(listed.lines().any(|line| line == remote), "{listed}");
            let digest = sha256_digest(program);
            let layer = containerd.ctr_ok(&["content", "get", &digest])?.stdout;
            ensure!(
                layer == program,
                "the pulled application/wasm layer differs"
            );
            continue;
        }
        // The component reports failure without a status (see the preview2 test).
        let status = if name == "component-layer" { 1 } else { 6 };
        let out = containerd.run_wasm(&remote, name, &[&format!("/{name}.wasm"), "6"])?;
        expect_run(&out, status, &["hi registry", "arg1=6"])
            .map_err(|err| err.context(name.to_string()))?;
    }
    containerd.assert_clean()
}

/// `wedge image push ARCHIVE REFERENCE [ARGS]` with a docker config directory of the test's
/// and `password` (if any) on standard input.
fn push_with(
    archive: &Path,
    reference: &str,
    docker_config: &Path,
    path: &std::ffi::OsStr,
    password: Option<&str>,
    args: &[&str],
) -> Result<Output> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(wedge_e2e::binaries::path(wedge_e2e::binaries::CLI)?)
        .args(["image", "push", "--retries", "0"])
        .arg(archive)
        .arg(reference)
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .env("PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(password), Some(stdin)) = (password, child.stdin.as_mut()) {
        writeln!(stdin, "{password}")?;
    }
    drop(child.stdin.take());
    Ok(child.wait_with_output()?)
}

fn expect_push(out: &Output, succeeds: bool, message: &str) -> Result<()> {
    let stderr = text(&out.stderr);
    ensure!(
        out.status.success() == succeeds && stderr.contains(message),
        "push exit {:?}, expected success={succeeds} and {message:?}; stderr:\n{stderr}",
        out.status.code()
    );
    Ok(())
}

#[test]
fn pushes_to_a_registry_with_basic_auth_find_credentials_as_docker_does() -> Result<()> {
    let registry = Registry::start_with_basic_auth("dev", "s3cret")?;
    let containerd = Containerd::start()?;
    let work = tempfile::tempdir()?;
    let module = status_module(work.path())?;
    let (archive, _) =
        images::built_image(work.path(), "authed", &module, &["--env", "WHO=authed"])?;
    let remote = |tag: &str| format!("{}/team/authed:{tag}", registry.address);
    let no_config = work.path().join("no-docker-config");
    let system_path = std::env::var_os("PATH").unwrap_or_default();

    // No credentials anywhere; then wrong ones on the command line.
    let out = push_with(&archive, &remote("v1"), &no_config, &system_path, None, &[])?;
    expect_push(&out, false, "requires authentication (401 Unauthorized)")?;
    let out = push_with(
        &archive,
        &remote("v1"),
        &no_config,
        &system_path,
        Some("wrong"),
        &["--username", "dev", "--password-stdin"],
    )?;
    expect_push(&out, false, "rejected the credentials from --username")?;

    // The right ones: on the command line, inline in the docker config, from a helper.
    let out = push_with(
        &archive,
        &remote("stdin"),
        &no_config,
        &system_path,
        Some("s3cret"),
        &["--username", "dev", "--password-stdin"],
    )?;
    expect_push(&out, true, "")?;
    let inline = work.path().join("inline");
    std::fs::create_dir(&inline)?;
    std::fs::write(
        inline.join("config.json"),
        // "dev:s3cret"
        format!(
            r#"{{"auths":{{"{}":{{"auth":"ZGV2OnMzY3JldA=="}}}}}}"#,
            registry.address
        ),
    )?;
    let out = push_with(
        &archive,
        &remote("inline"),
        &inline,
        &system_path,
        None,
        &[],
    )?;
    expect_push(&out, true, "")?;
    let helper_config = work.path().join("helper");
    let helper_bin = work.path().join("bin");
    std::fs::create_dir_all(&helper_config)?;
    std::fs::create_dir_all(&helper_bin)?;
    std::fs::write(
        helper_config.join("config.json"),
        format!(
            r#"{{"credHelpers":{{"{}":"wedge-test"}}}}"#,
            registry.address
        ),
    )?;
    let helper = helper_bin.join("docker-credential-wedge-test");
    // The docker credential helper protocol: `get` reads the server on stdin.
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = {} ] || exit 1\n\
             echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"dev\",\"Secret\":\"s3cret\"}}'\n",
            registry.address
        ),
    )?;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755))?;
    let mut helper_path = helper_bin.into_os_string();
    helper_path.push(":");
    helper_path.push(&system_path);
    let out = push_with(
        &archive,
        &remote("helper"),
        &helper_config,
        &helper_path,
        None,
        &[],
    )?;
    expect_push(&out, true, "")?;

    // The module itself instead of its image.
    let wasm = work.path().join("authed.wasm");
    std::fs::write(&wasm, &module)?;
    let out = push_with(&wasm, &remote("v1"), &inline, &system_path, None, &[])?;
    expect_push(&out, false, "is a WebAssembly binary, not an image archive")?;

    // Every pushed tag is there for a client with the credentials, and runs.
    for tag in ["stdin", "inline", "helper"] {
        let reference = remote(tag);
        let anonymous = containerd.ctr(&["images", "pull", "--plain-http", &reference])?;
        ensure!(
            !anonymous.status.success(),
            "an anonymous pull of {reference} passed"
        );
        containerd.ctr_ok(&[
            "images",
            "pull",
            "--plain-http",
            "--user",
            "dev:s3cret",
            &reference,
        ])?;
        let out = containerd.run_wasm(&reference, tag, &["/authed.wasm", "3"])?;
        expect_run(&out, 3, &["hi authed", "arg1=3"])?;
    }
    containerd.assert_clean()
}

#[test]
fn named_exports_run_and_non_commands_are_refused() -> Result<()> {
    let containerd = Containerd::start()?;
    let work = tempfile::tempdir()?;
    let two = programs::wat(programs::TWO_ENTRIES_WAT)?;
    let (archive, reference) = images::wasm_image(work.path(), "two", &two)?;
    containerd.import(&archive)?;
    expect_run(
        &containerd.run_wasm(&reference, "start", &[])?,
        0,
        &["start"],
    )?;
    let out = containerd.run_wasm(&reference, "status", &["/two.wasm#status"])?;
    expect_run(&out, 7, &[])?;
    ensure!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let out = containerd.run_wasm(&reference, "missing", &["/two.wasm#missing"])?;
    expect_refused(&out, &["no missing function", "status"])?;

    let not_command = programs::wat(programs::NOT_A_COMMAND_COMPONENT_WAT)?;
    let (archive, reference) = images::wasm_image(work.path(), "library", &not_command)?;
    containerd.import(&archive)?;
    let out = containerd.run_wasm(&reference, "library", &[])?;
    expect_refused(&out, &["nothing runnable", "say-hello"])?;
    containerd.assert_clean()
}

#[test]
fn an_image_with_two_wasm_layers_is_refused() -> Result<()> {
    let containerd = Containerd::start_release(Release::under_test().at_least(Release::V1_7))?;
    let work = tempfile::tempdir()?;
    let hello = programs::wat(programs::HELLO_WAT)?;
    let other = programs::wat(programs::EXIT_42_WAT)?;
    let (archive, reference) = images::two_layer_image(work.path(), "two-layers", &hello, &other)?;
    containerd.import(&archive)?;
    let out = containerd.run_wasm(&reference, "two-layers", &[])?;
    expect_refused(&out, &["2 wasm layers", "exactly one"])?;
    containerd.assert_clean()
}

#[test]
fn the_second_start_comes_from_the_cache_and_bad_entries_are_recompiled() -> Result<()> {
    let containerd = Containerd::start()?;
    let work = tempfile::tempdir()?;
    let (archive, reference) =
        images::wasm_image(work.path(), "cached", &programs::wat(programs::HELLO_WAT)?)?;
    containerd.import(&archive)?;
    let hello = |id: &str| -> Result<String> {
        let out = containerd.run_wasm(&reference, id, &[])?;
        expect_run(&out, 0, &["hello from wasm"])?;
        program_origin(&containerd, id)
    };

    assert_eq!(hello("first")?, "compiled");
    assert_eq!(hello("second")?, "cached");

    let cache = containerd.cache_dir();
    let mode = std::fs::metadata(&cache)?.permissions().mode() & 0o7777;
    ensure!(mode == 0o700, "cache directory mode {mode:o}");
    // One partition, the test's containerd namespace outside Kubernetes, root-only too.
    let partition = cache.join(containerd.namespace()).join("_node");
    let mode = std::fs::metadata(&partition)?.permissions().mode() & 0o7777;
    ensure!(mode == 0o700, "cache partition mode {mode:o}");
    let artifacts: Vec<_> = std::fs::read_dir(&partition)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect();
    ensure!(artifacts.len() == 1, "{artifacts:?}");
    let artifact = &artifacts[0];

    // Same length, one byte flipped: only the checksum can tell.
    let mut bytes = std::fs::read(artifact)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(artifact, &bytes)?;
    assert_eq!(hello("flipped")?, "recompiled");
    assert_eq!(hello("after-flip")?, "cached");

    // Cut short, as by a crash mid-write of something other than this runtime.
    let bytes = std::fs::read(artifact)?;
    std::fs::write(artifact, &bytes[..bytes.len() / 3])?;
    assert_eq!(hello("truncated")?, "recompiled");
    assert_eq!(hello("after-truncation")?, "cached");
    containerd.assert_clean()
}

/// Native code compiled while handling one tenant's module is never mapped for another's
/// container: the same module in a second containerd namespace is compiled again, into a
/// cache partition of that namespace, and each namespace's second start is a hit in its own.
#[test]
fn each_namespace_compiles_into_a_cache_partition_of_its_own() -> Result<()> {
    let containerd = Containerd::start()?;
    let work = tempfile::tempdir()?;
    let (archive, reference) =
        images::wasm_image(work.path(), "tenants", &programs::wat(programs::HELLO_WAT)?)?;
    containerd.import(&archive)?;
    let other = format!("{}-other", containerd.namespace());
    let archive_path = archive.to_str().context("archive path")?;
    containerd.ctr_ok(&["--namespace", &other, "images", "import", archive_path])?;
    let config = containerd.engine_config();
    let config = config.to_str().context("engine config path")?;
    let in_other = |id: &str| -> Result<String> {
        let out = containerd.ctr(&[
            "--namespace",
            &other,
            "run",
            "--rm",
            "--runtime",
            WEDGE_RUNTIME,
            "--runtime-config-path",
            config,
            &reference,
            id,
        ])?;
        expect_run(&out, 0, &["hello from wasm"])?;
        program_origin(&containerd, id)
    };
    let result = (|| -> Result<()> {
        let out = containerd.run_wasm(&reference, "mine", &[])?;
        expect_run(&out, 0, &["hello from wasm"])?;
        assert_eq!(program_origin(&containerd, "mine")?, "compiled");
        assert_eq!(in_other("theirs")?, "compiled");
        assert_eq!(in_other("theirs-again")?, "cached");
        for namespace in [containerd.namespace(), other.clone()] {
            let partition = containerd.cache_dir().join(&namespace).join("_node");
            let artifacts = std::fs::read_dir(&partition)?
                .flatten()
                .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "cwasm"))
                .count();
            ensure!(
                artifacts == 1,
                "{artifacts} artifacts in {}",
                partition.display()
            );
        }
        Ok(())
    })();
    let _ = containerd.ctr(&["--namespace", &other, "images", "rm", &reference]);
    let _ = containerd.ctr(&["namespaces", "rm", &other]);
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join(&other));
    }
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&other));
    result?;
    containerd.assert_clean()
}
