//! The apps service: every operation on apps, their tasks, groups and deployments, carried
//! out once for both doors. REST ([`crate::rest`]) and gRPC ([`crate::grpc`]) read their
//! request, call one method here and write its answer in their own shape; what an operation
//! does — its checks, the deployment it makes, the events it publishes — lives here alone, so
//! the two doors cannot drift apart. Errors are one type, [`AppsError`], which each door maps
//! to its statuses in one place.

use std::sync::Arc;

use serde_json::Value;

use crate::Gateway;
use crate::admission::{Admission, Admitted, Refused};
use crate::app::{self, AppDefinition, AppError, PathId, Timestamp};
use crate::engine::is_terminal;
use crate::leader::{
    Change, DeployError, Deployed, Deployment, GroupNode, GroupOp, GroupUpdate, Instance, Leader, Origin, Outcome,
    QueueStats, TaskFailure, TreeRequest,
};
pub use crate::selector::{AppSelector, LabelSelectors};

/// Why an operation was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    /// This gateway does not lead (a standby forwards requests before they get here).
    #[error("this gateway does not lead; retry (it forwards to the leader once one is known)")]
    NotLeading,
    /// An id in the request's target that is no app (or group) id.
    #[error("invalid {kind} id {raw:?}: {reason}")]
    BadId { kind: &'static str, raw: String, reason: String },
    /// A body that is not JSON, or not a valid app: Marathon's 400 and 422 bodies.
    #[error(transparent)]
    Definition(#[from] AppError),
    /// What the body asks cannot be carried out as asked (an id in a list of apps that is no
    /// app id, a group with no apps).
    #[error("{0}")]
    Unprocessable(String),
    /// The deployment could not be made (an app missing or taken, a lock, a limit, coord).
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error("Task '{0}' does not exist")]
    NoTask(String),
    #[error("App '{app}' does not exist in version {version}")]
    NoVersion { app: String, version: String },
    #[error("Group '{0}' does not exist")]
    NoGroup(String),
    #[error("Application {0} not found in tasks queue.")]
    NotQueued(String),
    /// Too many writes at once: this one was not admitted, and changed nothing.
    #[error(transparent)]
    Overloaded(#[from] Refused),
}

/// An app as both doors show it: its definition, its instances, the deployments touching it.
#[derive(Debug, Clone)]
pub struct AppView {
    pub app: AppDefinition,
    pub instances: Vec<Instance>,
    pub deployments: Vec<String>,
}

impl AppView {
    fn new((app, instances, deployments): (AppDefinition, Vec<Instance>, Vec<String>)) -> Self {
        AppView { app, instances, deployments }
    }

    /// The instances that are not over.
    pub fn live(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|instance| !is_terminal(instance.state))
    }
}

/// How an update reads its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// Only the fields given change, and the app must exist (`PATCH`, gRPC `partial`).
    Patch,
    /// The fields given change; a missing app is created from the body (`PUT`, Marathon's
    /// default `partialUpdate=true`).
    PatchOrCreate,
    /// The body is the whole app, created if missing (`PUT ?partialUpdate=false`, gRPC
    /// without `partial`).
    Replace,
}

/// The outcome of an update.
#[derive(Debug, Clone)]
pub struct Updated {
    pub deployed: Deployed,
    /// The app did not exist: the update created it.
    pub created: bool,
}

/// Which tasks to kill.
#[derive(Debug, Clone, Default)]
pub struct KillRequest {
    /// Tasks of this app (all of them unless `task_ids` names some); else exactly `task_ids`.
    pub app: Option<PathId>,
    pub task_ids: Vec<String>,
    /// Only tasks on this host.
    pub host: Option<String>,
    /// Lower the apps' instance counts so the tasks are not replaced (a deployment).
    pub scale: bool,
    pub force: bool,
}

/// The outcome of a kill: the tasks killed, and the deployment that scaled their apps down
/// (with `scale`).
#[derive(Debug, Clone)]
pub struct Killed {
    pub tasks: Vec<Instance>,
    pub deployment: Option<Deployed>,
}

/// The apps service of the leading gateway.
pub struct Apps {
    leader: Arc<Leader>,
    /// The caller's address, for the `api_post_event`s of its changes (`None`: unknown).
    client_ip: Option<String>,
    /// Every change waits its turn here before it changes anything.
    admission: Admission,
}

/// What a `PUT /v2/groups/{id}` asks besides a replacement (Marathon's `GroupUpdate`:
/// `version` first, then `scaleBy`, then the group's structure).
#[derive(Debug, Clone)]
pub enum GroupEdit {
    /// The group becomes what the body says (see [`crate::leader::GroupUpdate`]).
    Replace(GroupUpdate),
    /// Every app in the group runs `ceil(instances × factor)` instances.
    ScaleBy(f64),
    /// The group goes back to its stored version.
    Rollback(Timestamp),
}

/// Reads an app id from a request's target.
pub fn app_id(raw: &str) -> Result<PathId, AppsError> {
    PathId::parse(raw).map_err(|error| AppsError::BadId { kind: "app", raw: raw.to_owned(), reason: error.to_string() })
}

/// Reads a group id from a request's target (`prod/web`, with or without slashes around it).
pub fn group_id(raw: &str) -> Result<PathId, AppsError> {
    let path = format!("/{}", raw.trim_matches('/'));
    PathId::parse_group(&path).map_err(|error| AppsError::BadId {
        kind: "group",
        raw: raw.to_owned(),
        reason: error.to_string(),
    })
}

impl Apps {
    /// The service, if this gateway leads.
    pub fn of(gateway: &Gateway) -> Result<Self, AppsError> {
        let leader = gateway.leader().ok_or(AppsError::NotLeading)?;
        Ok(Apps { leader, client_ip: None, admission: gateway.admission.clone() })
    }

    /// The service for a caller at `address`: its changes' `api_post_event`s name it.
    pub fn for_client(mut self, address: Option<std::net::SocketAddr>) -> Self {
        self.client_ip = address.map(|address| address.ip().to_string());
        self
    }

    /// Where a change through `uri` came from.
    fn origin(&self, uri: String) -> Option<Origin> {
        Some(Origin { uri, client_ip: self.client_ip.clone() })
    }

    /// This request's turn to change things (see [`crate::admission`]). Every change takes
    /// it once, before it writes anything, and holds it until it is answered: a change
    /// refused here has done nothing. Reading what the change starts from, and its checks,
    /// may come before.
    async fn admit(&self) -> Result<Admitted, AppsError> {
        Ok(self.admission.admit().await?)
    }

    /// Carries out one request of apps (and groups) built from the apps as they are, made in
    /// group `group` (the finest group it changes, for `group_change_*`).
    async fn change(
        &self,
        force: bool,
        dry_run: bool,
        group: &str,
        derive: impl FnOnce(&Leader) -> Result<TreeRequest, AppsError>,
    ) -> Result<Outcome, AppsError> {
        let _turn = self.admit().await?;
        let group_id = group.to_owned();
        self.leader
            .deploy_tree(force, dry_run, Some(group), |leader| {
                derive(leader).map(|request| TreeRequest { group: Some(group_id), ..request })
            })
            .await
    }

    /// Like [`Apps::change`], for a change that is never a dry run.
    async fn deploy(
        &self,
        force: bool,
        group: &str,
        derive: impl FnOnce(&Leader) -> Result<TreeRequest, AppsError>,
    ) -> Result<Deployed, AppsError> {
        match self.change(force, false, group, derive).await? {
            Outcome::Deployed(deployed) => Ok(deployed),
            Outcome::DryRun(_) => unreachable!("not a dry run"),
        }
    }

    // ----- reading ----------------------------------------------------------------------------

    /// Every app's definition, in id order, without its tasks.
    pub fn definitions(&self) -> Vec<AppDefinition> {
        self.leader.definitions()
    }

    pub fn list(&self) -> Vec<AppView> {
        self.leader.apps().into_iter().map(AppView::new).collect()
    }

    pub fn get(&self, id: &PathId) -> Result<AppView, AppsError> {
        let id = id.to_string();
        self.leader.app(&id).map(AppView::new).ok_or(AppsError::Deploy(DeployError::NotFound(id)))
    }

    /// The app's last failed launch, if any (Marathon's `lastTaskFailure`).
    pub fn last_failure(&self, id: &PathId) -> Option<TaskFailure> {
        self.leader.last_failure(&id.to_string())
    }

    /// The tasks that are not over, of one app or of all, in task id order.
    pub fn tasks(&self, app: Option<&PathId>) -> Vec<Instance> {
        let app = app.map(PathId::to_string);
        self.leader
            .instances()
            .into_iter()
            .filter(|instance| !is_terminal(instance.state))
            .filter(|instance| app.as_ref().is_none_or(|app| &instance.record.app_id == app))
            .collect()
    }

    /// The app's stored versions, newest first.
    pub async fn versions(&self, id: &PathId) -> Result<Vec<String>, AppsError> {
        self.get(id)?;
        let mut versions = self.leader.store.versions(&id.to_string()).await.map_err(|e| self.read_error(e))?;
        versions.reverse();
        Ok(versions)
    }

    /// One stored version of the app, as stored (Marathon JSON).
    pub async fn version(&self, id: &PathId, version: &str) -> Result<Value, AppsError> {
        let app = id.to_string();
        let no_version = || AppsError::NoVersion { app: app.clone(), version: version.to_owned() };
        let stored: Option<Value> = match self.leader.store.version(&app, version).await {
            Ok(stored) => stored,
            // A version no path can hold (it is whatever the caller typed) is one that
            // does not exist.
            Err(marina_coord_client::Error::InvalidArgument(_)) => return Err(no_version()),
            Err(error) => return Err(self.read_error(error)),
        };
        stored.ok_or_else(no_version)
    }

    /// Every app, if group `id` exists (the apps of the group and below it are those `id`
    /// contains).
    pub fn group(&self, id: &PathId) -> Result<Vec<AppView>, AppsError> {
        if !self.leader.group_exists(&id.to_string()) {
            return Err(AppsError::NoGroup(id.to_string()));
        }
        Ok(self.list())
    }

    /// Group `id` with its apps and the groups below it.
    pub fn group_tree(&self, id: &PathId) -> Result<GroupNode, AppsError> {
        self.leader.group(&id.to_string()).ok_or_else(|| AppsError::NoGroup(id.to_string()))
    }

    /// The stored versions of group `id`, newest first.
    pub async fn group_versions(&self, id: &PathId) -> Result<Vec<String>, AppsError> {
        let key = id.to_string();
        if !self.leader.group_exists(&key) {
            return Err(AppsError::NoGroup(key));
        }
        Ok(self.leader.group_versions(&key).await?.iter().map(Timestamp::to_string).collect())
    }

    /// Group `id` as it was at `version`, with its apps' definitions then.
    pub async fn group_version(&self, id: &PathId, version: &str) -> Result<GroupNode, AppsError> {
        let not_there = || AppsError::NoGroup(id.to_string());
        let version = Timestamp::parse(version).map_err(|_| not_there())?;
        self.leader.group_at(&id.to_string(), version).await?.ok_or_else(not_there)
    }

    /// Why group `id` cannot be created (Marathon's 409 messages), if it cannot.
    pub fn group_conflict(&self, id: &PathId) -> Option<String> {
        let key = id.to_string();
        if self.leader.group_exists(&key) {
            return Some(format!("Group {key} is already created. Use PUT to change this group."));
        }
        self.leader.app_exists(&key).then(|| format!("An app with the path {key} already exists."))
    }

    pub fn deployments(&self) -> Vec<Deployment> {
        self.leader.deployments()
    }

    /// Marathon's JSON of every deployment in progress, with its readiness results.
    pub fn deployments_json(&self) -> Vec<Value> {
        self.leader.deployments_json()
    }

    /// Apps waiting for resources: (app, count waiting, delay left, offer statistics).
    pub fn queue(&self) -> Vec<(AppDefinition, u32, std::time::Duration, QueueStats)> {
        self.leader.queue()
    }

    // ----- changing ---------------------------------------------------------------------------

    /// Creates an app from its definition (Marathon JSON); it must not exist yet. Publishes
    /// `api_post_event` with the stored definition.
    pub async fn create(&self, body: &[u8], force: bool) -> Result<(Deployed, AppView), AppsError> {
        let app = app::parse_app(body, None)?;
        let id = app.id.clone();
        let key = id.to_string();
        let origin = self.origin(format!("/v2/apps{id}"));
        let deployed = self
            .deploy(force, &id.parent().to_string(), |leader| match leader.app(&key) {
                Some(_) => Err(AppsError::Deploy(DeployError::Exists(key.clone()))),
                None => Ok(TreeRequest { apps: vec![Change::to(&key, Some(app))], origin, ..TreeRequest::default() }),
            })
            .await?;
        // Deleted meanwhile by another request: what the caller created is gone.
        let view = self.get(&id)?;
        Ok((deployed, view))
    }

    /// Updates the app `id` from `body` as `mode` reads it; with `PatchOrCreate` and
    /// `Replace`, a body `{"version": V}` rolls the app back to its stored version V.
    pub async fn update(&self, id: &PathId, body: &[u8], mode: UpdateMode, force: bool) -> Result<Updated, AppsError> {
        let key = id.to_string();
        if mode != UpdateMode::Patch
            && let Some(version) = app::rollback_version(body)?
        {
            let deployed = self.rollback(id, version, force).await?;
            return Ok(Updated { deployed, created: false });
        }
        let mut created = false;
        let origin = self.origin(format!("/v2/apps{id}"));
        let deployed = self
            .deploy(force, &id.parent().to_string(), |leader| {
                let existing = leader.app(&key).map(|(app, _, _)| app);
                let target = match (existing, mode) {
                    (None, UpdateMode::Patch) => return Err(AppsError::Deploy(DeployError::NotFound(key.clone()))),
                    (Some(existing), UpdateMode::Patch | UpdateMode::PatchOrCreate) => {
                        app::apply_patch(&existing, body)?
                    }
                    (existing, _) => {
                        created = existing.is_none();
                        app::parse_app_at(body, id)?
                    }
                };
                Ok(TreeRequest { apps: vec![Change::to(&key, Some(target))], origin, ..TreeRequest::default() })
            })
            .await?;
        Ok(Updated { deployed, created })
    }

    /// Puts the app back to its stored version `version`.
    async fn rollback(&self, id: &PathId, version: Timestamp, force: bool) -> Result<Deployed, AppsError> {
        let stored = self.version(id, &version.to_string()).await?;
        let target = app::parse_app(&serde_json::to_vec(&stored).unwrap_or_default(), None)?;
        let origin = self.origin(format!("/v2/apps{id}"));
        let apps = vec![Change::to(&id.to_string(), Some(target))];
        self.deploy(force, &id.parent().to_string(), |_| Ok(TreeRequest { apps, origin, ..TreeRequest::default() }))
            .await
    }

    /// Updates (or creates) several apps in one deployment (`PUT /v2/apps`); each item is
    /// a patch of an existing app when `partial`, else a whole app.
    pub async fn update_many(&self, items: Vec<Value>, partial: bool, force: bool) -> Result<Deployed, AppsError> {
        let origin = self.origin("/v2/apps".to_owned());
        let deployed = self
            .deploy(force, "/", |leader| {
                let mut changes = Vec::with_capacity(items.len());
                for item in &items {
                    let bytes = serde_json::to_vec(item).unwrap_or_default();
                    let id = item
                        .get("id")
                        .and_then(Value::as_str)
                        .map(PathId::parse)
                        .transpose()
                        .map_err(|e| AppsError::Unprocessable(e.to_string()))?;
                    let existing = id.and_then(|id| leader.app(&id.to_string())).map(|(app, _, _)| app);
                    let target = match existing {
                        Some(existing) if partial => app::apply_patch(&existing, &bytes)?,
                        _ => app::parse_app(&bytes, None)?,
                    };
                    changes.push(Change::to(&target.id.to_string(), Some(target)));
                }
                Ok(TreeRequest { apps: changes, origin, ..TreeRequest::default() })
            })
            .await?;
        Ok(deployed)
    }

    /// Sets the app's instance count.
    pub async fn scale(&self, id: &PathId, instances: i64, force: bool) -> Result<Deployed, AppsError> {
        let key = id.to_string();
        let origin = self.origin(format!("/v2/apps{id}"));
        let deployed = self
            .deploy(force, &id.parent().to_string(), |leader| {
                let (mut app, _, _) = leader.app(&key).ok_or_else(|| DeployError::NotFound(key.clone()))?;
                app.instances = instances;
                Ok(TreeRequest { apps: vec![Change::to(&key, Some(app))], origin, ..TreeRequest::default() })
            })
            .await?;
        Ok(deployed)
    }

    /// Replaces every task of the app by a new one, the definition unchanged.
    pub async fn restart(&self, id: &PathId, force: bool) -> Result<Deployed, AppsError> {
        let key = id.to_string();
        let origin = self.origin(format!("/v2/apps{id}/restart"));
        let deployed = self
            .deploy(force, &id.parent().to_string(), |leader| {
                let (app, _, _) = leader.app(&key).ok_or_else(|| DeployError::NotFound(key.clone()))?;
                let apps = vec![Change { id: key.clone(), target: Some(app), restart: true }];
                Ok(TreeRequest { apps, origin, ..TreeRequest::default() })
            })
            .await?;
        Ok(deployed)
    }

    /// Deletes the app (its tasks are killed by the deployment); its group stays.
    pub async fn delete(&self, id: &PathId, force: bool) -> Result<Deployed, AppsError> {
        let key = id.to_string();
        self.get(id)?;
        let origin = self.origin(format!("/v2/apps{id}"));
        let apps = vec![Change::to(&key, None)];
        self.deploy(force, &id.parent().to_string(), |_| Ok(TreeRequest { apps, origin, ..TreeRequest::default() }))
            .await
    }

    /// Kills tasks, replaced unless `scale`. With an app and task ids, each must be one of
    /// the app's tasks.
    pub async fn kill(&self, request: KillRequest) -> Result<Killed, AppsError> {
        let app = request.app.as_ref().map(PathId::to_string);
        if let Some(id) = &request.app
            && !request.task_ids.is_empty()
        {
            let view = self.get(id)?;
            if let Some(missing) =
                request.task_ids.iter().find(|task| !view.instances.iter().any(|i| &&i.record.task_id == task))
            {
                return Err(AppsError::NoTask(missing.clone()));
            }
        }
        let _turn = self.admit().await?;
        let (tasks, deployment) = self
            .leader
            .kill_tasks(app.as_deref(), &request.task_ids, request.host.as_deref(), request.scale, request.force)
            .await?;
        Ok(Killed { tasks, deployment })
    }

    /// Creates a group (`POST /v2/groups`) with exactly the apps and subgroups `update`
    /// gives (an empty group is a group too); it must not exist yet, nor an app with its id.
    pub async fn create_group(&self, update: GroupUpdate, force: bool) -> Result<Deployed, AppsError> {
        let id = update.id.clone();
        let key = id.to_string();
        let origin = self.origin(format!("/v2/groups{}", if id.is_root() { String::new() } else { key.clone() }));
        self.deploy(force, &id.parent().to_string(), |leader| {
            if leader.group_exists(&key) || leader.app_exists(&key) {
                return Err(AppsError::Deploy(DeployError::Exists(key.clone())));
            }
            Ok(leader.decide_group(GroupOp::Create(&update), origin))
        })
        .await
    }

    /// Changes group `id` (`PUT /v2/groups/{id}`) as `edit` says; with `dry_run`, only says
    /// which steps that would take.
    pub async fn update_group(
        &self,
        id: &PathId,
        edit: GroupEdit,
        dry_run: bool,
        force: bool,
    ) -> Result<Outcome, AppsError> {
        let key = id.to_string();
        let group = id.parent().to_string();
        let origin = self.origin(format!("/v2/groups{key}"));
        match edit {
            GroupEdit::Replace(update) => {
                self.change(force, dry_run, &group, |leader| Ok(leader.decide_group(GroupOp::Replace(&update), origin)))
                    .await
            }
            GroupEdit::ScaleBy(factor) => {
                if !self.leader.group_exists(&key) {
                    return Err(AppsError::NoGroup(key));
                }
                self.change(force, dry_run, &group, |leader| {
                    Ok(leader.decide_group(GroupOp::Scale(&key, factor), origin))
                })
                .await
            }
            GroupEdit::Rollback(version) => {
                let not_kept = || AppsError::Unprocessable(format!("Group {key} not available in version {version}"));
                let _turn = self.admit().await?;
                self.leader.rollback_group(&key, version, origin, force, dry_run).await?.ok_or_else(not_kept)
            }
        }
    }

    /// Deletes group `id` with every app and group in it (`DELETE /v2/groups/{id}`).
    pub async fn delete_group(&self, id: &PathId, force: bool) -> Result<Deployed, AppsError> {
        let key = id.to_string();
        if id.is_root() || !self.leader.group_exists(&key) {
            return Err(AppsError::NoGroup(key));
        }
        let origin = self.origin(format!("/v2/groups{key}"));
        self.deploy(force, &id.parent().to_string(), |leader| {
            if !leader.group_exists(&key) {
                return Err(AppsError::NoGroup(key.clone()));
            }
            Ok(leader.decide_group(GroupOp::Remove(&key), origin))
        })
        .await
    }

    /// Cancels a deployment: by default rolled back (the deployment that does so is
    /// returned); with `force` it just stops.
    pub async fn cancel_deployment(&self, id: &str, force: bool) -> Result<Option<Deployed>, AppsError> {
        let _turn = self.admit().await?;
        Ok(self.leader.cancel_deployment(id, force).await?)
    }

    /// Lets a backed-off app launch again at once. Not admitted as a write: it writes
    /// nothing to coord and takes no lock, and under load it is how an operator gets a
    /// waiting app going.
    pub fn reset_delay(&self, id: &PathId) -> Result<(), AppsError> {
        let key = id.to_string();
        if self.leader.reset_delay(&key) { Ok(()) } else { Err(AppsError::NotQueued(key)) }
    }

    /// A read from coord that failed: the store could not answer (503), whatever it said.
    fn read_error(&self, error: marina_coord_client::Error) -> AppsError {
        AppsError::Deploy(DeployError::Unavailable(error.to_string()))
    }
}

impl Apps {
    /// The apps `selector` keeps, in id order, each read when it is reached: a listing of
    /// every app with its tasks then holds one app's tasks at a time, not a copy of every
    /// task (at a million tasks, gigabytes). Apps deleted meanwhile are left out.
    pub fn select(&self, selector: &AppSelector) -> impl Iterator<Item = AppView> + '_ {
        let ids: Vec<String> = self
            .leader
            .definitions()
            .into_iter()
            .filter(|app| selector.matches(app))
            .map(|app| app.id.to_string())
            .collect();
        ids.into_iter().filter_map(|id| self.leader.app(&id).map(AppView::new))
    }
}
