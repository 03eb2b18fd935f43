//! Liveness: agents that stop heartbeating (or do not come back after a failover) become
//! unreachable, unless most fall silent at once; schedulers get heartbeats.

use std::sync::Arc;
use std::time::Duration;

use marina_proto::agent::v1::{TaskState, TaskStatus};
use marina_proto::master::v1::{self as pb, scheduler_event};
use tokio::time::Instant;

use super::{AgentStatus, LeaderState, is_terminal, master_status};
use crate::config::Config;

impl LeaderState {
    /// Agents that stopped heartbeating, and agents that did not come back after the
    /// failover, become unreachable; their tasks are reported `TASK_UNREACHABLE`.
    pub(super) async fn liveness_loop(self: Arc<Self>) {
        let interval = Config::ms(self.config.agent_ping_interval_ms);
        let timeout = interval * self.config.max_agent_ping_timeouts;
        let mut tick = tokio::time::interval(interval.min(Duration::from_millis(500)));
        let mut last_hold_warning: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.ended.cancelled() => return,
            }
            let now = Instant::now();
            let mut inner = self.lock();
            let mut newly_unreachable = Vec::new();
            let hold = mass_silence_hold(inner.agents.values().map(|a| (a.status, a.last_heartbeat)), now, timeout);
            if hold && last_hold_warning.is_none_or(|at| now.duration_since(at) > Duration::from_secs(5)) {
                last_hold_warning = Some(now);
                tracing::warn!(
                    "most agents are silent at once: more likely this master is overloaded or cut off than \
                     they all failed; not marking them unreachable yet"
                );
            }
            for (agent_id, agent) in inner.agents.iter_mut() {
                let silent = matches!(agent.status, AgentStatus::Active | AgentStatus::Draining)
                    && now.duration_since(agent.last_heartbeat) > timeout
                    && !hold;
                let never_back = agent.status == AgentStatus::Reregistering && now > self.reregister_deadline;
                if silent || never_back {
                    tracing::warn!(agent = %agent_id, silent, never_back, "agent unreachable");
                    agent.status = AgentStatus::Unreachable;
                    agent.link = None;
                    newly_unreachable.push(agent_id.clone());
                }
            }
            for agent_id in newly_unreachable {
                let statuses: Vec<TaskStatus> = inner.agents[&agent_id]
                    .tasks
                    .values()
                    .filter(|task| !is_terminal(task.status.state()))
                    .map(|task| {
                        master_status(
                            &task.info.task_id,
                            &task.info.framework_id,
                            &agent_id,
                            TaskState::TaskUnreachable,
                            "agent unreachable",
                        )
                    })
                    .collect();
                let pending = inner.pending_reconcile.remove(&agent_id).unwrap_or_default();
                let answers = pending.into_iter().map(|(framework_id, task_id)| {
                    master_status(
                        &task_id,
                        &framework_id,
                        &agent_id,
                        TaskState::TaskUnreachable,
                        "agent did not re-register",
                    )
                });
                let offers: Vec<String> =
                    inner.offers.iter().filter(|(_, o)| o.agent_id == agent_id).map(|(id, _)| id.clone()).collect();
                for offer_id in offers {
                    self.rescind(&mut inner, &offer_id);
                }
                for status in statuses.into_iter().chain(answers) {
                    self.forward_update(&mut inner, status);
                }
            }
            self.metrics.observe_agents(inner.agents.values().map(|agent| agent.status));
            self.metrics.observe_tasks(inner.agents.values().flat_map(|a| a.tasks.values()).map(|t| t.status.state()));
            self.metrics.frameworks.set(inner.frameworks.values().filter(|f| f.stream.is_some()).count() as i64);
            self.metrics.offers_outstanding.set(inner.offers.len() as i64);
        }
    }

    pub(super) async fn scheduler_heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Config::ms(self.config.scheduler_heartbeat_ms));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.ended.cancelled() => return,
            }
            let inner = self.lock();
            for framework in inner.frameworks.values() {
                if let Some((_, stream)) = &framework.stream {
                    let _ = stream.try_send(self.scheduler_event(scheduler_event::Kind::Heartbeat(pb::Heartbeat {})));
                }
            }
        }
    }
}

/// Clusters at least this big get the mass-silence hold.
pub(super) const MASS_SILENCE_MIN_AGENTS: usize = 10;

/// True if more than half of at least [`MASS_SILENCE_MIN_AGENTS`] live agents fell silent at
/// once, and none for longer than three timeouts. That many failing together is less likely
/// than this master being starved or cut off from them (as Kubernetes' node controller
/// reasons for its zones): marking them all unreachable would have every scheduler replace
/// every task at once. Past three timeouts the silence is believed.
pub(super) fn mass_silence_hold(
    agents: impl Iterator<Item = (AgentStatus, Instant)>,
    now: Instant,
    timeout: Duration,
) -> bool {
    let (mut live, mut silent, mut longest) = (0, 0, Duration::ZERO);
    for (status, last_heartbeat) in agents {
        if !matches!(status, AgentStatus::Active | AgentStatus::Draining) {
            continue;
        }
        live += 1;
        let silence = now.duration_since(last_heartbeat);
        if silence > timeout {
            silent += 1;
            longest = longest.max(silence);
        }
    }
    live >= MASS_SILENCE_MIN_AGENTS && silent * 2 > live && longest <= timeout * 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_agents_silent_at_once_is_held_for_a_while() {
        let timeout = Duration::from_secs(5);
        let now = Instant::now() + Duration::from_secs(60);
        let agents = |silent: usize, total: usize, silence: u64| {
            (0..total).map(move |i| {
                let quiet = if i < silent { Duration::from_secs(silence) } else { Duration::from_secs(1) };
                (AgentStatus::Active, now - quiet)
            })
        };
        assert!(mass_silence_hold(agents(7, 10, 6), now, timeout), "7 of 10 silent: held");
        assert!(!mass_silence_hold(agents(5, 10, 6), now, timeout), "half is not most");
        assert!(!mass_silence_hold(agents(7, 10, 16), now, timeout), "past three timeouts the silence is believed");
        assert!(!mass_silence_hold(agents(3, 3, 6), now, timeout), "small clusters are not held");
        let unreachable_ones = agents(7, 10, 6).map(|(_, at)| (AgentStatus::Unreachable, at));
        assert!(!mass_silence_hold(unreachable_ones, now, timeout), "only live agents count");
    }
}
