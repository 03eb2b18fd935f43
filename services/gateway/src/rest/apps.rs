//! `/v2/apps`: apps, their tasks and versions, restarts.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Flags, Reply, deployed, invalid_json, message, service};
use crate::Gateway;
use crate::app::{AppDefinition, PathId};
use crate::apps::{AppView, AppsError, KillRequest, UpdateMode, app_id};
use crate::leader::{Instance, TaskFailure};

// ----- shapes -----------------------------------------------------------------------------------

/// A task as Marathon shows it; `app` gives its service ports and health-check results.
pub(super) fn task_json(instance: &Instance, app: Option<&AppDefinition>) -> Value {
    let mut task = json!({
        "id": instance.record.task_id,
        "appId": instance.record.app_id,
        "host": instance.record.host,
        "ports": instance.record.ports,
        "servicePorts": app.map(service_ports).unwrap_or_default(),
        "slaveId": instance.record.agent_id,
        "state": instance.state.as_str_name(),
        "stagedAt": instance.record.staged_at,
        "startedAt": instance.started_at,
        "version": instance.record.version,
        "ipAddresses": [],
        "localVolumes": [],
    });
    if app.is_some_and(|a| !a.health_checks.is_empty())
        && let Some(alive) = instance.healthy
    {
        task["healthCheckResults"] = json!([{
            "alive": alive,
            "consecutiveFailures": if alive { 0 } else { 1 },
            "taskId": instance.record.task_id,
            "instanceId": instance.record.task_id,
        }]);
    }
    task
}

fn service_ports(app: &AppDefinition) -> Vec<u32> {
    match app.port_mappings() {
        Some(mappings) => mappings.iter().map(|m| u32::from(m.service_port)).collect(),
        None => app.port_definitions.iter().map(|p| u32::from(p.port)).collect(),
    }
}

/// An app as `/v2/apps` shows it: the definition plus counts, deployments, and (when
/// embedded) tasks.
pub(super) fn app_json(view: &AppView, embed_tasks: bool) -> Value {
    use marina_proto::agent::v1::TaskState;
    let mut json = view.app.to_json();
    let live: Vec<&Instance> = view.live().collect();
    let running = live.iter().filter(|i| i.state == TaskState::TaskRunning).count();
    let staged = live.iter().filter(|i| matches!(i.state, TaskState::TaskStaging | TaskState::TaskStarting)).count();
    let healthy = live.iter().filter(|i| i.healthy == Some(true)).count();
    let unhealthy = live.iter().filter(|i| i.healthy == Some(false)).count();
    json["tasksStaged"] = json!(staged);
    json["tasksRunning"] = json!(running);
    json["tasksHealthy"] = json!(healthy);
    json["tasksUnhealthy"] = json!(unhealthy);
    json["deployments"] = json!(view.deployments.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>());
    if embed_tasks {
        json["tasks"] = json!(live.iter().map(|i| task_json(i, Some(&view.app))).collect::<Vec<_>>());
    }
    json
}

/// Marathon's `lastTaskFailure`.
fn task_failure_json(app_id: &str, failure: &TaskFailure) -> Value {
    json!({
        "appId": app_id,
        "host": failure.host,
        "message": failure.message,
        "state": failure.state.as_str_name(),
        "taskId": failure.task_id,
        "timestamp": failure.timestamp,
        "version": failure.version,
        "slaveId": failure.agent_id,
    })
}

// ----- request targets --------------------------------------------------------------------------

/// `/v2/apps/{id}[/tasks[/{taskId}] | /versions[/{v}] | /restart]`: which one.
pub(super) enum AppPath {
    App(String),
    Tasks(String),
    Task(String, String),
    Versions(String),
    Version(String, String),
    Restart(String),
}

impl AppPath {
    pub(super) fn read(rest: &str) -> Self {
        let rest = format!("/{}", rest.trim_matches('/'));
        if let Some(id) = rest.strip_suffix("/restart") {
            return AppPath::Restart(id.to_owned());
        }
        if let Some(id) = rest.strip_suffix("/tasks") {
            return AppPath::Tasks(id.to_owned());
        }
        if let Some(id) = rest.strip_suffix("/versions") {
            return AppPath::Versions(id.to_owned());
        }
        // `/tasks/web` is the app `/tasks/web` (only an app's last segment may not be a
        // reserved word), not task `web` of the root.
        if let Some((id, task)) = rest.rsplit_once("/tasks/")
            && !id.is_empty()
        {
            return AppPath::Task(id.to_owned(), task.to_owned());
        }
        if let Some((id, version)) = rest.rsplit_once("/versions/")
            && !id.is_empty()
        {
            return AppPath::Version(id.to_owned(), version.to_owned());
        }
        AppPath::App(rest)
    }

    /// The app the target names.
    pub(super) fn id(&self) -> Result<PathId, AppsError> {
        match self {
            AppPath::App(id) | AppPath::Tasks(id) | AppPath::Versions(id) | AppPath::Restart(id) => app_id(id),
            AppPath::Task(id, _) | AppPath::Version(id, _) => app_id(id),
        }
    }
}

fn method_not_allowed() -> Response {
    message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// The app a target names when it must name the app itself (not its tasks or versions).
fn the_app(rest: &str) -> Result<PathId, Response> {
    match AppPath::read(rest) {
        target @ AppPath::App(_) => Ok(target.id()?),
        _ => Err(method_not_allowed()),
    }
}

// ----- handlers ---------------------------------------------------------------------------------

pub(super) async fn list(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>) -> Reply {
    let apps = service(&gateway)?;
    let embed_tasks = flags.embed.as_deref().is_some_and(|e| e.contains("tasks"));
    let embed_failures = flags.embed.as_deref().is_some_and(|e| e.contains("lastTaskFailure"));
    let listed: Vec<Value> = apps
        .list()
        .iter()
        .filter(|view| flags.id.as_deref().is_none_or(|id| view.app.id.to_string().contains(id)))
        .filter(|view| flags.cmd.as_deref().is_none_or(|cmd| view.app.cmd.as_deref().is_some_and(|c| c.contains(cmd))))
        .filter(|view| {
            flags.label.as_deref().is_none_or(|label| match label.split_once("==") {
                Some((key, value)) => view.app.labels.get(key.trim()).is_some_and(|v| v == value.trim()),
                None => view.app.labels.contains_key(label.trim()),
            })
        })
        .map(|view| {
            let mut json = app_json(view, embed_tasks);
            if embed_failures && let Some(failure) = apps.last_failure(&view.app.id) {
                json["lastTaskFailure"] = task_failure_json(&view.app.id.to_string(), &failure);
            }
            json
        })
        .collect();
    Ok(axum::Json(json!({ "apps": listed })).into_response())
}

pub(super) async fn create(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>, body: Bytes) -> Reply {
    let (result, view) = service(&gateway)?.create(&body, flags.force).await?;
    let id = view.app.id.to_string();
    let mut response = (StatusCode::CREATED, axum::Json(app_json(&view, true))).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/v2/apps{id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&result.deployment_id) {
        response.headers_mut().insert("Marathon-Deployment-Id", value);
    }
    Ok(response)
}

pub(super) async fn get_path(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    // Read so that a malformed query is a 400 here too; reading one app takes no flags.
    Query(_): Query<Flags>,
) -> Reply {
    let apps = service(&gateway)?;
    let target = AppPath::read(&rest);
    if let AppPath::Task(..) | AppPath::Restart(_) = target {
        return Err(method_not_allowed());
    }
    let id = target.id()?;
    match target {
        AppPath::App(_) => {
            let view = apps.get(&id)?;
            let mut json = app_json(&view, true);
            if let Some(failure) = apps.last_failure(&id) {
                json["lastTaskFailure"] = task_failure_json(&id.to_string(), &failure);
            }
            Ok(axum::Json(json!({ "app": json })).into_response())
        }
        AppPath::Tasks(_) => {
            let view = apps.get(&id)?;
            let tasks: Vec<Value> = view.live().map(|i| task_json(i, Some(&view.app))).collect();
            Ok(axum::Json(json!({ "tasks": tasks })).into_response())
        }
        AppPath::Versions(_) => Ok(axum::Json(json!({ "versions": apps.versions(&id).await? })).into_response()),
        AppPath::Version(_, version) => Ok(axum::Json(apps.version(&id, &version).await?).into_response()),
        AppPath::Task(..) | AppPath::Restart(_) => Err(method_not_allowed()),
    }
}

pub(super) async fn post_path(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    let apps = service(&gateway)?;
    let target = AppPath::read(&rest);
    let AppPath::Restart(_) = target else {
        return Err(method_not_allowed());
    };
    let result = apps.restart(&target.id()?, flags.force).await?;
    Ok(deployed(StatusCode::OK, &result))
}

/// PUT: by default (Marathon's `partialUpdate=true`) the given fields update the app;
/// `partialUpdate=false` replaces it. A missing app is created. `{"version": V}` rolls
/// back to stored version V.
pub(super) async fn put(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Reply {
    let apps = service(&gateway)?;
    let mode = if flags.partial_update.unwrap_or(true) { UpdateMode::PatchOrCreate } else { UpdateMode::Replace };
    let updated = apps.update(&the_app(&rest)?, &body, mode, flags.force).await?;
    Ok(deployed(if updated.created { StatusCode::CREATED } else { StatusCode::OK }, &updated.deployed))
}

pub(super) async fn patch(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Reply {
    let apps = service(&gateway)?;
    let updated = apps.update(&the_app(&rest)?, &body, UpdateMode::Patch, flags.force).await?;
    Ok(deployed(StatusCode::OK, &updated.deployed))
}

/// `PUT /v2/apps`: several apps updated (or created) in one deployment.
pub(super) async fn update_many(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>, body: Bytes) -> Reply {
    let apps = service(&gateway)?;
    let items: Vec<Value> = serde_json::from_slice(&body).map_err(|e| invalid_json(&e))?;
    let result = apps.update_many(items, flags.partial_update.unwrap_or(true), flags.force).await?;
    Ok(deployed(StatusCode::OK, &result))
}

pub(super) async fn delete_path(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    let apps = service(&gateway)?;
    let target = AppPath::read(&rest);
    if let AppPath::Versions(_) | AppPath::Version(..) | AppPath::Restart(_) = target {
        return Err(method_not_allowed());
    }
    let id = target.id()?;
    match target {
        AppPath::App(_) => Ok(deployed(StatusCode::OK, &apps.delete(&id, flags.force).await?)),
        AppPath::Tasks(_) | AppPath::Task(..) => {
            let view = apps.get(&id)?;
            let _ = flags.wipe;
            // `/tasks` kills every task of the app (on `host`, if given); `/tasks/{id}` one.
            let one = match target {
                AppPath::Task(_, task_id) => Some(task_id),
                _ => None,
            };
            let request = KillRequest {
                app: Some(id),
                task_ids: one.iter().cloned().collect(),
                host: if one.is_none() { flags.host.clone() } else { None },
                scale: flags.scale,
                force: flags.force,
            };
            let killed = apps.kill(request).await?;
            let answer = |instance: &Instance| task_json(instance, Some(&view.app));
            Ok(match (killed.deployment, one) {
                (Some(result), _) => deployed(StatusCode::OK, &result),
                (None, None) => {
                    let tasks: Vec<Value> = killed.tasks.iter().map(answer).collect();
                    axum::Json(json!({ "tasks": tasks })).into_response()
                }
                (None, Some(_)) => axum::Json(json!({ "task": killed.tasks.first().map(answer) })).into_response(),
            })
        }
        AppPath::Versions(_) | AppPath::Version(..) | AppPath::Restart(_) => Err(method_not_allowed()),
    }
}
