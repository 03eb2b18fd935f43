//! Changing an app: partial updates, rollbacks, scale-only detection and version stamps.
//!
//! Marathon's `PUT /v2/apps/{id}` (partial by default) and `PATCH /v2/apps/{id}` replace each
//! top-level field the body gives and keep the others; `null` means "not given". A body with
//! only `version` (and `id`) is a rollback to that stored version.

use serde_json::{Map, Value};

use super::AppError;
use super::decode::decode_app;
use super::definition::{AppDefinition, VersionInfo};
use super::lenient::{EXPECTED_DATE, EXPECTED_OBJECT, get};
use super::path::PathId;
use super::time::Timestamp;
use super::validate::validate;
use super::violation::Violation;

const VERSION_ALONE: &str = "The 'version' field may only be combined with the 'id' field.";

/// Applies a partial update (`PATCH`, or `PUT` without `partialUpdate=false`) to `existing`
/// and validates the result. `id`, `version` and `versionInfo` in the body are ignored: the
/// id is the URL's, the version is [`stamp`]ed when the result is stored. A body holding only
/// `version` is a rollback, which [`rollback_version`] recognizes and the caller performs;
/// here it changes nothing.
pub fn apply_patch(existing: &AppDefinition, patch: &[u8]) -> Result<AppDefinition, AppError> {
    let patch = patch_object(patch)?;
    rollback_in(&patch)?;
    let Value::Object(mut merged) = existing.to_json() else {
        unreachable!("an app is written as a JSON object");
    };
    for (key, value) in patch {
        if value.is_null() || matches!(key.as_str(), "id" | "version" | "versionInfo") {
            continue;
        }
        // Drop the existing field's other spellings, so the new value is the only one.
        let twins: &[&str] = match key.as_str() {
            "ports" | "portDefinitions" => &["ports", "portDefinitions"],
            "uris" | "fetch" => &["uris", "fetch"],
            "cmd" => &["args"],
            "args" => &["cmd"],
            _ => &[],
        };
        for twin in twins {
            merged.remove(*twin);
        }
        merged.insert(key, value);
    }
    let app = decode_app(&Value::Object(merged), &PathId::root(), Some(&existing.id)).map_err(AppError::Invalid)?;
    validate(&app).map_err(AppError::Invalid)?;
    Ok(app)
}

/// The version an update body asks to roll back to: `{"version": "2014-03-01T23:17:50.295Z"}`
/// (an `id` may accompany it). `None` for an ordinary update; an error if `version` comes
/// with other fields, as in Marathon.
pub fn rollback_version(body: &[u8]) -> Result<Option<Timestamp>, AppError> {
    rollback_in(&patch_object(body)?)
}

fn patch_object(body: &[u8]) -> Result<Map<String, Value>, AppError> {
    match serde_json::from_slice(body).map_err(|e| AppError::MalformedJson(e.to_string()))? {
        Value::Object(patch) => Ok(patch),
        _ => Err(AppError::Invalid(vec![Violation::new("/", EXPECTED_OBJECT)])),
    }
}

fn rollback_in(patch: &Map<String, Value>) -> Result<Option<Timestamp>, AppError> {
    let Some(version) = get(patch, "version") else { return Ok(None) };
    if patch.iter().any(|(key, value)| !value.is_null() && !matches!(key.as_str(), "id" | "version")) {
        return Err(AppError::Invalid(vec![Violation::new("/", VERSION_ALONE)]));
    }
    match version.as_str().map(Timestamp::parse) {
        Some(Ok(version)) => Ok(Some(version)),
        _ => Err(AppError::Invalid(vec![Violation::new("/version", EXPECTED_DATE)])),
    }
}

/// True if `a` and `b` differ at most in `instances`, `version` and `versionInfo`: a change
/// between them needs no restart.
pub fn config_equal(a: &AppDefinition, b: &AppDefinition) -> bool {
    fn config(app: &AppDefinition) -> AppDefinition {
        AppDefinition { instances: 0, version: None, version_info: None, ..app.clone() }
    }
    config(a) == config(b)
}

/// True if going from `old` to `new` only scales (Marathon's `isOnlyScaleChange`): the
/// deployment starts or stops instances and restarts none. A label change is a
/// configuration change, as in Marathon.
pub fn is_scale_only(old: &AppDefinition, new: &AppDefinition) -> bool {
    old.instances != new.instances && config_equal(old, new)
}

/// Sets `app`'s version to `now` as the gateway stores it: `versionInfo.lastScalingAt` is the
/// new version, `lastConfigChangeAt` too unless the configuration is unchanged from
/// `previous` (a scale or restart), in which case it stays `previous`'s. Versions only grow:
/// if the clock reads at or before `previous`'s version, the new one is 1 ms later.
pub fn stamp(app: &mut AppDefinition, now: Timestamp, previous: Option<&AppDefinition>) {
    let version = match previous.and_then(|p| p.version) {
        Some(last) if now <= last => last.plus_millis(1),
        _ => now,
    };
    let last_config_change_at = previous
        .filter(|p| config_equal(p, app))
        .and_then(|p| p.version_info.map(|info| info.last_config_change_at).or(p.version))
        .unwrap_or(version);
    app.version = Some(version);
    app.version_info = Some(VersionInfo { last_scaling_at: version, last_config_change_at });
}
