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
/// and shape are written (serialized camelCase, as Marathon 1.x's `EventFormats` name them;
/// `eventType` and `timestamp` — RFC 3339 in UTC with milliseconds, Marathon's
/// `Timestamp.toString` — are added when it is published).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum MarathonEvent {
    /// A change through the API (REST or gRPC alike): an app created, updated, scaled,
    /// restarted or deleted, on its own or as part of a group. `clientIp` is the caller's
    /// address (`null` where the door does not know it), `uri` the request's path, and
    /// `appDefinition` the app as the change leaves it (as it was, for a deletion).
    #[serde(rename_all = "camelCase")]
    ApiPost { client_ip: Option<String>, uri: String, app_definition: Value },
    /// A change of the group tree was accepted (Marathon publishes it for every change of
    /// its root group): `groupId` is the finest group the change was made in (an app's
    /// parent, or a changed group's parent), `version` the tree's new version.
    #[serde(rename_all = "camelCase")]
    GroupChangeSuccess { group_id: String, version: String },
    /// A change of the group tree was refused (a conflict, a lock, an invalid result).
    #[serde(rename_all = "camelCase")]
    GroupChangeFailed { group_id: String, version: String, reason: String },
    /// A deployment started: its plan and first step.
    #[serde(rename_all = "camelCase")]
    DeploymentInfo { plan: Value, current_step: Value },
    #[serde(rename_all = "camelCase")]
    DeploymentStepSuccess { plan: Value, current_step: Value },
    /// The step a deployment was carrying out did not finish: the deployment was canceled or
    /// superseded while it ran.
    #[serde(rename_all = "camelCase")]
    DeploymentStepFailure { plan: Value, current_step: Value },
    #[serde(rename_all = "camelCase")]
    DeploymentSuccess { id: String, plan: Value },
    /// A deployment that ended without finishing: canceled, rolled back or superseded.
    /// `reason` is Marina's addition (Marathon writes `id` and `plan` only).
    #[serde(rename_all = "camelCase")]
    DeploymentFailed { id: String, plan: Value, reason: &'static str },
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
    /// A health check of an app's version is started (each check of each new version, as
    /// Marathon's health check manager adds them when a deployment step begins).
    #[serde(rename_all = "camelCase")]
    AddHealthCheck { app_id: String, version: String, health_check: Value },
    /// A health check of an app is stopped (its app deleted, or its version replaced).
    #[serde(rename_all = "camelCase")]
    RemoveHealthCheck { app_id: String },
    #[serde(rename_all = "camelCase")]
    HealthStatusChanged { app_id: String, task_id: String, instance_id: String, version: String, alive: bool },
    /// A task's health check failed; `healthCheck` is the app's check (Marathon 1.4+ names
    /// the task `instanceId`; `taskId` is kept for clients of earlier versions).
    #[serde(rename_all = "camelCase")]
    FailedHealthCheck { app_id: String, task_id: String, instance_id: String, health_check: Value },
}

impl MarathonEvent {
    /// Marathon's `eventType`.
    pub fn event_type(&self) -> &'static str {
        match self {
            MarathonEvent::ApiPost { .. } => "api_post_event",
            MarathonEvent::GroupChangeSuccess { .. } => "group_change_success",
            MarathonEvent::GroupChangeFailed { .. } => "group_change_failed",
            MarathonEvent::DeploymentInfo { .. } => "deployment_info",
            MarathonEvent::DeploymentStepSuccess { .. } => "deployment_step_success",
            MarathonEvent::DeploymentStepFailure { .. } => "deployment_step_failure",
            MarathonEvent::DeploymentSuccess { .. } => "deployment_success",
            MarathonEvent::DeploymentFailed { .. } => "deployment_failed",
            MarathonEvent::AppTerminated { .. } => "app_terminated_event",
            MarathonEvent::StatusUpdate { .. } => "status_update_event",
            MarathonEvent::InstanceChanged { .. } => "instance_changed_event",
            MarathonEvent::UnhealthyInstanceKill { .. } => "unhealthy_instance_kill_event",
            MarathonEvent::AddHealthCheck { .. } => "add_health_check_event",
            MarathonEvent::RemoveHealthCheck { .. } => "remove_health_check_event",
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
        bus.publish(MarathonEvent::DeploymentFailed {
            id: "d1".into(),
            plan: json!({ "id": "d1" }),
            reason: "canceled",
        });
        let status = received.try_recv().unwrap();
        assert_eq!(status.event_type, "status_update_event");
        for field in ["slaveId", "taskId", "taskStatus", "appId", "ipAddresses", "ports", "version", "timestamp"] {
            assert!(status.json.get(field).is_some(), "{field} in {}", status.json);
        }
        assert_eq!(status.json["eventType"], "status_update_event");
        let failed = received.try_recv().unwrap();
        assert_eq!(failed.json["reason"], "canceled");
        assert_eq!(failed.json["plan"]["id"], "d1", "always with its plan: {}", failed.json);
    }

    /// The fields of each event, named as Marathon's `EventFormats` write them, and nothing
    /// else but `eventType` and `timestamp`.
    #[test]
    fn each_event_has_exactly_marathons_fields() {
        let check = json!({ "protocol": "COMMAND", "command": { "value": "true" } });
        let cases: Vec<(MarathonEvent, &[&str])> = vec![
            (
                MarathonEvent::ApiPost {
                    client_ip: Some("127.0.0.1".into()),
                    uri: "/v2/apps/a".into(),
                    app_definition: json!({}),
                },
                &["clientIp", "uri", "appDefinition"],
            ),
            (MarathonEvent::GroupChangeSuccess { group_id: "/".into(), version: "v".into() }, &["groupId", "version"]),
            (
                MarathonEvent::GroupChangeFailed { group_id: "/g".into(), version: "v".into(), reason: "no".into() },
                &["groupId", "version", "reason"],
            ),
            (
                MarathonEvent::DeploymentStepFailure { plan: json!({}), current_step: json!({ "actions": [] }) },
                &["plan", "currentStep"],
            ),
            (
                MarathonEvent::AddHealthCheck { app_id: "/a".into(), version: "v".into(), health_check: check.clone() },
                &["appId", "version", "healthCheck"],
            ),
            (MarathonEvent::RemoveHealthCheck { app_id: "/a".into() }, &["appId"]),
            (
                MarathonEvent::FailedHealthCheck {
                    app_id: "/a".into(),
                    task_id: "a.1".into(),
                    instance_id: "a.1".into(),
                    health_check: check,
                },
                &["appId", "taskId", "instanceId", "healthCheck"],
            ),
        ];
        let bus = EventBus::with_capacity(16);
        let mut received = bus.subscribe();
        for (event, fields) in cases {
            let event_type = event.event_type();
            bus.publish(event);
            let published = received.try_recv().unwrap();
            let mut keys: Vec<&str> = published.json.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            let mut expected: Vec<&str> = fields.iter().copied().chain(["eventType", "timestamp"]).collect();
            expected.sort_unstable();
            assert_eq!(keys, expected, "{event_type}");
            assert_eq!(published.json["eventType"], event_type);
            let timestamp = published.json["timestamp"].as_str().unwrap();
            assert!(
                Timestamp::parse(timestamp).is_ok() && timestamp.ends_with('Z') && timestamp.len() == 24,
                "{timestamp}"
            );
        }
    }
}
