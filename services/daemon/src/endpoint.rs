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
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Service;

use crate::Metrics;
use crate::shutdown::Shutdown;
use crate::tls::{Caller, Peer, Role, SecureListener, Tls};

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

/// What every port bounds, whoever calls it (each service's `[server]` section): how many
/// requests it serves at once, how long one may take to be answered, and the largest gRPC
/// message it reads and writes. A port with no bounds is one slow or greedy client away from
/// starving every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// Requests being served at once; one more is refused at once (HTTP 503, gRPC
    /// `UNAVAILABLE` marked retryable), not queued. A stream counts until it is answered,
    /// not for its whole life.
    pub max_concurrent_requests: usize,
    /// A request not answered in this time (its body read and its response begun) fails
    /// (HTTP 503, gRPC `DEADLINE_EXCEEDED`). Streams, once answered, are not cut.
    pub request_timeout_ms: u64,
    /// Largest gRPC message read.
    pub max_decoding_message_bytes: usize,
    /// Largest gRPC message written (offers to a large cluster's scheduler are big).
    pub max_encoding_message_bytes: usize,
    /// TLS handshakes in progress at once from one address; more are closed at once. Raise
    /// it where many callers share an address (behind a NAT or a proxy, or a whole test
    /// cluster on loopback).
    pub max_tls_handshakes_per_peer: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_concurrent_requests: 1024,
            request_timeout_ms: 30_000,
            max_decoding_message_bytes: 4 << 20,
            max_encoding_message_bytes: 64 << 20,
            max_tls_handshakes_per_peer: crate::tls::MAX_HANDSHAKES_PER_PEER,
        }
    }
}

impl ServerLimits {
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        use crate::config::ConfigError;
        if self.max_concurrent_requests == 0 || self.max_concurrent_requests > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::value("server.max_concurrent_requests", "must be at least 1"));
        }
        if self.max_tls_handshakes_per_peer == 0 {
            return Err(ConfigError::value("server.max_tls_handshakes_per_peer", "must be at least 1"));
        }
        if self.request_timeout_ms == 0 {
            return Err(ConfigError::value("server.request_timeout_ms", "must be greater than 0"));
        }
        for (key, value) in [
            ("server.max_decoding_message_bytes", self.max_decoding_message_bytes),
            ("server.max_encoding_message_bytes", self.max_encoding_message_bytes),
        ] {
            if value < 64 << 10 {
                return Err(ConfigError::value(key, "must be at least 65536"));
            }
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Applies [`ServerLimits`]' message sizes to a generated tonic server (each has the same
/// two methods, but no trait for them).
#[macro_export]
macro_rules! bounded_grpc {
    ($server:expr, $limits:expr) => {
        $server
            .max_decoding_message_size($limits.max_decoding_message_bytes)
            .max_encoding_message_size($limits.max_encoding_message_bytes)
    };
}

/// Builder for a service's single port.
pub struct Endpoint {
    service: &'static str,
    grpc: Routes,
    grpc_names: Vec<&'static str>,
    http: Router,
    metrics: Metrics,
    limits: ServerLimits,
    /// Path prefixes served outside the bounds (a cluster's own traffic between its nodes).
    unbounded: Vec<&'static str>,
    /// The service's own layers, applied inside the bounds and metrics (see [`Endpoint::wrap`]).
    wrap: Option<Box<dyn FnOnce(Router) -> Router + Send>>,
    tls: Option<Arc<Tls>>,
    access: Vec<(&'static str, Rule)>,
    dedicated: Option<Dedicated>,
}

/// Connections served on a runtime of their own (see [`Endpoint::dedicate`]).
#[derive(Clone)]
struct Dedicated {
    role: Role,
    runtime: tokio::runtime::Handle,
}

impl Endpoint {
    pub fn new(service: &'static str, metrics: Metrics) -> Self {
        Self {
            service,
            grpc: Routes::default(),
            grpc_names: Vec::new(),
            http: Router::new(),
            metrics,
            limits: ServerLimits::default(),
            unbounded: Vec::new(),
            wrap: None,
            tls: None,
            access: Vec::new(),
            dedicated: None,
        }
    }

    /// Serves over TLS (`None`: plaintext). With TLS, every caller must present a
    /// certificate signed by the cluster CA, unless the port has [`open`](Self::open) paths,
    /// and what it may call is set by [`allow`](Self::allow).
    pub fn tls(mut self, tls: Option<Arc<Tls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Paths starting with `prefix` may be called by certificates of `roles` (when the port
    /// has TLS; without it, anyone who reaches the port may call anything). The longest
    /// matching prefix decides; a path no prefix matches is for operators only, except
    /// `/health`, `/metrics`, gRPC health and reflection, which any certificate may call.
    pub fn allow(mut self, prefix: &'static str, roles: &'static [Role]) -> Self {
        self.access.push((prefix, Rule::Roles(roles)));
        self
    }

    /// Paths starting with `prefix` may be called by anyone who reaches the port, with a
    /// certificate or without (the gateway's REST and apps API, whose callers authenticate
    /// with credentials). A port with an open path asks for client certificates without
    /// requiring them.
    pub fn open(mut self, prefix: &'static str) -> Self {
        self.access.push((prefix, Rule::Anyone));
        self
    }

    /// Serves paths starting with `prefix` outside the bounds: no concurrency limit and no
    /// timeout. For a cluster's traffic between its own nodes (coord's Raft), which slow or
    /// many clients must not be able to starve, and whose snapshots may take long.
    pub fn unbounded(mut self, prefix: &'static str) -> Self {
        self.unbounded.push(prefix);
        self
    }

    /// The service's own layers around everything the port serves, applied inside the
    /// bounds and the metrics (so what they do — a standby forwarding to its leader — is
    /// bounded and counted like any request).
    pub fn wrap(mut self, layers: impl FnOnce(Router) -> Router + Send + 'static) -> Self {
        self.wrap = Some(Box::new(layers));
        self
    }

    /// Serves the connections of callers whose certificate names `role` on `runtime`, apart
    /// from everyone else's. For a cluster's own traffic between its nodes (coord's Raft):
    /// on a saturated host, a shared runtime's queue of client work would hold a heartbeat
    /// back past the election timeout, while a thread of its own gets its turn from the
    /// kernel as soon as it wakes. Needs TLS: a plaintext caller has no role.
    pub fn dedicate(mut self, role: Role, runtime: tokio::runtime::Handle) -> Self {
        self.dedicated = Some(Dedicated { role, runtime });
        self
    }

    /// The port's bounds (default: [`ServerLimits::default`]).
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
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

    /// Builds the port and the health handle (initially NOT_SERVING: the service flips it
    /// once it can do its job).
    pub async fn build(self) -> (Port, Health) {
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
        let reflection_v1 = shared_per_process(&served, || {
            reflection().build_v1().expect("descriptor sets are generated at build time")
        });
        let reflection_v1alpha = shared_per_process(&served, || {
            reflection().build_v1alpha().expect("descriptor sets are generated at build time")
        });

        let grpc = self.grpc.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
        let builtin = Router::new()
            .route("/health", get(health_handler).with_state(health.clone()))
            .route("/metrics", get(metrics_handler).with_state(self.metrics.clone()));
        let router = grpc.into_axum_router().merge(self.http).merge(builtin).fallback(not_found);
        let router = match self.wrap {
            Some(layers) => layers(router),
            None => router,
        };
        let client_certificate_required = !self.access.iter().any(|(_, rule)| matches!(rule, Rule::Anyone));
        let access = Access { enforced: self.tls.is_some(), rules: self.access };
        let router = router
            .layer(axum::middleware::from_fn_with_state(Arc::new(access), check_access))
            .layer(axum::middleware::from_fn_with_state(Arc::new(Bounds::new(self.limits, self.unbounded)), bound))
            .layer(axum::middleware::from_fn_with_state(self.metrics, crate::metrics::record));
        tracing::debug!(service = self.service, "endpoint built");
        let port =
            Port { router, tls: self.tls, client_certificate_required, limits: self.limits, dedicated: self.dedicated };
        (port, health)
    }
}

/// The reflection service of ports serving `names`, built once per process and shared:
/// each one decodes every descriptor Marina has (about 250 KB), and a process that serves
/// many ports — a test cluster, or the placement benchmark's thousands of hollow agents —
/// would otherwise hold that once per port. Keyed by the served names and the service's type
/// (v1 and v1alpha are built from the same names).
fn shared_per_process<T: Clone + Send + Sync + 'static>(names: &[&'static str], build: impl FnOnce() -> T) -> T {
    use std::any::{Any, TypeId};
    use std::collections::HashMap;
    type Built = HashMap<(TypeId, Vec<&'static str>), Box<dyn Any + Send + Sync>>;
    static BUILT: std::sync::OnceLock<std::sync::Mutex<Built>> = std::sync::OnceLock::new();
    let key = (TypeId::of::<T>(), names.to_vec());
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(service) = built.get(&key).and_then(|service| service.downcast_ref::<T>()) {
        return service.clone();
    }
    let service = build();
    built.insert(key, Box::new(service.clone()));
    service
}

/// A built port, ready to [`serve`].
pub struct Port {
    pub router: Router,
    tls: Option<Arc<Tls>>,
    client_certificate_required: bool,
    limits: ServerLimits,
    dedicated: Option<Dedicated>,
}

/// The runtime `caller`'s connection is served on, when not the accepting one.
fn dedicated_runtime(dedicated: Option<&Dedicated>, caller: &Caller) -> Option<tokio::runtime::Handle> {
    let dedicated = dedicated?;
    let role = caller.identity().map(|identity| identity.role);
    (role == Some(dedicated.role)).then(|| dedicated.runtime.clone())
}

/// Who may call a path.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Anyone who reaches the port.
    Anyone,
    /// A certificate of the cluster CA naming one of these roles.
    Roles(&'static [Role]),
    /// Any certificate of the cluster CA.
    AnyCertificate,
}

/// The port's access rules (see [`Endpoint::allow`]).
struct Access {
    /// Whether the port has TLS: without it there is no identity to check.
    enforced: bool,
    rules: Vec<(&'static str, Rule)>,
}

/// What any certificate may call: health and metrics (so any member and Prometheus can
/// watch), and reflection (which says what is served, not what it holds).
const ANY_CERTIFICATE: &[&str] = &["/health", "/metrics", "/grpc.health.v1.Health/", "/grpc.reflection."];

impl Access {
    fn rule(&self, path: &str) -> Rule {
        let service = self
            .rules
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, rule)| *rule);
        service.unwrap_or_else(|| {
            if ANY_CERTIFICATE.iter().any(|prefix| path.starts_with(prefix)) {
                Rule::AnyCertificate
            } else {
                Rule::Roles(&[Role::Operator])
            }
        })
    }

    /// `Ok`, or why `caller` may not call `path`: unauthenticated (no certificate) or
    /// denied (the wrong role).
    fn check(&self, path: &str, caller: &Caller) -> Result<(), (bool, String)> {
        if !self.enforced {
            return Ok(());
        }
        let rule = self.rule(path);
        let identity = match (rule, caller) {
            (Rule::Anyone, _) => return Ok(()),
            (_, Caller::Verified(identity)) => identity,
            _ => {
                return Err((
                    true,
                    format!("{path} needs a client certificate signed by the cluster CA; {caller} has none"),
                ));
            }
        };
        match rule {
            Rule::Roles(roles) if !roles.contains(&identity.role) => {
                let names: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
                Err((false, format!("{identity} may not call {path} (only: {})", names.join(", "))))
            }
            _ => Ok(()),
        }
    }
}

/// Refuses a request its caller may not make: 401/UNAUTHENTICATED without a certificate,
/// 403/PERMISSION_DENIED with the wrong one.
async fn check_access(State(access): State<Arc<Access>>, request: Request, next: axum::middleware::Next) -> Response {
    let caller = request.extensions().get::<Caller>().cloned().unwrap_or(Caller::Plaintext);
    let Err((unauthenticated, message)) = access.check(request.uri().path(), &caller) else {
        return next.run(request).await;
    };
    tracing::warn!(%caller, path = request.uri().path(), "refused: {message}");
    if is_grpc(&request) {
        let status = if unauthenticated {
            tonic::Status::unauthenticated(message)
        } else {
            tonic::Status::permission_denied(message)
        };
        return status.into_http();
    }
    let code = if unauthenticated { StatusCode::UNAUTHORIZED } else { StatusCode::FORBIDDEN };
    (code, axum::Json(serde_json::json!({ "message": message }))).into_response()
}

/// Serves `port` on `listener` until `shutdown` fires, then drains for at most
/// [`DRAIN_TIMEOUT`] (connections still open then are closed). Every request knows the
/// connection it came on: its [`Caller`] (who, over TLS) and its peer address, the latter
/// both as axum's `ConnectInfo` and as tonic's `TcpConnectInfo`, so gRPC handlers read it
/// with `Request::remote_addr()` (coord counts watches per client).
pub async fn serve(listener: TcpListener, port: Port, shutdown: Shutdown) -> std::io::Result<()> {
    use axum::serve::Listener as _;
    if let Some(tls) = &port.tls {
        tls.watch(&shutdown);
    }
    let mut listener = SecureListener::new(
        listener,
        port.tls,
        port.client_certificate_required,
        port.limits.max_tls_handshakes_per_peer,
    )?;
    let http = Arc::new(http_builder(&port.limits));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        // Reap the connections that ended, so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let runtime = dedicated_runtime(port.dedicated.as_ref(), &peer.caller);
        let service = connection_service(port.router.clone(), peer);
        let (http, shutdown) = (http.clone(), shutdown.clone());
        let connection = async move {
            let io = hyper_util::rt::TokioIo::new(io);
            let connection = http.serve_connection_with_upgrades(io, service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => return log_connection_end(result),
                () = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            log_connection_end(connection.await);
        };
        match runtime {
            Some(runtime) => connections.spawn_on(connection, &runtime),
            None => connections.spawn(connection),
        };
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        tracing::warn!(open = connections.len(), "drain timeout: closing remaining connections");
        connections.shutdown().await;
    }
    Ok(())
}

/// How each connection is spoken: HTTP/1.1 or HTTP/2 as the client opens it.
///
/// HTTP/2 keeps hyper's rapid-reset guard (CVE-2023-44487: a client that opens streams and
/// resets them at once makes the server queue work it never gets to do) but sizes it to the
/// port: h2 closes a connection once more streams sit reset in its accept queue than
/// `max_pending_accept_reset_streams`. Its default, 20, is for the open internet; here one
/// connection carries a whole service's calls (a gateway's thousands of coord requests),
/// and a busy server that accepts late sees its own cluster's callers give up on more than
/// 20 requests at their deadlines — closing that connection expired the gateway's coord
/// session and moved its leadership (3,000 agents in the placement bench). Allowing as
/// many as the port serves at once keeps a flood bounded: the queue's reset streams still
/// count against the connection's concurrent streams (hyper: 200), and streams refused
/// beyond that trip h2's guard on locally reset streams, which closes the connection.
fn http_builder(limits: &ServerLimits) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http2().max_pending_accept_reset_streams(limits.max_concurrent_requests);
    builder
}

/// The port's router for one connection: every request carries the connection's peer.
fn connection_service(
    router: Router,
    peer: Peer,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let mut request = request.map(Body::new);
        let extensions = request.extensions_mut();
        extensions.insert(axum::extract::ConnectInfo(peer.address));
        extensions
            .insert(tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: Some(peer.address) });
        extensions.insert(peer.caller.clone());
        tower::ServiceExt::oneshot(router.clone(), request)
    })
}

fn log_connection_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(error) = result {
        tracing::debug!("connection ended: {error}");
    }
}

/// The shared state of [`bound`].
struct Bounds {
    slots: Arc<tokio::sync::Semaphore>,
    limit: usize,
    timeout: Duration,
    unbounded: Vec<&'static str>,
}

impl Bounds {
    fn new(limits: ServerLimits, unbounded: Vec<&'static str>) -> Self {
        let limit = limits.max_concurrent_requests;
        Bounds {
            slots: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
            timeout: limits.request_timeout(),
            unbounded,
        }
    }
}

/// Serves a request within the port's bounds: refused at once when the port is full (a
/// queue would only make every caller wait), failed when not answered in time.
async fn bound(State(bounds): State<Arc<Bounds>>, request: Request, next: axum::middleware::Next) -> Response {
    if bounds.unbounded.iter().any(|prefix| request.uri().path().starts_with(prefix)) {
        return next.run(request).await;
    }
    let grpc = is_grpc(&request);
    // Health and metrics answer even on a full port: that is when operators need them.
    let exempt = matches!(request.uri().path(), "/health" | "/metrics" | "/grpc.health.v1.Health/Check");
    let slot = bounds.slots.clone().try_acquire_owned();
    if slot.is_err() && !exempt {
        let message = format!(
            "overloaded: {} requests in flight on this port (server.max_concurrent_requests); retry",
            bounds.limit
        );
        tracing::warn!("{message}");
        return if grpc {
            // Not acted on: a Marina client may retry it here or elsewhere.
            crate::leader::not_leader(message, None).into_http()
        } else {
            let body = serde_json::json!({ "message": message });
            (StatusCode::SERVICE_UNAVAILABLE, [(http::header::RETRY_AFTER, "1")], axum::Json(body)).into_response()
        };
    }
    match tokio::time::timeout(bounds.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let message = format!("not answered within {} ms (server.request_timeout_ms)", bounds.timeout.as_millis());
            tracing::warn!("{message}");
            if grpc {
                tonic::Status::deadline_exceeded(message).into_http()
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "message": message }))).into_response()
            }
        }
    }
}

fn is_grpc(request: &Request) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
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
    if is_grpc(&request) {
        return tonic::Status::unimplemented(format!("unknown method {}", request.uri().path())).into_http();
    }
    let body = serde_json::json!({ "message": format!("no route for {} {}", request.method(), request.uri().path()) });
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response().map(Body::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_built_once_per_process_for_each_set_of_names() {
        let builds = std::sync::atomic::AtomicUsize::new(0);
        let build = |value: &'static str| {
            builds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            value.to_owned()
        };
        let (a, b) = (["test.shared.A"], ["test.shared.B"]);
        assert_eq!(shared_per_process(&a, || build("a")), "a");
        assert_eq!(shared_per_process(&b, || build("b")), "b", "other names, another service");
        assert_eq!(shared_per_process(&a, || build("again")), "a", "the same names, the one built");
        assert_eq!(shared_per_process(&a, || 7u32), 7, "the same names, another type: built too");
        assert_eq!(builds.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    /// A port serving only `/health`, on loopback; returns its address.
    async fn serve_a_port(shutdown: &Shutdown) -> std::net::SocketAddr {
        let (port, health) = Endpoint::new("test", Metrics::new("test")).build().await;
        health.set_serving(true).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, port, shutdown.clone()));
        address
    }

    /// Opens an HTTP/2 connection and sends `resets` requests, each reset as soon as sent
    /// (what a client does when its calls time out while the server is slow to accept them),
    /// all in one burst; then asks `/health` on the same connection.
    async fn health_after_resets(address: std::net::SocketAddr, resets: usize) -> Result<http::StatusCode, h2::Error> {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await?;
        tokio::spawn(connection);
        let mut client = client.ready().await?;
        for _ in 0..resets {
            let request = http::Request::get("/health").body(()).unwrap();
            let (_, mut stream) = client.send_request(request, false)?;
            stream.send_reset(h2::Reason::CANCEL);
            client = client.ready().await?;
        }
        let (response, _) = client.send_request(http::Request::get("/health").body(()).unwrap(), true)?;
        Ok(response.await?.status())
    }

    /// `role`'s TLS, its certificate issued by `ca`, its files in `dir`.
    fn tls_as(ca: &crate::tls::issue::Pem, role: Role, id: Option<&str>, dir: &std::path::Path) -> Arc<Tls> {
        use crate::tls::issue::{Request, issue};
        let pem = issue(ca, &Request { role, id, dns: &[], ip: &[], days: 1 }).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
        std::fs::write(dir.join("me.pem"), &pem.cert).unwrap();
        std::fs::write(dir.join("me-key.pem"), &pem.key).unwrap();
        Tls::load(&crate::tls::TlsConfig::in_dir(dir, "me")).unwrap().expect("configured")
    }

    /// Asks `/thread` over mutual TLS as `client`: the name of the thread that served it.
    async fn serving_thread(address: &str, client: &Arc<Tls>) -> String {
        use crate::link::{Link, Liveness};
        let channel = Link::new(address, Liveness::TO_PEER, Some(client), &[Role::Coord]).unwrap().connect_lazy();
        let request = http::Request::get(format!("http://{address}/thread")).body(tonic::body::Body::empty()).unwrap();
        let response = tower::ServiceExt::oneshot(channel, request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        let body = axum::body::to_bytes(Body::new(response.into_body()), 1024).await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_dedicated_roles_connections_are_served_on_its_runtime() {
        let ca = crate::tls::issue::new_ca(1).unwrap();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let dedicated = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dedicated")
            .enable_all()
            .build()
            .unwrap();
        let thread = || async { std::thread::current().name().unwrap_or_default().to_owned() };
        let (port, _health) = Endpoint::new("test", Metrics::new("test"))
            .tls(Some(tls_as(&ca, Role::Coord, Some("1"), dirs[0].path())))
            .allow("/thread", &[Role::Coord, Role::Agent])
            .dedicate(Role::Coord, dedicated.handle().clone())
            .http(Router::new().route("/thread", get(thread)))
            .build()
            .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let shutdown = Shutdown::new();
        let served = tokio::spawn(serve(listener, port, shutdown.clone()));

        let peer = tls_as(&ca, Role::Coord, Some("2"), dirs[1].path());
        assert_eq!(serving_thread(&address, &peer).await, "dedicated", "a peer's connection: on its runtime");
        let agent = tls_as(&ca, Role::Agent, None, dirs[2].path());
        let other = serving_thread(&address, &agent).await;
        assert_ne!(other, "dedicated", "anyone else's: on the accepting runtime");

        shutdown.trigger();
        served.await.unwrap().unwrap();
        dedicated.shutdown_background();
    }

    #[tokio::test]
    async fn a_connection_survives_its_own_callers_giving_up_on_many_requests() {
        let shutdown = Shutdown::new();
        let address = serve_a_port(&shutdown).await;
        // h2's default guard closed the connection past 20 such resets.
        let status = health_after_resets(address, 150).await;
        assert_eq!(status.unwrap(), http::StatusCode::OK);
        shutdown.trigger();
    }

    #[tokio::test]
    async fn a_rapid_reset_flood_closes_the_connection() {
        let shutdown = Shutdown::new();
        let address = serve_a_port(&shutdown).await;
        let flood = ServerLimits::default().max_concurrent_requests * 20;
        let outcome = health_after_resets(address, flood).await;
        let error = outcome.expect_err("a flood of resets must close the connection");
        assert!(error.is_go_away() || error.is_io(), "{error}");
        // The port itself still serves new connections.
        assert_eq!(health_after_resets(address, 0).await.unwrap(), http::StatusCode::OK);
        shutdown.trigger();
    }
}
