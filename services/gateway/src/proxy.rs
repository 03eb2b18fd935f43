//! Transparent forwarding from a standby gateway to the leader, so clients may talk to any
//! gateway: REST over HTTP/1.1 and gRPC over HTTP/2 (h2c), bodies streamed both ways
//! (server-sent events and gRPC streams included). Over mutual TLS when the gateway has
//! it: the standby calls its leader with its own gateway certificate, and expects a gateway's.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use marina_daemon::tls::{Connector, Role, Tls};
use std::sync::Arc;

/// Marks proxied requests, so a request is never forwarded twice (a leader change in
/// between would otherwise bounce it).
pub const VIA_HEADER: &str = "x-marina-proxied-by";

/// An HTTP/1.1 and an HTTP/2 client to the leader.
#[derive(Clone)]
pub enum Proxy {
    Plain { http1: Client<HttpConnector, Body>, http2: Client<HttpConnector, Body> },
    Tls { http1: Client<Connector, Body>, http2: Client<Connector, Body> },
}

impl Proxy {
    pub fn new(tls: Option<&Arc<Tls>>) -> Self {
        match tls {
            None => Proxy::Plain { http1: http_client(false), http2: http_client(true) },
            Some(tls) => {
                let connector = tls.connector(&[Role::Gateway]);
                let client = |connector, http2_only| {
                    Client::builder(TokioExecutor::new()).http2_only(http2_only).build(connector)
                };
                Proxy::Tls { http1: client(connector.clone().http1(), false), http2: client(connector, true) }
            }
        }
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
        let answer = match (self, is_grpc) {
            (Proxy::Plain { http2, .. }, true) => http2.request(request).await,
            (Proxy::Plain { http1, .. }, false) => http1.request(request).await,
            (Proxy::Tls { http2, .. }, true) => http2.request(request).await,
            (Proxy::Tls { http1, .. }, false) => http1.request(request).await,
        };
        match answer {
            Ok(response) => response.map(Body::new),
            Err(error) => unavailable(&format!("the leading gateway at {leader} did not answer: {error}")),
        }
    }
}

pub fn unavailable(message: &str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "message": message }))).into_response()
}
