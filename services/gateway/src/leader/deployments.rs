//! Deployments: planning a change (state and change in, a deployment and its coord
//! batch out), committing it, cancelling it, and advancing its steps as apps converge.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use marina_proto::policy::ContainerPolicy;
use serde_json::{Value, json};
use tracing::Instrument;

use crate::app::{self, AppLimits, Timestamp};
use crate::engine::is_terminal;
use crate::events::MarathonEvent;
use crate::model;
use crate::readiness::ReadinessResult;
use crate::store::{self, Batch};

use super::{Action, AppEntry, Change, DeployError, Deployed, Deployment, Leader, State, parse_stored};

impl Leader {
    /// Carries out a set of app changes as one deployment. `target == None` deletes.
    pub async fn deploy(self: &Arc<Self>, changes: Vec<Change>, force: bool) -> Result<Deployed, DeployError> {
        self.deploy_derived(force, |_| Ok::<_, DeployError>(changes)).await
    }

    /// Like [`Leader::deploy`], for changes derived from the apps as they are: `derive` runs
    /// under the deployment lock, so what it reads (the app a partial update or a scale
    /// starts from, whether an id is taken) is what the deployment replaces. Two concurrent
    /// partial updates of one app thus both apply, the second on top of the first.
    pub async fn deploy_derived<E: From<DeployError>>(
        self: &Arc<Self>,
        force: bool,
        derive: impl FnOnce(&Self) -> Result<Vec<Change>, E>,
    ) -> Result<Deployed, E> {
        let serialized = self.deploy_lock.clone().lock_owned().await;
        let changes = derive(self)?;
        // Once its batch is on its way to coord, a deployment must also be recorded here:
        // a caller that goes away (a client that disconnects, a request past the port's
        // timeout) drops this future, and must not leave the apps committed in coord but
        // unknown to this leader until the next one. So the commit runs on its own task,
        // holding the deployment lock until it is done.
        let leader = self.clone();
        let commit = tokio::spawn(
            async move {
                let _serialized = serialized;
                leader.deploy_serialized(changes, force).await
            }
            // Still the request's work: its trace goes on to the master and agents.
            .in_current_span(),
        );
        match commit.await {
            Ok(result) => Ok(result?),
            // The panic has already failed the service (its hook); the caller unwinds too.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(DeployError::Unavailable("the gateway is shutting down".into()).into()),
        }
    }

    /// The deployment itself; the caller holds `deploy_lock`.
    pub(super) async fn deploy_serialized(&self, changes: Vec<Change>, force: bool) -> Result<Deployed, DeployError> {
        let now = Timestamp::now();
        let version = now.to_string();
        let deployment_id = marina_daemon::ids::uuid();
        let Plan { deployment, batch, superseded } =
            plan(&self.lock(), &self.config.limits, &self.config.policy, changes, force, deployment_id, now)?;
        self.apply(batch).await?;
        let plan_json = adopt(&mut self.lock(), &deployment, &superseded, marina_daemon::trace::carrier());
        for id in &superseded {
            let reason = "superseded by a forced deployment";
            self.events.publish(MarathonEvent::DeploymentFailed { id: id.clone(), plan: None, reason });
        }
        self.events.publish(MarathonEvent::DeploymentInfo { plan: plan_json, current_step: step_json(&deployment, 0) });
        self.converge_now.notify_one();
        // Versions beyond Marathon's limit go, off the request path.
        let store = self.store.clone();
        let kept: Vec<String> =
            deployment.targets.iter().filter(|(_, target)| target.is_some()).map(|(id, _)| id.clone()).collect();
        tokio::spawn(async move {
            for id in kept {
                if let Err(error) = store.prune_versions(&id, store::MAX_VERSIONS).await {
                    tracing::warn!(app = %id, %error, "pruning old versions failed; the next deployment retries");
                }
            }
        });
        Ok(Deployed { deployment_id: deployment.id, version })
    }

    /// Cancels a deployment: by default a rollback deployment restores the previous
    /// definitions; with `force` the deployment just stops where it is.
    pub async fn cancel_deployment(self: &Arc<Self>, id: &str, force: bool) -> Result<Option<Deployed>, DeployError> {
        let deployment =
            self.lock().deployments.get(id).cloned().ok_or_else(|| DeployError::NoDeployment(id.to_owned()))?;
        if force {
            let mut batch = Batch::default();
            batch.delete(format!("{}/{id}", store::DEPLOYMENTS));
            self.apply(batch).await?;
            let plan = {
                let mut state = self.lock();
                state.deployments.remove(id);
                deployment_json(&deployment, &state)
            };
            self.events.publish(MarathonEvent::DeploymentFailed {
                id: id.to_owned(),
                plan: Some(plan),
                reason: "canceled",
            });
            return Ok(None);
        }
        let plan = deployment_json(&deployment, &self.lock());
        // Previous definitions come back; apps this deployment created are deleted.
        let rollback = self
            .deploy_derived(true, |leader| {
                let state = leader.lock();
                Ok::<_, DeployError>(
                    deployment
                        .originals
                        .iter()
                        .map(|(app_id, original)| Change::to(app_id, original.as_ref().and_then(parse_stored)))
                        .filter(|change| {
                            change.target.is_some() || state.apps.get(&change.id).is_some_and(|e| !e.deleting)
                        })
                        .collect(),
                )
            })
            .await?;
        let reason = "rolled back";
        self.events.publish(MarathonEvent::DeploymentFailed { id: id.to_owned(), plan: Some(plan), reason });
        Ok(Some(rollback))
    }
}

/// A deployment planned from the apps as they are and a set of changes, nothing yet done:
/// the deployment, what to write to coord for it (each app, its new version, the
/// deployment, and the deletion of the deployments it supersedes), and those superseded.
pub(super) struct Plan {
    pub deployment: Deployment,
    pub batch: Batch,
    /// Deployments of the same apps that this one replaces (with `force`).
    pub superseded: Vec<String>,
}

/// Plans `changes` as deployment `deployment_id` at `now`: each app's action (start, stop,
/// scale, restart), its definition checked against `limits` and the container `policy` and
/// stamped with its version,
/// service ports assigned, the steps ordered by dependencies. Pure: the state is only read,
/// and the caller supplies the id and the time. Refused if an app to stop or change does
/// not exist, if another deployment holds an app and `force` is not given, or if a
/// definition breaks a limit.
pub(super) fn plan(
    state: &State,
    limits: &AppLimits,
    policy: &ContainerPolicy,
    changes: Vec<Change>,
    force: bool,
    deployment_id: String,
    now: Timestamp,
) -> Result<Plan, DeployError> {
    let version = now.to_string();
    let affected: HashSet<&String> = changes.iter().map(|change| &change.id).collect();
    let locking: Vec<String> = state
        .deployments
        .values()
        .filter(|d| d.affected_apps.iter().any(|app| affected.contains(app)))
        .map(|d| d.id.clone())
        .collect();
    if !locking.is_empty() && !force {
        return Err(DeployError::Locked(locking));
    }
    let mut targets = BTreeMap::new();
    let mut originals = BTreeMap::new();
    let mut actions: Vec<(Action, Vec<String>)> = Vec::new();
    let mut batch = Batch::default();
    let mut assigned: Vec<u16> = Vec::new();
    for Change { id, target, restart } in changes {
        let previous = state.apps.get(&id).filter(|e| !e.deleting).map(|e| e.definition.clone());
        let action = match (&previous, &target) {
            (None, None) => return Err(DeployError::NotFound(id)),
            (None, Some(_)) => "StartApplication",
            (Some(_), None) => "StopApplication",
            (Some(old), Some(new)) if !restart && app::is_scale_only(old, new) => "ScaleApplication",
            (Some(_), Some(_)) => "RestartApplication",
        };
        let node = store::node_name(&id);
        let stamped = match target {
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
        let stamped = stamped.map(|mut definition| {
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
            }
            None => batch.delete(format!("{}/{node}", store::APPS)),
        }
        let dependencies =
            stamped.as_ref().map(|d| d.dependencies.iter().map(|p| p.to_string()).collect()).unwrap_or_default();
        targets.insert(id.clone(), stamped.map(|d| d.to_json()));
        originals.insert(id.clone(), previous.map(|d| d.to_json()));
        actions.push((Action { action: action.into(), app: id }, dependencies));
    }
    let steps = order_steps(actions);
    let deployment = Deployment {
        id: deployment_id.clone(),
        version: version.clone(),
        affected_apps: targets.keys().cloned().collect(),
        steps,
        current_step: 0,
        targets,
        originals,
    };
    batch.put(format!("{}/{}", store::DEPLOYMENTS, deployment.id), &deployment);
    for superseded in &locking {
        batch.delete(format!("{}/{superseded}", store::DEPLOYMENTS));
    }
    Ok(Plan { deployment, batch, superseded: locking })
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

/// Takes a committed deployment into the state: its targets become the apps' definitions
/// (deleted apps are hidden until their instances are gone), the deployments it supersedes
/// go, its first step starts, and its apps' launches join the `trace` of the request behind
/// it. Returns the deployment's JSON for its events.
pub(super) fn adopt(
    state: &mut State,
    deployment: &Deployment,
    superseded: &[String],
    trace: marina_daemon::trace::Carrier,
) -> Value {
    for id in superseded {
        state.deployments.remove(id);
    }
    for (id, target) in &deployment.targets {
        let target = target.as_ref().and_then(parse_stored);
        match (target, state.apps.get_mut(id)) {
            (Some(definition), Some(entry)) => {
                entry.definition = definition;
                entry.deleting = false;
            }
            (Some(definition), None) => {
                state.apps.insert(id.clone(), AppEntry { definition, active: None, deleting: false });
            }
            (None, Some(entry)) => entry.deleting = true,
            (None, None) => {}
        }
        state.backoff.remove(id);
        state.instances.touch(id);
    }
    activate_step(state, deployment, 0);
    for id in &deployment.affected_apps {
        state.traces.insert(id.clone(), trace.clone());
    }
    state.deployments.insert(deployment.id.clone(), deployment.clone());
    deployment_json(deployment, state)
}

/// Makes the apps of step `index` converge to their targets.
pub(super) fn activate_step(state: &mut State, deployment: &Deployment, index: usize) {
    let Some(step) = deployment.steps.get(index) else { return };
    for action in step {
        let target = deployment.targets.get(&action.app).cloned().flatten().and_then(|v| parse_stored(&v));
        if let Some(entry) = state.apps.get_mut(&action.app) {
            entry.active = target;
        }
        state.instances.touch(&action.app);
    }
}

/// Advances deployments whose current step converged; returns the coord writes, events,
/// and apps to forget once written.
pub(super) fn advance_deployments(
    state: &mut State,
    converged: &HashSet<String>,
) -> (Batch, Vec<MarathonEvent>, Vec<String>) {
    let mut batch = Batch::default();
    let mut events = Vec::new();
    let mut removed_apps = Vec::new();
    let step_converged = |state: &State, step: &[Action]| {
        step.iter().all(|action| converged.contains(&action.app) || !state.apps.contains_key(&action.app))
    };
    // Only deployments whose current step converged are copied and advanced: with thousands
    // in progress, copying each every round costs more than everything else.
    let ready: Vec<String> = state
        .deployments
        .iter()
        .filter(|(_, d)| d.steps.get(d.current_step).is_some_and(|step| step_converged(state, step)))
        .map(|(id, _)| id.clone())
        .collect();
    for id in ready {
        let mut deployment = state.deployments[&id].clone();
        let mut advanced = false;
        while let Some(step) = deployment.steps.get(deployment.current_step) {
            if !step_converged(state, step) {
                break;
            }
            for action in step {
                if action.action == "StopApplication" && state.apps.get(&action.app).is_some_and(|e| e.deleting) {
                    let node = store::node_name(&action.app);
                    batch.delete(format!("{}/{node}", store::VERSIONS));
                    removed_apps.push(action.app.clone());
                    events.push(MarathonEvent::AppTerminated { app_id: action.app.clone() });
                }
            }
            events.push(MarathonEvent::DeploymentStepSuccess {
                plan: deployment_json(&deployment, state),
                current_step: step_json(&deployment, deployment.current_step),
            });
            deployment.current_step += 1;
            advanced = true;
            activate_step(state, &deployment, deployment.current_step);
        }
        if !advanced {
            continue;
        }
        if deployment.current_step >= deployment.steps.len() {
            for app in &deployment.affected_apps {
                state.traces.remove(app);
            }
            batch.delete(format!("{}/{id}", store::DEPLOYMENTS));
            events.push(MarathonEvent::DeploymentSuccess { id: id.clone(), plan: deployment_json(&deployment, state) });
            state.deployments.remove(&id);
        } else {
            batch.put(format!("{}/{id}", store::DEPLOYMENTS), &deployment);
            state.deployments.insert(id, deployment);
        }
    }
    (batch, events, removed_apps)
}

pub(super) fn step_json(deployment: &Deployment, index: usize) -> Value {
    let actions = deployment.steps.get(index).cloned().unwrap_or_default();
    json!({ "actions": actions.iter().map(|a| json!({ "action": a.action, "app": a.app })).collect::<Vec<_>>() })
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
        "steps": deployment.steps.iter().map(|step| json!({ "actions": step.iter().map(|a| json!({ "action": a.action, "app": a.app })).collect::<Vec<_>>() })).collect::<Vec<_>>(),
        "currentActions": deployment.steps.get(deployment.current_step).map(|step| step.iter().map(|a| json!({ "action": a.action, "app": a.app, "readinessCheckResults": readiness_results(state, &a.app) })).collect::<Vec<_>>()).unwrap_or_default(),
        "currentStep": (deployment.current_step + 1).min(deployment.steps.len()),
        "totalSteps": deployment.steps.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{app, state_with, web};

    fn planned(state: &State, changes: Vec<Change>, force: bool) -> Result<Plan, DeployError> {
        let now = Timestamp::parse("2026-12-06T12:00:00.000Z").unwrap();
        plan(state, &AppLimits::default(), &ContainerPolicy::default(), changes, force, "d-new".into(), now)
    }

    fn actions(plan: &Plan) -> Vec<Vec<(String, String)>> {
        plan.deployment
            .steps
            .iter()
            .map(|step| step.iter().map(|a| (a.action.clone(), a.app.clone())).collect())
            .collect()
    }

    #[test]
    fn a_new_app_starts_and_is_written_with_its_version_and_the_deployment() {
        let plan = planned(&State::default(), vec![Change::to("/web", Some(web(2, "sleep 1")))], false).unwrap();
        assert_eq!(actions(&plan), [[("StartApplication".to_owned(), "/web".to_owned())]]);
        assert_eq!(plan.deployment.affected_apps, ["/web"]);
        assert_eq!(plan.deployment.version, "2026-12-06T12:00:00.000Z");
        assert_eq!(
            plan.batch.describe(),
            [
                "put /gateway/apps/web",
                "put /gateway/versions/web/2026-12-06T12:00:00.000Z",
                "put /gateway/deployments/d-new",
            ]
        );
        let target = plan.deployment.targets["/web"].as_ref().expect("a target");
        assert_eq!(target["version"], "2026-12-06T12:00:00.000Z");
        assert!(plan.deployment.originals["/web"].is_none(), "nothing to roll back to");
        assert!(plan.superseded.is_empty());
    }

    #[test]
    fn each_change_is_named_as_marathon_names_it() {
        let state = state_with(&[web(1, "sleep 1")]);
        let cases = [
            (Change::to("/web", Some(web(3, "sleep 1"))), "ScaleApplication"),
            (Change::to("/web", Some(web(1, "sleep 2"))), "RestartApplication"),
            (Change { id: "/web".into(), target: Some(web(1, "sleep 1")), restart: true }, "RestartApplication"),
            (Change::to("/web", None), "StopApplication"),
        ];
        for (change, expected) in cases {
            let plan = planned(&state, vec![change], false).unwrap();
            assert_eq!(actions(&plan), [[(expected.to_owned(), "/web".to_owned())]]);
            assert!(plan.deployment.originals["/web"].is_some(), "the previous definition is kept for a rollback");
        }
        let stop = planned(&state, vec![Change::to("/web", None)], false).unwrap();
        assert_eq!(stop.batch.describe(), ["delete /gateway/apps/web", "put /gateway/deployments/d-new"]);
    }

    #[test]
    fn an_app_that_does_not_exist_cannot_be_stopped() {
        let refused = planned(&State::default(), vec![Change::to("/web", None)], false);
        assert!(matches!(refused, Err(DeployError::NotFound(id)) if id == "/web"));
    }

    #[test]
    fn an_app_in_a_deployment_needs_force_which_supersedes_it() {
        let mut state = state_with(&[web(1, "sleep 1")]);
        let running = planned(&state, vec![Change::to("/web", Some(web(2, "sleep 1")))], false).unwrap().deployment;
        state.deployments.insert("d-running".into(), Deployment { id: "d-running".into(), ..running });
        let change = || vec![Change::to("/web", Some(web(3, "sleep 1")))];
        assert!(matches!(planned(&state, change(), false), Err(DeployError::Locked(ids)) if ids == ["d-running"]));
        let forced = planned(&state, change(), true).unwrap();
        assert_eq!(forced.superseded, ["d-running"]);
        assert!(forced.batch.describe().contains(&"delete /gateway/deployments/d-running".to_owned()));
    }

    #[test]
    fn limits_are_checked_against_the_definition() {
        let refused = planned(&State::default(), vec![Change::to("/web", Some(web(1_000_000, "sleep 1")))], false);
        match refused {
            Err(DeployError::Invalid(violations)) => {
                assert!(violations.iter().any(|v| v.path == "/instances"), "{violations:?}")
            }
            other => panic!("expected Invalid, got {:?}", other.map(|plan| plan.deployment.id)),
        }
    }

    #[test]
    fn dependencies_order_the_steps_and_service_ports_are_assigned_apart() {
        let db = app(r#"{"id": "/db", "cmd": "x", "cpus": 0.1, "mem": 32, "portDefinitions": [{"port": 0}]}"#);
        let web = app(
            r#"{"id": "/web", "cmd": "x", "cpus": 0.1, "mem": 32, "dependencies": ["/db"], "portDefinitions": [{"port": 0}]}"#,
        );
        let plan = planned(&State::default(), vec![Change::to("/web", Some(web)), Change::to("/db", Some(db))], false)
            .unwrap();
        assert_eq!(
            actions(&plan),
            [[("StartApplication".to_owned(), "/db".to_owned())], [("StartApplication".to_owned(), "/web".to_owned())]]
        );
        let port = |id: &str| plan.deployment.targets[id].as_ref().unwrap()["portDefinitions"][0]["port"].as_u64();
        assert!(port("/db").is_some_and(|p| p > 0) && port("/web").is_some_and(|p| p > 0));
        assert_ne!(port("/db"), port("/web"), "no service port twice");
    }
}
