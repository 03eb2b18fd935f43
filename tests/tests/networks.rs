//! Task addresses and IP-per-task against the real Docker Engine: a task on a container
//! network (a user-defined Docker network the operator made, here one per test) has an
//! address of its own, reported in `ipAddresses` as Marathon reports it, where its container
//! port answers from the host with no host port mapped — also after its agent restarted; a
//! bridge task reports its bridge address, host-networked tasks (Docker's host network, host
//! processes) the agent's; `status_update_event` carries the same; a missing network fails
//! the task naming it, and an app no agent can join to a network waits saying why.

use std::process::Command;
use std::time::Duration;

use marina_agent::{RuntimeChoice, Runtimes};
use marina_tests::processes::AppsApi;
use marina_tests::{MarinaCluster, eventually};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(60);
const IMAGE: &str = "marina-test/busybox:latest";
/// Serves the image's `/var/www/index.html` on the container's port 8080.
const HTTPD: &str = "exec httpd -f -p 8080 -h /var/www";

/// A user-defined Docker network made for one test, as an operator makes one; removed when
/// dropped (with any container still attached to it), even when the test fails.
struct TestNetwork {
    name: String,
}

impl TestNetwork {
    fn create(test: &str) -> TestNetwork {
        let name = format!("marina-net-{test}-{}", std::process::id());
        let network = TestNetwork { name };
        network.remove();
        let out = Command::new("docker").args(["network", "create", &network.name]).output().expect("docker");
        assert!(out.status.success(), "docker network create: {}", String::from_utf8_lossy(&out.stderr));
        network
    }

    fn remove(&self) {
        let filter = format!("network={}", self.name);
        if let Ok(out) = Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
            }
        }
        let _ = Command::new("docker").args(["network", "rm", &self.name]).output();
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        self.remove();
    }
}

/// One agent running Docker containers (and host processes with `process`), its tasks'
/// containers removed when the test ends.
async fn cluster(runtimes: Vec<RuntimeChoice>, ports: &'static str) -> (MarinaCluster, AppsApi, Cleanup) {
    marina_tests::docker::ensure_test_images();
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(Runtimes(runtimes))
        .agent_config(move |_, config| config.resources.ports = ports.into())
        .gateways(1)
        .start()
        .await;
    let api = AppsApi::new(&cluster.leading_gateway().await.to_string());
    let info: Value = reqwest::get(format!("{}/v2/info", cluster.gateway_url(0))).await.unwrap().json().await.unwrap();
    let cleanup = marina_tests::docker::DockerCleanup {
        label: "marina.framework_id".into(),
        value: info["frameworkId"].as_str().expect("a framework id").to_owned(),
    };
    (cluster, api, cleanup)
}

type Cleanup = marina_tests::docker::DockerCleanup;

/// The only task of app `id`, once it runs (and, with `healthy`, passes its health check).
async fn the_task(api: &AppsApi, id: &str, healthy: bool) -> Value {
    eventually(WAIT, &format!("{id} to run"), || async {
        let app = api.app(id).await?;
        let tasks = app["tasks"].as_array()?;
        let stable = app["tasksRunning"] == 1 && tasks.len() == 1 && app["deployments"].as_array()?.is_empty();
        (stable && (!healthy || app["tasksHealthy"] == 1)).then(|| tasks[0].clone())
    })
    .await
}

/// What the engine says of the task's container.
fn docker_inspect(task_id: &str) -> Value {
    let filter = format!("label=marina.task_id={task_id}");
    let listed = Command::new("docker").args(["ps", "-q", "--filter", &filter]).output().expect("docker ps");
    let id = String::from_utf8_lossy(&listed.stdout).trim().to_owned();
    assert!(!id.is_empty(), "task {task_id} has a running container");
    let out = Command::new("docker").args(["inspect", &id]).output().expect("docker inspect");
    let inspected: Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    inspected[0].clone()
}

/// The task container's address on `network`, as the engine says it.
fn address_on(task_id: &str, network: &str) -> String {
    let inspected = docker_inspect(task_id);
    let address = inspected["NetworkSettings"]["Networks"][network]["IPAddress"].as_str().unwrap_or_default();
    assert!(!address.is_empty(), "task {task_id} has no address on {network}: {}", inspected["NetworkSettings"]);
    address.to_owned()
}

/// The task's first address, checked to be its only one and Marathon's shape.
fn only_address(task: &Value) -> String {
    let addresses = task["ipAddresses"].as_array().expect("ipAddresses");
    assert_eq!(addresses.len(), 1, "{task}");
    assert_eq!(addresses[0]["protocol"], "IPv4", "{task}");
    addresses[0]["ipAddress"].as_str().expect("an address").to_owned()
}

/// `url`'s body once it answers 2xx (straight to the address: no proxy).
async fn body_of(url: &str) -> String {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    eventually(WAIT, &format!("{url} to answer"), || async {
        let response = http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    })
    .await
}

/// The `/v2/events` stream, and what was read of it.
struct Events {
    stream: UnboundedReceiver<(String, Value)>,
    seen: Vec<(String, Value)>,
}

impl Events {
    async fn subscribe(api: &AppsApi) -> Events {
        let mut stream = marina_tests::events::subscribe(&api.events_url()).await;
        let (kind, _) = stream.recv().await.expect("the stream opens");
        assert_eq!(kind, "event_stream_attached");
        Events { stream, seen: Vec::new() }
    }

    /// The `status_update_event` saying task `task_id` runs.
    async fn running(&mut self, task_id: &str) -> Value {
        let wanted = |(kind, event): &(String, Value)| {
            kind == "status_update_event" && event["taskId"] == task_id && event["taskStatus"] == "TASK_RUNNING"
        };
        let read = async {
            loop {
                if let Some((_, event)) = self.seen.iter().find(|seen| wanted(seen)) {
                    return event.clone();
                }
                self.seen.push(self.stream.recv().await.expect("the event stream ended"));
            }
        };
        tokio::time::timeout(WAIT, read).await.unwrap_or_else(|_| panic!("no TASK_RUNNING update of {task_id}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_a_container_network_is_reached_at_its_own_address() {
    let network = TestNetwork::create("ip-per-task");
    let (mut cluster, api, _cleanup) = cluster(vec![RuntimeChoice::Docker], "24600-24649").await;
    let mut events = Events::subscribe(&api).await;

    api.create(&json!({
        "id": "/ipt/web", "cmd": HTTPD, "cpus": 0.1, "mem": 32,
        "container": {
            "type": "DOCKER", "docker": { "image": IMAGE },
            "portMappings": [{ "containerPort": 8080, "name": "http" }],
        },
        "networks": [{ "mode": "container", "name": network.name }],
        // Checked where it listens: its own address, its container port.
        "healthChecks": [{ "protocol": "MESOS_HTTP", "portIndex": 0, "path": "/", "intervalSeconds": 1 }],
    }))
    .await
    .unwrap();
    let task = the_task(&api, "/ipt/web", true).await;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let address = only_address(&task);
    assert_eq!(address, address_on(&task_id, &network.name), "its address on the network");
    assert_eq!(task["ports"], json!([]), "no host port: none was asked for");
    let app = api.app("/ipt/web").await.unwrap();
    assert_eq!(app["networks"], json!([{ "mode": "container", "name": network.name }]));
    assert!(body_of(&format!("http://{address}:8080/")).await.contains("marina test image"));
    assert_eq!(events.running(&task_id).await["ipAddresses"], task["ipAddresses"]);

    // The agent restarts and re-adopts the container: same task, same address, still served.
    let container = docker_inspect(&task_id)["Id"].clone();
    cluster.agents[0].stop().await;
    cluster.agents[0].restart().await;
    let agent = cluster.agents[0].handle.as_ref().unwrap().agent.clone();
    let adopted = agent.tasks.get(&task_id).expect("re-adopted").status();
    assert_eq!(adopted.ip_addresses, std::slice::from_ref(&address), "the agent keeps reporting the address");
    assert_eq!(docker_inspect(&task_id)["Id"], container, "the same container");
    let task = the_task(&api, "/ipt/web", true).await;
    assert_eq!((task["id"].as_str(), only_address(&task)), (Some(task_id.as_str()), address.clone()));
    assert!(body_of(&format!("http://{address}:8080/")).await.contains("marina test image"));

    // A network the operator has not made fails the task, naming it.
    let missing = format!("marina-net-missing-{}", std::process::id());
    api.create(&json!({
        "id": "/ipt/lost", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16,
        "container": { "type": "DOCKER", "docker": { "image": IMAGE } },
        "networks": [{ "mode": "container", "name": missing }],
    }))
    .await
    .unwrap();
    let failure = eventually(WAIT, "the task on a missing network to fail", || async {
        let failure = api.app("/ipt/lost").await?["lastTaskFailure"].clone();
        failure.is_object().then_some(failure)
    })
    .await;
    let message = failure["message"].as_str().unwrap();
    assert!(message.contains(&missing) && message.contains("docker network create"), "{failure}");

    for id in ["/ipt/web", "/ipt/lost"] {
        api.delete(id).await.unwrap();
    }
    eventually(WAIT, "the apps to be gone", || async {
        (api.is_gone("/ipt/web").await && api.is_gone("/ipt/lost").await).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_and_host_networked_tasks_report_their_addresses() {
    let (cluster, api, _cleanup) = cluster(vec![RuntimeChoice::Docker, RuntimeChoice::Process], "24650-24699").await;
    let mut events = Events::subscribe(&api).await;
    // The agent listens on loopback: that is its address.
    let agent_address = cluster.agents[0].address.ip().to_string();
    let apps = [
        json!({
            "id": "/addr/bridged", "cmd": HTTPD, "cpus": 0.1, "mem": 32,
            "container": {
                "type": "DOCKER", "docker": { "image": IMAGE },
                "portMappings": [{ "containerPort": 8080, "hostPort": 0 }],
            },
            "networks": [{ "mode": "container/bridge" }],
        }),
        json!({
            "id": "/addr/host-image", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16,
            "container": { "type": "DOCKER", "docker": { "image": IMAGE } },
            "networks": [{ "mode": "host" }],
        }),
        json!({ "id": "/addr/process", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16 }),
        // No runtime here joins a host process to a container network: it waits, saying so.
        json!({
            "id": "/addr/command-on-network", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16,
            "networks": [{ "mode": "container", "name": "anything" }],
        }),
    ];
    for app in &apps {
        api.create(app).await.unwrap();
    }

    let bridged = the_task(&api, "/addr/bridged", false).await;
    let bridged_id = bridged["id"].as_str().unwrap();
    let address = only_address(&bridged);
    assert_eq!(address, address_on(bridged_id, "bridge"), "its bridge address");
    let host_port = bridged["ports"][0].as_u64().expect("a mapped host port");
    assert!((24650..=24699).contains(&host_port), "{bridged}");
    assert!(body_of(&format!("http://{address}:8080/")).await.contains("marina test image"));
    assert!(body_of(&format!("http://127.0.0.1:{host_port}/")).await.contains("marina test image"));
    assert_eq!(events.running(bridged_id).await["ipAddresses"], bridged["ipAddresses"]);

    for id in ["/addr/host-image", "/addr/process"] {
        let task = the_task(&api, id, false).await;
        assert_eq!(only_address(&task), agent_address, "{id} shares the agent's network: {task}");
        assert_eq!(events.running(task["id"].as_str().unwrap()).await["ipAddresses"], task["ipAddresses"]);
    }

    let queue = eventually(WAIT, "the command on a container network to wait for a capable runtime", || async {
        let queue: Value =
            reqwest::get(format!("{}/v2/queue", cluster.gateway_url(0))).await.ok()?.json().await.ok()?;
        let entry = queue["queue"].as_array()?.iter().find(|e| e["app"]["id"] == "/addr/command-on-network")?.clone();
        let reasons = entry["processedOffersSummary"]["rejectSummaryLastOffers"].as_array()?.clone();
        reasons.iter().any(|r| r["reason"] == "NoCapableRuntime" && r["declined"].as_u64() > Some(0)).then_some(entry)
    })
    .await;
    assert_eq!(queue["count"], 1);

    for app in &apps {
        api.delete(app["id"].as_str().unwrap()).await.unwrap();
    }
    eventually(WAIT, "the apps to be gone", || async {
        let mut gone = true;
        for app in &apps {
            gone &= api.is_gone(app["id"].as_str().unwrap()).await;
        }
        gone.then_some(())
    })
    .await;
}
