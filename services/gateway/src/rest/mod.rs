//! Marathon's v2 REST API: the shapes, field names, status codes and error bodies existing
//! Marathon clients, CLIs and scripts expect. One file per resource; each handler reads its
//! request, calls the one [`Apps`] method that carries it out, and writes Marathon's answer.
//! Every error becomes its status and body in one place (`impl IntoResponse for AppsError`).

// Handlers bail out with a ready `Response` as their error; it is large, but boxing it on a
// per-request path buys nothing.
#![allow(clippy::result_large_err)]

mod apps;
mod cluster;
mod deployments;
mod events;
mod files;
mod groups;
mod info;
mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Query;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Extension, Router};
use serde::Deserialize;
use serde_json::json;

use crate::Gateway;
use crate::admission::Refused;
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
        // Marina's extension: masters, gateways and agents, for the CLI and the UI.
        .route("/v2/cluster", get(cluster::cluster))
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

/// Answers a read whose JSON grows with the cluster (every app, every task): built and
/// serialized on the blocking pool, never on a runtime worker. At 100,000 tasks that takes
/// seconds, and on a worker it held up the tasks queued behind it there: in the placement
/// benchmark the leader's coord session keep-alive was among them, and the session expired
/// (the gateway lost its leadership to one `GET /v2/apps?embed=apps.tasks`).
async fn off_runtime(build: impl FnOnce() -> Reply + Send + 'static) -> Reply {
    match tokio::task::spawn_blocking(build).await {
        Ok(reply) => reply,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Err(message(StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down")),
    }
}

fn message(status: StatusCode, text: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "message": text.into() }))).into_response()
}

/// The JSON object `{"<field>": [...items]}`, written one item at a time: a listing of every
/// app or task never holds more than one item's JSON tree besides the bytes written (the
/// tree of a whole listing is several times its size).
fn json_list(field: &str, items: impl Iterator<Item = serde_json::Value>) -> Response {
    let mut body = Vec::new();
    body.extend_from_slice(format!("{{{}:[", json!(field)).as_bytes());
    for (index, item) in items.enumerate() {
        if index > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &item).expect("a JSON value serializes");
    }
    body.extend_from_slice(b"]}");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
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
/// The caller's address, for `api_post_event`'s `clientIp`.
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

/// The apps service for the caller at `peer`.
fn service_for(gateway: &Gateway, peer: Peer) -> Result<Apps, Response> {
    Ok(service(gateway)?.for_client(peer.map(|Extension(ConnectInfo(address))| address)))
}

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
            AppsError::Overloaded(refused) => overloaded(&refused),
        }
    }
}

/// A write refused at the door: 429 with `Retry-After` in whole seconds, which Marathon's
/// clients wait out before they retry (a standby passes both through from its leader).
fn overloaded(refused: &Refused) -> Response {
    let mut response = message(StatusCode::TOO_MANY_REQUESTS, refused.to_string());
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(refused.retry_after().as_secs()));
    response
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

// ----- query strings ----------------------------------------------------------------------------

/// A request's query string as Marathon reads it (Jersey's `@QueryParam`): a parameter read as
/// one value (`force`, `id`, `label`, ...) is its first occurrence; a list (`embed`, `status`
/// with `status[]`) is every occurrence, in order (`embed=apps.tasks&embed=apps.deployments`,
/// as Traefik and go-marathon send it); parameters no handler reads are ignored. Values are
/// not split on commas (Jersey does not: `embed=a,b` is one unknown embed); the one list
/// written with commas, a label selector, is parsed as a whole ([`crate::selector::LabelSelectors`]).
///
/// A flag is `true` or `false` in any case (Jersey's `Boolean.valueOf`), or `1`/`0`; an empty
/// one is absent (Jersey gives a primitive its default for an empty value). Any other text is
/// refused with a 400, where Marathon silently reads it as `false`: a typo must not quietly
/// turn a `force=ture` into no force at all.
#[derive(Debug, Default, Clone, PartialEq)]
struct Flags {
    /// `force` as given; each endpoint has its own default (see [`Flags::force_or`]).
    force_given: Option<bool>,
    /// `force`, false when absent: Marathon's default on every endpoint but
    /// `DELETE /v2/apps/{id}`.
    force: bool,
    scale: bool,
    wipe: bool,
    host: Option<String>,
    partial_update: Option<bool>,
    /// Every `embed`, in order.
    embed: Vec<String>,
    id: Option<String>,
    label: Option<String>,
    cmd: Option<String>,
    /// `status` and every `status[]` (`/v2/tasks`).
    status: Vec<String>,
}

impl Flags {
    /// Reads the query's `(name, value)` pairs, in their order; an error is a 400's message.
    fn read(pairs: &[(String, String)]) -> Result<Self, String> {
        let first = |name: &str| pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
        let all = |name: &str| -> Vec<String> {
            pairs.iter().filter(|(key, _)| key == name).map(|(_, value)| value.clone()).collect()
        };
        let flag = |name: &str| first(name).map_or(Ok(None), |value| read_flag(name, &value));
        let force_given = flag("force")?;
        let mut status: Vec<String> = first("status").into_iter().collect();
        status.extend(all("status[]"));
        Ok(Flags {
            force_given,
            force: force_given.unwrap_or(false),
            scale: flag("scale")?.unwrap_or(false),
            wipe: flag("wipe")?.unwrap_or(false),
            host: first("host"),
            partial_update: flag("partialUpdate")?,
            embed: all("embed"),
            id: first("id"),
            label: first("label"),
            cmd: first("cmd"),
            status,
        })
    }

    /// `force`, or the endpoint's default when the query has none (Marathon's `@DefaultValue`:
    /// `true` for `DELETE /v2/apps/{id}`, `false` everywhere else).
    fn force_or(&self, default: bool) -> bool {
        self.force_given.unwrap_or(default)
    }
}

/// One flag's value (see [`Flags`]).
fn read_flag(name: &str, value: &str) -> Result<Option<bool>, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "true" | "1" => Ok(Some(true)),
        "false" | "0" => Ok(Some(false)),
        _ => Err(format!("query parameter {name}: {value:?} is not a boolean (true or false)")),
    }
}

/// Read by hand rather than derived: a derived reader refuses a repeated key ("duplicate
/// field"), which is how Marathon's clients send lists.
impl<'de> Deserialize<'de> for Flags {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = Vec<(String, String)>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("query parameters")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(pairs)
            }
        }
        let pairs = deserializer.deserialize_map(Pairs)?;
        Flags::read(&pairs).map_err(serde::de::Error::custom)
    }
}

/// Whether the caller asked for `text/plain` rather than JSON. Marathon's task lists produce
/// `application/json` and `text/plain;qs=0.1`; Jersey ranks the two by the quality the
/// `Accept` header gives each (the most specific range that matches it), then by that `qs`:
/// text only when the caller rates it above JSON (`Accept: text/plain`, as the HAProxy bridge
/// scripts send). No header, `*/*`, or both at once: JSON. (Where Jersey answers 406 for an
/// `Accept` naming neither, this answers JSON.)
fn wants_text(headers: &HeaderMap) -> bool {
    let ranges: Vec<(String, f32)> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|range| {
            let mut parts = range.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|param| param.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (!media.is_empty()).then_some((media, q))
        })
        .collect();
    if ranges.is_empty() {
        return false;
    }
    // The quality of `kind/sub` under the most specific range that matches it (0: none does).
    let quality = |kind: &str, sub: &str| {
        ranges
            .iter()
            .filter_map(|(media, q)| {
                let (range_kind, range_sub) = media.split_once('/')?;
                let specificity = match (range_kind, range_sub) {
                    (k, s) if k == kind && s == sub => 2,
                    (k, "*") if k == kind => 1,
                    ("*", "*") => 0,
                    _ => return None,
                };
                Some((specificity, *q))
            })
            .max_by_key(|(specificity, _)| *specificity)
            .map_or(0.0, |(_, q)| q)
    };
    quality("text", "plain") > quality("application", "json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(query: &str) -> Result<Flags, String> {
        let uri: axum::http::Uri = format!("/v2/apps?{query}").parse().unwrap();
        Query::<Flags>::try_from_uri(&uri).map(|Query(flags)| flags).map_err(|e| e.body_text())
    }

    #[tokio::test]
    async fn a_refused_write_is_a_429_with_retry_after_and_marathons_error_body() {
        let refused = Refused::QueueFull { in_flight: 4, queued: 8, retry_after: std::time::Duration::from_secs(3) };
        let response = AppsError::from(refused.clone()).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, json!({ "message": refused.to_string() }));
    }

    #[test]
    fn repeated_embeds_are_all_kept_in_order() {
        let flags = read("embed=apps.tasks&embed=apps.deployments&embed=apps.readiness").unwrap();
        assert_eq!(flags.embed, ["apps.tasks", "apps.deployments", "apps.readiness"]);
    }

    #[test]
    fn a_single_value_is_its_first_occurrence_and_unknown_parameters_are_ignored() {
        let flags = read("force=true&force=maybe&id=a&id=b&label=x%3D%3Dy&page=3&_=1700000000").unwrap();
        assert!(flags.force);
        assert_eq!(flags.id.as_deref(), Some("a"));
        assert_eq!(flags.label.as_deref(), Some("x==y"));
    }

    #[test]
    fn flags_read_as_marathon_clients_write_them() {
        for (text, value) in [
            ("true", true),
            ("True", true),
            ("TRUE", true),
            ("1", true),
            ("false", false),
            ("False", false),
            ("0", false),
        ] {
            assert_eq!(read(&format!("force={text}")).unwrap().force_given, Some(value), "{text}");
        }
        assert_eq!(read("force=").unwrap().force_given, None, "empty is absent");
        assert!(read("force=maybe").unwrap_err().contains("not a boolean"));
        assert!(read("partialUpdate=nope").is_err());
    }

    #[test]
    fn force_defaults_per_endpoint() {
        assert!(read("").unwrap().force_or(true));
        assert!(!read("").unwrap().force_or(false));
        assert!(!read("force=false").unwrap().force_or(true));
        assert!(!read("").unwrap().force);
    }

    #[test]
    fn status_and_status_brackets_make_one_list() {
        let flags = read("status=running&status%5B%5D=staging&status[]=killed").unwrap();
        assert_eq!(flags.status, ["running", "staging", "killed"]);
    }

    #[test]
    fn text_plain_only_when_the_caller_ranks_it_above_json() {
        let accept = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
            wants_text(&headers)
        };
        assert!(!wants_text(&HeaderMap::new()));
        assert!(accept("text/plain"));
        assert!(accept("text/*"));
        assert!(accept("text/plain, application/json;q=0.5"));
        assert!(!accept("*/*"));
        assert!(!accept("application/json"));
        assert!(!accept("text/plain, application/json"), "a tie goes to JSON (its qs is higher)");
        assert!(!accept("text/plain, */*"));
        assert!(accept("text/plain, */*;q=0.1"));
        assert!(!accept("text/plain;q=0, */*"));
    }
}
