//! Status updates, delivered at least once: each is checkpointed before it is sent, resent
//! until a scheduler acknowledges it (through the master), and survives agent restarts and
//! master failovers. Per task, only the oldest unacknowledged update is in flight (as in
//! Mesos), so a scheduler never sees a task's states out of order.
//!
//! A checkpoint that fails (a full disk, an I/O error) loses no update: it is queued and
//! delivered all the same, held in memory until [`StatusUpdates::retry_unsaved`] manages to
//! write it (the agent tries every second), and counted in the agent's metrics. Only an
//! agent that dies before then loses it, as it would have lost it without a disk. The same
//! goes for an acknowledgement that cannot be recorded: the update is dropped from memory,
//! and the record written later (until then a restart would send it again, a harmless
//! duplicate).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use marina_proto::agent::v1::{TaskStatus, UpdateCheckpoint};
use tokio::sync::Notify;

use crate::checkpoint::Checkpoint;

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
    /// Pending updates whose checkpoint failed: delivered from memory until written.
    unsaved: BTreeSet<u64>,
    /// Pending updates never to be written (see [`StatusUpdates::push_unsaved`]).
    volatile: HashSet<u64>,
    /// Acknowledged updates whose acknowledgement could not be written yet.
    unrecorded_acks: BTreeSet<u64>,
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
        self.volatile.remove(&sequence);
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
            state.next_sequence = state.next_sequence.max(update.sequence.saturating_add(1));
            if let Some(status) = update.status {
                state.insert(update.sequence, status);
            }
        }
        Self { checkpoint, state: Mutex::new(state), changed: Notify::new() }
    }

    /// Queues `status` for delivery (assigning its uuid and timestamp), checkpointed first;
    /// if the checkpoint fails, it is queued all the same and written later.
    pub fn push(&self, status: TaskStatus) -> TaskStatus {
        self.queue(status, true)
    }

    /// Queues `status` without ever writing it: the answer to a launch the agent refused,
    /// of which nothing may reach its disk. It is delivered while the agent lives; an agent
    /// restarted before then no longer knows the task, and reconciliation says so.
    pub fn push_unsaved(&self, status: TaskStatus) -> TaskStatus {
        self.queue(status, false)
    }

    fn queue(&self, mut status: TaskStatus, durable: bool) -> TaskStatus {
        status.uuid = marina_daemon::ids::uuid();
        status.timestamp = now_seconds();
        let mut state = self.state.lock().expect("updates lock");
        let sequence = state.next_sequence;
        state.next_sequence = sequence.checked_add(1).expect("fewer than 2^64 status updates");
        if !durable {
            state.volatile.insert(sequence);
        } else if let Err(error) =
            self.checkpoint.save_update(&UpdateCheckpoint { sequence, status: Some(status.clone()) })
        {
            tracing::error!(
                task = %status.task_id,
                state = ?status.state(),
                %error,
                "cannot checkpoint a status update; delivering it from memory and writing it once the disk allows"
            );
            state.unsaved.insert(sequence);
        }
        state.insert(sequence, status.clone());
        drop(state);
        self.changed.notify_waiters();
        status
    }

    /// Drops the update a scheduler acknowledged; returns it (None if unknown: a duplicate ack).
    pub fn acknowledge(&self, task_id: &str, uuid: &str) -> Option<TaskStatus> {
        let mut state = self.state.lock().expect("updates lock");
        let sequence = *state.by_uuid.get(uuid).filter(|sequence| state.pending[sequence].task_id == task_id)?;
        let written = !state.unsaved.remove(&sequence) && !state.volatile.contains(&sequence);
        let status = state.remove(sequence);
        if written && let Err(error) = self.checkpoint.remove_update(sequence) {
            tracing::warn!(task = task_id, %error, "cannot record an acknowledgement; writing it once the disk allows");
            state.unrecorded_acks.insert(sequence);
        }
        drop(state);
        self.changed.notify_waiters();
        status
    }

    /// Writes what earlier checkpoints failed to write, oldest first, stopping at the first
    /// failure (the disk is still full: the rest waits for the next try). Returns how much
    /// is left to write.
    pub fn retry_unsaved(&self) -> usize {
        let mut state = self.state.lock().expect("updates lock");
        while let Some(&sequence) = state.unsaved.first() {
            if let Some(status) = state.pending.get(&sequence) {
                let update = UpdateCheckpoint { sequence, status: Some(TaskStatus::clone(status)) };
                if self.checkpoint.save_update(&update).is_err() {
                    break;
                }
            }
            state.unsaved.remove(&sequence);
        }
        while let Some(&sequence) = state.unrecorded_acks.first() {
            if self.checkpoint.remove_update(sequence).is_err() {
                break;
            }
            state.unrecorded_acks.remove(&sequence);
        }
        state.unsaved.len() + state.unrecorded_acks.len()
    }

    /// How many updates and acknowledgements wait to be written.
    pub fn backlog(&self) -> usize {
        let state = self.state.lock().expect("updates lock");
        state.unsaved.len() + state.unrecorded_acks.len()
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
        let a1 = updates.push(status("a", "starting"));
        updates.push(status("b", "starting"));
        updates.push(status("a", "running"));
        let deliverable: Vec<String> =
            updates.deliverable().iter().map(|s| format!("{}:{}", s.task_id, s.message)).collect();
        assert_eq!(deliverable, ["a:starting", "b:starting"]);
        assert!(updates.acknowledge("a", &a1.uuid).is_some());
        assert!(updates.acknowledge("a", &a1.uuid).is_none(), "a duplicate ack is harmless");

        // A restart recovers exactly the unacknowledged updates, in order.
        let (checkpoint, recovered) = Checkpoint::open(dir.path()).unwrap();
        let updates = StatusUpdates::new(checkpoint, recovered.updates);
        let deliverable: Vec<String> =
            updates.deliverable().iter().map(|s| format!("{}:{}", s.task_id, s.message)).collect();
        assert_eq!(deliverable, ["b:starting", "a:running"]);
        let next = updates.push(status("c", "x"));
        assert!(!next.uuid.is_empty() && next.timestamp > 0.0);
        assert_eq!(updates.pending_count(), 3);
    }

    fn messages(updates: &StatusUpdates) -> Vec<String> {
        updates.deliverable().iter().map(|s| format!("{}:{}", s.task_id, s.message)).collect()
    }

    /// A full disk for real (a tmpfs): updates whose checkpoint fails are delivered all the
    /// same, written once there is room, and then survive a restart; acknowledgements that
    /// cannot be written drop their updates at once and are recorded later.
    #[test]
    fn a_full_disk_loses_no_update() {
        let disk = crate::test_disk::SmallDisk::mount(256 * 1024);
        let (checkpoint, _) = Checkpoint::open(disk.path()).unwrap();
        let updates = StatusUpdates::new(checkpoint.clone(), Vec::new());
        let saved: Vec<TaskStatus> = (0..300).map(|i| updates.push(status(&format!("a{i}"), "saved"))).collect();
        assert_eq!(updates.backlog(), 0);
        let filler = disk.fill();
        // Bigger than what is left of the journal's last page: these cannot be written.
        let big = "x".repeat(16 * 1024);
        let b = updates.push(status("b", &big));
        updates.push(status("c", &big));
        assert_eq!(messages(&updates).len(), 302, "all delivered, from memory if need be");
        assert_eq!(updates.backlog(), 2);
        assert!(checkpoint.failures() >= 2);
        // 300 records of acknowledgement take more than the rest of a page: some fail.
        for status in &saved {
            assert!(updates.acknowledge(&status.task_id, &status.uuid).is_some(), "dropped, written or not");
        }
        let backlog = updates.backlog();
        assert!(backlog > 2, "some acknowledgements wait to be written ({backlog})");
        assert_eq!(updates.retry_unsaved(), backlog, "still no room");
        assert!(updates.acknowledge("b", &b.uuid).is_some(), "an unwritten update needs no record to go");
        assert_eq!(updates.backlog(), backlog - 1);

        std::fs::remove_file(filler).unwrap();
        assert_eq!(updates.retry_unsaved(), 0);
        let (_, recovered) = Checkpoint::open(disk.path()).unwrap();
        let updates = StatusUpdates::new(checkpoint, recovered.updates);
        assert_eq!(messages(&updates), [format!("c:{big}")], "the a's and b acknowledged, c written late");
    }

    #[test]
    fn refused_launches_are_answered_without_touching_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (checkpoint, _) = Checkpoint::open(dir.path()).unwrap();
        let journal = dir.path().join("meta/journal");
        let before = std::fs::metadata(&journal).unwrap().len();
        let updates = StatusUpdates::new(checkpoint, Vec::new());
        let refused = updates.push_unsaved(status("../x", "refused"));
        assert_eq!(messages(&updates), ["../x:refused"]);
        assert_eq!((updates.backlog(), updates.retry_unsaved()), (0, 0), "nothing to write, ever");
        assert!(updates.acknowledge("../x", &refused.uuid).is_some());
        assert_eq!(std::fs::metadata(&journal).unwrap().len(), before, "the journal never saw it");
    }
}
