//! Typed errors, mapped back from the statuses the coord service returns.

use marina_proto::coord::error_kind::{self as kind, METADATA as ERROR_KIND_METADATA};
use tonic::{Code, Status};

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
    /// The write was sent but its outcome is unknown (the connection broke, or the leader
    /// lost its majority before committing it): it may or may not have been applied.
    #[error("coord write outcome unknown (it may have been applied): {0}")]
    Indeterminate(String),
    /// A fenced write found the leadership it was made under gone.
    #[error("deposed: the leadership (member {member}, epoch {epoch}) no longer holds")]
    Deposed { member: String, epoch: u64 },
    /// Any other answer. RESOURCE_EXHAUSTED is a limit of the node, named in the message:
    /// too many watches (`limits.max_watches`, `limits.max_watches_per_client`), or an answer
    /// larger than one message (`server.max_encoding_message_bytes`).
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
            kind::NODE_EXISTS => Error::NodeExists(message),
            kind::NO_NODE => Error::NoNode(message),
            kind::BAD_VERSION => Error::BadVersion(message),
            kind::NOT_EMPTY => Error::NotEmpty(message),
            kind::SESSION_EXPIRED => Error::SessionExpired(message),
            kind::COMPACTED => Error::Compacted(message),
            kind::INVALID_ARGUMENT => Error::InvalidArgument(message),
            kind::NO_QUORUM => Error::NoQuorum(message),
            kind::INDETERMINATE => Error::Indeterminate(message),
            kind::NOT_LEADER | kind::SHUTTING_DOWN => Error::Unavailable(message),
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
    // A connection that could not be made: the request was never written to a socket. Only
    // the connector's own wording counts ("tcp connect error", "dns error", as the test
    // below pins): a connection reset after sending must stay a possible delivery.
    let message = status.message();
    status.code() == Code::Unavailable
        && status.metadata().get(ERROR_KIND_METADATA).is_none()
        && ["tcp connect error", "dns error", "error trying to connect", "Connection refused"]
            .iter()
            .any(|wording| message.contains(wording))
}

/// Whether a status is a transport failure (as opposed to an answer from a node).
pub(crate) fn is_transport(status: &Status) -> bool {
    status.metadata().get(ERROR_KIND_METADATA).is_none()
        && matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded)
}

#[cfg(test)]
mod tests {
    use marina_proto::coord::v1 as pb;

    use super::*;
    use crate::client::{channel, grpc};

    /// A refused connection must read as "never sent" (so a write fails over to another
    /// node), which rests on the transport's wording: pin it.
    #[tokio::test]
    async fn a_refused_connection_is_never_sent() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let status = grpc(channel(&closed.to_string(), None))
            .set(pb::SetRequest { path: "/x".into(), ..Default::default() })
            .await
            .expect_err("nothing listens there");
        assert!(never_sent(&status), "{status:?}");
        assert!(is_transport(&status));
    }

    /// An answer from a node is never mistaken for a transport failure.
    #[test]
    fn a_node_answer_is_not_a_transport_failure() {
        let mut status = Status::unavailable("no quorum: could not connect to a majority");
        status.metadata_mut().insert(ERROR_KIND_METADATA, kind::NO_QUORUM.parse().unwrap());
        assert!(!never_sent(&status));
        assert!(!is_transport(&status));
        // A connection that broke after the request went out may have delivered it.
        let reset = Status::unavailable("error reading a body from connection: connection reset");
        assert!(!never_sent(&reset) && is_transport(&reset));
    }
}
