//! Groups: Marathon's tree of groups and apps. Every group that exists is kept, with its
//! dependencies and version: one created on its own (`POST /v2/groups`) or around an app
//! created in it, until it is deleted or left out of its parent's replacement — deleting an
//! app leaves its group, as in Marathon. A group's version is the version of the last change
//! within it, so it changes when (and only when) the group does.
//!
//! The changes of the tree are kept as well ([`TreeChange`], the newest
//! [`store::MAX_VERSIONS`]): what each did to each app (its version before and after) and to
//! each group, so the tree at any kept version is the current one with the changes since
//! undone ([`Tree::undo`]) — what `/v2/groups/{id}/versions/{v}` shows and what a rollback
//! restores. A change costs what it changed to write, however large the tree (Marathon
//! stores its whole root group at every change).
//!
//! Deciding is pure: [`replace`], [`create`], [`remove`] and [`scale`] turn a request and the
//! tree as it is into app [`Change`]s and [`GroupChange`]s, which
//! [`super::deployments::plan_tree`] plans as one deployment.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::app::{AppDefinition, PathId, Timestamp};
use crate::model;
use crate::store;

use super::deployments::{Origin, Outcome, TreeRequest};
use super::{Change, DeployError, Leader, State, parse_stored};

/// A group as kept in coord and in the leader's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: String,
    /// Groups and apps whose apps must be deployed before this group's (absolute ids).
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// The last change within the group.
    pub version: Timestamp,
}

/// A change of one group: it exists with these dependencies (created if it did not), or
/// (`None`) it is removed. Its apps and subgroups are changed by changes of their own.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupChange {
    pub id: String,
    pub dependencies: Option<Vec<String>>,
}

/// What one change did to one app or group: how it was before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta<T> {
    pub before: Option<T>,
    pub after: Option<T>,
}

/// One change of the tree, as kept in coord: every app it created, changed or deleted (by
/// version) and every group whose record it changed (versions included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeChange {
    pub version: Timestamp,
    #[serde(default)]
    pub apps: BTreeMap<String, Delta<String>>,
    #[serde(default)]
    pub groups: BTreeMap<String, Delta<GroupRecord>>,
}

impl TreeChange {
    /// The apps this change deleted.
    pub fn deleted_apps(&self) -> Vec<String> {
        self.apps.iter().filter(|(_, delta)| delta.after.is_none()).map(|(id, _)| id.clone()).collect()
    }
}

/// The tree by reference: every group, and every app's version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    pub groups: BTreeMap<String, GroupRecord>,
    pub apps: BTreeMap<String, String>,
}

impl Tree {
    /// The tree as `change` found it.
    pub fn undo(&mut self, change: &TreeChange) {
        for (id, delta) in &change.apps {
            match &delta.before {
                Some(version) => self.apps.insert(id.clone(), version.clone()),
                None => self.apps.remove(id),
            };
        }
        for (id, delta) in &change.groups {
            match &delta.before {
                Some(record) => self.groups.insert(id.clone(), record.clone()),
                None => self.groups.remove(id),
            };
        }
    }
}

/// A group with what it holds, for showing it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupNode {
    pub record: GroupRecord,
    /// Its own apps, by id.
    pub apps: Vec<AppDefinition>,
    /// Its own subgroups, by id.
    pub groups: Vec<GroupNode>,
}

impl GroupNode {
    /// Every app of the group and of the groups below it.
    pub fn all_apps(&self) -> Vec<&AppDefinition> {
        let mut apps: Vec<&AppDefinition> = self.apps.iter().collect();
        for group in &self.groups {
            apps.extend(group.all_apps());
        }
        apps
    }

    /// The group in full as a group body: replacing the group with it restores it exactly.
    pub fn to_update(&self) -> GroupUpdate {
        GroupUpdate {
            id: PathId::parse_group(&self.record.id).unwrap_or_default(),
            apps: Some(self.apps.clone()),
            groups: Some(self.groups.iter().map(GroupNode::to_update).collect()),
            dependencies: Some(self.record.dependencies.iter().filter_map(|d| PathId::parse_group(d).ok()).collect()),
        }
    }
}

/// A group body as read (Marathon's `GroupUpdate` without `scaleBy` and `version`, which
/// apply to the group named in the URL): ids absolute, each app validated and a direct child
/// of its group. A field left out (`None`) is kept as it is by a replacement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupUpdate {
    pub id: PathId,
    pub apps: Option<Vec<AppDefinition>>,
    pub groups: Option<Vec<GroupUpdate>>,
    pub dependencies: Option<Vec<PathId>>,
}

impl GroupUpdate {
    /// Every app the body names, in its groups and below.
    pub fn all_apps(&self) -> Vec<&AppDefinition> {
        let mut apps: Vec<&AppDefinition> = self.apps.iter().flatten().collect();
        for group in self.groups.iter().flatten() {
            apps.extend(group.all_apps());
        }
        apps
    }
}

/// What one request does to the tree, decided by the functions below.
#[derive(Default)]
pub struct Decided {
    pub apps: Vec<Change>,
    pub groups: Vec<GroupChange>,
}

/// `/a/b` → `/a`; `/a` → `/`; the root has none.
pub fn parent(id: &str) -> Option<&str> {
    if id == "/" {
        return None;
    }
    match id.rfind('/') {
        Some(0) | None => Some("/"),
        Some(at) => Some(&id[..at]),
    }
}

/// `id` and every group above it, up to the root.
pub fn ancestors(id: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(id), |id| parent(id))
}

/// The entries of `map` below `id` (not `id` itself), in id order.
pub fn below<'a, V>(map: &'a BTreeMap<String, V>, id: &str) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    let prefix = if id == "/" { "/".to_owned() } else { format!("{id}/") };
    map.range(prefix.clone()..).take_while(move |(key, _)| key.starts_with(&prefix))
}

fn visible_apps_below<'a>(state: &'a State, id: &str) -> impl Iterator<Item = &'a String> + 'a {
    below(&state.apps, id).filter(|(_, entry)| !entry.deleting).map(|(id, _)| id)
}

fn dependencies(update: &GroupUpdate) -> Option<Vec<String>> {
    update.dependencies.as_ref().map(|deps| deps.iter().map(PathId::to_string).collect())
}

/// `PUT /v2/groups/{id}`: the group becomes what `update` says; what it leaves out stays.
/// Its apps, if given, are exactly those apps (each replaced whole; the others deleted); its
/// subgroups, if given, exactly those (each replaced the same way, or created; the others
/// removed with everything in them); its dependencies, if given, those. A group that does
/// not exist is created.
pub fn replace(state: &State, update: &GroupUpdate, out: &mut Decided) {
    let id = update.id.to_string();
    let Some(existing) = state.groups.get(&id) else {
        return create(state, update, out);
    };
    if let Some(deps) = dependencies(update)
        && deps != existing.dependencies
    {
        out.groups.push(GroupChange { id: id.clone(), dependencies: Some(deps) });
    }
    if let Some(apps) = &update.apps {
        for app in apps {
            out.apps.push(Change::to(&app.id.to_string(), Some(app.clone())));
        }
        let own = visible_apps_below(state, &id).filter(|app| parent(app) == Some(id.as_str()));
        for gone in own.filter(|app| !apps.iter().any(|wanted| wanted.id.to_string() == **app)) {
            out.apps.push(Change::to(gone, None));
        }
    }
    if let Some(groups) = &update.groups {
        for group in groups {
            replace(state, group, out);
        }
        let own = below(&state.groups, &id).map(|(sub, _)| sub).filter(|sub| parent(sub) == Some(id.as_str()));
        for gone in own.filter(|sub| !groups.iter().any(|wanted| wanted.id.to_string() == **sub)) {
            remove(state, gone, out);
        }
    }
}

/// `POST /v2/groups`: the group `update` describes, with exactly its apps and subgroups
/// (none where it gives none).
pub fn create(state: &State, update: &GroupUpdate, out: &mut Decided) {
    let id = update.id.to_string();
    out.groups.push(GroupChange { id, dependencies: Some(dependencies(update).unwrap_or_default()) });
    for app in update.apps.iter().flatten() {
        out.apps.push(Change::to(&app.id.to_string(), Some(app.clone())));
    }
    for group in update.groups.iter().flatten() {
        let whole = GroupUpdate {
            apps: Some(group.apps.clone().unwrap_or_default()),
            groups: Some(group.groups.clone().unwrap_or_default()),
            ..group.clone()
        };
        replace(state, &whole, out);
    }
}

/// `DELETE /v2/groups/{id}`: the group goes, with every app and group in it.
pub fn remove(state: &State, id: &str, out: &mut Decided) {
    for app in visible_apps_below(state, id) {
        out.apps.push(Change::to(app, None));
    }
    let groups = below(&state.groups, id).map(|(sub, _)| sub.clone());
    for group in std::iter::once(id.to_owned()).chain(groups) {
        out.groups.push(GroupChange { id: group, dependencies: None });
    }
}

/// `PUT /v2/groups/{id} {"scaleBy": factor}`: every app in the group and below runs
/// `ceil(instances × factor)` instances (Marathon's rounding).
pub fn scale(state: &State, id: &str, factor: f64, out: &mut Decided) {
    for app_id in visible_apps_below(state, id) {
        let mut app = state.apps[app_id].definition.clone();
        app.instances = (app.instances as f64 * factor).ceil() as i64;
        out.apps.push(Change::to(app_id, Some(app)));
    }
}

/// The current tree by reference.
pub fn tree(state: &State) -> Tree {
    let apps = state
        .apps
        .iter()
        .filter(|(_, entry)| !entry.deleting)
        .map(|(id, entry)| (id.clone(), model::version(&entry.definition)))
        .collect();
    Tree { groups: state.groups.clone(), apps }
}

/// Group `id` of `groups` with the apps of `apps` in it, if it exists.
pub fn assemble(
    id: &str,
    groups: &BTreeMap<String, GroupRecord>,
    apps: &BTreeMap<String, AppDefinition>,
) -> Option<GroupNode> {
    let record = groups.get(id)?.clone();
    let own_apps = below(apps, id).filter(|(app, _)| parent(app) == Some(id)).map(|(_, app)| app.clone()).collect();
    let own_groups = below(groups, id)
        .filter(|(sub, _)| parent(sub) == Some(id))
        .filter_map(|(sub, _)| assemble(sub, groups, apps))
        .collect();
    Some(GroupNode { record, apps: own_apps, groups: own_groups })
}

/// Makes sure every group that holds a visible app exists (apps stored before groups were,
/// or a root never written): such a group's version is the newest of its apps'.
pub fn add_implicit_groups(state: &mut State) {
    let mut implicit: BTreeMap<String, Timestamp> = BTreeMap::new();
    for (id, entry) in state.apps.iter().filter(|(_, entry)| !entry.deleting) {
        let version = entry.definition.version.unwrap_or(Timestamp::from_millis(0));
        for group in ancestors(id).skip(1) {
            if !state.groups.contains_key(group) {
                let newest = implicit.entry(group.to_owned()).or_insert(version);
                *newest = (*newest).max(version);
            }
        }
    }
    if !state.groups.contains_key("/") {
        let newest = state.groups.values().map(|g| g.version).chain(implicit.values().copied()).max();
        implicit.insert("/".to_owned(), newest.unwrap_or(Timestamp::from_millis(0)));
    }
    for (id, version) in implicit {
        state.groups.insert(id.clone(), GroupRecord { id, dependencies: Vec::new(), version });
    }
}

/// A group request, decided by [`Leader::decide_group`].
#[derive(Debug, Clone, Copy)]
pub enum GroupOp<'a> {
    Create(&'a GroupUpdate),
    Replace(&'a GroupUpdate),
    Scale(&'a str, f64),
    Remove(&'a str),
}

impl Leader {
    /// The changes `op` makes to the tree as it is (call it under the deployment lock, from
    /// a `deploy_tree` derivation, so the tree does not change in between).
    pub fn decide_group(&self, op: GroupOp<'_>, origin: Option<Origin>) -> TreeRequest {
        let state = self.lock();
        let mut decided = Decided::default();
        match op {
            GroupOp::Create(update) => create(&state, update, &mut decided),
            GroupOp::Replace(update) => replace(&state, update, &mut decided),
            GroupOp::Scale(id, factor) => scale(&state, id, factor, &mut decided),
            GroupOp::Remove(id) => remove(&state, id, &mut decided),
        }
        TreeRequest { apps: decided.apps, groups: decided.groups, group: None, origin }
    }

    /// Whether group `id` exists.
    pub fn group_exists(&self, id: &str) -> bool {
        self.lock().groups.contains_key(id)
    }

    /// Whether a visible app has id `id`.
    pub fn app_exists(&self, id: &str) -> bool {
        self.lock().apps.get(id).is_some_and(|entry| !entry.deleting)
    }

    /// Group `id` as it is, with its apps' definitions.
    pub fn group(&self, id: &str) -> Option<GroupNode> {
        let state = self.lock();
        let apps: BTreeMap<String, AppDefinition> = below(&state.apps, id)
            .filter(|(_, entry)| !entry.deleting)
            .map(|(app, entry)| (app.clone(), entry.definition.clone()))
            .collect();
        assemble(id, &state.groups, &apps)
    }

    /// The kept changes of the tree that the current state reflects, newest first: those no
    /// newer than the root's version (a change is written before the state takes it in).
    async fn changes_since(&self, version: Timestamp, root: Timestamp) -> Result<Option<Vec<TreeChange>>, DeployError> {
        let kept = self.store.group_versions().await.map_err(|e| self.read_error(e))?;
        let wanted = version.to_string();
        if version != root && !kept.contains(&wanted) {
            return Ok(None);
        }
        let mut changes = Vec::new();
        for name in kept.iter().rev().filter(|name| **name > wanted && **name <= root.to_string()) {
            // Pruned meanwhile (with `version`, which is older): the version is no longer kept.
            let Some(change) = self.store.group_version(name).await.map_err(|e| self.read_error(e))? else {
                return Ok(None);
            };
            changes.push(change);
        }
        Ok(Some(changes))
    }

    /// The versions of group `id`, newest first: every kept change that left the group
    /// changed (and existing), and its current version.
    pub async fn group_versions(&self, id: &str) -> Result<Vec<Timestamp>, DeployError> {
        let (current, root) = {
            let state = self.lock();
            (state.groups.get(id).map(|g| g.version), root_version(&state))
        };
        let mut versions: Vec<Timestamp> = current.into_iter().collect();
        let kept = self.store.group_versions().await.map_err(|e| self.read_error(e))?;
        for name in kept.iter().rev().filter(|name| **name <= root.to_string()) {
            let change: Option<TreeChange> = self.store.group_version(name).await.map_err(|e| self.read_error(e))?;
            if let Some(after) = change.and_then(|c| c.groups.get(id).and_then(|d| d.after.clone())) {
                versions.push(after.version);
            }
        }
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions.dedup();
        versions.truncate(store::MAX_VERSIONS);
        Ok(versions)
    }

    /// Group `id` as it was at `version` (a version of the group or of the root), with each
    /// app's definition then; `None` if that version is not kept or the group did not exist
    /// then.
    pub async fn group_at(&self, id: &str, version: Timestamp) -> Result<Option<GroupNode>, DeployError> {
        let (mut tree, root, current, in_memory) = {
            let state = self.lock();
            let current = state.groups.get(id).map(|g| g.version);
            let in_memory: BTreeMap<String, AppDefinition> = below(&state.apps, id)
                .filter(|(_, entry)| !entry.deleting)
                .map(|(app, entry)| (app.clone(), entry.definition.clone()))
                .collect();
            (tree(&state), root_version(&state), current, in_memory)
        };
        if current != Some(version) {
            let Some(changes) = self.changes_since(version, root).await? else { return Ok(None) };
            for change in &changes {
                tree.undo(change);
            }
        }
        if !tree.groups.contains_key(id) {
            return Ok(None);
        }
        let mut apps = BTreeMap::new();
        for (app_id, app_version) in below(&tree.apps, id) {
            let definition = match in_memory.get(app_id) {
                Some(definition) if model::version(definition) == *app_version => definition.clone(),
                _ => {
                    let stored: Option<serde_json::Value> =
                        self.store.version(app_id, app_version).await.map_err(|e| self.read_error(e))?;
                    // An app version pruned since (more than Marathon's 50 of one app): the
                    // group cannot be shown, nor restored, as it was.
                    let Some(definition) = stored.as_ref().and_then(parse_stored) else { return Ok(None) };
                    definition
                }
            };
            apps.insert(app_id.clone(), definition);
        }
        Ok(assemble(id, &tree.groups, &apps))
    }

    /// Puts group `id` back as it was at `version`: its apps, subgroups and dependencies then
    /// (what it holds now and did not then is deleted). The tree is read and the change made
    /// under the deployment lock, so no change slips in between. `None`: that version of the
    /// group is not kept.
    pub async fn rollback_group(
        self: &Arc<Self>,
        id: &str,
        version: Timestamp,
        origin: Option<Origin>,
        force: bool,
        dry_run: bool,
    ) -> Result<Option<Outcome>, DeployError> {
        let serialized = self.deploy_lock.clone().lock_owned().await;
        let Some(past) = self.group_at(id, version).await? else { return Ok(None) };
        let mut decided = Decided::default();
        replace(&self.lock(), &past.to_update(), &mut decided);
        let group = parent(id).unwrap_or("/").to_owned();
        let request = TreeRequest { apps: decided.apps, groups: decided.groups, group: Some(group), origin };
        self.carry_out(serialized, request, force, dry_run).await.map(Some)
    }

    fn read_error(&self, error: marina_coord_client::Error) -> DeployError {
        DeployError::from_coord(error, self.epoch)
    }
}

/// The version of the whole tree.
pub fn root_version(state: &State) -> Timestamp {
    state.groups.get("/").map_or(Timestamp::from_millis(0), |root| root.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{app, state_with};

    fn in_group(id: &str, instances: i64) -> AppDefinition {
        app(&format!(r#"{{"id": "{id}", "cmd": "sleep 1", "cpus": 0.1, "mem": 32, "instances": {instances}}}"#))
    }

    /// `/g` with apps `/g/a` and `/g/b`, subgroup `/g/sub` with `/g/sub/c`, and `/other/x`.
    fn tree_state() -> State {
        let mut state =
            state_with(&[in_group("/g/a", 1), in_group("/g/b", 2), in_group("/g/sub/c", 3), in_group("/other/x", 1)]);
        add_implicit_groups(&mut state);
        state
    }

    fn id(raw: &str) -> PathId {
        PathId::parse_group(raw).unwrap()
    }

    /// Each id changed, and whether it stays (or goes).
    type Summary = Vec<(String, bool)>;

    fn summary(decided: &Decided) -> (Summary, Summary) {
        let apps = decided.apps.iter().map(|c| (c.id.clone(), c.target.is_some())).collect();
        let groups = decided.groups.iter().map(|g| (g.id.clone(), g.dependencies.is_some())).collect();
        (apps, groups)
    }

    #[test]
    fn groups_holding_apps_exist_with_their_newest_apps_version() {
        let state = tree_state();
        let ids: Vec<&str> = state.groups.keys().map(String::as_str).collect();
        assert_eq!(ids, ["/", "/g", "/g/sub", "/other"]);
        assert_eq!(state.groups["/g"].version, Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap());
        let node = assemble("/g", &state.groups, &BTreeMap::new()).unwrap();
        assert_eq!(node.groups.len(), 1, "/g/sub below /g; /other is not");
        assert_eq!(parent("/g/sub"), Some("/g"));
        assert_eq!(parent("/g"), Some("/"));
        assert_eq!(ancestors("/g/sub").collect::<Vec<_>>(), ["/g/sub", "/g", "/"]);
    }

    #[test]
    fn a_replacement_removes_what_it_leaves_out_and_keeps_what_it_does_not_mention() {
        let state = tree_state();
        // Apps given: exactly those (a changed, b deleted); groups not given: kept.
        let mut decided = Decided::default();
        let update = GroupUpdate { id: id("/g"), apps: Some(vec![in_group("/g/a", 5)]), ..Default::default() };
        replace(&state, &update, &mut decided);
        assert_eq!(summary(&decided), (vec![("/g/a".into(), true), ("/g/b".into(), false)], vec![]));
        // Groups given (none): every subgroup goes with its apps; the apps stay.
        let mut decided = Decided::default();
        replace(&state, &GroupUpdate { id: id("/g"), groups: Some(vec![]), ..Default::default() }, &mut decided);
        assert_eq!(summary(&decided), (vec![("/g/sub/c".into(), false)], vec![("/g/sub".into(), false)]));
        // Only dependencies: a group change, no app change.
        let mut decided = Decided::default();
        let deps = GroupUpdate { id: id("/g"), dependencies: Some(vec![id("/other")]), ..Default::default() };
        replace(&state, &deps, &mut decided);
        assert_eq!(decided.groups, [GroupChange { id: "/g".into(), dependencies: Some(vec!["/other".into()]) }]);
        // A group that does not exist is created, with nothing but what is given.
        let mut decided = Decided::default();
        replace(&state, &GroupUpdate { id: id("/new"), ..Default::default() }, &mut decided);
        assert_eq!(summary(&decided), (vec![], vec![("/new".into(), true)]));
    }

    #[test]
    fn removing_a_group_removes_everything_in_it_and_scaling_multiplies_every_app() {
        let state = tree_state();
        let mut decided = Decided::default();
        remove(&state, "/g", &mut decided);
        let (apps, groups) = summary(&decided);
        assert_eq!(apps, [("/g/a".into(), false), ("/g/b".into(), false), ("/g/sub/c".into(), false)]);
        assert_eq!(groups, [("/g".into(), false), ("/g/sub".into(), false)]);
        let mut decided = Decided::default();
        scale(&state, "/g", 1.5, &mut decided);
        let scaled: Vec<(String, i64)> =
            decided.apps.iter().map(|c| (c.id.clone(), c.target.as_ref().unwrap().instances)).collect();
        assert_eq!(scaled, [("/g/a".into(), 2), ("/g/b".into(), 3), ("/g/sub/c".into(), 5)], "rounded up");
    }

    #[test]
    fn the_tree_at_a_version_is_the_current_one_with_later_changes_undone() {
        let state = tree_state();
        let mut past = tree(&state);
        let now = tree(&state);
        let v = |s: &str| Timestamp::parse(s).unwrap();
        let record = |id: &str, version: &str| GroupRecord { id: id.into(), dependencies: vec![], version: v(version) };
        let change = TreeChange {
            version: v("2026-02-01T00:00:00.000Z"),
            apps: BTreeMap::from([
                ("/g/b".into(), Delta { before: None, after: Some("2026-02-01T00:00:00.000Z".into()) }),
                ("/g/gone".into(), Delta { before: Some("2025-12-01T00:00:00.000Z".into()), after: None }),
            ]),
            groups: BTreeMap::from([(
                "/g".into(),
                Delta {
                    before: Some(record("/g", "2025-12-01T00:00:00.000Z")),
                    after: Some(record("/g", "2026-02-01T00:00:00.000Z")),
                },
            )]),
        };
        past.undo(&change);
        assert!(!past.apps.contains_key("/g/b"), "created by the change");
        assert_eq!(past.apps["/g/gone"], "2025-12-01T00:00:00.000Z", "deleted by it");
        assert_eq!(past.groups["/g"].version, v("2025-12-01T00:00:00.000Z"));
        assert_eq!(past.apps["/g/a"], now.apps["/g/a"], "untouched");
        assert_eq!(change.deleted_apps(), ["/g/gone"]);
    }

    #[test]
    fn a_group_in_full_restores_itself_when_it_replaces_itself() {
        let state = tree_state();
        let apps: BTreeMap<String, AppDefinition> =
            state.apps.iter().map(|(id, entry)| (id.clone(), entry.definition.clone())).collect();
        let node = assemble("/g", &state.groups, &apps).unwrap();
        assert_eq!(node.all_apps().len(), 3);
        let mut decided = Decided::default();
        replace(&state, &node.to_update(), &mut decided);
        assert!(decided.groups.is_empty(), "no group changes");
        assert!(decided.apps.iter().all(|c| c.target.is_some()), "every app kept (each unchanged)");
    }
}
