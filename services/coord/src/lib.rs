//! `marina-coord`: Marina's quorum, the ZooKeeper/etcd of the cluster.
//!
//! A Raft group (openraft) replicating a small tree of versioned nodes with sessions,
//! ephemeral and sequential nodes, transactions and revision-ordered watches. Layers, from
//! the disk up:
//!
//! - [`log_store`]: the durable Raft log (segments, fsync with group commit);
//! - [`store`] and [`command`]: the replicated data model and what the log carries;
//! - [`state_machine`]: applying entries, snapshots, publishing changes;
//! - [`network`]: Raft messages between nodes over gRPC;
//! - [`proposer`]: batching of writes into log entries and of reads into read-index rounds;
//! - [`sessions`]: the leader's keep-alive tracking and expiry;
//! - [`watch`], [`api`]: the gRPC services; `access`: which paths each role may write;
//! - [`node`]: everything wired together, started by [`spawn`].

mod access;
pub mod api;
pub mod command;
pub mod config;
mod error;
pub mod log_store;
mod network;
mod node;
mod proposer;
mod sessions;
mod state_machine;
pub mod store;
pub mod types;
mod watch;

pub use config::Config;
pub use error::CoordError;
pub use node::{CoordHandle, CoordNode, StartError, on_raft_thread_start, spawn};
