//! Marathon's event bus: what `/v2/events` (server-sent events) and the gRPC
//! `WatchEvents` stream carry, with Marathon's event types and fields.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

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

/// Events held for subscribers that have not read them yet.
const BUFFERED_EVENTS: usize = 16_384;

impl Default for EventBus {
    fn default() -> Self {
        Self::with_capacity(BUFFERED_EVENTS)
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    Event(Arc<Event>),
    /// The subscriber fell so far behind that this many events were dropped for it; the
    /// stream ends here. A subscriber that silently missed a `status_update_event` would
    /// hold a wrong picture forever, so it is told to reconnect and re-read the state
    /// instead (Marathon closes slow event streams too).
    Lagged(u64),
}

impl EventBus {
    pub fn with_capacity(capacity: usize) -> Self {
        Self { sender: broadcast::channel(capacity).0 }
    }

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

    /// Someone listens: events are worth building (at thousands of status updates a second,
    /// building them for no one costs).
    pub fn is_watched(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }

    /// The events from now on whose type is in `wanted` (every event if it is empty); ends
    /// with [`Delivery::Lagged`] if the subscriber falls behind.
    pub fn deliveries(&self, wanted: Vec<String>) -> impl Stream<Item = Delivery> + Send + 'static {
        BroadcastStream::new(self.subscribe())
            .filter_map(move |received| {
                let delivery = match received {
                    Ok(event) if wanted.is_empty() || wanted.iter().any(|w| w == event.event_type) => {
                        Some(Delivery::Event(event))
                    }
                    Ok(_) => None,
                    Err(BroadcastStreamRecvError::Lagged(missed)) => Some(Delivery::Lagged(missed)),
                };
                std::future::ready(delivery)
            })
            .scan(false, |ended, delivery| {
                if *ended {
                    return std::future::ready(None);
                }
                *ended = matches!(delivery, Delivery::Lagged(_));
                std::future::ready(Some(delivery))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_and_cut_off() {
        let bus = EventBus::with_capacity(4);
        let mut filtered = Box::pin(bus.deliveries(vec!["deployment_success".into()]));
        let mut slow = Box::pin(bus.deliveries(Vec::new()));
        bus.publish("status_update_event", json!({ "n": 0 }));
        bus.publish("deployment_success", json!({ "n": 1 }));
        match filtered.next().await {
            Some(Delivery::Event(event)) => assert_eq!(event.json["n"], 1, "only the wanted type"),
            other => panic!("expected the deployment event, got {other:?}"),
        }
        for n in 2..10 {
            bus.publish("status_update_event", json!({ "n": n }));
        }
        // 10 published, 4 kept: the slow one learns it missed 6, and its stream ends.
        assert!(matches!(slow.next().await, Some(Delivery::Lagged(6))));
        assert!(slow.next().await.is_none());
    }
}
