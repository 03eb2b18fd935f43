//! `/v2/info` and `/v2/leader`: who this gateway is and who leads.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Reply, message, service};
use crate::Gateway;

/// Marathon's version this API follows.
pub const MARATHON_VERSION: &str = "1.11.0";

pub(super) async fn info(State(gateway): State<Arc<Gateway>>) -> Response {
    let leader = gateway.leader_address();
    let framework_id = gateway
        .role
        .borrow()
        .as_ref()
        .and_then(|leader| leader.master.borrow().as_ref().map(|s| s.framework_id.clone()));
    axum::Json(json!({
        "name": "marathon",
        "version": MARATHON_VERSION,
        "buildref": format!("marina-{}", marina_daemon::VERSION),
        "elected": gateway.role.borrow().is_some(),
        "leader": leader,
        "frameworkId": framework_id,
        "marathon_config": {
            "master": gateway.config.coord.to_string(),
            "framework_name": gateway.config.framework_name,
            "hostname": gateway.member.address,
            "ha": true,
            "executor": "//cmd",
            "task_launch_timeout": gateway.config.task_launch_timeout_ms,
            "reconciliation_interval": gateway.config.reconcile_interval_ms,
            "failover_timeout": 604800,
            "leader_proxy_connection_timeout_ms": 5000,
            "mesos_role": null,
            "checkpoint": true,
            "local_port_min": 10000,
            "local_port_max": 20000,
        },
        "zookeeper_config": {
            "zk": gateway.config.coord.to_string(),
            "zk_timeout": gateway.config.session_ttl_ms,
            "zk_session_timeout": gateway.config.session_ttl_ms,
            "zk_max_versions": crate::store::MAX_VERSIONS,
        },
        "http_config": { "http_port": gateway.member.address.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()), "https_port": null },
        "event_subscriber": null,
    }))
    .into_response()
}

pub(super) async fn get_leader(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.leader_address() {
        Some(leader) => axum::Json(json!({ "leader": leader })).into_response(),
        None => message(StatusCode::NOT_FOUND, "There is no leader"),
    }
}

pub(super) async fn abdicate(State(gateway): State<Arc<Gateway>>) -> Reply {
    service(&gateway)?;
    gateway.abdicate.notify_one();
    Ok(axum::Json(json!({ "message": "Leadership abdicated" })).into_response())
}
