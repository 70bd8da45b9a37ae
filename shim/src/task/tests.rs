//! The task service without containerd: a back end that only records what it is asked, and
//! a recording event sink, driven through the same Task API containerd calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::{api, Task, TtrpcContext};
use containerd_shim_protos::events::task::{TaskDelete, TaskExit, TaskStart};
use containerd_shim_protos::ttrpc::{self, Code};
use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxResources;
use tokio::sync::oneshot;

use super::container::Placement;
use super::events::Recording;
use super::TaskService;
use crate::backend::{Backend, Created, ExecRequest};
use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::exits::{now, ExitStatus};
use crate::runc::Console;
use crate::sandbox::Cgroup;
use crate::stdio::StdioPaths;

/// A back end that records each call and exits when killed (or deleted unstarted).
struct Scripted {
    calls: Mutex<Vec<String>>,
    exit: Mutex<Option<oneshot::Sender<ExitStatus>>>,
    execs: bool,
}

impl Scripted {
    fn exit_with(&self, code: u32) {
        if let Some(sender) = self.exit.lock().unwrap().take() {
            let _ = sender.send(ExitStatus { code, at: now() });
        }
    }

    fn record(&self, call: impl Into<String>) {
        self.calls.lock().unwrap().push(call.into());
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Backend for Scripted {
    fn cgroup(&self) -> Option<&Cgroup> {
        None
    }
    async fn start(&self) -> Result<()> {
        self.record("start");
        Ok(())
    }
    async fn kill(&self, signal: Signal, all: bool) -> Result<()> {
        self.record(format!("kill {signal} all={all}"));
        self.exit_with(128 + signal as u32);
        Ok(())
    }
    async fn freeze(&self, frozen: bool) -> Result<()> {
        self.record(format!("freeze {frozen}"));
        Ok(())
    }
    async fn update(&self, _resources: &LinuxResources, json: &[u8]) -> Result<()> {
        self.record(format!("update {}", String::from_utf8_lossy(json)));
        Ok(())
    }
    fn pids(&self) -> Vec<i32> {
        vec![PID]
    }
    async fn exec(&self, _request: ExecRequest<'_>) -> Result<(i32, Option<Console>)> {
        Err(Error::ExecUnsupported("c1".into()))
    }
    fn supports_exec(&self) -> bool {
        self.execs
    }
    async fn init_exited(&self) {
        self.record("init exited");
    }
    async fn delete(&self, never_started: bool) -> Result<()> {
        self.record(format!("delete never_started={never_started}"));
        if never_started {
            self.exit_with(137);
        }
        Ok(())
    }
    async fn release(&self) {
        self.record("release");
    }
}

const PID: i32 = 4242;

struct Harness {
    service: TaskService,
    events: Arc<Recording>,
    backend: Arc<Scripted>,
    shutdown: Arc<ExitSignal>,
    _bundle: tempfile::TempDir,
}

/// A task service holding one created container `c1` on the scripted back end.
async fn with_created_container() -> Harness {
    let events = Arc::new(Recording::default());
    let shutdown = Arc::new(ExitSignal::default());
    let service = TaskService::with_events(
        "test",
        ContentStore::new("/nonexistent/containerd.sock", "test"),
        events.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let (sender, exited) = oneshot::channel();
    let backend = Arc::new(Scripted {
        calls: Mutex::new(Vec::new()),
        exit: Mutex::new(Some(sender)),
        execs: false,
    });
    let bundle = tempfile::tempdir().unwrap();
    service.tasks().register(
        Placement {
            id: "c1".into(),
            pod: None,
            bundle: bundle.path().to_path_buf(),
            rootfs: bundle.path().join("rootfs"),
            rootfs_mounted: false,
            stdio: StdioPaths::default(),
        },
        Created {
            backend: backend.clone(),
            pid: PID,
            exited,
            console: None,
        },
    );
    Harness {
        service,
        events,
        backend,
        shutdown,
        _bundle: bundle,
    }
}

fn ctx() -> TtrpcContext {
    TtrpcContext::default()
}

fn code_of(err: ttrpc::Error) -> Code {
    match err {
        ttrpc::Error::RpcStatus(status) => status.code(),
        other => panic!("not an RPC status: {other:?}"),
    }
}

async fn status_of(service: &TaskService, id: &str) -> api::Status {
    let state = service
        .state(
            &ctx(),
            api::StateRequest {
                id: id.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    state.status.enum_value_or_default()
}

async fn wait_for_exit(service: &TaskService) -> api::WaitResponse {
    tokio::time::timeout(
        Duration::from_secs(5),
        service.wait(
            &ctx(),
            api::WaitRequest {
                id: "c1".into(),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("Wait answered")
    .unwrap()
}

fn start(id: &str) -> api::StartRequest {
    api::StartRequest {
        id: id.into(),
        ..Default::default()
    }
}

fn pids_of(id: &str) -> api::PidsRequest {
    api::PidsRequest {
        id: id.into(),
        ..Default::default()
    }
}

fn delete(id: &str) -> api::DeleteRequest {
    api::DeleteRequest {
        id: id.into(),
        ..Default::default()
    }
}

fn kill(id: &str, signal: Signal) -> api::KillRequest {
    api::KillRequest {
        id: id.into(),
        signal: signal as u32,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_container_walks_its_lifecycle_and_containerd_hears_each_step() {
    let Harness {
        service,
        events,
        backend,
        shutdown,
        _bundle,
    } = with_created_container().await;
    assert_eq!(status_of(&service, "c1").await, api::Status::CREATED);

    let started = service.start(&ctx(), start("c1")).await.unwrap();
    assert_eq!(started.pid, PID as u32);
    assert_eq!(status_of(&service, "c1").await, api::Status::RUNNING);
    let announced: TaskStart = events.last("/tasks/start").unwrap();
    assert_eq!(
        (announced.container_id.as_str(), announced.pid),
        ("c1", PID as u32)
    );

    let pause = api::PauseRequest {
        id: "c1".into(),
        ..Default::default()
    };
    service.pause(&ctx(), pause.clone()).await.unwrap();
    assert_eq!(status_of(&service, "c1").await, api::Status::PAUSED);
    let again = service.pause(&ctx(), pause).await.unwrap_err();
    assert_eq!(code_of(again), Code::FAILED_PRECONDITION);
    let resume = api::ResumeRequest {
        id: "c1".into(),
        ..Default::default()
    };
    service.resume(&ctx(), resume).await.unwrap();
    assert_eq!(status_of(&service, "c1").await, api::Status::RUNNING);

    let update = api::UpdateTaskRequest {
        id: "c1".into(),
        resources: Some(
            containerd_shim_protos::protobuf::well_known_types::any::Any {
                value: br#"{"memory":{"limit":1048576}}"#.to_vec(),
                ..Default::default()
            },
        )
        .into(),
        ..Default::default()
    };
    service.update(&ctx(), update).await.unwrap();
    let pids = service.pids(&ctx(), pids_of("c1")).await.unwrap();
    assert_eq!(pids.processes.len(), 1);

    service
        .kill(&ctx(), kill("c1", Signal::SIGTERM))
        .await
        .unwrap();
    assert_eq!(wait_for_exit(&service).await.exit_status, 143);
    assert_eq!(status_of(&service, "c1").await, api::Status::STOPPED);
    // Not an empty list: containerd 1.7+ would take the shim for a leaked one.
    let stopped_pids = service.pids(&ctx(), pids_of("c1")).await.unwrap();
    assert_eq!(stopped_pids.processes.len(), 1);
    assert_eq!(stopped_pids.processes[0].pid, PID as u32);
    let exit: TaskExit = events.last("/tasks/exit").unwrap();
    assert_eq!((exit.id.as_str(), exit.exit_status), ("c1", 143));

    let deleted = service.delete(&ctx(), delete("c1")).await.unwrap();
    assert_eq!(deleted.exit_status, 143);
    let announced: TaskDelete = events.last("/tasks/delete").unwrap();
    assert_eq!(announced.exit_status, 143);
    assert_eq!(
        events.topics(),
        [
            "/tasks/start",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    assert_eq!(
        backend.calls(),
        [
            "start",
            "freeze true",
            "freeze false",
            r#"update {"memory":{"limit":1048576}}"#,
            "kill SIGTERM all=false",
            "init exited",
            "delete never_started=false",
            "release"
        ]
    );
    let gone = service
        .state(
            &ctx(),
            api::StateRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(gone), Code::NOT_FOUND);

    service
        .shutdown(&ctx(), api::ShutdownRequest::default())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), shutdown.wait())
        .await
        .expect("the shim exits once it serves no container");
}

#[tokio::test]
async fn illegal_requests_get_the_codes_containerd_expects() {
    let Harness {
        service, backend, ..
    } = with_created_container().await;
    let unknown = service.start(&ctx(), start("nope")).await.unwrap_err();
    assert_eq!(code_of(unknown), Code::NOT_FOUND);
    let not_running = service
        .pause(
            &ctx(),
            api::PauseRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(not_running), Code::FAILED_PRECONDITION);

    service.start(&ctx(), start("c1")).await.unwrap();
    let twice = service.start(&ctx(), start("c1")).await.unwrap_err();
    assert_eq!(code_of(twice), Code::FAILED_PRECONDITION);
    let running = service.delete(&ctx(), delete("c1")).await.unwrap_err();
    assert_eq!(code_of(running), Code::FAILED_PRECONDITION);
    let exec = service
        .exec(
            &ctx(),
            api::ExecProcessRequest {
                id: "c1".into(),
                exec_id: "e1".into(),
                spec: Some(Default::default()).into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(exec), Code::UNIMPLEMENTED);

    service
        .kill(&ctx(), kill("c1", Signal::SIGKILL))
        .await
        .unwrap();
    wait_for_exit(&service).await;
    let after_exit = service
        .kill(&ctx(), kill("c1", Signal::SIGKILL))
        .await
        .unwrap_err();
    assert_eq!(
        code_of(after_exit),
        Code::NOT_FOUND,
        "a stop racing the exit is 'not found'"
    );
    assert_eq!(
        backend
            .calls()
            .iter()
            .filter(|call| call.starts_with("kill"))
            .count(),
        1,
        "a stopped container is never signalled"
    );
    service.delete(&ctx(), delete("c1")).await.unwrap();
}

#[tokio::test]
async fn a_created_container_is_deleted_without_ever_starting() {
    let Harness {
        service,
        events,
        backend,
        ..
    } = with_created_container().await;
    let deleted = service.delete(&ctx(), delete("c1")).await.unwrap();
    assert_eq!(deleted.exit_status, 137);
    assert_eq!(events.topics(), ["/tasks/exit", "/tasks/delete"]);
    assert_eq!(
        backend.calls(),
        ["delete never_started=true", "init exited", "release"]
    );
}

#[tokio::test]
async fn a_create_that_fails_publishes_nothing_and_registers_nothing() {
    let Harness {
        service, events, ..
    } = with_created_container().await;
    let missing = tempfile::tempdir().unwrap();
    let err = service
        .create(
            &ctx(),
            api::CreateTaskRequest {
                id: "c2".into(),
                bundle: missing.path().join("absent").display().to_string(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_ne!(code_of(err), Code::OK);
    assert!(events.topics().is_empty());
    let err = service
        .create(
            &ctx(),
            api::CreateTaskRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(err), Code::ALREADY_EXISTS);
    let unknown = service.start(&ctx(), start("c2")).await.unwrap_err();
    assert_eq!(code_of(unknown), Code::NOT_FOUND);
}

#[tokio::test]
async fn shutdown_lets_a_create_in_flight_finish_first() {
    let Harness {
        service, shutdown, ..
    } = with_created_container().await;
    service.delete(&ctx(), delete("c1")).await.unwrap();
    let service = Arc::new(service);
    let in_flight = service.tasks().begin_create("c2").unwrap();
    let asked = tokio::spawn({
        let service = Arc::clone(&service);
        async move {
            service
                .shutdown(&ctx(), api::ShutdownRequest::default())
                .await
        }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(200), shutdown.wait())
            .await
            .is_err(),
        "the shim must not exit under a Create"
    );
    // The Create failed: nothing was registered, so the shim may go.
    drop(in_flight);
    asked.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(1), shutdown.wait())
        .await
        .expect("idle now: the shim exits");
}

#[tokio::test]
async fn a_create_of_an_id_that_exists_or_is_being_created_is_refused() {
    let Harness { service, .. } = with_created_container().await;
    let tasks = service.tasks();
    let first = tasks.begin_create("c2").unwrap();
    // containerd retrying a Create it gave up on, while the first still runs.
    assert!(matches!(
        tasks.begin_create("c2"),
        Err(Error::ContainerExists(id)) if id == "c2"
    ));
    assert!(matches!(
        tasks.begin_create("c1"),
        Err(Error::ContainerExists(id)) if id == "c1"
    ));
    drop(first);
    drop(tasks.begin_create("c2").unwrap());
}

/// containerd's exit handling can delete the last container (and ask the shim to shut
/// down) while another request, a StopPodSandbox's Kill, is still being served: the shim
/// answers it before it exits, or containerd hears "ttrpc: closed".
#[tokio::test]
async fn shutdown_waits_for_requests_being_served() {
    let Harness {
        service, shutdown, ..
    } = with_created_container().await;
    service.delete(&ctx(), delete("c1")).await.unwrap();
    let kill_being_served = service.tasks().busy();
    service
        .shutdown(&ctx(), api::ShutdownRequest::default())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), shutdown.wait())
            .await
            .is_err(),
        "the shim must not exit under a request being served"
    );
    drop(kill_being_served);
    tokio::time::timeout(Duration::from_secs(1), shutdown.wait())
        .await
        .expect("nothing in flight: the shim exits");
}
