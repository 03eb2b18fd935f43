//! `/v2/deployments` and `/v2/queue`: deployments in progress, and apps waiting to launch.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::{Flags, Reply, deployed, message, service};
use crate::Gateway;
use crate::apps::app_id;

pub(super) async fn list(State(gateway): State<Arc<Gateway>>) -> Reply {
    Ok(axum::Json(service(&gateway)?.deployments_json()).into_response())
}

/// Rolls a deployment back (a new deployment), or with `force` just stops it.
pub(super) async fn cancel(
    State(gateway): State<Arc<Gateway>>,
    Path(id): Path<String>,
    Query(flags): Query<Flags>,
) -> Reply {
    match service(&gateway)?.cancel_deployment(&id, flags.force).await? {
        Some(rollback) => Ok(deployed(StatusCode::OK, &rollback)),
        None => Ok((StatusCode::ACCEPTED, axum::Json(json!({}))).into_response()),
    }
}

pub(super) async fn queue(State(gateway): State<Arc<Gateway>>) -> Reply {
    let queue: Vec<Value> = service(&gateway)?
        .queue()
        .into_iter()
        .map(|(app, count, delay, stats)| {
            let reasons: Vec<Value> = stats
                .rejected
                .iter()
                .map(|(reason, declined)| json!({ "reason": reason.marathon_name(), "declined": declined, "processed": stats.processed }))
                .collect();
            json!({
                "app": app.to_json(),
                "count": count,
                "delay": { "timeLeftSeconds": delay.as_secs(), "overdue": delay.is_zero() },
                "since": stats.since.map(|t| t.to_string()),
                "processedOffersSummary": {
                    "processedOffersCount": stats.processed,
                    "unusedOffersCount": stats.unused,
                    "lastUnusedOfferAt": stats.last_unused_at.map(|t| t.to_string()),
                    "lastUsedOfferAt": stats.last_used_at.map(|t| t.to_string()),
                    "rejectSummaryLastOffers": reasons,
                    "rejectSummaryLaunchAttempt": reasons,
                },
                "lastUnusedOffers": [],
            })
        })
        .collect();
    Ok(axum::Json(json!({ "queue": queue })).into_response())
}

/// `DELETE /v2/queue/{app}/delay`: the app launches again at once.
pub(super) async fn reset_delay(State(gateway): State<Arc<Gateway>>, Path(rest): Path<String>) -> Reply {
    let apps = service(&gateway)?;
    let Some(raw) = format!("/{}", rest.trim_matches('/')).strip_suffix("/delay").map(str::to_owned) else {
        return Err(message(StatusCode::NOT_FOUND, "no such resource"));
    };
    apps.reset_delay(&app_id(&raw)?)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
