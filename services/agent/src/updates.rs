//! Status updates, delivered at least once: each is checkpointed before it is sent, resent
//! until a scheduler acknowledges it (through the master), and survives agent restarts and
//! master failovers. Per task, only the oldest unacknowledged update is in flight (as in
//! Mesos), so a scheduler never sees a task's states out of order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use marina_proto::agent::v1::{TaskStatus, UpdateCheckpoint};
use tokio::sync::Notify;

use crate::checkpoint::{Checkpoint, CheckpointError};

pub struct StatusUpdates {
    checkpoint: Checkpoint,
    state: Mutex<State>,
    /// Signalled when an update is queued or acknowledged.
    changed: Notify,
}

#[derive(Default)]
struct State {
    pending: BTreeMap<u64, Arc<TaskStatus>>,
    /// `pending` by uuid, and how many updates each task has pending: acknowledgements and
    /// `has_pending` would otherwise scan every pending update.
    by_uuid: HashMap<String, u64>,
    per_task: HashMap<String, usize>,
    next_sequence: u64,
    /// Bumped by every push and acknowledgement.
    version: u64,
}

impl State {
    fn insert(&mut self, sequence: u64, status: TaskStatus) {
        self.by_uuid.insert(status.uuid.clone(), sequence);
        *self.per_task.entry(status.task_id.clone()).or_default() += 1;
        self.pending.insert(sequence, Arc::new(status));
        self.version += 1;
    }

    fn remove(&mut self, sequence: u64) -> Option<TaskStatus> {
        let status = Arc::unwrap_or_clone(self.pending.remove(&sequence)?);
        self.version += 1;
        self.by_uuid.remove(&status.uuid);
        if let Some(count) = self.per_task.get_mut(&status.task_id) {
            *count -= 1;
            if *count == 0 {
                self.per_task.remove(&status.task_id);
            }
        }
        Some(status)
    }
}

pub fn now_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl StatusUpdates {
    pub fn new(checkpoint: Checkpoint, recovered: Vec<UpdateCheckpoint>) -> Self {
        let mut state = State::default();
        for update in recovered {
            state.next_sequence = state.next_sequence.max(update.sequence + 1);
            if let Some(status) = update.status {
                state.insert(update.sequence, status);
            }
        }
        Self { checkpoint, state: Mutex::new(state), changed: Notify::new() }
    }

    /// Queues `status` for delivery (assigning its uuid and timestamp) after checkpointing it.
    pub fn push(&self, mut status: TaskStatus) -> Result<TaskStatus, CheckpointError> {
        status.uuid = marina_daemon::ids::uuid();
        status.timestamp = now_seconds();
        let mut state = self.state.lock().expect("updates lock");
        let sequence = state.next_sequence;
        self.checkpoint.save_update(&UpdateCheckpoint { sequence, status: Some(status.clone()) })?;
        state.next_sequence += 1;
        state.insert(sequence, status.clone());
        drop(state);
        self.changed.notify_waiters();
        Ok(status)
    }

    /// Drops the update a scheduler acknowledged; returns it (None if unknown: a duplicate ack).
    pub fn acknowledge(&self, task_id: &str, uuid: &str) -> Result<Option<TaskStatus>, CheckpointError> {
        let mut state = self.state.lock().expect("updates lock");
        let Some(&sequence) = state.by_uuid.get(uuid).filter(|sequence| state.pending[sequence].task_id == task_id)
        else {
            return Ok(None);
        };
        self.checkpoint.remove_update(sequence)?;
        let status = state.remove(sequence);
        drop(state);
        self.changed.notify_waiters();
        Ok(status)
    }

    /// The updates that may be sent now: per task, the oldest unacknowledged one; in queue order.
    /// Shared, not copied: this runs at every retry tick and every change, and only the
    /// updates actually due are copied into messages.
    pub fn deliverable(&self) -> Vec<Arc<TaskStatus>> {
        let state = self.state.lock().expect("updates lock");
        let mut seen = std::collections::HashSet::new();
        state.pending.values().filter(|status| seen.insert(status.task_id.as_str())).cloned().collect()
    }

    /// Changes whenever an update is queued or acknowledged: what is deliverable may have
    /// changed only if this did.
    pub fn version(&self) -> u64 {
        self.state.lock().expect("updates lock").version
    }

    pub fn pending_count(&self) -> usize {
        self.state.lock().expect("updates lock").pending.len()
    }

    /// Whether an update for `task_id` is still unacknowledged.
    pub fn has_pending(&self, task_id: &str) -> bool {
        self.state.lock().expect("updates lock").per_task.contains_key(task_id)
    }

    /// Resolves at the next push or acknowledgement.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(task_id: &str, message: &str) -> TaskStatus {
        TaskStatus { task_id: task_id.into(), message: message.into(), ..Default::default() }
    }

    #[test]
    fn one_update_per_task_in_flight_and_acks_survive_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (checkpoint, _) = Checkpoint::open(dir.path()).unwrap();
        let updates = StatusUpdates::new(checkpoint, Vec::new());
        let a1 = updates.push(status("a", "starting")).unwrap();
        updates.push(status("b", "starting")).unwrap();
        updates.push(status("a", "running")).unwrap();
        let deliverable: Vec<String> =
            updates.deliverable().iter().map(|s| format!("{}:{}", s.task_id, s.message)).collect();
        assert_eq!(deliverable, ["a:starting", "b:starting"]);
        assert!(updates.acknowledge("a", &a1.uuid).unwrap().is_some());
        assert!(updates.acknowledge("a", &a1.uuid).unwrap().is_none(), "a duplicate ack is harmless");

        // A restart recovers exactly the unacknowledged updates, in order.
        let (checkpoint, recovered) = Checkpoint::open(dir.path()).unwrap();
        let updates = StatusUpdates::new(checkpoint, recovered.updates);
        let deliverable: Vec<String> =
            updates.deliverable().iter().map(|s| format!("{}:{}", s.task_id, s.message)).collect();
        assert_eq!(deliverable, ["b:starting", "a:running"]);
        let next = updates.push(status("c", "x")).unwrap();
        assert!(!next.uuid.is_empty() && next.timestamp > 0.0);
        assert_eq!(updates.pending_count(), 3);
    }
}
