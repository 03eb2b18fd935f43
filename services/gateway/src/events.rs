//! Marathon's event bus: what `/v2/events` (server-sent events) and the gRPC
//! `WatchEvents` stream carry, with Marathon's event types and fields.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::app::Timestamp;

#[derive(Debug, Clone)]
pub struct Event {
    pub event_type: &'static str,
    /// The whole event as Marathon writes it (`eventType` and `timestamp` included).
    pub json: Value,
}

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self { sender: broadcast::channel(16_384).0 }
    }
}

impl EventBus {
    /// Publishes an event; `fields` is a JSON object to which `eventType` and `timestamp`
    /// are added.
    pub fn publish(&self, event_type: &'static str, fields: Value) {
        let mut json = match fields {
            Value::Object(map) => Value::Object(map),
            other => json!({ "value": other }),
        };
        json["eventType"] = json!(event_type);
        json["timestamp"] = json!(Timestamp::now().to_string());
        let _no_subscribers = self.sender.send(Arc::new(Event { event_type, json }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }
}
