//! Convergence: each round decides, for every app that changed (every app once a
//! second), what to launch and what to kill; failed launches back off.

use std::sync::Arc;
use std::time::Duration;

use marina_proto::agent::v1::TaskState;
use tokio::time::Instant;

use crate::app::Timestamp;
use crate::engine::{self, InstanceView};
use crate::model;

use super::deployments::advance_deployments;
use super::{CONVERGE_GAP, FULL_ROUND_EVERY, Instance, Leader, TaskFailure, back_off};

impl Leader {
    pub(super) async fn converge_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.converge_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.converge_now.notified() => {}
                () = self.ended.cancelled() => return,
            }
            let round = Instant::now();
            self.converge().await;
            // Rounds are triggered by every status update. After a round that took a while
            // (a busy cluster), a pause as long (at most CONVERGE_GAP) lets the burst of
            // updates meanwhile share the next round instead of each paying for one; an
            // idle cluster's rounds take microseconds and pause as little.
            tokio::time::sleep(round.elapsed().min(CONVERGE_GAP)).await;
        }
    }

    /// One round: decide launches and kills for the apps that changed since the last round
    /// (for every app once per [`FULL_ROUND_EVERY`]), advance deployments.
    pub async fn converge(&self) {
        let now = Instant::now();
        let launch_timeout = Duration::from_millis(self.config.task_launch_timeout_ms);
        let (kills, batch, events, removed_apps) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let mut kills = Vec::new();
            let mut undecidable = Vec::new();
            let full = state.next_full_round.is_none_or(|due| now >= due);
            let changed = std::mem::take(&mut state.instances.dirty);
            let ids: Vec<String> = if full {
                state.next_full_round = Some(now + FULL_ROUND_EVERY);
                // Apps gone since are in `changed` (and dropped below); the rest is every app.
                state
                    .apps
                    .keys()
                    .cloned()
                    .chain(changed.into_iter().filter(|id| !state.apps.contains_key(id)))
                    .collect()
            } else {
                changed.into_iter().collect()
            };
            for id in ids {
                let Some(entry) = state.apps.get(&id) else {
                    state.pending.remove(&id);
                    state.queue.remove(&id);
                    state.converged.remove(&id);
                    state.failures.remove(&id);
                    continue;
                };
                // A decision is pure: if one app's definition makes it panic, that app is
                // marked and waits, and every other app is still decided for (a definition
                // that broke this leader would break the next one too).
                let decided = marina_daemon::shutdown::contain(|| {
                    let plan = entry.active.as_ref().map(model::plan);
                    let views: Vec<InstanceView> = state.instances.of_app(&id).map(Instance::view).collect();
                    engine::decide(plan.as_ref(), &views, now)
                });
                let decision = match decided {
                    Ok(decision) => decision,
                    Err(panic) => {
                        state.pending.remove(&id);
                        state.converged.remove(&id);
                        undecidable.push((id, panic));
                        continue;
                    }
                };
                kills.extend(decision.kill);
                if decision.launch > 0 {
                    // Apps in backoff stay pending (and show in /v2/queue with their delay);
                    // offers are only used for them once the delay expires.
                    let stats = state.queue.entry(id.clone()).or_default();
                    stats.since.get_or_insert_with(Timestamp::now);
                    state.pending.insert(id.clone(), decision.launch);
                } else {
                    state.queue.remove(&id);
                    state.pending.remove(&id);
                }
                if decision.converged {
                    state.converged.insert(id);
                } else {
                    state.converged.remove(&id);
                }
            }
            for (id, panic) in undecidable {
                let failure = TaskFailure {
                    task_id: String::new(),
                    state: TaskState::TaskError,
                    message: format!("the gateway cannot converge this app: {panic}"),
                    host: String::new(),
                    agent_id: String::new(),
                    version: state.apps.get(&id).map(|e| model::version(&e.definition)).unwrap_or_default(),
                    timestamp: Timestamp::now(),
                };
                back_off(state, &id, failure, now);
            }
            if full {
                // Launches that never started, and kills that were not acknowledged.
                for instance in state.instances.values() {
                    let stuck = matches!(instance.state, TaskState::TaskStaging | TaskState::TaskStarting)
                        && now.duration_since(instance.launched_at) > launch_timeout;
                    let retry_kill = instance.killing
                        && instance.kill_sent.is_some_and(|sent| now.duration_since(sent) > Duration::from_secs(10));
                    if (stuck && !instance.killing) || retry_kill {
                        kills.push(instance.record.task_id.clone());
                    }
                }
            }
            kills.sort();
            kills.dedup();
            for id in &kills {
                if let Some(instance) = state.instances.get_mut(id) {
                    instance.killing = true;
                    instance.kill_sent = Some(now);
                }
            }
            let converged = std::mem::take(&mut state.converged);
            let (batch, events, removed_apps) = advance_deployments(state, &converged);
            state.converged = converged;
            (kills, batch, events, removed_apps)
        };
        if !kills.is_empty() {
            tracing::info!(count = kills.len(), "killing tasks to converge");
            self.send_kills(&kills).await;
        }
        if !batch.is_empty() {
            if let Err(error) = self.apply(batch).await {
                tracing::warn!(%error, "recording deployment progress failed; will retry");
                return;
            }
            let mut state = self.lock();
            for id in &removed_apps {
                state.apps.remove(id);
                state.backoff.remove(id);
                state.instances.touch(id);
            }
        }
        for event in events {
            self.events.publish(event);
        }
    }

    /// Whether some app waits for resources (so offers are wanted).
    pub fn wants_offers(&self) -> bool {
        let state = self.lock();
        let now = Instant::now();
        state.pending.iter().any(|(id, count)| {
            *count > 0 && state.backoff.get(id).and_then(|b| b.until).is_none_or(|until| until <= now)
        })
    }
}
