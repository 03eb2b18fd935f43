//! A task's sandbox files by task id (Marina's `/v2/tasks/{id}/files/…`, see
//! [`crate::rest`]), from the agent that runs the task: the leader knows the task's agent
//! (its instances), the master knows where that agent listens (its registry, through
//! `Operator/GetState` on the scheduler's own connection), the agent knows the task's
//! sandbox (its `/state`) and serves its files (`/files/browse|read|download`, Mesos'
//! files API), called over mutual TLS with the gateway's certificate.
//!
//! The caller names a path relative to the sandbox; one that is absolute or has a `..` is
//! refused before anything is sent. The agent confines the path again (resolving `..` and
//! symlinks) to its sandboxes. Agents' addresses and tasks' sandboxes are kept briefly, so
//! a client following a file by polling costs one call to the agent per poll; a kept
//! address that no longer answers is looked up again at once.

use std::collections::HashMap;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use marina_daemon::error_chain;
use marina_daemon::tls::{Connector, Role, Tls};
use marina_proto::master::v1 as master;
use serde_json::Value;
use tokio::time::Instant;

use crate::leader::{Leader, MasterSession};

/// The most one read returns: the agent's own cap (`MAX_READ_BYTES` of its files API).
pub const MAX_READ_BYTES: u64 = 4 << 20;

/// How long an agent's address, and a task's sandbox, are used without asking again.
const KEPT_FOR: Duration = Duration::from_secs(10);

/// Most tasks' sandboxes kept at once (they are small; this bounds a scan of many tasks).
const KEPT_SANDBOXES: usize = 4096;

/// The longest wait for the master's or an agent's answer (its head, for files passed on
/// as they stream).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest agent `/state` and directory listing read (both are read whole).
const MAX_LISTING_BYTES: usize = 64 << 20;

/// The largest refusal body read from an agent.
const MAX_REFUSAL_BYTES: usize = 64 << 10;

/// Why a task's files were not served.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A query the gateway does not send on (an absolute path, a `..`, a bad offset).
    #[error("{0}")]
    BadRequest(String),
    #[error("this gateway does not lead; retry (it forwards to the leader once one is known)")]
    NotLeading,
    #[error("Task '{0}' does not exist")]
    NoTask(String),
    #[error("task '{task}' has no sandbox on agent {agent} (not started there yet, or over and collected)")]
    NoSandbox { task: String, agent: String },
    #[error("the gateway is not subscribed to a master; retry")]
    NoMaster,
    #[error("the master did not say where agent {agent} is: {reason}")]
    Master { agent: String, reason: String },
    #[error("agent {agent} of task '{task}' is not registered with the master")]
    UnknownAgent { agent: String, task: String },
    /// No connection to the agent (down, or moved to another address).
    #[error("agent {agent} at {address} is unreachable: {reason}")]
    Unreachable { agent: String, address: String, reason: String },
    #[error("agent {agent} at {address} did not answer within {CALL_TIMEOUT:?}")]
    NoAnswer { agent: String, address: String },
    /// The agent refused (`status`, with its message) or failed.
    #[error("agent {agent} answered {status}: {message}")]
    Agent { agent: String, status: StatusCode, message: String },
    #[error("agent {agent} answered what the gateway cannot read: {reason}")]
    BadAnswer { agent: String, reason: String },
}

/// What is asked of a file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// The directory's entries (their `path`s relative to the sandbox).
    Browse,
    /// `length` bytes (at most [`MAX_READ_BYTES`]) from `offset`, as `{"data", "offset"}`;
    /// offset `-1`: only the file's length (as the offset to read from next).
    Read { offset: i64, length: u64 },
    /// The whole file, streamed.
    Download,
}

impl Operation {
    /// A read from the query's `offset` and `length`: offset 0 and the most by default.
    pub fn read(offset: Option<&str>, length: Option<&str>) -> Result<Self, SandboxError> {
        let offset = match offset.filter(|text| !text.is_empty()) {
            None => 0,
            Some(text) => match text.parse::<i64>() {
                Ok(offset) if offset >= -1 => offset,
                _ => return Err(SandboxError::BadRequest(format!("offset {text:?}: 0 or more, or -1 (the length)"))),
            },
        };
        let length = match length.filter(|text| !text.is_empty()) {
            None => MAX_READ_BYTES,
            Some(text) => text
                .parse::<u64>()
                .map_err(|_| SandboxError::BadRequest(format!("length {text:?}: a number of bytes")))?
                .min(MAX_READ_BYTES),
        };
        Ok(Operation::Read { offset, length })
    }

    fn name(self) -> &'static str {
        match self {
            Operation::Browse => "browse",
            Operation::Read { .. } => "read",
            Operation::Download => "download",
        }
    }
}

/// `raw` as a path inside a sandbox (`""` is the sandbox itself): refused if absolute or if
/// it has a `..`; `.` components and repeated slashes are dropped.
pub fn relative_path(raw: &str) -> Result<String, SandboxError> {
    let mut parts = Vec::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str().unwrap_or_default()),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(SandboxError::BadRequest(format!(
                    "path {raw:?} is absolute: name a path relative to the task's sandbox"
                )));
            }
            Component::ParentDir => {
                return Err(SandboxError::BadRequest(format!("path {raw:?} leaves the task's sandbox (`..`)")));
            }
        }
    }
    if raw.contains('\0') {
        return Err(SandboxError::BadRequest("a path has no NUL byte".into()));
    }
    Ok(parts.join("/"))
}

/// Where a task's files are.
#[derive(Debug, Clone)]
struct Location {
    agent_id: String,
    address: String,
    sandbox: String,
}

/// Serves tasks' sandbox files from their agents; one per gateway.
pub struct Sandboxes {
    agents: AgentClient,
    /// Agent id → address, as the master last said, and when.
    addresses: Mutex<Option<(Instant, HashMap<String, String>)>>,
    /// Task id → where its files are, and when that was learnt.
    located: Mutex<HashMap<String, (Instant, Location)>>,
}

impl Sandboxes {
    pub fn new(tls: Option<&Arc<Tls>>) -> Self {
        Sandboxes { agents: AgentClient::new(tls), addresses: Mutex::default(), located: Mutex::default() }
    }

    /// `operation` on `relative` (checked with [`relative_path`]) in the sandbox of task
    /// `task_id`, answered as the agent answers it (a listing's paths made relative).
    pub async fn serve(
        &self,
        leader: &Leader,
        task_id: &str,
        relative: &str,
        operation: Operation,
    ) -> Result<Response, SandboxError> {
        let relative = relative_path(relative)?;
        let agent_id = leader
            .agent_of_task(task_id)
            .filter(|agent| !agent.is_empty())
            .ok_or_else(|| SandboxError::NoTask(task_id.into()))?;
        let session = leader.master.borrow().clone().ok_or(SandboxError::NoMaster)?;
        let attempt = async {
            let (location, asked_master) = match self.kept(task_id, &agent_id) {
                Some(location) => (location, false),
                None => self.locate(&session, task_id, &agent_id, false).await?,
            };
            self.call(&location, &relative, operation).await.map_err(|error| (error, asked_master))
        };
        match attempt.await {
            Ok(answer) => Ok(answer),
            // The agent may have moved (restarted on another port) since its address was
            // learnt: the master is asked again.
            Err((SandboxError::Unreachable { .. }, false)) => {
                self.forget(task_id);
                let (location, _) =
                    self.locate(&session, task_id, &agent_id, true).await.map_err(|(error, _)| error)?;
                self.call(&location, &relative, operation).await
            }
            Err((error, _)) => Err(error),
        }
    }

    fn kept(&self, task_id: &str, agent_id: &str) -> Option<Location> {
        let located = self.located.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, location) = located.get(task_id)?;
        (at.elapsed() < KEPT_FOR && location.agent_id == agent_id).then(|| location.clone())
    }

    fn forget(&self, task_id: &str) {
        self.located.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(task_id);
        *self.addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// Finds the task's agent's address (from the master, unless known and not
    /// `ask_master`) and its sandbox there (from the agent), and keeps them. Says whether
    /// the master was asked.
    async fn locate(
        &self,
        session: &MasterSession,
        task_id: &str,
        agent_id: &str,
        ask_master: bool,
    ) -> Result<(Location, bool), (SandboxError, bool)> {
        let (address, asked_master) =
            self.address_of(session, agent_id, task_id, ask_master).await.map_err(|error| (error, true))?;
        let sandbox = self.sandbox_of(&address, agent_id, task_id).await.map_err(|error| (error, asked_master))?;
        let location = Location { agent_id: agent_id.to_owned(), address, sandbox };
        let mut located = self.located.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if located.len() >= KEPT_SANDBOXES {
            located.retain(|_, (at, _)| at.elapsed() < KEPT_FOR);
            if located.len() >= KEPT_SANDBOXES {
                located.clear();
            }
        }
        located.insert(task_id.to_owned(), (Instant::now(), location.clone()));
        Ok((location, asked_master))
    }

    /// The agent's address, and whether the master was asked for it.
    async fn address_of(
        &self,
        session: &MasterSession,
        agent_id: &str,
        task_id: &str,
        ask_master: bool,
    ) -> Result<(String, bool), SandboxError> {
        if !ask_master {
            let addresses = self.addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, known)) = addresses.as_ref()
                && at.elapsed() < KEPT_FOR
                && let Some(address) = known.get(agent_id)
            {
                return Ok((address.clone(), false));
            }
        }
        let failed = |reason: String| SandboxError::Master { agent: agent_id.to_owned(), reason };
        let mut operator = session.operator.clone();
        let state = tokio::time::timeout(CALL_TIMEOUT, operator.get_state(master::GetStateRequest {}))
            .await
            .map_err(|_| failed(format!("no answer within {CALL_TIMEOUT:?}")))?
            .map_err(|status| failed(status.message().to_owned()))?
            .into_inner();
        let known: HashMap<String, String> =
            state.agents.into_iter().filter_map(|agent| agent.info).map(|info| (info.agent_id, info.address)).collect();
        let address = known.get(agent_id).cloned();
        *self.addresses.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some((Instant::now(), known));
        let address = address
            .ok_or_else(|| SandboxError::UnknownAgent { agent: agent_id.to_owned(), task: task_id.to_owned() })?;
        Ok((address, true))
    }

    /// The task's sandbox directory, as the agent's `/state` names it.
    async fn sandbox_of(&self, address: &str, agent_id: &str, task_id: &str) -> Result<String, SandboxError> {
        let response = self.agents.get(address, agent_id, &format!("/state?task={}", percent_encode(task_id))).await?;
        let state: Value = read_json(response, agent_id).await?;
        let task = state["tasks"].as_array().into_iter().flatten().find(|task| task["id"] == task_id);
        task.and_then(|task| task["sandbox"].as_str())
            // A task over and forgotten by its agent: its sandbox stays until collected.
            .or_else(|| state["sandbox"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| SandboxError::NoSandbox { task: task_id.to_owned(), agent: agent_id.to_owned() })
    }

    /// The agent's files API on the sandbox's `relative` path.
    async fn call(&self, location: &Location, relative: &str, operation: Operation) -> Result<Response, SandboxError> {
        let absolute = if relative.is_empty() {
            location.sandbox.clone()
        } else {
            format!("{}/{relative}", location.sandbox.trim_end_matches('/'))
        };
        let mut target = format!("/files/{}?path={}", operation.name(), percent_encode(&absolute));
        if let Operation::Read { offset, length } = operation {
            target.push_str(&format!("&offset={offset}&length={length}"));
        }
        let response = self.agents.get(&location.address, &location.agent_id, &target).await?;
        if operation == Operation::Browse {
            let mut listing: Value = read_json(response, &location.agent_id).await?;
            // Named relative to the sandbox, as the caller names them.
            for entry in listing.as_array_mut().into_iter().flatten() {
                if let Some(shown) = entry["path"].as_str()
                    && let Ok(inside) = Path::new(shown).strip_prefix(&location.sandbox)
                {
                    entry["path"] = Value::String(inside.display().to_string());
                }
            }
            return Ok(axum::Json(listing).into_response());
        }
        // Passed on as it streams: a read is bounded by its length, a download is the file.
        let mut answer = Response::builder().status(response.status());
        for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
            if let Some(value) = response.headers().get(&name) {
                answer = answer.header(name, value);
            }
        }
        answer
            .body(response.into_body())
            .map_err(|error| SandboxError::BadAnswer { agent: location.agent_id.clone(), reason: error.to_string() })
    }
}

/// A successful answer's body as JSON.
async fn read_json(response: Response, agent_id: &str) -> Result<Value, SandboxError> {
    let bad = |reason: String| SandboxError::BadAnswer { agent: agent_id.to_owned(), reason };
    let body = tokio::time::timeout(CALL_TIMEOUT, axum::body::to_bytes(response.into_body(), MAX_LISTING_BYTES))
        .await
        .map_err(|_| bad(format!("its body took more than {CALL_TIMEOUT:?}")))?
        .map_err(|error| bad(format!("its body: {error}")))?;
    serde_json::from_slice(&body).map_err(|error| bad(format!("not JSON: {error}")))
}

/// `text` for a query string (RFC 3986 unreserved characters and `/` as they are).
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// An HTTP/1.1 client of agents: over mutual TLS with the gateway's certificate, expecting
/// an agent's, when the gateway has TLS.
enum AgentClient {
    Plain(Client<HttpConnector, Body>),
    Tls(Client<Connector, Body>),
}

impl AgentClient {
    fn new(tls: Option<&Arc<Tls>>) -> Self {
        match tls {
            None => AgentClient::Plain(crate::proxy::http_client(false)),
            Some(tls) => {
                AgentClient::Tls(Client::builder(TokioExecutor::new()).build(tls.connector(&[Role::Agent]).http1()))
            }
        }
    }

    /// `GET target` on the agent at `address`: its successful answer; a refusal or a
    /// failure as an error with the agent's message.
    async fn get(&self, address: &str, agent_id: &str, target: &str) -> Result<Response, SandboxError> {
        let unreachable = |reason: String| SandboxError::Unreachable {
            agent: agent_id.to_owned(),
            address: address.to_owned(),
            reason,
        };
        let uri: Uri =
            format!("http://{address}{target}").parse().map_err(|e| unreachable(format!("not an address: {e}")))?;
        let mut request = Request::get(uri).body(Body::empty()).map_err(|e| unreachable(e.to_string()))?;
        // The agent's spans continue this request's trace.
        for (key, value) in marina_daemon::trace::carrier() {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
                request.headers_mut().insert(name, value);
            }
        }
        let sent = async {
            match self {
                AgentClient::Plain(client) => client.request(request).await.map(|r| r.map(Body::new)),
                AgentClient::Tls(client) => client.request(request).await.map(|r| r.map(Body::new)),
            }
        };
        let response = tokio::time::timeout(CALL_TIMEOUT, sent)
            .await
            .map_err(|_| SandboxError::NoAnswer { agent: agent_id.to_owned(), address: address.to_owned() })?
            .map_err(|error| unreachable(error_chain(&error)))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = tokio::time::timeout(CALL_TIMEOUT, axum::body::to_bytes(response.into_body(), MAX_REFUSAL_BYTES))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|json| json["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        Err(SandboxError::Agent { agent: agent_id.to_owned(), status, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_path_stays_in_the_sandbox() {
        assert_eq!(relative_path("").unwrap(), "");
        assert_eq!(relative_path(".").unwrap(), "");
        assert_eq!(relative_path("stdout").unwrap(), "stdout");
        assert_eq!(relative_path("./logs//app.log").unwrap(), "logs/app.log");
        assert_eq!(relative_path("logs/").unwrap(), "logs");
        assert_eq!(relative_path("a..b").unwrap(), "a..b", "dots inside a name are a name");
        for outside in ["/etc/passwd", "/", "../x", "logs/../../x", "logs/..", "..", "a\0b"] {
            assert!(matches!(relative_path(outside), Err(SandboxError::BadRequest(_))), "{outside:?}");
        }
    }

    #[test]
    fn a_read_is_bounded() {
        assert_eq!(Operation::read(None, None).unwrap(), Operation::Read { offset: 0, length: MAX_READ_BYTES });
        assert_eq!(
            Operation::read(Some("-1"), Some("")).unwrap(),
            Operation::Read { offset: -1, length: MAX_READ_BYTES }
        );
        assert_eq!(Operation::read(Some("7"), Some("10")).unwrap(), Operation::Read { offset: 7, length: 10 });
        assert_eq!(
            Operation::read(Some("0"), Some("999999999999")).unwrap(),
            Operation::Read { offset: 0, length: MAX_READ_BYTES }
        );
        for (offset, length) in [(Some("-2"), None), (Some("x"), None), (None, Some("-1")), (None, Some("1e3"))] {
            assert!(
                matches!(Operation::read(offset, length), Err(SandboxError::BadRequest(_))),
                "{offset:?} {length:?}"
            );
        }
    }

    #[test]
    fn paths_are_encoded_for_the_query() {
        assert_eq!(percent_encode("/var/lib/sandboxes/web.1/stdout"), "/var/lib/sandboxes/web.1/stdout");
        assert_eq!(percent_encode("/s/a b&c=d%é"), "/s/a%20b%26c%3Dd%25%C3%A9");
    }
}
