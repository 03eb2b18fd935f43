//! Gateway failover with real processes: SIGKILL the leading gateway in the middle of a
//! deployment; the other takes over and finishes it, with no task duplicated or lost. And
//! SIGTERM of the leading gateway: it resigns on its way out, so the standby leads at once.

use std::collections::BTreeSet;
use std::time::Duration;

use marina_tests::services::Service;
use marina_tests::{ProcessCluster, Topology, eventually};
use serde_json::{Value, json};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_leader_is_replaced_mid_deployment() {
    let mut cluster = ProcessCluster::start(Topology::new(1, 2, "sim", 2)).await;
    let old = cluster.leading_gateway().await;
    let other = 1 - old;
    let http = reqwest::Client::new();
    // Health checks every second keep the deployment going for a while.
    let app = json!({
        "id": "/steady", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 6,
        "healthChecks": [{ "protocol": "COMMAND", "command": { "value": "true" }, "gracePeriodSeconds": 0, "intervalSeconds": 2 }],
    });
    let created =
        http.post(format!("http://{}/v2/apps", cluster.gateways[other].address)).json(&app).send().await.unwrap();
    assert_eq!(created.status(), 201, "a standby forwards the request");
    eventually(WAIT, "some tasks to be launched", || async {
        let body = cluster.gateways[old].get_json("/v2/apps/steady").await?;
        (body["app"]["tasks"].as_array()?.len() >= 2 && !body["app"]["deployments"].as_array()?.is_empty())
            .then_some(())
    })
    .await;

    cluster.gateways[old].kill().await;
    let new = cluster.leading_gateway().await;
    assert_eq!(new, other);
    let app = eventually(WAIT, "the new leader to finish the deployment", || async {
        let body = cluster.gateways[new].get_json("/v2/apps/steady").await?;
        let app = body["app"].clone();
        (app["tasksHealthy"] == 6 && app["deployments"].as_array()?.is_empty()).then_some(app)
    })
    .await;
    let gateway_tasks: BTreeSet<String> =
        app["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(gateway_tasks.len(), 6);
    // The master knows exactly these tasks: nothing launched twice, nothing lost.
    let state: Value = cluster.masters[0].get_json("/master/state").await.unwrap();
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
}

/// The ids of `/steady`'s tasks as gateway `gateway` reports them, once `count` run and no
/// deployment is in progress.
async fn steady_tasks(gateway: &Service, count: usize) -> BTreeSet<String> {
    eventually(WAIT, &format!("/steady to run {count} tasks with no deployment"), || async {
        let app = gateway.get_json("/v2/apps/steady").await?["app"].clone();
        let tasks: BTreeSet<String> =
            app["tasks"].as_array()?.iter().filter_map(|t| Some(t["id"].as_str()?.to_owned())).collect();
        (app["tasksRunning"] == count && tasks.len() == count && app["deployments"].as_array()?.is_empty())
            .then_some(tasks)
    })
    .await
}

/// Every task the master has ever known, by id, with its state.
async fn master_tasks(master: &Service) -> Vec<(String, String)> {
    let state = master.get_json("/master/state").await.expect("the master answers");
    let tasks = state["tasks"].as_array().expect("a task list");
    tasks.iter().map(|t| (t["id"].as_str().unwrap().to_owned(), t["state"].as_str().unwrap().to_owned())).collect()
}

/// A leading gateway stopped with SIGTERM resigns before it exits: it exits 0, and the
/// standby leads well inside the coord session's TTL (10 s here, and as long a disconnect
/// grace, so that only a resignation — never the session's end — explains a quick
/// handover). The app's running tasks are untouched (the same ids, none launched again, the
/// master knowing no other), and the apps API works through the new leader: scaling the app
/// up launches only the new tasks. A rolling restart of gateways must cost neither a TTL of
/// unavailability nor a task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_gateway_leader_hands_over_at_once_and_leaves_tasks_alone() {
    const SESSION_TTL: Duration = Duration::from_secs(10);
    let ttl = SESSION_TTL.as_millis().to_string();
    // The disconnect grace as long as the TTL: a process that exits without resigning
    // closes its coord connection, and with the default grace (300 ms) coord would end its
    // session almost as fast as a resignation does.
    let gateway_env =
        [("MARINA_GATEWAY_SESSION_TTL_MS", ttl.as_str()), ("MARINA_GATEWAY_SESSION_DISCONNECT_GRACE_MS", ttl.as_str())];
    let mut cluster = ProcessCluster::start(Topology::new(1, 2, "sim", 2).gateway_env(&gateway_env)).await;
    let old = cluster.leading_gateway().await;
    let other = 1 - old;
    let info = cluster.gateways[other].get_json("/v2/info").await.unwrap();
    assert_eq!(info["zookeeper_config"]["zk_session_timeout"], SESSION_TTL.as_millis() as u64, "the TTL took");
    let http = reqwest::Client::new();
    let app = json!({ "id": "/steady", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 3 });
    let created =
        http.post(format!("http://{}/v2/apps", cluster.gateways[old].address)).json(&app).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let before = steady_tasks(&cluster.gateways[old], 3).await;

    let status = cluster.gateways[old].terminate().await.expect("the gateway ran");
    let exited_at = Instant::now();
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let new = cluster.leading_gateway().await;
    let handover = exited_at.elapsed();
    assert_eq!(new, other);
    assert!(handover < SESSION_TTL / 2, "the standby took {handover:?} to lead: the old leader did not resign");

    // The new leader knows the same tasks; the master ran no other.
    let after = steady_tasks(&cluster.gateways[new], 3).await;
    assert_eq!(after, before, "nothing was restarted or duplicated");
    let known = master_tasks(&cluster.masters[0]).await;
    assert_eq!(known.len(), 3, "no task was launched again: {known:?}");
    assert!(known.iter().all(|(id, state)| before.contains(id) && state == "TASK_RUNNING"), "{known:?}");

    // The apps API works through the new leader: scaling up keeps the three, adds two.
    let scaled = http
        .put(format!("http://{}/v2/apps/steady", cluster.gateways[new].address))
        .json(&json!({ "instances": 5 }))
        .send();
    let scaled = scaled.await.unwrap();
    assert_eq!(scaled.status(), 200);
    let scaled_tasks = steady_tasks(&cluster.gateways[new], 5).await;
    assert!(scaled_tasks.is_superset(&before), "the running tasks stay: {before:?} -> {scaled_tasks:?}");
    let known = master_tasks(&cluster.masters[0]).await;
    assert_eq!(known.len(), 5, "only the two new tasks were launched: {known:?}");
}

/// A failing app says why (Marathon's `lastTaskFailure`), and still does after the leading
/// gateway is SIGKILLed: the failure is kept in coord, not only in the leader's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_task_failure_outlives_a_gateway_failover() {
    let mut cluster = ProcessCluster::start(Topology::new(1, 1, "process", 2)).await;
    let old = cluster.leading_gateway().await;
    let other = 1 - old;
    let api = cluster.gateway_api(old);
    api.create(&json!({ "id": "/failing", "cmd": "echo going down >&2; exit 3", "cpus": 0.1, "mem": 16 }))
        .await
        .unwrap();
    let failure = eventually(WAIT, "the app's last task failure", || async {
        let failure = api.app("/failing").await?["lastTaskFailure"].clone();
        failure.is_object().then_some(failure)
    })
    .await;
    assert_eq!(failure["appId"], "/failing", "{failure}");
    assert_eq!(failure["state"], "TASK_FAILED", "{failure}");
    for field in ["host", "message", "taskId", "timestamp", "version"] {
        assert!(failure[field].is_string(), "{field} in {failure}");
    }
    // No more launches (so no newer failure), then the leader goes.
    api.scale("/failing", 0).await.unwrap();
    eventually(WAIT, "the app to stand at 0", || async { api.is_stable("/failing", 0).await.then_some(()) }).await;
    let last = api.app("/failing").await.unwrap()["lastTaskFailure"].clone();
    cluster.gateways[old].kill().await;
    assert_eq!(cluster.leading_gateway().await, other);
    let after = cluster.gateway_api(other).app("/failing").await.unwrap()["lastTaskFailure"].clone();
    assert_eq!(after, last, "the same failure, from the new leader");
}
