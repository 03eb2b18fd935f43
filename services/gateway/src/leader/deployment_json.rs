//! How deployments are shown: Marathon's JSON for a deployment (`/v2/deployments`), its
//! steps and plan (as events carry them), and the health check events a step's start makes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::engine::is_terminal;
use crate::events::MarathonEvent;
use crate::model;
use crate::readiness::ReadinessResult;

use super::groups;
use super::{Deployment, State};

/// Marathon's `DeploymentStep`: `{"actions": [{"action": ..., "app": ...}]}`.
pub(super) fn step_json(deployment: &Deployment, index: usize) -> Value {
    let actions = deployment.steps.get(index).cloned().unwrap_or_default();
    json!({ "actions": actions.iter().map(|a| json!({ "action": a.action, "app": a.app })).collect::<Vec<_>>() })
}

/// Every step of a deployment, as [`step_json`] writes each.
pub(super) fn steps_json(deployment: &Deployment) -> Vec<Value> {
    (0..deployment.steps.len()).map(|index| step_json(deployment, index)).collect()
}

/// The health checks of an app's stored JSON (none if it has none, or no JSON).
pub(super) fn health_checks_of(app: Option<&Option<Value>>) -> impl Iterator<Item = &Value> {
    app.and_then(Option::as_ref).and_then(|app| app.get("healthChecks")).and_then(Value::as_array).into_iter().flatten()
}

/// What starting step `index` does to health checks, as Marathon's health check manager
/// reports it: each check of each app version the step deploys is added
/// (`add_health_check_event`, with the version); an app the step stops has its checks
/// removed (`remove_health_check_event`). A replaced version's checks are removed once its
/// step is done (see [`super::deployments::advance_deployments`]).
pub(super) fn step_health_events(deployment: &Deployment, index: usize) -> Vec<MarathonEvent> {
    let mut events = Vec::new();
    for action in deployment.steps.get(index).into_iter().flatten() {
        let app_id = action.app.clone();
        if action.action == "StopApplication" {
            let removed = health_checks_of(deployment.originals.get(&action.app));
            events.extend(removed.map(|_| MarathonEvent::RemoveHealthCheck { app_id: app_id.clone() }));
            continue;
        }
        let target = deployment.targets.get(&action.app);
        let version = target.and_then(Option::as_ref).and_then(|app| app.get("version")).and_then(Value::as_str);
        for check in health_checks_of(target) {
            events.push(MarathonEvent::AddHealthCheck {
                app_id: app_id.clone(),
                version: version.unwrap_or_default().to_owned(),
                health_check: check.clone(),
            });
        }
    }
    events
}

/// A deployment plan as Marathon's events carry it (`DeploymentPlanWrites`: `id`,
/// `version`, `steps`, and the `original` and `target` groups), with `/v2/deployments`'
/// fields besides. `original` and `target` hold the apps the deployment changes (as they
/// were, as they become), in their groups — not the whole tree, whose size would make every
/// event as large as every app definition together.
pub(super) fn plan_json(deployment: &Deployment, state: &State) -> Value {
    let mut plan = deployment_json(deployment, state);
    let tree = |apps: &BTreeMap<String, Option<Value>>| {
        let apps: BTreeMap<String, Value> =
            apps.iter().filter_map(|(id, app)| Some((id.clone(), app.clone()?))).collect();
        partial_group_json("/", &apps, &deployment.version)
    };
    plan["original"] = tree(&deployment.originals);
    plan["target"] = tree(&deployment.targets);
    plan
}

/// Group `id` (Marathon's group JSON) holding those of `apps` below it, with the groups
/// between.
fn partial_group_json(id: &str, apps: &BTreeMap<String, Value>, version: &str) -> Value {
    let own: Vec<&Value> =
        groups::below(apps, id).filter(|(app, _)| groups::parent(app) == Some(id)).map(|(_, app)| app).collect();
    let mut subgroups: Vec<String> = groups::below(apps, id)
        .filter_map(|(app, _)| groups::ancestors(app).find(|group| groups::parent(group) == Some(id)))
        .filter(|group| !apps.contains_key(*group))
        .map(str::to_owned)
        .collect();
    subgroups.dedup();
    let groups: Vec<Value> = subgroups.iter().map(|group| partial_group_json(group, apps, version)).collect();
    json!({ "id": id, "apps": own, "groups": groups, "dependencies": [], "version": version })
}

/// The readiness of the app's instances of the config it converges to, for a deployment's
/// `currentActions`.
pub(super) fn readiness_results(state: &State, app_id: &str) -> Vec<Value> {
    let Some(active) = state.apps.get(app_id).and_then(|entry| entry.active.as_ref()) else { return Vec::new() };
    let config_version = model::config_version(active);
    state
        .instances
        .of_app(app_id)
        .filter(|i| i.record.config_version == config_version && !is_terminal(i.state))
        .filter_map(|i| i.readiness.as_ref().map(ReadinessResult::to_json))
        .collect()
}

/// Marathon's JSON for a deployment plan.
pub(super) fn deployment_json(deployment: &Deployment, state: &State) -> Value {
    json!({
        "id": deployment.id,
        "version": deployment.version,
        "affectedApps": deployment.affected_apps,
        "steps": steps_json(deployment),
        "currentActions": deployment.steps.get(deployment.current_step).map(|step| step.iter().map(|a| json!({ "action": a.action, "app": a.app, "readinessCheckResults": readiness_results(state, &a.app) })).collect::<Vec<_>>()).unwrap_or_default(),
        "currentStep": (deployment.current_step + 1).min(deployment.steps.len()),
        "totalSteps": deployment.steps.len(),
    })
}
