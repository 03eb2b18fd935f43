//! Typed errors, mapped back from the statuses the coord service returns.

use tonic::{Code, Status};

/// Metadata key the coord service uses to name the error kind.
const ERROR_KIND_METADATA: &str = "x-marina-error";

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NodeExists(String),
    #[error("{0}")]
    NoNode(String),
    #[error("{0}")]
    BadVersion(String),
    #[error("{0}")]
    NotEmpty(String),
    #[error("{0}")]
    SessionExpired(String),
    #[error("{0}")]
    Compacted(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The cluster cannot commit: fewer than a majority of nodes are reachable.
    #[error("{0}")]
    NoQuorum(String),
    /// No endpoint could serve the request within the retry window.
    #[error("coord unavailable: {0}")]
    Unavailable(String),
    /// The connection broke after a write was sent: it may or may not have been applied.
    #[error("coord connection lost during a write (it may have been applied): {0}")]
    Indeterminate(String),
    /// A fenced write found the leadership it was made under gone.
    #[error("deposed: the leadership (member {member}, epoch {epoch}) no longer holds")]
    Deposed { member: String, epoch: u64 },
    #[error("coord: {code:?}: {message}")]
    Other { code: Code, message: String },
}

impl Error {
    /// Whether the request certainly did not take effect and may be retried as is.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        let kind = status.metadata().get(ERROR_KIND_METADATA).and_then(|v| v.to_str().ok()).unwrap_or("");
        match kind {
            "node_exists" => Error::NodeExists(message),
            "no_node" => Error::NoNode(message),
            "bad_version" => Error::BadVersion(message),
            "not_empty" => Error::NotEmpty(message),
            "session_expired" => Error::SessionExpired(message),
            "compacted" => Error::Compacted(message),
            "invalid_argument" => Error::InvalidArgument(message),
            "no_quorum" => Error::NoQuorum(message),
            "not_leader" | "shutting_down" => Error::Unavailable(message),
            _ if status.code() == Code::InvalidArgument => Error::InvalidArgument(message),
            _ => Error::Other { code: status.code(), message },
        }
    }
}

/// Whether a status proves the request never reached a node that could act on it.
pub(crate) fn never_sent(status: &Status) -> bool {
    if marina_daemon::leader::is_retryable(status) {
        return true;
    }
    // A refused or failed connection: the request was never written to a socket.
    status.code() == Code::Unavailable
        && status.metadata().get(ERROR_KIND_METADATA).is_none()
        && (status.message().contains("connect") || status.message().contains("Connection refused"))
}

/// Whether a status is a transport failure (as opposed to an answer from a node).
pub(crate) fn is_transport(status: &Status) -> bool {
    status.metadata().get(ERROR_KIND_METADATA).is_none()
        && matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded)
}
