//! How a node that is not the leader points a client at the one that is: gRPC
//! `UNAVAILABLE` with the leader's address in metadata (coord, masters, gateways alike).

use tonic::Status;
use tonic::metadata::MetadataValue;

/// Metadata key carrying the leader's address (`host:port`).
pub const LEADER_METADATA: &str = "x-marina-leader";
/// Metadata key set when retrying the request elsewhere is safe: the node did not act on it.
pub const RETRYABLE_METADATA: &str = "x-marina-retryable";

/// `UNAVAILABLE`, marked retryable, with the leader hint when one is known.
pub fn not_leader(message: impl Into<String>, leader: Option<&str>) -> Status {
    let mut status = Status::unavailable(message);
    status.metadata_mut().insert(RETRYABLE_METADATA, MetadataValue::from_static("1"));
    if let Some(address) = leader
        && let Ok(value) = MetadataValue::try_from(address)
    {
        status.metadata_mut().insert(LEADER_METADATA, value);
    }
    status
}

/// The leader hint carried by a status, if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Whether the server said the request was not acted on and may be sent elsewhere.
pub fn is_retryable(status: &Status) -> bool {
    status.metadata().get(RETRYABLE_METADATA).is_some()
}

/// What a leader-elected service (master, gateway) publishes about itself in its election
/// member node, so that others can find and address it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// The instance's id (stable across its restarts).
    pub id: String,
    /// Where its gRPC + HTTP port is reached, `host:port`.
    pub address: String,
    pub version: String,
}

impl MemberInfo {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("member info serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}
