//! One agent, several runtimes (`--runtime docker,process`), as a Mesos agent ran
//! `--containerizers=docker,mesos`: an image app in Docker and a bare command as a host
//! process side by side on the same agent; SIGKILLed and restarted, the agent re-adopts both
//! (the same process, the same container).

use std::time::Duration;

use marina_tests::docker::{DockerCleanup, ensure_test_images};
use marina_tests::{ProcessCluster, Topology, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// A duration no other test uses, so the command's process can be found.
const COMMAND: &str = "sleep 98761";

/// The pid of the command app's process.
fn command_pid() -> Option<String> {
    let output = std::process::Command::new("pgrep").args(["-f", COMMAND]).output().ok()?;
    let pids = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (!pids.is_empty()).then_some(pids)
}

/// The image app's container, as `id started-at`.
fn container() -> Option<String> {
    let output = std::process::Command::new("docker")
        .args(["ps", "-q", "--no-trunc", "--filter", "label=MARATHON_APP_ID=/ubuntu"])
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if id.is_empty() {
        return None;
    }
    let inspect = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.Id}} {{.State.StartedAt}}", &id])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&inspect.stdout).trim().to_owned())
}

fn task_ids(app: &Value) -> Vec<String> {
    app["tasks"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agent_runs_a_command_and_an_image_side_by_side_and_readopts_both() {
    ensure_test_images();
    let mut cluster = ProcessCluster::start(Topology::new(1, 1, "docker,process", 1)).await;
    let _cleanup = DockerCleanup { label: "marina.framework_id".into(), value: cluster.framework_id().await };
    let leader = cluster.leader_with_agents(1, 0).await;
    let state = cluster.masters[leader].get_json("/master/state").await.unwrap();
    assert_eq!(state["agents"][0]["runtime"], "docker,process", "the agent says what it runs: {state}");

    let api = cluster.gateway_api(0);
    api.create(&json!({ "id": "/hello", "cmd": COMMAND, "cpus": 0.1, "mem": 16 })).await.unwrap();
    let seed: Value =
        serde_json::from_slice(&std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ubuntu.json")).unwrap())
            .unwrap();
    api.create(&seed).await.unwrap();
    eventually(WAIT, "both apps running", || async {
        (api.is_stable("/hello", 1).await && api.is_stable("/ubuntu", 1).await).then_some(())
    })
    .await;
    let pid = command_pid().expect("the command runs as a host process");
    let container_before = container().expect("the image runs in a Docker container");
    let tasks_before = (task_ids(&api.app("/hello").await.unwrap()), task_ids(&api.app("/ubuntu").await.unwrap()));

    // SIGKILL: the agent's restart re-adopts the process and the container, untouched.
    cluster.agents[0].kill().await;
    cluster.agents[0].restart();
    cluster.agents[0].wait_healthy().await;
    eventually(WAIT, "the agent to re-register with both tasks running", || async {
        let state = cluster.masters[leader].get_json("/master/state").await?;
        let active = state["agents"].as_array()?.iter().any(|agent| agent["status"] == "active");
        (active && api.is_stable("/hello", 1).await && api.is_stable("/ubuntu", 1).await).then_some(())
    })
    .await;
    let tasks_after = (task_ids(&api.app("/hello").await.unwrap()), task_ids(&api.app("/ubuntu").await.unwrap()));
    assert_eq!(tasks_after, tasks_before, "the same tasks, not replacements");
    assert_eq!(command_pid(), Some(pid), "the same process");
    assert_eq!(container(), Some(container_before), "the same, never restarted, container");

    api.delete("/hello").await.unwrap();
    api.delete("/ubuntu").await.unwrap();
    eventually(WAIT, "the process and the container to be gone", || async {
        (command_pid().is_none() && container().is_none()).then_some(())
    })
    .await;
}

/// The seed's `marina dev` host: Docker is there, and `auto` gives the agent Docker and host
/// processes. Marathon's Python client's basic flow (command apps: create, scale, kill,
/// restart, delete) runs on it unchanged, its commands as host processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathons_python_client_runs_command_apps_on_a_docker_host() {
    let cluster = marina_tests::MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(marina_agent::RuntimeChoice::Auto)
        .gateways(1)
        .start()
        .await;
    let master = &cluster.master_addresses()[cluster.leading_master().await];
    let operator = marina_tests::tls::http_client(&cluster.ca().operator());
    let state: Value = eventually(WAIT, "the agent registered", || async {
        let state: Value =
            operator.get(format!("https://{master}/master/state")).send().await.ok()?.json().await.ok()?;
        state["agents"][0].is_object().then_some(state)
    })
    .await;
    assert_eq!(state["agents"][0]["runtime"], "docker,process", "auto on a Docker host: {state}");
    let steps = ["created /py-app", "scaled 3", "killed", "restarted", "deleted"];
    marina_tests::python::run_marathon_client(&cluster.gateway_url(0), None, &steps).await;
}
