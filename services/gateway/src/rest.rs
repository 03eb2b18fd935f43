//! Marathon's v2 REST API: the shapes, field names, status codes and error bodies existing
//! Marathon clients, CLIs and scripts expect.

// Handlers bail out with a ready `Response` as their error; it is large, but boxing it on a
// per-request path buys nothing.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::events::Delivery;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Gateway;
use crate::app::{self, AppDefinition, AppError, PathId};
use crate::engine::is_terminal;
use crate::leader::{Change, DeployError, Deployed, Instance, Leader, TaskFailure};

/// Marathon's version this API follows.
pub const MARATHON_VERSION: &str = "1.11.0";

type Reply = Result<Response, Response>;

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": text.into() }))).into_response()
}

/// Marathon's 400 for a body that is not JSON.
fn invalid_json(error: &serde_json::Error) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "message": "Invalid JSON", "details": error.to_string() })))
        .into_response()
}

fn app_error(error: AppError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    (status, axum::Json(error.body())).into_response()
}

impl From<DeployError> for Response {
    fn from(error: DeployError) -> Self {
        deploy_error(error)
    }
}

fn deploy_error(error: DeployError) -> Response {
    match &error {
        DeployError::NotFound(_) | DeployError::NoDeployment(_) => message(StatusCode::NOT_FOUND, error.to_string()),
        DeployError::Exists(_) => message(StatusCode::CONFLICT, error.to_string()),
        DeployError::Locked(ids) => (
            StatusCode::CONFLICT,
            axum::Json(json!({
                "message": error.to_string(),
                "deployments": ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>(),
            })),
        )
            .into_response(),
        DeployError::Invalid(violations) => {
            (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(app::invalid_body(violations))).into_response()
        }
        DeployError::Refused(_) => message(StatusCode::UNPROCESSABLE_ENTITY, error.to_string()),
        DeployError::Deposed { .. } | DeployError::Unavailable(_) => {
            message(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        }
    }
}

fn deployed(status: StatusCode, deployed: &Deployed) -> Response {
    let mut response =
        (status, axum::Json(json!({ "version": deployed.version, "deploymentId": deployed.deployment_id })))
            .into_response();
    if let Ok(value) = HeaderValue::from_str(&deployed.deployment_id) {
        response.headers_mut().insert("Marathon-Deployment-Id", value);
    }
    response
}

fn leader(gateway: &Gateway) -> Result<Arc<Leader>, Response> {
    match &*gateway.role.borrow() {
        Some(leader) if !leader.ended.is_cancelled() => Ok(leader.clone()),
        _ => Err(message(
            StatusCode::SERVICE_UNAVAILABLE,
            "this gateway does not lead; retry (it forwards to the leader once one is known)",
        )),
    }
}

fn app_id(raw: &str) -> Result<PathId, Response> {
    PathId::parse(raw).map_err(|error| message(StatusCode::BAD_REQUEST, format!("invalid app id {raw:?}: {error}")))
}

/// Query flags read as Marathon (and its clients, e.g. Python's `force=False`) write them:
/// `true`/`false` in any case, or `1`/`0`.
fn lenient_bool<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    let text = Option::<String>::deserialize(deserializer)?;
    match text.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(other) => Err(serde::de::Error::custom(format!("{other:?} is not a boolean"))),
    }
}

#[derive(Deserialize, Default)]
struct RawFlags {
    #[serde(default, deserialize_with = "lenient_bool")]
    force: Option<bool>,
    #[serde(default, deserialize_with = "lenient_bool")]
    scale: Option<bool>,
    #[serde(default, deserialize_with = "lenient_bool")]
    wipe: Option<bool>,
    host: Option<String>,
    #[serde(rename = "partialUpdate", default, deserialize_with = "lenient_bool")]
    partial_update: Option<bool>,
    embed: Option<String>,
    id: Option<String>,
    label: Option<String>,
    cmd: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(from = "RawFlags")]
struct Flags {
    force: bool,
    scale: bool,
    wipe: bool,
    host: Option<String>,
    partial_update: Option<bool>,
    embed: Option<String>,
    id: Option<String>,
    label: Option<String>,
    cmd: Option<String>,
    status: Option<String>,
}

impl From<RawFlags> for Flags {
    fn from(raw: RawFlags) -> Self {
        Flags {
            force: raw.force.unwrap_or(false),
            scale: raw.scale.unwrap_or(false),
            wipe: raw.wipe.unwrap_or(false),
            host: raw.host,
            partial_update: raw.partial_update,
            embed: raw.embed,
            id: raw.id,
            label: raw.label,
            cmd: raw.cmd,
            status: raw.status,
        }
    }
}

pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/ping", get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "pong") }))
        .route("/v2/info", get(info))
        .route("/v2/leader", get(get_leader).delete(abdicate))
        .route("/v2/apps", get(list_apps).post(create_app).put(bulk_update))
        .route(
            "/v2/apps/{*rest}",
            get(get_app_path).put(put_app).patch(patch_app).delete(delete_app_path).post(post_app_path),
        )
        .route("/v2/tasks", get(list_tasks))
        .route("/v2/tasks/delete", post(delete_tasks))
        .route("/v2/deployments", get(list_deployments))
        .route("/v2/deployments/{id}", delete(cancel_deployment))
        .route("/v2/queue", get(queue))
        .route("/v2/queue/{*rest}", delete(reset_delay))
        .route("/v2/groups", get(get_root_group).post(create_group))
        .route("/v2/groups/{*id}", get(get_group).put(update_group).delete(delete_group))
        .route("/v2/events", get(events))
        // Pods and HTTP-callback subscriptions are not implemented; tools probe for them, so
        // they get a 404 that says so rather than an empty one.
        .route("/v2/pods", any(|| async { unsupported("pods are") }))
        .route("/v2/pods/{*rest}", any(|| async { unsupported("pods are") }))
        .route("/v2/eventSubscriptions", any(|| async { unsupported("HTTP callback event subscriptions are") }))
        .with_state(gateway)
}

fn unsupported(what: &str) -> Response {
    let hint = "see the README for the endpoints Marina supports";
    message(StatusCode::NOT_FOUND, format!("{what} not supported by Marina; {hint}"))
}

// ----- info and leadership ----------------------------------------------------------------------

async fn info(State(gateway): State<Arc<Gateway>>) -> Response {
    let leader = gateway.leader_address();
    let framework_id = gateway
        .role
        .borrow()
        .as_ref()
        .and_then(|leader| leader.master.borrow().as_ref().map(|s| s.framework_id.clone()));
    axum::Json(json!({
        "name": "marathon",
        "version": MARATHON_VERSION,
        "buildref": format!("marina-{}", marina_daemon::VERSION),
        "elected": gateway.role.borrow().is_some(),
        "leader": leader,
        "frameworkId": framework_id,
        "marathon_config": {
            "master": gateway.config.coord.to_string(),
            "framework_name": gateway.config.framework_name,
            "hostname": gateway.member.address,
            "ha": true,
            "executor": "//cmd",
            "task_launch_timeout": gateway.config.task_launch_timeout_ms,
            "reconciliation_interval": gateway.config.reconcile_interval_ms,
            "failover_timeout": 604800,
            "leader_proxy_connection_timeout_ms": 5000,
            "mesos_role": null,
            "checkpoint": true,
            "local_port_min": 10000,
            "local_port_max": 20000,
        },
        "zookeeper_config": {
            "zk": gateway.config.coord.to_string(),
            "zk_timeout": gateway.config.session_ttl_ms,
            "zk_session_timeout": gateway.config.session_ttl_ms,
            "zk_max_versions": crate::store::MAX_VERSIONS,
        },
        "http_config": { "http_port": gateway.member.address.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()), "https_port": null },
        "event_subscriber": null,
    }))
    .into_response()
}

async fn get_leader(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.leader_address() {
        Some(leader) => axum::Json(json!({ "leader": leader })).into_response(),
        None => message(StatusCode::NOT_FOUND, "There is no leader"),
    }
}

async fn abdicate(State(gateway): State<Arc<Gateway>>) -> Reply {
    leader(&gateway)?;
    gateway.abdicate.notify_one();
    Ok(axum::Json(json!({ "message": "Leadership abdicated" })).into_response())
}

// ----- apps -------------------------------------------------------------------------------------

fn task_json(instance: &Instance, app: Option<&AppDefinition>) -> Value {
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
fn app_json(app: &AppDefinition, instances: &[Instance], deployments: &[String], embed_tasks: bool) -> Value {
    let mut json = app.to_json();
    let live: Vec<&Instance> = instances.iter().filter(|i| !is_terminal(i.state)).collect();
    let running = live.iter().filter(|i| i.state == marina_proto::agent::v1::TaskState::TaskRunning).count();
    let staged = live
        .iter()
        .filter(|i| {
            matches!(
                i.state,
                marina_proto::agent::v1::TaskState::TaskStaging | marina_proto::agent::v1::TaskState::TaskStarting
            )
        })
        .count();
    let healthy = live.iter().filter(|i| i.healthy == Some(true)).count();
    let unhealthy = live.iter().filter(|i| i.healthy == Some(false)).count();
    json["tasksStaged"] = json!(staged);
    json["tasksRunning"] = json!(running);
    json["tasksHealthy"] = json!(healthy);
    json["tasksUnhealthy"] = json!(unhealthy);
    json["deployments"] = json!(deployments.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>());
    if embed_tasks {
        json["tasks"] = json!(live.iter().map(|i| task_json(i, Some(app))).collect::<Vec<_>>());
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

async fn list_apps(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>) -> Reply {
    let leader = leader(&gateway)?;
    let embed_tasks = flags.embed.as_deref().is_some_and(|e| e.contains("tasks"));
    let embed_failures = flags.embed.as_deref().is_some_and(|e| e.contains("lastTaskFailure"));
    let apps: Vec<Value> = leader
        .apps()
        .iter()
        .filter(|(app, _, _)| flags.id.as_deref().is_none_or(|id| app.id.to_string().contains(id)))
        .filter(|(app, _, _)| {
            flags.cmd.as_deref().is_none_or(|cmd| app.cmd.as_deref().is_some_and(|c| c.contains(cmd)))
        })
        .filter(|(app, _, _)| {
            flags.label.as_deref().is_none_or(|label| match label.split_once("==") {
                Some((key, value)) => app.labels.get(key.trim()).is_some_and(|v| v == value.trim()),
                None => app.labels.contains_key(label.trim()),
            })
        })
        .map(|(app, instances, deployments)| {
            let mut json = app_json(app, instances, deployments, embed_tasks);
            let id = app.id.to_string();
            if embed_failures && let Some(failure) = leader.last_failure(&id) {
                json["lastTaskFailure"] = task_failure_json(&id, &failure);
            }
            json
        })
        .collect();
    Ok(axum::Json(json!({ "apps": apps })).into_response())
}

async fn create_app(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>, body: Bytes) -> Reply {
    let leader = leader(&gateway)?;
    let app = app::parse_app(&body, None).map_err(app_error)?;
    let id = app.id.to_string();
    let result = leader
        .deploy_derived(flags.force, |leader| match leader.app(&id) {
            Some(_) => Err(DeployError::Exists(id.clone())),
            None => Ok(vec![Change::to(&id, Some(app))]),
        })
        .await
        .map_err(deploy_error)?;
    let (stored, instances, deployments) =
        leader.app(&id).ok_or_else(|| message(StatusCode::INTERNAL_SERVER_ERROR, "app vanished"))?;
    leader.events.publish(
        "api_post_event",
        json!({ "clientIp": null, "uri": format!("/v2/apps{id}"), "appDefinition": stored.to_json() }),
    );
    let mut response =
        (StatusCode::CREATED, axum::Json(app_json(&stored, &instances, &deployments, true))).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/v2/apps{id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&result.deployment_id) {
        response.headers_mut().insert("Marathon-Deployment-Id", value);
    }
    Ok(response)
}

/// `/v2/apps/{id}[/tasks[/{taskId}] | /versions[/{v}] | /restart]`: which one.
enum AppPath {
    App(String),
    Tasks(String),
    Task(String, String),
    Versions(String),
    Version(String, String),
    Restart(String),
}

/// Reads a request target (`/v2/apps/prod/web/tasks?force=true`) as the handlers do: its
/// query flags, and under `/v2/apps/` or `/v2/groups/` the app or group path and its id. An
/// error is what a handler would answer 400 for. (The handlers' own reading, exposed so the
/// fuzzer can reach it.)
pub fn read_request_target(target: &str) -> Result<(), String> {
    let uri: axum::http::Uri = target.parse().map_err(|e| format!("not a request target: {e}"))?;
    Query::<Flags>::try_from_uri(&uri).map_err(|e| e.body_text())?;
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/v2/apps/") {
        let raw = match split_app_path(rest) {
            AppPath::App(id) | AppPath::Tasks(id) | AppPath::Versions(id) | AppPath::Restart(id) => id,
            AppPath::Task(id, _) | AppPath::Version(id, _) => id,
        };
        PathId::parse(&raw).map_err(|e| e.to_string())?;
    } else if let Some(rest) = path.strip_prefix("/v2/groups/") {
        PathId::parse_group(&format!("/{}", rest.trim_matches('/'))).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn split_app_path(rest: &str) -> AppPath {
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
    // `/tasks/web` is the app `/tasks/web` (only an app's last segment may not be a reserved
    // word), not task `web` of the root.
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

fn not_found_app(id: &str) -> Response {
    message(StatusCode::NOT_FOUND, format!("App '{id}' does not exist"))
}

async fn get_app_path(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    let leader = leader(&gateway)?;
    match split_app_path(&rest) {
        AppPath::App(raw) => {
            let id = app_id(&raw)?.to_string();
            let (app, instances, deployments) = leader.app(&id).ok_or_else(|| not_found_app(&id))?;
            let _ = flags.embed;
            let mut json = app_json(&app, &instances, &deployments, true);
            if let Some(failure) = leader.last_failure(&id) {
                json["lastTaskFailure"] = task_failure_json(&id, &failure);
            }
            Ok(axum::Json(json!({ "app": json })).into_response())
        }
        AppPath::Tasks(raw) => {
            let id = app_id(&raw)?.to_string();
            let (app, instances, _) = leader.app(&id).ok_or_else(|| not_found_app(&id))?;
            let tasks: Vec<Value> =
                instances.iter().filter(|i| !is_terminal(i.state)).map(|i| task_json(i, Some(&app))).collect();
            Ok(axum::Json(json!({ "tasks": tasks })).into_response())
        }
        AppPath::Versions(raw) => {
            let id = app_id(&raw)?.to_string();
            leader.app(&id).ok_or_else(|| not_found_app(&id))?;
            let mut versions = leader
                .store
                .versions(&id)
                .await
                .map_err(|e| message(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            versions.reverse();
            Ok(axum::Json(json!({ "versions": versions })).into_response())
        }
        AppPath::Version(raw, version) => {
            let id = app_id(&raw)?.to_string();
            let stored: Option<Value> = leader
                .store
                .version(&id, &version)
                .await
                .map_err(|e| message(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            stored.map(|json| axum::Json(json).into_response()).ok_or_else(|| {
                message(StatusCode::NOT_FOUND, format!("App '{id}' does not exist in version {version}"))
            })
        }
        AppPath::Task(..) | AppPath::Restart(_) => Err(message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    }
}

async fn post_app_path(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    let leader = leader(&gateway)?;
    let AppPath::Restart(raw) = split_app_path(&rest) else {
        return Err(message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    };
    let id = app_id(&raw)?.to_string();
    let result = leader
        .deploy_derived(flags.force, |leader| {
            let (app, _, _) = leader.app(&id).ok_or_else(|| not_found_app(&id))?;
            Ok::<_, Response>(vec![Change { id: id.clone(), target: Some(app), restart: true }])
        })
        .await?;
    Ok(deployed(StatusCode::OK, &result))
}

/// PUT: by default (Marathon's `partialUpdate=true`) the given fields update the app;
/// `partialUpdate=false` replaces it. A missing app is created. `{"version": V}` rolls
/// back to stored version V.
async fn put_app(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Reply {
    let leader = leader(&gateway)?;
    let AppPath::App(raw) = split_app_path(&rest) else {
        return Err(message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    };
    let path = app_id(&raw)?;
    let id = path.to_string();
    if let Some(version) = app::rollback_version(&body).map_err(app_error)? {
        let stored: Option<Value> = leader
            .store
            .version(&id, &version.to_string())
            .await
            .map_err(|e| message(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let stored = stored
            .ok_or_else(|| message(StatusCode::NOT_FOUND, format!("App '{id}' does not exist in version {version}")))?;
        let target = app::parse_app(&serde_json::to_vec(&stored).unwrap_or_default(), None).map_err(app_error)?;
        let result = leader.deploy(vec![Change::to(&id, Some(target))], flags.force).await.map_err(deploy_error)?;
        return Ok(deployed(StatusCode::OK, &result));
    }
    let mut created = false;
    let result = leader
        .deploy_derived(flags.force, |leader| {
            let target = match leader.app(&id).map(|(app, _, _)| app) {
                Some(existing) if flags.partial_update.unwrap_or(true) => {
                    app::apply_patch(&existing, &body).map_err(app_error)?
                }
                existing => {
                    created = existing.is_none();
                    app::parse_app_at(&body, &path).map_err(app_error)?
                }
            };
            Ok::<_, Response>(vec![Change::to(&id, Some(target))])
        })
        .await?;
    Ok(deployed(if created { StatusCode::CREATED } else { StatusCode::OK }, &result))
}

async fn patch_app(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Reply {
    let leader = leader(&gateway)?;
    let AppPath::App(raw) = split_app_path(&rest) else {
        return Err(message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    };
    let id = app_id(&raw)?.to_string();
    let result = leader
        .deploy_derived(flags.force, |leader| {
            let (existing, _, _) = leader.app(&id).ok_or_else(|| not_found_app(&id))?;
            let target = app::apply_patch(&existing, &body).map_err(app_error)?;
            Ok::<_, Response>(vec![Change::to(&id, Some(target))])
        })
        .await?;
    Ok(deployed(StatusCode::OK, &result))
}

/// `PUT /v2/apps`: several apps updated (or created) in one deployment.
async fn bulk_update(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>, body: Bytes) -> Reply {
    let leader = leader(&gateway)?;
    let items: Vec<Value> = serde_json::from_slice(&body).map_err(|e| invalid_json(&e))?;
    let result = leader
        .deploy_derived(flags.force, |leader| {
            let mut changes = Vec::new();
            for item in items {
                let bytes = serde_json::to_vec(&item).unwrap_or_default();
                let id = item
                    .get("id")
                    .and_then(Value::as_str)
                    .map(PathId::parse)
                    .transpose()
                    .map_err(|e| message(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
                let existing = id.as_ref().and_then(|id| leader.app(&id.to_string())).map(|(app, _, _)| app);
                let target = match existing {
                    Some(existing) if flags.partial_update.unwrap_or(true) => {
                        app::apply_patch(&existing, &bytes).map_err(app_error)?
                    }
                    _ => app::parse_app(&bytes, None).map_err(app_error)?,
                };
                changes.push(Change::to(&target.id.to_string(), Some(target)));
            }
            Ok::<_, Response>(changes)
        })
        .await?;
    Ok(deployed(StatusCode::OK, &result))
}

async fn delete_app_path(
    State(gateway): State<Arc<Gateway>>,
    Path(rest): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    let leader = leader(&gateway)?;
    match split_app_path(&rest) {
        AppPath::App(raw) => {
            let id = app_id(&raw)?.to_string();
            leader.app(&id).ok_or_else(|| not_found_app(&id))?;
            let result = leader.deploy(vec![Change::to(&id, None)], flags.force).await.map_err(deploy_error)?;
            Ok(deployed(StatusCode::OK, &result))
        }
        AppPath::Tasks(raw) => {
            let id = app_id(&raw)?.to_string();
            let (app, _, _) = leader.app(&id).ok_or_else(|| not_found_app(&id))?;
            let (killed, deployment) = leader
                .kill_tasks(Some(&id), &[], flags.host.as_deref(), flags.scale, flags.force)
                .await
                .map_err(deploy_error)?;
            let _ = flags.wipe;
            Ok(match deployment {
                Some(result) => deployed(StatusCode::OK, &result),
                None => {
                    axum::Json(json!({ "tasks": killed.iter().map(|i| task_json(i, Some(&app))).collect::<Vec<_>>() }))
                        .into_response()
                }
            })
        }
        AppPath::Task(raw, task_id) => {
            let id = app_id(&raw)?.to_string();
            let (app, instances, _) = leader.app(&id).ok_or_else(|| not_found_app(&id))?;
            if !instances.iter().any(|i| i.record.task_id == task_id) {
                return Err(message(StatusCode::NOT_FOUND, format!("Task '{task_id}' does not exist")));
            }
            let (killed, deployment) = leader
                .kill_tasks(Some(&id), std::slice::from_ref(&task_id), None, flags.scale, flags.force)
                .await
                .map_err(deploy_error)?;
            Ok(match deployment {
                Some(result) => deployed(StatusCode::OK, &result),
                None => axum::Json(json!({ "task": killed.first().map(|i| task_json(i, Some(&app))) })).into_response(),
            })
        }
        _ => Err(message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    }
}

// ----- tasks, deployments, queue -----------------------------------------------------------

async fn list_tasks(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>) -> Reply {
    let leader = leader(&gateway)?;
    let apps: BTreeMap<String, AppDefinition> =
        leader.apps().into_iter().map(|(app, _, _)| (app.id.to_string(), app)).collect();
    let wanted = flags.status.as_deref().map(|s| format!("TASK_{}", s.to_ascii_uppercase()));
    let tasks: Vec<Value> = leader
        .instances()
        .iter()
        .filter(|i| !is_terminal(i.state))
        .filter(|i| wanted.as_deref().is_none_or(|state| i.state.as_str_name() == state))
        .map(|i| task_json(i, apps.get(&i.record.app_id)))
        .collect();
    Ok(axum::Json(json!({ "tasks": tasks })).into_response())
}

#[derive(Deserialize)]
struct TaskIds {
    ids: Vec<String>,
}

async fn delete_tasks(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>, body: Bytes) -> Reply {
    let leader = leader(&gateway)?;
    let ids: TaskIds = serde_json::from_slice(&body).map_err(|e| invalid_json(&e))?;
    let (killed, deployment) =
        leader.kill_tasks(None, &ids.ids, None, flags.scale, flags.force).await.map_err(deploy_error)?;
    Ok(match deployment {
        Some(result) => deployed(StatusCode::OK, &result),
        None => {
            let apps: BTreeMap<String, AppDefinition> =
                leader.apps().into_iter().map(|(app, _, _)| (app.id.to_string(), app)).collect();
            let tasks: Vec<Value> =
                killed.iter().map(|instance| task_json(instance, apps.get(&instance.record.app_id))).collect();
            axum::Json(json!({ "tasks": tasks })).into_response()
        }
    })
}

async fn list_deployments(State(gateway): State<Arc<Gateway>>) -> Reply {
    let leader = leader(&gateway)?;
    let deployments: Vec<Value> = leader.deployments_json();
    Ok(axum::Json(deployments).into_response())
}

async fn cancel_deployment(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    let leader = leader(&gateway)?;
    match leader.cancel_deployment(&id, flags.force).await.map_err(deploy_error)? {
        Some(rollback) => Ok(deployed(StatusCode::OK, &rollback)),
        None => Ok((StatusCode::ACCEPTED, axum::Json(json!({}))).into_response()),
    }
}

async fn queue(State(gateway): State<Arc<Gateway>>) -> Reply {
    let leader = leader(&gateway)?;
    let queue: Vec<Value> = leader
        .queue()
        .into_iter()
        .map(|(app, count, delay, stats)| {
            let reasons: Vec<Value> = stats
                .rejected
                .iter()
                .map(|(reason, declined)| json!({ "reason": reason.marathon_name(), "declined": declined, "processed": stats.processed }))
                .collect();
            json!({
                "app": app.to_json(),
                "count": count,
                "delay": { "timeLeftSeconds": delay.as_secs(), "overdue": delay.is_zero() },
                "since": stats.since.map(|t| t.to_string()),
                "processedOffersSummary": {
                    "processedOffersCount": stats.processed,
                    "unusedOffersCount": stats.unused,
                    "lastUnusedOfferAt": stats.last_unused_at.map(|t| t.to_string()),
                    "lastUsedOfferAt": stats.last_used_at.map(|t| t.to_string()),
                    "rejectSummaryLastOffers": reasons,
                    "rejectSummaryLaunchAttempt": reasons,
                },
                "lastUnusedOffers": [],
            })
        })
        .collect();
    Ok(axum::Json(json!({ "queue": queue })).into_response())
}

async fn reset_delay(State(gateway): State<Arc<Gateway>>, Path(rest): Path<String>) -> Reply {
    let leader = leader(&gateway)?;
    let Some(raw) = format!("/{}", rest.trim_matches('/')).strip_suffix("/delay").map(str::to_owned) else {
        return Err(message(StatusCode::NOT_FOUND, "no such resource"));
    };
    let id = app_id(&raw)?.to_string();
    if leader.reset_delay(&id) {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(message(StatusCode::NOT_FOUND, format!("Application {id} not found in tasks queue.")))
    }
}

// ----- groups ----------------------------------------------------------------------------------

/// The group tree of `base`, built from the app ids (groups are implicit in Marina).
fn group_json(base: &PathId, apps: &[(AppDefinition, Vec<Instance>, Vec<String>)]) -> Value {
    let mut own = Vec::new();
    let mut subgroups: BTreeMap<String, PathId> = BTreeMap::new();
    for (app, instances, deployments) in apps {
        if !base.contains(&app.id) || app.id == *base {
            continue;
        }
        if app.id.parent() == *base {
            own.push(app_json(app, instances, deployments, false));
        } else {
            // A group may have a name an app may not (`/tasks` of `/tasks/web`).
            let child = app.id.ancestor(base.segments().len() + 1);
            subgroups.insert(child.to_string(), child);
        }
    }
    let groups: Vec<Value> = subgroups.values().map(|child| group_json(child, apps)).collect();
    json!({ "id": base.to_string(), "apps": own, "groups": groups, "dependencies": [], "version": app::Timestamp::now().to_string() })
}

async fn get_root_group(State(gateway): State<Arc<Gateway>>) -> Reply {
    let leader = leader(&gateway)?;
    Ok(axum::Json(group_json(&PathId::root(), &leader.apps())).into_response())
}

async fn get_group(State(gateway): State<Arc<Gateway>>, Path(raw): Path<String>) -> Reply {
    let leader = leader(&gateway)?;
    let id = PathId::parse_group(&format!("/{}", raw.trim_matches('/')))
        .map_err(|e| message(StatusCode::BAD_REQUEST, e.to_string()))?;
    let apps = leader.apps();
    if !apps.iter().any(|(app, _, _)| id.contains(&app.id) && app.id != id) {
        return Err(message(StatusCode::NOT_FOUND, format!("Group '{id}' does not exist")));
    }
    Ok(axum::Json(group_json(&id, &apps)).into_response())
}

/// Every app of a group body (`{"id": "/g", "apps": [...], "groups": [...]}`), ids resolved
/// against the group.
fn group_apps(body: &Value, base: &PathId, out: &mut Vec<AppDefinition>) -> Result<(), Response> {
    let id = match body.get("id").and_then(Value::as_str) {
        Some(id) => PathId::resolve(id, base).map_err(|e| message(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?,
        None => base.clone(),
    };
    for app in body.get("apps").and_then(Value::as_array).into_iter().flatten() {
        let bytes = serde_json::to_vec(app).unwrap_or_default();
        out.push(app::parse_app(&bytes, Some(&id)).map_err(app_error)?);
    }
    for group in body.get("groups").and_then(Value::as_array).into_iter().flatten() {
        // A nested group lies in its parent, as Marathon requires: `PUT /v2/groups/prod`
        // must not deploy `/other/x` (found by fuzzing).
        let nested = group.get("id").and_then(Value::as_str).map(|child| PathId::resolve_lenient(child, &id));
        if let Some(child) = nested
            && (child.is_root() || child.parent() != id)
        {
            let error = format!("Group {child} is not a child of {id}. Hint: use relative paths.");
            let violation = app::Violation::new("/groups", error);
            return Err((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(app::invalid_body(&[violation]))).into_response());
        }
        group_apps(group, &id, out)?;
    }
    Ok(())
}

/// Marathon's answer to a group body that is not a JSON object.
fn group_not_object() -> Response {
    let violation = app::Violation::new("/", "error.expected.jsobject");
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({ "message": "Invalid JSON", "details": [violation] })))
        .into_response()
}

/// One group request deploys at most [`app::MAX_ITEMS`] apps: each is validated, stored and
/// planned in the same deployment.
fn too_many_apps(apps: &[AppDefinition]) -> Result<(), Response> {
    if apps.len() <= app::MAX_ITEMS {
        return Ok(());
    }
    let violation =
        app::Violation::new("/apps", format!("got {} apps, expected {} or less", apps.len(), app::MAX_ITEMS));
    Err((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(app::invalid_body(&[violation]))).into_response())
}

/// The apps of a group body (`POST /v2/groups` with `group` None, `PUT /v2/groups/{group}`
/// with it: the body's id is then the URL's), each read and validated, ids resolved against
/// their groups; or the answer that refuses the body.
pub fn read_group(body: &[u8], group: Option<&PathId>) -> Result<Vec<AppDefinition>, Response> {
    let mut body: Value = serde_json::from_slice(body).map_err(|e| invalid_json(&e))?;
    if let Some(group) = group {
        let Some(object) = body.as_object_mut() else {
            return Err(group_not_object());
        };
        object.insert("id".to_owned(), json!(group.to_string()));
    }
    let mut apps = Vec::new();
    group_apps(&body, &PathId::root(), &mut apps)?;
    too_many_apps(&apps)?;
    Ok(apps)
}

async fn create_group(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>, body: Bytes) -> Reply {
    let leader = leader(&gateway)?;
    let apps = read_group(&body, None)?;
    if apps.is_empty() {
        return Err(message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the group has no apps (groups are implicit in Marina: they exist through their apps)",
        ));
    }
    let result = leader
        .deploy_derived(flags.force, |leader| {
            if let Some(existing) = apps.iter().find(|app| leader.app(&app.id.to_string()).is_some()) {
                return Err(DeployError::Exists(existing.id.to_string()));
            }
            Ok(apps.into_iter().map(|app| Change::to(&app.id.to_string(), Some(app))).collect())
        })
        .await
        .map_err(deploy_error)?;
    Ok(deployed(StatusCode::CREATED, &result))
}

async fn update_group(
    State(gateway): State<Arc<Gateway>>,
    Path(raw): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Reply {
    let leader = leader(&gateway)?;
    let base = PathId::parse(&format!("/{}", raw.trim_matches('/')))
        .map_err(|e| message(StatusCode::BAD_REQUEST, e.to_string()))?;
    let apps = read_group(&body, Some(&base))?;
    let changes = apps.into_iter().map(|app| Change::to(&app.id.to_string(), Some(app))).collect();
    let result = leader.deploy(changes, flags.force).await.map_err(deploy_error)?;
    Ok(deployed(StatusCode::OK, &result))
}

async fn delete_group(
    State(gateway): State<Arc<Gateway>>,
    Path(raw): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    let leader = leader(&gateway)?;
    let id = PathId::parse_group(&format!("/{}", raw.trim_matches('/')))
        .map_err(|e| message(StatusCode::BAD_REQUEST, e.to_string()))?;
    let changes: Vec<Change> = leader
        .apps()
        .into_iter()
        .filter(|(app, _, _)| id.contains(&app.id))
        .map(|(app, _, _)| Change::to(&app.id.to_string(), None))
        .collect();
    if changes.is_empty() {
        return Err(message(StatusCode::NOT_FOUND, format!("Group '{id}' does not exist")));
    }
    let result = leader.deploy(changes, flags.force).await.map_err(deploy_error)?;
    Ok(deployed(StatusCode::OK, &result))
}

// ----- events ------------------------------------------------------------------------------------

/// `GET /v2/events`: server-sent events; `?event_type=a&event_type=b` filters.
async fn events(State(gateway): State<Arc<Gateway>>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let wanted: Vec<String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == "event_type")
        .map(|(_, value)| value.to_owned())
        .collect();
    let _ = headers;
    let attached = json!({ "eventType": "event_stream_attached", "remoteAddress": null, "timestamp": app::Timestamp::now().to_string() });
    let first = futures::stream::iter([Ok::<_, Infallible>(
        SseEvent::default().event("event_stream_attached").data(attached.to_string()),
    )]);
    let shutdown = gateway.shutdown.clone();
    let live = gateway
        .events
        .deliveries(wanted)
        .map(|delivery| {
            Ok::<_, Infallible>(match delivery {
                Delivery::Event(event) => SseEvent::default().event(event.event_type).data(event.json.to_string()),
                Delivery::Lagged(missed) => {
                    let lagged = json!({
                        "eventType": "event_stream_lagged",
                        "missedEvents": missed,
                        "message": "this stream fell behind and is closed; reconnect and re-read the state",
                        "timestamp": app::Timestamp::now().to_string(),
                    });
                    SseEvent::default().event("event_stream_lagged").data(lagged.to_string())
                }
            })
        })
        .take_until(async move { shutdown.cancelled().await });
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        Box::pin(first.chain(live));
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}
