//! Errors of the coord service, and the one place they become gRPC statuses.

use marina_daemon::leader;
use marina_proto::coord::error_kind::{self as kind, METADATA as ERROR_KIND_METADATA};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::command::ApplyError;
use crate::store::Compacted;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CoordError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("not the leader{}", leader.as_ref().map(|l| format!("; the leader is {l}")).unwrap_or_default())]
    NotLeader { leader: Option<String> },
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The write reached Raft but its outcome is unknown (the leader lost its majority or
    /// stepped down before it committed): it may still be applied. Never retried blindly.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// No leader is known (an election is running, or no majority is reachable): nothing
    /// was proposed, so the client may retry, here or elsewhere.
    #[error(
        "no leader: node {node} knows of no elected leader (an election is in progress or a majority of the cluster is unreachable)"
    )]
    NoLeader { node: u64 },
    #[error(transparent)]
    Compacted(#[from] Compacted),
    #[error("too many watches on this node (limits.max_watches = {limit})")]
    TooManyWatches { limit: usize },
    /// One client (one connection) holds as many watch streams on this node as it may.
    #[error(
        "too many watches from client {client} on this node (limits.max_watches_per_client = {limit}); \
         close some before opening more"
    )]
    TooManyClientWatches { client: std::net::SocketAddr, limit: usize },
    /// An answer (a listing, a transaction's results) would exceed
    /// `server.max_encoding_message_bytes`, or a revision sent whole to a watcher that does
    /// not take fragments the watch message limit (`limits.max_watch_message_bytes`, or
    /// `server.max_encoding_message_bytes` if smaller); `key` names the limit met.
    #[error("{what} takes {bytes} bytes, more than one message carries ({key} = {limit}){hint}")]
    ResponseTooLarge { what: String, bytes: usize, key: &'static str, limit: usize, hint: &'static str },
    #[error("session {session_id} has expired or was closed")]
    SessionExpired { session_id: u64 },
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("raft: {0}")]
    Raft(String),
}

impl CoordError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field, reason: reason.into() }
    }

    /// The short machine-readable kind carried in [`ERROR_KIND_METADATA`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => kind::INVALID_ARGUMENT,
            Self::Apply(ApplyError::NodeExists { .. }) => kind::NODE_EXISTS,
            Self::Apply(ApplyError::NoNode { .. }) => kind::NO_NODE,
            Self::Apply(ApplyError::BadVersion { .. }) => kind::BAD_VERSION,
            Self::Apply(ApplyError::NotEmpty { .. }) => kind::NOT_EMPTY,
            Self::Apply(ApplyError::NoSession { .. }) | Self::SessionExpired { .. } => kind::SESSION_EXPIRED,
            Self::NotLeader { .. } => kind::NOT_LEADER,
            Self::NoQuorum(_) => kind::NO_QUORUM,
            Self::Indeterminate(_) => kind::INDETERMINATE,
            Self::NoLeader { .. } => kind::NO_LEADER,
            Self::Compacted(_) => kind::COMPACTED,
            Self::TooManyWatches { .. } | Self::TooManyClientWatches { .. } => kind::TOO_MANY_WATCHES,
            Self::ResponseTooLarge { .. } => kind::RESPONSE_TOO_LARGE,
            Self::Membership(_) => kind::MEMBERSHIP,
            Self::ShuttingDown => kind::SHUTTING_DOWN,
            Self::Raft(_) => kind::RAFT,
        }
    }
}

impl From<CoordError> for Status {
    fn from(error: CoordError) -> Self {
        let message = error.to_string();
        let mut status = match &error {
            CoordError::NotLeader { leader: hint } => leader::not_leader(message, hint.as_deref()),
            // Nothing was proposed: safe to retry on another node.
            CoordError::ShuttingDown | CoordError::NoLeader { .. } => leader::not_leader(message, None),
            CoordError::InvalidArgument { .. } => Status::invalid_argument(message),
            CoordError::Apply(ApplyError::NodeExists { .. }) => Status::already_exists(message),
            CoordError::Apply(ApplyError::NoNode { .. }) => Status::not_found(message),
            CoordError::Apply(ApplyError::BadVersion { .. } | ApplyError::NotEmpty { .. }) => {
                Status::failed_precondition(message)
            }
            CoordError::Apply(ApplyError::NoSession { .. }) | CoordError::SessionExpired { .. } => {
                Status::failed_precondition(message)
            }
            CoordError::NoQuorum(_) | CoordError::Indeterminate(_) => Status::unavailable(message),
            CoordError::Compacted(_) => Status::out_of_range(message),
            CoordError::TooManyWatches { .. }
            | CoordError::TooManyClientWatches { .. }
            | CoordError::ResponseTooLarge { .. } => Status::resource_exhausted(message),
            CoordError::Membership(_) => Status::failed_precondition(message),
            CoordError::Raft(_) => Status::new(Code::Internal, message),
        };
        status.metadata_mut().insert(ERROR_KIND_METADATA, MetadataValue::from_static(error.kind()));
        status
    }
}
