//! The openraft type configuration of a coord cluster.

use std::io::Cursor;

use crate::command::{Command, CommandResult};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Coord's Raft: commands and results of [`crate::command`], nodes addressed by their
    /// gRPC `host:port`, snapshots as serialized stores.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
