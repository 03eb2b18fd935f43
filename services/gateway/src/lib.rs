//! `marina-gateway`: Marina's Marathon. Operators and their tools talk to it: Marathon's v2
//! REST API, a gRPC apps API, server-sent events, a web UI. Gateways elect a leader through
//! coord (the shared recipe); the leader is a framework on the leading master and keeps
//! apps at their declared shape; standbys forward requests to it.
//!
//! - [`app`]: Marathon's app definition (reading, validating, updating, versions);
//! - [`leader`]: apps, instances, deployments for one leadership term; [`engine`]
//!   (convergence and rolling upgrades), [`placement`] (offers), [`model`] (tasks),
//!   [`readiness`] (new instances' readiness checks);
//! - [`scheduler`]: the framework on the master; [`store`]: what is kept in coord;
//! - [`rest`], [`grpc`], [`events`], [`ui`]: the APIs; [`proxy`]: standbys forward;
//!   [`admission`]: backpressure on the APIs' writes; [`sandboxes`]: tasks' sandbox files,
//!   from their agents.

mod admission;
pub mod app;
mod apps;
mod auth;
mod config;
pub mod engine;
mod events;
mod grpc;
mod leader;
mod metrics;
pub mod model;
pub mod placement;
mod proxy;
mod readiness;
pub mod rest;
mod sandboxes;
mod scheduler;
mod selector;
mod store;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use marina_coord_client::{CoordClient, LeaderObserver};
use marina_daemon::leader::MemberInfo;
use marina_daemon::tls::Tls;
use marina_daemon::{Endpoint, Metrics, Shutdown};
use marina_proto::apps::v1::apps_server::AppsServer;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use crate::admission::{Admission, AdmissionLimits, Admitted, Refused};
pub use crate::auth::{AuthConfig, Role, Token};
pub use crate::config::Config;
use crate::events::EventBus;
use crate::leader::Leader;
use crate::metrics::GatewayMetrics;
use crate::proxy::Proxy;
use crate::sandboxes::Sandboxes;
use crate::store::Store;

use marina_proto::layout::{GATEWAY_ELECTION_DIR, MASTER_ELECTION_DIR};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] marina_daemon::config::ConfigError),
    #[error("coord: {0}")]
    Coord(#[from] marina_coord_client::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] marina_daemon::tls::TlsError),
}

pub struct Gateway {
    pub id: String,
    pub member: MemberInfo,
    pub config: Config,
    pub coord: CoordClient,
    /// The leader state while this gateway leads.
    pub role: watch::Sender<Option<Arc<Leader>>>,
    pub events: EventBus,
    /// Signalled by `DELETE /v2/leader`.
    pub abdicate: Arc<Notify>,
    pub shutdown: Shutdown,
    pub metrics: GatewayMetrics,
    /// Admission of the apps service's writes, whichever door they come through.
    pub admission: Admission,
    observer: LeaderObserver,
    proxy: Proxy,
    /// Tasks' sandbox files, fetched from their agents (served by the leader).
    sandboxes: Sandboxes,
}

impl Gateway {
    /// The leading gateway's address.
    pub fn leader_address(&self) -> Option<String> {
        if self.role.borrow().is_some() {
            return Some(self.member.address.clone());
        }
        MemberInfo::from_bytes(&self.observer.current()?.data).map(|member| member.address)
    }

    pub fn leader(&self) -> Option<Arc<Leader>> {
        self.role.borrow().clone().filter(|leader| !leader.ended.is_cancelled())
    }
}

pub struct GatewayHandle {
    pub local_address: SocketAddr,
    pub gateway: Arc<Gateway>,
    task: JoinHandle<std::io::Result<()>>,
}

impl GatewayHandle {
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Requests only the leader serves go to the leader when this gateway stands by.
async fn route_to_leader(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let leader_only = (path.starts_with("/v2/") && path != "/v2/leader") || path.starts_with("/marina.apps.v1.");
    if !leader_only || gateway.leader().is_some() {
        return next.run(request).await;
    }
    let is_grpc = path.starts_with("/marina.apps.v1.");
    // A body the leader would refuse is refused here: forwarded, the leader would close the
    // connection while it is still being sent, and the caller would see a 503 instead.
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if !is_grpc && declared.is_some_and(|length| length > gateway.config.max_body_bytes as u64) {
        let message = format!("the body is larger than max_body_bytes ({} bytes)", gateway.config.max_body_bytes);
        return (axum::http::StatusCode::PAYLOAD_TOO_LARGE, axum::Json(serde_json::json!({ "message": message })))
            .into_response();
    }
    match gateway.leader_address().filter(|address| *address != gateway.member.address) {
        Some(address) => {
            // The hop is a span of its own, a child of this standby's request span (which
            // continues the caller's trace); the leader's request span becomes its child.
            let span = tracing::info_span!(
                "gateway.proxy",
                otel.kind = "client",
                leader = %address,
                path = %path,
                trace_id = tracing::field::Empty
            );
            gateway.proxy.forward(&address, &gateway.member.address, request).instrument(span).await
        }
        None if is_grpc => tonic::Status::unavailable("no leading gateway is known; retry").into_http(),
        None => proxy::unavailable("no leading gateway is known; retry"),
    }
}

/// Starts a gateway on `listener` until `shutdown` (a leader resigns first).
pub async fn spawn(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<GatewayHandle, GatewayError> {
    config.validate()?;
    let local_address = listener.local_addr()?;
    let address = config.advertise.clone().unwrap_or_else(|| local_address.to_string());
    let id = marina_daemon::ids::stable(&config.work_dir, "gateway-id", "gateway")?;
    let tls = Tls::load(&config.tls)?;
    let coord = CoordClient::with_tls(&config.coord, tls.clone());
    let observer = coord.observe_leader(GATEWAY_ELECTION_DIR).await?;
    let masters = coord.observe_leader(MASTER_ELECTION_DIR).await?;
    let member = MemberInfo { id: id.clone(), address: address.clone(), version: marina_daemon::VERSION.into() };
    let metrics = Metrics::new("gateway");
    let role = watch::channel(None).0;
    let gateway_metrics = GatewayMetrics::new(&metrics, role.subscribe());
    let admission = Admission::new(config.admission, gateway_metrics.admission.clone());
    let gateway = Arc::new(Gateway {
        id,
        member,
        config: config.clone(),
        coord: coord.clone(),
        role,
        events: EventBus::default(),
        abdicate: Arc::new(Notify::new()),
        shutdown: shutdown.clone(),
        observer,
        proxy: Proxy::new(tls.as_ref()),
        sandboxes: Sandboxes::new(tls.as_ref()),
        metrics: gateway_metrics,
        admission,
    });

    let routing = gateway.clone();
    let max_body_bytes = config.max_body_bytes;
    let auth = Arc::new(config.auth.clone());
    let (port, health) = Endpoint::new("gateway", metrics)
        .limits(config.server)
        .tls(tls.clone())
        // REST, the apps API and the UI: callers authenticate with credentials ([auth]),
        // with a client certificate or without.
        .open("/")
        // Inside the port's bounds: what a standby forwards is bounded and counted too.
        .wrap(move |router| {
            router
                .layer(axum::middleware::from_fn_with_state(routing, route_to_leader))
                .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
                // First: a standby checks its callers before it forwards them (the leader
                // checks them again).
                .layer(axum::middleware::from_fn_with_state(auth, auth::guard))
        })
        .grpc(marina_daemon::bounded_grpc!(AppsServer::new(grpc::AppsApi::new(gateway.clone())), config.server))
        .http(rest::routes(gateway.clone()))
        .http(ui::routes())
        .build()
        .await;
    health.set_serving(true).await;

    let candidacy = marina_coord_client::Candidacy {
        dir: GATEWAY_ELECTION_DIR.into(),
        data: gateway.member.to_bytes(),
        session_ttl: Duration::from_millis(config.session_ttl_ms),
        disconnect_grace: Duration::from_millis(config.session_disconnect_grace_ms),
    };
    let starter = gateway.clone();
    let masters = Arc::new(masters);
    let start = move |epoch, fence, deposed| {
        let gateway = starter.clone();
        let masters = masters.clone();
        let tls = tls.clone();
        async move {
            let store = Store::new(gateway.coord.clone(), fence);
            let leader = Leader::start(&gateway, epoch, store, deposed).await?;
            gateway.metrics.elections_won.inc();
            tokio::spawn(scheduler::run(
                leader.clone(),
                masters.receiver(),
                tls,
                gateway.config.framework_name.clone(),
                Duration::from_millis(gateway.config.reconcile_interval_ms),
            ));
            Ok(leader)
        }
    };
    let election = tokio::spawn(marina_coord_client::run_candidacy(
        coord,
        candidacy,
        start,
        gateway.role.clone(),
        gateway.abdicate.clone(),
        shutdown.token(),
    ));
    tracing::info!(id = %gateway.id, %address, "gateway started");
    let task = tokio::spawn(async move {
        let served = marina_daemon::endpoint::serve(listener, port, shutdown).await;
        let _ = election.await;
        tracing::info!("gateway stopped");
        served
    });
    Ok(GatewayHandle { local_address, gateway, task })
}
