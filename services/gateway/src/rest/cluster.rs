//! `GET /v2/cluster`, Marina's extension: the cluster an operator looks at — masters and
//! gateways in their election's order (the first leads), and the agents with their runtimes
//! and resources, as the leading master knows them. The CLI's `marina cluster` and the UI's
//! cluster page read it. Served by the leading gateway (standbys forward it), which reads
//! the elections from coord and the agents from its session with the leading master.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use marina_daemon::leader::MemberInfo;
use marina_proto::agent::v1::Resources;
use marina_proto::layout::{GATEWAY_ELECTION_DIR, MASTER_ELECTION_DIR};
use marina_proto::master::v1 as master;
use serde_json::{Value, json};

use super::{Reply, service};
use crate::Gateway;

/// How long the leading master has to say who its agents are.
const STATE_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn cluster(State(gateway): State<Arc<Gateway>>) -> Reply {
    service(&gateway)?;
    let (masters, gateways, agents) =
        tokio::join!(members(&gateway, MASTER_ELECTION_DIR), members(&gateway, GATEWAY_ELECTION_DIR), agents(&gateway));
    let (masters, masters_error) = split(masters);
    let (gateways, gateways_error) = split(gateways);
    let (agents, agents_error) = split(agents);
    Ok(axum::Json(json!({
        "masters": masters,
        "gateways": gateways,
        "agents": agents,
        // Why a list is empty when its source could not be read (coord for the elections; the
        // leading master, not yet subscribed to or not answering, for the agents): an empty
        // list alone would read as "none".
        "mastersError": masters_error,
        "gatewaysError": gateways_error,
        "agentsError": agents_error,
    }))
    .into_response())
}

/// A list and `null`, or an empty list and why.
fn split(result: Result<Vec<Value>, String>) -> (Vec<Value>, Value) {
    match result {
        Ok(list) => (list, Value::Null),
        Err(why) => (Vec::new(), Value::String(why)),
    }
}

/// The members of the election in `dir`, the leader first and marked.
async fn members(gateway: &Gateway, dir: &str) -> Result<Vec<Value>, String> {
    let members =
        gateway.coord.election_members(dir).await.map_err(|error| format!("reading {dir} in coord: {error}"))?;
    Ok(members
        .iter()
        .enumerate()
        .map(|(position, member)| {
            let info = MemberInfo::from_bytes(&member.data);
            json!({
                "id": info.as_ref().map(|i| i.id.as_str()),
                "address": info.as_ref().map(|i| i.address.as_str()),
                "version": info.as_ref().map(|i| i.version.as_str()),
                "leader": position == 0,
                "epoch": member.epoch,
            })
        })
        .collect())
}

/// Every agent the leading master has registered, with what it offers, uses and has free.
async fn agents(gateway: &Gateway) -> Result<Vec<Value>, String> {
    let leader = gateway.leader().ok_or("this gateway no longer leads")?;
    let session = leader.master.borrow().clone().ok_or("not subscribed to a leading master yet")?;
    let mut operator = session.operator.clone();
    let state = tokio::time::timeout(STATE_TIMEOUT, operator.get_state(master::GetStateRequest {}))
        .await
        .map_err(|_| format!("the leading master did not answer within {STATE_TIMEOUT:?}"))?
        .map_err(|status| format!("the leading master: {}", status.message()))?
        .into_inner();
    Ok(state.agents.iter().filter_map(agent).collect())
}

fn agent(summary: &master::AgentSummary) -> Option<Value> {
    let info = summary.info.as_ref()?;
    let total = info.resources.clone().unwrap_or_default();
    let used = summary.used.clone().unwrap_or_default();
    let free = marina_proto::resources::subtract(&total, &used);
    let attributes: BTreeMap<&str, &str> =
        info.attributes.iter().map(|a| (a.name.as_str(), a.value.as_str())).collect();
    Some(json!({
        "id": info.agent_id,
        "hostname": info.hostname,
        "address": info.address,
        "status": summary.status,
        "runtimes": info.runtime.split(',').filter(|r| !r.is_empty()).collect::<Vec<_>>(),
        "attributes": attributes,
        "version": info.version,
        "total": resources(&total),
        "used": resources(&used),
        "free": resources(&free),
        "lastHeartbeat": summary.last_heartbeat,
    }))
}

fn resources(resources: &Resources) -> Value {
    json!({
        "cpus": resources.cpus,
        "mem": resources.mem_mb,
        "disk": resources.disk_mb,
        "ports": resources.ports.iter().map(|range| [range.begin, range.end]).collect::<Vec<_>>(),
    })
}
