//! The replicated data: a tree of nodes with versions and global revisions, sessions owning
//! ephemeral nodes, per-parent sequence counters, and a bounded history of changes that
//! watches replay from. Applying a command is deterministic: every replica that applies the
//! same log reaches the same store, the same results and the same events.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::command::{
    ApplyError, Command, CommandResult, Compare, CompareTarget, EndReason, NodeRecord, NodeView, Op, OpOutcome,
    SessionCreated, SessionSecret, Txn, TxnOutcome,
};

/// Equal secrets, compared in a time that does not depend on where they differ.
fn same_secret(expected: &SessionSecret, given: &[u8]) -> bool {
    given.len() == expected.len() && expected.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub ttl_ms: u64,
    pub disconnect_grace_ms: u64,
    /// Paths of the ephemeral nodes this session owns.
    pub ephemerals: BTreeSet<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// After a put: the node. Before a delete: the node as it was, with `mod_revision` set
    /// to the deleting revision.
    pub node: NodeView,
}

/// Everything one revision changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionEvents {
    pub revision: u64,
    pub events: Vec<Event>,
}

/// How much change history a store keeps for watches to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    pub max_revisions: usize,
    pub max_bytes: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self { max_revisions: 100_000, max_bytes: 64 << 20 }
    }
}

/// A watch asked for a revision older than the history holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("revision {requested} has been compacted; the oldest revision still available is {oldest}")]
pub struct Compacted {
    pub requested: u64,
    pub oldest: u64,
}

/// Cloned for a snapshot: the tree in O(1) (a persistent map shares its nodes with the
/// clone until either changes), the rest (sessions, sequences, the history's `Arc`s) in
/// time proportional to the services and revisions, not to the data.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Store {
    /// Serialized as a map, as the `BTreeMap` it was: older snapshots read unchanged.
    nodes: imbl::OrdMap<String, NodeRecord>,
    sessions: BTreeMap<u64, SessionRecord>,
    /// Next sequence number per parent path, for sequential creates.
    sequences: BTreeMap<String, u64>,
    revision: u64,
    next_session_id: u64,
    history: VecDeque<Arc<RevisionEvents>>,
    history_bytes: usize,
    /// The newest revision no longer in `history` (0: nothing compacted yet).
    compacted: u64,
    /// The secret of each session opened with one (sessions from before secrets have none).
    session_secrets: BTreeMap<u64, SessionSecret>,
    #[serde(skip)]
    limits: HistoryLimits,
}

/// [`Store`] as snapshots written before session secrets hold it (postcard is not
/// self-describing, so the older layout is read as itself).
#[derive(Deserialize)]
struct StoreWithoutSecrets {
    nodes: imbl::OrdMap<String, NodeRecord>,
    sessions: BTreeMap<u64, SessionRecord>,
    sequences: BTreeMap<String, u64>,
    revision: u64,
    next_session_id: u64,
    history: VecDeque<Arc<RevisionEvents>>,
    history_bytes: usize,
    compacted: u64,
}

/// One step to undo when a later operation of the same transaction fails.
enum Undo {
    Node(String, Option<NodeRecord>),
    Sequence(String, Option<u64>),
    EphemeralAdded(u64, String),
    EphemeralRemoved(u64, String),
}

impl Store {
    pub fn new(limits: HistoryLimits) -> Self {
        Self { limits, next_session_id: 1, ..Self::default() }
    }

    /// A store from a snapshot's bytes, of this layout or the one before session secrets.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        match postcard::from_bytes::<Store>(bytes) {
            Ok(store) => Ok(store),
            Err(error) => match postcard::from_bytes::<StoreWithoutSecrets>(bytes) {
                Ok(old) => Ok(Store {
                    nodes: old.nodes,
                    sessions: old.sessions,
                    sequences: old.sequences,
                    revision: old.revision,
                    next_session_id: old.next_session_id,
                    history: old.history,
                    history_bytes: old.history_bytes,
                    compacted: old.compacted,
                    session_secrets: BTreeMap::new(),
                    limits: HistoryLimits::default(),
                }),
                Err(_) => Err(error),
            },
        }
    }

    /// Whether `secret` may act for session `session_id`: `None` if there is no such
    /// session; a session opened before secrets existed takes any.
    pub fn session_owned_by(&self, session_id: u64, secret: &[u8]) -> Option<bool> {
        self.sessions.get(&session_id)?;
        Some(self.session_secrets.get(&session_id).is_none_or(|expected| same_secret(expected, secret)))
    }

    pub fn set_limits(&mut self, limits: HistoryLimits) {
        self.limits = limits;
        // Counted again rather than trusted: a snapshot carries the count beside the history
        // it counts, and the two must agree for trimming to work.
        self.history_bytes = self.history.iter().map(|entry| history_size(entry)).fold(0, usize::saturating_add);
        self.trim_history();
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The oldest revision a watch can still start from.
    pub fn oldest_revision(&self) -> u64 {
        self.compacted.saturating_add(1)
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn sessions(&self) -> &BTreeMap<u64, SessionRecord> {
        &self.sessions
    }

    pub fn get(&self, path: &str) -> Option<NodeView> {
        self.nodes.get(path).map(|record| NodeView { path: path.to_owned(), record: record.clone() })
    }

    /// Names of the direct children of `path` (parents are implicit: `/a/b` makes `b` a child
    /// of `/a` whether or not `/a` itself exists).
    pub fn children(&self, path: &str) -> Vec<String> {
        let prefix = subtree_prefix(path);
        let names: BTreeSet<&str> =
            self.subtree(&prefix).map(|(key, _)| key[prefix.len()..].split('/').next().unwrap_or_default()).collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// Applies one command at the next revision(s), appending what changed to `changes`.
    pub fn apply(&mut self, command: Command, changes: &mut Vec<Arc<RevisionEvents>>) -> CommandResult {
        match command {
            Command::Txn(txn) => CommandResult::Txn(self.apply_txn(txn, changes)),
            Command::CreateSession { ttl_ms, disconnect_grace_ms } => {
                CommandResult::Session(Ok(self.open_session(ttl_ms, disconnect_grace_ms)))
            }
            Command::OpenSession { ttl_ms, disconnect_grace_ms, secret } => {
                let created = self.open_session(ttl_ms, disconnect_grace_ms);
                self.session_secrets.insert(created.session_id, secret);
                CommandResult::Session(Ok(created))
            }
            Command::EndSession { session_id, reason } => {
                CommandResult::SessionEnded(self.end_session(session_id, reason, changes))
            }
            Command::Batch(commands) => {
                CommandResult::Batch(commands.into_iter().map(|command| self.apply(command, changes)).collect())
            }
        }
    }

    /// Events at or after `from` whose node matches `filter`, or [`Compacted`].
    pub fn history_since(&self, from: u64) -> Result<impl Iterator<Item = &Arc<RevisionEvents>>, Compacted> {
        if from <= self.compacted {
            return Err(Compacted { requested: from, oldest: self.oldest_revision() });
        }
        // History revisions are contiguous and ascending: binary search for the start.
        let start = self.history.partition_point(|entry| entry.revision < from);
        Ok(self.history.range(start..))
    }

    fn open_session(&mut self, ttl_ms: u64, disconnect_grace_ms: u64) -> SessionCreated {
        let session_id = self.next_session_id.max(1);
        self.next_session_id = session_id.saturating_add(1);
        let record = SessionRecord { ttl_ms, disconnect_grace_ms, ephemerals: BTreeSet::new() };
        self.sessions.insert(session_id, record);
        SessionCreated { session_id, ttl_ms }
    }

    fn end_session(
        &mut self,
        session_id: u64,
        reason: EndReason,
        changes: &mut Vec<Arc<RevisionEvents>>,
    ) -> Result<u64, ApplyError> {
        let session = self.sessions.remove(&session_id).ok_or(ApplyError::NoSession { session_id })?;
        self.session_secrets.remove(&session_id);
        let revision = next_revision(self.revision);
        let mut events = Vec::with_capacity(session.ephemerals.len());
        for path in session.ephemerals {
            if let Some(mut record) = self.nodes.remove(&path) {
                record.mod_revision = revision;
                events.push(Event { kind: EventKind::Delete, node: NodeView { path, record } });
            }
        }
        let deleted = events.len() as u64;
        tracing::debug!(session_id, ?reason, deleted, "session ended");
        self.commit_revision(revision, events, changes);
        Ok(deleted)
    }

    fn apply_txn(&mut self, txn: Txn, changes: &mut Vec<Arc<RevisionEvents>>) -> Result<TxnOutcome, ApplyError> {
        let succeeded = txn.compares.iter().all(|compare| self.holds(compare));
        let ops = if succeeded { txn.success } else { txn.failure };
        let revision = next_revision(self.revision);
        let mut undo = Vec::new();
        let mut events = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            match self.apply_op(op, revision, &mut undo, &mut events) {
                Ok(outcome) => results.push(outcome),
                Err(error) => {
                    self.rollback(undo);
                    return Err(error);
                }
            }
        }
        self.commit_revision(revision, events, changes);
        Ok(TxnOutcome { succeeded, revision: self.revision, results })
    }

    /// Makes `revision` current if anything changed, and records its events.
    fn commit_revision(&mut self, revision: u64, events: Vec<Event>, changes: &mut Vec<Arc<RevisionEvents>>) {
        if events.is_empty() {
            return;
        }
        self.revision = revision;
        let entry = Arc::new(RevisionEvents { revision, events });
        self.history_bytes += history_size(&entry);
        self.history.push_back(entry.clone());
        self.trim_history();
        changes.push(entry);
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.limits.max_revisions.max(1) || self.history_bytes > self.limits.max_bytes {
            let Some(oldest) = self.history.pop_front() else { break };
            // Saturating: `history_bytes` comes from a snapshot, which may be damaged.
            self.history_bytes = self.history_bytes.saturating_sub(history_size(&oldest));
            self.compacted = oldest.revision;
        }
    }

    fn holds(&self, compare: &Compare) -> bool {
        let node = self.nodes.get(&compare.path);
        let matches = match (&compare.target, node) {
            (CompareTarget::Exists(expected), node) => return node.is_some() == *expected,
            (_, None) => return !compare.equal,
            (CompareTarget::Version(v), Some(node)) => node.version == *v,
            (CompareTarget::CreateRevision(r), Some(node)) => node.create_revision == *r,
            (CompareTarget::ModRevision(r), Some(node)) => node.mod_revision == *r,
            (CompareTarget::Value(value), Some(node)) => node.data == *value,
        };
        matches == compare.equal
    }

    fn apply_op(
        &mut self,
        op: Op,
        revision: u64,
        undo: &mut Vec<Undo>,
        events: &mut Vec<Event>,
    ) -> Result<OpOutcome, ApplyError> {
        match op {
            Op::Create { path, data, session_id, sequential } => {
                if session_id != 0 && !self.sessions.contains_key(&session_id) {
                    return Err(ApplyError::NoSession { session_id });
                }
                let path = if sequential { self.next_sequential(path, undo) } else { path };
                if self.nodes.contains_key(&path) {
                    return Err(ApplyError::NodeExists { path });
                }
                let record = NodeRecord {
                    data,
                    version: 1,
                    create_revision: revision,
                    mod_revision: revision,
                    ephemeral_owner: session_id,
                };
                if let Some(session) = self.sessions.get_mut(&session_id) {
                    session.ephemerals.insert(path.clone());
                    undo.push(Undo::EphemeralAdded(session_id, path.clone()));
                }
                Ok(OpOutcome::Created(self.put(path, record, undo, events)))
            }
            Op::Set { path, data, expected_version, upsert } => {
                let record = match (self.nodes.get(&path), expected_version) {
                    (Some(existing), Some(expected)) if existing.version != expected => {
                        return Err(ApplyError::BadVersion { path, expected, actual: existing.version });
                    }
                    (Some(existing), _) => NodeRecord {
                        data,
                        version: existing.version.saturating_add(1),
                        create_revision: existing.create_revision,
                        mod_revision: revision,
                        ephemeral_owner: existing.ephemeral_owner,
                    },
                    (None, None) if upsert => NodeRecord {
                        data,
                        version: 1,
                        create_revision: revision,
                        mod_revision: revision,
                        ephemeral_owner: 0,
                    },
                    (None, _) => return Err(ApplyError::NoNode { path }),
                };
                Ok(OpOutcome::Set(self.put(path, record, undo, events)))
            }
            Op::Delete { path, expected_version, recursive } => {
                match (self.nodes.get(&path), expected_version) {
                    (Some(existing), Some(expected)) if existing.version != expected => {
                        return Err(ApplyError::BadVersion { path, expected, actual: existing.version });
                    }
                    (None, Some(_)) => return Err(ApplyError::NoNode { path }),
                    (None, None) if !recursive => return Err(ApplyError::NoNode { path }),
                    _ => {}
                }
                let prefix = subtree_prefix(&path);
                let descendants: Vec<String> = self.subtree(&prefix).map(|(key, _)| key.clone()).collect();
                if !recursive && !descendants.is_empty() {
                    return Err(ApplyError::NotEmpty { path });
                }
                let mut deleted = 0;
                for victim in std::iter::once(path).chain(descendants) {
                    if self.remove(victim, revision, undo, events) {
                        deleted += 1;
                    }
                }
                Ok(OpOutcome::Deleted(deleted))
            }
            Op::Get { path } => Ok(OpOutcome::Got(self.get(&path))),
        }
    }

    fn next_sequential(&mut self, prefix: String, undo: &mut Vec<Undo>) -> String {
        let parent = parent_of(&prefix).to_owned();
        let previous = self.sequences.get(&parent).copied();
        let number = previous.unwrap_or(0);
        self.sequences.insert(parent.clone(), number.saturating_add(1));
        undo.push(Undo::Sequence(parent, previous));
        format!("{prefix}{number:010}")
    }

    fn put(&mut self, path: String, record: NodeRecord, undo: &mut Vec<Undo>, events: &mut Vec<Event>) -> NodeView {
        let previous = self.nodes.insert(path.clone(), record.clone());
        undo.push(Undo::Node(path.clone(), previous));
        let view = NodeView { path, record };
        events.push(Event { kind: EventKind::Put, node: view.clone() });
        view
    }

    fn remove(&mut self, path: String, revision: u64, undo: &mut Vec<Undo>, events: &mut Vec<Event>) -> bool {
        let Some(record) = self.nodes.remove(&path) else { return false };
        if record.ephemeral_owner != 0
            && let Some(session) = self.sessions.get_mut(&record.ephemeral_owner)
            && session.ephemerals.remove(&path)
        {
            undo.push(Undo::EphemeralRemoved(record.ephemeral_owner, path.clone()));
        }
        undo.push(Undo::Node(path.clone(), Some(record.clone())));
        let mut gone = record;
        gone.mod_revision = revision;
        events.push(Event { kind: EventKind::Delete, node: NodeView { path, record: gone } });
        true
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            match step {
                Undo::Node(path, Some(record)) => {
                    self.nodes.insert(path, record);
                }
                Undo::Node(path, None) => {
                    self.nodes.remove(&path);
                }
                Undo::Sequence(parent, Some(number)) => {
                    self.sequences.insert(parent, number);
                }
                Undo::Sequence(parent, None) => {
                    self.sequences.remove(&parent);
                }
                Undo::EphemeralAdded(session_id, path) => {
                    if let Some(session) = self.sessions.get_mut(&session_id) {
                        session.ephemerals.remove(&path);
                    }
                }
                Undo::EphemeralRemoved(session_id, path) => {
                    if let Some(session) = self.sessions.get_mut(&session_id) {
                        session.ephemerals.insert(path);
                    }
                }
            }
        }
    }

    fn subtree<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a NodeRecord)> + 'a {
        self.nodes
            .range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
    }
}

/// The revision after `revision`. Saturating, as every counter of the store (session ids,
/// node versions, sequence numbers): 2^64 of anything is never reached, but a damaged (or
/// forged) snapshot may claim the last one, and applying must not panic (found by fuzzing).
fn next_revision(revision: u64) -> u64 {
    revision.saturating_add(1)
}

/// Whether `path` is `watched` or (for recursive watches) one of its descendants.
pub fn path_matches(watched: &str, recursive: bool, path: &str) -> bool {
    // Checked for every event a watch is sent, so no allocation here: `path` is below `watched`
    // when it starts with it followed by a `/` (the root's descendants are every path).
    path == watched
        || (recursive
            && (watched == "/"
                || (path.len() > watched.len() && path.starts_with(watched) && path.as_bytes()[watched.len()] == b'/')))
}

/// The prefix every descendant of `path` starts with.
fn subtree_prefix(path: &str) -> String {
    if path == "/" { "/".to_owned() } else { format!("{path}/") }
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(index) => &path[..index],
    }
}

/// Approximate memory held by one history entry, for the history's byte bound.
fn history_size(entry: &RevisionEvents) -> usize {
    entry.events.iter().map(|event| 64 + event.node.path.len() + event.node.record.data.len()).sum::<usize>() + 32
}

/// The `Bytes` of a string, for tests and callers building commands.
pub fn bytes(value: &str) -> Bytes {
    Bytes::copy_from_slice(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(path: &str, data: &str) -> Command {
        Command::single(Op::Create { path: path.into(), data: bytes(data), session_id: 0, sequential: false })
    }

    fn txn_result(result: CommandResult) -> Result<TxnOutcome, ApplyError> {
        match result {
            CommandResult::Txn(result) => result,
            other => panic!("not a txn result: {other:?}"),
        }
    }

    fn apply(store: &mut Store, command: Command) -> Result<TxnOutcome, ApplyError> {
        txn_result(store.apply(command, &mut Vec::new()))
    }

    #[test]
    fn create_set_delete_bump_versions_and_revisions() {
        let mut store = Store::new(HistoryLimits::default());
        let created = apply(&mut store, create("/a", "1")).unwrap();
        assert_eq!(created.revision, 1);
        let set = apply(
            &mut store,
            Command::single(Op::Set { path: "/a".into(), data: bytes("2"), expected_version: Some(1), upsert: false }),
        )
        .unwrap();
        let OpOutcome::Set(node) = &set.results[0] else { panic!() };
        assert_eq!((node.record.version, node.record.create_revision, node.record.mod_revision), (2, 1, 2));
        let stale = apply(
            &mut store,
            Command::single(Op::Set { path: "/a".into(), data: bytes("3"), expected_version: Some(1), upsert: false }),
        );
        assert_eq!(stale.unwrap_err(), ApplyError::BadVersion { path: "/a".into(), expected: 1, actual: 2 });
        assert_eq!(store.revision(), 2, "a failed write does not consume a revision");
        assert_eq!(apply(&mut store, create("/a", "x")).unwrap_err(), ApplyError::NodeExists { path: "/a".into() });
        let deleted = apply(
            &mut store,
            Command::single(Op::Delete { path: "/a".into(), expected_version: None, recursive: false }),
        )
        .unwrap();
        assert_eq!(deleted.results, vec![OpOutcome::Deleted(1)]);
        assert!(store.get("/a").is_none());
    }

    #[test]
    fn children_are_implicit_and_listed_once() {
        let mut store = Store::new(HistoryLimits::default());
        for path in ["/apps/web/v1", "/apps/web/v2", "/apps/web-x", "/apps/db", "/other"] {
            apply(&mut store, create(path, "")).unwrap();
        }
        assert_eq!(store.children("/apps"), vec!["db", "web", "web-x"]);
        assert_eq!(store.children("/"), vec!["apps", "other"]);
        assert!(store.children("/nothing").is_empty());
        let not_empty = apply(
            &mut store,
            Command::single(Op::Delete { path: "/apps/web".into(), expected_version: None, recursive: false }),
        );
        assert_eq!(not_empty.unwrap_err(), ApplyError::NoNode { path: "/apps/web".into() });
        let recursive = apply(
            &mut store,
            Command::single(Op::Delete { path: "/apps".into(), expected_version: None, recursive: true }),
        )
        .unwrap();
        assert_eq!(recursive.results, vec![OpOutcome::Deleted(4)]);
        assert_eq!(store.children("/"), vec!["other"]);
    }

    #[test]
    fn sequential_nodes_count_per_parent() {
        let mut store = Store::new(HistoryLimits::default());
        let mut names = Vec::new();
        for parent in ["/e/members", "/e/members", "/f"] {
            let outcome = apply(
                &mut store,
                Command::single(Op::Create {
                    path: format!("{parent}/member_"),
                    data: bytes(""),
                    session_id: 0,
                    sequential: true,
                }),
            )
            .unwrap();
            let OpOutcome::Created(node) = &outcome.results[0] else { panic!() };
            names.push(node.path.clone());
        }
        assert_eq!(names, ["/e/members/member_0000000000", "/e/members/member_0000000001", "/f/member_0000000000"]);
    }

    #[test]
    fn failed_txn_is_all_or_nothing() {
        let mut store = Store::new(HistoryLimits::default());
        apply(&mut store, create("/taken", "")).unwrap();
        let txn = Command::Txn(Txn {
            compares: vec![],
            success: vec![
                Op::Create { path: "/seq-".into(), data: bytes(""), session_id: 0, sequential: true },
                Op::Create { path: "/fresh".into(), data: bytes(""), session_id: 0, sequential: false },
                Op::Create { path: "/taken".into(), data: bytes(""), session_id: 0, sequential: false },
            ],
            failure: vec![],
        });
        let mut changes = Vec::new();
        assert!(matches!(store.apply(txn, &mut changes), CommandResult::Txn(Err(ApplyError::NodeExists { .. }))));
        assert!(changes.is_empty());
        assert!(store.get("/fresh").is_none());
        assert_eq!(store.children("/"), vec!["taken"]);
        // The sequence counter was rolled back too.
        let outcome = apply(
            &mut store,
            Command::single(Op::Create { path: "/seq-".into(), data: bytes(""), session_id: 0, sequential: true }),
        )
        .unwrap();
        let OpOutcome::Created(node) = &outcome.results[0] else { panic!() };
        assert_eq!(node.path, "/seq-0000000000");
    }

    #[test]
    fn compares_choose_the_branch() {
        let mut store = Store::new(HistoryLimits::default());
        apply(&mut store, create("/k", "v")).unwrap();
        let txn = |equal_value: &str| {
            Command::Txn(Txn {
                compares: vec![Compare {
                    path: "/k".into(),
                    equal: true,
                    target: CompareTarget::Value(bytes(equal_value)),
                }],
                success: vec![Op::Get { path: "/k".into() }],
                failure: vec![],
            })
        };
        assert!(apply(&mut store, txn("v")).unwrap().succeeded);
        assert!(!apply(&mut store, txn("w")).unwrap().succeeded);
        let missing = Compare { path: "/none".into(), equal: true, target: CompareTarget::Exists(false) };
        assert!(store.holds(&missing));
        let version_of_missing = Compare { path: "/none".into(), equal: true, target: CompareTarget::Version(1) };
        assert!(!store.holds(&version_of_missing));
    }

    #[test]
    fn ending_a_session_deletes_its_ephemerals_in_one_revision() {
        let mut store = Store::new(HistoryLimits::default());
        let CommandResult::Session(Ok(session)) =
            store.apply(Command::CreateSession { ttl_ms: 1000, disconnect_grace_ms: 0 }, &mut Vec::new())
        else {
            panic!()
        };
        for path in ["/e1", "/e2"] {
            apply(
                &mut store,
                Command::single(Op::Create {
                    path: path.into(),
                    data: bytes(""),
                    session_id: session.session_id,
                    sequential: false,
                }),
            )
            .unwrap();
        }
        let mut changes = Vec::new();
        let ended = store
            .apply(Command::EndSession { session_id: session.session_id, reason: EndReason::Expired }, &mut changes);
        assert_eq!(ended, CommandResult::SessionEnded(Ok(2)));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].events.len(), 2);
        assert!(changes[0].events.iter().all(|e| e.kind == EventKind::Delete && e.node.record.mod_revision == 3));
        let orphan = apply(
            &mut store,
            Command::single(Op::Create {
                path: "/e3".into(),
                data: bytes(""),
                session_id: session.session_id,
                sequential: false,
            }),
        );
        assert_eq!(orphan.unwrap_err(), ApplyError::NoSession { session_id: session.session_id });
    }

    #[test]
    fn history_is_bounded_and_reports_compaction() {
        let mut store = Store::new(HistoryLimits { max_revisions: 3, max_bytes: usize::MAX });
        for i in 0..5 {
            apply(&mut store, create(&format!("/n{i}"), "")).unwrap();
        }
        assert_eq!(store.oldest_revision(), 3);
        let revisions: Vec<u64> = store.history_since(4).unwrap().map(|e| e.revision).collect();
        assert_eq!(revisions, vec![4, 5]);
        assert_eq!(store.history_since(2).err(), Some(Compacted { requested: 2, oldest: 3 }));
        assert_eq!(store.history_since(6).unwrap().count(), 0);
    }

    #[test]
    fn snapshot_round_trip_preserves_everything_but_limits() {
        let mut store = Store::new(HistoryLimits::default());
        apply(&mut store, create("/a/b", "data")).unwrap();
        store.apply(Command::CreateSession { ttl_ms: 500, disconnect_grace_ms: 100 }, &mut Vec::new());
        let image = postcard::to_stdvec(&store).unwrap();
        let restored: Store = postcard::from_bytes(&image).unwrap();
        assert_eq!(restored.get("/a/b"), store.get("/a/b"));
        assert_eq!(restored.sessions(), store.sessions());
        assert_eq!(restored.revision(), 1);
        assert_eq!(restored.history_since(1).unwrap().count(), 1);
    }

    #[test]
    fn a_copy_for_a_snapshot_stands_apart_and_the_tree_encodes_as_before() {
        let mut store = Store::new(HistoryLimits::default());
        apply(&mut store, create("/a", "1")).unwrap();
        apply(&mut store, create("/b", "2")).unwrap();
        let copy = store.clone();
        apply(&mut store, create("/c", "3")).unwrap();
        assert_eq!((copy.node_count(), store.node_count()), (2, 3), "a write after the copy is not in it");
        assert_eq!(copy.get("/c"), None);
        assert_eq!(copy.get("/a"), store.get("/a"));
        // Snapshots written while the tree was a `BTreeMap` load: it encodes to the same bytes.
        let as_btree: BTreeMap<String, NodeRecord> =
            store.nodes.iter().map(|(path, record)| (path.clone(), record.clone())).collect();
        assert_eq!(postcard::to_stdvec(&as_btree).unwrap(), postcard::to_stdvec(&store.nodes).unwrap());
    }

    #[test]
    fn watch_paths_match_exactly_or_by_subtree() {
        assert!(path_matches("/a", false, "/a"));
        assert!(!path_matches("/a", false, "/a/b"));
        assert!(path_matches("/a", true, "/a/b/c"));
        assert!(!path_matches("/a", true, "/ab"));
        assert!(path_matches("/", true, "/x"));
        assert!(!path_matches("/", false, "/x"));
        assert!(!path_matches("/a/b", true, "/a"));
        assert!(path_matches("/a/b", true, "/a/b/c"));
    }

    #[test]
    fn only_a_sessions_secret_acts_for_it_and_snapshots_of_either_layout_load() {
        let mut store = Store::new(HistoryLimits::default());
        let open = Command::OpenSession { ttl_ms: 1000, disconnect_grace_ms: 0, secret: [9; 16] };
        let CommandResult::Session(Ok(session)) = store.apply(open, &mut Vec::new()) else { panic!() };
        let id = session.session_id;
        assert_eq!(store.session_owned_by(id, &[9; 16]), Some(true));
        assert_eq!(store.session_owned_by(id, &[8; 16]), Some(false));
        assert_eq!(store.session_owned_by(id, &[9; 15]), Some(false), "a prefix of the secret is not the secret");
        assert_eq!(store.session_owned_by(id + 1, &[9; 16]), None, "no such session");
        let restored = Store::decode(&postcard::to_stdvec(&store).unwrap()).unwrap();
        assert_eq!(restored.session_owned_by(id, &[8; 16]), Some(false), "the secret survives a snapshot");

        // A session from a log written before secrets takes any.
        let legacy = Command::CreateSession { ttl_ms: 1000, disconnect_grace_ms: 0 };
        let CommandResult::Session(Ok(old)) = store.apply(legacy, &mut Vec::new()) else { panic!() };
        assert_eq!(store.session_owned_by(old.session_id, b""), Some(true));
        store.apply(Command::EndSession { session_id: id, reason: EndReason::Closed }, &mut Vec::new());
        assert_eq!(store.session_owned_by(id, &[9; 16]), None);

        // The layout before secrets is this one without the (here empty) map at its end.
        let image = postcard::to_stdvec(&store).unwrap();
        let before_secrets = &image[..image.len() - 1];
        let loaded = Store::decode(before_secrets).expect("a snapshot written before session secrets");
        assert_eq!(loaded.sessions(), store.sessions());
        assert_eq!(loaded.revision(), store.revision());
    }
}
