//! Marathon's v2 REST API: the shapes, field names, status codes and error bodies existing
//! Marathon clients, CLIs and scripts expect. One file per resource; each handler reads its
//! request, calls the one [`Apps`] method that carries it out, and writes Marathon's answer.
//! Every error becomes its status and body in one place (`impl IntoResponse for AppsError`).

// Handlers bail out with a ready `Response` as their error; it is large, but boxing it on a
// per-request path buys nothing.
#![allow(clippy::result_large_err)]

mod apps;
mod deployments;
mod events;
mod files;
mod groups;
mod info;
mod tasks;

use std::sync::Arc;

use axum::Router;
use axum::extract::Query;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use serde::Deserialize;
use serde_json::json;

use crate::Gateway;
use crate::app;
use crate::apps::{Apps, AppsError};
use crate::leader::{DeployError, Deployed};

pub use self::groups::read_group;
pub use self::info::MARATHON_VERSION;

type Reply = Result<Response, Response>;

pub fn routes(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/ping", get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "pong") }))
        .route("/v2/info", get(info::info))
        .route("/v2/leader", get(info::get_leader).delete(info::abdicate))
        .route("/v2/apps", get(apps::list).post(apps::create).put(apps::update_many))
        .route(
            "/v2/apps/{*rest}",
            get(apps::get_path).put(apps::put).patch(apps::patch).delete(apps::delete_path).post(apps::post_path),
        )
        .route("/v2/tasks", get(tasks::list))
        .route("/v2/tasks/delete", post(tasks::kill))
        // Marina's extension: a task's sandbox files (Mesos' files API by task id).
        .route("/v2/tasks/{task_id}/files/browse", get(files::browse))
        .route("/v2/tasks/{task_id}/files/read", get(files::read_file))
        .route("/v2/tasks/{task_id}/files/download", get(files::download))
        .route("/v2/deployments", get(deployments::list))
        .route("/v2/deployments/{id}", delete(deployments::cancel))
        .route("/v2/queue", get(deployments::queue))
        .route("/v2/queue/{*rest}", delete(deployments::reset_delay))
        .route("/v2/groups", get(groups::get_root).post(groups::create))
        .route("/v2/groups/{*id}", get(groups::get).put(groups::update).delete(groups::delete))
        .route("/v2/events", get(events::stream))
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

/// Reads a request target (`/v2/apps/prod/web/tasks?force=true`) as the handlers do: its
/// query flags, and under `/v2/apps/` or `/v2/groups/` the app or group path and its id. An
/// error is what a handler would answer 400 for. (The handlers' own reading, exposed so the
/// fuzzer can reach it.)
pub fn read_request_target(target: &str) -> Result<(), String> {
    let uri: axum::http::Uri = target.parse().map_err(|e| format!("not a request target: {e}"))?;
    Query::<Flags>::try_from_uri(&uri).map_err(|e| e.body_text())?;
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/v2/apps/") {
        apps::AppPath::read(rest).id().map_err(|e| e.to_string())?;
    } else if let Some(rest) = path.strip_prefix("/v2/groups/") {
        crate::apps::group_id(rest).map_err(|e| e.to_string())?;
    }
    Ok(())
}

// ----- answers ----------------------------------------------------------------------------------

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": text.into() }))).into_response()
}

/// Marathon's 400 for a body that is not JSON.
fn invalid_json(error: &serde_json::Error) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "message": "Invalid JSON", "details": error.to_string() })))
        .into_response()
}

/// A deployment's answer: its id and version, and its id in `Marathon-Deployment-Id`.
fn deployed(status: StatusCode, deployed: &Deployed) -> Response {
    let mut response =
        (status, axum::Json(json!({ "version": deployed.version, "deploymentId": deployed.deployment_id })))
            .into_response();
    if let Ok(value) = HeaderValue::from_str(&deployed.deployment_id) {
        response.headers_mut().insert("Marathon-Deployment-Id", value);
    }
    response
}

/// The apps service, or the answer of a gateway that does not lead.
fn service(gateway: &Gateway) -> Result<Apps, Response> {
    Apps::of(gateway).map_err(IntoResponse::into_response)
}

/// Every error of the apps service as Marathon answers it.
impl IntoResponse for AppsError {
    fn into_response(self) -> Response {
        match self {
            AppsError::NotLeading => message(StatusCode::SERVICE_UNAVAILABLE, self.to_string()),
            AppsError::BadId { .. } => message(StatusCode::BAD_REQUEST, self.to_string()),
            AppsError::Definition(error) => {
                let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
                (status, axum::Json(error.body())).into_response()
            }
            AppsError::Unprocessable(_) => message(StatusCode::UNPROCESSABLE_ENTITY, self.to_string()),
            AppsError::Deploy(error) => deploy_error(error),
            AppsError::NoTask(_) | AppsError::NoVersion { .. } | AppsError::NoGroup(_) | AppsError::NotQueued(_) => {
                message(StatusCode::NOT_FOUND, self.to_string())
            }
        }
    }
}

impl From<AppsError> for Response {
    fn from(error: AppsError) -> Self {
        error.into_response()
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

// ----- query flags ------------------------------------------------------------------------------

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
