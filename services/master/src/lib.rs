//! `marina-master`: Marina's Mesos master. Any number run; one leads, elected through coord
//! with the shared recipe and fenced by its epoch. The leader keeps the agent registry,
//! offers free resources to schedulers (DRF), validates and routes launches, routes status
//! updates and answers reconciliation; standbys redirect to it.
//!
//! - candidacy: the shared coord recipe ([`marina_coord_client::run_candidacy`]);
//! - [`leader`]: the leader's state for one term; [`allocator`], [`resources`]: offers;
//! - [`registry`]: what is kept in coord (agents, frameworks);
//! - [`api`]: gRPC and HTTP; [`metrics`].

pub mod allocator;
mod api;
mod config;
mod error;
pub mod leader;
mod metrics;
mod registry;

use std::net::SocketAddr;
use std::sync::Arc;

use marina_coord_client::{CoordClient, LeaderObserver};
use marina_daemon::leader::MemberInfo;
use marina_daemon::tls::{Role, Tls};
use marina_daemon::{Endpoint, Metrics, Shutdown};
use marina_proto::master::v1::agent_link_server::AgentLinkServer;
use marina_proto::master::v1::operator_server::OperatorServer;
use marina_proto::master::v1::scheduler_server::SchedulerServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Status;

pub use crate::config::Config;
use crate::leader::LeaderState;
use crate::metrics::MasterMetrics;

use marina_proto::layout::MASTER_ELECTION_DIR;

pub use crate::error::MasterError;

pub struct Master {
    pub id: String,
    pub member: MemberInfo,
    pub config: Config,
    pub coord: CoordClient,
    /// The leader state while this master leads.
    pub role: watch::Sender<Option<Arc<LeaderState>>>,
    pub metrics: MasterMetrics,
    /// The master's shutdown: failed when the leader state is found poisoned.
    pub shutdown: Shutdown,
    observer: LeaderObserver,
}

impl Master {
    /// The leader state when this master leads; otherwise UNAVAILABLE with the leader's
    /// address in `x-marina-leader`.
    pub fn leader(&self) -> Result<Arc<LeaderState>, Status> {
        match &*self.role.borrow() {
            Some(leader) if !leader.ended.is_cancelled() => Ok(leader.clone()),
            _ => {
                let hint = self.leader_address().filter(|address| *address != self.member.address);
                Err(marina_daemon::leader::not_leader("this master is a standby", hint.as_deref()))
            }
        }
    }

    /// The leading master's address, from the election.
    pub fn leader_address(&self) -> Option<String> {
        if self.role.borrow().is_some() {
            return Some(self.member.address.clone());
        }
        let leader = self.observer.current()?;
        MemberInfo::from_bytes(&leader.data).map(|member| member.address)
    }
}

pub struct MasterHandle {
    pub local_address: SocketAddr,
    pub master: Arc<Master>,
    task: JoinHandle<std::io::Result<()>>,
}

impl MasterHandle {
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Starts a master on `listener` until `shutdown` (a leader resigns first, handing over).
pub async fn spawn(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<MasterHandle, MasterError> {
    config.validate()?;
    let local_address = listener.local_addr()?;
    let address = config.advertise.clone().unwrap_or_else(|| local_address.to_string());
    let id = marina_daemon::ids::stable(&config.work_dir, "master-id", "master")?;
    let tls = Tls::load(&config.tls)?;
    let coord = CoordClient::with_tls(&config.coord, tls.clone());
    let observer = coord.observe_leader(MASTER_ELECTION_DIR).await?;
    let metrics = Metrics::new("master");
    let master_metrics = MasterMetrics::new(&metrics);
    let (role, _) = watch::channel(None);
    let member = MemberInfo { id: id.clone(), address: address.clone(), version: marina_daemon::VERSION.into() };
    let master = Arc::new(Master {
        id,
        member,
        config,
        coord,
        role,
        metrics: master_metrics,
        shutdown: shutdown.clone(),
        observer,
    });

    let limits = master.config.server;
    let (port, health) = Endpoint::new("master", metrics)
        .limits(limits)
        .tls(tls)
        .allow("/marina.master.v1.AgentLink/", &[Role::Agent])
        .allow("/marina.master.v1.Scheduler/", &[Role::Gateway, Role::Framework])
        // State (also as JSON) for what watches the cluster; draining an agent is an
        // operator's decision.
        .allow("/marina.master.v1.Operator/GetState", &[Role::Operator, Role::Gateway])
        .allow("/master/", &[Role::Operator, Role::Gateway])
        .grpc(marina_daemon::bounded_grpc!(AgentLinkServer::new(api::AgentLinkApi::new(master.clone())), limits))
        .grpc(marina_daemon::bounded_grpc!(SchedulerServer::new(api::SchedulerApi::new(master.clone())), limits))
        .grpc(marina_daemon::bounded_grpc!(OperatorServer::new(api::OperatorApi::new(master.clone())), limits))
        .http(api::http_routes(master.clone()))
        .build()
        .await;
    // A standby serves (redirects); health says the process is up and following coord.
    health.set_serving(true).await;
    let candidacy = marina_coord_client::Candidacy {
        dir: MASTER_ELECTION_DIR.into(),
        data: master.member.to_bytes(),
        session_ttl: Config::ms(master.config.session_ttl_ms),
        disconnect_grace: Config::ms(master.config.session_disconnect_grace_ms),
    };
    let starter = master.clone();
    let start = move |epoch, fence, deposed| {
        let master = starter.clone();
        async move {
            let leader = LeaderState::start(&master, epoch, fence, deposed).await?;
            master.metrics.elected.set(1);
            master.metrics.elections_won.inc();
            Ok(leader)
        }
    };
    let election = tokio::spawn(marina_coord_client::run_candidacy(
        master.coord.clone(),
        candidacy,
        start,
        master.role.clone(),
        Arc::new(tokio::sync::Notify::new()),
        shutdown.token(),
    ));
    tracing::info!(id = %master.id, %address, "master started");
    let task = tokio::spawn(async move {
        let served = marina_daemon::endpoint::serve(listener, port, shutdown).await;
        let _ = election.await;
        tracing::info!("master stopped");
        served
    });
    Ok(MasterHandle { local_address, master, task })
}
