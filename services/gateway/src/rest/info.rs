//! `/v2/info` and `/v2/leader`: who this gateway is and who leads.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Reply, message, service};
use crate::Gateway;

/// Marathon's version this API follows.
pub const MARATHON_VERSION: &str = "1.11.0";

/// `GET /v2/info`: every field Marathon 1.11 returns, so clients that read them (Marathon's
/// Python client builds an object of each section and refuses a key it does not know; the
/// UI shows them) work unchanged. Where Marina has the setting, its value; where it has none,
/// what a stock Marathon 1.11 reports (its `MarathonConf` defaults), each marked below.
pub(super) async fn info(State(gateway): State<Arc<Gateway>>) -> Response {
    let config = &gateway.config;
    let leader = gateway.leader_address();
    let framework_id = gateway
        .role
        .borrow()
        .as_ref()
        .and_then(|leader| leader.master.borrow().as_ref().map(|s| s.framework_id.clone()));
    let address = &gateway.member.address;
    let (hostname, port) = match address.rsplit_once(':') {
        Some((host, port)) => (host.trim_start_matches('[').trim_end_matches(']'), port.parse::<u16>().ok()),
        None => (address.as_str(), None),
    };
    axum::Json(json!({
        "name": "marathon",
        "version": MARATHON_VERSION,
        "buildref": format!("marina-{}", marina_daemon::VERSION),
        "elected": gateway.role.borrow().is_some(),
        "leader": leader,
        "frameworkId": framework_id,
        "marathon_config": marathon_config(config, hostname),
        "zookeeper_config": {
            // Marina's coord takes ZooKeeper's place.
            "zk": config.coord.to_string(),
            // Marathon's defaults: Marina's store has no compression or node-size settings.
            "zk_compression": true,
            "zk_compression_threshold": 65_536,
            "zk_connection_timeout": 10_000,
            "zk_max_node_size": 1_024_000,
            "zk_max_versions": crate::store::MAX_VERSIONS,
            "zk_session_timeout": config.session_ttl_ms,
            "zk_timeout": 10_000,
        },
        "http_config": { "http_port": port, "https_port": null },
        // Marathon < 1.5 wrote it (HTTP callback subscribers; Marina has none), and clients of
        // that era read it.
        "event_subscriber": null,
    }))
    .into_response()
}

/// `/v2/info`'s `marathon_config` (two halves: one `json!` of all of it is too deep a macro).
fn marathon_config(config: &crate::config::Config, hostname: &str) -> Value {
    let mut settings = json!({
        // Marathon: none (no CORS header). Marina sends none either.
        "access_control_allow_origin": null,
        // Marina's agents keep tasks running across their restarts and reattach.
        "checkpoint": true,
        // Marina declines offers nothing waits for, for 5 s (1 s while apps wait).
        "decline_offer_duration": 5_000,
        "default_network_name": null,
        "env_vars_prefix": null,
        "executor": "//cmd",
        // Marathon's default (a week, in seconds).
        "failover_timeout": 604_800,
        // None of Marathon's optional features (vips, task_killing, external_volumes,
        // gpu_resources, secrets) is enabled.
        "features": [],
        "framework_name": config.framework_name,
        "ha": true,
        "hostname": hostname,
        // Marathon's defaults: Marina does not rate-limit launches with tokens.
        "launch_token": 100,
        "launch_token_refresh_interval": 30_000,
        // Marathon's defaults for its leader proxy; a Marina standby forwards to the leader.
        "leader_proxy_connection_timeout_ms": 5_000,
        "leader_proxy_read_timeout_ms": 10_000,
        // Service ports Marina assigns: 10000-19999 (Marathon's [min, max) range).
        "local_port_max": 20_000,
        "local_port_min": 10_000,
    });
    let rest = json!({
        // Marina does not decline offers of agents in maintenance (Marathon 1.9+ key).
        "maintenance_mode": false,
        // Where the masters are found: Marina's coord.
        "master": config.coord.to_string(),
        // Marina places as many instances on an offer as it holds: no cap.
        "max_instances_per_offer": null,
        "mesos_bridge_name": "mesos-bridge",
        // Marathon's defaults; Marina's session with the master is a gRPC stream.
        "mesos_heartbeat_failure_threshold": 5,
        "mesos_heartbeat_interval": 15_000,
        "mesos_leader_ui_url": null,
        "mesos_role": super::apps::MARATHON_DEFAULT_ROLE,
        // Tasks run as their app's `user`, else as the agent's user.
        "mesos_user": null,
        "min_revive_offers_interval": 5_000,
        // Marathon 1.9+ key; Marina has no roles to enforce.
        "new_group_enforce_role": "off",
        "offer_matching_timeout": 3_000,
        "on_elected_prepare_timeout": 180_000,
        // Marina reconciles at once on every new subscription, then every interval.
        "reconciliation_initial_delay": 0,
        "reconciliation_interval": config.reconcile_interval_ms,
        "revive_offers_for_new_apps": true,
        "revive_offers_repetitions": 3,
        // Marina compares each app's desired and actual state every `converge_interval_ms`.
        "scale_apps_initial_delay": 0,
        "scale_apps_interval": config.converge_interval_ms,
        "store_cache": true,
        "task_launch_confirm_timeout": config.task_launch_timeout_ms,
        "task_launch_timeout": config.task_launch_timeout_ms,
        // Marathon's defaults (Marina expunges per app, by its `unreachableStrategy`).
        "task_lost_expunge_initial_delay": 300_000,
        "task_lost_expunge_interval": 30_000,
        "task_reservation_timeout": 20_000,
        "webui_url": null,
    });
    if let (Some(settings), Value::Object(rest)) = (settings.as_object_mut(), rest) {
        settings.extend(rest);
    }
    settings
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
