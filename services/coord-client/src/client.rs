//! The client: one lazily connected channel per endpoint, a preferred endpoint that follows
//! the leader hints nodes return, retries where they are safe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use marina_daemon::leader::LEADER_METADATA;
use marina_daemon::link::{Link, Liveness};
use marina_daemon::tls::{Role, Tls};
use marina_proto::coord::error_kind;
use marina_proto::coord::v1 as pb;
use marina_proto::coord::v1::cluster_client::ClusterClient;
use marina_proto::coord::v1::coord_client::CoordClient as CoordGrpc;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::error::{Error, is_transport, never_sent};

/// One attempt of an RPC for [`CoordClient::call`]: a fresh client on the given channel,
/// a clone of the request per attempt.
macro_rules! rpc {
    ($client:path, $method:ident, $request:expr) => {{
        let request = $request;
        move |channel: Channel| {
            let request = request.clone();
            async move { $client(channel).$method(request).await }
        }
    }};
}
use crate::url::CoordUrl;
pub(crate) use rpc;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Longest wait for one attempt.
    pub request_timeout: Duration,
    /// How long to keep retrying (other endpoints, leader elections) before giving up.
    pub retry_for: Duration,
    /// Mutual TLS with the quorum (its nodes must present coord certificates); `None`:
    /// plaintext.
    pub tls: Option<Arc<Tls>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self { request_timeout: Duration::from_secs(5), retry_for: Duration::from_secs(10), tls: None }
    }
}

/// A node of the tree, with its path relative to the client's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub path: String,
    pub data: Bytes,
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// The owning session of an ephemeral node, 0 for a persistent one.
    pub ephemeral_owner: u64,
}

/// The children of a path and the revision they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub children: Vec<String>,
    pub revision: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Owning session (ephemeral node); `None` for a persistent node.
    pub session: Option<u64>,
    /// Append a unique, increasing 10-digit counter to the path.
    pub sequential: bool,
}

/// A transaction: compares on the current state, then all-or-nothing operations.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    compares: Vec<pb::Compare>,
    success: Vec<pb::Op>,
    failure: Vec<pb::Op>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Created(Node),
    Set(Node),
    Deleted(u64),
    Got(Option<Node>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub revision: u64,
    pub results: Vec<OpResult>,
}

fn compare(path: &str, equal: bool, target: pb::compare::Target) -> pb::Compare {
    let result = if equal { pb::compare::Result::Equal } else { pb::compare::Result::NotEqual };
    pb::Compare { path: path.to_owned(), result: result as i32, target: Some(target) }
}

fn create_op(path: &str, data: Bytes, options: CreateOptions) -> pb::Op {
    pb::Op {
        op: Some(pb::op::Op::Create(pb::CreateRequest {
            path: path.to_owned(),
            data,
            session_id: options.session.unwrap_or(0),
            sequential: options.sequential,
        })),
    }
}

fn set_op(path: &str, data: Bytes, expected_version: Option<u64>, upsert: bool) -> pb::Op {
    pb::Op { op: Some(pb::op::Op::Set(pb::SetRequest { path: path.to_owned(), data, expected_version, upsert })) }
}

fn delete_op(path: &str, expected_version: Option<u64>, recursive: bool) -> pb::Op {
    pb::Op { op: Some(pb::op::Op::Delete(pb::DeleteRequest { path: path.to_owned(), expected_version, recursive })) }
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when_exists(mut self, path: &str, exists: bool) -> Self {
        self.compares.push(compare(path, true, pb::compare::Target::Exists(exists)));
        self
    }

    pub fn when_version(mut self, path: &str, version: u64) -> Self {
        self.compares.push(compare(path, true, pb::compare::Target::Version(version)));
        self
    }

    pub fn when_create_revision(mut self, path: &str, revision: u64) -> Self {
        self.compares.push(compare(path, true, pb::compare::Target::CreateRevision(revision)));
        self
    }

    pub fn when_mod_revision(mut self, path: &str, revision: u64) -> Self {
        self.compares.push(compare(path, true, pb::compare::Target::ModRevision(revision)));
        self
    }

    pub fn when_value(mut self, path: &str, value: impl Into<Bytes>) -> Self {
        self.compares.push(compare(path, true, pb::compare::Target::Value(value.into())));
        self
    }

    pub fn then_create(mut self, path: &str, data: impl Into<Bytes>, options: CreateOptions) -> Self {
        self.success.push(create_op(path, data.into(), options));
        self
    }

    pub fn then_set(mut self, path: &str, data: impl Into<Bytes>, expected_version: Option<u64>) -> Self {
        self.success.push(set_op(path, data.into(), expected_version, false));
        self
    }

    /// Sets the node, creating it if missing.
    pub fn then_put(mut self, path: &str, data: impl Into<Bytes>) -> Self {
        self.success.push(set_op(path, data.into(), None, true));
        self
    }

    pub fn then_delete(mut self, path: &str, expected_version: Option<u64>, recursive: bool) -> Self {
        self.success.push(delete_op(path, expected_version, recursive));
        self
    }

    pub fn then_get(mut self, path: &str) -> Self {
        self.success.push(pb::Op { op: Some(pb::op::Op::Get(pb::GetRequest { path: path.to_owned(), stale: false })) });
        self
    }

    pub fn otherwise_get(mut self, path: &str) -> Self {
        self.failure.push(pb::Op { op: Some(pb::op::Op::Get(pb::GetRequest { path: path.to_owned(), stale: false })) });
        self
    }

    /// Adds every operation of `other` (its compares and branches) to this one.
    pub fn and(mut self, other: Txn) -> Self {
        self.compares.extend(other.compares);
        self.success.extend(other.success);
        self.failure.extend(other.failure);
        self
    }
}

struct EndpointSlot {
    address: String,
    channel: Channel,
}

struct Inner {
    root: String,
    endpoints: Mutex<Vec<EndpointSlot>>,
    /// Index of the endpoint requests go to first (the last known leader).
    preferred: AtomicUsize,
    options: ClientOptions,
}

/// A handle to the quorum; cheap to clone, every clone shares connections.
#[derive(Clone)]
pub struct CoordClient {
    inner: Arc<Inner>,
}

pub(crate) fn channel(address: &str, tls: Option<&Arc<Tls>>) -> Channel {
    Link::new(address, Liveness::TO_COORD, tls, &[Role::Coord])
        .expect("endpoints are validated host:port")
        .connect_lazy()
}

impl CoordClient {
    /// No I/O happens here: connections open on first use.
    pub fn new(url: &CoordUrl) -> Self {
        Self::with_options(url, ClientOptions::default())
    }

    /// A client with the default options, over mutual TLS with `tls`.
    pub fn with_tls(url: &CoordUrl, tls: Option<Arc<Tls>>) -> Self {
        Self::with_options(url, ClientOptions { tls, ..ClientOptions::default() })
    }

    pub fn with_options(url: &CoordUrl, options: ClientOptions) -> Self {
        let endpoints = url
            .endpoints
            .iter()
            .map(|address| EndpointSlot { address: address.clone(), channel: channel(address, options.tls.as_ref()) })
            .collect();
        let root = if url.root == "/" { String::new() } else { url.root.clone() };
        Self {
            inner: Arc::new(Inner { root, endpoints: Mutex::new(endpoints), preferred: AtomicUsize::new(0), options }),
        }
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The full path of `path` under the root.
    pub(crate) fn full(&self, path: &str) -> String {
        match (self.inner.root.as_str(), path) {
            // Not absolute: sent as is, for the node to reject with a clear reason.
            (_, path) if !path.starts_with('/') => path.to_owned(),
            ("", path) => path.to_owned(),
            (root, "/") => root.to_owned(),
            (root, path) => format!("{root}{path}"),
        }
    }

    /// `full` relative to the root.
    pub(crate) fn relative(&self, full: &str) -> String {
        match full.strip_prefix(self.inner.root.as_str()) {
            Some("") => "/".to_owned(),
            Some(rest) if self.inner.root.is_empty() || rest.starts_with('/') => rest.to_owned(),
            _ => full.to_owned(),
        }
    }

    pub(crate) fn node(&self, node: pb::Node) -> Node {
        Node {
            path: self.relative(&node.path),
            data: node.data,
            version: node.version,
            create_revision: node.create_revision,
            mod_revision: node.mod_revision,
            ephemeral_owner: node.ephemeral_owner,
        }
    }

    /// The endpoint to try now.
    pub(crate) fn current(&self) -> (usize, String, Channel) {
        let endpoints = self.inner.endpoints.lock().expect("endpoints lock");
        let index = self.inner.preferred.load(Ordering::Relaxed) % endpoints.len();
        (index, endpoints[index].address.clone(), endpoints[index].channel.clone())
    }

    /// Moves on from `failed` to the next endpoint (unless someone already did).
    pub(crate) fn rotate(&self, failed: usize) {
        let count = self.inner.endpoints.lock().expect("endpoints lock").len();
        let _ =
            self.inner.preferred.compare_exchange(failed, (failed + 1) % count, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Prefers the endpoint a node named as leader, adding it if it is not listed.
    pub(crate) fn prefer(&self, address: &str) {
        let mut endpoints = self.inner.endpoints.lock().expect("endpoints lock");
        let index = match endpoints.iter().position(|slot| slot.address == address) {
            Some(index) => index,
            None => {
                endpoints.push(EndpointSlot {
                    address: address.to_owned(),
                    channel: channel(address, self.inner.options.tls.as_ref()),
                });
                endpoints.len() - 1
            }
        };
        self.inner.preferred.store(index, Ordering::Relaxed);
    }

    /// Where requests go first: the last node known to lead (or the next to try).
    pub fn preferred_endpoint(&self) -> String {
        self.current().1
    }

    /// Every endpoint's address (configured and learned).
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.endpoints.lock().expect("endpoints lock").iter().map(|slot| slot.address.clone()).collect()
    }

    /// Runs `op` against the preferred endpoint, failing over and following leader hints.
    /// Writes are retried only when the node said it did not act, or the connection was
    /// never made; otherwise a broken connection is [`Error::Indeterminate`].
    pub(crate) async fn call<T, F>(&self, write: bool, op: impl Fn(Channel) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<Response<T>, Status>> + Send,
    {
        let options = &self.inner.options;
        // Saturating: `retry_for` is the caller's, `Duration::MAX` meaning "for ever".
        let now = Instant::now();
        let deadline = now.checked_add(options.retry_for).unwrap_or_else(|| now + Duration::from_secs(1 << 30));
        let mut backoff = Duration::from_millis(10);
        // A node saying "no leader" explains more than the connection errors of dead ones.
        let mut saw_no_leader = None;
        loop {
            let (index, address, channel) = self.current();
            let last_error = match tokio::time::timeout(options.request_timeout, op(channel)).await {
                Ok(Ok(response)) => {
                    // A follower relayed this to the leader and says where it is: go there
                    // directly from now on.
                    if let Some(leader) = response.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok())
                        && leader != address
                    {
                        self.prefer(leader);
                    }
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => {
                    let hinted = marina_daemon::leader::leader_hint(&status);
                    let retry = never_sent(&status) || (!write && is_transport(&status));
                    if !retry {
                        return Err(if write && is_transport(&status) {
                            Error::Indeterminate(format!("{address}: {}", status.message()))
                        } else {
                            Error::from(status)
                        });
                    }
                    if status.metadata().get(error_kind::METADATA).is_some_and(|kind| kind == error_kind::NO_LEADER) {
                        saw_no_leader = Some(status.message().to_owned());
                    }
                    match hinted {
                        Some(leader) if leader != address => {
                            self.prefer(&leader);
                            continue;
                        }
                        _ => self.rotate(index),
                    }
                    status
                }
                Err(_elapsed) if write => {
                    return Err(Error::Indeterminate(format!(
                        "{address}: no answer within {:?}",
                        options.request_timeout
                    )));
                }
                Err(_elapsed) => {
                    self.rotate(index);
                    Status::deadline_exceeded(format!("no answer within {:?}", options.request_timeout))
                }
            };
            if Instant::now() + backoff >= deadline {
                return Err(if let Some(message) = saw_no_leader {
                    Error::NoQuorum(format!(
                        "no coord leader within {:?} ({message}): fewer than a majority of the quorum is reachable",
                        options.retry_for,
                    ))
                } else {
                    Error::Unavailable(format!("{address}: {}", last_error.message()))
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(250));
        }
    }

    pub async fn get(&self, path: &str) -> Result<Option<Node>, Error> {
        Ok(self.get_at(path, false).await?.0)
    }

    /// A read from whichever node answers, possibly behind the leader; works without a quorum.
    pub async fn get_stale(&self, path: &str) -> Result<Option<Node>, Error> {
        Ok(self.get_at(path, true).await?.0)
    }

    /// The node and the revision the read was served at.
    pub async fn get_at(&self, path: &str, stale: bool) -> Result<(Option<Node>, u64), Error> {
        let full = self.full(path);
        let response = self.call(false, rpc!(grpc, get, pb::GetRequest { path: full, stale })).await?;
        let revision = response.header.map_or(0, |header| header.revision);
        Ok((response.node.map(|node| self.node(node)), revision))
    }

    pub async fn list(&self, path: &str) -> Result<Listing, Error> {
        self.list_at(path, false).await
    }

    pub async fn list_at(&self, path: &str, stale: bool) -> Result<Listing, Error> {
        let full = self.full(path);
        let response = self.call(false, rpc!(grpc, list, pb::ListRequest { path: full, stale })).await?;
        Ok(Listing { children: response.children, revision: response.header.map_or(0, |header| header.revision) })
    }

    pub async fn create(&self, path: &str, data: impl Into<Bytes>, options: CreateOptions) -> Result<Node, Error> {
        let request = pb::CreateRequest {
            path: self.full(path),
            data: data.into(),
            session_id: options.session.unwrap_or(0),
            sequential: options.sequential,
        };
        let response = self.call(true, rpc!(grpc, create, request)).await?;
        response.node.map(|node| self.node(node)).ok_or_else(|| missing("create"))
    }

    /// Sets an existing node (only at `expected_version`, when given).
    pub async fn set(&self, path: &str, data: impl Into<Bytes>, expected_version: Option<u64>) -> Result<Node, Error> {
        let request = pb::SetRequest { path: self.full(path), data: data.into(), expected_version, upsert: false };
        let response = self.call(true, rpc!(grpc, set, request)).await?;
        response.node.map(|node| self.node(node)).ok_or_else(|| missing("set"))
    }

    /// Sets a node, creating it if missing.
    pub async fn put(&self, path: &str, data: impl Into<Bytes>) -> Result<Node, Error> {
        let request = pb::SetRequest { path: self.full(path), data: data.into(), expected_version: None, upsert: true };
        let response = self.call(true, rpc!(grpc, set, request)).await?;
        response.node.map(|node| self.node(node)).ok_or_else(|| missing("put"))
    }

    /// Deletes a node without children (only at `expected_version`, when given). Deleting
    /// `/` (this client's root) is refused with [`Error::InvalidArgument`], here, in
    /// [`CoordClient::delete_recursive`] and in transactions.
    pub async fn delete(&self, path: &str, expected_version: Option<u64>) -> Result<u64, Error> {
        self.refuse_root_delete(path)?;
        let request = pb::DeleteRequest { path: self.full(path), expected_version, recursive: false };
        Ok(self.call(true, rpc!(grpc, delete, request)).await?.deleted)
    }

    /// Deletes a node and everything under it; 0 if nothing was there. The root (`/`, this
    /// client's root) is refused: see [`CoordClient::delete`].
    pub async fn delete_recursive(&self, path: &str) -> Result<u64, Error> {
        self.refuse_root_delete(path)?;
        let request = pb::DeleteRequest { path: self.full(path), expected_version: None, recursive: true };
        Ok(self.call(true, rpc!(grpc, delete, request)).await?.deleted)
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, Error> {
        for op in txn.success.iter().chain(&txn.failure) {
            if let Some(pb::op::Op::Delete(delete)) = &op.op {
                self.refuse_root_delete(&delete.path)?;
            }
        }
        let root_op = |op: pb::Op| -> pb::Op {
            use pb::op::Op as O;
            let op = match op.op {
                Some(O::Create(mut r)) => Some(O::Create({
                    r.path = self.full(&r.path);
                    r
                })),
                Some(O::Set(mut r)) => Some(O::Set({
                    r.path = self.full(&r.path);
                    r
                })),
                Some(O::Delete(mut r)) => Some(O::Delete({
                    r.path = self.full(&r.path);
                    r
                })),
                Some(O::Get(mut r)) => Some(O::Get({
                    r.path = self.full(&r.path);
                    r
                })),
                None => None,
            };
            pb::Op { op }
        };
        let request = pb::TxnRequest {
            compares: txn
                .compares
                .into_iter()
                .map(|mut compare| {
                    compare.path = self.full(&compare.path);
                    compare
                })
                .collect(),
            success: txn.success.into_iter().map(root_op).collect(),
            failure: txn.failure.into_iter().map(root_op).collect(),
        };
        let response = self.call(true, rpc!(grpc, txn, request)).await?;
        let results = response
            .results
            .into_iter()
            .filter_map(|result| {
                use pb::op_result::Result as R;
                Some(match result.result? {
                    R::Create(created) => OpResult::Created(self.node(created.node?)),
                    R::Set(set) => OpResult::Set(self.node(set.node?)),
                    R::Delete(deleted) => OpResult::Deleted(deleted.deleted),
                    R::Get(got) => OpResult::Got(got.node.map(|node| self.node(node))),
                })
            })
            .collect();
        Ok(TxnResult {
            succeeded: response.succeeded,
            revision: response.header.map_or(0, |header| header.revision),
            results,
        })
    }

    /// Deleting `/` is refused before anything is sent. The quorum refuses to delete its own
    /// root; a client's `/` is its URL's root (`coord://.../marina`), which holds every
    /// service's state: `rm -r /` through it would wipe the cluster in one revision. A
    /// client rooted higher up can still delete such a subtree by its name.
    fn refuse_root_delete(&self, path: &str) -> Result<(), Error> {
        if path != "/" {
            return Ok(());
        }
        let root = match self.inner.root.as_str() {
            "" => String::new(),
            root => format!(" (this client's root, {root:?})"),
        };
        Err(Error::InvalidArgument(format!(
            "invalid path: \"/\"{root}: deleting the root is refused (recursively it would delete every node under it)"
        )))
    }

    /// The status of one endpoint, asked directly (no forwarding).
    pub async fn node_status(&self, address: &str) -> Result<pb::StatusResponse, Error> {
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(self.inner.options.request_timeout);
        let response = ClusterClient::new(channel(address, self.inner.options.tls.as_ref())).status(request).await?;
        Ok(response.into_inner())
    }

    /// A cluster-administration client on the preferred endpoint (membership changes are
    /// forwarded to the leader by the node).
    pub async fn add_learner(&self, id: u64, address: &str) -> Result<Vec<pb::Member>, Error> {
        let request = pb::AddLearnerRequest { id, address: address.to_owned() };
        Ok(self.call(true, rpc!(ClusterClient::new, add_learner, request)).await?.members)
    }

    pub async fn promote_learner(&self, id: u64) -> Result<Vec<pb::Member>, Error> {
        Ok(self.call(true, rpc!(ClusterClient::new, promote_learner, pb::PromoteLearnerRequest { id })).await?.members)
    }

    pub async fn remove_member(&self, id: u64) -> Result<Vec<pb::Member>, Error> {
        Ok(self.call(true, rpc!(ClusterClient::new, remove_member, pb::RemoveMemberRequest { id })).await?.members)
    }
}

/// The largest message this client decodes or encodes: the most a coord node may be
/// configured to send (`server.max_encoding_message_bytes`, at most and by default 64 MiB: a
/// listing has no paging) or to accept (`server.max_decoding_message_bytes`, at most 64 MiB).
/// Set explicitly because tonic's default decoding limit (4 MiB) would make a large listing
/// unreadable. Watch messages stay within the node's `limits.max_watch_message_bytes`
/// however large a revision is: it is split.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The data-API client on a channel, accepting every message a node may send; calls carry
/// the caller's trace context.
pub(crate) fn grpc(channel: Channel) -> CoordGrpc<marina_daemon::trace::TracedChannel> {
    CoordGrpc::new(marina_daemon::trace::traced(channel))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Runs an idempotent write again when its outcome is unknown (the connection broke after
/// sending it) or no node could take it: a few attempts, 100 ms apart. Only for writes that
/// may safely apply twice (puts, recursive deletes, fenced versions of these).
pub async fn retry_idempotent<T, F, Fut>(mut write: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut attempt = 0;
    loop {
        match write().await {
            Err(Error::Indeterminate(_) | Error::Unavailable(_)) if attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            outcome => return outcome,
        }
    }
}

fn missing(what: &str) -> Error {
    Error::Other { code: tonic::Code::Internal, message: format!("{what}: the response carried no node") }
}
