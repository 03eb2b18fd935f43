//! Convergence: for each app, what to launch and what to kill so that what runs becomes
//! what is declared — scaling, replacing lost tasks, and rolling upgrades that honour
//! `upgradeStrategy` — decided from the current instances alone, so the same decision is
//! reached again after a gateway failover (level-triggered, like Kubernetes controllers).

use std::time::Duration;

use marina_proto::agent::v1::TaskState;
use tokio::time::Instant;

/// What the engine needs to know of an app (see `model::plan`).
#[derive(Debug, Clone, PartialEq)]
pub struct AppPlan {
    pub id: String,
    pub instances: u32,
    /// `versionInfo.lastConfigChangeAt`: instances launched under another config are old.
    pub config_version: String,
    pub has_health_checks: bool,
    /// `readinessChecks`: instances of this config count once ready (see `readiness`).
    pub has_readiness_checks: bool,
    pub minimum_health_capacity: f64,
    pub maximum_over_capacity: f64,
    pub kill_youngest_first: bool,
    /// `unreachableStrategy`: after this long unreachable an instance is replaced (None:
    /// "disabled", replaced at once).
    pub inactive_after: Option<Duration>,
}

/// One task as the engine sees it, borrowed from the leader's state: a round decides for
/// apps of thousands of instances after every status update, so nothing is copied.
#[derive(Debug, Clone)]
pub struct InstanceView<'a> {
    pub task_id: &'a str,
    pub config_version: &'a str,
    pub state: TaskState,
    pub healthy: Option<bool>,
    /// Its readiness check passed (meaningless without one).
    pub ready: bool,
    pub killing: bool,
    /// When it was launched (for kill selection).
    pub launched_at: Instant,
    pub unreachable_since: Option<Instant>,
}

impl InstanceView<'_> {
    /// Counts towards the app's instances (occupies a slot): not gone, not being killed,
    /// not unreachable for longer than the app tolerates.
    pub fn is_live(&self, plan: &AppPlan, now: Instant) -> bool {
        if self.killing || is_terminal(self.state) {
            return false;
        }
        match (self.unreachable_since, plan.inactive_after) {
            (Some(_), None) => false,
            (Some(since), Some(after)) => now.duration_since(since) < after,
            (None, _) => true,
        }
    }

    pub fn is_running(&self) -> bool {
        self.state == TaskState::TaskRunning && self.unreachable_since.is_none() && !self.killing
    }

    /// Running, healthy when the app has health checks, and — for an instance of the
    /// current config — ready when the app has a readiness check. Old instances were ready
    /// before the upgrade began; readiness is not asked of them again.
    pub fn is_healthy(&self, plan: &AppPlan) -> bool {
        self.is_running()
            && (!plan.has_health_checks || self.healthy == Some(true))
            && (!plan.has_readiness_checks || self.ready || self.config_version != plan.config_version)
    }
}

pub fn is_terminal(state: TaskState) -> bool {
    state.is_terminal()
}

/// The engine's decision for one app.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// New instances to launch with the current config.
    pub launch: u32,
    /// Task ids to kill.
    pub kill: Vec<String>,
    /// The app runs exactly its declared instances, all current, running (and healthy).
    pub converged: bool,
}

/// Decides for one app. `plan == None` means the app must run nothing (being deleted).
pub fn decide(plan: Option<&AppPlan>, instances: &[InstanceView], now: Instant) -> Decision {
    let Some(plan) = plan else {
        let kill: Vec<String> =
            instances.iter().filter(|i| !i.killing && !is_terminal(i.state)).map(|i| i.task_id.to_owned()).collect();
        let converged = instances.iter().all(|i| is_terminal(i.state));
        return Decision { launch: 0, kill, converged };
    };
    let target = plan.instances as usize;
    let live: Vec<&InstanceView> = instances.iter().filter(|i| i.is_live(plan, now)).collect();
    let (current, old): (Vec<&InstanceView>, Vec<&InstanceView>) =
        live.iter().partition(|i| i.config_version == plan.config_version);
    // Unreachable past tolerance (or "disabled"): killed so they do not return as extras.
    let mut kill: Vec<String> = instances
        .iter()
        .filter(|i| !i.killing && !is_terminal(i.state) && i.unreachable_since.is_some() && !i.is_live(plan, now))
        .map(|i| i.task_id.to_owned())
        .collect();

    if old.is_empty() {
        // Scale (or replace what was lost).
        let mut launch = 0;
        if current.len() < target {
            launch = (target - current.len()) as u32;
        } else if current.len() > target {
            kill.extend(select_kills(&current, current.len() - target, plan.kill_youngest_first));
        }
        let healthy = current.iter().filter(|i| i.is_healthy(plan)).count();
        // A kill counts once the task is gone: until then it still runs (and serves).
        let kills_unconfirmed = instances.iter().any(|i| i.killing && !is_terminal(i.state));
        let converged =
            launch == 0 && current.len() == target && healthy == target && kill.is_empty() && !kills_unconfirmed;
        return Decision { launch, kill, converged };
    }

    // Rolling upgrade: never below the minimum healthy capacity, never above the maximum
    // over-capacity (Marathon's upgradeStrategy semantics).
    let minimum_healthy = (target as f64 * plan.minimum_health_capacity).ceil() as usize;
    let maximum_total = target + (target as f64 * plan.maximum_over_capacity).floor() as usize;
    let healthy_current = current.iter().filter(|i| i.is_healthy(plan)).count();
    let healthy_old = old.iter().filter(|i| i.is_healthy(plan)).count();

    let room = maximum_total.saturating_sub(live.len());
    let launch = target.saturating_sub(current.len()).min(room);

    // Old instances that are not healthy can go at any time; healthy ones only while the
    // healthy total stays at or above the minimum.
    let (healthy_olds, unhealthy_olds): (Vec<&InstanceView>, Vec<&InstanceView>) =
        old.iter().partition(|i| i.is_healthy(plan));
    kill.extend(unhealthy_olds.iter().map(|i| i.task_id.to_owned()));
    let removable = (healthy_current + healthy_old).saturating_sub(minimum_healthy);
    let mut kill_healthy = removable.min(healthy_olds.len());
    let nothing_in_progress = healthy_current == current.len();
    if launch == 0 && kill_healthy == 0 && unhealthy_olds.is_empty() && current.len() < target && nothing_in_progress {
        // No room to add, no slack to remove, and no new instance about to become healthy
        // (minimumHealthCapacity 1 with maximumOverCapacity 0): replace one at a time, as
        // Marathon does.
        kill_healthy = 1.min(healthy_olds.len());
    }
    kill.extend(select_kills(&healthy_olds, kill_healthy, plan.kill_youngest_first));
    Decision { launch: launch as u32, kill, converged: false }
}

fn select_kills(candidates: &[&InstanceView], count: usize, youngest_first: bool) -> Vec<String> {
    let mut sorted: Vec<&&InstanceView> = candidates.iter().collect();
    // Not yet running ones go first, then by age.
    sorted.sort_by(|a, b| {
        a.is_running().cmp(&b.is_running()).then_with(|| {
            if youngest_first { b.launched_at.cmp(&a.launched_at) } else { a.launched_at.cmp(&b.launched_at) }
        })
    });
    sorted.into_iter().take(count).map(|i| i.task_id.to_owned()).collect()
}

/// Launch backoff after failures: `backoffSeconds × backoffFactor^(failures-1)`, capped.
pub fn backoff_delay(seconds: f64, factor: f64, max: f64, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    // Any numbers give a delay: an overflowing product is infinite and capped by `max`
    // (validation bounds the inputs, but stored definitions predate some of its rules).
    let delay = seconds * factor.powi(failures.saturating_sub(1).min(64) as i32);
    let delay = if delay.is_nan() { max } else { delay.min(max) };
    marina_daemon::time::seconds(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(instances: u32, minimum: f64, over: f64) -> AppPlan {
        AppPlan {
            id: "/web".into(),
            instances,
            config_version: "v2".into(),
            has_health_checks: true,
            has_readiness_checks: false,
            minimum_health_capacity: minimum,
            maximum_over_capacity: over,
            kill_youngest_first: true,
            inactive_after: Some(Duration::from_secs(300)),
        }
    }

    fn instance(id: &str, version: &'static str, healthy: bool, base: Instant, age: u64) -> InstanceView<'static> {
        InstanceView {
            // Views borrow from the leader's state; here the ids live for the test.
            task_id: Box::leak(id.to_owned().into_boxed_str()),
            config_version: version,
            state: TaskState::TaskRunning,
            healthy: Some(healthy),
            ready: false,
            killing: false,
            launched_at: base + Duration::from_secs(age),
            unreachable_since: None,
        }
    }

    #[test]
    fn a_deployment_converges_only_once_its_kills_are_confirmed() {
        let now = Instant::now();
        let mut dying = instance("old", "v1", true, now, 0);
        dying.killing = true;
        let current = [instance("a", "v2", true, now, 1), instance("b", "v2", true, now, 2)];
        let with_dying: Vec<InstanceView> = current.iter().cloned().chain([dying.clone()]).collect();
        assert!(!decide(Some(&plan(2, 0.5, 0.0)), &with_dying, now).converged, "the old task still runs");
        dying.state = TaskState::TaskKilled;
        let with_dead: Vec<InstanceView> = current.iter().cloned().chain([dying]).collect();
        assert!(decide(Some(&plan(2, 0.5, 0.0)), &with_dead, now).converged);
    }

    #[test]
    fn new_instances_take_over_only_once_ready() {
        let now = Instant::now();
        let gated = AppPlan { has_readiness_checks: true, ..plan(2, 1.0, 1.0) };
        let old = [instance("o1", "v1", true, now, 0), instance("o2", "v1", true, now, 0)];
        let mut new = [instance("n1", "v2", true, now, 1), instance("n2", "v2", true, now, 2)];
        let all =
            |new: &[InstanceView<'static>]| -> Vec<InstanceView<'static>> { old.iter().chain(new).cloned().collect() };
        // Healthy but not ready: the old instances stay, the deployment does not finish.
        let waiting = decide(Some(&gated), &all(&new), now);
        assert_eq!(waiting, Decision { launch: 0, kill: vec![], converged: false });
        new[0].ready = true;
        assert_eq!(decide(Some(&gated), &all(&new), now).kill.len(), 1, "one ready instance replaces one old");
        new[1].ready = true;
        assert_eq!(decide(Some(&gated), &all(&new), now).kill.len(), 2);
        // Without old instances (a scale), readiness still gates convergence.
        let fresh = [instance("n1", "v2", true, now, 1)];
        assert!(!decide(Some(&AppPlan { instances: 1, ..gated.clone() }), &fresh, now).converged);
        assert!(decide(Some(&AppPlan { instances: 1, ..plan(1, 1.0, 1.0) }), &fresh, now).converged);
    }

    #[test]
    fn scaling_launches_and_kills_the_youngest() {
        let now = Instant::now();
        let running = vec![instance("a", "v2", true, now, 1), instance("b", "v2", true, now, 2)];
        assert_eq!(decide(Some(&plan(3, 1.0, 1.0)), &running, now).launch, 1);
        let down = decide(Some(&plan(1, 1.0, 1.0)), &running, now);
        assert_eq!(down.kill, vec!["b".to_owned()]);
        assert!(decide(Some(&plan(2, 1.0, 1.0)), &running, now).converged);
        let deleting = decide(None, &running, now);
        assert_eq!(deleting.kill.len(), 2);
        assert!(!deleting.converged);
    }

    /// Simulates a rolling upgrade step by step: new instances become healthy at once;
    /// the healthy count never drops below the minimum.
    fn simulate(target: u32, minimum: f64, over: f64, floor: usize) -> (usize, usize) {
        let now = Instant::now();
        let plan = plan(target, minimum, over);
        let mut instances: Vec<InstanceView> =
            (0..target).map(|i| instance(&format!("old-{i}"), "v1", true, now, u64::from(i))).collect();
        let mut lowest = usize::MAX;
        let mut highest = 0;
        for round in 0..100 {
            let decision = decide(Some(&plan), &instances, now);
            if decision.converged {
                return (lowest, highest);
            }
            instances.retain(|i| !decision.kill.iter().any(|killed| killed == i.task_id));
            let healthy = instances.iter().filter(|i| i.is_healthy(&plan)).count();
            lowest = lowest.min(healthy);
            assert!(healthy >= floor, "round {round}: {healthy} healthy < {floor}");
            for n in 0..decision.launch {
                instances.push(instance(&format!("new-{round}-{n}"), "v2", true, now, 100 + round));
            }
            highest = highest.max(instances.len());
        }
        panic!("the upgrade did not converge");
    }

    #[test]
    fn rolling_upgrades_respect_the_strategy() {
        let (_, highest) = simulate(4, 0.5, 0.0, 2);
        assert!(highest <= 4);
        let (_, highest) = simulate(4, 1.0, 0.5, 4);
        assert!(highest <= 6);
        // The deadlock case (no slack either way) still progresses, one instance at a time.
        simulate(3, 1.0, 0.0, 2);
    }

    #[test]
    fn unreachable_instances_are_replaced_after_the_tolerance() {
        let now = Instant::now();
        let mut lost = instance("a", "v2", true, now, 0);
        lost.unreachable_since = Some(now);
        let plan = plan(1, 1.0, 1.0);
        assert_eq!(decide(Some(&plan), &[lost.clone()], now).launch, 0);
        let later = now + Duration::from_secs(301);
        let decision = decide(Some(&plan), &[lost], later);
        assert_eq!((decision.launch, decision.kill.clone()), (1, vec!["a".to_owned()]));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_delay(1.0, 2.0, 10.0, 0), Duration::ZERO);
        assert_eq!(backoff_delay(1.0, 2.0, 10.0, 1), Duration::from_secs(1));
        assert_eq!(backoff_delay(1.0, 2.0, 10.0, 3), Duration::from_secs(4));
        assert_eq!(backoff_delay(1.0, 2.0, 10.0, 10), Duration::from_secs(10));
        // A stored definition from before the int32 bound: the delay saturates.
        let huge = 9_223_372_036_854_775_807.0;
        assert_eq!(backoff_delay(huge, 1.15, huge, 3), marina_daemon::time::NEVER);
        assert_eq!(backoff_delay(1.0, f64::MAX, 3600.0, 40), Duration::from_secs(3600));
        assert_eq!(backoff_delay(f64::INFINITY, 0.0, f64::NAN, 2), Duration::ZERO);
    }
}
