//! The state machine openraft applies committed entries to: the [`Store`] in memory, made
//! durable by snapshots on disk (the log holds everything after the last snapshot, and is
//! replayed on restart). Applied changes are published to watchers.

// openraft's `StorageError` is what its storage traits return; it is large, and not ours.
#![allow(clippy::result_large_err)]

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::command::CommandResult;
use crate::log_store::{LogStoreError, read_small_file, write_small_file};
use crate::store::{HistoryLimits, Store};
use crate::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::watch::WatchHub;

/// The applied state: the store plus where in the log it stands.
#[derive(Debug)]
pub struct Replica {
    pub store: Store,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Shared read access to the applied state, for the API layer.
pub type SharedReplica = Arc<RwLock<Replica>>;

#[derive(Clone)]
pub struct StateMachine {
    replica: SharedReplica,
    snapshot_path: PathBuf,
    watch_hub: Arc<WatchHub>,
    limits: HistoryLimits,
}

/// The snapshot file: metadata plus the serialized store.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    data: Bytes,
}

impl StateMachine {
    /// Loads the latest snapshot under `dir`, if any.
    pub fn open(dir: &Path, limits: HistoryLimits) -> Result<Self, LogStoreError> {
        let snapshot_dir = dir.join("snapshot");
        std::fs::create_dir_all(&snapshot_dir)
            .map_err(|source| LogStoreError::Io { path: snapshot_dir.clone(), source })?;
        let snapshot_path = snapshot_dir.join("current.snap");
        let replica = match read_small_file::<SnapshotFile>(&snapshot_path)? {
            Some(file) => {
                let mut store = Store::decode(&file.data).map_err(|error| LogStoreError::Decode {
                    path: snapshot_path.clone(),
                    reason: error.to_string(),
                })?;
                store.set_limits(limits);
                tracing::info!(last_log = ?file.meta.last_log_id, revision = store.revision(), "snapshot loaded");
                Replica { store, last_applied: file.meta.last_log_id, membership: file.meta.last_membership }
            }
            None => Replica { store: Store::new(limits), last_applied: None, membership: StoredMembership::default() },
        };
        Ok(Self { replica: Arc::new(RwLock::new(replica)), snapshot_path, watch_hub: Arc::default(), limits })
    }

    pub fn replica(&self) -> SharedReplica {
        self.replica.clone()
    }

    pub fn watch_hub(&self) -> Arc<WatchHub> {
        self.watch_hub.clone()
    }
}

fn snapshot_error(error: impl std::fmt::Display) -> StorageError {
    StorageError::from_io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, io::Error::other(error.to_string()))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let replica = self.replica.clone();
        let path = self.snapshot_path.clone();
        // Serializing a large store and writing it is blocking work: keep it off the runtime.
        let (meta, data) = tokio::task::spawn_blocking(move || -> Result<(SnapshotMeta, Bytes), StorageError> {
            // A copy taken under the lock (O(1) for the tree) and serialized after it: Raft
            // applies on while the snapshot is written. Serialized under the lock, a million
            // tasks' store (150 MB) held every apply, and with it the Raft thread's
            // heartbeats, past the election timeout (the placement benchmark).
            let (meta, store) = {
                let replica = replica.read().expect("replica lock");
                let last = replica.last_applied;
                let meta = SnapshotMeta {
                    last_log_id: last,
                    last_membership: replica.membership.clone(),
                    snapshot_id: format!(
                        "{}-{}-{}",
                        last.map_or(0, |id| id.leader_id.term),
                        last.map_or(0, |id| id.index),
                        replica.store.revision()
                    ),
                };
                (meta, replica.store.clone())
            };
            let data = Bytes::from(postcard::to_stdvec(&store).map_err(snapshot_error)?);
            drop(store);
            write_small_file(&path, &SnapshotFile { meta: meta.clone(), data: data.clone() })
                .map_err(snapshot_error)?;
            Ok((meta, data))
        })
        .await
        .map_err(snapshot_error)??;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data.to_vec())) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let replica = self.replica.read().expect("replica lock");
        Ok((replica.last_applied, replica.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut replica = self.replica.write().expect("replica lock");
        let mut changes = Vec::new();
        let mut results = Vec::new();
        for entry in entries {
            replica.last_applied = Some(entry.log_id);
            results.push(match entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(command) => replica.store.apply(command, &mut changes),
                EntryPayload::Membership(membership) => {
                    replica.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandResult::None
                }
            });
        }
        // Published while the write lock is held, so a watcher that reads history and
        // subscribes under the read lock sees every revision exactly once.
        for change in &changes {
            self.watch_hub.publish(change);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = Bytes::from(snapshot.into_inner());
        let mut store = Store::decode(&data).map_err(snapshot_error)?;
        store.set_limits(self.limits);
        let path = self.snapshot_path.clone();
        let file = SnapshotFile { meta: meta.clone(), data };
        tokio::task::spawn_blocking(move || write_small_file(&path, &file))
            .await
            .map_err(snapshot_error)?
            .map_err(snapshot_error)?;
        let mut replica = self.replica.write().expect("replica lock");
        tracing::info!(snapshot = %meta.snapshot_id, revision = store.revision(), "snapshot installed");
        replica.store = store;
        replica.last_applied = meta.last_log_id;
        replica.membership = meta.last_membership.clone();
        self.watch_hub.reset();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.snapshot_path.clone();
        let file = tokio::task::spawn_blocking(move || read_small_file::<SnapshotFile>(&path))
            .await
            .map_err(snapshot_error)?
            .map_err(snapshot_error)?;
        Ok(file.map(|file| Snapshot { meta: file.meta, snapshot: Box::new(Cursor::new(file.data.to_vec())) }))
    }
}
