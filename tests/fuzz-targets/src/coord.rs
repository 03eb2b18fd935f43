//! Coord's doors: its Raft log (records and whole segment files), its snapshots, the Raft
//! messages peers send, and client requests through validation into the store.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use marina_coord::api::{request_op, request_session, request_txn, validate_path};
use marina_coord::command::{Command, CommandResult, EndReason, Op};
use marina_coord::config::Limits;
use marina_coord::log_store::{LogStore, LogStoreError};
use marina_coord::store::{HistoryLimits, RevisionEvents, Store, path_matches};
use marina_coord::types::{Entry, LogId, NodeId, TypeConfig, Vote};
use marina_daemon::record::{parse_framed, push_framed};
use marina_proto::coord::v1 as pb;
use openraft::error::{Infallible, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::{EntryPayload, RaftLogReader};
use prost::Message;

use crate::support::{block_on, postcard_fixed_point, record_file, scratch_dir};

/// Small history bounds, so that trimming runs within a few commands.
const HISTORY: HistoryLimits = HistoryLimits { max_revisions: 8, max_bytes: 4096 };

/// The first index of the segment the segment target writes (the name of its file).
pub const SEGMENT_FIRST_INDEX: u64 = 1;

/// One record of coord's storage, as its readers decode it: a log entry (each segment
/// record's payload), the vote and purge-point files (postcard inside a CRC frame), and the
/// framing itself. Every decoded value must re-encode to a fixed point, and a log entry's
/// command must apply to a store deterministically, as every replica applies it.
pub fn coord_log_record(data: &[u8]) {
    if let Ok(entry) = postcard::from_bytes::<Entry>(data) {
        postcard_fixed_point("log entry", &entry);
        if let EntryPayload::Normal(command) = entry.payload {
            apply_on_replicas(&[command]);
        }
    }
    if let Ok(vote) = postcard::from_bytes::<Vote>(data) {
        postcard_fixed_point("vote", &vote);
    }
    if let Ok(purged) = postcard::from_bytes::<LogId>(data) {
        postcard_fixed_point("purge point", &purged);
    }
    if let Ok((payload, len)) = parse_framed(data) {
        let mut framed = Vec::new();
        push_framed(&mut framed, payload);
        assert_eq!(framed, &data[..len], "a frame read does not frame back to itself");
    }
}

/// A log segment file (see [`record_file`] for how the input becomes one), recovered by the
/// real `LogStore::open`. Recovery may cut off a torn tail but must refuse damage anywhere
/// else without touching the file; what it recovers has contiguous indexes, and a log
/// recovered once opens again as the same log, with nothing more cut.
pub fn coord_log_segment(data: &[u8]) {
    let dir = scratch_dir();
    let segments = dir.path().join("log");
    fs::create_dir_all(&segments).expect("scratch log dir");
    let path = segments.join(format!("{SEGMENT_FIRST_INDEX:020}.seg"));
    let file = record_file(data);
    fs::write(&path, &file).expect("scratch segment");
    match open_log(dir.path()) {
        Err(_) => assert_eq!(fs::read(&path).expect("segment"), file, "a refused log was changed"),
        Ok(entries) => {
            for (position, entry) in entries.iter().enumerate() {
                assert_eq!(entry.log_id.index, SEGMENT_FIRST_INDEX + position as u64, "recovered indexes have a gap");
            }
            let kept = fs::read(&path).expect("segment");
            assert!(file.starts_with(&kept), "recovery changed more than the tail");
            let again =
                open_log(dir.path()).unwrap_or_else(|e| panic!("a log recovered once does not open again: {e}"));
            assert_eq!(encode_all(&again), encode_all(&entries), "reopened, the log holds other entries");
            assert_eq!(fs::read(&path).expect("segment"), kept, "reopening cut more off");
            apply_on_replicas(&commands_of(entries));
        }
    }
}

fn open_log(dir: &Path) -> Result<Vec<Entry>, LogStoreError> {
    let mut log = LogStore::open(dir, 1, None)?;
    let entries = block_on(log.try_get_log_entries(..)).expect("an in-memory read");
    let state = block_on(log.get_log_state()).expect("an in-memory read");
    assert_eq!(state.last_log_id, entries.last().map(|entry| entry.log_id), "log state and entries disagree");
    Ok(entries)
}

fn encode_all(entries: &[Entry]) -> Vec<Vec<u8>> {
    entries.iter().map(|entry| postcard::to_stdvec(entry).expect("an entry encodes")).collect()
}

/// A snapshot's store (the leader's `InstallSnapshot` data, and `snapshot/current.snap` on
/// disk, both postcard), loaded as `StateMachine` loads it, then written to. Snapshots come
/// from the leader or this node's own disk (CRC-checked), so a crash here is less urgent
/// than one on a client's door; it still stops a node that meets such a snapshot.
pub fn coord_snapshot(data: &[u8]) {
    let Ok(mut store) = Store::decode(data) else { return };
    store.set_limits(HISTORY);
    let _ = (store.get("/"), store.children("/"), store.node_count(), store.revision(), store.oldest_revision());
    let mut changes = Vec::new();
    let session = match store.apply(Command::CreateSession { ttl_ms: 1000, disconnect_grace_ms: 0 }, &mut changes) {
        CommandResult::Session(Ok(created)) => created.session_id,
        other => panic!("creating a session failed: {other:?}"),
    };
    let writes = [
        Op::Create { path: "/fuzz".into(), data: Bytes::from_static(b"x"), session_id: 0, sequential: true },
        Op::Create { path: "/fuzz-e".into(), data: Bytes::new(), session_id: session, sequential: false },
        Op::Set { path: "/".into(), data: Bytes::new(), expected_version: None, upsert: true },
    ];
    for op in writes {
        store.apply(Command::single(op), &mut changes);
    }
    let delete = Op::Delete { path: "/".into(), expected_version: None, recursive: true };
    store.apply(Command::single(delete), &mut changes);
    store.apply(Command::EndSession { session_id: session, reason: EndReason::Closed }, &mut changes);
    postcard_fixed_point("store", &store);
}

/// Raft messages as a node decodes them from a peer (`AppendEntries`, `Vote`,
/// `InstallSnapshot`: postcard in `RaftPayload.data`) and the answers the peer decodes back.
/// Anyone who reaches the port can send these. Every decoded value must re-encode to a
/// fixed point, and appended entries must apply deterministically.
pub fn coord_raft_messages(data: &[u8]) {
    if let Ok(append) = postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(data) {
        postcard_fixed_point("AppendEntries request", &append);
        apply_on_replicas(&commands_of(append.entries));
    }
    if let Ok(vote) = postcard::from_bytes::<VoteRequest<NodeId>>(data) {
        postcard_fixed_point("Vote request", &vote);
    }
    if let Ok(install) = postcard::from_bytes::<InstallSnapshotRequest<TypeConfig>>(data) {
        postcard_fixed_point("InstallSnapshot request", &install);
    }
    type Answer<T, E = Infallible> = Result<T, RaftError<NodeId, E>>;
    if let Ok(answer) = postcard::from_bytes::<Answer<AppendEntriesResponse<NodeId>>>(data) {
        postcard_fixed_point("AppendEntries answer", &answer);
    }
    if let Ok(answer) = postcard::from_bytes::<Answer<VoteResponse<NodeId>>>(data) {
        postcard_fixed_point("Vote answer", &answer);
    }
    if let Ok(answer) = postcard::from_bytes::<Answer<InstallSnapshotResponse<NodeId>, InstallSnapshotError>>(data) {
        postcard_fixed_point("InstallSnapshot answer", &answer);
    }
}

/// A sequence of client requests (`Txn`, `Create`, `Set`, `Delete`, `Get`, `List`, `Watch`,
/// `CreateSession`, `CloseSession`), each decoded from protobuf and validated as the coord
/// API validates it, then applied in order to one store as the leader's log would carry it.
///
/// Input: chunks of a kind byte, a little-endian `u16` length and that many bytes of the
/// request's protobuf. What validation lets through must apply without panicking; a
/// transaction that fails must leave the store as it was; validated commands survive the
/// log's encoding; the history stays contiguous; sessions own exactly live ephemeral nodes;
/// and the store survives a snapshot round trip. Two replicas applying the same commands
/// end identical.
pub fn coord_requests(data: &[u8]) {
    let limits = Limits::default();
    let mut store = Store::new(HISTORY);
    let mut applied = Vec::new();
    let mut changes = Vec::new();
    for (kind, body) in crate::support::chunks(data) {
        let command = match request_command(kind, body, &limits, &store) {
            Some(command) => command,
            None => continue,
        };
        let logged: Command = postcard::from_bytes(&postcard::to_stdvec(&command).expect("a command encodes"))
            .expect("a logged command decodes");
        assert_eq!(logged, command, "a command changed through the log's encoding");
        let before = postcard::to_stdvec(&store).expect("a store encodes");
        let result = store.apply(command.clone(), &mut changes);
        if matches!(result, CommandResult::Txn(Err(_))) {
            let after = postcard::to_stdvec(&store).expect("a store encodes");
            assert!(before == after, "a failed transaction changed the store: {command:?}");
        }
        assert_history_contiguous(&store);
        assert_sessions_own_live_ephemerals(&store);
        applied.push(command);
    }
    assert_revisions_ascend(&changes);
    let mut replica = Store::new(HISTORY);
    let mut replica_changes = Vec::new();
    for command in applied {
        replica.apply(command, &mut replica_changes);
    }
    let snapshot = postcard_fixed_point("store", &store);
    assert_eq!(postcard::to_stdvec(&replica).expect("encodes"), snapshot, "two replicas diverged");
}

/// The command a request becomes once it passes validation; reads are served here.
fn request_command(kind: u8, body: &[u8], limits: &Limits, store: &Store) -> Option<Command> {
    let max = limits.max_path_bytes;
    match kind % 9 {
        0 => request_txn(&pb::TxnRequest::decode(body).ok()?, limits).ok().map(Command::Txn),
        1 => request_op(pb::Op { op: Some(pb::op::Op::Create(pb::CreateRequest::decode(body).ok()?)) }, limits)
            .ok()
            .map(Command::single),
        2 => request_op(pb::Op { op: Some(pb::op::Op::Set(pb::SetRequest::decode(body).ok()?)) }, limits)
            .ok()
            .map(Command::single),
        3 => request_op(pb::Op { op: Some(pb::op::Op::Delete(pb::DeleteRequest::decode(body).ok()?)) }, limits)
            .ok()
            .map(Command::single),
        4 => {
            let request = pb::GetRequest::decode(body).ok()?;
            checked_path(&request.path, max)?;
            let _ = store.get(&request.path);
            None
        }
        5 => {
            let request = pb::ListRequest::decode(body).ok()?;
            checked_path(&request.path, max)?;
            for child in store.children(&request.path) {
                assert!(!child.is_empty() && !child.contains('/'), "{:?} listed the child {child:?}", request.path);
            }
            None
        }
        6 => {
            let request = pb::WatchRequest::decode(body).ok()?;
            let path = checked_path(&request.path, max)?;
            assert!(path_matches(path, request.recursive, path), "a watch on {path} misses {path}");
            let below = if path == "/" { "/x".to_owned() } else { format!("{path}/x") };
            assert_eq!(path_matches(path, request.recursive, &below), request.recursive, "{below} under {path}");
            None
        }
        7 => {
            let request = pb::CreateSessionRequest::decode(body).ok()?;
            request_session(&request, limits, [7; 16]).ok()
        }
        _ => {
            let request = pb::CloseSessionRequest::decode(body).ok()?;
            Some(Command::EndSession { session_id: request.session_id, reason: EndReason::Closed })
        }
    }
}

/// A path `validate_path` accepts, checked against what it promises.
fn checked_path(path: &str, max_bytes: usize) -> Option<&str> {
    validate_path("path", path, max_bytes).ok()?;
    assert!(path.starts_with('/') && path.len() <= max_bytes, "accepted {path:?}");
    if path != "/" {
        assert!(!path.ends_with('/') && !path.contains("//"), "accepted {path:?}");
        assert!(path.split('/').skip(1).all(|s| s != "." && s != ".."), "accepted {path:?}");
    }
    assert!(!path.chars().any(char::is_control), "accepted {path:?}");
    Some(path)
}

/// The commands log entries carry (what the state machine applies; blank and membership
/// entries carry none).
fn commands_of(entries: impl IntoIterator<Item = Entry>) -> Vec<Command> {
    entries
        .into_iter()
        .filter_map(|entry| match entry.payload {
            EntryPayload::Normal(command) => Some(command),
            _ => None,
        })
        .collect()
}

/// Applies `commands` to two fresh stores: every replica must reach the same results and the
/// same store, and the store must survive a snapshot.
fn apply_on_replicas(commands: &[Command]) {
    let mut replicas = [Store::new(HISTORY), Store::new(HISTORY)];
    let mut results = [Vec::new(), Vec::new()];
    for (store, results) in replicas.iter_mut().zip(&mut results) {
        let mut changes = Vec::new();
        for command in commands {
            results.push(store.apply(command.clone(), &mut changes));
        }
        assert_revisions_ascend(&changes);
        assert_history_contiguous(store);
    }
    assert_eq!(results[0], results[1], "replicas disagree on results");
    let snapshot = postcard_fixed_point("store", &replicas[0]);
    assert_eq!(postcard::to_stdvec(&replicas[1]).expect("encodes"), snapshot, "replicas diverged");
}

/// Each revision's changes follow the previous revision's.
fn assert_revisions_ascend(changes: &[Arc<RevisionEvents>]) {
    for pair in changes.windows(2) {
        assert!(pair[0].revision < pair[1].revision, "revisions {} then {}", pair[0].revision, pair[1].revision);
    }
}

/// The history a watch resumes from is contiguous, ascending, and ends at the revision.
fn assert_history_contiguous(store: &Store) {
    let history: Vec<u64> = match store.history_since(store.oldest_revision()) {
        Ok(history) => history.map(|entry| entry.revision).collect(),
        Err(compacted) => panic!("the oldest revision is compacted: {compacted}"),
    };
    for pair in history.windows(2) {
        assert!(pair[0] < pair[1], "history revisions {} then {}", pair[0], pair[1]);
    }
    if let Some(&last) = history.last() {
        assert_eq!(last, store.revision(), "the history ends before the revision");
    }
}

/// Every ephemeral a session owns is a live node owned by that session (else ending the
/// session would delete another's node, or a node would outlive its session).
fn assert_sessions_own_live_ephemerals(store: &Store) {
    for (&session_id, session) in store.sessions() {
        for path in &session.ephemerals {
            let owner = store.get(path).map(|node| node.record.ephemeral_owner);
            assert_eq!(owner, Some(session_id), "session {session_id} lists the ephemeral {path}");
        }
    }
}
