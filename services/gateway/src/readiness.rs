//! Readiness checks (Marathon's `readinessChecks`): an instance of an app's new configuration
//! takes part in a deployment — counts towards `minimumHealthCapacity`, lets old instances be
//! killed, lets the deployment finish — only once an HTTP GET on its named port answers one
//! of the check's ready status codes. Health says whether a task works; readiness whether
//! it has warmed up (loaded its data, joined its peers) enough to take over from an old one.
//!
//! As in Marathon, the leading gateway probes, not the agent: readiness only matters to
//! deployments, which the gateway runs. A new instance is probed as soon as it runs, then
//! every `intervalSeconds` until it is ready; then never again. A new leader probes afresh.

use std::time::Duration;

use axum::body::Body;
use http::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::app::{AppDefinition, ReadinessCheck};
use crate::model;

/// Bodies kept for `lastResponse` (`preserveLastResponse`) are cut to this many bytes.
const KEPT_BODY_BYTES: usize = 4096;

/// One probe to make: the instance, and where and how to ask it.
#[derive(Debug, Clone)]
pub struct Probe {
    pub task_id: String,
    pub url: String,
    pub check: ReadinessCheck,
}

impl Probe {
    /// The probe of `app`'s readiness check for an instance on `host` with `host_ports` (in
    /// the order [`model::port_needs`] gives them) and its own `addresses`. The named port is
    /// probed on the host; a container-network instance's port with no host port, at the
    /// instance's own address and the container port (as Marathon probes IP-per-task apps).
    /// `None` if the app has no readiness check or the instance has no such port (yet).
    pub fn of(
        app: &AppDefinition,
        task_id: &str,
        host: &str,
        host_ports: &[u32],
        addresses: &[String],
    ) -> Option<Self> {
        let check = app.readiness_checks.first()?;
        let name = Some(check.port_name.as_str());
        let on_host = model::host_port_names(app)
            .iter()
            .position(|port_name| *port_name == name)
            .and_then(|index| host_ports.get(index))
            .map(|port| format!("{host}:{port}"));
        let on_own_address = || {
            let mapping = app.port_mappings()?.iter().find(|mapping| mapping.name.as_deref() == name)?;
            let address = addresses.first()?;
            let address = if address.contains(':') { format!("[{address}]") } else { address.clone() };
            Some(format!("{address}:{}", mapping.container_port))
        };
        let target = match model::networking(app) {
            model::Networking::Container(_) => on_host.or_else(on_own_address)?,
            _ => on_host?,
        };
        let path = if check.path.starts_with('/') { check.path.clone() } else { format!("/{}", check.path) };
        Some(Probe { task_id: task_id.to_owned(), url: format!("http://{target}{path}"), check: check.clone() })
    }
}

/// The outcome of an instance's last probe, as Marathon shows it in a deployment's
/// `currentActions[].readinessCheckResults`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadinessResult {
    pub name: String,
    pub task_id: String,
    pub ready: bool,
    pub last_response: Option<LastResponse>,
}

/// The last HTTP response (its body only with `preserveLastResponse`), or why there was none.
#[derive(Debug, Clone, PartialEq)]
pub enum LastResponse {
    Http { status: u16, content_type: String, body: String },
    Failed(String),
}

impl ReadinessResult {
    pub fn to_json(&self) -> Value {
        let last_response = match &self.last_response {
            Some(LastResponse::Http { status, content_type, body }) => {
                json!({ "status": status, "contentType": content_type, "body": body })
            }
            // Marathon has no field for a probe that got no answer; the message says why.
            Some(LastResponse::Failed(error)) => json!({ "status": null, "contentType": null, "body": error }),
            None => Value::Null,
        };
        json!({ "name": self.name, "taskId": self.task_id, "ready": self.ready, "lastResponse": last_response })
    }
}

/// Makes readiness probes (plain HTTP; HTTPS checks are refused when an app is defined).
#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Body>,
}

impl Default for Prober {
    fn default() -> Self {
        Self { client: crate::proxy::http_client(false) }
    }
}

impl Prober {
    /// Asks once, within the check's `timeoutSeconds`.
    pub async fn probe(&self, probe: &Probe) -> ReadinessResult {
        let check = &probe.check;
        let timeout = Duration::from_secs(u64::from(check.timeout_seconds.max(1)));
        let last_response =
            match tokio::time::timeout(timeout, self.get(&probe.url, check.preserve_last_response)).await {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => LastResponse::Failed(error),
                Err(_) => LastResponse::Failed(format!("no answer from {} within {}s", probe.url, timeout.as_secs())),
            };
        let ready = matches!(&last_response, LastResponse::Http { status, .. } if check.http_status_codes_for_ready.contains(status));
        ReadinessResult {
            name: check.name.clone(),
            task_id: probe.task_id.clone(),
            ready,
            last_response: Some(last_response),
        }
    }

    async fn get(&self, url: &str, keep_body: bool) -> Result<LastResponse, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad readiness URL {url}: {e}"))?;
        let request = Request::get(uri).body(Body::empty()).map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = if keep_body {
            // Read up to the limit; a larger body is cut rather than refused.
            let mut bytes = Vec::new();
            let mut stream = Body::new(response.into_body()).into_data_stream();
            while let Some(Ok(chunk)) = futures::StreamExt::next(&mut stream).await {
                bytes.extend_from_slice(&chunk);
                if bytes.len() >= KEPT_BODY_BYTES {
                    bytes.truncate(KEPT_BODY_BYTES);
                    break;
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            String::new()
        };
        Ok(LastResponse::Http { status, content_type, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::parse_app;

    #[test]
    fn the_probe_targets_the_named_host_port() {
        let app = parse_app(
            br#"{"id": "/web", "cmd": "x", "portDefinitions": [{"port": 0, "name": "admin"}, {"port": 0, "name": "http"}],
                 "readinessChecks": [{"portName": "http", "path": "ready", "intervalSeconds": 5, "timeoutSeconds": 2}]}"#,
            None,
        )
        .unwrap();
        let probe = Probe::of(&app, "web.1", "10.0.0.7", &[31001, 31002], &[]).unwrap();
        assert_eq!(probe.url, "http://10.0.0.7:31002/ready");
        assert!(Probe::of(&app, "web.1", "10.0.0.7", &[31001], &[]).is_none(), "no host port of that name");
        let bridged = parse_app(
            br#"{"id": "/b", "container": {"type": "DOCKER", "docker": {"image": "x", "network": "BRIDGE"},
                   "portMappings": [{"containerPort": 9000, "name": "internal"}, {"containerPort": 80, "hostPort": 0, "name": "http"}]},
                 "readinessChecks": [{"portName": "http"}]}"#,
            None,
        )
        .unwrap();
        // Each bridged mapping gets a host port; the probe uses the named mapping's.
        assert_eq!(Probe::of(&bridged, "b.1", "h", &[31004, 31005], &[]).unwrap().url, "http://h:31005/");
        // On a container network a port with no host port is probed at the task's address.
        let own = parse_app(
            br#"{"id": "/c", "networks": [{"mode": "container", "name": "dev"}],
                 "container": {"type": "DOCKER", "docker": {"image": "x"}, "portMappings": [{"containerPort": 8080, "name": "http"}]},
                 "readinessChecks": [{"portName": "http", "path": "/ready"}]}"#,
            None,
        )
        .unwrap();
        let addresses = ["172.18.0.5".to_owned()];
        assert_eq!(Probe::of(&own, "c.1", "h", &[], &addresses).unwrap().url, "http://172.18.0.5:8080/ready");
        assert!(Probe::of(&own, "c.1", "h", &[], &[]).is_none(), "no address known yet");
    }

    #[tokio::test]
    async fn a_probe_is_ready_on_a_ready_status_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = axum::Router::new()
            .route("/ok", axum::routing::get(|| async { "warm" }))
            .route("/busy", axum::routing::get(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "loading") }));
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let check = |path: &str, keep: bool| Probe {
            task_id: "t".into(),
            url: format!("http://127.0.0.1:{port}{path}"),
            check: ReadinessCheck { preserve_last_response: keep, ..ReadinessCheck::default() },
        };
        let prober = Prober::default();

        let ready = prober.probe(&check("/ok", true)).await;
        assert!(ready.ready);
        assert_eq!(
            ready.last_response,
            Some(LastResponse::Http {
                status: 200,
                content_type: "text/plain; charset=utf-8".into(),
                body: "warm".into()
            })
        );
        let busy = prober.probe(&check("/busy", false)).await;
        assert!(!busy.ready);
        assert!(
            matches!(busy.last_response, Some(LastResponse::Http { status: 503, ref body, .. }) if body.is_empty())
        );
        server.abort();
        let _ = server.await;
        let refused = prober.probe(&check("/ok", false)).await;
        assert!(!refused.ready && matches!(refused.last_response, Some(LastResponse::Failed(_))), "{refused:?}");
    }
}
