//! Liveness: agents that stop heartbeating (or do not come back after a failover) become
//! unreachable, unless most fall silent at once; schedulers get heartbeats.
//!
//! Silence is counted only while this master could listen. A master starved of CPU (a
//! saturated host, a long allocation round holding its state) reads its agents' links late;
//! their messages wait in its sockets and the agents look silent though they are not.
//! Memberlist's Lifeguard calls this local health awareness: a member that finds itself
//! slow stretches its own timeouts rather than accuse others. Here each liveness round
//! measures how late it ran ([`Stalls`]) and that time is not counted against any agent.

use std::sync::Arc;
use std::time::Duration;

use marina_proto::agent::v1::{TaskState, TaskStatus};
use marina_proto::master::v1::{self as pb, scheduler_event};
use tokio::time::{Instant, MissedTickBehavior};

use super::{AgentStatus, LeaderState, is_terminal, master_status};
use crate::config::Config;

impl LeaderState {
    /// Agents that stopped heartbeating, and agents that did not come back after the
    /// failover, become unreachable; their tasks are reported `TASK_UNREACHABLE`.
    pub(super) async fn liveness_loop(self: Arc<Self>) {
        let interval = Config::ms(self.config.agent_ping_interval_ms);
        let timeout = interval * self.config.max_agent_ping_timeouts;
        let period = interval.min(Duration::from_millis(500));
        let mut tick = tokio::time::interval(period);
        // After a stall, one late round (which measures the stall), not a burst of them.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_hold_warning: Option<Instant> = None;
        let mut marked = Marked::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.ended.cancelled() => return,
            }
            let mut guard = self.lock();
            let inner = &mut *guard;
            // After taking the lock: waiting for it is time this master could not hear either
            // (the links' readers need the same lock to record a heartbeat).
            let now = Instant::now();
            let stalled = inner.stalls.round(now, period);
            if stalled >= STALL_WORTH_REPORTING {
                tracing::info!(
                    stalled_ms = stalled.as_millis() as u64,
                    "this master was too busy to hear its agents; that time does not count as their silence"
                );
            }
            self.metrics.stalled_seconds.inc_by(stalled.as_secs_f64());
            let stalls = &inner.stalls;
            let mut live = 0;
            let mut silent: Vec<(String, Duration)> = Vec::new();
            for (agent_id, agent) in &inner.agents {
                if matches!(agent.status, AgentStatus::Active | AgentStatus::Draining) {
                    live += 1;
                    let silence = agent.heard.silence(now, stalls);
                    if silence > timeout {
                        silent.push((agent_id.clone(), silence));
                    }
                }
            }
            let marks = marked.round(now, timeout);
            let longest = silent.iter().map(|(_, silence)| *silence).max().unwrap_or_default();
            let verdict = judge(Population { live, silent: silent.len(), longest, marks }, timeout);
            if verdict.held > 0 && last_hold_warning.is_none_or(|at| now.duration_since(at) > Duration::from_secs(5)) {
                last_hold_warning = Some(now);
                tracing::warn!(
                    held = verdict.held,
                    silent = silent.len(),
                    live,
                    marked_recently = marks.recent,
                    "{}",
                    if verdict.mark == 0 {
                        "most agents are silent at once (or were just marked unreachable): more likely this master \
                         is overloaded or cut off than they all failed; not marking them unreachable yet"
                    } else {
                        "many agents are silent at once: marking the longest silent unreachable, a tenth of the \
                         agents per ping timeout at most, in case this master is overloaded or cut off"
                    }
                );
            }
            // The longest silent first: the likeliest to be gone.
            silent.sort_by_key(|(_, silence)| std::cmp::Reverse(*silence));
            silent.truncate(verdict.mark);
            let mut newly_unreachable = Vec::new();
            for (agent_id, silence) in silent {
                tracing::warn!(agent = %agent_id, silence_ms = silence.as_millis() as u64, "agent unreachable: silent");
                marked.record(now);
                newly_unreachable.push(agent_id);
            }
            for (agent_id, agent) in &inner.agents {
                if agent.status == AgentStatus::Reregistering && now > self.reregister_deadline {
                    tracing::warn!(agent = %agent_id, "agent unreachable: did not re-register after the failover");
                    newly_unreachable.push(agent_id.clone());
                }
            }
            for agent_id in &newly_unreachable {
                if let Some(agent) = inner.agents.get_mut(agent_id) {
                    agent.status = AgentStatus::Unreachable;
                    agent.link = None;
                    self.metrics.agents_marked_unreachable.inc();
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
                    self.rescind(inner, &offer_id);
                }
                for status in statuses.into_iter().chain(answers) {
                    self.forward_update(inner, status);
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

/// A stall this long is logged (shorter ones are only counted, in
/// `marina_master_stalled_seconds_total`).
const STALL_WORTH_REPORTING: Duration = Duration::from_secs(1);

/// The time this master could not listen, added up over its leadership: how much later than
/// their period its liveness rounds ran.
#[derive(Default)]
pub(super) struct Stalls {
    total: Duration,
    last_round: Option<Instant>,
}

impl Stalls {
    /// A liveness round at `now`, meant to come `period` after the last: returns how much
    /// later it came (its stall), and counts it.
    fn round(&mut self, now: Instant, period: Duration) -> Duration {
        let stalled = self.last_round.map_or(Duration::ZERO, |last| now.duration_since(last).saturating_sub(period));
        self.last_round = Some(now);
        self.total += stalled;
        stalled
    }

    /// Marks a message heard now.
    pub(super) fn heard_now(&self) -> Heard {
        self.heard_at(Instant::now())
    }

    fn heard_at(&self, at: Instant) -> Heard {
        Heard { at, stalled_before: self.total }
    }
}

/// When an agent was last heard, and how long this master had been stalled by then.
#[derive(Clone, Copy)]
pub(super) struct Heard {
    pub(super) at: Instant,
    stalled_before: Duration,
}

impl Heard {
    /// How long the agent has been silent at `now`, less the time this master was stalled
    /// since it last heard it.
    fn silence(&self, now: Instant, stalls: &Stalls) -> Duration {
        now.duration_since(self.at).saturating_sub(stalls.total.saturating_sub(self.stalled_before))
    }
}

/// Clusters at least this big get the mass-silence hold and the marking limit.
pub(super) const MASS_SILENCE_MIN_AGENTS: usize = 10;

/// What a liveness round sees of its agents.
#[derive(Clone, Copy)]
struct Population {
    /// Active or draining.
    live: usize,
    /// Live but silent past the timeout.
    silent: usize,
    /// The longest silence among them.
    longest: Duration,
    marks: RecentMarks,
}

/// Agents marked unreachable for their silence not long ago.
#[derive(Clone, Copy, Default)]
struct RecentMarks {
    /// Within three timeouts (the hold's horizon).
    recent: usize,
    /// Within the last timeout (the marking limit's window).
    last_timeout: usize,
}

/// How many silent agents to mark unreachable this round (the longest silent first), and
/// how many are held back.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    mark: usize,
    held: usize,
}

/// Decides a round, as Kubernetes' node lifecycle controller does for a zone:
/// - **Hold**: when more than half of at least [`MASS_SILENCE_MIN_AGENTS`] agents are silent
///   or were just marked unreachable for it, and none for longer than three timeouts, mark
///   none. That many failing together is less likely than this master being starved or cut
///   off; marking them all would have every scheduler replace every task at once. Agents
///   marked in the last three timeouts count as silent: on a saturated host agents fall
///   silent a few at a time, and counting only this round's would mark them all in turn.
/// - **Limit**: otherwise mark at most a tenth of the agents per timeout (at least one), as
///   its eviction rate limit (Mesos' `agent_removal_rate_limit` too): a rack lost at once
///   is marked within a timeout; a slower trickle gives the master time to hear the rest.
/// - Past three timeouts the silence is believed: no hold, only the limit.
///
/// Small clusters (fewer than [`MASS_SILENCE_MIN_AGENTS`]) are neither held nor limited:
/// there, one silent agent is a real share of the cluster, and waiting helps no one.
fn judge(population: Population, timeout: Duration) -> Verdict {
    let Population { live, silent, longest, marks } = population;
    let counted = live + marks.recent;
    if counted < MASS_SILENCE_MIN_AGENTS {
        return Verdict { mark: silent, held: 0 };
    }
    if (silent + marks.recent) * 2 > counted && longest <= timeout * 3 {
        return Verdict { mark: 0, held: silent };
    }
    let budget = (counted / 10).max(1).saturating_sub(marks.last_timeout);
    let mark = silent.min(budget);
    Verdict { mark, held: silent - mark }
}

/// When this leadership marked agents unreachable for their silence (for [`judge`]).
#[derive(Default)]
struct Marked(std::collections::VecDeque<Instant>);

impl Marked {
    fn record(&mut self, at: Instant) {
        self.0.push_back(at);
    }

    /// Forgets marks older than three timeouts; counts the rest.
    fn round(&mut self, now: Instant, timeout: Duration) -> RecentMarks {
        while self.0.front().is_some_and(|at| now.duration_since(*at) > timeout * 3) {
            self.0.pop_front();
        }
        RecentMarks {
            recent: self.0.len(),
            last_timeout: self.0.iter().filter(|at| now.duration_since(**at) <= timeout).count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn population(live: usize, silent: usize, longest_s: u64, recent: usize, last_timeout: usize) -> Population {
        let marks = RecentMarks { recent, last_timeout };
        Population { live, silent, longest: Duration::from_secs(longest_s), marks }
    }

    #[test]
    fn most_agents_silent_at_once_are_held_for_a_while() {
        let timeout = Duration::from_secs(5);
        let held = |p| judge(p, timeout).mark == 0;
        assert!(held(population(10, 7, 6, 0, 0)), "7 of 10 silent: held");
        assert!(!held(population(10, 5, 6, 0, 0)), "half is not most");
        assert!(!held(population(10, 7, 16, 0, 0)), "past three timeouts the silence is believed");
        assert_eq!(judge(population(3, 3, 6, 0, 0), timeout), Verdict { mark: 3, held: 0 }, "small: not held");
        assert_eq!(judge(population(0, 0, 0, 0, 0), timeout), Verdict { mark: 0, held: 0 });
    }

    #[test]
    fn agents_falling_silent_a_few_at_a_time_are_not_all_marked() {
        let timeout = Duration::from_secs(5);
        // 1,000 agents; each round a few more fall silent (a saturated host). Marks are
        // limited to a tenth per timeout, and once marked and silent together pass half,
        // the rest are held.
        assert_eq!(judge(population(1000, 30, 6, 0, 0), timeout), Verdict { mark: 30, held: 0 });
        assert_eq!(judge(population(970, 150, 6, 30, 30), timeout), Verdict { mark: 70, held: 80 });
        assert_eq!(judge(population(900, 200, 6, 100, 100), timeout), Verdict { mark: 0, held: 200 }, "limit reached");
        assert_eq!(judge(population(900, 450, 6, 100, 0), timeout), Verdict { mark: 0, held: 450 }, "most: held");
        // A rack (a tenth) lost at once is marked at once.
        assert_eq!(judge(population(1000, 100, 6, 0, 0), timeout), Verdict { mark: 100, held: 0 });
        // Past three timeouts the silence is believed, still at the limit's pace.
        assert_eq!(judge(population(1000, 600, 16, 0, 0), timeout), Verdict { mark: 100, held: 500 });
    }

    #[test]
    fn marks_age_out_of_the_windows() {
        let timeout = Duration::from_secs(5);
        let start = Instant::now();
        let mut marked = Marked::default();
        marked.record(start);
        marked.record(start + Duration::from_secs(4));
        let marks = marked.round(start + Duration::from_secs(8), timeout);
        assert_eq!((marks.recent, marks.last_timeout), (2, 1));
        let marks = marked.round(start + Duration::from_secs(17), timeout);
        assert_eq!((marks.recent, marks.last_timeout), (1, 0), "the first is older than three timeouts");
    }

    #[test]
    fn a_masters_own_stall_is_not_an_agents_silence() {
        let period = Duration::from_millis(500);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut stalls = Stalls::default();
        assert_eq!(stalls.round(at(0), period), Duration::ZERO, "the first round has nothing to be late for");
        let heard = stalls.heard_at(at(0));

        // Rounds on time: silence is wall time.
        assert_eq!(stalls.round(at(500), period), Duration::ZERO);
        assert_eq!(heard.silence(at(500), &stalls), period);

        // The master stalls for 8 s (its next round comes 8 s late): the agent, though not
        // heard for 9 s, has been silent only while the master could have heard it.
        assert_eq!(stalls.round(at(9_000), period), Duration::from_secs(8));
        assert_eq!(heard.silence(at(9_000), &stalls), Duration::from_secs(1));

        // A message heard after the stall starts a fresh count: that stall is not taken off
        // it again, only later ones.
        let heard_again = stalls.heard_at(at(9_000));
        assert_eq!(stalls.round(at(12_000), period), Duration::from_millis(2_500));
        assert_eq!(heard_again.silence(at(12_000), &stalls), Duration::from_millis(500));
        assert_eq!(heard.silence(at(12_000), &stalls), Duration::from_millis(1_500));
    }
}
