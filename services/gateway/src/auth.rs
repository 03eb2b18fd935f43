//! Who may call the gateway's API, and requests a browser could be made to send.
//!
//! **Callers.** With no credentials configured every caller may do everything (a gateway on
//! loopback, as `marina dev` runs it). Once `auth.http_credentials` (Marathon's
//! `--http_credentials user:password`) or `auth.tokens` are set, every request needs one:
//! HTTP Basic with a configured user and password (full access, as in Marathon), or a bearer
//! token with its role — `admin` (everything) or `read-only` (what only reads). The gRPC apps
//! API takes the same credentials as `authorization` metadata. A request without valid
//! credentials is answered 401 with `WWW-Authenticate: Basic` (so marathon-python's
//! username and password and a browser's login prompt work unchanged), or
//! `UNAUTHENTICATED` over gRPC; a read-only caller's write is 403 (`PERMISSION_DENIED`).
//! `/ping`, `/health`, gRPC health and reflection stay open: they tell nothing about apps.
//!
//! **Cross-site requests** (CSRF), refused whether or not credentials are configured: a web
//! page an operator opens can make the browser send a POST with a `text/plain` or form body,
//! or one with no type at all, to any address, credentials included. So a write's body must
//! be JSON (`Content-Type: application/json`: 415 otherwise, as Marathon answers), and a write
//! whose `Origin` is another site is 403. Marathon's clients and the web UI send JSON from
//! their own origin, and are not affected.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Only what reads.
    ReadOnly,
}

/// A bearer token and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub token: String,
    pub role: Role,
}

/// The `[auth]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `user:password` pairs allowed everything (Marathon's `--http_credentials`); a list, or
    /// one string of pairs separated by commas (as an environment variable is written).
    #[serde(deserialize_with = "one_or_many")]
    pub http_credentials: Vec<String>,
    /// Bearer tokens, each with its role.
    pub tokens: Vec<Token>,
}

impl AuthConfig {
    /// What is wrong with these settings (a configuration error), naming the key.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        for pair in &self.http_credentials {
            match pair.split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => {}
                _ => {
                    return Some((
                        "auth.http_credentials",
                        format!("{:?} is not user:password (both non-empty)", redact(pair)),
                    ));
                }
            }
        }
        if let Some(short) = self.tokens.iter().find(|t| t.token.len() < MIN_TOKEN_BYTES) {
            return Some((
                "auth.tokens",
                format!("a token of {} bytes is too easy to guess: use at least {MIN_TOKEN_BYTES}", short.token.len()),
            ));
        }
        None
    }

    /// No credentials configured: anyone who reaches the port may call anything.
    pub fn is_open(&self) -> bool {
        self.http_credentials.is_empty() && self.tokens.is_empty()
    }

    /// The role of the caller whose `Authorization` header is `authorization`, if its
    /// credentials are valid.
    fn role_of(&self, authorization: &str) -> Option<Role> {
        let (scheme, credentials) = authorization.trim().split_once(' ')?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).ok()?;
            // Every configured pair is compared, so the time taken does not tell which matched.
            let matched = self
                .http_credentials
                .iter()
                .fold(false, |matched, pair| constant_time_eq(pair.as_bytes(), &decoded) | matched);
            return matched.then_some(Role::Admin);
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.tokens.iter().fold(None, |role, token| {
                if constant_time_eq(token.token.as_bytes(), credentials.as_bytes()) { Some(token.role) } else { role }
            });
        }
        None
    }
}

/// Shortest bearer token accepted: 128 bits as hex.
const MIN_TOKEN_BYTES: usize = 32;

/// `user:…` for messages: never a password in a log or an error.
fn redact(pair: &str) -> String {
    match pair.split_once(':') {
        Some((user, _)) => format!("{user}:…"),
        None => "…".to_owned(),
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(line) => line.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        OneOrMany::Many(list) => list,
    })
}

/// Equal contents, compared in a time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Paths any caller may reach.
fn is_open_path(path: &str) -> bool {
    matches!(path, "/ping" | "/health")
        || path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.")
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Whether a gRPC method only reads (`/marina.apps.v1.Apps/ListApps`).
fn grpc_reads(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    ["Get", "List", "Watch"].iter().any(|prefix| method.starts_with(prefix))
}

/// The middleware: refuses cross-site writes, then callers without the right credentials.
pub async fn guard(State(auth): State<Arc<AuthConfig>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let grpc = is_grpc(request.headers());
    let writes = if grpc {
        !grpc_reads(path)
    } else {
        !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS)
    };
    if writes
        && !grpc
        && let Some(refusal) = cross_site(&request)
    {
        return refusal;
    }
    if auth.is_open() || is_open_path(path) {
        return next.run(request).await;
    }
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match authorization.and_then(|value| auth.role_of(value)) {
        None => unauthenticated(grpc),
        Some(Role::ReadOnly) if writes => forbidden(grpc, "this caller may only read"),
        Some(_) => next.run(request).await,
    }
}

/// Why a write is refused as one a web page could have made a browser send, if it is.
fn cross_site(request: &Request) -> Option<Response> {
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        // HTTP/1.1 names the host in `Host`, HTTP/2 in the request's authority.
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let origin = origin.to_str().unwrap_or_default();
        let same = origin.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
        if !same {
            return Some(message(StatusCode::FORBIDDEN, "a write from another origin (cross-site request) is refused"));
        }
    }
    let has_body = headers.get(header::CONTENT_LENGTH).is_some_and(|length| length != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let json = content_type.is_some_and(|value| {
        let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
    });
    if (has_body || content_type.is_some()) && !json {
        return Some(message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a request body must be JSON (Content-Type: application/json)",
        ));
    }
    None
}

fn message(status: StatusCode, text: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "message": text }))).into_response()
}

fn unauthenticated(grpc: bool) -> Response {
    if grpc {
        return grpc_status(tonic::Code::Unauthenticated, "credentials are required (authorization metadata)");
    }
    let mut response = message(StatusCode::UNAUTHORIZED, "credentials are required");
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"Marina\""));
    response
}

fn forbidden(grpc: bool, why: &str) -> Response {
    if grpc {
        return grpc_status(tonic::Code::PermissionDenied, why);
    }
    message(StatusCode::FORBIDDEN, why)
}

/// A gRPC answer of `code` alone (a trailers-only response).
fn grpc_status(code: tonic::Code, why: &str) -> Response {
    tonic::Status::new(code, why).into_http::<axum::body::Body>().into_response()
}
