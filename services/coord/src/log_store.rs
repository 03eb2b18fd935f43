//! The durable Raft log: append-only segment files of CRC-framed records, fsync'd before
//! openraft is told an entry is persisted, plus atomically replaced files for the vote and
//! the purge point.
//!
//! All disk writes happen on one writer thread, in the order openraft issued them. The
//! thread takes every request queued while it was busy and covers all their appends with a
//! single fsync (group commit): under load, many client writes share one disk flush.
//! Entries not yet purged are also kept in memory, so replication reads never touch disk;
//! snapshots bound how many that is.
//!
//! The first failed write (a full disk, an I/O error) stops the writer for good: every later
//! request fails with it, and [`LogStore::failures`] reports it (naming the file) so the node
//! can stop. Writing on after a failure could put good records after a torn one, which
//! recovery rightly refuses to start from; stopping leaves the torn record at the very end,
//! where recovery cuts it off.

// openraft's `StorageError` is what its storage traits return; it is large, and not ours.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

use marina_daemon::record::{parse_framed, push_framed};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, RaftLogId, RaftLogReader};
use prometheus::Histogram;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path}: corrupt log record at byte {offset} ({reason}); this is not a torn final write, \
         so refusing to start rather than lose acknowledged entries"
    )]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("{path}: cannot decode: {reason}")]
    Decode { path: PathBuf, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> LogStoreError + '_ {
    move |source| LogStoreError::Io { path: path.to_owned(), source }
}

/// The log as seen by openraft; cheap to clone (the log reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    memory: Mutex<MemoryLog>,
    writer: mpsc::Sender<WriteRequest>,
    /// The writer's first failure, naming the file and the error (None while it writes).
    failure: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// The highest index openraft reported committed (for metrics; not persisted: a
    /// restarted node learns it again from the leader).
    committed: AtomicU64,
}

#[derive(Default)]
struct MemoryLog {
    /// Entries after the purge point, with their encoded size.
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
}

enum WriteRequest {
    Append { records: Vec<(u64, Vec<u8>)>, done: LogFlushed<TypeConfig> },
    Truncate { from_index: u64, done: tokio::sync::oneshot::Sender<io::Result<()>> },
    Purge { upto: LogId, done: tokio::sync::oneshot::Sender<io::Result<()>> },
    Vote { vote: Vote, done: tokio::sync::oneshot::Sender<io::Result<()>> },
}

impl LogStore {
    /// Opens (or creates) the log of node `node` under `dir`, recovering what a previous
    /// run persisted.
    ///
    /// A leadership this node held before it stopped is not resumed: the vote it committed
    /// for itself is read back as a plain vote for itself in that term (still no vote for
    /// anyone else in it), so the node starts as a follower and leads again only by winning
    /// a later term. openraft would otherwise resume as leader of the same term and append
    /// right after its last entry on disk, but a leader replicates before its own flush
    /// completes, so the followers can hold — committed — entries this node never wrote (a
    /// full disk, a power loss). The resumed leader would write different entries under
    /// the very same log ids, which Raft takes for the same entries: committed writes lost
    /// and the replicas diverged (found by `marina-bench chaos`, seed 11).
    pub fn open(dir: &Path, node: NodeId, fsync_seconds: Option<Histogram>) -> Result<Self, LogStoreError> {
        let segments_dir = dir.join("log");
        fs::create_dir_all(&segments_dir).map_err(io_error(&segments_dir))?;
        let vote: Option<Vote> =
            read_small_file::<Vote>(&dir.join("vote"))?.map(|vote| leadership_not_resumed(vote, node));
        let last_purged: Option<LogId> = read_small_file(&dir.join("purged"))?;
        let (segments, entries) = recover_segments(&segments_dir, last_purged)?;
        let failure = Arc::new(tokio::sync::watch::Sender::new(None));
        let mut disk = DiskLog {
            dir: dir.to_owned(),
            segments_dir,
            segments,
            active: None,
            fsync_seconds,
            failed: None,
            failures: failure.clone(),
        };
        // A crash between recording a purge point and removing its segments leaves them
        // behind; appends after a purge past the log's end must start a fresh segment.
        if let Some(purged) = last_purged {
            disk.drop_segments_upto(purged.index).map_err(io_error(dir))?;
        }
        let segments = disk.segments.len();
        let bytes = entries.values().map(|(_, size)| size).sum();
        tracing::info!(
            dir = %dir.display(),
            entries = entries.len(),
            segments,
            ?vote,
            ?last_purged,
            "raft log recovered"
        );
        let memory = MemoryLog { entries, bytes, last_purged, vote };
        let (writer, requests) = mpsc::channel();
        std::thread::Builder::new()
            .name("coord-log-writer".into())
            .spawn(move || disk.run(requests))
            .map_err(io_error(dir))?;
        Ok(Self {
            shared: Arc::new(Shared { memory: Mutex::new(memory), writer, failure, committed: AtomicU64::new(0) }),
        })
    }

    /// The writer's first failure, once there is one ("<file>: <error>"): from then on no
    /// write succeeds, and the node must stop.
    pub fn failures(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.shared.failure.subscribe()
    }

    /// Approximate bytes of log entries held in memory (drives extra snapshots).
    /// The commit index as last reported by openraft.
    pub fn committed_index(&self) -> u64 {
        self.shared.committed.load(Ordering::Relaxed)
    }

    pub fn memory_bytes(&self) -> usize {
        self.shared.memory.lock().expect("log memory lock").bytes
    }

    fn send(&self, request: WriteRequest) -> Result<(), StorageError> {
        self.shared.writer.send(request).map_err(|_| {
            StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Write, io::Error::other("log writer stopped"))
        })
    }
}

/// `vote` as a node restarting with it may hold it: a leadership of its own, committed, is
/// demoted to an uncommitted vote for itself in the same term (see [`LogStore::open`]).
fn leadership_not_resumed(vote: Vote, node: NodeId) -> Vote {
    if vote.is_committed() && vote.leader_id().voted_for() == Some(node) {
        Vote::new(vote.leader_id().term, node)
    } else {
        vote
    }
}

fn storage_error(subject: ErrorSubject<u64>, verb: ErrorVerb) -> impl FnOnce(io::Error) -> StorageError {
    move |error| StorageError::from_io_error(subject, verb, error)
}

async fn wait(
    done: tokio::sync::oneshot::Receiver<io::Result<()>>,
    subject: ErrorSubject<u64>,
) -> Result<(), StorageError> {
    done.await
        .unwrap_or_else(|_| Err(io::Error::other("log writer stopped")))
        .map_err(storage_error(subject, ErrorVerb::Write))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let memory = self.shared.memory.lock().expect("log memory lock");
        Ok(memory.entries.range(range).map(|(_, (entry, _))| entry.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let memory = self.shared.memory.lock().expect("log memory lock");
        let last = memory.entries.last_key_value().map(|(_, (entry, _))| *entry.get_log_id());
        Ok(LogState { last_purged_log_id: memory.last_purged, last_log_id: last.or(memory.last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.shared.committed.store(committed.map_or(0, |id| id.index), Ordering::Relaxed);
        Ok(())
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.send(WriteRequest::Vote { vote: *vote, done })?;
        wait(result, ErrorSubject::Vote).await?;
        self.shared.memory.lock().expect("log memory lock").vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.shared.memory.lock().expect("log memory lock").vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        {
            let mut memory = self.shared.memory.lock().expect("log memory lock");
            for entry in entries {
                let index = entry.get_log_id().index;
                let payload = postcard::to_stdvec(&entry)
                    .map_err(|e| storage_error(ErrorSubject::Logs, ErrorVerb::Write)(io::Error::other(e)))?;
                memory.bytes += payload.len();
                memory.entries.insert(index, (entry, payload.len()));
                records.push((index, payload));
            }
        }
        self.send(WriteRequest::Append { records, done: callback })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut memory = self.shared.memory.lock().expect("log memory lock");
            let removed = memory.entries.split_off(&log_id.index);
            memory.bytes -= removed.values().map(|(_, size)| size).sum::<usize>();
        }
        let (done, result) = tokio::sync::oneshot::channel();
        self.send(WriteRequest::Truncate { from_index: log_id.index, done })?;
        wait(result, ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut memory = self.shared.memory.lock().expect("log memory lock");
            let kept = memory.entries.split_off(&(log_id.index + 1));
            let purged = std::mem::replace(&mut memory.entries, kept);
            memory.bytes -= purged.values().map(|(_, size)| size).sum::<usize>();
            memory.last_purged = Some(log_id);
        }
        let (done, result) = tokio::sync::oneshot::channel();
        self.send(WriteRequest::Purge { upto: log_id, done })?;
        wait(result, ErrorSubject::Logs).await
    }
}

/// One segment file: records for consecutive indexes starting at `first_index`.
struct Segment {
    first_index: u64,
    path: PathBuf,
    /// Byte offset of each record, in index order.
    offsets: Vec<u64>,
    len: u64,
}

impl Segment {
    fn last_index(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first_index + self.offsets.len() as u64 - 1)
    }
}

/// The writer thread's side: the segment files.
struct DiskLog {
    dir: PathBuf,
    segments_dir: PathBuf,
    segments: Vec<Segment>,
    /// The open file of the last segment, opened on first append.
    active: Option<File>,
    fsync_seconds: Option<Histogram>,
    /// The first failure (its kind and "<file>: <error>"): nothing is written after it.
    failed: Option<(io::ErrorKind, String)>,
    failures: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

impl DiskLog {
    fn run(mut self, requests: mpsc::Receiver<WriteRequest>) {
        while let Ok(first) = requests.recv() {
            // Take everything queued meanwhile: one fsync covers all of its appends.
            let mut flushed = Vec::new();
            let mut pending = Some(first);
            while let Some(request) = pending.take().or_else(|| requests.try_recv().ok()) {
                if let Some((kind, failure)) = &self.failed {
                    refuse(request, *kind, failure);
                    continue;
                }
                match request {
                    WriteRequest::Append { records, done } => match self.write_records(&records) {
                        Ok(()) => flushed.push(done),
                        Err(error) => done.log_io_completed(Err(self.fail(error))),
                    },
                    other => {
                        // Everything before a vote, truncate or purge is durable before it runs.
                        // Safety rests on this order: a leader no longer waits for its own
                        // appends (third_party/openraft-0.9.25.patch), so this is what keeps a
                        // node from voting or answering a new leader before they are on disk.
                        self.complete(&mut flushed);
                        self.run_ordered(other);
                    }
                }
            }
            self.complete(&mut flushed);
        }
        tracing::debug!("log writer stopped");
    }

    /// Records the writer's first failure (logged, and reported to [`LogStore::failures`]);
    /// returns the error for the request that met it.
    fn fail(&mut self, error: io::Error) -> io::Error {
        let (kind, message) = (error.kind(), error.to_string());
        if self.failed.is_none() {
            tracing::error!(error = %message, "raft log write failed: the log writer stops");
            self.failed = Some((kind, message.clone()));
            self.failures.send_replace(Some(message.clone()));
        }
        io::Error::new(kind, message)
    }

    /// fsyncs the active segment and reports the appends it covers.
    fn complete(&mut self, flushed: &mut Vec<LogFlushed<TypeConfig>>) {
        if flushed.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = match (&self.active, self.segments.last()) {
            (Some(file), Some(segment)) => file.sync_data().map_err(at(&segment.path)),
            _ => Ok(()),
        };
        if let Some(histogram) = &self.fsync_seconds {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        let result = result.map_err(|error| self.fail(error));
        for done in flushed.drain(..) {
            done.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| io::Error::new(e.kind(), e.to_string())));
        }
    }

    fn run_ordered(&mut self, request: WriteRequest) {
        match request {
            WriteRequest::Append { .. } => unreachable!("appends are grouped by run()"),
            WriteRequest::Truncate { from_index, done } => {
                let result = self.truncate(from_index).map_err(|error| self.fail(error));
                let _ = done.send(result);
            }
            WriteRequest::Purge { upto, done } => {
                let result = self.purge(upto).map_err(|error| self.fail(error));
                let _ = done.send(result);
            }
            WriteRequest::Vote { vote, done } => {
                let result = write_small_file(&self.dir.join("vote"), &vote).map_err(|error| self.fail(error));
                let _ = done.send(result);
            }
        }
    }

    fn write_records(&mut self, records: &[(u64, Vec<u8>)]) -> io::Result<()> {
        for (index, payload) in records {
            let rotate = match self.segments.last() {
                None => true,
                Some(segment) => segment.len >= SEGMENT_BYTES && !segment.offsets.is_empty(),
            };
            if rotate {
                self.start_segment(*index)?;
            }
            let segment = self.segments.last_mut().expect("a segment was just ensured");
            let expected = segment.first_index + segment.offsets.len() as u64;
            if *index != expected {
                return Err(io::Error::other(format!(
                    "{}: log hole: appending index {index} but the next index is {expected}",
                    segment.path.display()
                )));
            }
            if self.active.is_none() {
                self.active = Some(OpenOptions::new().append(true).open(&segment.path).map_err(at(&segment.path))?);
            }
            let mut frame = Vec::new();
            push_framed(&mut frame, payload);
            self.active.as_mut().expect("opened above").write_all(&frame).map_err(at(&segment.path))?;
            segment.offsets.push(segment.len);
            segment.len += frame.len() as u64;
        }
        Ok(())
    }

    fn start_segment(&mut self, first_index: u64) -> io::Result<()> {
        if let Some(file) = self.active.take() {
            let closed = self.segments.last().map(|segment| segment.path.as_path()).unwrap_or(&self.segments_dir);
            file.sync_data().map_err(at(closed))?;
        }
        let path = self.segments_dir.join(format!("{first_index:020}.seg"));
        let file = OpenOptions::new().create(true).truncate(true).write(true).open(&path).map_err(at(&path))?;
        sync_dir(&self.segments_dir)?;
        self.active = Some(file);
        self.segments.push(Segment { first_index, path, offsets: Vec::new(), len: 0 });
        Ok(())
    }

    fn truncate(&mut self, from_index: u64) -> io::Result<()> {
        self.active = None;
        while let Some(segment) = self.segments.last_mut() {
            if segment.first_index >= from_index {
                fs::remove_file(&segment.path).map_err(at(&segment.path))?;
                self.segments.pop();
                continue;
            }
            let keep = (from_index - segment.first_index) as usize;
            if keep < segment.offsets.len() {
                let cut = segment.offsets[keep];
                let path = &segment.path;
                let file = OpenOptions::new().write(true).open(path).map_err(at(path))?;
                file.set_len(cut).map_err(at(path))?;
                file.sync_data().map_err(at(path))?;
                segment.offsets.truncate(keep);
                segment.len = cut;
            }
            break;
        }
        sync_dir(&self.segments_dir)
    }

    fn purge(&mut self, upto: LogId) -> io::Result<()> {
        write_small_file(&self.dir.join("purged"), &upto)?;
        self.drop_segments_upto(upto.index)
    }

    /// Removes the segments holding nothing after `index`. That can be every segment: a
    /// snapshot installed from the leader moves the purge point past this node's last
    /// entry, and the next append (at the snapshot's index + 1) then starts a new segment
    /// instead of leaving a hole in the old one.
    fn drop_segments_upto(&mut self, index: u64) -> io::Result<()> {
        let mut removed = false;
        while let Some(first) = self.segments.first() {
            let purged = match first.last_index() {
                Some(last) => last <= index,
                // Empty: it would receive `first_index` next, which is purged.
                None => first.first_index <= index,
            };
            if !purged {
                break;
            }
            if self.segments.len() == 1 {
                self.active = None;
            }
            let segment = self.segments.remove(0);
            fs::remove_file(&segment.path).map_err(at(&segment.path))?;
            removed = true;
        }
        if removed { sync_dir(&self.segments_dir) } else { Ok(()) }
    }
}

/// Entries by index, with their encoded size.
type InMemoryEntries = BTreeMap<u64, (Entry, usize)>;

/// Reads every segment in index order. A damaged record at the very end of the last segment
/// is a write that never completed (and was never acknowledged): it is cut off. Damage
/// anywhere else is an error.
fn recover_segments(
    segments_dir: &Path,
    last_purged: Option<LogId>,
) -> Result<(Vec<Segment>, InMemoryEntries), LogStoreError> {
    let mut paths: Vec<(u64, PathBuf)> = Vec::new();
    for dirent in fs::read_dir(segments_dir).map_err(io_error(segments_dir))? {
        let path = dirent.map_err(io_error(segments_dir))?.path();
        let Some(first_index) = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".seg"))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        paths.push((first_index, path));
    }
    paths.sort();
    let mut segments = Vec::with_capacity(paths.len());
    let mut entries = BTreeMap::new();
    let count = paths.len();
    for (position, (first_index, path)) in paths.into_iter().enumerate() {
        let is_last = position + 1 == count;
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        let mut segment = Segment { first_index, path: path.clone(), offsets: Vec::new(), len: 0 };
        let mut offset = 0usize;
        while offset < bytes.len() {
            let damage = match parse_framed(&bytes[offset..]) {
                Ok((payload, frame_len)) => match postcard::from_bytes::<Entry>(payload) {
                    Ok(entry) => {
                        let index = entry.get_log_id().index;
                        let expected = first_index + segment.offsets.len() as u64;
                        if index != expected {
                            return Err(LogStoreError::Corrupt {
                                path,
                                offset: offset as u64,
                                reason: format!("index {index} where {expected} was expected"),
                            });
                        }
                        if last_purged.is_none_or(|purged| index > purged.index) {
                            entries.insert(index, (entry, payload.len()));
                        }
                        segment.offsets.push(offset as u64);
                        offset += frame_len;
                        continue;
                    }
                    Err(error) => format!("undecodable entry: {error}"),
                },
                Err(reason) => reason,
            };
            // Only the tail of the last segment can hold a write that never completed; a
            // valid entry after the damage means acknowledged entries would be cut off.
            let expected = first_index + segment.offsets.len() as u64;
            if !is_last || valid_entry_after(&bytes, offset, expected) {
                return Err(LogStoreError::Corrupt { path, offset: offset as u64, reason: damage });
            }
            tracing::warn!(path = %path.display(), offset, reason = %damage, "cutting off an incomplete final log record");
            let file = OpenOptions::new().write(true).open(&path).map_err(io_error(&path))?;
            file.set_len(offset as u64).map_err(io_error(&path))?;
            file.sync_data().map_err(io_error(&path))?;
            break;
        }
        segment.len = offset.min(bytes.len()) as u64;
        segments.push(segment);
    }
    Ok((segments, entries))
}

/// Whether an intact record of an entry at `expected` or later starts anywhere after the
/// damaged record at `damaged` (a scan only run when recovery meets damage).
fn valid_entry_after(bytes: &[u8], damaged: usize, expected: u64) -> bool {
    (damaged + 1..bytes.len()).any(|offset| {
        parse_framed(&bytes[offset..])
            .ok()
            .and_then(|(payload, _)| postcard::from_bytes::<Entry>(payload).ok())
            .is_some_and(|entry| entry.get_log_id().index >= expected)
    })
}

/// Small state files (vote, purge point): CRC-framed, replaced atomically via rename.
pub(crate) fn write_small_file<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let payload = postcard::to_stdvec(value).map_err(io::Error::other)?;
    let mut frame = Vec::new();
    push_framed(&mut frame, &payload);
    write_atomically(path, &frame)
}

pub(crate) fn read_small_file<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, LogStoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(LogStoreError::Io { path: path.to_owned(), source: error }),
    };
    let (payload, _) =
        parse_framed(&bytes).map_err(|reason| LogStoreError::Corrupt { path: path.to_owned(), offset: 0, reason })?;
    postcard::from_bytes(payload)
        .map(Some)
        .map_err(|error| LogStoreError::Decode { path: path.to_owned(), reason: error.to_string() })
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content.
/// Errors name the file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp).map_err(at(&tmp))?;
        file.write_all(bytes).map_err(at(&tmp))?;
        file.sync_all().map_err(at(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(at(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|dir| dir.sync_all()).map_err(at(dir))
}

/// The error with the file it happened on in its message (the kind is kept).
fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |error| io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Fails a request that arrives after the writer stopped.
fn refuse(request: WriteRequest, kind: io::ErrorKind, failure: &str) {
    let error =
        || io::Error::new(kind, format!("not written: the log writer stopped after a failed write ({failure})"));
    match request {
        WriteRequest::Append { done, .. } => done.log_io_completed(Err(error())),
        WriteRequest::Truncate { done, .. } | WriteRequest::Purge { done, .. } | WriteRequest::Vote { done, .. } => {
            let _ = done.send(Err(error()));
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    fn records(indexes: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        indexes
            .map(|index| {
                let entry = Entry { log_id: log_id(index), payload: EntryPayload::Blank };
                (index, postcard::to_stdvec(&entry).unwrap())
            })
            .collect()
    }

    /// The disk side of a log opened under `dir`, as `LogStore::open` prepares it.
    fn open_disk(dir: &Path) -> Result<(DiskLog, Vec<u64>), LogStoreError> {
        let segments_dir = dir.join("log");
        fs::create_dir_all(&segments_dir).unwrap();
        let last_purged: Option<LogId> = read_small_file(&dir.join("purged"))?;
        let (segments, entries) = recover_segments(&segments_dir, last_purged)?;
        let mut disk = DiskLog {
            dir: dir.to_owned(),
            segments_dir,
            segments,
            active: None,
            fsync_seconds: None,
            failed: None,
            failures: Arc::new(tokio::sync::watch::Sender::new(None)),
        };
        if let Some(purged) = last_purged {
            disk.drop_segments_upto(purged.index).unwrap();
        }
        Ok((disk, entries.into_keys().collect()))
    }

    fn vote(term: u64) -> Vote {
        Vote::new(term, 1)
    }

    /// A write that fails stops the writer: the error names the file, the failure is
    /// reported, and nothing is written after it even once the disk would take it again.
    #[tokio::test]
    async fn the_first_failed_write_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, _) = open_disk(dir.path()).unwrap();
        let mut failures = disk.failures.subscribe();
        let (requests, queue) = mpsc::channel();
        let writer = std::thread::spawn(move || disk.run(queue));
        let vote_request = |term| {
            let (done, result) = tokio::sync::oneshot::channel();
            requests.send(WriteRequest::Vote { vote: vote(term), done }).unwrap();
            result
        };
        vote_request(1).await.unwrap().unwrap();

        // The vote is written through "vote.tmp": make that a device whose writes fail
        // with ENOSPC, as a full disk does.
        let tmp = dir.path().join("vote.tmp");
        std::os::unix::fs::symlink("/dev/full", &tmp).unwrap();
        let error = vote_request(2).await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
        assert!(error.to_string().contains(&tmp.display().to_string()), "the error names the file: {error}");
        let reported = failures.wait_for(Option::is_some).await.unwrap().clone().unwrap();
        assert_eq!(reported, error.to_string());

        // Space is back; the writer still refuses, and the vote on disk is the last good one.
        fs::remove_file(&tmp).unwrap();
        let refused = vote_request(3).await.unwrap().unwrap_err();
        assert!(refused.to_string().contains("stopped after a failed write"), "{refused}");
        let (done, result) = tokio::sync::oneshot::channel();
        requests.send(WriteRequest::Truncate { from_index: 1, done }).unwrap();
        assert!(result.await.unwrap().is_err(), "a truncate after the failure is refused too");
        assert_eq!(read_small_file::<Vote>(&dir.path().join("vote")).unwrap(), Some(vote(1)));
        drop(requests);
        writer.join().unwrap();
    }

    /// A node reopening its log holds its own former leadership as a plain vote for itself
    /// (it must win a later term to lead); a leader it followed stays committed.
    #[tokio::test]
    async fn a_leadership_is_read_back_as_a_plain_vote_for_oneself() {
        let dir = tempfile::tempdir().unwrap();
        write_small_file(&dir.path().join("vote"), &Vote::new_committed(7, 1)).unwrap();
        let mut own = LogStore::open(dir.path(), 1, None).unwrap();
        assert_eq!(own.read_vote().await.unwrap(), Some(Vote::new(7, 1)));
        drop(own);
        let mut follower = LogStore::open(dir.path(), 2, None).unwrap();
        assert_eq!(follower.read_vote().await.unwrap(), Some(Vote::new_committed(7, 1)));
    }

    fn segment_file(dir: &Path) -> PathBuf {
        let mut files: Vec<_> = fs::read_dir(dir.join("log")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files.pop().expect("a segment")
    }

    #[test]
    fn appends_continue_after_a_purge_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut disk, _) = open_disk(dir.path()).unwrap();
        disk.write_records(&records(1..=3)).unwrap();
        // A snapshot up to 10 was installed: everything local is purged.
        disk.purge(log_id(10)).unwrap();
        disk.write_records(&records(11..=12)).unwrap();
        drop(disk);
        let (_, entries) = open_disk(dir.path()).unwrap();
        assert_eq!(entries, vec![11, 12]);
    }

    #[test]
    fn a_purge_recorded_before_a_crash_is_completed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut disk, _) = open_disk(dir.path()).unwrap();
        disk.write_records(&records(1..=3)).unwrap();
        // The purge point was written, the segments not yet removed.
        write_small_file(&dir.path().join("purged"), &log_id(10)).unwrap();
        drop(disk);
        let (mut disk, entries) = open_disk(dir.path()).unwrap();
        assert!(entries.is_empty());
        disk.write_records(&records(11..=11)).unwrap();
    }

    #[test]
    fn an_incomplete_final_record_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut disk, _) = open_disk(dir.path()).unwrap();
        disk.write_records(&records(1..=3)).unwrap();
        drop(disk);
        let path = segment_file(dir.path());
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap(); // a header promising more than follows
        drop(file);
        let (mut disk, entries) = open_disk(dir.path()).unwrap();
        assert_eq!(entries, vec![1, 2, 3]);
        disk.write_records(&records(4..=4)).unwrap();
        drop(disk);
        assert_eq!(open_disk(dir.path()).unwrap().1, vec![1, 2, 3, 4]);
    }

    #[test]
    fn damage_before_intact_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut disk, _) = open_disk(dir.path()).unwrap();
        disk.write_records(&records(1..=3)).unwrap();
        let second = disk.segments[0].offsets[1] as usize;
        drop(disk);
        let path = segment_file(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[second + marina_daemon::record::HEADER_BYTES] ^= 0xff; // entry 2's payload
        fs::write(&path, &bytes).unwrap();
        match open_disk(dir.path()) {
            Err(LogStoreError::Corrupt { offset, .. }) => assert_eq!(offset, second as u64),
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok((_, entries)) => panic!("damage mid-log was accepted, entries {entries:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing was cut off");
    }
}
