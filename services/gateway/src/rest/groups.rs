//! `/v2/groups`: groups, which in Marina exist through their apps (an app `/prod/web` makes
//! the groups `/` and `/prod`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::apps::app_json;
use super::{Flags, Reply, deployed, invalid_json, message, service};
use crate::Gateway;
use crate::app::{self, AppDefinition, PathId};
use crate::apps::{AppView, AppsError, group_id};

/// The group tree of `base`, built from the app ids (groups are implicit in Marina).
fn group_json(base: &PathId, apps: &[AppView]) -> Value {
    let mut own = Vec::new();
    let mut subgroups: BTreeMap<String, PathId> = BTreeMap::new();
    for view in apps {
        let id = &view.app.id;
        if !base.contains(id) || id == base {
            continue;
        }
        if id.parent() == *base {
            own.push(app_json(view, false));
        } else {
            // A group may have a name an app may not (`/tasks` of `/tasks/web`).
            let child = id.ancestor(base.segments().len() + 1);
            subgroups.insert(child.to_string(), child);
        }
    }
    let groups: Vec<Value> = subgroups.values().map(|child| group_json(child, apps)).collect();
    json!({ "id": base.to_string(), "apps": own, "groups": groups, "dependencies": [], "version": app::Timestamp::now().to_string() })
}

pub(super) async fn get_root(State(gateway): State<Arc<Gateway>>) -> Reply {
    let root = PathId::root();
    Ok(axum::Json(group_json(&root, &service(&gateway)?.group(&root)?)).into_response())
}

pub(super) async fn get(State(gateway): State<Arc<Gateway>>, Path(raw): Path<String>) -> Reply {
    let apps = service(&gateway)?;
    let id = group_id(&raw)?;
    Ok(axum::Json(group_json(&id, &apps.group(&id)?)).into_response())
}

/// Every app of a group body (`{"id": "/g", "apps": [...], "groups": [...]}`), ids resolved
/// against the group.
fn group_apps(body: &Value, base: &PathId, out: &mut Vec<AppDefinition>) -> Result<(), Response> {
    let id = match body.get("id").and_then(Value::as_str) {
        Some(id) => PathId::resolve(id, base).map_err(|e| message(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?,
        None => base.clone(),
    };
    for app in body.get("apps").and_then(Value::as_array).into_iter().flatten() {
        let bytes = serde_json::to_vec(app).unwrap_or_default();
        out.push(app::parse_app(&bytes, Some(&id)).map_err(|e| AppsError::from(e).into_response())?);
    }
    for group in body.get("groups").and_then(Value::as_array).into_iter().flatten() {
        // A nested group lies in its parent, as Marathon requires: `PUT /v2/groups/prod`
        // must not deploy `/other/x` (found by fuzzing).
        let nested = group.get("id").and_then(Value::as_str).map(|child| PathId::resolve_lenient(child, &id));
        if let Some(child) = nested
            && (child.is_root() || child.parent() != id)
        {
            let error = format!("Group {child} is not a child of {id}. Hint: use relative paths.");
            let violation = app::Violation::new("/groups", error);
            return Err((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(app::invalid_body(&[violation]))).into_response());
        }
        group_apps(group, &id, out)?;
    }
    Ok(())
}

/// Marathon's answer to a group body that is not a JSON object.
fn group_not_object() -> Response {
    let violation = app::Violation::new("/", "error.expected.jsobject");
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({ "message": "Invalid JSON", "details": [violation] })))
        .into_response()
}

/// One group request deploys at most [`app::MAX_ITEMS`] apps: each is validated, stored and
/// planned in the same deployment.
fn too_many_apps(apps: &[AppDefinition]) -> Result<(), Response> {
    if apps.len() <= app::MAX_ITEMS {
        return Ok(());
    }
    let violation =
        app::Violation::new("/apps", format!("got {} apps, expected {} or less", apps.len(), app::MAX_ITEMS));
    Err((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(app::invalid_body(&[violation]))).into_response())
}

/// The apps of a group body (`POST /v2/groups` with `group` None, `PUT /v2/groups/{group}`
/// with it: the body's id is then the URL's), each read and validated, ids resolved against
/// their groups; or the answer that refuses the body.
pub fn read_group(body: &[u8], group: Option<&PathId>) -> Result<Vec<AppDefinition>, Response> {
    let mut body: Value = serde_json::from_slice(body).map_err(|e| invalid_json(&e))?;
    if let Some(group) = group {
        let Some(object) = body.as_object_mut() else {
            return Err(group_not_object());
        };
        object.insert("id".to_owned(), json!(group.to_string()));
    }
    let mut apps = Vec::new();
    group_apps(&body, &PathId::root(), &mut apps)?;
    too_many_apps(&apps)?;
    Ok(apps)
}

pub(super) async fn create(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>, body: Bytes) -> Reply {
    let apps = service(&gateway)?;
    let result = apps.create_group(read_group(&body, None)?, flags.force).await?;
    Ok(deployed(StatusCode::CREATED, &result))
}

pub(super) async fn update(
    State(gateway): State<Arc<Gateway>>,
    Path(raw): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Reply {
    let apps = service(&gateway)?;
    let base = PathId::parse(&format!("/{}", raw.trim_matches('/'))).map_err(|e| AppsError::BadId {
        kind: "group",
        raw: raw.clone(),
        reason: e.to_string(),
    })?;
    let result = apps.update_group(read_group(&body, Some(&base))?, flags.force).await?;
    Ok(deployed(StatusCode::OK, &result))
}

pub(super) async fn delete(
    State(gateway): State<Arc<Gateway>>,
    Path(raw): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    let apps = service(&gateway)?;
    let result = apps.delete_group(&group_id(&raw)?, flags.force).await?;
    Ok(deployed(StatusCode::OK, &result))
}
