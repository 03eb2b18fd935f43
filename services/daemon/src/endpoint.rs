//! One port per service: gRPC (the service's API, `grpc.health.v1`, server reflection) and
//! HTTP (`/health`, `/metrics`, the service's JSON routes) on the same listener. HTTP/1.1
//! and HTTP/2 (h2c, which gRPC clients speak) are told apart per connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Service;

use crate::Metrics;
use crate::shutdown::Shutdown;

/// How long in-flight requests may take to finish after shutdown begins; long-lived streams
/// (watches, keep-alives, event streams) are cut at this point.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the service can do its job right now, reported both over `grpc.health.v1` (for
/// the overall service `""` and every registered service) and on HTTP `/health`.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    services: Arc<Vec<&'static str>>,
    serving: watch::Sender<bool>,
}

impl Health {
    pub async fn set_serving(&self, serving: bool) {
        if self.serving.send_replace(serving) == serving {
            return;
        }
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.reporter.set_service_status("", status).await;
        for name in self.services.iter() {
            self.reporter.set_service_status(*name, status).await;
        }
    }

    pub fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.serving.subscribe()
    }
}

/// Builder for a service's single port.
pub struct Endpoint {
    service: &'static str,
    grpc: Routes,
    grpc_names: Vec<&'static str>,
    http: Router,
    metrics: Metrics,
}

impl Endpoint {
    pub fn new(service: &'static str, metrics: Metrics) -> Self {
        Self { service, grpc: Routes::default(), grpc_names: Vec::new(), http: Router::new(), metrics }
    }

    /// Adds a gRPC service; its health is reported under its full name.
    pub fn grpc<S>(mut self, service: S) -> Self
    where
        S: Service<Request<tonic::body::Body>, Error = Infallible, Response = http::Response<tonic::body::Body>>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.grpc_names.push(S::NAME);
        self.grpc = self.grpc.add_service(service);
        self
    }

    /// Adds the service's own HTTP routes.
    pub fn http(mut self, router: Router) -> Self {
        self.http = self.http.merge(router);
        self
    }

    /// Builds the router and the health handle (initially NOT_SERVING: the service flips it
    /// once it can do its job).
    pub async fn build(self) -> (Router, Health) {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let (serving, _) = watch::channel(false);
        let health = Health { reporter, services: Arc::new(self.grpc_names), serving };
        health.reporter.set_service_status("", ServingStatus::NotServing).await;
        for name in health.services.iter() {
            health.reporter.set_service_status(*name, ServingStatus::NotServing).await;
        }

        // Both reflection versions: grpcurl speaks v1, many other clients still v1alpha.
        // Only the services this port serves are listed (the descriptor set holds them all).
        let served = health.services.clone();
        let reflection = || {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(marina_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("grpc.health.v1.Health");
            served.iter().fold(builder, |builder, name| builder.with_service_name(*name))
        };
        let reflection_v1 = reflection().build_v1().expect("descriptor sets are generated at build time");
        let reflection_v1alpha = reflection().build_v1alpha().expect("descriptor sets are generated at build time");

        let grpc = self.grpc.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
        let builtin = Router::new()
            .route("/health", get(health_handler).with_state(health.clone()))
            .route("/metrics", get(metrics_handler).with_state(self.metrics.clone()));
        let router = grpc
            .into_axum_router()
            .merge(self.http)
            .merge(builtin)
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(self.metrics, crate::metrics::record));
        tracing::debug!(service = self.service, "endpoint built");
        (router, health)
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then drains for at most
/// [`DRAIN_TIMEOUT`].
pub async fn serve(listener: TcpListener, router: Router, shutdown: Shutdown) -> std::io::Result<()> {
    let listener = listener.tap_io(|stream| {
        // gRPC is latency-bound request/response traffic: never wait to coalesce segments.
        let _ = stream.set_nodelay(true);
    });
    let graceful = shutdown.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move { graceful.cancelled().await });
    let server = std::pin::pin!(server.into_future());
    tokio::select! {
        result = server => result,
        () = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
            tracing::warn!("drain timeout: closing remaining connections");
            Ok(())
        }
    }
}

async fn health_handler(State(health): State<Health>) -> Response {
    if health.is_serving() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n").into_response()
    }
}

async fn metrics_handler(State(metrics): State<Metrics>) -> Response {
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render()).into_response()
}

/// Unknown paths: gRPC clients get UNIMPLEMENTED the gRPC way, HTTP clients a JSON 404.
async fn not_found(request: Request) -> Response {
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        return tonic::Status::unimplemented(format!("unknown method {}", request.uri().path())).into_http();
    }
    let body = serde_json::json!({ "message": format!("no route for {} {}", request.method(), request.uri().path()) });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response().map(Body::new)
}
