//! The runtime's state directory: what it must remember about each task to find it again
//! after the agent restarts.
//!
//! ```text
//! <state_dir>/tasks/<key>/task.json   TaskRecord, written by the runtime once the task runs
//! <state_dir>/tasks/<key>/exit.json   ExitRecord, written by the task's supervisor
//! ```
//! `<key>` is the task id with every byte outside `[A-Za-z0-9_.-]` (and a leading `.`)
//! escaped as `%XX`, so any task id is one safe directory name. Both files are written to a
//! temporary name, fsync'd and renamed, so a reader never sees half of one. They are private
//! to the agent's user (0600): the record holds the task's environment, which may carry
//! secrets.
//!
//! The exit status lives here rather than in the sandbox because the sandbox is the task's
//! own writable working directory: a task must not be able to forge how it ended.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use marina_runtime::{ExitStatus, RuntimeKind, TaskHandle};
use serde::{Deserialize, Serialize};

use crate::procfs::ProcessIdentity;

const RECORD_FILE: &str = "task.json";
const EXIT_FILE: &str = "exit.json";

/// Bumped on any incompatible change of [`TaskRecord`]; a record of another version is
/// reported, never guessed at.
pub const RECORD_FORMAT: u32 = 1;

/// What the runtime remembers about one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub format: u32,
    pub task_id: String,
    /// The spec's labels, for `list`.
    pub labels: BTreeMap<String, String>,
    /// The task's working directory and log files.
    pub sandbox: PathBuf,
    /// The task's complete environment, so `exec` runs next to it after a restart too.
    pub env: BTreeMap<String, String>,
    /// The `marina-supervise` process; its pid is also its process group.
    pub supervisor: ProcessIdentity,
    /// The task's main process; its pid is also the task's process group.
    pub task: ProcessIdentity,
    pub started_at: SystemTime,
}

impl TaskRecord {
    /// The handle `start` returned and `list` returns: the supervisor's pid and start time
    /// name the task's incarnation, the sandbox rides along for whoever reads the handle.
    pub fn handle(&self) -> TaskHandle {
        TaskHandle {
            runtime: RuntimeKind::Process,
            task_id: self.task_id.clone(),
            id: format!("{}:{}", self.supervisor.pid, self.supervisor.start_time),
            data: self.sandbox.to_string_lossy().into_owned(),
        }
    }

    /// Whether `handle` names this incarnation of the task (not an earlier one of the same id).
    pub fn is_named_by(&self, handle: &TaskHandle) -> bool {
        handle.runtime == RuntimeKind::Process && handle.task_id == self.task_id && handle.id == self.handle().id
    }
}

/// How a task ended, as its supervisor recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it (its memory limit was reached).
    #[serde(default)]
    pub oom_killed: bool,
    pub finished_at: SystemTime,
}

impl ExitRecord {
    pub fn status(&self) -> ExitStatus {
        ExitStatus { code: self.code, signal: self.signal, oom_killed: self.oom_killed }
    }
}

/// The layout of the state directory.
#[derive(Debug, Clone)]
pub struct Store {
    tasks: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the state directory.
    pub fn open(state_dir: &Path) -> io::Result<Store> {
        let tasks = state_dir.join("tasks");
        DirBuilder::new().recursive(true).mode(0o700).create(&tasks)?;
        Ok(Store { tasks })
    }

    pub fn task_dir(&self, task_id: &str) -> PathBuf {
        self.tasks.join(key(task_id))
    }

    pub fn exit_path(&self, task_id: &str) -> PathBuf {
        self.task_dir(task_id).join(EXIT_FILE)
    }

    /// Makes the task's directory, empty: whatever an earlier incarnation left is gone.
    pub fn prepare(&self, task_id: &str) -> io::Result<()> {
        let dir = self.task_dir(task_id);
        remove_dir_if_present(&dir)?;
        DirBuilder::new().mode(0o700).create(&dir)
    }

    pub fn save(&self, record: &TaskRecord) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomically(&self.task_dir(&record.task_id).join(RECORD_FILE), &json)
    }

    /// The task's record, `None` if the runtime does not know the task.
    pub fn load(&self, task_id: &str) -> io::Result<Option<TaskRecord>> {
        read_record(&self.task_dir(task_id).join(RECORD_FILE))
    }

    /// How the task ended, `None` while its supervisor has not recorded it.
    pub fn load_exit(&self, task_id: &str) -> io::Result<Option<ExitRecord>> {
        let path = self.exit_path(task_id);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| invalid(&path, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Forgets the task: its record and its exit status. Idempotent.
    pub fn remove(&self, task_id: &str) -> io::Result<()> {
        remove_dir_if_present(&self.task_dir(task_id))
    }

    /// Every readable record. A directory without a record (a start cut short) is skipped; a
    /// record that cannot be read is reported with its path and skipped, so one bad file does
    /// not hide every other task from a recovering agent.
    pub fn load_all(&self) -> io::Result<Vec<TaskRecord>> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.tasks)? {
            let path = entry?.path().join(RECORD_FILE);
            match read_record(&path) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable task record"),
            }
        }
        Ok(records)
    }
}

fn read_record(path: &Path) -> io::Result<Option<TaskRecord>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let record: TaskRecord = serde_json::from_slice(&bytes).map_err(|e| invalid(path, e))?;
    if record.format != RECORD_FORMAT {
        let message = format!("record format {} (this runtime reads {RECORD_FORMAT})", record.format);
        return Err(invalid(path, message));
    }
    Ok(Some(record))
}

fn invalid(path: &Path, error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {error}", path.display()))
}

fn remove_dir_if_present(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` so that readers see the old content or the new, never a part:
/// a private temporary file next to it, fsync'd, then renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// The directory name of a task id (see the module docs).
pub fn key(task_id: &str) -> String {
    let mut key = String::with_capacity(task_id.len());
    for (i, byte) in task_id.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-') || (byte == b'.' && i > 0);
        if plain {
            key.push(char::from(byte));
        } else {
            key.push_str(&format!("%{byte:02X}"));
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_safe_single_path_components() {
        assert_eq!(key("app.web-1_a"), "app.web-1_a");
        assert_eq!(key("../etc"), "%2E.%2Fetc");
        assert_eq!(key(".."), "%2E.");
        assert_eq!(key("a b%c"), "a%20b%25c");
        assert_eq!(key("é"), "%C3%A9");
    }

    #[test]
    fn distinct_ids_get_distinct_keys() {
        assert_ne!(key("a/b"), key("a%2Fb"));
    }

    #[test]
    fn records_round_trip_and_foreign_formats_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let identity = ProcessIdentity { pid: 10, start_time: 20 };
        let record = TaskRecord {
            format: RECORD_FORMAT,
            task_id: "t/1".into(),
            labels: BTreeMap::from([("a".into(), "b".into())]),
            sandbox: "/sandbox".into(),
            env: BTreeMap::new(),
            supervisor: identity,
            task: identity,
            started_at: SystemTime::UNIX_EPOCH,
        };
        store.prepare(&record.task_id).expect("prepare");
        store.save(&record).expect("save");
        assert_eq!(store.load("t/1").expect("load"), Some(record.clone()));
        assert_eq!(store.load_all().expect("load_all"), vec![record.clone()]);
        assert_eq!(record.handle().id, "10:20");

        let future = TaskRecord { format: RECORD_FORMAT + 1, ..record };
        store.save(&future).expect("save");
        let error = store.load("t/1").expect_err("a foreign format is refused");
        assert!(error.to_string().contains("record format"), "{error}");
        assert!(store.load_all().expect("load_all").is_empty(), "an unreadable record is skipped");

        store.remove("t/1").expect("remove");
        store.remove("t/1").expect("remove is idempotent");
        assert_eq!(store.load("t/1").expect("load"), None);
    }
}
