//! The gRPC services: `marina.coord.v1.Coord` (data, sessions, watches) and
//! `marina.coord.v1.Cluster` (status, membership). Requests are validated here, before
//! anything is proposed; requests needing the leader are forwarded to it once.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use marina_daemon::leader::LEADER_METADATA;
use marina_daemon::tls::Caller;
use marina_daemon::trace::traced;
use marina_proto::coord::v1 as pb;
use marina_proto::coord::v1::cluster_client::ClusterClient;
use marina_proto::coord::v1::coord_client::CoordClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::command::{
    ApplyError, Command, CommandResult, Compare, CompareTarget, EndReason, NodeView, Op, OpOutcome, SessionSecret, Txn,
    TxnOutcome,
};
use crate::config::{Limits, MAX_MESSAGE_BYTES_CEILING, MAX_TXN_OPS};
use crate::error::CoordError;
use crate::node::{CoordNode, Leader, Route};
use crate::proposer::MAX_ENTRY_PAYLOAD_BYTES;
use crate::sessions::KeepAlive;
use crate::watch;

/// Marks a request forwarded by a follower, so it is never forwarded twice.
const FORWARDED_METADATA: &str = "x-marina-forwarded";

type ServiceResult<T> = Result<Response<T>, Status>;
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn is_forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_METADATA)
}

/// A fresh request carrying `message` to the leader, marked as forwarded.
fn forward<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(FORWARDED_METADATA, MetadataValue::from_static("1"));
    request
}

impl Leader {
    /// The leader's data API. A relayed answer is at most the leader's
    /// `server.max_encoding_message_bytes`, and a relayed request at most this node's
    /// `server.max_decoding_message_bytes`; both are within the ceiling configuration allows.
    fn coord(&self) -> CoordClient<marina_daemon::trace::TracedChannel> {
        CoordClient::new(traced(self.channel.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES_CEILING)
            .max_encoding_message_size(MAX_MESSAGE_BYTES_CEILING)
    }

    fn cluster(&self) -> ClusterClient<tonic::transport::Channel> {
        ClusterClient::new(self.channel.clone())
    }

    /// The leader's answer, with its address for the client to go to directly next time.
    fn relay<T>(&self, answer: ServiceResult<T>) -> ServiceResult<T> {
        answer.map(|mut response| {
            if let Ok(address) = MetadataValue::try_from(self.address.as_str()) {
                response.metadata_mut().insert(LEADER_METADATA, address);
            }
            response
        })
    }
}

/// Checks a path: absolute, no trailing or doubled '/', no `.`/`..` segments, no control
/// characters, at most `max_bytes` long.
pub fn validate_path(field: &'static str, path: &str, max_bytes: usize) -> Result<(), CoordError> {
    let fail = |reason: String| Err(CoordError::invalid(field, format!("{path:?}: {reason}")));
    if path.is_empty() {
        return Err(CoordError::invalid(field, "the path is empty"));
    }
    if !path.starts_with('/') {
        return fail("must start with '/'".into());
    }
    if path.len() > max_bytes {
        return fail(format!("longer than {max_bytes} bytes"));
    }
    if path == "/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return fail("must not end with '/'".into());
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return fail("contains an empty segment ('//')".into()),
            "." | ".." => return fail(format!("contains a {segment:?} segment")),
            _ if segment.chars().any(char::is_control) => return fail("contains a control character".into()),
            _ => {}
        }
    }
    Ok(())
}

/// A path that names a node (not the root).
fn node_path(field: &'static str, path: &str, limits: &Limits) -> Result<(), CoordError> {
    validate_path(field, path, limits.max_path_bytes)?;
    if path == "/" {
        return Err(CoordError::invalid(field, "the root \"/\" is not a node"));
    }
    Ok(())
}

/// Checks a value against the size limit and copies it out of the request: the decoded
/// `Bytes` is a slice of the whole receive buffer, which storing it would keep alive
/// (a 256-byte value pinning kilobytes, per node, for as long as the node exists).
fn request_data(data: &Bytes, limits: &Limits) -> Result<Bytes, CoordError> {
    let limit = limits.max_value_bytes;
    if data.len() > limit {
        return Err(CoordError::invalid("data", format!("{} bytes exceed the limit of {limit}", data.len())));
    }
    Ok(Bytes::copy_from_slice(data))
}

/// One operation of a request, checked (paths, the root, value sizes) and made a command's:
/// everything a request may ask the store to do passes here.
pub fn request_op(op: pb::Op, limits: &Limits) -> Result<Op, CoordError> {
    match op.op {
        Some(pb::op::Op::Create(create)) => {
            node_path("path", &create.path, limits)?;
            let data = request_data(&create.data, limits)?;
            Ok(Op::Create { path: create.path, data, session_id: create.session_id, sequential: create.sequential })
        }
        Some(pb::op::Op::Set(set)) => {
            node_path("path", &set.path, limits)?;
            let data = request_data(&set.data, limits)?;
            Ok(Op::Set { path: set.path, data, expected_version: set.expected_version, upsert: set.upsert })
        }
        Some(pb::op::Op::Delete(delete)) => {
            validate_path("path", &delete.path, limits.max_path_bytes)?;
            // The root is no node (a plain delete finds nothing), and a recursive one
            // would empty the whole tree: every service's state in one revision.
            if delete.path == "/" {
                return Err(CoordError::invalid(
                    "path",
                    "\"/\": deleting the root is refused (recursively it would delete every node)",
                ));
            }
            Ok(Op::Delete { path: delete.path, expected_version: delete.expected_version, recursive: delete.recursive })
        }
        Some(pb::op::Op::Get(get)) => {
            validate_path("path", &get.path, limits.max_path_bytes)?;
            Ok(Op::Get { path: get.path })
        }
        None => Err(CoordError::invalid("op", "an operation is empty")),
    }
}

/// A transaction request, checked (sizes, paths, values, what one log entry holds) and made
/// the command's transaction.
pub fn request_txn(message: &pb::TxnRequest, limits: &Limits) -> Result<Txn, CoordError> {
    if message.success.len().max(message.failure.len()) > MAX_TXN_OPS {
        return Err(CoordError::invalid("success", format!("more than {MAX_TXN_OPS} operations")));
    }
    if message.compares.len() > MAX_TXN_OPS {
        return Err(CoordError::invalid("compares", format!("more than {MAX_TXN_OPS} compares")));
    }
    let mut compares = Vec::with_capacity(message.compares.len());
    for compare in &message.compares {
        node_path("compares.path", &compare.path, limits)?;
        compares.push(compare_from_pb(compare.clone())?);
    }
    let success = message.success.iter().cloned().map(|op| request_op(op, limits)).collect::<Result<Vec<_>, _>>()?;
    let failure = message.failure.iter().cloned().map(|op| request_op(op, limits)).collect::<Result<Vec<_>, _>>()?;
    let txn = Txn { compares, success, failure };
    // One transaction is one log entry, replicated in one message: it must fit.
    if txn.payload_bytes() > MAX_ENTRY_PAYLOAD_BYTES {
        return Err(CoordError::invalid(
            "success",
            format!(
                "the transaction carries {} bytes, more than the {MAX_ENTRY_PAYLOAD_BYTES} one log entry holds",
                txn.payload_bytes()
            ),
        ));
    }
    Ok(txn)
}

/// A keep-alive or close of a session by someone who does not know its secret: only the
/// session's owner keeps it alive or ends it.
fn not_the_owner(session_id: u64) -> Status {
    Status::permission_denied(format!("session {session_id} belongs to another client (its secret does not match)"))
}

/// A session request, checked against the TTL bounds and made the command that opens it
/// with `secret` (what its owner will present).
pub fn request_session(
    message: &pb::CreateSessionRequest,
    limits: &Limits,
    secret: SessionSecret,
) -> Result<Command, CoordError> {
    if !(limits.session_ttl_min_ms..=limits.session_ttl_max_ms).contains(&message.ttl_ms) {
        return Err(CoordError::invalid(
            "ttl_ms",
            format!(
                "{} is outside the allowed range {}..={} ms",
                message.ttl_ms, limits.session_ttl_min_ms, limits.session_ttl_max_ms
            ),
        ));
    }
    if message.disconnect_grace_ms > message.ttl_ms {
        return Err(CoordError::invalid("disconnect_grace_ms", "must not exceed ttl_ms"));
    }
    Ok(Command::OpenSession { ttl_ms: message.ttl_ms, disconnect_grace_ms: message.disconnect_grace_ms, secret })
}

#[derive(Clone)]
pub struct CoordApi {
    node: Arc<CoordNode>,
}

impl CoordApi {
    pub fn new(node: Arc<CoordNode>) -> Self {
        Self { node }
    }

    fn header(&self, revision: u64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader { revision, served_by: self.node.id })
    }

    fn path(&self, field: &'static str, path: &str) -> Result<(), CoordError> {
        validate_path(field, path, self.node.limits.max_path_bytes)
    }

    fn op(&self, op: pb::Op) -> Result<Op, CoordError> {
        request_op(op, &self.node.limits)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, CoordError> {
        match self.node.proposer.propose(Command::Txn(txn)).await? {
            CommandResult::Txn(result) => Ok(result?),
            other => Err(CoordError::Raft(format!("unexpected result {other:?}"))),
        }
    }

    /// `response` if it fits one message (`server.max_encoding_message_bytes`; by default
    /// 64 MiB, what Marina's coord client decodes, since `List` has no paging and must carry
    /// a large directory whole), else an error saying what did not fit: a client could not
    /// decode it, and tonic would only fail it later with less to say. Watches are bounded
    /// apart (`limits.max_watch_message_bytes`): they split a revision instead.
    fn bounded<T: prost::Message>(&self, response: T, what: impl FnOnce() -> String) -> ServiceResult<T> {
        let limit = self.node.server.max_encoding_message_bytes;
        let bytes = response.encoded_len();
        if bytes > limit {
            return Err(CoordError::ResponseTooLarge {
                what: what(),
                bytes,
                key: "server.max_encoding_message_bytes",
                limit,
                hint: "",
            }
            .into());
        }
        Ok(Response::new(response))
    }

    async fn single(&self, op: Op) -> Result<(u64, OpOutcome), CoordError> {
        let outcome = self.txn(Txn { compares: Vec::new(), success: vec![op], failure: Vec::new() }).await?;
        let result = outcome.results.into_iter().next().ok_or_else(|| CoordError::Raft("empty txn result".into()))?;
        Ok((outcome.revision, result))
    }

    /// Linearizable reads wait for the read barrier (or go to the leader); stale ones are
    /// served from this node's state as it is.
    async fn read_route<T>(&self, request: &Request<T>, stale: bool) -> Result<Option<Leader>, CoordError> {
        if stale {
            return Ok(None);
        }
        match self.node.route(is_forwarded(request))? {
            Route::Local => {
                self.node.reads.wait().await?;
                Ok(None)
            }
            Route::Forward(leader) => Ok(Some(leader)),
        }
    }
}

pub fn node_to_pb(view: NodeView) -> pb::Node {
    pb::Node {
        path: view.path,
        data: view.record.data,
        version: view.record.version,
        create_revision: view.record.create_revision,
        mod_revision: view.record.mod_revision,
        ephemeral_owner: view.record.ephemeral_owner,
    }
}

fn compare_from_pb(compare: pb::Compare) -> Result<Compare, CoordError> {
    let equal = compare.result() == pb::compare::Result::Equal;
    let target = match compare.target {
        Some(pb::compare::Target::Exists(exists)) => CompareTarget::Exists(exists),
        Some(pb::compare::Target::Version(version)) => CompareTarget::Version(version),
        Some(pb::compare::Target::CreateRevision(revision)) => CompareTarget::CreateRevision(revision),
        Some(pb::compare::Target::ModRevision(revision)) => CompareTarget::ModRevision(revision),
        Some(pb::compare::Target::Value(value)) => CompareTarget::Value(value),
        None => return Err(CoordError::invalid("compares", format!("compare on {:?} has no target", compare.path))),
    };
    Ok(Compare { path: compare.path, equal, target })
}

impl CoordApi {
    fn outcome_to_pb(&self, revision: u64, outcome: OpOutcome) -> pb::OpResult {
        use pb::op_result::Result as R;
        let result = match outcome {
            OpOutcome::Created(node) => {
                R::Create(pb::CreateResponse { header: self.header(revision), node: Some(node_to_pb(node)) })
            }
            OpOutcome::Set(node) => {
                R::Set(pb::SetResponse { header: self.header(revision), node: Some(node_to_pb(node)) })
            }
            OpOutcome::Deleted(deleted) => R::Delete(pb::DeleteResponse { header: self.header(revision), deleted }),
            OpOutcome::Got(node) => {
                R::Get(pb::GetResponse { header: self.header(revision), node: node.map(node_to_pb) })
            }
        };
        pb::OpResult { result: Some(result) }
    }
}

fn unexpected(outcome: OpOutcome) -> Status {
    Status::internal(format!("unexpected operation outcome {outcome:?}"))
}

#[tonic::async_trait]
impl pb::coord_server::Coord for CoordApi {
    async fn get(&self, request: Request<pb::GetRequest>) -> ServiceResult<pb::GetResponse> {
        self.path("path", &request.get_ref().path)?;
        if let Some(leader) = self.read_route(&request, request.get_ref().stale).await? {
            return leader.relay(leader.coord().get(forward(request.into_inner())).await);
        }
        let response = {
            let replica = self.node.replica.read().expect("replica lock");
            let node = replica.store.get(&request.get_ref().path).map(node_to_pb);
            pb::GetResponse { header: self.header(replica.store.revision()), node }
        };
        self.bounded(response, || format!("node {}", request.get_ref().path))
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> ServiceResult<pb::ListResponse> {
        self.path("path", &request.get_ref().path)?;
        if let Some(leader) = self.read_route(&request, request.get_ref().stale).await? {
            return leader.relay(leader.coord().list(forward(request.into_inner())).await);
        }
        let response = {
            let replica = self.node.replica.read().expect("replica lock");
            let children = replica.store.children(&request.get_ref().path);
            pb::ListResponse { header: self.header(replica.store.revision()), children }
        };
        let count = response.children.len();
        self.bounded(response, || format!("the listing of {} ({count} children)", request.get_ref().path))
    }

    async fn create(&self, request: Request<pb::CreateRequest>) -> ServiceResult<pb::CreateResponse> {
        let op = self.op(pb::Op { op: Some(pb::op::Op::Create(request.get_ref().clone())) })?;
        crate::network::check_coord_caller(&self.node.raft, &request)?;
        crate::access::check_ops(&Caller::of(&request), [&op])?;
        if let Route::Forward(leader) = self.node.route(is_forwarded(&request))? {
            return leader.relay(leader.coord().create(forward(request.into_inner())).await);
        }
        match self.single(op).await? {
            (revision, OpOutcome::Created(node)) => {
                Ok(Response::new(pb::CreateResponse { header: self.header(revision), node: Some(node_to_pb(node)) }))
            }
            (_, other) => Err(unexpected(other)),
        }
    }

    async fn set(&self, request: Request<pb::SetRequest>) -> ServiceResult<pb::SetResponse> {
        let op = self.op(pb::Op { op: Some(pb::op::Op::Set(request.get_ref().clone())) })?;
        crate::network::check_coord_caller(&self.node.raft, &request)?;
        crate::access::check_ops(&Caller::of(&request), [&op])?;
        if let Route::Forward(leader) = self.node.route(is_forwarded(&request))? {
            return leader.relay(leader.coord().set(forward(request.into_inner())).await);
        }
        match self.single(op).await? {
            (revision, OpOutcome::Set(node)) => {
                Ok(Response::new(pb::SetResponse { header: self.header(revision), node: Some(node_to_pb(node)) }))
            }
            (_, other) => Err(unexpected(other)),
        }
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> ServiceResult<pb::DeleteResponse> {
        let op = self.op(pb::Op { op: Some(pb::op::Op::Delete(request.get_ref().clone())) })?;
        crate::network::check_coord_caller(&self.node.raft, &request)?;
        crate::access::check_ops(&Caller::of(&request), [&op])?;
        if let Route::Forward(leader) = self.node.route(is_forwarded(&request))? {
            return leader.relay(leader.coord().delete(forward(request.into_inner())).await);
        }
        match self.single(op).await? {
            (revision, OpOutcome::Deleted(deleted)) => {
                Ok(Response::new(pb::DeleteResponse { header: self.header(revision), deleted }))
            }
            (_, other) => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: Request<pb::TxnRequest>) -> ServiceResult<pb::TxnResponse> {
        let txn = request_txn(request.get_ref(), &self.node.limits)?;
        crate::network::check_coord_caller(&self.node.raft, &request)?;
        crate::access::check_ops(&Caller::of(&request), txn.success.iter().chain(&txn.failure))?;
        if let Route::Forward(leader) = self.node.route(is_forwarded(&request))? {
            return leader.relay(leader.coord().txn(forward(request.into_inner())).await);
        }
        let outcome = self.txn(txn).await?;
        let revision = outcome.revision;
        let results = outcome.results.into_iter().map(|result| self.outcome_to_pb(revision, result)).collect();
        let response = pb::TxnResponse { header: self.header(revision), succeeded: outcome.succeeded, results };
        // The results repeat what the transaction wrote: with `server.max_encoding_message_bytes` validated
        // above the largest request, only reads (many large nodes) make them too large. Its
        // writes (if any) stand, and the error says so.
        self.bounded(response, || format!("the results of the transaction (committed at revision {revision})"))
    }

    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> ServiceResult<pb::CreateSessionResponse> {
        let mut secret = SessionSecret::default();
        getrandom::fill(&mut secret)
            .map_err(|error| Status::unavailable(format!("no randomness for a session secret: {error}")))?;
        let command = request_session(request.get_ref(), &self.node.limits, secret)?;
        if let Route::Forward(leader) = self.node.route(is_forwarded(&request))? {
            return leader.relay(leader.coord().create_session(forward(request.into_inner())).await);
        }
        let (ttl_ms, grace_ms) = (request.get_ref().ttl_ms, request.get_ref().disconnect_grace_ms);
        match self.node.proposer.propose(command).await? {
            CommandResult::Session(Ok(created)) => {
                self.node.sessions.created(created.session_id, ttl_ms, grace_ms);
                let revision = self.node.replica.read().expect("replica lock").store.revision();
                Ok(Response::new(pb::CreateSessionResponse {
                    header: self.header(revision),
                    session_id: created.session_id,
                    ttl_ms: created.ttl_ms,
                    secret: bytes::Bytes::copy_from_slice(&secret),
                }))
            }
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    type KeepAliveStream = BoxStream<pb::KeepAliveResponse>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> ServiceResult<Self::KeepAliveStream> {
        if let Route::Forward(leader) = self.node.route(is_forwarded(&request))? {
            // Relay the stream both ways: when the client goes away, the leader sees this
            // stream end (and applies the disconnect grace).
            let inbound = tokio_stream::StreamExt::map_while(request.into_inner(), |message| message.ok());
            let response = leader.coord().keep_alive(forward(inbound)).await?;
            let shutdown = self.node.shutdown.clone();
            let relayed = response.into_inner().take_until(async move { shutdown.cancelled().await });
            return Ok(Response::new(Box::pin(relayed)));
        }
        let mut inbound = request.into_inner();
        let (replies, stream) = mpsc::channel(16);
        let node = self.node.clone();
        tokio::spawn(async move {
            let mut attached = Vec::new();
            loop {
                let message = tokio::select! {
                    message = inbound.next() => message,
                    () = node.shutdown.cancelled() => None,
                };
                let Some(Ok(message)) = message else { break };
                let session_id = message.session_id;
                let owned =
                    node.replica.read().expect("replica lock").store.session_owned_by(session_id, &message.secret);
                let reply = match node.sessions.keep_alive(session_id) {
                    _ if owned == Some(false) => Err(not_the_owner(session_id)),
                    Ok(KeepAlive::Alive { ttl_ms }) => {
                        if !attached.contains(&session_id) {
                            attached.push(session_id);
                            node.sessions.attach(session_id);
                        }
                        Ok(pb::KeepAliveResponse { session_id, ttl_ms, expired: false })
                    }
                    Ok(KeepAlive::Expired) => Ok(pb::KeepAliveResponse { session_id, ttl_ms: 0, expired: true }),
                    Err(error) => Err(Status::from(error)),
                };
                let failed = reply.is_err();
                if replies.send(reply).await.is_err() || failed {
                    break;
                }
            }
            for session_id in attached {
                node.sessions.detach(session_id);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> ServiceResult<pb::CloseSessionResponse> {
        if let Route::Forward(leader) = self.node.route(is_forwarded(&request))? {
            return leader.relay(leader.coord().close_session(forward(request.into_inner())).await);
        }
        let session_id = request.get_ref().session_id;
        let owned = self
            .node
            .replica
            .read()
            .expect("replica lock")
            .store
            .session_owned_by(session_id, &request.get_ref().secret);
        if owned == Some(false) {
            return Err(not_the_owner(session_id));
        }
        let command = Command::EndSession { session_id, reason: EndReason::Closed };
        match self.node.proposer.propose(command).await? {
            // Closing is idempotent: an already ended session is simply gone.
            CommandResult::SessionEnded(Ok(_) | Err(ApplyError::NoSession { .. })) => {
                let revision = self.node.replica.read().expect("replica lock").store.revision();
                Ok(Response::new(pb::CloseSessionResponse { header: self.header(revision) }))
            }
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> ServiceResult<Self::WatchStream> {
        self.path("path", &request.get_ref().path)?;
        // The client is its connection: see `limits.max_watches_per_client`.
        let client = request.remote_addr();
        let stream = watch::open(&self.node, request.into_inner(), client)?;
        Ok(Response::new(Box::pin(stream)))
    }
}

#[derive(Clone)]
pub struct ClusterApi {
    node: Arc<CoordNode>,
}

impl ClusterApi {
    pub fn new(node: Arc<CoordNode>) -> Self {
        Self { node }
    }

    fn members(&self) -> pb::MembershipResponse {
        pb::MembershipResponse { members: self.node.status().members }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterApi {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> ServiceResult<pb::StatusResponse> {
        Ok(Response::new(self.node.status()))
    }

    async fn add_learner(&self, request: Request<pb::AddLearnerRequest>) -> ServiceResult<pb::MembershipResponse> {
        crate::network::check_coord_caller(&self.node.raft, &request)?;
        let message = request.get_ref();
        if message.id == 0 {
            return Err(CoordError::invalid("id", "must be greater than 0").into());
        }
        crate::config::parse_peers(&format!("{}={}", message.id, message.address))
            .map_err(|error| CoordError::invalid("address", error.to_string()))?;
        if let Route::Forward(leader) = self.node.route(is_forwarded(&request))? {
            return leader.relay(leader.cluster().add_learner(forward(request.into_inner())).await);
        }
        let message = request.into_inner();
        self.node.add_learner(message.id, message.address).await?;
        Ok(Response::new(self.members()))
    }

    async fn promote_learner(
        &self,
        request: Request<pb::PromoteLearnerRequest>,
    ) -> ServiceResult<pb::MembershipResponse> {
        crate::network::check_coord_caller(&self.node.raft, &request)?;
        if let Route::Forward(leader) = self.node.route(is_forwarded(&request))? {
            return leader.relay(leader.cluster().promote_learner(forward(request.into_inner())).await);
        }
        self.node.promote(request.get_ref().id).await?;
        Ok(Response::new(self.members()))
    }

    async fn remove_member(&self, request: Request<pb::RemoveMemberRequest>) -> ServiceResult<pb::MembershipResponse> {
        crate::network::check_coord_caller(&self.node.raft, &request)?;
        if let Route::Forward(leader) = self.node.route(is_forwarded(&request))? {
            return leader.relay(leader.cluster().remove_member(forward(request.into_inner())).await);
        }
        self.node.remove(request.get_ref().id).await?;
        Ok(Response::new(self.members()))
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_TXN_OPS, pb, request_txn, validate_path};
    use crate::config::Limits;

    /// A transaction's size is bounded before anything of it is read: its compares as well
    /// as its operations (each compare is evaluated against the store under its lock).
    #[test]
    fn a_transaction_with_too_many_compares_or_operations_is_refused() {
        let compare =
            pb::Compare { path: "/a".into(), target: Some(pb::compare::Target::Exists(true)), ..Default::default() };
        let get = pb::Op { op: Some(pb::op::Op::Get(pb::GetRequest { path: "/a".into(), stale: false })) };
        let txn = |compares: usize, ops: usize| pb::TxnRequest {
            compares: vec![compare.clone(); compares],
            success: vec![get.clone(); ops],
            ..Default::default()
        };
        let limits = Limits::default();
        request_txn(&txn(MAX_TXN_OPS, MAX_TXN_OPS), &limits).expect("at the limits");
        let refused = request_txn(&txn(MAX_TXN_OPS + 1, 1), &limits).unwrap_err().to_string();
        assert!(refused.contains("compares") && refused.contains(&MAX_TXN_OPS.to_string()), "{refused}");
        let refused = request_txn(&txn(1, MAX_TXN_OPS + 1), &limits).unwrap_err().to_string();
        assert!(refused.contains("operations"), "{refused}");
    }

    #[test]
    fn paths_are_validated_with_reasons() {
        for good in ["/", "/a", "/a/b-c/d_e.f", "/ünï/codé"] {
            validate_path("path", good, 64).unwrap();
        }
        for (bad, max_bytes, reason) in [
            ("", 64, "empty"),
            ("a/b", 64, "start with '/'"),
            ("/a/", 64, "end with '/'"),
            ("/a//b", 64, "empty segment"),
            ("/a/../b", 64, "\"..\""),
            ("/a/\nb", 64, "control"),
            ("/very/long/path", 10, "longer than 10"),
        ] {
            let message = validate_path("path", bad, max_bytes).unwrap_err().to_string();
            assert!(message.contains(reason), "{bad:?}: {message}");
        }
    }
}
