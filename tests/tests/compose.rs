//! The seed's scenario against the Docker Compose deployment (`deploy/compose`): the image
//! built from this checkout, every service its own container — deploy, SIGKILL the leading
//! master, scale through the new one, restart it as a standby, lose a coord node, an agent
//! and the leading gateway.

use std::process::Command;
use std::time::Duration;

use marina_tests::docker::{DockerCleanup, ensure_test_images};
use marina_tests::eventually;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const COMPOSE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/compose/docker-compose.yml");

/// `docker-compose down -v` when dropped.
struct Project {
    name: String,
    env: Vec<(String, String)>,
}

impl Project {
    fn compose(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker-compose")
            .args(["-p", &self.name, "-f", COMPOSE_FILE])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("running docker-compose")
    }
}

impl Project {
    fn kill(&self, service: &str) {
        let killed = self.compose(&["kill", "-s", "SIGKILL", service]);
        assert!(killed.status.success(), "killing {service}: {}", String::from_utf8_lossy(&killed.stderr));
    }

    fn start(&self, service: &str) {
        let started = self.compose(&["start", service]);
        assert!(started.status.success(), "starting {service}: {}", String::from_utf8_lossy(&started.stderr));
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // What the services said explains a failed wait.
            let logs = self.compose(&["logs", "--no-color", "--tail", "30"]);
            eprintln!("docker-compose logs:\n{}", String::from_utf8_lossy(&logs.stdout));
        }
        let _ = self.compose(&["down", "-v", "--timeout", "5"]);
    }
}

/// `count` free ports below Linux's ephemeral range (32768-60999). The services bind them
/// only once their containers start, so a port taken meanwhile by another test's port-0
/// socket would leave a service unable to start; below that range nothing takes them.
fn ports_below_ephemeral(count: usize) -> Vec<u16> {
    let start = 22_000 + (std::process::id() % 40) as u16 * 25;
    (0..1_000u16)
        .map(|offset| 22_000 + (start - 22_000 + offset) % 1_000)
        .filter(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .take(count)
        .collect()
}

async fn get(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_scenario_on_the_compose_deployment() {
    ensure_test_images();
    let built = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/compose/build-image"))
        .arg(if cfg!(debug_assertions) { "debug" } else { "release" })
        .output()
        .unwrap();
    assert!(built.status.success(), "build-image: {}", String::from_utf8_lossy(&built.stderr));

    let ports: Vec<(&str, u16)> = [
        "COORD_PORT_1",
        "COORD_PORT_2",
        "COORD_PORT_3",
        "MASTER_PORT_1",
        "MASTER_PORT_2",
        "AGENT_PORT_1",
        "AGENT_PORT_2",
        "GATEWAY_PORT_1",
        "GATEWAY_PORT_2",
    ]
    .into_iter()
    .zip(ports_below_ephemeral(9))
    .collect();
    let port_of = |key: &str| ports.iter().find(|(k, _)| *k == key).map(|(_, p)| *p).unwrap();
    let masters = [port_of("MASTER_PORT_1"), port_of("MASTER_PORT_2")];
    let gateways = [port_of("GATEWAY_PORT_1"), port_of("GATEWAY_PORT_2")];
    let gateway = gateways[0];
    let mut env: Vec<(String, String)> = ports.iter().map(|(k, p)| ((*k).to_owned(), p.to_string())).collect();
    // Task port ranges below the ephemeral range too, apart from other tests' (21000-21999,
    // 31000-32000).
    let base = 23000 + (std::process::id() % 10) * 100;
    env.push(("AGENT_TASK_PORTS_1".into(), format!("{base}-{}", base + 49)));
    env.push(("AGENT_TASK_PORTS_2".into(), format!("{}-{}", base + 50, base + 99)));
    // Secure as shipped: certificates made by the `certs` service, credentials required.
    let tls_dir = marina_tests::TestDir::new();
    env.push(("MARINA_TLS_DIR".into(), tls_dir.path().display().to_string()));
    // The agents' work dirs, fresh (an agent remembers the cluster it joined), at the same path
    // on the host and in their containers (the engine finds the tasks' sandboxes there).
    let agents_dir = marina_tests::TestDir::new();
    env.push(("MARINA_AGENTS_DIR".into(), agents_dir.path().display().to_string()));
    env.push(("MARINA_HTTP_CREDENTIALS".into(), format!("ops:{}", std::process::id())));
    let project = Project { name: format!("marina-test-{}", std::process::id()), env };
    let up = project.compose(&["up", "-d"]);
    assert!(up.status.success(), "docker-compose up: {}", String::from_utf8_lossy(&up.stderr));

    let login =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("ops:{}", std::process::id()));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Basic {login}").parse().unwrap());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).default_headers(headers).build().unwrap();
    // The masters only answer mutual TLS: as the operator `certs` made.
    let operator = marina_tests::tls::http_client(&marina_tests::tls::operator_in(tls_dir.path()));
    let base = format!("http://127.0.0.1:{gateway}");
    let info = eventually(WAIT, "the gateway to lead with a framework", || async {
        let info = get(&http, &format!("{base}/v2/info")).await?;
        info["frameworkId"].is_string().then_some(info)
    })
    .await;
    let _cleanup =
        DockerCleanup { label: "marina.framework_id".into(), value: info["frameworkId"].as_str().unwrap().to_owned() };
    let anonymous = reqwest::Client::new().get(format!("{base}/v2/apps")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "the gateways require credentials");
    let plaintext = reqwest::Client::new().get(format!("http://127.0.0.1:{}/health", masters[0])).send().await;
    assert!(plaintext.is_err(), "a master answered plaintext");

    let seed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ubuntu.json")).unwrap();
    let created = http
        .post(format!("{base}/v2/apps"))
        .header("Content-Type", "application/json")
        .body(seed)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let running = |base: String, count: usize| {
        let http = http.clone();
        async move {
            eventually(WAIT, &format!("{count} running"), || async {
                let app = get(&http, &format!("{base}/v2/apps/ubuntu")).await?["app"].clone();
                (app["tasksRunning"] == count && app["deployments"].as_array()?.is_empty()).then_some(app)
            })
            .await
        }
    };
    // 503 is the answer while a gateway takes over (as Marathon's): clients retry it.
    let scale = |base: String, instances: usize| {
        let http = http.clone();
        async move {
            eventually(WAIT, &format!("scaling to {instances} through {base}"), || async {
                let body = json!({ "instances": instances });
                let status = http.put(format!("{base}/v2/apps/ubuntu")).json(&body).send().await.ok()?.status();
                assert!(status == 200 || status == 503, "scaling to {instances} through {base}: {status}");
                (status == 200).then_some(())
            })
            .await
        }
    };
    let app = running(base.clone(), 1).await;
    let task = app["tasks"][0]["id"].as_str().unwrap().to_owned();
    let before = container(&task);
    assert!(before.is_some());

    // SIGKILL the leading master's container: the other takes over, the task's container
    // is untouched, and the app scales through the new leader.
    let leader = eventually(WAIT, "a leading master", || async {
        for (index, port) in masters.iter().enumerate() {
            // A standby answers too (not elected), or not at all while it starts.
            let Some(state) = get(&operator, &format!("https://127.0.0.1:{port}/master/state")).await else { continue };
            if state["elected"] == true {
                return Some(index);
            }
        }
        None
    })
    .await;
    project.kill(&format!("master-{}", leader + 1));
    let other = masters[1 - leader];
    eventually(WAIT, "the other master to lead", || async {
        (get(&operator, &format!("https://127.0.0.1:{other}/master/state")).await?["elected"] == true).then_some(())
    })
    .await;
    assert_eq!(container(&task), before, "the task's container was not touched");
    scale(base.clone(), 3).await;
    running(base.clone(), 3).await;

    // The killed master comes back as a standby.
    project.start(&format!("master-{}", leader + 1));
    let restarted = masters[leader];
    eventually(WAIT, "the restarted master to stand by", || async {
        let state = get(&operator, &format!("https://127.0.0.1:{restarted}/master/state")).await?;
        (state["elected"] == false).then_some(())
    })
    .await;

    // One coord node SIGKILLed: the quorum of two keeps the cluster working.
    project.kill("coord-1");
    scale(base.clone(), 2).await;
    running(base.clone(), 2).await;
    project.start("coord-1");

    // An agent SIGKILLed and restarted re-adopts its containers: same ids, never restarted.
    let tasks = |app: &Value| -> Vec<String> {
        let tasks = app["tasks"].as_array().unwrap().iter();
        tasks.filter(|t| t["state"] == "TASK_RUNNING").map(|t| t["id"].as_str().unwrap().to_owned()).collect()
    };
    let app = running(base.clone(), 2).await;
    let containers = |app: &Value| -> Vec<Option<String>> {
        let mut containers: Vec<_> = tasks(app).iter().map(|task| container(task)).collect();
        containers.sort();
        containers
    };
    let before_agent_kill = containers(&app);
    // The agent killed is one that runs a task, wherever the allocator put them (both may be
    // on one agent): killing an agent with none would leave nothing to re-adopt.
    let first_agent = app["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "TASK_RUNNING")
        .and_then(|t| t["slaveId"].as_str())
        .unwrap_or_else(|| panic!("a running task names its agent: {app}"))
        .to_owned();
    // The compose file gives each agent its service's name as its `host` attribute.
    let busy_agent = eventually(WAIT, &format!("the master to name agent {first_agent}'s service"), || async {
        let state = get(&operator, &format!("https://127.0.0.1:{other}/master/state")).await?;
        let agent = state["agents"].as_array()?.iter().find(|agent| agent["id"] == first_agent.as_str())?;
        agent["attributes"]["host"].as_str().map(str::to_owned)
    })
    .await;
    project.kill(&busy_agent);
    project.start(&busy_agent);
    eventually(WAIT, "both agents active again", || async {
        let state = get(&operator, &format!("https://127.0.0.1:{other}/master/state")).await?;
        let active = state["agents"].as_array()?.iter().filter(|agent| agent["status"] == "active").count();
        (active == 2).then_some(())
    })
    .await;
    let app = running(base.clone(), 2).await;
    assert_eq!(containers(&app), before_agent_kill, "the same tasks in the same, never restarted, containers");

    // The leading gateway SIGKILLed: the other one serves, and leads.
    // (`/v2/leader` is answered by every gateway itself; `/v2/info` would be proxied.)
    let gateway_leader = eventually(WAIT, "a leading gateway", || async {
        for port in gateways {
            let Some(leader) = get(&http, &format!("http://127.0.0.1:{port}/v2/leader")).await else { continue };
            let address = leader["leader"].as_str()?.to_owned();
            return gateways.iter().position(|port| address.ends_with(&format!(":{port}")));
        }
        None
    })
    .await;
    project.kill(&format!("gateway-{}", gateway_leader + 1));
    let survivor_port = gateways[1 - gateway_leader];
    let survivor = format!("http://127.0.0.1:{survivor_port}");
    // It answers 503 until the killed leader's coord session expires and it takes over.
    eventually(WAIT, "the other gateway to lead", || async {
        let leader = get(&http, &format!("{survivor}/v2/leader")).await?;
        leader["leader"].as_str()?.ends_with(&format!(":{survivor_port}")).then_some(())
    })
    .await;
    scale(survivor.clone(), 1).await;
    running(survivor.clone(), 1).await;

    assert_eq!(http.delete(format!("{survivor}/v2/apps/ubuntu")).send().await.unwrap().status(), 200);
    eventually(WAIT, "the app's containers to be gone", || async {
        let output =
            Command::new("docker").args(["ps", "-q", "--filter", "label=MARATHON_APP_ID=/ubuntu"]).output().ok()?;
        String::from_utf8_lossy(&output.stdout).trim().is_empty().then_some(())
    })
    .await;
}

/// A task's container, as `id started-at` (a restart changes the second).
fn container(task: &str) -> Option<String> {
    let output = Command::new("docker")
        .args(["ps", "-q", "--no-trunc", "--filter", &format!("label=marina.task_id={task}")])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if id.is_empty() {
        return None;
    }
    let inspect = Command::new("docker").args(["inspect", "-f", "{{.Id}} {{.State.StartedAt}}", &id]).output().unwrap();
    Some(String::from_utf8_lossy(&inspect.stdout).trim().to_owned())
}
