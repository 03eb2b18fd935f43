//! Deployments: committing a planned change ([`super::planning`]), cancelling it, and
//! advancing its steps as apps converge.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use tracing::Instrument;

use crate::app::Timestamp;
use crate::events::MarathonEvent;
use crate::store::{self, Batch};

use super::deployment_json::{health_checks_of, plan_json, step_health_events, step_json, steps_json};
use super::groups::{self, GroupChange, GroupRecord, TreeChange};
use super::planning::{Plan, plan_tree};
use super::{Action, AppEntry, Change, DeployError, Deployed, Deployment, Leader, State, parse_stored};

/// Who asked for a change, and through which path: each app it changes is announced as an
/// `api_post_event`.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The request's path (`/v2/apps/web`, `/v2/groups/prod`).
    pub uri: String,
    /// The caller's address, where the door knows it.
    pub client_ip: Option<String>,
}

/// A change of the tree: apps and groups changed together, as one deployment.
#[derive(Default)]
pub struct TreeRequest {
    pub apps: Vec<Change>,
    pub groups: Vec<GroupChange>,
    /// The finest group the change is made in (`group_change_*`'s `groupId`); `None`: the
    /// parent of the one app changed, else the root.
    pub group: Option<String>,
    pub origin: Option<Origin>,
}

impl TreeRequest {
    pub fn apps(apps: Vec<Change>) -> Self {
        TreeRequest { apps, ..TreeRequest::default() }
    }

    /// The group named in `group_change_*` events.
    fn group(&self) -> String {
        match (&self.group, self.apps.as_slice()) {
            (Some(group), _) => group.clone(),
            (None, [one]) => groups::parent(&one.id).unwrap_or("/").to_owned(),
            (None, _) => "/".to_owned(),
        }
    }
}

/// What a change came to: a deployment (possibly of nothing, finished at once), or with
/// `dryRun` the steps it would take.
#[derive(Debug, Clone)]
pub enum Outcome {
    Deployed(Deployed),
    /// Marathon's dry-run answer: `{"steps": [...]}`.
    DryRun(Value),
}

impl Leader {
    /// Carries out a set of app changes as one deployment. `target == None` deletes.
    pub async fn deploy(self: &Arc<Self>, changes: Vec<Change>, force: bool) -> Result<Deployed, DeployError> {
        self.deploy_derived(force, |_| Ok::<_, DeployError>(changes)).await
    }

    /// Like [`Leader::deploy`], for changes derived from the apps as they are: `derive` runs
    /// under the deployment lock, so what it reads (the app a partial update or a scale
    /// starts from, whether an id is taken) is what the deployment replaces. Two concurrent
    /// partial updates of one app thus both apply, the second on top of the first.
    pub async fn deploy_derived<E: From<DeployError> + std::fmt::Display>(
        self: &Arc<Self>,
        force: bool,
        derive: impl FnOnce(&Self) -> Result<Vec<Change>, E>,
    ) -> Result<Deployed, E> {
        let outcome = self.deploy_tree(force, false, None, |leader| derive(leader).map(TreeRequest::apps)).await?;
        match outcome {
            Outcome::Deployed(deployed) => Ok(deployed),
            Outcome::DryRun(_) => unreachable!("not a dry run"),
        }
    }

    /// Like [`Leader::deploy_derived`], for changes of apps and groups. A change refused
    /// (by `derive`, or when planned or written) is announced as `group_change_failed` in
    /// group `group` (the root if `None`); with `dry_run`, nothing is done and the steps the
    /// change would take are returned.
    pub async fn deploy_tree<E: From<DeployError> + std::fmt::Display>(
        self: &Arc<Self>,
        force: bool,
        dry_run: bool,
        group: Option<&str>,
        derive: impl FnOnce(&Self) -> Result<TreeRequest, E>,
    ) -> Result<Outcome, E> {
        let asked = Instant::now();
        let serialized = self.deploy_lock.clone().lock_owned().await;
        self.metrics.deployment_phases.queued.observe(asked.elapsed().as_secs_f64());
        let request = match derive(self) {
            Ok(request) => request,
            Err(error) => {
                if !dry_run {
                    let version = next_version(&self.lock()).to_string();
                    let group_id = group.unwrap_or("/").to_owned();
                    self.events.publish(MarathonEvent::GroupChangeFailed {
                        group_id,
                        version,
                        reason: error.to_string(),
                    });
                }
                return Err(error);
            }
        };
        Ok(self.carry_out(serialized, request, force, dry_run).await?)
    }

    /// Plans `request` (with `dry_run`, only that) and commits it, holding the deployment
    /// lock (`serialized`) throughout.
    pub(super) async fn carry_out(
        self: &Arc<Self>,
        serialized: tokio::sync::OwnedMutexGuard<()>,
        request: TreeRequest,
        force: bool,
        dry_run: bool,
    ) -> Result<Outcome, DeployError> {
        if dry_run {
            // Marathon's dry run plans against the tree as it is, whatever deployments hold.
            let now = next_version(&self.lock());
            let planned =
                plan_tree(&self.lock(), &self.config.limits, &self.config.policy, request, true, String::new(), now)?;
            return Ok(Outcome::DryRun(json!({ "steps": steps_json(&planned.deployment) })));
        }
        // Once its batch is on its way to coord, a deployment must also be recorded here:
        // a caller that goes away (a client that disconnects, a request past the port's
        // timeout) drops this future, and must not leave the apps committed in coord but
        // unknown to this leader until the next one. So the commit runs on its own task,
        // holding the deployment lock until it is done.
        let leader = self.clone();
        let commit = tokio::spawn(
            async move {
                let _serialized = serialized;
                leader.deploy_serialized(request, force).await
            }
            // Still the request's work: its trace goes on to the master and agents.
            .in_current_span(),
        );
        match commit.await {
            Ok(result) => Ok(Outcome::Deployed(result?)),
            // The panic has already failed the service (its hook); the caller unwinds too.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(DeployError::Unavailable("the gateway is shutting down".into())),
        }
    }

    /// The deployment itself; the caller holds `deploy_lock`. A change that changes nothing
    /// (an app put back as it is, a scale by 1, an empty list) writes nothing and answers a
    /// deployment that is over at once, as Marathon's empty deployment plans are.
    pub(super) async fn deploy_serialized(&self, request: TreeRequest, force: bool) -> Result<Deployed, DeployError> {
        let phases = &self.metrics.deployment_phases;
        let started = Instant::now();
        let now = next_version(&self.lock());
        let version = now.to_string();
        let deployment_id = marina_daemon::ids::uuid();
        let group_id = request.group();
        let origin = request.origin.clone();
        let planned =
            plan_tree(&self.lock(), &self.config.limits, &self.config.policy, request, force, deployment_id, now);
        phases.plan.observe(started.elapsed().as_secs_f64());
        let planned = match planned {
            Ok(planned) => planned,
            Err(error) => {
                let reason = error.to_string();
                self.events.publish(MarathonEvent::GroupChangeFailed { group_id, version, reason });
                return Err(error);
            }
        };
        let Plan { deployment, batch, superseded, groups: group_changes, posted, superseded_events } = planned;
        // Each app is announced once the change is accepted, last (as Marathon does, once its
        // group manager answers).
        let announce = |leader: &Self| {
            if let Some(Origin { uri, client_ip }) = &origin {
                for app_definition in &posted {
                    leader.events.publish(MarathonEvent::ApiPost {
                        client_ip: client_ip.clone(),
                        uri: uri.clone(),
                        app_definition: app_definition.clone(),
                    });
                }
            }
        };
        if deployment.steps.is_empty() && group_changes.is_empty() {
            // Nothing to do: the tree (and its versions) stay as they are.
            let current = self.lock().groups.get(&group_id).map_or(version, |group| group.version.to_string());
            let plan = plan_json(&deployment, &self.lock());
            self.events.publish(MarathonEvent::DeploymentSuccess { id: deployment.id.clone(), plan });
            self.events.publish(MarathonEvent::GroupChangeSuccess { group_id, version: current.clone() });
            announce(self);
            return Ok(Deployed { deployment_id: deployment.id, version: current });
        }
        let committing = Instant::now();
        let committed = self.apply(batch).await;
        phases.commit.observe(committing.elapsed().as_secs_f64());
        if let Err(error) = committed {
            let reason = error.to_string();
            self.events.publish(MarathonEvent::GroupChangeFailed { group_id, version, reason });
            return Err(error);
        }
        let adopting = Instant::now();
        let (plan_json, health_events) = {
            let mut state = self.lock();
            adopt_groups(&mut state, &group_changes);
            if deployment.steps.is_empty() {
                (plan_json(&deployment, &state), Vec::new())
            } else {
                let plan = adopt(&mut state, &deployment, &superseded, marina_daemon::trace::carrier());
                (plan, step_health_events(&deployment, 0))
            }
        };
        for event in superseded_events {
            self.events.publish(event);
        }
        if deployment.steps.is_empty() {
            // Only groups changed: a deployment of nothing, over at once.
            self.events.publish(MarathonEvent::DeploymentSuccess { id: deployment.id.clone(), plan: plan_json });
        } else {
            self.events
                .publish(MarathonEvent::DeploymentInfo { plan: plan_json, current_step: step_json(&deployment, 0) });
            for event in health_events {
                self.events.publish(event);
            }
        }
        self.events.publish(MarathonEvent::GroupChangeSuccess { group_id, version: version.clone() });
        announce(self);
        phases.adopt.observe(adopting.elapsed().as_secs_f64());
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
            if let Err(error) = store.prune_group_versions(store::MAX_VERSIONS, TreeChange::deleted_apps).await {
                tracing::warn!(%error, "pruning old group versions failed; the next change retries");
            }
        });
        Ok(Deployed { deployment_id: deployment.id, version })
    }

    /// Cancels a deployment: by default a rollback deployment restores the previous
    /// definitions (and groups); with `force` the deployment just stops where it is. The step
    /// it was carrying out fails (`deployment_step_failure`), and so does it.
    pub async fn cancel_deployment(self: &Arc<Self>, id: &str, force: bool) -> Result<Option<Deployed>, DeployError> {
        let deployment =
            self.lock().deployments.get(id).cloned().ok_or_else(|| DeployError::NoDeployment(id.to_owned()))?;
        let failed = |leader: &Self, plan: Value, reason| {
            let current_step = step_json(&deployment, deployment.current_step);
            leader.events.publish(MarathonEvent::DeploymentStepFailure { plan: plan.clone(), current_step });
            leader.events.publish(MarathonEvent::DeploymentFailed { id: id.to_owned(), plan, reason });
        };
        if force {
            let mut batch = Batch::default();
            batch.delete(format!("{}/{id}", store::DEPLOYMENTS));
            self.apply(batch).await?;
            let plan = {
                let mut state = self.lock();
                state.deployments.remove(id);
                plan_json(&deployment, &state)
            };
            failed(self, plan, "canceled");
            return Ok(None);
        }
        let plan = plan_json(&deployment, &self.lock());
        // Previous definitions come back; apps this deployment created are deleted, and so
        // are the groups it created (once nothing else is in them).
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
        let groups_changed = !restore_groups(&self.lock(), &deployment.group_originals).is_empty();
        if groups_changed {
            let restored = self
                .deploy_tree(true, false, None, |leader| {
                    Ok::<_, DeployError>(TreeRequest {
                        groups: restore_groups(&leader.lock(), &deployment.group_originals),
                        ..TreeRequest::default()
                    })
                })
                .await;
            if let Err(error) = restored {
                tracing::warn!(deployment = %id, %error, "restoring the groups of a canceled deployment failed");
            }
        }
        failed(self, plan, "rolled back");
        Ok(Some(rollback))
    }
}

/// The version of the next change of the tree: now, or just after the tree's version if the
/// clock reads earlier (versions only grow, and each names one change).
pub(super) fn next_version(state: &State) -> Timestamp {
    let now = Timestamp::now();
    let root = groups::root_version(state);
    if now <= root { root.plus_millis(1) } else { now }
}

/// Group changes putting back the groups a canceled deployment changed: each as it was (its
/// dependencies), and the ones it created removed unless an app (or group) is in them.
fn restore_groups(state: &State, originals: &BTreeMap<String, Option<GroupRecord>>) -> Vec<GroupChange> {
    originals
        .iter()
        .filter_map(|(id, original)| match (original, state.groups.get(id)) {
            (Some(was), Some(now)) if was.dependencies == now.dependencies => None,
            (Some(was), _) => Some(GroupChange { id: id.clone(), dependencies: Some(was.dependencies.clone()) }),
            (None, Some(_)) => {
                let holds_apps = groups::below(&state.apps, id).any(|(_, entry)| !entry.deleting);
                let holds_groups = groups::below(&state.groups, id).next().is_some();
                (!holds_apps && !holds_groups).then(|| GroupChange { id: id.clone(), dependencies: None })
            }
            (None, None) => None,
        })
        .collect()
}

/// Takes the groups of a committed change into the state.
pub(super) fn adopt_groups(state: &mut State, changes: &BTreeMap<String, Option<GroupRecord>>) {
    for (id, after) in changes {
        match after {
            Some(record) => state.groups.insert(id.clone(), record.clone()),
            None => state.groups.remove(id),
        };
    }
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
    plan_json(deployment, state)
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
                // A deleted app's versions stay (a group rollback may bring it back) until
                // the change that deleted it is no longer kept (`Store::prune_group_versions`).
                if action.action == "StopApplication" && state.apps.get(&action.app).is_some_and(|e| e.deleting) {
                    removed_apps.push(action.app.clone());
                    events.push(MarathonEvent::AppTerminated { app_id: action.app.clone() });
                }
                // The replaced version's instances are gone: its checks stop.
                if action.action == "RestartApplication" {
                    events.extend(
                        health_checks_of(deployment.originals.get(&action.app))
                            .map(|_| MarathonEvent::RemoveHealthCheck { app_id: action.app.clone() }),
                    );
                }
            }
            events.push(MarathonEvent::DeploymentStepSuccess {
                plan: plan_json(&deployment, state),
                current_step: step_json(&deployment, deployment.current_step),
            });
            deployment.current_step += 1;
            advanced = true;
            activate_step(state, &deployment, deployment.current_step);
            if deployment.current_step < deployment.steps.len() {
                events.push(MarathonEvent::DeploymentInfo {
                    plan: plan_json(&deployment, state),
                    current_step: step_json(&deployment, deployment.current_step),
                });
                events.extend(step_health_events(&deployment, deployment.current_step));
            }
        }
        if !advanced {
            continue;
        }
        if deployment.current_step >= deployment.steps.len() {
            for app in &deployment.affected_apps {
                state.traces.remove(app);
            }
            batch.delete(format!("{}/{id}", store::DEPLOYMENTS));
            events.push(MarathonEvent::DeploymentSuccess { id: id.clone(), plan: plan_json(&deployment, state) });
            state.deployments.remove(&id);
        } else {
            batch.put(format!("{}/{id}", store::DEPLOYMENTS), &deployment);
            state.deployments.insert(id, deployment);
        }
    }
    (batch, events, removed_apps)
}

#[cfg(test)]
mod tests {
    use marina_proto::policy::ContainerPolicy;

    use super::*;
    use crate::app::{AppDefinition, AppLimits};
    use crate::leader::fixtures::{app, state_with, web};
    use crate::leader::groups::{self, Decided, GroupUpdate};
    use crate::leader::planning::plan;

    const NOW: &str = "2026-12-06T12:00:00.000Z";

    fn planned(state: &State, changes: Vec<Change>, force: bool) -> Result<Plan, DeployError> {
        let now = Timestamp::parse(NOW).unwrap();
        plan(state, &AppLimits::default(), &ContainerPolicy::default(), changes, force, "d-new".into(), now)
    }

    fn planned_tree(state: &State, request: TreeRequest) -> Result<Plan, DeployError> {
        let now = Timestamp::parse(NOW).unwrap();
        plan_tree(state, &AppLimits::default(), &ContainerPolicy::default(), request, false, "d-new".into(), now)
    }

    /// `/web` as `web` makes it, without ports (so that a state built from it holds exactly
    /// what a deployment would have stored).
    fn portless(instances: i64, cmd: &str) -> AppDefinition {
        let mut app = web(instances, cmd);
        app.port_definitions.clear();
        app
    }

    /// An app `id` running `sleep 1`, with `extra` fields.
    fn app_at(id: &str, extra: serde_json::Value) -> AppDefinition {
        let mut json = json!({ "id": id, "cmd": "sleep 1", "cpus": 0.1, "mem": 32, "portDefinitions": [] });
        json.as_object_mut().unwrap().extend(extra.as_object().cloned().unwrap_or_default());
        app(&json.to_string())
    }

    /// `state` after `plan` is committed (groups and the deployment taken in).
    fn committed(state: &mut State, plan: &Plan) {
        adopt_groups(state, &plan.groups);
        if !plan.deployment.steps.is_empty() {
            adopt(state, &plan.deployment, &plan.superseded, Default::default());
        }
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
                "put /gateway/groups/_",
                "put /gateway/groupversions/2026-12-06T12:00:00.000Z",
                "put /gateway/deployments/d-new",
            ],
            "the app, its version, its group (the root, at a new version), the change, the deployment"
        );
        assert_eq!(plan.groups["/"].as_ref().map(|root| root.version.to_string()).as_deref(), Some(NOW));
        let target = plan.deployment.targets["/web"].as_ref().expect("a target");
        assert_eq!(target["version"], "2026-12-06T12:00:00.000Z");
        assert!(plan.deployment.originals["/web"].is_none(), "nothing to roll back to");
        assert!(plan.superseded.is_empty());
    }

    #[test]
    fn each_change_is_named_as_marathon_names_it() {
        let state = state_with(&[portless(1, "sleep 1")]);
        let cases = [
            (Change::to("/web", Some(portless(3, "sleep 1"))), "ScaleApplication"),
            (Change::to("/web", Some(portless(1, "sleep 2"))), "RestartApplication"),
            (Change { id: "/web".into(), target: Some(portless(1, "sleep 1")), restart: true }, "RestartApplication"),
            (Change::to("/web", None), "StopApplication"),
        ];
        for (change, expected) in cases {
            let plan = planned(&state, vec![change], false).unwrap();
            assert_eq!(actions(&plan), [[(expected.to_owned(), "/web".to_owned())]]);
            assert!(plan.deployment.originals["/web"].is_some(), "the previous definition is kept for a rollback");
        }
        let stop = planned(&state, vec![Change::to("/web", None)], false).unwrap();
        let writes = [
            "delete /gateway/apps/web",
            "put /gateway/groups/_",
            &format!("put /gateway/groupversions/{NOW}"),
            "put /gateway/deployments/d-new",
        ];
        assert_eq!(stop.batch.describe(), writes, "its versions stay (a group rollback may need them)");
    }

    #[test]
    fn an_app_put_back_as_it_is_takes_no_step_and_a_change_of_nothing_writes_nothing() {
        let mut state = state_with(&[portless(2, "sleep 1")]);
        groups::add_implicit_groups(&mut state);
        let same = planned(&state, vec![Change::to("/web", Some(portless(2, "sleep 1")))], false).unwrap();
        assert!(same.deployment.steps.is_empty() && same.groups.is_empty() && same.batch.is_empty());
        assert_eq!(same.posted.len(), 1, "still announced");
        assert_eq!(same.posted[0]["instances"], 2);
        let nothing = planned(&state, Vec::new(), false).unwrap();
        assert!(nothing.deployment.steps.is_empty() && nothing.batch.is_empty() && nothing.posted.is_empty());
        // Nor is a deployment in progress in the way of a change of nothing (Marathon's
        // empty plan conflicts with no deployment).
        let running = planned(&state, vec![Change::to("/web", Some(portless(3, "sleep 1")))], false).unwrap();
        state.deployments.insert("d-running".into(), Deployment { id: "d-running".into(), ..running.deployment });
        assert!(planned(&state, vec![Change::to("/web", Some(portless(2, "sleep 1")))], false).is_ok());
        assert!(matches!(
            planned(&state, vec![Change::to("/web", Some(portless(4, "sleep 1")))], false),
            Err(DeployError::Locked(_))
        ));
    }

    #[test]
    fn an_empty_group_is_a_change_of_groups_only_kept_with_its_version() {
        let mut state = State::default();
        groups::add_implicit_groups(&mut state);
        let request = TreeRequest {
            groups: vec![GroupChange { id: "/g/sub".into(), dependencies: Some(vec![]) }],
            ..TreeRequest::default()
        };
        let plan = planned_tree(&state, request).unwrap();
        assert!(plan.deployment.steps.is_empty(), "no app to deploy");
        let writes = [
            "put /gateway/groups/_",
            "put /gateway/groups/g",
            "put /gateway/groups/g_sub",
            &format!("put /gateway/groupversions/{NOW}"),
        ];
        assert_eq!(plan.batch.describe(), writes, "the group, the group around it, the root; no deployment");
        assert!(plan.groups.values().all(|g| g.as_ref().is_some_and(|g| g.version.to_string() == NOW)));
        committed(&mut state, &plan);
        assert!(state.groups.contains_key("/g/sub") && state.groups.contains_key("/g"));
        // Removing it: its record goes, its parent and the root take the new version.
        let remove = TreeRequest {
            groups: vec![GroupChange { id: "/g/sub".into(), dependencies: None }],
            ..TreeRequest::default()
        };
        let later = Timestamp::parse("2026-12-06T12:00:01.000Z").unwrap();
        let removed =
            plan_tree(&state, &AppLimits::default(), &ContainerPolicy::default(), remove, false, "d".into(), later)
                .unwrap();
        assert_eq!(removed.groups["/g/sub"], None);
        assert_eq!(removed.groups["/g"].as_ref().unwrap().version, later);
        committed(&mut state, &removed);
        assert!(!state.groups.contains_key("/g/sub"));
    }

    #[test]
    fn a_group_replacement_deploys_its_apps_and_removes_what_it_leaves_out() {
        let mut state = State::default();
        groups::add_implicit_groups(&mut state);
        let create = |apps: Vec<AppDefinition>| GroupUpdate {
            id: crate::app::PathId::parse_group("/g").unwrap(),
            apps: Some(apps),
            ..GroupUpdate::default()
        };
        let decide = |state: &State, update: &GroupUpdate| {
            let mut decided = Decided::default();
            groups::replace(state, update, &mut decided);
            TreeRequest { apps: decided.apps, groups: decided.groups, ..TreeRequest::default() }
        };
        let first = create(vec![app_at("/g/a", json!({})), app_at("/g/b", json!({}))]);
        let plan = planned_tree(&state, decide(&state, &first)).unwrap();
        assert_eq!(
            actions(&plan),
            [[("StartApplication".into(), "/g/a".into()), ("StartApplication".into(), "/g/b".into())]]
        );
        committed(&mut state, &plan);
        state.deployments.clear();
        // The same body again: nothing to do.
        let again = planned_tree(&state, decide(&state, &first)).unwrap();
        assert!(again.deployment.steps.is_empty() && again.groups.is_empty());
        // Without b: b stops; a stays as it is.
        let plan = planned_tree(&state, decide(&state, &create(vec![app_at("/g/a", json!({}))]))).unwrap();
        assert_eq!(actions(&plan), [[("StopApplication".to_owned(), "/g/b".to_owned())]]);
        let change = &plan.batch.describe();
        assert!(change.contains(&format!("put /gateway/groupversions/{NOW}")), "{change:?}");
    }

    #[test]
    fn groups_order_their_apps_by_the_groups_they_depend_on() {
        let mut state = State::default();
        groups::add_implicit_groups(&mut state);
        let request = TreeRequest {
            apps: vec![
                Change::to("/web/w", Some(app_at("/web/w", json!({})))),
                Change::to("/db/a", Some(app_at("/db/a", json!({})))),
            ],
            groups: vec![GroupChange { id: "/web".into(), dependencies: Some(vec!["/db".into()]) }],
            ..TreeRequest::default()
        };
        let plan = planned_tree(&state, request).unwrap();
        assert_eq!(
            actions(&plan),
            [
                [("StartApplication".to_owned(), "/db/a".to_owned())],
                [("StartApplication".to_owned(), "/web/w".to_owned())]
            ],
            "/web's apps wait for /db's"
        );
    }

    #[test]
    fn an_app_and_a_group_never_share_an_id() {
        let mut state = state_with(&[app_at("/g/a", json!({}))]);
        groups::add_implicit_groups(&mut state);
        let app_over_group = planned(&state, vec![Change::to("/g", Some(app_at("/g", json!({}))))], false);
        assert!(matches!(app_over_group, Err(DeployError::Invalid(_))));
        let group_over_app = TreeRequest {
            groups: vec![GroupChange { id: "/g/a".into(), dependencies: Some(vec![]) }],
            ..TreeRequest::default()
        };
        assert!(matches!(planned_tree(&state, group_over_app), Err(DeployError::Invalid(_))));
    }

    #[test]
    fn health_checks_are_added_for_each_version_deployed_and_removed_with_their_app() {
        let check = json!({ "healthChecks": [{ "protocol": "COMMAND", "command": { "value": "true" } }] });
        let mut state = State::default();
        let plan = planned(&state, vec![Change::to("/h", Some(app_at("/h", check.clone())))], false).unwrap();
        let added = step_health_events(&plan.deployment, 0);
        let [MarathonEvent::AddHealthCheck { app_id, version, health_check }] = added.as_slice() else {
            panic!("{added:?}")
        };
        assert_eq!((app_id.as_str(), version.as_str()), ("/h", NOW));
        assert_eq!(health_check["protocol"], "COMMAND");
        committed(&mut state, &plan);
        state.deployments.clear();
        let stop = planned(&state, vec![Change::to("/h", None)], false).unwrap();
        let removed = step_health_events(&stop.deployment, 0);
        assert!(matches!(removed.as_slice(), [MarathonEvent::RemoveHealthCheck { app_id }] if app_id == "/h"));
        let plain = planned(&State::default(), vec![Change::to("/p", Some(app_at("/p", json!({}))))], false).unwrap();
        assert!(step_health_events(&plain.deployment, 0).is_empty(), "no checks, no events");
    }

    #[test]
    fn an_events_plan_holds_the_changed_apps_before_and_after_in_their_groups() {
        let state = State::default();
        let plan = planned(&state, vec![Change::to("/g/a", Some(app_at("/g/a", json!({}))))], false).unwrap();
        let json = plan_json(&plan.deployment, &state);
        for field in ["id", "version", "steps", "original", "target"] {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
        assert_eq!(json["target"]["id"], "/");
        assert_eq!(json["target"]["groups"][0]["id"], "/g");
        assert_eq!(json["target"]["groups"][0]["apps"][0]["id"], "/g/a");
        assert_eq!(json["original"]["groups"], json!([]), "it did not exist");
        assert_eq!(
            steps_json(&plan.deployment),
            [json!({ "actions": [{ "action": "StartApplication", "app": "/g/a" }] })]
        );
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
