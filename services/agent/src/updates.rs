//! Status updates, delivered at least once: each is checkpointed before it is sent, resent
//! until a scheduler acknowledges it (through the master), and survives agent restarts and
//! master failovers. Per task, only the oldest unacknowledged update is in flight (as in
//! Mesos), so a scheduler never sees a task's states out of order.

use std::collections::BTreeMap;
use std::sync::Mutex;
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
    pending: BTreeMap<u64, TaskStatus>,
    next_sequence: u64,
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
                state.pending.insert(update.sequence, status);
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
        state.pending.insert(sequence, status.clone());
        drop(state);
        self.changed.notify_waiters();
        Ok(status)
    }

    /// Drops the update a scheduler acknowledged; returns it (None if unknown: a duplicate ack).
    pub fn acknowledge(&self, task_id: &str, uuid: &str) -> Result<Option<TaskStatus>, CheckpointError> {
        let mut state = self.state.lock().expect("updates lock");
        let Some(sequence) =
            state.pending.iter().find(|(_, s)| s.task_id == task_id && s.uuid == uuid).map(|(sequence, _)| *sequence)
        else {
            return Ok(None);
        };
        self.checkpoint.remove_update(sequence)?;
        let status = state.pending.remove(&sequence);
        drop(state);
        self.changed.notify_waiters();
        Ok(status)
    }

    /// The updates that may be sent now: per task, the oldest unacknowledged one; in queue order.
    pub fn deliverable(&self) -> Vec<TaskStatus> {
        let state = self.state.lock().expect("updates lock");
        let mut seen = std::collections::HashSet::new();
        state.pending.values().filter(|status| seen.insert(status.task_id.clone())).cloned().collect()
    }

    pub fn pending_count(&self) -> usize {
        self.state.lock().expect("updates lock").pending.len()
    }

    /// Whether an update for `task_id` is still unacknowledged.
    pub fn has_pending(&self, task_id: &str) -> bool {
        self.state.lock().expect("updates lock").pending.values().any(|status| status.task_id == task_id)
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
