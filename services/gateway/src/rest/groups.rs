//! `/v2/groups`: Marathon's groups. A group exists once created (`POST /v2/groups`, or around
//! an app created in it) until deleted; `PUT` replaces it (or scales it, `scaleBy`, or rolls
//! it back, `version`; `dryRun=true` only answers the steps); every group has versions.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::apps::{AppInfo, Embeds};
use super::{Peer, Reply, deployed, invalid_json, message, off_runtime, service, service_for};
use crate::Gateway;
use crate::app::{self, AppDefinition, PathId, Timestamp, Violation};
use crate::apps::{AppView, Apps, AppsError, GroupEdit, group_id};
use crate::leader::{GroupNode, GroupUpdate, Outcome};

// ----- query ------------------------------------------------------------------------------------

/// The query of a group request, read here rather than with the shared flags: `embed` is
/// repeated (`embed=group.groups&embed=group.apps`).
#[derive(Debug, Default)]
struct GroupQuery {
    force: bool,
    dry_run: bool,
    embed: Vec<String>,
}

impl GroupQuery {
    /// Reads the pairs; a flag that is no boolean is Marathon's 400.
    fn read(pairs: Vec<(String, String)>) -> Result<Self, Response> {
        let flag = |name: &str, value: &str| match value.to_ascii_lowercase().as_str() {
            "" | "false" | "0" => Ok(false),
            "true" | "1" => Ok(true),
            other => {
                Err(message(StatusCode::BAD_REQUEST, format!("query parameter {name}: {other:?} is not a boolean")))
            }
        };
        let mut query = GroupQuery::default();
        for (key, value) in pairs {
            match key.as_str() {
                "force" => query.force = flag(&key, &value)?,
                "dryRun" => query.dry_run = flag(&key, &value)?,
                "embed" => query.embed.push(value),
                _ => {}
            }
        }
        Ok(query)
    }
}

// ----- shapes -----------------------------------------------------------------------------------

/// What a group's JSON embeds (Marathon's `GroupInfo.Embed`, and the apps' `AppInfo.Embed`
/// from `group.apps.*`). Without any `embed`, Marathon's defaults: apps, groups and pods,
/// each app as its definition.
struct GroupEmbeds {
    apps: bool,
    groups: bool,
    pods: bool,
    app: Embeds,
}

impl GroupEmbeds {
    /// Marathon's `InfoEmbedResolver.resolveAppGroup`.
    fn resolve(embed: &[String]) -> Self {
        if embed.is_empty() {
            return GroupEmbeds { apps: true, groups: true, pods: true, app: Embeds::default() };
        }
        let (app, group): (Vec<String>, Vec<String>) =
            embed.iter().cloned().partition(|e| e.starts_with("group.apps."));
        let has = |name: &str| group.iter().any(|e| e == name);
        GroupEmbeds {
            apps: has("group.apps"),
            groups: has("group.groups"),
            pods: has("group.pods"),
            app: Embeds::resolve(&app),
        }
    }

    /// Whether the apps' JSON needs their instances and deployments.
    fn needs_views(&self) -> bool {
        self.apps && (self.app.tasks || self.app.counts || self.app.deployments)
    }
}

/// Marathon's group JSON (`GroupInfo`): `id`, `dependencies`, `version`, and what is embedded
/// — each subgroup written the same way. `views` holds the apps' instances where embeds need
/// them.
fn group_json(node: &GroupNode, embeds: &GroupEmbeds, info: &AppInfo<'_>, views: &HashMap<String, AppView>) -> Value {
    let mut json = Map::new();
    json.insert("id".into(), json!(node.record.id));
    json.insert("dependencies".into(), json!(node.record.dependencies));
    json.insert("version".into(), json!(node.record.version));
    // Marathon 1.9+; Marina has no roles to enforce.
    json.insert("enforceRole".into(), json!(false));
    if embeds.apps {
        let apps: Vec<Value> = node
            .apps
            .iter()
            .map(|app| {
                let id = app.id.to_string();
                let bare = || AppView { app: app.clone(), instances: Vec::new(), deployments: Vec::new() };
                info.json(&views.get(&id).cloned().unwrap_or_else(bare))
            })
            .collect();
        json.insert("apps".into(), json!(apps));
    }
    if embeds.groups {
        let groups: Vec<Value> = node.groups.iter().map(|group| group_json(group, embeds, info, views)).collect();
        json.insert("groups".into(), json!(groups));
    }
    if embeds.pods {
        json.insert("pods".into(), json!([]));
    }
    Value::Object(json)
}

/// The answer to a group read: `node` written with the request's embeds.
fn group_answer(apps: &Apps, node: &GroupNode, embed: &[String]) -> Response {
    let embeds = GroupEmbeds::resolve(embed);
    let views: HashMap<String, AppView> = if embeds.needs_views() {
        apps.list().into_iter().map(|view| (view.app.id.to_string(), view)).collect()
    } else {
        HashMap::new()
    };
    let info = AppInfo::new(apps, embeds.app);
    axum::Json(group_json(node, &embeds, &info, &views)).into_response()
}

// ----- request targets --------------------------------------------------------------------------

/// `/v2/groups/{id}[/versions[/{v}]]`: which one (Marathon's path matchers, in its order).
enum GroupPath<'a> {
    Group(&'a str),
    Versions(&'a str),
    Version(&'a str, &'a str),
}

impl<'a> GroupPath<'a> {
    fn read(raw: &'a str) -> Self {
        let raw = raw.trim_end_matches('/');
        if raw == "versions" {
            return GroupPath::Versions("");
        }
        if let Some(id) = raw.strip_suffix("/versions") {
            return GroupPath::Versions(id);
        }
        if let Some(version) = raw.strip_prefix("versions/") {
            return GroupPath::Version("", version);
        }
        if let Some((id, version)) = raw.rsplit_once("/versions/") {
            return GroupPath::Version(id, version);
        }
        GroupPath::Group(raw)
    }
}

// ----- reading a group body ---------------------------------------------------------------------

/// What a group body asks beyond the group's structure: `version` (a rollback, first),
/// `scaleBy` (then).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupFlags {
    pub version: Option<Timestamp>,
    pub scale_by: Option<f64>,
}

fn unprocessable(path: &str, error: impl Into<String>) -> Response {
    let violation = Violation::new(path, error.into());
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(app::invalid_body(&[violation]))).into_response()
}

/// A group id read from a body: valid segments, and short enough to be stored.
fn checked_group_id(id: PathId, path: &str) -> Result<PathId, Response> {
    let written = id.to_string();
    if let Err(error) = PathId::parse_group(&written) {
        return Err(unprocessable(path, error.to_string()));
    }
    if written.len() > app::MAX_APP_ID_BYTES {
        return Err(unprocessable(path, format!("a group id is at most {} bytes", app::MAX_APP_ID_BYTES)));
    }
    Ok(id)
}

/// An array field of a group body: absent or `null` is `None` (kept by a replacement).
fn array<'a>(body: &'a Value, key: &str) -> Result<Option<&'a Vec<Value>>, Response> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(_) => Err(unprocessable(&format!("/{key}"), "error.expected.jsarray")),
    }
}

/// One group of a body, `id` already resolved: its apps (each a direct child), subgroups
/// (each a direct child, with an id) and dependencies (resolved against it).
fn group_update(body: &Value, id: PathId) -> Result<GroupUpdate, Response> {
    if !body.is_object() {
        return Err(group_not_object());
    }
    let apps = match array(body, "apps")? {
        None => None,
        Some(items) => {
            let mut apps = Vec::with_capacity(items.len());
            for app in items {
                let bytes = serde_json::to_vec(app).unwrap_or_default();
                apps.push(app::parse_app(&bytes, Some(&id)).map_err(|e| AppsError::from(e).into_response())?);
            }
            Some(apps)
        }
    };
    let groups = match array(body, "groups")? {
        None => None,
        Some(items) => {
            let mut groups = Vec::with_capacity(items.len());
            for group in items {
                let Some(child) = group.get("id").and_then(Value::as_str) else {
                    return Err(unprocessable("/groups", "No group id was given!"));
                };
                // A nested group lies in its parent, as Marathon requires: `PUT
                // /v2/groups/prod` must not deploy `/other/x` (found by fuzzing).
                let child = PathId::resolve_lenient(child, &id);
                if child.is_root() || child.parent() != id {
                    let error = format!("Group {child} is not a child of {id}. Hint: use relative paths.");
                    return Err(unprocessable("/groups", error));
                }
                groups.push(group_update(group, checked_group_id(child, "/groups")?)?);
            }
            Some(groups)
        }
    };
    let dependencies = match array(body, "dependencies")? {
        None => None,
        Some(items) => {
            let mut dependencies = Vec::with_capacity(items.len());
            for item in items {
                let Some(dependency) = item.as_str() else {
                    return Err(unprocessable("/dependencies", "error.expected.jsstring"));
                };
                dependencies.push(checked_group_id(PathId::resolve_lenient(dependency, &id), "/dependencies")?);
            }
            Some(dependencies)
        }
    };
    Ok(GroupUpdate { id, apps, groups, dependencies })
}

/// Marathon's answer to a group body that is not a JSON object.
fn group_not_object() -> Response {
    let violation = Violation::new("/", "error.expected.jsobject");
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({ "message": "Invalid JSON", "details": [violation] })))
        .into_response()
}

/// One group request deploys at most [`app::MAX_ITEMS`] apps: each is validated, stored and
/// planned in the same deployment.
fn too_many_apps(update: &GroupUpdate) -> Result<(), Response> {
    let count = update.all_apps().len();
    if count <= app::MAX_ITEMS {
        return Ok(());
    }
    Err(unprocessable("/apps", format!("got {count} apps, expected {} or less", app::MAX_ITEMS)))
}

/// A group body (`POST /v2/groups` with `group` None: its id is read relative to the root;
/// `PUT /v2/groups/{group}` with it: the body's id is the URL's), read and validated: the
/// group, and its `version` and `scaleBy`; or the answer that refuses the body.
pub fn read_group_update(body: &[u8], group: Option<&PathId>) -> Result<(GroupUpdate, GroupFlags), Response> {
    let mut body: Value = serde_json::from_slice(body).map_err(|e| invalid_json(&e))?;
    let Some(object) = body.as_object_mut() else {
        return Err(group_not_object());
    };
    let id = match (group, object.get("id").and_then(Value::as_str)) {
        (Some(group), _) => group.clone(),
        (None, Some(id)) => PathId::resolve(id, &PathId::root()).map_err(|e| unprocessable("/id", e.to_string()))?,
        (None, None) => PathId::root(),
    };
    let mut flags = GroupFlags::default();
    match object.get("version") {
        None | Some(Value::Null) => {}
        Some(version) => match version.as_str().map(Timestamp::parse) {
            Some(Ok(version)) => flags.version = Some(version),
            _ => return Err(unprocessable("/version", "error.expected.date.isoformat")),
        },
    }
    match object.get("scaleBy") {
        None | Some(Value::Null) => {}
        Some(scale) => {
            let factor = scale.as_f64().or_else(|| scale.as_str().and_then(|s| s.trim().parse().ok()));
            match factor {
                Some(factor) if factor.is_finite() && factor >= 0.0 => flags.scale_by = Some(factor),
                _ => return Err(unprocessable("/scaleBy", "must be a number of 0 or more")),
            }
        }
    }
    let update = group_update(&body, checked_group_id(id, "/id")?)?;
    too_many_apps(&update)?;
    Ok((update, flags))
}

/// The apps of a group body (see [`read_group_update`]): every app it holds, in its groups
/// and below, each read and validated.
pub fn read_group(body: &[u8], group: Option<&PathId>) -> Result<Vec<AppDefinition>, Response> {
    let (update, _) = read_group_update(body, group)?;
    Ok(update.all_apps().into_iter().cloned().collect())
}

// ----- handlers ---------------------------------------------------------------------------------

pub(super) async fn get_root(State(gateway): State<Arc<Gateway>>, Query(pairs): Query<Vec<(String, String)>>) -> Reply {
    let query = GroupQuery::read(pairs)?;
    let apps = service(&gateway)?;
    let node = apps.group_tree(&PathId::root())?;
    off_runtime(move || Ok(group_answer(&apps, &node, &query.embed))).await
}

pub(super) async fn get(
    State(gateway): State<Arc<Gateway>>,
    Path(raw): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Reply {
    let query = GroupQuery::read(pairs)?;
    let apps = service(&gateway)?;
    match GroupPath::read(&raw) {
        GroupPath::Group(id) => {
            let node = apps.group_tree(&group_id(id)?)?;
            off_runtime(move || Ok(group_answer(&apps, &node, &query.embed))).await
        }
        GroupPath::Versions(id) => Ok(axum::Json(apps.group_versions(&group_id(id)?).await?).into_response()),
        GroupPath::Version(id, version) => {
            let node = apps.group_version(&group_id(id)?, version).await?;
            Ok(group_answer(&apps, &node, &query.embed))
        }
    }
}

pub(super) async fn create(
    State(gateway): State<Arc<Gateway>>,
    peer: Peer,
    Query(pairs): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Reply {
    let query = GroupQuery::read(pairs)?;
    let apps = service_for(&gateway, peer)?;
    let (update, _) = read_group_update(&body, None)?;
    if let Some(conflict) = apps.group_conflict(&update.id) {
        return Err(message(StatusCode::CONFLICT, conflict));
    }
    let result = apps.create_group(update, query.force).await?;
    Ok(deployed(StatusCode::CREATED, &result))
}

pub(super) async fn update(
    State(gateway): State<Arc<Gateway>>,
    Path(raw): Path<String>,
    peer: Peer,
    Query(pairs): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Reply {
    let query = GroupQuery::read(pairs)?;
    let apps = service_for(&gateway, peer)?;
    let id = group_id(&raw)?;
    let (update, flags) = read_group_update(&body, Some(&id))?;
    let edit = match flags {
        GroupFlags { version: Some(version), .. } => GroupEdit::Rollback(version),
        GroupFlags { scale_by: Some(factor), .. } => GroupEdit::ScaleBy(factor),
        GroupFlags { .. } => GroupEdit::Replace(update),
    };
    match apps.update_group(&id, edit, query.dry_run, query.force).await? {
        Outcome::Deployed(result) => Ok(deployed(StatusCode::OK, &result)),
        Outcome::DryRun(steps) => Ok(axum::Json(steps).into_response()),
    }
}

pub(super) async fn delete(
    State(gateway): State<Arc<Gateway>>,
    Path(raw): Path<String>,
    peer: Peer,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Reply {
    let query = GroupQuery::read(pairs)?;
    let apps = service_for(&gateway, peer)?;
    let result = apps.delete_group(&group_id(&raw)?, query.force).await?;
    Ok(deployed(StatusCode::OK, &result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: serde_json::Value, group: Option<&str>) -> Result<(GroupUpdate, GroupFlags), StatusCode> {
        let group = group.map(|g| PathId::parse_group(g).unwrap());
        read_group_update(body.to_string().as_bytes(), group.as_ref()).map_err(|response| response.status())
    }

    #[test]
    fn a_group_body_keeps_what_it_leaves_out_apart_from_what_it_empties() {
        let (update, flags) = read(json!({ "id": "/g" }), None).unwrap();
        assert_eq!(update.id.to_string(), "/g");
        assert_eq!((update.apps, update.groups, update.dependencies), (None, None, None), "left out: kept");
        assert_eq!(flags, GroupFlags::default());
        let (update, _) =
            read(json!({ "apps": [], "groups": [], "dependencies": ["../db"] }), Some("/prod/web")).unwrap();
        assert_eq!(update.id.to_string(), "/prod/web", "the URL's id");
        assert_eq!((update.apps, update.groups), (Some(vec![]), Some(vec![])), "given empty: emptied");
        assert_eq!(update.dependencies.unwrap(), [PathId::parse_group("/prod/db").unwrap()], "relative to the group");
    }

    #[test]
    fn nested_groups_and_apps_lie_in_their_parents() {
        let body = json!({ "id": "/g", "groups": [{ "id": "sub", "apps": [{ "id": "a", "cmd": "sleep 1" }] }] });
        let (update, _) = read(body.clone(), None).unwrap();
        let sub = &update.groups.as_ref().unwrap()[0];
        assert_eq!(sub.id.to_string(), "/g/sub");
        assert_eq!(sub.apps.as_ref().unwrap()[0].id.to_string(), "/g/sub/a");
        assert_eq!(read_group(body.to_string().as_bytes(), None).unwrap().len(), 1);
        let outside = json!({ "id": "/g", "groups": [{ "id": "/other" }] });
        assert_eq!(read(outside, None).unwrap_err(), StatusCode::UNPROCESSABLE_ENTITY);
        let nameless = json!({ "id": "/g", "groups": [{ "apps": [] }] });
        assert_eq!(read(nameless, None).unwrap_err(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(read(json!([1]), None).unwrap_err(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn scale_by_and_version_are_read_and_checked() {
        let (_, flags) = read(json!({ "scaleBy": 2 }), Some("/g")).unwrap();
        assert_eq!(flags.scale_by, Some(2.0));
        let (_, flags) = read(json!({ "scaleBy": "1.5" }), Some("/g")).unwrap();
        assert_eq!(flags.scale_by, Some(1.5), "numbers may be strings, as everywhere in Marathon's API");
        assert_eq!(read(json!({ "scaleBy": -1 }), Some("/g")).unwrap_err(), StatusCode::UNPROCESSABLE_ENTITY);
        let (_, flags) = read(json!({ "version": "2026-01-01T00:00:00.000Z" }), Some("/g")).unwrap();
        assert_eq!(flags.version, Some(Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap()));
        assert_eq!(read(json!({ "version": "yesterday" }), Some("/g")).unwrap_err(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn embeds_follow_marathons_defaults() {
        let default = GroupEmbeds::resolve(&[]);
        assert!(default.apps && default.groups && default.pods && !default.needs_views());
        let asked = GroupEmbeds::resolve(&["group.groups".into(), "group.apps.counts".into()]);
        assert!(asked.groups && !asked.apps && !asked.pods, "only what is asked");
        assert!(asked.app.counts);
        let both = GroupEmbeds::resolve(&["group.apps".into(), "group.apps.tasks".into()]);
        assert!(both.apps && both.needs_views() && both.app.tasks);
    }

    #[test]
    fn group_paths_are_read_as_marathon_matches_them() {
        assert!(matches!(GroupPath::read("versions"), GroupPath::Versions("")));
        assert!(matches!(GroupPath::read("prod/versions"), GroupPath::Versions("prod")));
        assert!(matches!(GroupPath::read("prod/versions/2026-01-01T00:00:00.000Z"), GroupPath::Version("prod", _)));
        assert!(matches!(GroupPath::read("versions/v1"), GroupPath::Version("", "v1")));
        assert!(matches!(GroupPath::read("prod/web/"), GroupPath::Group("prod/web")));
    }
}
