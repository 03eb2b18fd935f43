//! `/v2/tasks`: every app's tasks, and killing tasks by id.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::apps::task_json;
use super::{Flags, Reply, deployed, invalid_json, service};
use crate::Gateway;
use crate::app::AppDefinition;
use crate::apps::{Apps, KillRequest};

/// Every app's definition by id, for the tasks' service ports and health results.
fn definitions(apps: &Apps) -> BTreeMap<String, AppDefinition> {
    apps.list().into_iter().map(|view| (view.app.id.to_string(), view.app)).collect()
}

pub(super) async fn list(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>) -> Reply {
    let apps = service(&gateway)?;
    let definitions = definitions(&apps);
    let wanted = flags.status.as_deref().map(|s| format!("TASK_{}", s.to_ascii_uppercase()));
    let tasks: Vec<Value> = apps
        .tasks(None)
        .iter()
        .filter(|i| wanted.as_deref().is_none_or(|state| i.state.as_str_name() == state))
        .map(|i| task_json(i, definitions.get(&i.record.app_id)))
        .collect();
    Ok(axum::Json(json!({ "tasks": tasks })).into_response())
}

#[derive(Deserialize)]
struct TaskIds {
    ids: Vec<String>,
}

/// `POST /v2/tasks/delete`: kills exactly the tasks named.
pub(super) async fn kill(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>, body: Bytes) -> Reply {
    let apps = service(&gateway)?;
    let ids: TaskIds = serde_json::from_slice(&body).map_err(|e| invalid_json(&e))?;
    let request = KillRequest { task_ids: ids.ids, scale: flags.scale, force: flags.force, ..KillRequest::default() };
    let killed = apps.kill(request).await?;
    Ok(match killed.deployment {
        Some(result) => deployed(StatusCode::OK, &result),
        None => {
            let definitions = definitions(&apps);
            let tasks: Vec<Value> = killed
                .tasks
                .iter()
                .map(|instance| task_json(instance, definitions.get(&instance.record.app_id)))
                .collect();
            axum::Json(json!({ "tasks": tasks })).into_response()
        }
    })
}
