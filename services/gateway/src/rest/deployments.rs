//! `/v2/deployments` and `/v2/queue`: deployments in progress, and apps waiting to launch.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::apps::MARATHON_DEFAULT_ROLE;
use super::{Flags, Reply, deployed, message, service};
use crate::Gateway;
use crate::apps::app_id;
use crate::placement::Reject;

/// `GET /v2/deployments`: Marathon's `DeploymentStepInfo` of each deployment in progress. Marina
/// has no pods, so `affectedPods` is always empty.
pub(super) async fn list(State(gateway): State<Arc<Gateway>>) -> Reply {
    let mut deployments = service(&gateway)?.deployments_json();
    for deployment in &mut deployments {
        if deployment.get("affectedPods").is_none() {
            deployment["affectedPods"] = json!([]);
        }
    }
    Ok(axum::Json(deployments).into_response())
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

/// `GET /v2/queue`: the apps waiting to launch instances, as Marathon's `QueueApp`s: `count`
/// left to launch, the backoff `delay`, `since`, `processedOffersSummary` and the `app`
/// (with its `role`). `lastUnusedOffers` only with `embed=lastUnusedOffers`, as Marathon; it is
/// empty: the leader keeps counts of declined offers by reason, not the offers themselves.
pub(super) async fn queue(State(gateway): State<Arc<Gateway>>, Query(flags): Query<Flags>) -> Reply {
    let last_unused_offers = flags.embed.iter().any(|embed| embed == "lastUnusedOffers");
    let queue: Vec<Value> = service(&gateway)?
        .queue()
        .into_iter()
        .map(|(app, count, delay, stats)| {
            let reasons = reject_summary(stats.processed, &stats.rejected);
            let mut app = app.to_json();
            if app.get("role").is_none() {
                app["role"] = json!(MARATHON_DEFAULT_ROLE);
            }
            let mut entry = json!({
                "app": app,
                "count": count,
                "delay": { "timeLeftSeconds": delay.as_secs(), "overdue": delay.is_zero() },
                "since": stats.since.map(|t| t.to_string()),
                "processedOffersSummary": {
                    "processedOffersCount": stats.processed,
                    "unusedOffersCount": stats.unused,
                    "lastUnusedOfferAt": stats.last_unused_at.map(|t| t.to_string()),
                    "lastUsedOfferAt": stats.last_used_at.map(|t| t.to_string()),
                    // Marina counts since the launch attempt began, not per agent's last
                    // offer: both summaries show those counts.
                    "rejectSummaryLastOffers": reasons,
                    "rejectSummaryLaunchAttempt": reasons,
                },
            });
            if last_unused_offers {
                entry["lastUnusedOffers"] = json!([]);
            }
            entry
        })
        .collect();
    Ok(axum::Json(json!({ "queue": queue })).into_response())
}

/// Marathon's reasons for not using offers, in the order it checks them (its
/// `NoOfferMatchReason.reasonFunnel`, with Marina's `NoCapableRuntime` after the constraints).
const REASON_FUNNEL: [&str; 9] = [
    "UnfulfilledRole",
    "UnfulfilledConstraint",
    "NoCapableRuntime",
    "NoCorrespondingReservationFound",
    "InsufficientCpus",
    "InsufficientMemory",
    "InsufficientDisk",
    "InsufficientGpus",
    "InsufficientPorts",
];

/// Marathon's `rejectSummary…` (`DeclinedOfferStep`s): every reason of the funnel in order,
/// each with the offers it declined (each declined offer counts under its first reason) and
/// the offers that reached it (`processed`, less those declined by the reasons before).
fn reject_summary(processed: u64, rejected: &BTreeMap<Reject, u64>) -> Vec<Value> {
    let declined_for =
        |name: &str| rejected.iter().filter(|(reason, _)| reason.marathon_name() == name).map(|(_, n)| *n).sum::<u64>();
    let mut reaching = processed;
    REASON_FUNNEL
        .iter()
        .map(|name| {
            let declined = declined_for(name);
            let step = json!({ "reason": name, "declined": declined, "processed": reaching });
            reaching = reaching.saturating_sub(declined);
            step
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reject_summary_is_marathons_funnel() {
        let rejected = BTreeMap::from([
            (Reject::InsufficientCpus, 3),
            (Reject::UnfulfilledConstraint, 2),
            (Reject::InsufficientPorts, 1),
        ]);
        let summary = reject_summary(10, &rejected);
        let steps: Vec<(&str, u64, u64)> = summary
            .iter()
            .map(|s| (s["reason"].as_str().unwrap(), s["declined"].as_u64().unwrap(), s["processed"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            steps,
            [
                ("UnfulfilledRole", 0, 10),
                ("UnfulfilledConstraint", 2, 10),
                ("NoCapableRuntime", 0, 8),
                ("NoCorrespondingReservationFound", 0, 8),
                ("InsufficientCpus", 3, 8),
                ("InsufficientMemory", 0, 5),
                ("InsufficientDisk", 0, 5),
                ("InsufficientGpus", 0, 5),
                ("InsufficientPorts", 1, 5),
            ]
        );
    }

    #[test]
    fn every_reason_marina_records_is_in_the_funnel() {
        for reason in [
            Reject::InsufficientCpus,
            Reject::InsufficientMemory,
            Reject::InsufficientDisk,
            Reject::InsufficientPorts,
            Reject::UnfulfilledConstraint,
            Reject::NoCapableRuntime,
        ] {
            assert!(REASON_FUNNEL.contains(&reason.marathon_name()), "{reason:?}");
        }
    }
}
