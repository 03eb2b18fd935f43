//! The agent's work dir: what it must remember across restarts, written atomically before
//! it acts on it.
//!
//! ```text
//! <work_dir>/meta/agent.json           agent id, highest master epoch obeyed
//! <work_dir>/meta/tasks/<id>.pb        one TaskCheckpoint per task not yet forgotten
//! <work_dir>/meta/updates/<seq>.pb     status updates not yet acknowledged
//! <work_dir>/sandboxes/<task_id>/      each task's sandbox (its output for file-based runtimes)
//! ```
//!
//! A record that cannot be read is an error naming the file: starting fresh would orphan
//! running tasks and lose unacknowledged updates.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use marina_proto::agent::v1::{TaskCheckpoint, UpdateCheckpoint};
use prost::Message;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
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
}

impl Checkpoint {
    /// Opens the work dir, creating it if new, and reads what it holds.
    pub fn open(work_dir: &Path) -> Result<(Self, Recovered), CheckpointError> {
        let meta_dir = work_dir.join("meta");
        let sandboxes = work_dir.join("sandboxes");
        for dir in [meta_dir.join("tasks"), meta_dir.join("updates"), sandboxes.clone()] {
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        let checkpoint = Self { meta_dir, sandboxes };
        let meta_path = checkpoint.meta_dir.join("agent.json");
        let meta = match fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| CheckpointError::Corrupt { path: meta_path.clone(), reason: error.to_string() })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => AgentMeta::default(),
            Err(error) => return Err(CheckpointError::Io { path: meta_path, source: error }),
        };
        let tasks = read_records::<TaskCheckpoint>(&checkpoint.meta_dir.join("tasks"))?;
        let mut updates = read_records::<UpdateCheckpoint>(&checkpoint.meta_dir.join("updates"))?;
        updates.sort_by_key(|update| update.sequence);
        Ok((checkpoint, Recovered { meta, tasks, updates }))
    }

    pub fn save_meta(&self, meta: &AgentMeta) -> Result<(), CheckpointError> {
        let path = self.meta_dir.join("agent.json");
        let bytes = serde_json::to_vec_pretty(meta).expect("agent meta serializes");
        write_atomically(&path, &bytes).map_err(io_error(&path))
    }

    pub fn save_task(&self, task: &TaskCheckpoint) -> Result<(), CheckpointError> {
        let path = self.task_path(task.info.as_ref().map_or("", |info| &info.task_id));
        write_atomically(&path, &task.encode_to_vec()).map_err(io_error(&path))
    }

    pub fn remove_task(&self, task_id: &str) -> Result<(), CheckpointError> {
        remove_if_present(&self.task_path(task_id))
    }

    pub fn save_update(&self, update: &UpdateCheckpoint) -> Result<(), CheckpointError> {
        let path = self.update_path(update.sequence);
        write_atomically(&path, &update.encode_to_vec()).map_err(io_error(&path))
    }

    pub fn remove_update(&self, sequence: u64) -> Result<(), CheckpointError> {
        remove_if_present(&self.update_path(sequence))
    }

    /// A task's sandbox directory (created).
    pub fn sandbox(&self, task_id: &str) -> Result<PathBuf, CheckpointError> {
        let path = self.sandboxes.join(file_safe(task_id));
        fs::create_dir_all(&path).map_err(io_error(&path))?;
        Ok(path)
    }

    fn task_path(&self, task_id: &str) -> PathBuf {
        self.meta_dir.join("tasks").join(format!("{}.pb", file_safe(task_id)))
    }

    fn update_path(&self, sequence: u64) -> PathBuf {
        self.meta_dir.join("updates").join(format!("{sequence:020}.pb"))
    }
}

/// Task ids come from schedulers: keep them from escaping the directory.
fn file_safe(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

fn read_records<T: Message + Default>(dir: &Path) -> Result<Vec<T>, CheckpointError> {
    let mut records = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
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

fn remove_if_present(path: &Path) -> Result<(), CheckpointError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(CheckpointError::Io { path: path.to_owned(), source: error }),
    }
}

/// tmp + fsync + rename + fsync(dir): a crash leaves the old or the new record, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use marina_proto::agent::v1::{TaskInfo, TaskStatus};

    use super::*;

    #[test]
    fn records_round_trip_and_corruption_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (checkpoint, recovered) = Checkpoint::open(dir.path()).unwrap();
        assert!(recovered.meta.agent_id.is_none() && recovered.tasks.is_empty());
        checkpoint.save_meta(&AgentMeta { agent_id: Some("agent-1".into()), highest_epoch: 7 }).unwrap();
        let task = TaskCheckpoint {
            info: Some(TaskInfo { task_id: "web.1/x".into(), ..Default::default() }),
            status: Some(TaskStatus::default()),
            ..Default::default()
        };
        checkpoint.save_task(&task).unwrap();
        checkpoint.save_update(&UpdateCheckpoint { sequence: 2, status: None }).unwrap();
        checkpoint.save_update(&UpdateCheckpoint { sequence: 1, status: None }).unwrap();

        let (checkpoint, recovered) = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(recovered.meta.highest_epoch, 7);
        assert_eq!(recovered.tasks, vec![task]);
        assert_eq!(recovered.updates.iter().map(|u| u.sequence).collect::<Vec<_>>(), vec![1, 2]);
        checkpoint.remove_task("web.1/x").unwrap();
        checkpoint.remove_task("web.1/x").unwrap();

        std::fs::write(dir.path().join("meta/updates/00000000000000000009.pb"), b"\xff\xff\xff").unwrap();
        let error = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("00000000000000000009.pb") && error.contains("corrupt"), "{error}");
    }
}
