//! A coord node: Raft, storage, batching, sessions and the gRPC/HTTP endpoint wired
//! together, started from a [`Config`] on an already bound listener.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_daemon::config::ConfigError;
use marina_daemon::tls::{Role, Tls};
use marina_daemon::{Endpoint, Health, Metrics, Shutdown};
use marina_proto::coord::v1::cluster_client::ClusterClient;
use marina_proto::coord::v1::cluster_server::ClusterServer;
use marina_proto::coord::v1::coord_server::CoordServer;
use marina_proto::coord::v1::raft_server::RaftServer;
use marina_proto::coord::v1::{Member, StatusRequest, StatusResponse};
use openraft::error::Fatal;
use openraft::{BasicNode, ChangeMembers, RaftMetrics, ServerState, SnapshotPolicy};
use prometheus::{Histogram, HistogramOpts, IntGauge};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::api::{ClusterApi, CoordApi};
use crate::config::{Config, Limits};
use crate::error::CoordError;
use crate::log_store::{LogStore, LogStoreError};
use crate::network::{self, MAX_DECODING_BYTES, Network, RaftService};
use crate::proposer::{self, Proposer, ProposerMetrics, ReadBarrier};
use crate::sessions::SessionTracker;
use crate::state_machine::{SharedReplica, StateMachine};
use crate::types::{NodeId, Raft};
use crate::watch::{WatchHub, WatchSlots};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] LogStoreError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] marina_daemon::tls::TlsError),
}

/// Where a request that needs the leader goes.
pub enum Route {
    Local,
    Forward(Leader),
}

/// The leader a follower relays a request to.
pub struct Leader {
    pub channel: Channel,
    /// Its client address, returned with the relayed answer so the client asks it directly
    /// next time (one hop instead of two).
    pub address: String,
}

/// Shared state of a running node, used by the API handlers and background tasks.
pub struct CoordNode {
    pub id: NodeId,
    /// The address peers and clients reach this node at.
    pub address: String,
    pub raft: Raft,
    pub replica: SharedReplica,
    pub watch_hub: Arc<WatchHub>,
    pub proposer: Proposer,
    pub reads: ReadBarrier,
    pub sessions: SessionTracker,
    pub limits: Limits,
    /// The port's bounds, message sizes among them.
    pub server: marina_daemon::ServerLimits,
    /// Open watch streams on this node, in all and per client.
    pub watches: Arc<WatchSlots>,
    pub shutdown: Shutdown,
    /// Connections to other nodes, for forwarding.
    channels: Mutex<HashMap<String, Channel>>,
    /// This node's TLS: what it serves with and calls its peers with.
    tls: Option<Arc<Tls>>,
}

impl CoordNode {
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The leader's address, if one is known.
    pub(crate) fn leader_address(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        metrics.membership_config.membership().get_node(&leader).map(|node| node.addr.clone())
    }

    /// Requests that need the leader run here if this node leads, are forwarded once
    /// otherwise (a forwarded request that lands on a non-leader is refused with a hint).
    pub(crate) fn route(&self, already_forwarded: bool) -> Result<Route, CoordError> {
        let (state, leader) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state, metrics.current_leader)
        };
        if state == ServerState::Leader {
            return Ok(Route::Local);
        }
        match (leader, self.leader_address()) {
            (Some(leader), Some(address)) if leader != self.id && !already_forwarded => {
                Ok(Route::Forward(Leader { channel: self.channel(&address), address }))
            }
            (None, _) => Err(CoordError::NoLeader { node: self.id }),
            (_, hint) => Err(CoordError::NotLeader { leader: hint }),
        }
    }

    pub(crate) fn channel(&self, address: &str) -> Channel {
        self.channels
            .lock()
            .expect("channel cache lock")
            .entry(address.to_owned())
            .or_insert_with(|| network::channel(address, self.tls.as_ref()))
            .clone()
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> StatusResponse {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| Member {
                id: *id,
                address: node.addr.clone(),
                kind: if voters.contains(id) { "voter" } else { "learner" }.into(),
            })
            .collect();
        let role = match metrics.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let (revision, sessions) = {
            let replica = self.replica.read().expect("replica lock");
            (replica.store.revision(), replica.store.sessions().len() as u64)
        };
        StatusResponse {
            id: self.id,
            address: self.address.clone(),
            role: role.into(),
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |id| id.index),
            leader_id: metrics.current_leader.unwrap_or(0),
            leader_address: self.leader_address().unwrap_or_default(),
            initialized: metrics.last_log_index.is_some() || metrics.vote.leader_id().term > 0,
            members,
            revision,
            sessions,
            watches: self.watches.open() as u64,
            version: marina_daemon::VERSION.into(),
        }
    }

    pub(crate) async fn add_learner(&self, id: NodeId, address: String) -> Result<(), CoordError> {
        self.raft
            .add_learner(id, BasicNode::new(address), true)
            .await
            .map(|_| ())
            .map_err(|error| CoordError::Membership(error.to_string()))
    }

    pub(crate) async fn promote(&self, id: NodeId) -> Result<(), CoordError> {
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(|error| CoordError::Membership(error.to_string()))
    }

    pub(crate) async fn remove(&self, id: NodeId) -> Result<(), CoordError> {
        let is_voter = self.metrics().membership_config.membership().voter_ids().any(|voter| voter == id);
        let change = if is_voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|error| CoordError::Membership(error.to_string()))
    }
}

/// A running node.
pub struct CoordHandle {
    pub local_address: SocketAddr,
    pub node: Arc<CoordNode>,
    task: JoinHandle<Result<(), StartError>>,
}

impl CoordHandle {
    /// Waits for the node to stop (after its shutdown was triggered).
    pub async fn wait(self) -> Result<(), StartError> {
        self.task.await.map_err(|error| StartError::Raft(format!("node task failed: {error}")))?
    }
}

/// Who may use the data API: the services, operators, and coord nodes relaying a request
/// they checked (a follower forwarding to its leader).
const COORD_CLIENTS: &[Role] = &[Role::Coord, Role::Master, Role::Gateway, Role::Agent, Role::Operator];

/// Starts a node serving on `listener` until `shutdown` fires.
pub async fn spawn(config: Config, listener: TcpListener, shutdown: Shutdown) -> Result<CoordHandle, StartError> {
    config.validate()?;
    let peers = config.peer_map()?;
    let local_address = listener.local_addr()?;
    let address = config
        .advertise
        .clone()
        .or_else(|| peers.get(&config.id).cloned())
        .unwrap_or_else(|| local_address.to_string());

    let tls = Tls::load(&config.tls)?;
    let metrics = Metrics::new("coord");
    let fsync_seconds = Histogram::with_opts(
        HistogramOpts::new("marina_coord_fsync_duration_seconds", "Time to fsync a group of log appends.")
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).expect("static buckets")),
    )
    .expect("static metric");
    metrics.register(fsync_seconds.clone());

    let raft_dir = config.data_dir.join("raft");
    let mut log_store = LogStore::open(&raft_dir, config.id, Some(fsync_seconds))?;
    let startup_last_index = openraft::storage::RaftLogStorage::get_log_state(&mut log_store)
        .await
        .map_err(|error| StartError::Raft(error.to_string()))?
        .last_log_id
        .map_or(0, |id| id.index);
    let state_machine = StateMachine::open(&raft_dir, config.limits.history())?;
    let replica = state_machine.replica();
    let watch_hub = state_machine.watch_hub();

    let raft_config = openraft::Config {
        cluster_name: "marina-coord".into(),
        heartbeat_interval: config.raft.heartbeat_ms,
        election_timeout_min: config.raft.election_timeout_min_ms,
        election_timeout_max: config.raft.election_timeout_max_ms,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.raft.snapshot_every_entries),
        max_in_snapshot_log_to_keep: config.raft.keep_entries_after_snapshot,
        ..Default::default()
    }
    .validate()
    .map_err(|error| StartError::Raft(error.to_string()))?;
    // Raft's core, its replication to each peer and its peers' connections to this node run
    // on a thread of their own (see `RaftRuntime`).
    let raft_runtime = RaftRuntime::start(config.id)?;
    let raft = raft_runtime
        .handle()
        .spawn(Raft::new(config.id, Arc::new(raft_config), Network::new(tls.clone()), log_store.clone(), state_machine))
        .await
        .map_err(|error| StartError::Raft(format!("starting raft: {error}")))?
        .map_err(|error| StartError::Raft(error.to_string()))?;

    let proposal_timeout = Duration::from_millis(config.raft.proposal_timeout_ms);
    let proposer = Proposer::spawn(
        raft.clone(),
        config.raft.max_batch,
        config.raft.max_in_flight,
        proposal_timeout,
        ProposerMetrics::new(&metrics),
    );
    let election_timeout_max = Duration::from_millis(config.raft.election_timeout_max_ms);
    let lease = config.raft.lease_reads.then(|| election_timeout_max.mul_f64(proposer::LEASE_FRACTION));
    let reads = ReadBarrier::spawn(raft.clone(), proposal_timeout, startup_last_index, lease, &metrics);
    let sessions = SessionTracker::new(replica.clone(), &metrics);
    let node = Arc::new(CoordNode {
        id: config.id,
        address: address.clone(),
        raft: raft.clone(),
        replica,
        watch_hub,
        proposer: proposer.clone(),
        reads: reads.clone(),
        sessions: sessions.clone(),
        limits: config.limits.clone(),
        server: config.server,
        watches: Arc::default(),
        shutdown: shutdown.clone(),
        channels: Mutex::default(),
        tls: tls.clone(),
    });

    // Every message clients send or get is bounded by configuration: requests decoded
    // beyond `server.max_decoding_message_bytes` are refused before they are read whole,
    // and answers are kept within `server.max_encoding_message_bytes` (watch messages also
    // within `limits.max_watch_message_bytes`, splitting large revisions to stay within both).
    let server = config.server;
    let (port, health) = Endpoint::new("coord", metrics.clone())
        .limits(server)
        .tls(tls)
        // Raft only from coord nodes (and, checked per message, only from members); the
        // data API from the services that use it; membership changes from operators.
        .allow("/marina.coord.v1.Raft/", &[Role::Coord])
        .allow("/marina.coord.v1.Coord/", COORD_CLIENTS)
        .allow("/marina.coord.v1.Cluster/Status", COORD_CLIENTS)
        .allow("/marina.coord.v1.Cluster/", &[Role::Coord, Role::Operator])
        // Nodes' own traffic: heartbeats must not queue behind (or be refused for) clients,
        // and a snapshot may take longer than a client request.
        .unbounded("/marina.coord.v1.Raft/")
        .dedicate(Role::Coord, raft_runtime.handle().clone())
        .grpc(
            CoordServer::new(CoordApi::new(node.clone()))
                .max_decoding_message_size(server.max_decoding_message_bytes)
                .max_encoding_message_size(server.max_encoding_message_bytes),
        )
        .grpc(
            ClusterServer::new(ClusterApi::new(node.clone()))
                .max_decoding_message_size(server.max_decoding_message_bytes)
                .max_encoding_message_size(server.max_encoding_message_bytes),
        )
        .grpc(
            // A node that may have promised a leader not to vote (before a restart) keeps
            // that promise: it waits out the promise's length before voting again.
            RaftServer::new(RaftService::new(
                raft.clone(),
                if config.raft.lease_reads { election_timeout_max } else { Duration::ZERO },
            ))
            .max_decoding_message_size(MAX_DECODING_BYTES)
            .max_encoding_message_size(MAX_DECODING_BYTES),
        )
        .build()
        .await;

    tokio::spawn(sessions.run(raft.clone(), proposer, reads, shutdown.clone()));
    tokio::spawn(bootstrap(node.clone(), peers, address.clone()));
    tokio::spawn(watch_storage(node.clone(), log_store.failures()));
    tokio::spawn(watch_health(node.clone(), health, Gauges::new(&metrics), log_store, config.raft.clone()));

    tracing::info!(id = config.id, %address, listen = %local_address, data_dir = %config.data_dir.display(), "coord node started");
    let task_node = node.clone();
    let task = tokio::spawn(async move {
        let served = marina_daemon::endpoint::serve(listener, port, shutdown).await;
        if let Err(error) = task_node.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        drop(raft_runtime);
        tracing::info!(id = task_node.id, "coord node stopped");
        served.map_err(StartError::from)
    });
    Ok(CoordHandle { local_address, node, task })
}

/// The runtime Raft runs on: one thread, apart from the client API's runtime.
///
/// Measured in the placement benchmark (a million tasks on 3,000 agents, two cores): with
/// Raft's tasks queued among thousands of client requests on a shared runtime, the leader's
/// AppendEntries and the followers' answers waited past the 500 ms election timeout, and
/// the loaded cluster elected a new leader within a minute; with this thread (and snapshots
/// that no longer hold the apply lock: `StateMachine::build_snapshot`), two runs of 2,700
/// agents had no election. A thread that sleeps between messages is run by the kernel soon
/// after it wakes, whatever the client runtime's backlog. Raft's own work (appending,
/// applying to the state machine, replicating) stays on it: it must never block for long;
/// the log's disk writes have their own thread ([`LogStore`]).
struct RaftRuntime(Option<tokio::runtime::Runtime>);

/// Run on each of Raft's threads as it starts (see [`on_raft_thread_start`]).
static RAFT_THREAD_START: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Has `hook` run on every Raft thread as it starts, for an embedding process that tags its
/// threads (the placement benchmark counts each service's heap by thread). Set once; later
/// calls are ignored.
pub fn on_raft_thread_start(hook: fn()) {
    let _ = RAFT_THREAD_START.set(hook);
}

impl RaftRuntime {
    fn start(id: NodeId) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("coord-raft-{id}"))
            .on_thread_start(|| {
                if let Some(hook) = RAFT_THREAD_START.get() {
                    hook();
                }
            })
            .enable_all()
            .build()?;
        Ok(RaftRuntime(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for RaftRuntime {
    /// Without waiting for its threads: the node is stopped (or never started) by then, and a
    /// runtime may not block inside another.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// A node whose storage fails cannot go on: Raft stops at the first failed write (openraft
/// reports it as a fatal storage error), and a node idling without Raft would only hold on
/// to its clients. It stops (its clients move to the other nodes) and exits non-zero, for
/// its supervisor to restart it once the disk is fixed: its log recovers from what reached
/// the disk.
///
/// Two signals, whichever comes first: the log writer's own failure (which names the file
/// and the error), and Raft stopping on any fatal error (a vote, a snapshot, a purge).
async fn watch_storage(node: Arc<CoordNode>, mut log_failures: tokio::sync::watch::Receiver<Option<String>>) {
    let mut metrics = node.raft.metrics();
    loop {
        if let Some(failure) = log_failures.borrow_and_update().clone() {
            node.shutdown.fail(format!("raft log storage failed: {failure}"));
            return;
        }
        let fatal = match &metrics.borrow_and_update().running_state {
            Ok(()) => None,
            // Raft stopped because the node is stopping.
            Err(Fatal::Stopped) => return,
            Err(Fatal::StorageError(error)) => Some(format!("raft storage failed: {error}")),
            Err(Fatal::Panicked) => Some("raft stopped: its core task panicked".to_owned()),
        };
        if let Some(reason) = fatal {
            node.shutdown.fail(reason);
            return;
        }
        tokio::select! {
            changed = log_failures.changed() => if changed.is_err() { return },
            changed = metrics.changed() => if changed.is_err() { return },
            () = node.shutdown.cancelled() => return,
        }
    }
}

/// A fresh cluster initializes itself exactly once: the lowest-id peer does it after every
/// listed peer answers and none of them holds data. A node with a vote or log never does.
async fn bootstrap(node: Arc<CoordNode>, peers: BTreeMap<NodeId, String>, address: String) {
    match node.raft.is_initialized().await {
        Ok(false) => {}
        Ok(true) | Err(_) => return,
    }
    if peers.is_empty() {
        let members = BTreeMap::from([(node.id, BasicNode::new(address))]);
        if let Err(error) = node.raft.initialize(members).await {
            tracing::error!(%error, "bootstrapping a single-node cluster failed");
        }
        return;
    }
    if peers.keys().next() != Some(&node.id) {
        tracing::info!("waiting to be contacted by the cluster (the lowest-id peer bootstraps it)");
        return;
    }
    let mut attempt = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = attempt.tick() => {}
            () = node.shutdown.cancelled() => return,
        }
        if node.raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        let mut waiting_for = Vec::new();
        for (id, peer) in peers.iter().filter(|(id, _)| **id != node.id) {
            let mut client = ClusterClient::new(node.channel(peer));
            let mut request = tonic::Request::new(StatusRequest {});
            request.set_timeout(Duration::from_secs(1));
            match client.status(request).await {
                Ok(status) if status.get_ref().initialized => {
                    tracing::info!(peer = id, "a peer already holds cluster data: joining instead of bootstrapping");
                    return;
                }
                Ok(_) => {}
                Err(_) => waiting_for.push(*id),
            }
        }
        if !waiting_for.is_empty() {
            tracing::info!(?waiting_for, "bootstrap: waiting for every peer to answer");
            continue;
        }
        let members: BTreeMap<NodeId, BasicNode> =
            peers.iter().map(|(id, address)| (*id, BasicNode::new(address.clone()))).collect();
        match node.raft.initialize(members).await {
            Ok(()) => tracing::info!(voters = ?peers.keys().collect::<Vec<_>>(), "cluster bootstrapped"),
            Err(error) => tracing::warn!(%error, "bootstrap refused"),
        }
        return;
    }
}

struct Gauges {
    term: IntGauge,
    is_leader: IntGauge,
    leader_id: IntGauge,
    last_log_index: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    revision: IntGauge,
    nodes: IntGauge,
    sessions: IntGauge,
    watches: IntGauge,
    log_memory_bytes: IntGauge,
}

impl Gauges {
    fn new(metrics: &Metrics) -> Self {
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("static metric");
            metrics.register(gauge.clone());
            gauge
        };
        Self {
            term: gauge("marina_coord_term", "Current Raft term."),
            is_leader: gauge("marina_coord_is_leader", "1 if this node is the Raft leader."),
            leader_id: gauge("marina_coord_leader_id", "Id of the known leader, 0 if none."),
            last_log_index: gauge("marina_coord_last_log_index", "Index of the last log entry."),
            commit_index: gauge("marina_coord_commit_index", "Index of the last entry known committed."),
            applied_index: gauge("marina_coord_applied_index", "Index of the last applied entry."),
            revision: gauge("marina_coord_revision", "The store's current revision."),
            nodes: gauge("marina_coord_nodes", "Nodes in the tree."),
            sessions: gauge("marina_coord_sessions", "Live sessions."),
            watches: gauge("marina_coord_watches", "Open watch streams on this node."),
            log_memory_bytes: gauge("marina_coord_log_memory_bytes", "Bytes of un-snapshotted log held in memory."),
        }
    }
}

/// Health (serving only as part of a quorum with a known leader), metrics, and the
/// memory-bound snapshot trigger.
async fn watch_health(
    node: Arc<CoordNode>,
    health: Health,
    gauges: Gauges,
    log_store: LogStore,
    raft_config: crate::config::RaftConfig,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_snapshot_trigger = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = node.shutdown.cancelled() => {
                health.set_serving(false).await;
                return;
            }
        }
        let metrics = node.metrics();
        let voters = metrics.membership_config.membership().voter_ids().count();
        let quorum_fresh =
            metrics.millis_since_quorum_ack.is_some_and(|millis| millis < 2 * raft_config.election_timeout_max_ms);
        let serving = match metrics.state {
            ServerState::Leader => voters <= 1 || quorum_fresh,
            ServerState::Follower | ServerState::Learner => metrics.current_leader.is_some(),
            ServerState::Candidate | ServerState::Shutdown => false,
        };
        health.set_serving(serving).await;

        gauges.term.set(metrics.current_term as i64);
        gauges.is_leader.set(i64::from(metrics.state == ServerState::Leader));
        gauges.leader_id.set(metrics.current_leader.unwrap_or(0) as i64);
        gauges.last_log_index.set(metrics.last_log_index.unwrap_or(0) as i64);
        // Applied never runs ahead of committed; a restarted follower has not heard the
        // leader's commit index yet but may already have applied its own log.
        let applied = metrics.last_applied.map_or(0, |id| id.index);
        gauges.commit_index.set(log_store.committed_index().max(applied) as i64);
        gauges.applied_index.set(applied as i64);
        {
            let replica = node.replica.read().expect("replica lock");
            gauges.revision.set(replica.store.revision() as i64);
            gauges.nodes.set(replica.store.node_count() as i64);
            gauges.sessions.set(replica.store.sessions().len() as i64);
        }
        gauges.watches.set(node.watches.open() as i64);
        let log_bytes = log_store.memory_bytes();
        gauges.log_memory_bytes.set(log_bytes as i64);
        if log_bytes as u64 > raft_config.snapshot_every_bytes
            && last_snapshot_trigger.elapsed() > Duration::from_secs(5)
        {
            last_snapshot_trigger = tokio::time::Instant::now();
            tracing::info!(log_bytes, "log memory above snapshot_every_bytes: taking a snapshot");
            let _ = node.raft.trigger().snapshot().await;
        }
    }
}
