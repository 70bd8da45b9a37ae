//! Where the task service's events go: containerd's event service in production, a
//! recording in tests.

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::event::Event;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::ttrpc::context::Context;
use tracing::warn;

/// Receives TaskCreate, TaskStart, TaskExit and the other task events, in order.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Delivers one event; a failure is the sink's to log, never the caller's to handle
    /// (a lost event must not fail the RPC that caused it).
    async fn publish(&self, topic: String, event: Box<dyn MessageDyn>);
}

/// Publishes `event` under its own topic.
pub async fn publish<E: Event + 'static>(sink: &dyn EventSink, event: E) {
    sink.publish(event.topic(), Box::new(event)).await;
}

/// containerd's event service, reached through the address containerd gave the shim.
pub struct Containerd {
    publisher: RemotePublisher,
    namespace: String,
}

impl Containerd {
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Containerd {
            publisher,
            namespace: namespace.to_string(),
        }
    }
}

#[async_trait]
impl EventSink for Containerd {
    async fn publish(&self, topic: String, event: Box<dyn MessageDyn>) {
        if let Err(err) = self
            .publisher
            .publish(Context::default(), &topic, &self.namespace, event)
            .await
        {
            warn!(%topic, error = %err, "failed to publish event");
        }
    }
}

/// Keeps every event, for tests that check what the task service announced.
#[cfg(test)]
#[derive(Default)]
pub struct Recording {
    events: std::sync::Mutex<Vec<(String, Box<dyn MessageDyn>)>>,
}

#[cfg(test)]
impl Recording {
    /// The topics published so far, in order.
    pub fn topics(&self) -> Vec<String> {
        self.events
            .lock()
            .map(|events| events.iter().map(|(topic, _)| topic.clone()).collect())
            .unwrap_or_default()
    }

    /// The last event published under `topic`, decoded as `E`.
    pub fn last<E: containerd_shim_protos::protobuf::MessageFull>(&self, topic: &str) -> Option<E> {
        let events = self.events.lock().ok()?;
        events
            .iter()
            .rev()
            .find(|(published, _)| published == topic)
            .and_then(|(_, event)| event.downcast_ref::<E>().cloned())
    }
}

#[cfg(test)]
#[async_trait]
impl EventSink for Recording {
    async fn publish(&self, topic: String, event: Box<dyn MessageDyn>) {
        if let Ok(mut events) = self.events.lock() {
            events.push((topic, event));
        }
    }
}
