//! Planning a change: the state and a request in, a deployment and its coord batch out,
//! nothing done — each app's action checked and stamped, steps ordered by dependencies,
//! groups created, changed or removed.

use std::collections::{BTreeMap, HashMap, HashSet};

use marina_proto::policy::ContainerPolicy;
use serde_json::Value;

use crate::app::{self, AppDefinition, AppLimits, Timestamp};
use crate::events::MarathonEvent;
use crate::model;
use crate::store::{self, Batch};

use super::deployment_json::{plan_json, step_json};
use super::deployments::TreeRequest;
use super::groups::{self, Delta, GroupChange, GroupRecord, TreeChange};
use super::{Action, Change, DeployError, Deployment, State};

/// A deployment planned from the tree as it is and a set of changes, nothing yet done: the
/// deployment, what to write to coord for it (each app, its new version, the groups, the
/// change of the tree, the deployment, and the deletion of the deployments it supersedes),
/// and those superseded.
pub(super) struct Plan {
    pub deployment: Deployment,
    pub batch: Batch,
    /// Deployments of the same apps that this one replaces (with `force`).
    pub superseded: Vec<String>,
    /// Each group the change creates, changes (its version included) or removes (`None`).
    pub groups: BTreeMap<String, Option<GroupRecord>>,
    /// Each app of the request as the change leaves it (as it was, if deleted), in request
    /// order: what `api_post_event` announces.
    pub posted: Vec<Value>,
    /// The step failure and failure of each deployment superseded.
    pub superseded_events: Vec<MarathonEvent>,
}

/// Plans app `changes` (see [`plan_tree`]).
#[cfg(test)]
pub(super) fn plan(
    state: &State,
    limits: &AppLimits,
    policy: &ContainerPolicy,
    changes: Vec<Change>,
    force: bool,
    deployment_id: String,
    now: Timestamp,
) -> Result<Plan, DeployError> {
    plan_tree(state, limits, policy, TreeRequest::apps(changes), force, deployment_id, now)
}

/// Plans `request` as deployment `deployment_id` at `now`: each app's action (start, stop,
/// scale, restart — none for an app left as it is), its definition checked against `limits`
/// and the container `policy` and stamped with its version, service ports assigned, the
/// steps ordered by dependencies (an app's own, and its groups'; a group named stands for
/// its apps); each group created, changed or removed, with every group around a change
/// taking `now` as its version; and the change of the tree kept for group versions. Pure:
/// the state is only read, and the caller supplies the id and the time. Refused if an app to
/// stop or change does not exist, if another deployment holds an app and `force` is not
/// given, if a definition breaks a limit, or if an app and a group would share an id.
pub(super) fn plan_tree(
    state: &State,
    limits: &AppLimits,
    policy: &ContainerPolicy,
    request: TreeRequest,
    force: bool,
    deployment_id: String,
    now: Timestamp,
) -> Result<Plan, DeployError> {
    let version = now.to_string();
    let TreeRequest { apps: changes, groups: group_requests, .. } = request;
    let mut targets = BTreeMap::new();
    let mut originals = BTreeMap::new();
    let mut actions: Vec<(Action, Vec<String>)> = Vec::new();
    let mut batch = Batch::default();
    let mut assigned: Vec<u16> = Vec::new();
    let mut posted = Vec::with_capacity(changes.len());
    let mut tree_change = TreeChange { version: now, apps: BTreeMap::new(), groups: BTreeMap::new() };
    let removed_groups: HashSet<&str> =
        group_requests.iter().filter(|g| g.dependencies.is_none()).map(|g| g.id.as_str()).collect();
    for Change { id, target, restart } in changes {
        let previous = state.apps.get(&id).filter(|e| !e.deleting).map(|e| e.definition.clone());
        if target.is_some() && state.groups.contains_key(&id) && !removed_groups.contains(id.as_str()) {
            let message = format!("An app may not have the id of the group {id}.");
            return Err(DeployError::Invalid(vec![app::Violation::new("/id", message)]));
        }
        let checked = match target {
            Some(mut definition) => {
                let mut violations = limits.check_change(&definition, previous.as_ref());
                violations.extend(app::check_policy(policy, &definition, previous.as_ref()));
                if !violations.is_empty() {
                    return Err(DeployError::Invalid(violations));
                }
                // Ports declared 0 get service ports no other app holds (nor one
                // assigned earlier in this deployment); an update keeps its own.
                let taken: std::collections::BTreeSet<u16> = state
                    .apps
                    .iter()
                    .filter(|(other, entry)| {
                        other.as_str() != id && !entry.deleting && !targets.contains_key(other.as_str())
                    })
                    .flat_map(|(_, entry)| entry.definition.service_ports())
                    .chain(assigned.iter().copied())
                    .collect();
                definition.assign_service_ports(previous.as_ref(), &taken, app::SERVICE_PORTS).map_err(|error| {
                    DeployError::Invalid(vec![app::Violation::new("/portDefinitions", error.to_string())])
                })?;
                assigned.extend(definition.service_ports());
                Some(definition)
            }
            None => None,
        };
        // Put back as it is: nothing to deploy (Marathon's plan has no step for it).
        if let (Some(old), Some(new)) = (&previous, &checked)
            && !restart
            && old.instances == new.instances
            && app::config_equal(old, new)
        {
            posted.push(old.to_json());
            continue;
        }
        let action = match (&previous, &checked) {
            (None, None) => return Err(DeployError::NotFound(id)),
            (None, Some(_)) => "StartApplication",
            (Some(_), None) => "StopApplication",
            (Some(old), Some(new)) if !restart && app::is_scale_only(old, new) => "ScaleApplication",
            (Some(_), Some(_)) => "RestartApplication",
        };
        let node = store::node_name(&id);
        let stamped = checked.map(|mut definition| {
            app::stamp(&mut definition, now, previous.as_ref());
            if restart && let Some(info) = definition.version_info.as_mut() {
                info.last_config_change_at = now;
            }
            definition
        });
        match &stamped {
            Some(definition) => {
                let json = definition.to_json();
                batch.put(format!("{}/{node}", store::APPS), &json);
                batch.put(format!("{}/{node}/{}", store::VERSIONS, model::version(definition)), &json);
                posted.push(json);
            }
            None => {
                batch.delete(format!("{}/{node}", store::APPS));
                posted.extend(previous.as_ref().map(AppDefinition::to_json));
            }
        }
        tree_change.apps.insert(
            id.clone(),
            Delta { before: previous.as_ref().map(model::version), after: stamped.as_ref().map(model::version) },
        );
        let dependencies =
            stamped.as_ref().map(|d| d.dependencies.iter().map(|p| p.to_string()).collect()).unwrap_or_default();
        targets.insert(id.clone(), stamped.map(|d| d.to_json()));
        originals.insert(id.clone(), previous.map(|d| d.to_json()));
        actions.push((Action { action: action.into(), app: id }, dependencies));
    }
    let affected: HashSet<&String> = targets.keys().collect();
    let locking: Vec<String> = state
        .deployments
        .values()
        .filter(|d| d.affected_apps.iter().any(|app| affected.contains(app)))
        .map(|d| d.id.clone())
        .collect();
    if !locking.is_empty() && !force {
        return Err(DeployError::Locked(locking));
    }
    let group_changes = plan_groups(state, &group_requests, &targets, now)?;
    for (id, after) in &group_changes {
        let path = format!("{}/{}", store::GROUPS, store::group_node(id));
        match after {
            Some(record) => batch.put(path, record),
            None => batch.delete(path),
        }
        tree_change.groups.insert(id.clone(), Delta { before: state.groups.get(id).cloned(), after: after.clone() });
    }
    if !group_changes.is_empty() {
        batch.put(format!("{}/{version}", store::GROUP_VERSIONS), &tree_change);
    }
    // Apps depend on what they name and on what their groups name; a group stands for its
    // apps in this deployment.
    let group_of = |id: &str| group_changes.get(id).cloned().flatten().or_else(|| state.groups.get(id).cloned());
    let actions: Vec<(Action, Vec<String>)> = actions
        .into_iter()
        .map(|(action, own)| {
            let inherited =
                groups::ancestors(&action.app).skip(1).filter_map(&group_of).flat_map(|group| group.dependencies);
            let mut expanded: Vec<String> = Vec::new();
            for dependency in own.into_iter().chain(inherited) {
                if targets.contains_key(&dependency) {
                    expanded.push(dependency);
                } else {
                    expanded.extend(groups::below(&targets, &dependency).map(|(id, _)| id.clone()));
                }
            }
            expanded.retain(|dependency| *dependency != action.app);
            (action, expanded)
        })
        .collect();
    let steps = order_steps(actions);
    let superseded_events = locking
        .iter()
        .filter_map(|id| state.deployments.get(id))
        .flat_map(|old| {
            let plan = plan_json(old, state);
            [
                MarathonEvent::DeploymentStepFailure {
                    plan: plan.clone(),
                    current_step: step_json(old, old.current_step),
                },
                MarathonEvent::DeploymentFailed {
                    id: old.id.clone(),
                    plan,
                    reason: "superseded by a forced deployment",
                },
            ]
        })
        .collect();
    let group_originals = group_changes.keys().map(|id| (id.clone(), state.groups.get(id).cloned())).collect();
    let deployment = Deployment {
        id: deployment_id.clone(),
        version: version.clone(),
        affected_apps: targets.keys().cloned().collect(),
        steps,
        current_step: 0,
        targets,
        originals,
        group_originals,
    };
    if !deployment.steps.is_empty() {
        batch.put(format!("{}/{}", store::DEPLOYMENTS, deployment.id), &deployment);
        for superseded in &locking {
            batch.delete(format!("{}/{superseded}", store::DEPLOYMENTS));
        }
    }
    Ok(Plan { deployment, batch, superseded: locking, groups: group_changes, posted, superseded_events })
}

/// The groups a change creates, changes or removes (`None`), at `now`: those `requests`
/// name, every group around an app the change creates (apps live in groups), and every
/// group around something changed, whose version becomes `now`.
fn plan_groups(
    state: &State,
    requests: &[GroupChange],
    targets: &BTreeMap<String, Option<Value>>,
    now: Timestamp,
) -> Result<BTreeMap<String, Option<GroupRecord>>, DeployError> {
    let mut after: BTreeMap<String, Option<GroupRecord>> = BTreeMap::new();
    let current = |after: &BTreeMap<String, Option<GroupRecord>>, id: &str| match after.get(id) {
        Some(changed) => changed.clone(),
        None => state.groups.get(id).cloned(),
    };
    let invalid = |message: String| DeployError::Invalid(vec![app::Violation::new("/id", message)]);
    // What changed, whose groups take the new version.
    let mut touched: Vec<String> = Vec::new();
    for request in requests {
        let id = request.id.as_str();
        match &request.dependencies {
            Some(dependencies) => {
                let app_there =
                    state.apps.get(id).is_some_and(|e| !e.deleting) && !matches!(targets.get(id), Some(None));
                if app_there || targets.get(id).is_some_and(Option::is_some) {
                    return Err(invalid(format!("An app with the path {id} already exists.")));
                }
                let existing = current(&after, id);
                if existing.as_ref().is_some_and(|g| g.dependencies == *dependencies) {
                    continue;
                }
                let record = GroupRecord { id: id.to_owned(), dependencies: dependencies.clone(), version: now };
                after.insert(id.to_owned(), Some(record));
                touched.push(id.to_owned());
            }
            None if id == "/" => return Err(invalid("The root group cannot be removed.".into())),
            None => {
                if state.groups.contains_key(id) {
                    after.insert(id.to_owned(), None);
                    touched.extend(groups::parent(id).map(str::to_owned));
                }
            }
        }
    }
    for (app_id, target) in targets {
        touched.extend(groups::parent(app_id).map(str::to_owned));
        if target.is_none() {
            continue;
        }
        for group in groups::ancestors(app_id).skip(1) {
            match current(&after, group) {
                Some(_) => {}
                None if after.contains_key(group) => {
                    return Err(invalid(format!("The app {app_id} cannot stay in the group {group}: it is removed.")));
                }
                None => {
                    let record = GroupRecord { id: group.to_owned(), dependencies: Vec::new(), version: now };
                    after.insert(group.to_owned(), Some(record));
                }
            }
        }
    }
    // A group created inside one that does not exist yet: that one is created too.
    let created: Vec<String> = after.iter().filter(|(_, g)| g.is_some()).map(|(id, _)| id.clone()).collect();
    for id in created {
        for group in groups::ancestors(&id).skip(1) {
            if current(&after, group).is_none() {
                if after.contains_key(group) {
                    return Err(invalid(format!("The group {id} cannot stay in the group {group}: it is removed.")));
                }
                let record = GroupRecord { id: group.to_owned(), dependencies: Vec::new(), version: now };
                after.insert(group.to_owned(), Some(record));
            }
        }
    }
    if after.is_empty() && targets.is_empty() {
        return Ok(after);
    }
    // The root always exists (a state loaded without it gets one, see `add_implicit_groups`).
    let root = || GroupRecord { id: "/".to_owned(), dependencies: Vec::new(), version: now };
    for changed in touched {
        for group in groups::ancestors(&changed) {
            let record = current(&after, group).or_else(|| (group == "/").then(root));
            if let Some(mut record) = record {
                record.version = now;
                after.insert(group.to_owned(), Some(record));
            }
        }
    }
    Ok(after)
}

/// Orders actions into steps: an app comes after the apps it depends on (when they are
/// part of the same deployment), as Marathon does.
pub(super) fn order_steps(actions: Vec<(Action, Vec<String>)>) -> Vec<Vec<Action>> {
    let ids: HashSet<String> = actions.iter().map(|(a, _)| a.app.clone()).collect();
    let mut depth: HashMap<String, usize> = HashMap::new();
    pub(super) fn depth_of(
        app: &str,
        deps: &HashMap<String, Vec<String>>,
        ids: &HashSet<String>,
        memo: &mut HashMap<String, usize>,
        seen: &mut HashSet<String>,
    ) -> usize {
        if let Some(d) = memo.get(app) {
            return *d;
        }
        if !seen.insert(app.to_owned()) {
            return 0; // a cycle: validation rejects these; do not loop
        }
        let d = deps
            .get(app)
            .map(|list| {
                list.iter()
                    .filter(|dep| ids.contains(*dep))
                    .map(|dep| depth_of(dep, deps, ids, memo, seen) + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        memo.insert(app.to_owned(), d);
        d
    }
    let deps: HashMap<String, Vec<String>> = actions.iter().map(|(a, d)| (a.app.clone(), d.clone())).collect();
    for (action, _) in &actions {
        let mut seen = HashSet::new();
        depth_of(&action.app, &deps, &ids, &mut depth, &mut seen);
    }
    let steps = depth.values().copied().max().unwrap_or(0) + 1;
    let mut ordered: Vec<Vec<Action>> = vec![Vec::new(); steps];
    for (action, _) in actions {
        let d = depth[&action.app];
        ordered[d].push(action);
    }
    ordered.retain(|step| !step.is_empty());
    ordered
}
