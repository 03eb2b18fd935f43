//! The agent's work dir: what it must remember across restarts, written durably before it
//! acts on it.
//!
//! ```text
//! <work_dir>/meta/agent.json    agent id, highest master epoch obeyed (replaced atomically)
//! <work_dir>/meta/journal       tasks not yet forgotten and status updates not yet
//!                               acknowledged, as an append-only journal of changes
//! <work_dir>/sandboxes/<name>/  each task's sandbox (its output for file-based runtimes),
//!                               named by [`sandbox_name`]: the task id, escaped
//! ```
//!
//! A change is one CRC-framed record ([`marina_daemon::record`]) appended and fdatasync'd:
//! a task saved or forgotten, an update saved or acknowledged. That is a write and a sync
//! where a file per record took eight system calls and three path lookups, two of them
//! fsyncs; a launch of many tasks is one append. When the journal has grown to four times
//! what is live in it, it is rewritten with only that (atomically, by rename).
//!
//! Recovery replays the journal. Only its final record can be incomplete (a crash during
//! the append): it is cut off. Damage anywhere else is an error naming the file and the
//! offset — starting fresh would orphan running tasks and lose unacknowledged updates.
//! Work dirs of earlier agents (a file per record in `meta/tasks/` and `meta/updates/`)
//! are read once and folded into a journal.
//!
//! A write that fails (a full disk, an I/O error) leaves the journal as it was: what was
//! half-appended is cut off again, and a compaction that fails leaves the old journal, only
//! longer than it need be. The caller keeps what it could not write in memory and tries
//! again ([`crate::updates`], [`crate::tasks`]); [`Checkpoint::failures`] counts failures.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use marina_daemon::record::{parse_framed, push_framed};
use marina_proto::agent::v1::{TaskCheckpoint, UpdateCheckpoint};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{source} at {path}")]
    Io { path: PathBuf, source: io::Error },
    /// Escaped, the task id is longer than a file name may be.
    #[error("task id {task_id:?} escapes to a sandbox name of {bytes} bytes; at most {MAX_NAME_BYTES} are allowed")]
    SandboxNameTooLong { task_id: String, bytes: usize },
    #[error(
        "checkpoint {path} is corrupt ({reason}); refusing to start without it — move it away only if \
         its task and updates may be forgotten"
    )]
    Corrupt { path: PathBuf, reason: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_owned(), source }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentMeta {
    pub agent_id: Option<String>,
    /// The highest master epoch this agent has obeyed: commands from lower epochs are
    /// refused, even after a restart.
    pub highest_epoch: u64,
}

/// Everything a previous run left.
#[derive(Debug, Default)]
pub struct Recovered {
    pub meta: AgentMeta,
    pub tasks: Vec<TaskCheckpoint>,
    pub updates: Vec<UpdateCheckpoint>,
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    meta_dir: PathBuf,
    sandboxes: PathBuf,
    journal: Arc<Mutex<Journal>>,
    /// Writes that failed, for the metrics.
    failures: Arc<AtomicU64>,
    /// Signalled at each failed write: whoever writes again what failed waits on it.
    failed: Arc<Notify>,
}

/// The longest file name (Linux' `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// The kinds of journal record: the first byte of each payload.
const TASK_SAVED: u8 = 1;
const TASK_FORGOTTEN: u8 = 2;
const UPDATE_SAVED: u8 = 3;
const UPDATE_ACKNOWLEDGED: u8 = 4;

/// A journal shorter than this is never rewritten. Small enough that an agent's journal
/// stays near four times what it holds (a hundred tasks, ~90 KB, rewrite in well under a
/// millisecond), since each host's journal is disk (or, for the placement benchmark's
/// 10,000 hollow agents, tmpfs: memory) that a larger floor would fill for nothing.
const COMPACT_MIN_BYTES: u64 = 256 << 10;

impl Checkpoint {
    /// Opens the work dir, creating it if new, and reads what it holds.
    pub fn open(work_dir: &Path) -> Result<(Self, Recovered), CheckpointError> {
        let meta_dir = work_dir.join("meta");
        let sandboxes = work_dir.join("sandboxes");
        for dir in [&meta_dir, &sandboxes] {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        let meta_path = meta_dir.join("agent.json");
        let meta = match fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| CheckpointError::Corrupt { path: meta_path.clone(), reason: error.to_string() })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => AgentMeta::default(),
            Err(error) => return Err(CheckpointError::Io { path: meta_path, source: error }),
        };
        let journal = Journal::open(&meta_dir)?;
        let tasks = decode_all(journal.live.tasks.values());
        let updates = decode_all(journal.live.updates.values());
        let checkpoint = Self {
            meta_dir,
            sandboxes,
            journal: Arc::new(Mutex::new(journal)),
            failures: Arc::default(),
            failed: Arc::default(),
        };
        Ok((checkpoint, Recovered { meta, tasks, updates }))
    }

    pub(crate) fn save_meta(&self, meta: &AgentMeta) -> Result<(), CheckpointError> {
        let path = self.meta_dir.join("agent.json");
        let bytes = serde_json::to_vec_pretty(meta).expect("agent meta serializes");
        self.counted(write_atomically(&path, &bytes).map_err(io_error(&path)))
    }

    pub fn save_task(&self, task: &TaskCheckpoint) -> Result<(), CheckpointError> {
        self.save_tasks(std::slice::from_ref(task))
    }

    /// Several tasks in one append (and one sync).
    pub fn save_tasks(&self, tasks: &[TaskCheckpoint]) -> Result<(), CheckpointError> {
        let changes = tasks.iter().map(|task| Change::TaskSaved(task_id(task).to_owned(), task.encode_to_vec()));
        self.append(changes)
    }

    pub fn remove_task(&self, task_id: &str) -> Result<(), CheckpointError> {
        self.append([Change::TaskForgotten(task_id.to_owned())])
    }

    pub fn save_update(&self, update: &UpdateCheckpoint) -> Result<(), CheckpointError> {
        self.append([Change::UpdateSaved(update.sequence, update.encode_to_vec())])
    }

    pub fn remove_update(&self, sequence: u64) -> Result<(), CheckpointError> {
        self.append([Change::UpdateAcknowledged(sequence)])
    }

    fn append(&self, changes: impl IntoIterator<Item = Change>) -> Result<(), CheckpointError> {
        let appended = self.journal.lock().expect("journal lock").append(changes);
        self.counted(appended)
    }

    fn counted<T>(&self, result: Result<T, CheckpointError>) -> Result<T, CheckpointError> {
        if result.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.failed.notify_one();
        }
        result
    }

    /// Resolves after a write has failed (at once if one failed since the last call).
    pub(crate) async fn failed(&self) {
        self.failed.notified().await
    }

    /// How many checkpoint writes have failed since the agent started.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Where sandboxes are.
    pub fn sandboxes(&self) -> &Path {
        &self.sandboxes
    }

    /// Where the sandbox of `task_id` is (not created: see [`Checkpoint::create_sandbox`]).
    pub fn sandbox_path(&self, task_id: &str) -> Result<PathBuf, CheckpointError> {
        Ok(self.sandboxes.join(sandbox_name(task_id)?))
    }

    /// Makes a sandbox directory (and the sandboxes directory, should it have gone).
    pub fn create_sandbox(&self, path: &Path) -> Result<(), CheckpointError> {
        fs::create_dir_all(path).map_err(io_error(path))
    }
}

/// The directory name of a task's sandbox: the task id with every byte outside
/// `[A-Za-z0-9_.-]`, `%` included, written `%XX`, and a leading `.` too (so `.` and `..`, and
/// hidden names, cannot result). One-to-one, so no two task ids share a sandbox (`a/b`,
/// `a_b` and `a%2Fb` are three), and every name is one plain path component. Ids made only of
/// `[A-Za-z0-9_-]` and non-leading dots, Marathon's among them, are their own name, as they
/// were before the escaping, so an agent upgraded in place finds their sandboxes. (The
/// process runtime names its state directories alike.)
pub fn sandbox_name(task_id: &str) -> Result<String, CheckpointError> {
    let mut name = String::with_capacity(task_id.len());
    for (index, byte) in task_id.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || (byte == b'.' && index > 0);
        if plain {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(CheckpointError::SandboxNameTooLong { task_id: task_id.to_owned(), bytes: name.len() });
    }
    Ok(name)
}

/// Records the replay already decoded once (to refuse damage), so they decode.
fn decode_all<'a, T: Message + Default>(bodies: impl Iterator<Item = &'a Vec<u8>>) -> Vec<T> {
    bodies.map(|body| T::decode(body.as_slice()).expect("decoded when replayed")).collect()
}

fn task_id(task: &TaskCheckpoint) -> &str {
    task.info.as_ref().map_or("", |info| &info.task_id)
}

/// One change to what the agent remembers; encoded payloads, so a compaction rewrites them
/// without encoding again.
enum Change {
    TaskSaved(String, Vec<u8>),
    TaskForgotten(String),
    UpdateSaved(u64, Vec<u8>),
    UpdateAcknowledged(u64),
}

impl Change {
    /// Appends the change's record to `out`.
    fn push_record(&self, out: &mut Vec<u8>) {
        match self {
            Change::TaskSaved(_, bytes) => push_record(out, TASK_SAVED, bytes),
            Change::TaskForgotten(task_id) => push_record(out, TASK_FORGOTTEN, task_id.as_bytes()),
            Change::UpdateSaved(_, bytes) => push_record(out, UPDATE_SAVED, bytes),
            Change::UpdateAcknowledged(sequence) => push_record(out, UPDATE_ACKNOWLEDGED, &sequence.to_le_bytes()),
        }
    }

    /// The change a record's payload holds (its body decoded, to refuse what is not whole).
    fn parse(payload: &[u8]) -> Result<Change, String> {
        let (&kind, body) = payload.split_first().ok_or("empty record")?;
        match kind {
            TASK_SAVED => {
                let task = TaskCheckpoint::decode(body).map_err(|e| format!("undecodable task: {e}"))?;
                Ok(Change::TaskSaved(task_id(&task).to_owned(), body.to_vec()))
            }
            TASK_FORGOTTEN => {
                let task_id = std::str::from_utf8(body).map_err(|_| "a task id that is not UTF-8")?;
                Ok(Change::TaskForgotten(task_id.to_owned()))
            }
            UPDATE_SAVED => {
                let update = UpdateCheckpoint::decode(body).map_err(|e| format!("undecodable update: {e}"))?;
                Ok(Change::UpdateSaved(update.sequence, body.to_vec()))
            }
            UPDATE_ACKNOWLEDGED => {
                let sequence = body.try_into().map_err(|_| "an acknowledgement without its sequence")?;
                Ok(Change::UpdateAcknowledged(u64::from_le_bytes(sequence)))
            }
            other => Err(format!("unknown record kind {other}")),
        }
    }
}

/// A record: its payload is its kind, then its body.
fn push_record(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(kind);
    payload.extend_from_slice(body);
    push_framed(out, &payload);
}

/// What the journal holds once replayed: each live record's encoded body.
#[derive(Debug, Default)]
struct Live {
    tasks: HashMap<String, Vec<u8>>,
    updates: BTreeMap<u64, Vec<u8>>,
    /// The bytes a journal of only these would take (roughly: the framing is not counted).
    bytes: u64,
}

impl Live {
    fn apply(&mut self, change: Change) {
        let (added, removed) = match change {
            Change::TaskSaved(task_id, bytes) => (bytes.len(), self.tasks.insert(task_id, bytes)),
            Change::TaskForgotten(task_id) => (0, self.tasks.remove(&task_id)),
            Change::UpdateSaved(sequence, bytes) => (bytes.len(), self.updates.insert(sequence, bytes)),
            Change::UpdateAcknowledged(sequence) => (0, self.updates.remove(&sequence)),
        };
        let removed = removed.map_or(0, |bytes| bytes.len() as u64);
        self.bytes = self.bytes.saturating_add(added as u64).saturating_sub(removed);
    }

    /// A journal of exactly what is live.
    fn snapshot(&self) -> Vec<u8> {
        let framing = (self.tasks.len() + self.updates.len()).saturating_mul(16);
        let mut bytes = Vec::with_capacity(usize::try_from(self.bytes).unwrap_or(0).saturating_add(framing));
        for body in self.tasks.values() {
            push_record(&mut bytes, TASK_SAVED, body);
        }
        for body in self.updates.values() {
            push_record(&mut bytes, UPDATE_SAVED, body);
        }
        bytes
    }
}

#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: File,
    /// The journal file's length.
    len: u64,
    live: Live,
    /// A failed append could not be cut off the file: the next append cuts it first (a
    /// record after a torn one would read as damage at the next start).
    torn: bool,
    /// No compaction is tried below this length: one failed, and trying again at every
    /// append would rewrite the journal each time on a disk that is full anyway.
    compact_after: u64,
}

impl Journal {
    /// Replays `<meta_dir>/journal` (cutting off an incomplete final record) and folds in
    /// an earlier agent's record files.
    fn open(meta_dir: &Path) -> Result<Self, CheckpointError> {
        let path = meta_dir.join("journal");
        let mut live = Live::default();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(CheckpointError::Io { path, source: error }),
        };
        let mut offset = 0;
        while offset < bytes.len() {
            let record = parse_framed(&bytes[offset..]).and_then(|(payload, len)| Ok((Change::parse(payload)?, len)));
            match record {
                Ok((change, len)) => {
                    live.apply(change);
                    offset += len;
                }
                // Damage that ends the file is an append a crash cut short.
                Err(reason) if !whole_record_after(&bytes, offset) => {
                    tracing::warn!(path = %path.display(), offset, %reason, "cutting off an incomplete final journal record");
                    break;
                }
                Err(reason) => {
                    return Err(CheckpointError::Corrupt { path, reason: format!("{reason} at byte {offset}") });
                }
            }
        }
        let legacy = [meta_dir.join("tasks"), meta_dir.join("updates")];
        let legacy_found = legacy.iter().any(|dir| dir.is_dir());
        if legacy_found {
            for task in read_records::<TaskCheckpoint>(&legacy[0])? {
                live.apply(Change::TaskSaved(task_id(&task).to_owned(), task.encode_to_vec()));
            }
            for update in read_records::<UpdateCheckpoint>(&legacy[1])? {
                live.apply(Change::UpdateSaved(update.sequence, update.encode_to_vec()));
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_error(&path))?;
        let mut journal = Self { path, file, len: offset as u64, live, torn: false, compact_after: 0 };
        if offset < bytes.len() || legacy_found {
            // Rewritten whole: without the torn tail (an append after it would be lost
            // behind it at the next replay), with the earlier agent's records.
            journal.compact()?;
            for dir in &legacy {
                if dir.is_dir() {
                    fs::remove_dir_all(dir).map_err(io_error(dir))?;
                }
            }
        }
        Ok(journal)
    }

    /// Appends `changes` and syncs them; compacts when mostly dead. What failed to be
    /// written is not remembered, and is cut off the file again (a half-written record with
    /// whole ones after it would read as damage at the next start). Once the changes are
    /// synced this succeeds, even if the compaction after them fails.
    fn append(&mut self, changes: impl IntoIterator<Item = Change>) -> Result<(), CheckpointError> {
        let changes: Vec<Change> = changes.into_iter().collect();
        if changes.is_empty() {
            return Ok(());
        }
        if self.torn {
            self.file.set_len(self.len).map_err(io_error(&self.path))?;
            self.torn = false;
        }
        let mut bytes = Vec::new();
        for change in &changes {
            change.push_record(&mut bytes);
        }
        if let Err(error) = self.file.write_all(&bytes).and_then(|()| self.file.sync_data()) {
            self.torn = self.file.set_len(self.len).is_err();
            return Err(CheckpointError::Io { path: self.path.clone(), source: error });
        }
        for change in changes {
            self.live.apply(change);
        }
        self.len = self.len.saturating_add(bytes.len() as u64);
        let mostly_dead = self.len > COMPACT_MIN_BYTES && self.len > self.live.bytes.saturating_mul(4);
        if mostly_dead
            && self.len >= self.compact_after
            && let Err(error) = self.compact()
        {
            // The journal is whole, only longer than it need be.
            tracing::warn!(%error, "cannot compact the checkpoint journal; trying again once it has grown");
            self.compact_after = self.len.saturating_add(COMPACT_MIN_BYTES);
        }
        Ok(())
    }

    /// Replaces the journal with one of only what is live. Appends go on through the new
    /// file's own handle: opening it again could fail and leave them going to the old one,
    /// unlinked.
    fn compact(&mut self) -> Result<(), CheckpointError> {
        let bytes = self.live.snapshot();
        self.file = replace_atomically(&self.path, &bytes).map_err(io_error(&self.path))?;
        self.len = bytes.len() as u64;
        Ok(())
    }
}

/// Whether a whole, valid record starts anywhere after the damaged one at `damaged`: then
/// the damage is not a torn final append (a scan only run when recovery meets damage).
fn whole_record_after(bytes: &[u8], damaged: usize) -> bool {
    (damaged + 1..bytes.len())
        .any(|offset| parse_framed(&bytes[offset..]).is_ok_and(|(payload, _)| Change::parse(payload).is_ok()))
}

/// An earlier agent's records: one file each in `dir` (which may not exist).
fn read_records<T: Message + Default>(dir: &Path) -> Result<Vec<T>, CheckpointError> {
    let mut records = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(records),
        Err(error) => return Err(CheckpointError::Io { path: dir.to_owned(), source: error }),
    };
    for entry in entries {
        let path = entry.map_err(io_error(dir))?.path();
        if path.extension().is_none_or(|ext| ext != "pb") {
            continue; // e.g. a `.tmp` left by a crash mid-write: its rename never happened
        }
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        let record = T::decode(bytes.as_slice())
            .map_err(|error| CheckpointError::Corrupt { path: path.clone(), reason: error.to_string() })?;
        records.push(record);
    }
    Ok(records)
}

/// tmp + fsync + rename + fsync(dir): a crash leaves the old or the new file, never half. A
/// failure leaves the old file, and no temporary one to take space on a disk already full.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_atomically(path, bytes).map(drop)
}

/// [`write_atomically`], returning the new file open for writing at its end.
fn replace_atomically(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let tmp = path.with_extension("tmp");
    let written = File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(file)
    });
    match written {
        Ok(file) => {
            // The new file is in place: what follows must go to it, so a directory that will
            // not sync is reported, not treated as a failed replacement.
            let dir = path.parent().unwrap_or(Path::new("."));
            if let Err(error) = File::open(dir).and_then(|dir| dir.sync_all()) {
                tracing::warn!(dir = %dir.display(), %error, "cannot sync the directory of a replaced checkpoint file");
            }
            Ok(file)
        }
        Err(error) => {
            let _ = fs::remove_file(&tmp);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use marina_proto::agent::v1::{TaskInfo, TaskStatus};

    use super::*;

    fn task(task_id: &str, message: &str) -> TaskCheckpoint {
        TaskCheckpoint {
            info: Some(TaskInfo { task_id: task_id.into(), ..Default::default() }),
            status: Some(TaskStatus { message: message.into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn update(sequence: u64) -> UpdateCheckpoint {
        UpdateCheckpoint {
            sequence,
            status: Some(TaskStatus { task_id: format!("t{sequence}"), ..Default::default() }),
        }
    }

    fn sequences(recovered: &Recovered) -> Vec<u64> {
        recovered.updates.iter().map(|u| u.sequence).collect()
    }

    #[test]
    fn what_is_saved_and_not_forgotten_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let (checkpoint, recovered) = Checkpoint::open(dir.path()).unwrap();
        assert!(recovered.meta.agent_id.is_none() && recovered.tasks.is_empty());
        checkpoint.save_meta(&AgentMeta { agent_id: Some("agent-1".into()), highest_epoch: 7 }).unwrap();
        checkpoint.save_tasks(&[task("web.1/x", "staging"), task("gone", "")]).unwrap();
        checkpoint.save_task(&task("web.1/x", "running")).unwrap();
        checkpoint.remove_task("gone").unwrap();
        checkpoint.remove_task("gone").unwrap();
        for sequence in [2, 1, 3] {
            checkpoint.save_update(&update(sequence)).unwrap();
        }
        checkpoint.remove_update(3).unwrap();

        let (_, recovered) = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(recovered.meta.highest_epoch, 7);
        assert_eq!(recovered.tasks, vec![task("web.1/x", "running")]);
        assert_eq!(sequences(&recovered), [1, 2], "in sequence order");
    }

    #[test]
    fn a_torn_final_append_is_cut_off_and_damage_before_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("meta/journal");
        let (checkpoint, _) = Checkpoint::open(dir.path()).unwrap();
        checkpoint.save_update(&update(1)).unwrap();
        let whole = std::fs::metadata(&journal).unwrap().len();
        checkpoint.save_update(&update(2)).unwrap();
        drop(checkpoint);

        // A crash in the middle of the second append.
        let bytes = std::fs::read(&journal).unwrap();
        std::fs::write(&journal, &bytes[..bytes.len() - 3]).unwrap();
        let (checkpoint, recovered) = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(sequences(&recovered), [1]);
        assert_eq!(std::fs::metadata(&journal).unwrap().len(), whole, "the torn record is gone from the file");
        checkpoint.save_update(&update(3)).unwrap();
        let (_, recovered) = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(sequences(&recovered), [1, 3], "what is appended after the cut is kept");

        // A flipped byte in the first record, with a whole one after it, is not a torn write.
        let mut bytes = std::fs::read(&journal).unwrap();
        bytes[marina_daemon::record::HEADER_BYTES + 2] ^= 0xff;
        std::fs::write(&journal, &bytes).unwrap();
        let error = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("meta/journal") && error.contains("corrupt") && error.contains("byte 0"), "{error}");
    }

    #[test]
    fn a_journal_mostly_of_dead_records_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("meta/journal");
        let (checkpoint, _) = Checkpoint::open(dir.path()).unwrap();
        let mut big = task("big", "");
        big.status.as_mut().unwrap().message = "x".repeat(4096);
        for _ in 0..(2 * COMPACT_MIN_BYTES / 4096) {
            checkpoint.save_task(&big).unwrap();
        }
        let len = std::fs::metadata(&journal).unwrap().len();
        assert!(len < COMPACT_MIN_BYTES, "compacted to {len} bytes");
        let (_, recovered) = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(recovered.tasks, vec![big]);
    }

    #[test]
    fn sandbox_names_are_one_to_one_and_plain_ids_keep_theirs() {
        for id in ["prod_web.0c6f8c3e-1b5a-4e0b-9d6f-3e8a2b1c4d5e", "web", "a-b_c.d", "x..y", "a."] {
            assert_eq!(sandbox_name(id).unwrap(), id, "unchanged, as before the escaping");
        }
        let tricky = [
            "..", ".", "...", ".hidden", "a/b", "a_b", "a%2Fb", "a%b", "%", "%25", "a b", "a:b", "a\\b", "é", "a/../b",
            "..%2F", "%2E%2E", "A", "a",
        ];
        let names: Vec<String> = tricky.iter().map(|id| sandbox_name(id).unwrap()).collect();
        let distinct: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), tricky.len(), "{names:?}");
        for (id, name) in tricky.iter().zip(&names) {
            assert!(!name.starts_with('.') && !name.contains('/'), "{id:?} → {name:?}");
            // The escaping is undone exactly: no information is lost, so no two ids meet.
            let mut bytes = Vec::new();
            let mut rest = name.as_bytes();
            while let Some((&byte, tail)) = rest.split_first() {
                if byte == b'%' {
                    bytes.push(u8::from_str_radix(std::str::from_utf8(&tail[..2]).unwrap(), 16).unwrap());
                    rest = &tail[2..];
                } else {
                    bytes.push(byte);
                    rest = tail;
                }
            }
            assert_eq!(String::from_utf8(bytes).unwrap(), *id);
        }
        assert_eq!(sandbox_name("..").unwrap(), "%2E.");
        assert_eq!(sandbox_name("a/b").unwrap(), "a%2Fb");
        assert_eq!(sandbox_name("a%2Fb").unwrap(), "a%252Fb");
        assert!(sandbox_name(&"x".repeat(MAX_NAME_BYTES)).is_ok());
        let error = sandbox_name(&":".repeat(100)).unwrap_err().to_string();
        assert!(error.contains("300 bytes"), "{error}");
        assert!(sandbox_name("").is_err());
    }

    /// On a disk with no room left, an append fails naming the journal and the error, counts
    /// as a failure, and leaves the journal whole: what follows once there is room again is
    /// recovered with what came before.
    #[test]
    fn a_failed_append_on_a_full_disk_leaves_the_journal_whole() {
        let disk = crate::test_disk::SmallDisk::mount(256 * 1024);
        let (checkpoint, _) = Checkpoint::open(disk.path()).unwrap();
        checkpoint.save_update(&update(1)).unwrap();
        let filler = disk.fill();
        let mut big = update(2);
        big.status.as_mut().unwrap().message = "x".repeat(64 * 1024);
        let error = checkpoint.save_update(&big).unwrap_err().to_string();
        assert!(error.contains("No space left on device") && error.contains("meta/journal"), "{error}");
        assert_eq!(checkpoint.failures(), 1);
        std::fs::remove_file(filler).unwrap();
        checkpoint.save_update(&update(3)).unwrap();
        drop(checkpoint);
        let (_, recovered) = Checkpoint::open(disk.path()).unwrap();
        assert_eq!(sequences(&recovered), [1, 3]);
    }

    #[test]
    fn an_earlier_agents_record_files_are_folded_into_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (tasks, updates) = (dir.path().join("meta/tasks"), dir.path().join("meta/updates"));
        std::fs::create_dir_all(&tasks).unwrap();
        std::fs::create_dir_all(&updates).unwrap();
        std::fs::write(tasks.join("web.pb"), task("web", "running").encode_to_vec()).unwrap();
        std::fs::write(updates.join("00000000000000000004.pb"), update(4).encode_to_vec()).unwrap();
        std::fs::write(updates.join("00000000000000000005.tmp"), b"half").unwrap();

        let (_, recovered) = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(recovered.tasks, vec![task("web", "running")]);
        assert_eq!(sequences(&recovered), [4]);
        assert!(!tasks.exists() && !updates.exists(), "the old layout is gone once folded in");
        let (_, recovered) = Checkpoint::open(dir.path()).unwrap();
        assert_eq!((recovered.tasks.len(), sequences(&recovered)), (1, vec![4]));

        std::fs::create_dir_all(&updates).unwrap();
        std::fs::write(updates.join("00000000000000000009.pb"), b"\xff\xff\xff").unwrap();
        let error = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("00000000000000000009.pb") && error.contains("corrupt"), "{error}");
    }
}
