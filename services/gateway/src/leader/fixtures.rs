//! What the leader's unit tests start from: apps as a leader holds them after their
//! deployment, and status updates as the master sends them.

use marina_proto::agent::v1::{TaskState, TaskStatus};
use serde_json::json;

use crate::app::{self, AppDefinition, Timestamp};

use super::{AppEntry, State};

/// The app `json` defines (valid, or the test is wrong).
pub fn app(json: &str) -> AppDefinition {
    app::parse_app(json.as_bytes(), None).expect("a valid app")
}

/// `/web` running `cmd` in `instances` instances (0.1 cpus, 32 MiB each), backing off 60 s
/// after a failure.
pub fn web(instances: i64, cmd: &str) -> AppDefinition {
    let json = json!({
        "id": "/web", "cmd": cmd, "cpus": 0.1, "mem": 32, "instances": instances, "backoffSeconds": 60,
    });
    app(&json.to_string())
}

/// The state after `apps` were deployed (each stamped with one version), before any
/// instance ran: what a leader holds.
pub fn state_with(apps: &[AppDefinition]) -> State {
    let mut state = State::default();
    for definition in apps {
        let mut definition = definition.clone();
        app::stamp(&mut definition, Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap(), None);
        let entry = AppEntry { definition: definition.clone(), active: Some(definition), deleting: false };
        state.apps.insert(entry.definition.id.to_string(), entry);
    }
    state
}

/// A status update of `task_id` in `state` on `agent-1` (host `h1`), saying `why`.
pub fn status(task_id: &str, state: TaskState) -> TaskStatus {
    TaskStatus {
        task_id: task_id.into(),
        state: state as i32,
        agent_id: "agent-1".into(),
        host: "h1".into(),
        message: "why".into(),
        ..Default::default()
    }
}
