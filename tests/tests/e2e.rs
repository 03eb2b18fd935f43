//! The seed's promise, end to end, with every service a real process: deploy a Docker app
//! through the gateway, SIGKILL the leading master — the container is untouched and the app
//! scales through the new leader — then lose a coord node, restart the agent, kill the
//! leading gateway: the cluster keeps serving.

use std::time::Duration;

use marina_tests::docker::{DockerCleanup, ensure_test_images};
use marina_tests::processes::Coord;
use marina_tests::services::Service;
use marina_tests::{ProcessCluster, TestDir, Topology, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The app's running tasks (id → host) through `gateway`, once exactly `count` run and no
/// deployment is left.
async fn running(gateway: &Service, count: usize) -> Vec<Value> {
    eventually(WAIT, &format!("{count} running tasks"), || async {
        let body = gateway.get_json("/v2/apps/seed").await?;
        let app = &body["app"];
        let tasks = app["tasks"].as_array()?.clone();
        (app["tasksRunning"] == count && tasks.len() == count && app["deployments"].as_array()?.is_empty())
            .then_some(tasks)
    })
    .await
}

fn container_of(task_id: &str) -> (String, String) {
    let output = std::process::Command::new("docker")
        .args([
            "ps",
            "--no-trunc",
            "--filter",
            &format!("label=marina.task_id={task_id}"),
            "--format",
            "{{.ID}} {{.CreatedAt}}",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let (id, created) = text.split_once(' ').unwrap_or_else(|| panic!("no running container for {task_id}"));
    (id.to_owned(), created.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_journey_survives_every_failure() {
    ensure_test_images();
    let topology = Topology::new(2, 1, "docker", 2).coord(Coord::Processes(3));
    let mut cluster = ProcessCluster::start(topology).await;
    let gateway = cluster.leading_gateway().await;
    let framework = cluster.framework_id().await;
    let _cleanup = DockerCleanup { label: "marina.framework_id".into(), value: framework };
    let http = reqwest::Client::new();

    // Deploy an app with a Docker container (image built locally).
    let app = json!({
        "id": "/seed",
        "cmd": "while sleep 1; do date -u +%T; done",
        "container": { "type": "DOCKER", "docker": { "image": "marina-test/busybox" } },
        "cpus": 0.1, "mem": 32, "instances": 1,
    });
    let created =
        http.post(format!("http://{}/v2/apps", cluster.gateways[gateway].address)).json(&app).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let tasks = running(&cluster.gateways[gateway], 1).await;
    let task_id = tasks[0]["id"].as_str().unwrap().to_owned();
    let (container, created_at) = container_of(&task_id);

    // SIGKILL the leading master: a new one leads; the container is the same, never restarted.
    let (old_master, old_epoch) = cluster.leading_master().await;
    cluster.masters[old_master].kill().await;
    let (new_master, new_epoch) = cluster.leading_master().await;
    assert_ne!(new_master, old_master);
    assert!(new_epoch > old_epoch);
    assert_eq!(container_of(&task_id), (container.clone(), created_at.clone()), "the container was not touched");

    // Scale to 3 through the new leader.
    let scaled = http
        .put(format!("http://{}/v2/apps/seed", cluster.gateways[gateway].address))
        .json(&json!({ "instances": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(scaled.status(), 200);
    let tasks = running(&cluster.gateways[gateway], 3).await;
    assert!(tasks.iter().any(|t| t["id"] == task_id.as_str()), "the original task still runs");
    let state = cluster.masters[new_master].get_json("/master/state").await.unwrap();
    assert_eq!(state["tasks"].as_array().unwrap().iter().filter(|t| t["state"] == "TASK_RUNNING").count(), 3);

    // The killed master comes back as a standby.
    cluster.masters[old_master].restart();
    cluster.masters[old_master].wait_healthy().await;
    let state = cluster.masters[old_master].get_json("/master/state").await.unwrap();
    assert_eq!(state["elected"], false);
    assert_eq!(cluster.leading_master().await.0, new_master);

    // SIGKILL a coord node: the cluster keeps working (a scale goes through).
    let coord = cluster.coord_processes_mut();
    let coord_leader = coord.leader().await;
    coord.kill(coord_leader).await;
    let scaled = http
        .put(format!("http://{}/v2/apps/seed", cluster.gateways[gateway].address))
        .json(&json!({ "instances": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(scaled.status(), 200);
    let tasks = running(&cluster.gateways[gateway], 2).await;

    // SIGKILL the agent and restart it: its containers are re-adopted, not relaunched.
    let before: Vec<(String, String)> = tasks.iter().map(|t| container_of(t["id"].as_str().unwrap())).collect();
    cluster.agents[0].kill().await;
    cluster.agents[0].restart();
    cluster.agents[0].wait_healthy().await;
    eventually(WAIT, "the agent to re-register with its tasks", || async {
        let state = cluster.agents[0].get_json("/state").await?;
        (state["master"]["registered"] == true && state["tasks"].as_array()?.len() == 2).then_some(())
    })
    .await;
    let tasks = running(&cluster.gateways[gateway], 2).await;
    let mut task_ids: Vec<String> = tasks.iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect();
    task_ids.sort();
    let after: Vec<(String, String)> = task_ids.iter().map(|id| container_of(id)).collect();
    assert_eq!(after.len(), 2);
    for container in &after {
        assert!(before.contains(container), "container {container:?} is one of the re-adopted ones");
    }

    // SIGKILL the leading gateway: the other serves, with the same tasks.
    cluster.gateways[gateway].kill().await;
    let other = cluster.leading_gateway().await;
    assert_ne!(other, gateway);
    let tasks = running(&cluster.gateways[other], 2).await;
    let mut ids: Vec<String> = tasks.iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    assert_eq!(ids, task_ids, "the new leading gateway knows exactly the same tasks");
    let deleted = http.delete(format!("http://{}/v2/apps/seed", cluster.gateways[other].address)).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    eventually(WAIT, "the app's containers to be gone", || async {
        let output = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter", "label=MARATHON_APP_ID=/seed"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout).trim().is_empty().then_some(())
    })
    .await;
}

/// `marina dev` brings a whole cluster up, runs an app, and stops cleanly on Ctrl-C; run
/// again on the same data dir, it comes back on the same ports and re-adopts the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marina_dev_runs_a_cluster_stops_on_ctrl_c_and_resumes() {
    let dir = TestDir::new();
    let data = dir.path().join("dev");
    let mut dev = start_dev(&data).await;
    let endpoints: Value = serde_json::from_slice(&std::fs::read(data.join("endpoints.json")).unwrap()).unwrap();
    let gateway = endpoints["gateways"][0].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    // A duration no other test uses, so its process can be looked for.
    let app = json!({ "id": "/hello", "cmd": "sleep 987654", "cpus": 0.1, "mem": 16 });
    assert_eq!(http.post(format!("{gateway}/v2/apps")).json(&app).send().await.unwrap().status(), 201);
    let running_task = || async {
        let body: Value = http.get(format!("{gateway}/v2/apps/hello/tasks")).send().await.ok()?.json().await.ok()?;
        let task = body["tasks"].as_array()?.first()?.clone();
        (task["state"] == "TASK_RUNNING").then(|| task["id"].as_str().map(str::to_owned)).flatten()
    };
    let task = eventually(WAIT, "the app to run", running_task).await;

    // Everything but the gateway's loopback REST is mutual TLS, with the CA in
    // `<data-dir>/tls/ca.pem`; the CLI calls as the operator whose certificate is beside it.
    let tls = data.join("tls");
    assert!(std::fs::read_to_string(tls.join("ca.pem")).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    let master = endpoints["masters"][0].as_str().unwrap();
    assert!(http.get(format!("http://{master}/health")).send().await.is_err(), "a master answered plaintext");
    let coord = endpoints["coord"].as_str().unwrap();
    let marina = marina_tests::binaries::binary("marina");
    let status = std::process::Command::new(&marina)
        .args(["coord", "--coord", coord, "--tls-dir"])
        .arg(&tls)
        .arg("status")
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stdout).contains("leader"));
    let plaintext =
        std::process::Command::new(&marina).args(["coord", "--coord", coord, "--plaintext", "status"]).output();
    assert!(!plaintext.unwrap().status.success(), "coord answered the CLI in plaintext");
    stop_dev(&mut dev, &http, &gateway).await;

    let mut dev = start_dev(&data).await;
    let again: Value = serde_json::from_slice(&std::fs::read(data.join("endpoints.json")).unwrap()).unwrap();
    assert_eq!(again, endpoints, "the same ports, so coord's membership still holds");
    let readopted = eventually(WAIT, "the task to be re-adopted", running_task).await;
    assert_eq!(readopted, task, "the same task, not a replacement");

    // Leave nothing running: the app's task goes with the app.
    assert!(http.delete(format!("{gateway}/v2/apps/hello")).send().await.unwrap().status().is_success());
    eventually(WAIT, "the app to be gone", || async {
        let status = http.get(format!("{gateway}/v2/apps/hello")).send().await.ok()?.status();
        (status == 404).then_some(())
    })
    .await;
    eventually(WAIT, "the task's process to end", || async {
        let output = std::process::Command::new("pgrep").args(["-f", "sleep 987654"]).output().ok()?;
        (!output.status.success()).then_some(())
    })
    .await;
    stop_dev(&mut dev, &http, &gateway).await;
}

/// `marina dev` killed outright (SIGKILL: no chance to stop anything) takes its services
/// with it, so the ports are free for the next run; and a `marina dev` that finds its ports
/// taken names every one of them, with the way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marina_dev_killed_outright_leaves_no_service_behind() {
    let dir = TestDir::new();
    let data = dir.path().join("dev");
    let mut dev = start_dev(&data).await;
    let endpoints: Value = serde_json::from_slice(&std::fs::read(data.join("endpoints.json")).unwrap()).unwrap();
    let ports: Value = serde_json::from_slice(&std::fs::read(data.join("ports.json")).unwrap()).unwrap();
    let all: Vec<u16> = ["coord", "masters", "agents", "gateways"]
        .iter()
        .flat_map(|kind| ports[kind].as_array().unwrap().iter().map(|port| port.as_u64().unwrap() as u16))
        .collect();
    assert_eq!(all.len(), 8, "3 coord nodes, 2 masters, 1 agent, 2 gateways");

    let second = tokio::process::Command::new(marina_tests::binaries::binary("marina"))
        .args(["dev", "--ports", "auto", "--runtime", "process", "--data-dir"])
        .arg(&data)
        .output()
        .await
        .unwrap();
    assert!(!second.status.success(), "a second marina dev on the same ports started");
    let error = String::from_utf8_lossy(&second.stderr);
    for port in &all {
        assert!(error.contains(&format!("{port} (")), "port {port} not named in: {error}");
    }
    assert!(error.contains("another `marina dev`"), "{error}");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(dev.id().unwrap() as i32), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    dev.wait().await.unwrap();
    eventually(WAIT, "every service of the killed marina dev to exit", || async {
        let output = std::process::Command::new("pgrep").arg("-f").arg(data.to_str().unwrap()).output().ok()?;
        (!output.status.success()).then_some(())
    })
    .await;
    // Waited for, not asserted at once: the ports were picked free from the ephemeral range,
    // where a test running beside this one may briefly hold one as a client's port.
    eventually(WAIT, &format!("every port of {all:?} to be free"), || async {
        all.iter().all(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok()).then_some(())
    })
    .await;

    let mut dev = start_dev(&data).await;
    let gateway = endpoints["gateways"][0].as_str().unwrap().to_owned();
    stop_dev(&mut dev, &reqwest::Client::new(), &gateway).await;
}

/// Starts `marina dev --ports auto` on `data` and waits for it to report every step ready.
async fn start_dev(data: &std::path::Path) -> tokio::process::Child {
    let mut dev = tokio::process::Command::new(marina_tests::binaries::binary("marina"))
        .args(["dev", "--ports", "auto", "--runtime", "process", "--data-dir"])
        .arg(data)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = dev.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("marina dev reports readiness")
            .unwrap()
            .unwrap_or_else(|| panic!("marina dev ended before it was ready: {seen:#?}"));
        let ready = line.starts_with("ready:");
        seen.push(line);
        if ready {
            break;
        }
    }
    for step in ["✓ coord quorum", "✓ master elected", "✓ agents registered", "✓ gateway elected"] {
        assert!(seen.iter().any(|l| l.contains(step)), "{step} missing from {seen:#?}");
    }
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    dev
}

/// Ctrl-C: `marina dev` stops every service and exits successfully.
async fn stop_dev(dev: &mut tokio::process::Child, http: &reqwest::Client, gateway: &str) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(dev.id().unwrap() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let status = tokio::time::timeout(WAIT, dev.wait()).await.expect("marina dev stops").unwrap();
    assert!(status.success(), "{status:?}");
    assert!(http.get(format!("{gateway}/ping")).send().await.is_err(), "the gateway is stopped");
}
