//! Gateway failover with real processes: SIGKILL the leading gateway in the middle of a
//! deployment; the other takes over and finishes it, with no task duplicated or lost.

use std::collections::BTreeSet;
use std::time::Duration;

use marina_tests::services::Service;
use marina_tests::{CoordCluster, TestDir, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const SIM_AGENT: &[(&str, &str)] = &[("MARINA_AGENT_RESOURCES__CPUS", "8"), ("MARINA_AGENT_RESOURCES__MEM_MB", "8192")];

async fn leading(gateways: &[Service]) -> usize {
    eventually(WAIT, "a leading gateway", || async {
        for (index, gateway) in gateways.iter().enumerate().filter(|(_, g)| g.is_running()) {
            let info = gateway.get_json("/v2/info").await?;
            if info["elected"] == true && info["leader"] == gateway.address.as_str() && info["frameworkId"].is_string()
            {
                return Some(index);
            }
        }
        None
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_leader_is_replaced_mid_deployment() {
    let coord = CoordCluster::start(1).await;
    let dir = TestDir::new();
    let url = marina_coord_client::CoordUrl { root: "/marina".into(), ..coord.url() };
    let master = Service::master("master", &url, dir.path(), &[]);
    let agents: Vec<Service> =
        (0..2).map(|i| Service::agent(&format!("agent-{i}"), &url, "sim", dir.path(), SIM_AGENT)).collect();
    let mut gateways: Vec<Service> =
        (0..2).map(|i| Service::gateway(&format!("gateway-{i}"), &url, dir.path(), &[])).collect();
    for service in [&master].into_iter().chain(&agents).chain(&gateways) {
        service.wait_healthy().await;
    }
    let old = leading(&gateways).await;
    let other = 1 - old;
    let http = reqwest::Client::new();
    // Health checks every second keep the deployment going for a while.
    let app = json!({
        "id": "/steady", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 6,
        "healthChecks": [{ "protocol": "COMMAND", "command": { "value": "true" }, "gracePeriodSeconds": 0, "intervalSeconds": 2 }],
    });
    let created = http.post(format!("http://{}/v2/apps", gateways[other].address)).json(&app).send().await.unwrap();
    assert_eq!(created.status(), 201, "a standby forwards the request");
    eventually(WAIT, "some tasks to be launched", || async {
        let body = gateways[old].get_json("/v2/apps/steady").await?;
        (body["app"]["tasks"].as_array()?.len() >= 2 && !body["app"]["deployments"].as_array()?.is_empty())
            .then_some(())
    })
    .await;

    gateways[old].kill().await;
    let new = leading(&gateways).await;
    assert_eq!(new, other);
    let app = eventually(WAIT, "the new leader to finish the deployment", || async {
        let body = gateways[new].get_json("/v2/apps/steady").await?;
        let app = body["app"].clone();
        (app["tasksHealthy"] == 6 && app["deployments"].as_array()?.is_empty()).then_some(app)
    })
    .await;
    let gateway_tasks: BTreeSet<String> =
        app["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(gateway_tasks.len(), 6);
    // The master knows exactly these tasks: nothing launched twice, nothing lost.
    let state: Value = master.get_json("/master/state").await.unwrap();
    let master_tasks: BTreeSet<String> = state["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "TASK_RUNNING")
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(master_tasks, gateway_tasks);
    let all: Vec<&Value> = state["tasks"].as_array().unwrap().iter().collect();
    assert_eq!(all.len(), 6, "no other task was ever launched: {all:?}");
    drop((coord, dir, agents));
}
