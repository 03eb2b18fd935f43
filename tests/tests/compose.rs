//! The seed's scenario against the Docker Compose deployment (`deploy/compose`): the image
//! built from this checkout, every service its own container.

use std::process::Command;
use std::time::Duration;

use marina_tests::docker::{DockerCleanup, ensure_test_images};
use marina_tests::{eventually, free_port};
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

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--timeout", "5"]);
    }
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
    .map(|key| (key, free_port()))
    .collect();
    let port_of = |key: &str| ports.iter().find(|(k, _)| *k == key).map(|(_, p)| *p).unwrap();
    let masters = [port_of("MASTER_PORT_1"), port_of("MASTER_PORT_2")];
    let gateway = port_of("GATEWAY_PORT_1");
    let mut env: Vec<(String, String)> = ports.iter().map(|(k, p)| ((*k).to_owned(), p.to_string())).collect();
    // Task port ranges unlikely to collide with anything else on the machine.
    let base = 40000 + (std::process::id() % 100) * 100;
    env.push(("AGENT_TASK_PORTS_1".into(), format!("{base}-{}", base + 49)));
    env.push(("AGENT_TASK_PORTS_2".into(), format!("{}-{}", base + 50, base + 99)));
    let project = Project { name: format!("marina-test-{}", std::process::id()), env };
    let up = project.compose(&["up", "-d"]);
    assert!(up.status.success(), "docker-compose up: {}", String::from_utf8_lossy(&up.stderr));

    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let base = format!("http://127.0.0.1:{gateway}");
    let info = eventually(WAIT, "the gateway to lead with a framework", || async {
        let info = get(&http, &format!("{base}/v2/info")).await?;
        info["frameworkId"].is_string().then_some(info)
    })
    .await;
    let _cleanup =
        DockerCleanup { label: "marina.framework_id".into(), value: info["frameworkId"].as_str().unwrap().to_owned() };

    let seed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ubuntu.json")).unwrap();
    let created = http
        .post(format!("{base}/v2/apps"))
        .header("Content-Type", "application/json")
        .body(seed)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let running = |count: usize| {
        let http = http.clone();
        let base = base.clone();
        async move {
            eventually(WAIT, &format!("{count} running"), || async {
                let app = get(&http, &format!("{base}/v2/apps/ubuntu")).await?["app"].clone();
                (app["tasksRunning"] == count && app["deployments"].as_array()?.is_empty()).then_some(app)
            })
            .await
        }
    };
    let app = running(1).await;
    let task = app["tasks"][0]["id"].as_str().unwrap().to_owned();
    let container = |task: &str| {
        let output = Command::new("docker")
            .args(["ps", "-q", "--no-trunc", "--filter", &format!("label=marina.task_id={task}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let before = container(&task);
    assert!(!before.is_empty());

    // SIGKILL the leading master's container.
    let leader = eventually(WAIT, "a leading master", || async {
        for (index, port) in masters.iter().enumerate() {
            if get(&http, &format!("http://127.0.0.1:{port}/master/state")).await?["elected"] == true {
                return Some(index);
            }
        }
        None
    })
    .await;
    let killed = project.compose(&["kill", "-s", "SIGKILL", &format!("master-{}", leader + 1)]);
    assert!(killed.status.success());
    let other = masters[1 - leader];
    eventually(WAIT, "the other master to lead", || async {
        (get(&http, &format!("http://127.0.0.1:{other}/master/state")).await?["elected"] == true).then_some(())
    })
    .await;
    assert_eq!(container(&task), before, "the task's container was not touched");

    let scaled = http.put(format!("{base}/v2/apps/ubuntu")).json(&json!({ "instances": 3 })).send().await.unwrap();
    assert_eq!(scaled.status(), 200);
    running(3).await;
    assert_eq!(http.delete(format!("{base}/v2/apps/ubuntu")).send().await.unwrap().status(), 200);
    eventually(WAIT, "the app's containers to be gone", || async {
        let output =
            Command::new("docker").args(["ps", "-q", "--filter", "label=MARATHON_APP_ID=/ubuntu"]).output().ok()?;
        String::from_utf8_lossy(&output.stdout).trim().is_empty().then_some(())
    })
    .await;
}
