//! Readiness probes of new instances, run as they become due.

use std::sync::Arc;
use std::time::Duration;

use marina_proto::agent::v1::TaskState;
use tokio::time::Instant;

use crate::model;
use crate::readiness::{Probe, ReadinessResult};

use super::{Leader, READINESS_TICK};

impl Leader {
    /// Probes the readiness checks of new instances as they become due (see
    /// [`crate::readiness`]); each probe runs on its own, so a slow one delays no other.
    pub(super) async fn readiness_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(READINESS_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.ended.cancelled() => return,
            }
            for probe in self.due_probes(Instant::now()) {
                let leader = self.clone();
                tokio::spawn(async move {
                    let result = leader.prober.probe(&probe).await;
                    leader.record_readiness(result);
                });
            }
        }
    }

    /// Running instances of an app's current config with a readiness check, not ready yet,
    /// whose next probe is due; each gets its next due time.
    pub(super) fn due_probes(&self, now: Instant) -> Vec<Probe> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut due = Vec::new();
        for (app_id, entry) in &state.apps {
            let Some(active) = entry.active.as_ref().filter(|a| !a.readiness_checks.is_empty()) else { continue };
            let config_version = model::config_version(active);
            let interval = Duration::from_secs(u64::from(active.readiness_checks[0].interval_seconds.max(1)));
            for instance in state.instances.of_app_mut(app_id) {
                let waiting = instance.record.config_version == config_version
                    && instance.state == TaskState::TaskRunning
                    && !instance.killing
                    && instance.unreachable_since.is_none()
                    && !instance.readiness.as_ref().is_some_and(|r| r.ready)
                    && instance.next_probe.is_none_or(|next| next <= now);
                if !waiting {
                    continue;
                }
                let record = &instance.record;
                if let Some(probe) =
                    Probe::of(active, &record.task_id, &record.host, &record.ports, &instance.ip_addresses)
                {
                    instance.next_probe = Some(marina_daemon::time::deadline(now, interval));
                    due.push(probe);
                }
            }
        }
        due
    }

    pub(super) fn record_readiness(&self, result: ReadinessResult) {
        let mut state = self.lock();
        let Some(instance) = state.instances.get_mut(&result.task_id) else { return };
        let became_ready = result.ready && !instance.readiness.as_ref().is_some_and(|r| r.ready);
        let app_id = instance.record.app_id.clone();
        instance.readiness = Some(result);
        if became_ready {
            tracing::info!(app = %app_id, task = %instance.record.task_id, "instance ready");
            state.instances.touch(&app_id);
            drop(state);
            self.converge_now.notify_one();
        }
    }
}
