//! Transparent forwarding from a standby gateway to the leader, so clients may talk to any
//! gateway: REST over HTTP/1.1 and gRPC over HTTP/2 (h2c), bodies streamed both ways
//! (server-sent events and gRPC streams included).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Marks proxied requests, so a request is never forwarded twice (a leader change in
/// between would otherwise bounce it).
pub const VIA_HEADER: &str = "x-marina-proxied-by";

#[derive(Clone)]
pub struct Proxy {
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
}

impl Default for Proxy {
    fn default() -> Self {
        Self { http1: http_client(false), http2: http_client(true) }
    }
}

/// A plain-HTTP client (HTTP/1.1, or HTTP/2 without upgrade) that sends at once (no Nagle).
pub fn http_client(http2_only: bool) -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).http2_only(http2_only).build(connector)
}

impl Proxy {
    /// Sends `request` to `leader` (`host:port`) and returns its response as is.
    pub async fn forward(&self, leader: &str, me: &str, mut request: Request) -> Response {
        if request.headers().contains_key(VIA_HEADER) {
            return unavailable("the request was already forwarded once; leadership is changing, retry");
        }
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let Ok(uri) = format!("http://{leader}{path}").parse::<Uri>() else {
            return unavailable("the leader's address is not usable");
        };
        *request.uri_mut() = uri;
        if let Ok(value) = HeaderValue::from_str(me) {
            request.headers_mut().insert(VIA_HEADER, value);
        }
        // The leader's spans continue this gateway's span of the hop (not the caller's), so
        // a trace shows the way through the standby.
        for (key, value) in marina_daemon::trace::carrier() {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
                request.headers_mut().insert(name, value);
            }
        }
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let client = if is_grpc { &self.http2 } else { &self.http1 };
        match client.request(request).await {
            Ok(response) => response.map(Body::new),
            Err(error) => unavailable(&format!("the leading gateway at {leader} did not answer: {error}")),
        }
    }
}

pub fn unavailable(message: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "message": message }))).into_response()
}
