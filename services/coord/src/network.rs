//! Raft messages between coord nodes, over the `marina.coord.v1.Raft` gRPC service on the
//! same port as the client API. Payloads are openraft's own types encoded with postcard;
//! a remote Raft error travels inside the payload, a gRPC error means the transport failed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_daemon::link::{Link, Liveness};
use marina_daemon::tls::{Caller, Role, Tls};
use marina_proto::coord::v1::RaftPayload;
use marina_proto::coord::v1::raft_client::RaftClient;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::types::{NodeId, Raft, TypeConfig};

/// Raft messages larger than this are split (openraft retries with fewer entries).
const MAX_MESSAGE_BYTES: usize = 32 << 20;
/// Both ends accept messages up to this size (a split message plus framing).
pub const MAX_DECODING_BYTES: usize = 64 << 20;

/// A lazily connected channel to the coord node at `address` (over mutual TLS with `tls`),
/// shared by everything that talks to that node.
pub fn channel(address: &str, tls: Option<&Arc<Tls>>) -> Channel {
    Link::new(address, Liveness::TO_PEER, tls, &[Role::Coord])
        .expect("node addresses are validated host:port strings")
        .connect_lazy()
}

/// Makes one connection per peer and reuses it across openraft's replication restarts.
#[derive(Clone)]
pub struct Network {
    channels: Arc<Mutex<HashMap<(NodeId, String), Channel>>>,
    tls: Option<Arc<Tls>>,
}

impl Network {
    pub fn new(tls: Option<Arc<Tls>>) -> Self {
        Network { channels: Arc::default(), tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        let channel = self
            .channels
            .lock()
            .expect("channel cache lock")
            .entry((target, node.addr.clone()))
            .or_insert_with(|| channel(&node.addr, self.tls.as_ref()))
            .clone();
        let client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_DECODING_BYTES)
            .max_encoding_message_size(MAX_DECODING_BYTES);
        Connection { target, client }
    }
}

pub struct Connection {
    target: NodeId,
    client: RaftClient<Channel>,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: Kind,
        request: &Req,
        entries: usize,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = postcard::to_stdvec(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if data.len() > MAX_MESSAGE_BYTES && entries > 1 {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries as u64 / 2)));
        }
        let mut request = Request::new(RaftPayload { data: data.into() });
        request.set_timeout(option.hard_ttl());
        let response = match kind {
            Kind::Append => self.client.append_entries(request).await,
            Kind::Vote => self.client.vote(request).await,
            Kind::Snapshot => self.client.install_snapshot(request).await,
        }
        .map_err(|status| RPCError::Unreachable(Unreachable::new(&TransportError(status))))?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&response.into_inner().data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

#[derive(Debug, thiserror::Error)]
#[error("raft transport: {0}")]
struct TransportError(Status);

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let entries = request.entries.len();
        self.call(Kind::Append, &request, entries, &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(Kind::Snapshot, &request, 1, &option).await
    }

    async fn vote(&mut self, request: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        self.call(Kind::Vote, &request, 1, &option).await
    }

    /// A restarted peer is picked up within a fraction of an election timeout.
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

/// The receiving side: hands decoded messages to the local Raft node.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    /// No votes before this (see `RaftConfig::lease_reads`).
    votes_from: std::time::Instant,
}

impl RaftService {
    /// `vote_quiet`: how long after start this node refuses to vote. Before a restart it
    /// may have acknowledged a leader whose lease lasts that long; openraft forgets that
    /// on restart, so the wait keeps the promise.
    pub fn new(raft: Raft, vote_quiet: Duration) -> Self {
        Self { raft, votes_from: std::time::Instant::now() + vote_quiet }
    }
}

/// A coord certificate speaks for a node of this cluster only: one of a removed node, or of
/// another cluster signed by the same CA, sends no Raft message, writes nothing and changes
/// no membership. Callers of other roles (and callers without TLS) are left to the other
/// checks. A node not yet part of a cluster (empty membership: before bootstrap, or a new
/// node about to be added as a learner) takes the first leader that calls it.
pub fn check_coord_caller<T>(raft: &Raft, request: &Request<T>) -> Result<(), Status> {
    let caller = Caller::of(request);
    let Some(identity) = caller.identity().filter(|identity| identity.role == Role::Coord) else {
        return Ok(());
    };
    let member = identity.id.as_deref().and_then(|id| id.parse::<NodeId>().ok()).filter(|id| {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        membership.nodes().next().is_none() || membership.get_node(id).is_some()
    });
    match member {
        Some(_) => Ok(()),
        None => Err(Status::permission_denied(format!("{identity} is not a member of this cluster"))),
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    postcard::from_bytes(&request.into_inner().data)
        .map_err(|error| Status::invalid_argument(format!("undecodable raft message: {error}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let data = postcard::to_stdvec(value).map_err(|error| Status::internal(error.to_string()))?;
    Ok(Response::new(RaftPayload { data: data.into() }))
}

#[tonic::async_trait]
impl marina_proto::coord::v1::raft_server::Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        // Only from members: the port lets in coord certificates, this checks their id.
        check_coord_caller(&self.raft, &request)?;
        let request: AppendEntriesRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.append_entries(request).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        // Only from members: the port lets in coord certificates, this checks their id.
        check_coord_caller(&self.raft, &request)?;
        let request: VoteRequest<NodeId> = decode(request)?;
        let wait = self.votes_from.saturating_duration_since(std::time::Instant::now());
        if !wait.is_zero() {
            // A plain refusal (not an error, which openraft would log as one): the
            // candidate just counts one vote fewer.
            tracing::debug!(candidate = %request.vote, ?wait, "just started: not voting while a leader's lease may hold");
            let vote = self.raft.metrics().borrow().vote;
            let refusal: Result<VoteResponse<NodeId>, RaftError<NodeId>> = Ok(VoteResponse::new(vote, None, false));
            return encode(&refusal);
        }
        encode(&self.raft.vote(request).await)
    }

    async fn install_snapshot(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        // Only from members: the port lets in coord certificates, this checks their id.
        check_coord_caller(&self.raft, &request)?;
        let request: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        encode(&self.raft.install_snapshot(request).await)
    }
}
