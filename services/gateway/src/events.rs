//! Marathon's event bus: what `/v2/events` (server-sent events) and the gRPC
//! `WatchEvents` stream carry, with Marathon's event types and fields.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::app::Timestamp;

/// Every event the gateway publishes, with Marathon's fields: the one place an event's type
/// and shape are written (serialized camelCase, as Marathon names them; `eventType` and
/// `timestamp` are added when it is published).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum MarathonEvent {
    /// An app created through the API (REST or gRPC alike).
    #[serde(rename_all = "camelCase")]
    ApiPost { client_ip: Option<String>, uri: String, app_definition: Value },
    /// A deployment started: its plan and first step.
    #[serde(rename_all = "camelCase")]
    DeploymentInfo { plan: Value, current_step: Value },
    #[serde(rename_all = "camelCase")]
    DeploymentStepSuccess { plan: Value, current_step: Value },
    #[serde(rename_all = "camelCase")]
    DeploymentSuccess { id: String, plan: Value },
    /// A deployment that ended without finishing: canceled, rolled back or superseded.
    #[serde(rename_all = "camelCase")]
    DeploymentFailed {
        id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        plan: Option<Value>,
        reason: &'static str,
    },
    /// A deleted app's last task is gone.
    #[serde(rename_all = "camelCase")]
    AppTerminated { app_id: String },
    #[serde(rename_all = "camelCase")]
    StatusUpdate {
        slave_id: String,
        task_id: String,
        task_status: &'static str,
        message: String,
        app_id: String,
        host: String,
        ip_addresses: Vec<Value>,
        ports: Vec<u32>,
        version: String,
    },
    /// An instance's condition changed (Marathon 1.4+).
    #[serde(rename_all = "camelCase")]
    InstanceChanged {
        instance_id: String,
        condition: &'static str,
        run_spec_id: String,
        agent_id: String,
        host: String,
        run_spec_version: String,
    },
    /// An agent killed a task its health checks found failing.
    #[serde(rename_all = "camelCase")]
    UnhealthyInstanceKill {
        app_id: String,
        task_id: String,
        instance_id: String,
        version: String,
        reason: String,
        host: String,
        slave_id: String,
    },
    #[serde(rename_all = "camelCase")]
    HealthStatusChanged { app_id: String, task_id: String, instance_id: String, version: String, alive: bool },
    #[serde(rename_all = "camelCase")]
    FailedHealthCheck { app_id: String, task_id: String, instance_id: String },
}

impl MarathonEvent {
    /// Marathon's `eventType`.
    pub fn event_type(&self) -> &'static str {
        match self {
            MarathonEvent::ApiPost { .. } => "api_post_event",
            MarathonEvent::DeploymentInfo { .. } => "deployment_info",
            MarathonEvent::DeploymentStepSuccess { .. } => "deployment_step_success",
            MarathonEvent::DeploymentSuccess { .. } => "deployment_success",
            MarathonEvent::DeploymentFailed { .. } => "deployment_failed",
            MarathonEvent::AppTerminated { .. } => "app_terminated_event",
            MarathonEvent::StatusUpdate { .. } => "status_update_event",
            MarathonEvent::InstanceChanged { .. } => "instance_changed_event",
            MarathonEvent::UnhealthyInstanceKill { .. } => "unhealthy_instance_kill_event",
            MarathonEvent::HealthStatusChanged { .. } => "health_status_changed_event",
            MarathonEvent::FailedHealthCheck { .. } => "failed_health_check_event",
        }
    }
}

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

    /// Publishes an event, stamped with its `eventType` and the time.
    pub fn publish(&self, event: MarathonEvent) {
        let event_type = event.event_type();
        let mut json = serde_json::to_value(&event).unwrap_or_else(|_| json!({}));
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

    fn terminated(n: usize) -> MarathonEvent {
        MarathonEvent::AppTerminated { app_id: format!("/app-{n}") }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_and_cut_off() {
        let bus = EventBus::with_capacity(4);
        let mut filtered = Box::pin(bus.deliveries(vec!["deployment_success".into()]));
        let mut slow = Box::pin(bus.deliveries(Vec::new()));
        bus.publish(terminated(0));
        bus.publish(MarathonEvent::DeploymentSuccess { id: "d1".into(), plan: json!({}) });
        match filtered.next().await {
            Some(Delivery::Event(event)) => assert_eq!(event.json["id"], "d1", "only the wanted type"),
            other => panic!("expected the deployment event, got {other:?}"),
        }
        for n in 2..10 {
            bus.publish(terminated(n));
        }
        // 10 published, 4 kept: the slow one learns it missed 6, and its stream ends.
        assert!(matches!(slow.next().await, Some(Delivery::Lagged(6))));
        assert!(slow.next().await.is_none());
    }

    /// Events are written as Marathon writes them: its type names and camelCase fields.
    #[test]
    fn events_have_marathons_names_and_fields() {
        let bus = EventBus::with_capacity(4);
        let mut received = bus.subscribe();
        bus.publish(MarathonEvent::StatusUpdate {
            slave_id: "agent-1".into(),
            task_id: "web.1".into(),
            task_status: "TASK_RUNNING",
            message: String::new(),
            app_id: "/web".into(),
            host: "h".into(),
            ip_addresses: Vec::new(),
            ports: vec![31000],
            version: "v".into(),
        });
        bus.publish(MarathonEvent::DeploymentFailed { id: "d1".into(), plan: None, reason: "canceled" });
        let status = received.try_recv().unwrap();
        assert_eq!(status.event_type, "status_update_event");
        for field in ["slaveId", "taskId", "taskStatus", "appId", "ipAddresses", "ports", "version", "timestamp"] {
            assert!(status.json.get(field).is_some(), "{field} in {}", status.json);
        }
        assert_eq!(status.json["eventType"], "status_update_event");
        let failed = received.try_recv().unwrap();
        assert_eq!(failed.json["reason"], "canceled");
        assert!(failed.json.get("plan").is_none(), "no plan where none is known: {}", failed.json);
    }
}
