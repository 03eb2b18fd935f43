//! The gateway's REST API as the CLI calls it: which gateway (flag, env, a `marina dev` data
//! dir's `endpoints.json`, else `http://127.0.0.1:8080`), with which credentials and TLS, the
//! next listed gateway when one cannot be reached, and errors that say what the gateway
//! answered (Marathon's 422 details one per line).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use marina_daemon::tls::Role;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// The gateway when nothing else names one: `marina dev`'s first gateway on its fixed ports.
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// How long one API call may take (not the event stream, which stays open).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a call refused with 429 (the gateway's write queue full) is made again.
const BUSY_RETRIES: usize = 5;

/// A 429's `Retry-After` in whole seconds (1–30 s; 1 s when absent or not a number).
fn retry_after(response: &reqwest::Response) -> Duration {
    let seconds = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(seconds.clamp(1, 30))
}
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer an API call reads (the biggest real ones, `/v2/apps` of a large
/// cluster or a 4 MiB file read, are far below it).
const MAX_BODY: usize = 64 << 20;

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Gateway options (app, task, deployment, queue, leader, cluster)")]
pub struct GatewayOptions {
    /// The gateway's URL (http:// or https://; any gateway answers, standbys forward to the
    /// leader). Several, comma-separated, are tried in turn when one cannot be reached.
    /// Default: the gateways in `<data-dir>/endpoints.json`, else http://127.0.0.1:8080.
    #[arg(long, env = "MARINA_GATEWAY", global = true, value_name = "URL")]
    pub gateway: Option<String>,
    /// HTTP Basic credentials the gateway requires (its --http-credentials). Default:
    /// `<data-dir>/credentials`, written by `marina dev --http-credentials`, sent only to the
    /// gateways that data dir lists (or, listing none, to http://127.0.0.1:8080).
    #[arg(long, env = "MARINA_CREDENTIALS", global = true, value_name = "USER:PASSWORD", hide_env_values = true)]
    pub credentials: Option<String>,
    /// A bearer token of the gateway's `[[auth.tokens]]`.
    #[arg(long, env = "MARINA_TOKEN", global = true, hide_env_values = true, conflicts_with = "credentials")]
    pub token: Option<String>,
    /// CA certificates (PEM) to trust for an https:// gateway, which must then name its host
    /// in its certificate. Without it, the operator certificate's CA (see --tls-dir) is
    /// trusted and the gateway is checked by its role, as Marina's services check each other.
    #[arg(long, env = "MARINA_CA_FILE", global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// A `marina dev` data dir: its `endpoints.json` names the gateways, its `credentials` the
    /// login and its `tls/` the operator certificate. Default: `marina dev`'s default.
    #[arg(long = "data-dir", id = "data_dir", env = "MARINA_DATA_DIR", global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub tls: crate::operator::OperatorTls,
}

#[derive(Clone)]
enum Auth {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

/// A client of one cluster's gateways. Cheap to clone: clones share the connection pool and
/// which gateway answered last.
#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    urls: Arc<Vec<String>>,
    /// The gateway that answered last: the next call starts there.
    current: Arc<AtomicUsize>,
    auth: Auth,
}

/// A successful answer: the deployment it started (`Marathon-Deployment-Id`) and its JSON
/// body (`null` when empty).
pub struct Answer {
    pub deployment_id: Option<String>,
    pub body: Value,
}

impl Answer {
    /// The deployment this change started: the header, or Marathon's `deploymentId` body.
    pub fn deployment(&self) -> Option<String> {
        self.deployment_id.clone().or_else(|| self.body["deploymentId"].as_str().map(str::to_owned))
    }
}

#[derive(Debug)]
pub enum GatewayError {
    /// No listed gateway accepted a connection.
    Unreachable { urls: Vec<String>, reason: String },
    /// The request failed after it was sent (a timeout, a dropped connection).
    Failed { what: String, reason: String },
    /// The gateway answered with an error status.
    Status { what: String, status: StatusCode, message: String, details: Vec<String> },
    /// The gateway answered something that is not the JSON it should be.
    BadAnswer { what: String, reason: String },
}

impl GatewayError {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            GatewayError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayError::Unreachable { urls, reason } => write!(
                f,
                "no gateway answered at {} ({reason}); is the cluster running? Name a gateway with --gateway URL or MARINA_GATEWAY",
                urls.join(", ")
            ),
            GatewayError::Failed { what, reason } => write!(f, "{what}: {reason}"),
            GatewayError::Status { what, status, message, details } => {
                write!(f, "{what}: {status}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                for detail in details {
                    write!(f, "\n  {detail}")?;
                }
                if *status == StatusCode::UNAUTHORIZED {
                    write!(
                        f,
                        "\n  the gateway requires credentials: --credentials USER:PASSWORD (MARINA_CREDENTIALS) or --token (MARINA_TOKEN)"
                    )?;
                } else if *status == StatusCode::FORBIDDEN && message.is_empty() {
                    write!(f, "\n  these credentials may not do this (a read-only token?)")?;
                }
                Ok(())
            }
            GatewayError::BadAnswer { what, reason } => {
                write!(f, "{what}: the gateway's answer is not usable: {reason}")
            }
        }
    }
}

impl std::error::Error for GatewayError {}

/// Marathon's error body: `{"message": ..., "details": [{"path": "/cpus", "errors": [...]}]}`
/// (or `details` a string, for invalid JSON), as lines for people.
fn error_details(body: &Value) -> (String, Vec<String>) {
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    let details = match &body["details"] {
        Value::Array(details) => details
            .iter()
            .flat_map(|detail| {
                let path = detail["path"].as_str().unwrap_or("/");
                let errors: Vec<String> = match &detail["errors"] {
                    Value::Array(errors) => {
                        errors.iter().map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned)).collect()
                    }
                    other if !other.is_null() => vec![other.to_string()],
                    _ => vec![detail.to_string()],
                };
                errors.into_iter().map(move |error| format!("{path}: {error}"))
            })
            .collect(),
        Value::String(detail) => vec![detail.clone()],
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    };
    (message, details)
}

impl GatewayOptions {
    fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(crate::dev::default_data_dir)
    }
}

/// The gateways a `marina dev` data dir lists (`endpoints.json`'s `gateways`), if it has any.
fn dev_gateways(data_dir: &Path) -> Option<Vec<String>> {
    let text = std::fs::read(data_dir.join("endpoints.json")).ok()?;
    let endpoints: Value = serde_json::from_slice(&text).ok()?;
    let gateways: Vec<String> =
        endpoints["gateways"].as_array()?.iter().filter_map(|g| g.as_str()).map(str::to_owned).collect();
    (!gateways.is_empty()).then_some(gateways)
}

/// The same gateway: scheme, host and port alike (`http://127.0.0.1:8080/` is
/// `http://127.0.0.1:8080`).
fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// Whether the data dir's login may go to `urls`: only to the gateways that dir itself would
/// choose (its `endpoints.json`, else the default). A gateway named with --gateway or
/// MARINA_GATEWAY elsewhere, on this machine or not, never gets the dev login: with
/// MARINA_DATA_DIR set for everyday use, `--gateway https://prod...` must not send it.
fn dev_login_may_go_to(urls: &[String], dev_gateways: Option<&[String]>) -> bool {
    let own: &[String] = dev_gateways.unwrap_or(&[]);
    urls.iter().all(|url| {
        own.iter().any(|listed| same_origin(url, listed)) || (own.is_empty() && same_origin(url, DEFAULT_GATEWAY))
    })
}

/// The data dir's `credentials`: none when the file is missing; an error when it is there but
/// cannot be used (unreadable, not UTF-8, not `user:password`), so a login that is meant to
/// be sent is never silently left out.
fn dev_credentials(file: &Path) -> anyhow::Result<Auth> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Auth::None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", file.display())),
    };
    let text = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", file.display()))?;
    basic(text.trim()).with_context(|| format!("{}", file.display()))
}

impl Gateway {
    pub fn connect(options: &GatewayOptions) -> anyhow::Result<Gateway> {
        let data_dir = options.data_dir();
        let listed = dev_gateways(&data_dir);
        let (urls, from_dev) = match &options.gateway {
            Some(list) => {
                (list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect(), false)
            }
            None => match &listed {
                Some(gateways) => (gateways.clone(), true),
                None => (vec![DEFAULT_GATEWAY.to_owned()], true),
            },
        };
        let urls: Vec<String> = urls.into_iter().map(|url: String| url.trim_end_matches('/').to_owned()).collect();
        if urls.is_empty() {
            anyhow::bail!("--gateway: name a URL, such as {DEFAULT_GATEWAY}");
        }
        for url in &urls {
            let parsed = reqwest::Url::parse(url).with_context(|| format!("--gateway {url:?}: not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                anyhow::bail!("--gateway {url:?}: use http:// or https://");
            }
        }
        let auth = match (&options.token, &options.credentials) {
            (Some(token), _) => Auth::Bearer(token.clone()),
            (None, Some(pair)) => basic(pair).context("--credentials / MARINA_CREDENTIALS")?,
            // The dev cluster's login goes only to the dev cluster's gateways, never to a
            // gateway elsewhere that happened to be named.
            (None, None) if from_dev || dev_login_may_go_to(&urls, listed.as_deref()) => {
                dev_credentials(&data_dir.join("credentials"))?
            }
            (None, None) => Auth::None,
        };
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).user_agent("marina-cli");
        if urls.iter().any(|url| url.starts_with("https://")) {
            builder = match &options.ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
                    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                        .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?;
                    if certificates.is_empty() {
                        anyhow::bail!("--ca-file {}: holds no certificate", path.display());
                    }
                    certificates.into_iter().fold(builder, reqwest::ClientBuilder::add_root_certificate)
                }
                None => {
                    let tls = match &options.tls.tls_dir {
                        Some(_) => options.tls.load()?,
                        None if data_dir.join("tls/operator.pem").exists() => {
                            crate::operator::load_dir(&data_dir.join("tls"))?
                        }
                        None => None,
                    };
                    match tls {
                        Some(tls) => builder.use_preconfigured_tls(tls.http1_client_config(&[Role::Gateway])?),
                        None => anyhow::bail!(
                            "an https:// gateway needs a CA to trust: --ca-file PEM, or --tls-dir DIR with the cluster's ca.pem and operator certificate"
                        ),
                    }
                }
            };
        }
        let http = builder.build().context("the HTTP client")?;
        Ok(Gateway { http, urls: Arc::new(urls), current: Arc::new(AtomicUsize::new(0)), auth })
    }

    /// The gateway that answered last (or will be tried first).
    pub fn url(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Sends the request to the current gateway; when it cannot be connected to (nothing was
    /// sent, so even a POST is safe to repeat), to the next one listed.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, GatewayError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last_error = String::new();
        for attempt in 0..self.urls.len() {
            let index = (start + attempt) % self.urls.len();
            let url = format!("{}{path}", self.urls[index]);
            let mut request = self.http.request(method.clone(), &url).header("accept", "application/json");
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            request = match &self.auth {
                Auth::None => request,
                Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
                Auth::Bearer(token) => request.bearer_auth(token),
            };
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(error) if error.is_connect() => last_error = root_cause(&error),
                Err(error) => {
                    return Err(GatewayError::Failed { what: format!("{method} {url}"), reason: error_chain(&error) });
                }
            }
        }
        Err(GatewayError::Unreachable { urls: self.urls.to_vec(), reason: last_error })
    }

    /// Calls the API and reads its JSON answer; an error status is a [`GatewayError::Status`].
    /// A gateway too busy to take a write answers 429 with `Retry-After`, having changed
    /// nothing: the call is made again after that long (as Marathon's clients do), up to
    /// [`BUSY_RETRIES`] times, saying so on stderr.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, GatewayError> {
        let mut response = self.send(method.clone(), path, body, Some(CALL_TIMEOUT)).await?;
        for _ in 0..BUSY_RETRIES {
            if response.status() != StatusCode::TOO_MANY_REQUESTS {
                break;
            }
            let wait = retry_after(&response);
            eprintln!("the gateway is busy (429): trying again in {}s", wait.as_secs());
            tokio::time::sleep(wait).await;
            response = self.send(method.clone(), path, body, Some(CALL_TIMEOUT)).await?;
        }
        let what = format!("{method} {}", response.url().path());
        let status = response.status();
        let deployment_id =
            response.headers().get("marathon-deployment-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = read_capped(response, &what).await?;
        let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(body) => body,
                Err(_) if !status.is_success() => {
                    serde_json::json!({ "message": String::from_utf8_lossy(&bytes).trim() })
                }
                Err(error) => return Err(GatewayError::BadAnswer { what, reason: format!("not JSON: {error}") }),
            }
        };
        if !status.is_success() {
            let (message, details) = error_details(&body);
            return Err(GatewayError::Status { what, status, message, details });
        }
        Ok(Answer { deployment_id, body })
    }

    pub async fn get(&self, path: &str) -> Result<Value, GatewayError> {
        Ok(self.call(Method::GET, path, None).await?.body)
    }

    /// `GET`, with a 404 as `None`.
    pub async fn get_optional(&self, path: &str) -> Result<Option<Value>, GatewayError> {
        match self.call(Method::GET, path, None).await {
            Ok(answer) => Ok(Some(answer.body)),
            Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Opens `/v2/events` (server-sent events) for the given event types; the response
    /// streams for as long as the gateway keeps it open.
    pub async fn open_events(&self, event_types: &[&str]) -> Result<reqwest::Response, GatewayError> {
        let query: Vec<String> = event_types.iter().map(|t| format!("event_type={t}")).collect();
        let path = format!("/v2/events?{}", query.join("&"));
        let response = self.send(Method::GET, &path, None, None).await?;
        if !response.status().is_success() {
            let status = response.status();
            let body: Value = match read_capped(response, "GET /v2/events").await {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let (message, details) = error_details(&body);
            return Err(GatewayError::Status { what: "GET /v2/events".into(), status, message, details });
        }
        Ok(response)
    }
}

/// Reads a response body of at most [`MAX_BODY`] bytes: a gateway (or something posing as
/// one) cannot make the CLI hold an endless answer in memory.
async fn read_capped(mut response: reqwest::Response, what: &str) -> Result<Vec<u8>, GatewayError> {
    let too_big =
        || GatewayError::BadAnswer { what: what.to_owned(), reason: format!("larger than {} MiB", MAX_BODY >> 20) };
    if response.content_length().is_some_and(|length| length > MAX_BODY as u64) {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| GatewayError::Failed { what: what.to_owned(), reason: error_chain(&error) })?
    {
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(too_big());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn basic(pair: &str) -> anyhow::Result<Auth> {
    match pair.split_once(':') {
        Some((user, password)) if !user.is_empty() => {
            Ok(Auth::Basic { user: user.to_owned(), password: password.to_owned() })
        }
        _ => anyhow::bail!("write the credentials as user:password"),
    }
}

/// The innermost cause (`Connection refused (os error 111)`): reqwest's outer messages repeat
/// the URL, which the caller names already.
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// An error and its causes on one line (reqwest's own message is terse: "error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

/// `/v2/apps/{id}` for an app id with or without its leading `/`.
pub fn app_path(id: &str) -> String {
    format!("/v2/apps/{}", id.trim_matches('/'))
}

/// An app id as the gateway writes it (`/web`), from what an operator typed (`web`).
pub fn absolute_id(id: &str) -> String {
    format!("/{}", id.trim_matches('/'))
}

/// A query-string value, percent-encoded.
pub fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_errors_become_one_line_per_field() {
        let body = json!({ "message": "Object is not valid", "details": [
            { "path": "/cpus", "errors": ["must be ≥ 0.001"] },
            { "path": "/id", "errors": ["is required", "must be a path"] },
        ]});
        let (message, details) = error_details(&body);
        assert_eq!(message, "Object is not valid");
        assert_eq!(details, ["/cpus: must be ≥ 0.001", "/id: is required", "/id: must be a path"]);
        let (_, details) = error_details(&json!({ "message": "Invalid JSON", "details": "expected value at line 1" }));
        assert_eq!(details, ["expected value at line 1"]);
    }

    #[test]
    fn the_dev_login_goes_only_to_the_dev_gateways() {
        let urls = |list: &[&str]| list.iter().map(|u| (*u).to_owned()).collect::<Vec<String>>();
        let listed = urls(&["http://127.0.0.1:8080", "http://127.0.0.1:8081"]);
        assert!(dev_login_may_go_to(&urls(&["http://127.0.0.1:8081/"]), Some(&listed)));
        assert!(dev_login_may_go_to(&urls(&["http://127.0.0.1:8080", "http://127.0.0.1:8081"]), Some(&listed)));
        assert!(!dev_login_may_go_to(&urls(&["http://127.0.0.1:8080", "https://prod.example.com"]), Some(&listed)));
        assert!(!dev_login_may_go_to(&urls(&["http://127.0.0.1:9999"]), Some(&listed)), "on this machine, unlisted");
        assert!(!dev_login_may_go_to(&urls(&["https://127.0.0.1:8080"]), Some(&listed)), "another scheme");
        // Without endpoints.json, only the default gateway the dir would choose.
        assert!(dev_login_may_go_to(&urls(&["http://127.0.0.1:8080"]), None));
        assert!(!dev_login_may_go_to(&urls(&["http://localhost:8081"]), None));
    }

    #[test]
    fn a_credentials_file_that_cannot_be_used_is_an_error() {
        let dir = std::env::temp_dir().join(format!("marina-cli-credentials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("credentials");
        let _ = std::fs::remove_file(&file);
        assert!(matches!(dev_credentials(&file), Ok(Auth::None)), "missing: no login");
        std::fs::write(&file, b"ops:\xff\xfe\n").unwrap();
        let error = format!("{:#}", dev_credentials(&file).err().expect("not UTF-8"));
        assert!(error.contains("not UTF-8"), "{error}");
        std::fs::write(&file, "ops:s3cret\n").unwrap();
        assert!(
            matches!(dev_credentials(&file), Ok(Auth::Basic { user, password }) if user == "ops" && password == "s3cret")
        );
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        assert!(dev_credentials(&file).is_err(), "a directory cannot be read");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
