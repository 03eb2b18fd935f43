//! What one app may ask for on this cluster: the operator's bounds (the gateway's `[limits]`
//! section), checked when a change is deployed, on top of Marathon's own rules.
//!
//! Marathon itself takes any `instances` and any resources ≥ 0; on a real network that lets
//! one request make the leader build a record per instance (`instances: 1000000`) or pack
//! tasks that ask for nothing onto an agent without end. These bounds close both: a cap on
//! instances, and a small floor under each task's cpus and memory.

use serde::{Deserialize, Serialize};

use super::definition::AppDefinition;
use super::violation::Violation;

/// Marathon's own minimum for `cpus` (app.raml: `minimum: 0.001`).
pub const DEFAULT_MIN_CPUS: f64 = 0.001;

/// Docker's own minimum memory limit (`docker run -m` refuses less than 6 MB): a smaller
/// task could never run in a container, and no task may ask for none at all.
pub const DEFAULT_MIN_MEM_MB: f64 = 6.0;

/// Ten thousand: ten times the largest app of the placement benchmark, and a leader's
/// per-round work for one app stays in the milliseconds.
pub const DEFAULT_MAX_INSTANCES: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppLimits {
    /// Most instances one app may declare.
    pub max_instances: i64,
    /// Least cpus each task must ask for (so tasks cannot be packed without bound).
    pub min_cpus: f64,
    /// Least memory, in MB, each task must ask for.
    pub min_mem_mb: f64,
}

impl Default for AppLimits {
    fn default() -> Self {
        AppLimits { max_instances: DEFAULT_MAX_INSTANCES, min_cpus: DEFAULT_MIN_CPUS, min_mem_mb: DEFAULT_MIN_MEM_MB }
    }
}

impl AppLimits {
    /// What is wrong with these limits themselves (a configuration error), naming the key.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(1..=i64::from(i32::MAX)).contains(&self.max_instances) {
            return Some(("limits.max_instances", format!("must be between 1 and {}", i32::MAX)));
        }
        if !(self.min_cpus.is_finite() && self.min_cpus > 0.0 && self.min_cpus <= 1.0) {
            return Some(("limits.min_cpus", "must be a number above 0 and at most 1".to_owned()));
        }
        if !(self.min_mem_mb.is_finite() && self.min_mem_mb > 0.0 && self.min_mem_mb <= 1024.0) {
            return Some(("limits.min_mem_mb", "must be a number above 0 and at most 1024".to_owned()));
        }
        None
    }

    /// Where `app` goes beyond these limits, in Marathon's 422 shape.
    pub fn check(&self, app: &AppDefinition) -> Vec<Violation> {
        self.check_change(app, None)
    }

    /// Where a change to `app` from `previous` goes beyond these limits. What the change
    /// keeps as it was is not held against it: an app stored before a limit was tightened
    /// can still be scaled down or changed otherwise.
    pub fn check_change(&self, app: &AppDefinition, previous: Option<&AppDefinition>) -> Vec<Violation> {
        let unchanged = |field: fn(&AppDefinition) -> f64| previous.is_some_and(|p| field(p) == field(app));
        let mut violations = Vec::new();
        let grows = previous.is_none_or(|p| app.instances > p.instances);
        if grows && app.instances > self.max_instances {
            violations.push(Violation::new(
                "/instances",
                format!(
                    "got {}, expected {} or less (this cluster's limits.max_instances)",
                    app.instances, self.max_instances
                ),
            ));
        }
        // NaN never gets here (JSON has none); were it to, it would not be at least the floor.
        let below = |value: f64, floor: f64| value.partial_cmp(&floor).is_none_or(|o| o == std::cmp::Ordering::Less);
        if below(app.cpus, self.min_cpus) && !unchanged(|a| a.cpus) {
            violations.push(Violation::new(
                "/cpus",
                format!("got {:?}, expected {:?} or more (this cluster's limits.min_cpus)", app.cpus, self.min_cpus),
            ));
        }
        if below(app.mem, self.min_mem_mb) && !unchanged(|a| a.mem) {
            violations.push(Violation::new(
                "/mem",
                format!("got {:?}, expected {:?} or more (this cluster's limits.min_mem_mb)", app.mem, self.min_mem_mb),
            ));
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::PathId;

    #[test]
    fn apps_beyond_the_limits_are_named_at_their_fields() {
        let limits = AppLimits::default();
        let mut app = AppDefinition::new(PathId::parse("/web").unwrap());
        app.mem = 16.0;
        app.cpus = 0.01;
        assert!(limits.check(&app).is_empty(), "the README's small apps fit");
        app.instances = 1_000_000;
        app.cpus = 0.0;
        app.mem = 0.0;
        let paths: Vec<String> = limits.check(&app).into_iter().map(|v| v.path).collect();
        assert_eq!(paths, ["/instances", "/cpus", "/mem"]);
        let mut smaller = app.clone();
        smaller.instances = 999_999;
        assert!(limits.check_change(&smaller, Some(&app)).is_empty(), "what a change keeps is not held against it");
        smaller.mem = 1.0;
        let paths: Vec<String> = limits.check_change(&smaller, Some(&app)).into_iter().map(|v| v.path).collect();
        assert_eq!(paths, ["/mem"], "a changed field is checked");
    }

    #[test]
    fn limits_themselves_are_checked() {
        assert!(AppLimits::default().problem().is_none());
        let zero_floor = AppLimits { min_cpus: 0.0, ..AppLimits::default() };
        assert_eq!(zero_floor.problem().map(|(key, _)| key), Some("limits.min_cpus"));
        let no_apps = AppLimits { max_instances: 0, ..AppLimits::default() };
        assert_eq!(no_apps.problem().map(|(key, _)| key), Some("limits.max_instances"));
    }
}
