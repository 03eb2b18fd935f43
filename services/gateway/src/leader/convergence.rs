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
use super::effects::Effects;
use super::kills::mark_killing;
use super::{CONVERGE_GAP, FULL_ROUND_EVERY, Instance, Leader, State, TaskFailure, back_off, write_failures};

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

    /// One round (see [`round`]), carried out.
    pub async fn converge(&self) {
        let launch_timeout = Duration::from_millis(self.config.task_launch_timeout_ms);
        let effects = round(&mut self.lock(), Instant::now(), launch_timeout);
        if effects.is_empty() {
            return;
        }
        if !effects.kills.is_empty() {
            tracing::info!(count = effects.kills.len(), "killing tasks to converge");
        }
        if let Err(error) = self.execute(effects).await {
            tracing::warn!(%error, "recording deployment progress failed; will retry");
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

/// One convergence round at `now`: decides launches and kills for the apps that changed
/// since the last round (for every app once per [`FULL_ROUND_EVERY`], which also kills
/// launches stuck past `launch_timeout` and retries kills left unanswered), and advances the
/// deployments whose current step converged. Decides without I/O: what is to launch is left
/// in `state.pending` for the next offers; the kills, the deployments' progress and their
/// events are returned.
pub(super) fn round(state: &mut State, now: Instant, launch_timeout: Duration) -> Effects {
    let mut kills = Vec::new();
    let mut undecidable = Vec::new();
    let full = state.next_full_round.is_none_or(|due| now >= due);
    let changed = std::mem::take(&mut state.instances.dirty);
    let ids: Vec<String> = if full {
        state.next_full_round = Some(now + FULL_ROUND_EVERY);
        // Apps gone since are in `changed` (and dropped below); the rest is every app.
        state.apps.keys().cloned().chain(changed.into_iter().filter(|id| !state.apps.contains_key(id))).collect()
    } else {
        changed.into_iter().collect()
    };
    for id in ids {
        let Some(entry) = state.apps.get(&id) else {
            state.pending.remove(&id);
            state.queue.remove(&id);
            state.converged.remove(&id);
            if state.failures.remove(&id).is_some() {
                state.failures_unwritten.insert(id.clone());
            }
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
            // Not sent (see `make_kills_due`), or sent 10 s ago without an answer.
            let retry_kill = instance.killing
                && instance.kill_sent.is_none_or(|sent| now.duration_since(sent) > Duration::from_secs(10));
            if (stuck && !instance.killing) || retry_kill {
                kills.push(instance.record.task_id.clone());
            }
        }
    }
    kills.sort();
    kills.dedup();
    let kills = mark_killing(state, &kills, now);
    let converged = std::mem::take(&mut state.converged);
    let (mut writes, events, forget_apps) = advance_deployments(state, &converged);
    state.converged = converged;
    write_failures(state, &mut writes);
    Effects { kills, writes, forget_apps, events, ..Effects::default() }
}

#[cfg(test)]
mod tests {
    use marina_proto::agent::v1::TaskState;

    use super::*;
    use crate::app::AppLimits;
    use crate::leader::Change;
    use crate::leader::deployments::adopt;
    use crate::leader::fixtures::{state_with, status, web};
    use crate::leader::planning::{Plan, plan};
    use crate::leader::updates::transition;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn task(n: u32) -> String {
        format!("web.00000000-0000-4000-8000-{n:012}")
    }

    /// `state` with tasks `1..=count` of `/web` running on `agent-1`.
    fn running(state: &mut State, count: u32) {
        for n in 1..=count {
            let adopted = transition(state, &status(&task(n), TaskState::TaskRunning), Instant::now(), false);
            assert!(adopted.kills.is_empty());
        }
    }

    #[test]
    fn a_new_app_waits_for_its_instances_and_nothing_is_killed() {
        let mut state = state_with(&[web(2, "x")]);
        let effects = round(&mut state, Instant::now(), TIMEOUT);
        assert!(effects.is_empty(), "nothing to kill, write or announce");
        assert_eq!(state.pending["/web"], 2, "two instances wait for offers");
        assert!(state.queue["/web"].since.is_some(), "and /v2/queue shows since when");
        assert!(!state.converged.contains("/web"));
    }

    #[test]
    fn an_instance_too_many_is_killed_once_on_its_agent() {
        let mut state = state_with(&[web(1, "x")]);
        running(&mut state, 2);
        let now = Instant::now();
        let first = round(&mut state, now, TIMEOUT);
        assert_eq!(first.kills.len(), 1, "one of two instances goes");
        let kill = &first.kills[0];
        assert_eq!(kill.agent_id, "agent-1");
        let instance = state.instances.get(&kill.task_id).expect("still known until it ends");
        assert!(instance.killing && instance.kill_sent == Some(now));
        let second = round(&mut state, now, TIMEOUT);
        assert!(second.kills.is_empty(), "a kill under way is not sent again at once");
        assert!(!state.pending.contains_key("/web"));
    }

    #[test]
    fn kills_under_way_are_sent_again_at_once_on_a_new_subscription() {
        let mut state = state_with(&[web(1, "x")]);
        running(&mut state, 2);
        let now = Instant::now();
        let first = round(&mut state, now, TIMEOUT);
        assert_eq!(first.kills.len(), 1);
        // Well inside the retry delay, nothing is sent again...
        let soon = now + Duration::from_secs(2);
        assert!(round(&mut state, soon, TIMEOUT).kills.is_empty());
        // ...unless a new master subscription makes the kills due.
        super::super::kills::make_kills_due(&mut state);
        let again = round(&mut state, soon, TIMEOUT);
        assert_eq!(again.kills.iter().map(|k| &k.task_id).collect::<Vec<_>>(), [&first.kills[0].task_id]);
        assert!(state.instances.get(&first.kills[0].task_id).is_some_and(|i| i.kill_sent == Some(soon)));
    }

    #[test]
    fn a_launch_stuck_past_its_timeout_is_killed_by_the_next_full_round() {
        let mut state = state_with(&[web(1, "x")]);
        let staged = Instant::now();
        let adopted = transition(&mut state, &status(&task(1), TaskState::TaskStaging), staged, false);
        assert!(adopted.kills.is_empty());
        assert!(round(&mut state, staged, TIMEOUT).kills.is_empty(), "staging within its timeout");
        let later = staged + TIMEOUT + FULL_ROUND_EVERY * 2;
        let stuck = round(&mut state, later, TIMEOUT);
        assert_eq!(stuck.kills.iter().map(|k| k.task_id.clone()).collect::<Vec<_>>(), [task(1)]);
    }

    #[test]
    fn a_converged_step_completes_its_deployment_in_coord_and_in_events() {
        let mut state = State::default();
        let now = Timestamp::parse("2026-12-06T12:00:00.000Z").unwrap();
        let changes = vec![Change::to("/web", Some(web(0, "x")))];
        let Plan { deployment, superseded, .. } =
            plan(&state, &AppLimits::default(), &Default::default(), changes, false, "d-1".into(), now)
                .expect("planned");
        adopt(&mut state, &deployment, &superseded, Default::default());
        let effects = round(&mut state, Instant::now(), TIMEOUT);
        assert_eq!(effects.writes.describe(), ["delete /gateway/deployments/d-1"]);
        let events: Vec<&str> = effects.events.iter().map(|e| e.event_type()).collect();
        assert_eq!(events, ["deployment_step_success", "deployment_success"]);
        assert!(state.deployments.is_empty() && state.apps.contains_key("/web"));
    }

    #[test]
    fn a_deleted_app_is_forgotten_once_its_deletion_is_written() {
        let mut state = state_with(&[web(1, "x")]);
        running(&mut state, 1);
        let now = Timestamp::parse("2026-12-06T12:00:00.000Z").unwrap();
        let changes = vec![Change::to("/web", None)];
        let Plan { deployment, superseded, .. } =
            plan(&state, &AppLimits::default(), &Default::default(), changes, false, "d-2".into(), now)
                .expect("planned");
        adopt(&mut state, &deployment, &superseded, Default::default());
        let stopping = round(&mut state, Instant::now(), TIMEOUT);
        assert_eq!(stopping.kills.len(), 1, "its instance is killed first");
        assert!(stopping.forget_apps.is_empty() && stopping.writes.is_empty());
        transition(&mut state, &status(&task(1), TaskState::TaskKilled), Instant::now(), false);
        let stopped = round(&mut state, Instant::now(), TIMEOUT);
        assert_eq!(stopped.forget_apps, ["/web"]);
        assert!(stopped.writes.describe().contains(&"delete /gateway/deployments/d-2".to_owned()));
        assert!(state.apps.contains_key("/web"), "kept until the executor has written its deletion");
    }
}
