//! What the Raft log carries, and what applying it yields. These types are persisted (log
//! and snapshots, encoded with postcard): add variants at the end, never reorder.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One replicated command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Command {
    /// Compares, then all-or-nothing operations. Single creates, sets and deletes are
    /// one-operation transactions.
    Txn(Txn),
    CreateSession {
        ttl_ms: u64,
        disconnect_grace_ms: u64,
    },
    /// Ends a session and deletes its ephemeral nodes in one revision.
    EndSession {
        session_id: u64,
        reason: EndReason,
    },
    /// Several independent commands proposed together (the proposer batches concurrent
    /// requests into one log entry); each gets its own result and revision.
    Batch(Vec<Command>),
    /// A session whose keep-alives and close must present `secret` (what `CreateSession`
    /// became; that one stays for logs written before).
    OpenSession {
        ttl_ms: u64,
        disconnect_grace_ms: u64,
        secret: SessionSecret,
    },
}

/// What only a session's owner knows.
pub type SessionSecret = [u8; 16];

/// [`Command`] as it is decoded: the same variants in the same order, so the encoding is the
/// same, but a batch holds only commands that are not batches. The proposer never nests
/// batches, and decoding nested ones recurses once per level: a Raft message of batches
/// nested thousands deep (16 KB) overflowed the stack (found by fuzzing).
#[derive(Deserialize)]
#[serde(rename = "Command")]
enum DecodedCommand {
    Txn(Txn),
    CreateSession { ttl_ms: u64, disconnect_grace_ms: u64 },
    EndSession { session_id: u64, reason: EndReason },
    Batch(Vec<UnbatchedCommand>),
    OpenSession { ttl_ms: u64, disconnect_grace_ms: u64, secret: SessionSecret },
}

/// A command inside a batch: a batch here is refused as an unknown variant.
#[derive(Deserialize)]
#[serde(rename = "Command")]
enum UnbatchedCommand {
    Txn(Txn),
    CreateSession {
        ttl_ms: u64,
        disconnect_grace_ms: u64,
    },
    EndSession {
        session_id: u64,
        reason: EndReason,
    },
    /// Never decoded: it holds the place of `Command::Batch`, so that the variants after it
    /// keep their indexes.
    #[allow(dead_code)]
    Batch(Unbatchable),
    OpenSession {
        ttl_ms: u64,
        disconnect_grace_ms: u64,
        secret: SessionSecret,
    },
}

/// Decodes nothing: a batch inside a batch is refused.
enum Unbatchable {}

impl<'de> Deserialize<'de> for Unbatchable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("a batch inside a batch"))
    }
}

impl From<UnbatchedCommand> for Command {
    fn from(command: UnbatchedCommand) -> Self {
        match command {
            UnbatchedCommand::Txn(txn) => Command::Txn(txn),
            UnbatchedCommand::CreateSession { ttl_ms, disconnect_grace_ms } => {
                Command::CreateSession { ttl_ms, disconnect_grace_ms }
            }
            UnbatchedCommand::EndSession { session_id, reason } => Command::EndSession { session_id, reason },
            UnbatchedCommand::Batch(never) => match never {},
            UnbatchedCommand::OpenSession { ttl_ms, disconnect_grace_ms, secret } => {
                Command::OpenSession { ttl_ms, disconnect_grace_ms, secret }
            }
        }
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match DecodedCommand::deserialize(deserializer)? {
            DecodedCommand::Txn(txn) => Command::Txn(txn),
            DecodedCommand::CreateSession { ttl_ms, disconnect_grace_ms } => {
                Command::CreateSession { ttl_ms, disconnect_grace_ms }
            }
            DecodedCommand::EndSession { session_id, reason } => Command::EndSession { session_id, reason },
            DecodedCommand::Batch(commands) => Command::Batch(commands.into_iter().map(Command::from).collect()),
            DecodedCommand::OpenSession { ttl_ms, disconnect_grace_ms, secret } => {
                Command::OpenSession { ttl_ms, disconnect_grace_ms, secret }
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// The client closed it.
    Closed,
    /// The leader saw no keep-alive within the TTL (or the disconnect grace).
    Expired,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compare {
    pub path: String,
    /// `true`: the target must equal; `false`: it must differ. Ignored for `Exists`.
    pub equal: bool,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CompareTarget {
    Exists(bool),
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    Value(Bytes),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Create { path: String, data: Bytes, session_id: u64, sequential: bool },
    Set { path: String, data: Bytes, expected_version: Option<u64>, upsert: bool },
    Delete { path: String, expected_version: Option<u64>, recursive: bool },
    Get { path: String },
}

/// A node as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub data: Bytes,
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Owning session, 0 for persistent nodes.
    pub ephemeral_owner: u64,
}

/// A node with its path, as returned to clients and carried by events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub path: String,
    pub record: NodeRecord,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    Txn(Result<TxnOutcome, ApplyError>),
    Session(Result<SessionCreated, ApplyError>),
    SessionEnded(Result<u64, ApplyError>),
    Batch(Vec<CommandResult>),
    /// Blank and membership entries.
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub session_id: u64,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnOutcome {
    pub succeeded: bool,
    /// The store's revision after this command (unchanged if nothing was written).
    pub revision: u64,
    pub results: Vec<OpOutcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpOutcome {
    Created(NodeView),
    Set(NodeView),
    Deleted(u64),
    Got(Option<NodeView>),
}

/// Deterministic failures of applying a command: every replica reaches the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("node {path} already exists")]
    NodeExists { path: String },
    #[error("node {path} does not exist")]
    NoNode { path: String },
    #[error("node {path} is at version {actual}, not the expected {expected}")]
    BadVersion { path: String, expected: u64, actual: u64 },
    #[error("node {path} has children; delete them first or delete recursively")]
    NotEmpty { path: String },
    #[error("session {session_id} does not exist (expired or closed)")]
    NoSession { session_id: u64 },
}

impl Command {
    pub fn single(op: Op) -> Self {
        Command::Txn(Txn { compares: Vec::new(), success: vec![op], failure: Vec::new() })
    }

    /// The bytes this command adds to a log entry, roughly: paths and data, plus a small
    /// constant per operation. Used to keep entries within what one Raft message carries.
    pub fn payload_bytes(&self) -> usize {
        const PER_ITEM: usize = 16;
        match self {
            Command::Txn(txn) => txn.payload_bytes(),
            Command::CreateSession { .. } | Command::OpenSession { .. } | Command::EndSession { .. } => PER_ITEM,
            Command::Batch(commands) => commands.iter().map(Command::payload_bytes).sum(),
        }
    }
}

impl Txn {
    pub fn payload_bytes(&self) -> usize {
        const PER_ITEM: usize = 16;
        let compares = self.compares.iter().map(|compare| {
            let value = match &compare.target {
                CompareTarget::Value(value) => value.len(),
                _ => 8,
            };
            PER_ITEM + compare.path.len() + value
        });
        let ops = self.success.iter().chain(&self.failure).map(|op| {
            PER_ITEM
                + match op {
                    Op::Create { path, data, .. } | Op::Set { path, data, .. } => path.len() + data.len(),
                    Op::Delete { path, .. } | Op::Get { path } => path.len(),
                }
        });
        compares.chain(ops).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_decode_as_encoded_but_never_nested() {
        let txn = Command::single(Op::Set {
            path: "/a".into(),
            data: Bytes::from_static(b"x"),
            expected_version: None,
            upsert: true,
        });
        let session = Command::CreateSession { ttl_ms: 1000, disconnect_grace_ms: 0 };
        for command in [txn.clone(), session.clone(), Command::Batch(vec![txn.clone(), session.clone()])] {
            let encoded = postcard::to_stdvec(&command).unwrap();
            assert_eq!(postcard::from_bytes::<Command>(&encoded).unwrap(), command);
        }
        let nested = Command::Batch(vec![Command::Batch(vec![txn])]);
        let encoded = postcard::to_stdvec(&nested).unwrap();
        assert!(postcard::from_bytes::<Command>(&encoded).is_err(), "a batch inside a batch is refused");
        // What once overflowed the stack: batches nested thousands deep, as bytes.
        let mut deep = [3u8, 1].repeat(8_000);
        deep.extend(postcard::to_stdvec(&session).unwrap());
        assert!(postcard::from_bytes::<Command>(&deep).is_err());
    }
}
