//! Serving `wasi:http/handler@0.3`: a 0.3 handler is an async export that may be called again
//! while earlier calls wait, so an instance takes several requests at once and many in turn.
//! wasmtime-wasi-http's `ProxyHandler` dispatches requests to such instances; this module
//! says how they are made (the container's WASI context, memory bound and outgoing policy)
//! and when they end (request deadline, idle time, requests served).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::component::GuestTaskId;
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyPre, ShouldAccept, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::WasiHttpView;

use super::http::{log_line, RequestState, RequestTemplate};

/// Requests one instance serves before a fresh one takes over, so that a leak in the guest
/// stays bounded (wasmtime's own server uses the same figure).
const REQUESTS_PER_INSTANCE: usize = 128;

/// Requests one instance handles at once; more go to another instance.
const CONCURRENT_REQUESTS_PER_INSTANCE: usize = 16;

/// How long an instance with nothing to do is kept for the next request.
const IDLE_INSTANCE: Duration = Duration::from_secs(10);

/// wasmtime-wasi-http's word for a worker dropped before it finished.
const WORKER_DROPPED: &str = "worker panicked";

/// Makes instances of a 0.3 handler for [`wasmtime_wasi_http::handler::ProxyHandler`].
pub(super) struct SharedInstances {
    pub engine: Engine,
    pub pre: ProxyPre<RequestState>,
    pub requests: RequestTemplate,
    pub request_timeout: Duration,
}

impl HandlerState for SharedInstances {
    type StoreData = RequestState;
    type WorkerExpiration = InstanceExpiry;
    type WorkerState = InstanceUse;

    async fn instantiate(
        &self,
    ) -> wasmtime::Result<Instance<RequestState, InstanceExpiry, InstanceUse>> {
        let mut store = Store::new(&self.engine, self.requests.state());
        store.limiter(|state| &mut state.limits);
        // A guest spinning in one request must not hold the others or the request deadlines
        // hostage: every epoch tick it yields to the event loop, which checks them.
        store.epoch_deadline_async_yield_and_update(1);
        store.set_epoch_deadline(1);
        let proxy = self.pre.instantiate_async(&mut store).await?;
        Ok(Instance {
            store,
            proxy,
            view: <RequestState as WasiHttpView>::http,
            expiration: InstanceExpiry {
                request_timeout: self.request_timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
            },
            state: InstanceUse,
        })
    }
}

/// How many requests an instance takes, and what happens to it when it ends.
pub(super) struct InstanceUse;

impl WorkerState for InstanceUse {
    type StoreData = RequestState;
    /// When the request's response is due (its arrival plus the request timeout).
    type RequestData = tokio::time::Instant;

    fn should_accept_request(&self, concurrent: usize, served: usize) -> ShouldAccept {
        if served >= REQUESTS_PER_INSTANCE {
            ShouldAccept::Never
        } else if concurrent >= CONCURRENT_REQUESTS_PER_INSTANCE {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, RequestState>,
        due: tokio::time::Instant,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        Box::pin(tokio::time::sleep_until(due))
    }

    fn drop(&self, store: Store<RequestState>, result: wasmtime::Result<()>) {
        match result {
            Ok(()) => {}
            // Dropped unfinished without unwinding: the server is shutting down after its
            // drain, not failing (wasmtime reports every unfinished worker as panicked).
            Err(err) if !std::thread::panicking() && err.to_string() == WORKER_DROPPED => {
                tracing::debug!("an instance of the handler was dropped at shutdown");
            }
            Err(err) => log_line(&format!(
                "wasm http: an instance of the handler ended: {err:#}"
            )),
        }
        drop(store);
    }
}

/// Ends an instance idle for [`IDLE_INSTANCE`], or busy with one request past the request
/// timeout: checked from outside the instance's event loop, so a guest that never yields
/// is ended too.
pub(super) struct InstanceExpiry {
    request_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for InstanceExpiry {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        since: Instant,
    ) -> Poll<()> {
        let allowed = match status {
            WorkerStatus::Idle => IDLE_INSTANCE,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.request_timeout,
        };
        let Some(until) = since.checked_add(allowed) else {
            return Poll::Pending;
        };
        let until = tokio::time::Instant::from_std(until);
        if self.sleep.deadline() != until {
            self.sleep.as_mut().reset(until);
        }
        self.sleep.as_mut().poll(cx)
    }
}
