//! The gateway's Marathon API against a real cluster in one process (coord, master,
//! sim agents, gateway).

use std::time::Duration;

use marina_tests::{MarinaCluster, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn running(http: &reqwest::Client, base: &str, app: &str, count: usize) -> Value {
    eventually(WAIT, &format!("{app} to run {count} tasks"), || async {
        let body: Value = http.get(format!("{base}/v2/apps{app}")).send().await.ok()?.json().await.ok()?;
        let app = &body["app"];
        (app["tasksRunning"] == count
            && app["tasks"].as_array()?.len() == count
            && app["deployments"].as_array()?.is_empty())
        .then(|| app.clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_scale_kill_and_delete_an_app() {
    let cluster = MarinaCluster::builder().masters(1).agents(2).gateways(1).start().await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();

    let created = http
        .post(format!("{base}/v2/apps"))
        .json(&json!({ "id": "/web", "cmd": "sleep 1000", "cpus": 0.1, "mem": 32, "instances": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert!(created.headers().contains_key("Marathon-Deployment-Id"));
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["id"], "/web");
    assert!(body["version"].is_string());
    running(&http, &base, "/web", 1).await;

    let conflict =
        http.post(format!("{base}/v2/apps")).json(&json!({ "id": "/web", "cmd": "x" })).send().await.unwrap();
    assert_eq!(conflict.status(), 409);

    // Scale with a partial PUT, as Marathon clients do.
    let scaled = http.put(format!("{base}/v2/apps/web")).json(&json!({ "instances": 3 })).send().await.unwrap();
    assert_eq!(scaled.status(), 200);
    let deployment: Value = scaled.json().await.unwrap();
    assert!(deployment["deploymentId"].is_string());
    let app = running(&http, &base, "/web", 3).await;

    // Killing a task: it is replaced.
    let victim = app["tasks"][0]["id"].as_str().unwrap().to_owned();
    let killed = http.delete(format!("{base}/v2/apps/web/tasks/{victim}")).send().await.unwrap();
    assert_eq!(killed.status(), 200);
    let app = eventually(WAIT, "the killed task to be replaced", || async {
        let app = running(&http, &base, "/web", 3).await;
        (!app["tasks"].as_array()?.iter().any(|t| t["id"] == victim.as_str())).then_some(app)
    })
    .await;
    // ...unless scale=true, which lowers the instance count.
    let victim = app["tasks"][0]["id"].as_str().unwrap();
    let killed = http.delete(format!("{base}/v2/apps/web/tasks/{victim}?scale=true")).send().await.unwrap();
    assert_eq!(killed.status(), 200);
    let app = running(&http, &base, "/web", 2).await;
    assert_eq!(app["instances"], 2);

    let versions: Value = http.get(format!("{base}/v2/apps/web/versions")).send().await.unwrap().json().await.unwrap();
    assert!(versions["versions"].as_array().unwrap().len() >= 3);

    let deleted = http.delete(format!("{base}/v2/apps/web")).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    eventually(WAIT, "the app and its tasks to be gone", || async {
        let tasks: Value = http.get(format!("{base}/v2/tasks")).send().await.ok()?.json().await.ok()?;
        let gone = http.get(format!("{base}/v2/apps/web")).send().await.ok()?.status() == 404;
        (gone && tasks["tasks"].as_array()?.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_leader_ping_queue_and_groups() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).gateways(2).start().await;
    let http = reqwest::Client::new();
    let leader = cluster.leading_gateway().await;
    let standby = cluster.gateways.iter().find(|g| g.address != leader).unwrap().address;

    let ping = http.get(format!("http://{standby}/ping")).send().await.unwrap();
    assert_eq!(ping.text().await.unwrap(), "pong");
    let reported: Value = http.get(format!("http://{standby}/v2/leader")).send().await.unwrap().json().await.unwrap();
    assert_eq!(reported["leader"], leader.to_string());
    let info: Value = http.get(format!("http://{standby}/v2/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["name"], "marathon");
    assert_eq!(info["elected"], true, "the standby forwarded /v2/info to the leader");

    // An app no agent can hold waits in the queue, saying why.
    let big = json!({ "id": "/big", "cmd": "sleep 1", "cpus": 64, "mem": 32 });
    assert_eq!(http.post(format!("http://{standby}/v2/apps")).json(&big).send().await.unwrap().status(), 201);
    let queue = eventually(WAIT, "the queue to explain the wait", || async {
        let queue: Value = http.get(format!("http://{leader}/v2/queue")).send().await.ok()?.json().await.ok()?;
        let entry = queue["queue"].as_array()?.first()?.clone();
        entry["processedOffersSummary"]["rejectSummaryLastOffers"]
            .as_array()?
            .iter()
            .any(|r| r["reason"] == "InsufficientCpus")
            .then_some(entry)
    })
    .await;
    assert_eq!(queue["app"]["id"], "/big");
    assert_eq!(queue["count"], 1);

    // The cluster view, through the standby: the gateways in line (the leader first), the
    // master, and the agent with its runtime and what it has free.
    let view: Value = http.get(format!("http://{standby}/v2/cluster")).send().await.unwrap().json().await.unwrap();
    let gateways = view["gateways"].as_array().unwrap();
    assert_eq!(gateways.len(), 2, "{view}");
    assert_eq!(gateways[0]["address"], leader.to_string(), "{view}");
    assert_eq!((gateways[0]["leader"].clone(), gateways[1]["leader"].clone()), (json!(true), json!(false)));
    assert_eq!(view["masters"].as_array().unwrap().len(), 1, "{view}");
    assert_eq!(view["masters"][0]["leader"], true, "{view}");
    for error in ["mastersError", "gatewaysError", "agentsError"] {
        assert_eq!(view[error], Value::Null, "{view}");
    }
    let agent = &view["agents"][0];
    assert_eq!(agent["status"], "active", "{view}");
    assert!(agent["runtimes"].as_array().is_some_and(|r| !r.is_empty()), "{view}");
    let (total, used, free) = (&agent["total"], &agent["used"], &agent["free"]);
    for scalar in ["cpus", "mem", "disk"] {
        let sum = used[scalar].as_f64().unwrap() + free[scalar].as_f64().unwrap();
        assert!((sum - total[scalar].as_f64().unwrap()).abs() < 1e-6, "{scalar}: {view}");
    }

    let group = json!({ "id": "/shop", "apps": [{ "id": "cart", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16 }] });
    assert_eq!(http.post(format!("http://{leader}/v2/groups")).json(&group).send().await.unwrap().status(), 201);
    let root: Value = http.get(format!("http://{leader}/v2/groups")).send().await.unwrap().json().await.unwrap();
    assert!(root["groups"].as_array().unwrap().iter().any(|g| g["id"] == "/shop"), "{root}");
    let shop: Value = http.get(format!("http://{leader}/v2/groups/shop")).send().await.unwrap().json().await.unwrap();
    assert_eq!(shop["apps"][0]["id"], "/shop/cart");
    // Its deployment may still run: deleting needs force then (Marathon's lock).
    let first = http.delete(format!("http://{leader}/v2/groups/shop")).send().await.unwrap().status();
    match first.as_u16() {
        200 => {}
        409 => assert_eq!(
            http.delete(format!("http://{leader}/v2/groups/shop?force=true")).send().await.unwrap().status(),
            200
        ),
        other => panic!("deleting the group: {other}"),
    }

    // What Marina does not implement says so (tools probe for pods).
    for path in ["/v2/pods", "/v2/pods/web::status", "/v2/eventSubscriptions"] {
        let response = http.get(format!("http://{leader}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("not supported by Marina"), "{path}: {body}");
    }
}

/// The seed's 2014 app JSON, verbatim, on a real Docker agent (image built locally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_ubuntu_app_runs_scales_and_goes() {
    marina_tests::docker::ensure_test_images();
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(marina_agent::RuntimeChoice::Docker)
        .gateways(1)
        .start()
        .await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let info: Value = http.get(format!("{base}/v2/info")).send().await.unwrap().json().await.unwrap();
    let _cleanup = marina_tests::docker::DockerCleanup {
        label: "marina.framework_id".into(),
        value: info["frameworkId"].as_str().unwrap().to_owned(),
    };
    let seed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/ubuntu.json")).unwrap();
    let created = http
        .post(format!("{base}/v2/apps"))
        .header("Content-Type", "application/json")
        .body(seed)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let app = running(&http, &base, "/ubuntu", 1).await;
    assert_eq!(app["container"]["docker"]["image"], "libmesos/ubuntu");
    assert_eq!(app["cpus"], 0.3);

    let scaled = http.put(format!("{base}/v2/apps/ubuntu")).json(&json!({ "instances": 3 })).send().await.unwrap();
    assert_eq!(scaled.status(), 200);
    let app = running(&http, &base, "/ubuntu", 3).await;
    for task in app["tasks"].as_array().unwrap() {
        let id = task["id"].as_str().unwrap();
        let output = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter", &format!("label=marina.task_id={id}")])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&output.stdout).trim().is_empty(), "task {id} has a running container");
    }
    let victim = app["tasks"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(http.delete(format!("{base}/v2/apps/ubuntu/tasks/{victim}")).send().await.unwrap().status(), 200);
    eventually(WAIT, "the killed task to be replaced", || async {
        let app = running(&http, &base, "/ubuntu", 3).await;
        (!app["tasks"].as_array()?.iter().any(|t| t["id"] == victim.as_str())).then_some(())
    })
    .await;
    assert_eq!(http.delete(format!("{base}/v2/apps/ubuntu")).send().await.unwrap().status(), 200);
    eventually(WAIT, "every container of the app to be gone", || async {
        let output = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter", "label=MARATHON_APP_ID=/ubuntu"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&output.stdout).trim().is_empty().then_some(())
    })
    .await;
}

/// A rolling upgrade of 4 instances with minimumHealthCapacity 0.5 never has fewer than 2
/// healthy instances, as told by the event stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_keeps_the_minimum_healthy() {
    let cluster = MarinaCluster::builder().masters(1).agents(2).gateways(1).start().await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let app = |cmd: &str| {
        json!({
            "id": "/rolling", "cmd": cmd, "cpus": 0.1, "mem": 16, "instances": 4,
            "healthChecks": [{ "protocol": "COMMAND", "command": { "value": "true" }, "gracePeriodSeconds": 0, "intervalSeconds": 1, "timeoutSeconds": 1 }],
            "upgradeStrategy": { "minimumHealthCapacity": 0.5, "maximumOverCapacity": 0.0 },
        })
    };
    assert_eq!(http.post(format!("{base}/v2/apps")).json(&app("sleep 1000")).send().await.unwrap().status(), 201);
    eventually(WAIT, "4 healthy instances", || async {
        let body: Value = http.get(format!("{base}/v2/apps/rolling")).send().await.ok()?.json().await.ok()?;
        (body["app"]["tasksHealthy"] == 4 && body["app"]["deployments"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let initial: Value = http.get(format!("{base}/v2/apps/rolling")).send().await.unwrap().json().await.unwrap();

    let mut events = marina_tests::events::subscribe(&format!("{base}/v2/events")).await;
    let (first, _) = events.recv().await.unwrap();
    assert_eq!(first, "event_stream_attached");
    let mut healthy: std::collections::BTreeMap<String, bool> = initial["app"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap().to_owned(), true))
        .collect();

    let upgrade = http.put(format!("{base}/v2/apps/rolling")).json(&app("sleep 2000")).send().await.unwrap();
    assert_eq!(upgrade.status(), 200);
    let deployment: Value = upgrade.json().await.unwrap();
    let deployment_id = deployment["deploymentId"].as_str().unwrap().to_owned();
    let mut lowest = usize::MAX;
    loop {
        let (kind, event) = tokio::time::timeout(WAIT, events.recv()).await.expect("events keep coming").unwrap();
        match kind.as_str() {
            "status_update_event" if event["appId"] == "/rolling" => {
                let task = event["taskId"].as_str().unwrap().to_owned();
                match event["taskStatus"].as_str().unwrap() {
                    "TASK_RUNNING" => {
                        healthy.entry(task).or_insert(false);
                    }
                    _ => {
                        healthy.remove(&task);
                    }
                }
            }
            "health_status_changed_event" if event["appId"] == "/rolling" => {
                let task = event["taskId"].as_str().unwrap().to_owned();
                if let Some(alive) = healthy.get_mut(&task) {
                    *alive = event["alive"] == true;
                }
            }
            "deployment_success" if event["id"] == deployment_id.as_str() => break,
            _ => continue,
        }
        let count = healthy.values().filter(|alive| **alive).count();
        lowest = lowest.min(count);
        assert!(count >= 2, "only {count} healthy instances during the upgrade: {healthy:?}");
    }
    assert!(lowest >= 2);
    let done: Value = http.get(format!("{base}/v2/apps/rolling")).send().await.unwrap().json().await.unwrap();
    assert_eq!(done["app"]["tasksHealthy"], 4);
    assert!(done["app"]["tasks"].as_array().unwrap().iter().all(|t| t["version"] == done["app"]["version"]));
}

/// Marathon's own Python client (PyPI `marathon`) against the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathons_python_client_works_unchanged() {
    let cluster = MarinaCluster::builder().masters(1).agents(2).gateways(1).start().await;
    let steps = ["info", "created /py-app", "listed 1", "scaled 3", "killed", "deleted"];
    marina_tests::python::run_marathon_client(&cluster.gateway_url(0), None, &steps).await;
}

/// Bad definitions get Marathon's status and error paths; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_with_marathons_errors() {
    let cluster = MarinaCluster::builder().masters(1).agents(0).gateways(1).start().await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let cases: Vec<(&str, u16, &str)> = vec![
        (r#"{"id": "/x", "cmd": "true""#, 400, ""),
        (r#"{"id": "/x", "cmd": "true", "cpus": -1}"#, 422, "/cpus"),
        (r#"{"id": "/x", "cmd": "true", "instances": "many"}"#, 422, "/instances"),
        (r#"{"id": "/Bad_Id", "cmd": "true"}"#, 422, "/id"),
        (r#"{"id": "/x", "cmd": "true", "args": ["a"]}"#, 422, "/"),
        (r#"{"id": "/x"}"#, 422, "/"),
        (r#"{"id": "/x", "cmd": "true", "constraints": [["hostname", "SOMETIMES"]]}"#, 422, "/constraints"),
        (r#"{"id": "/x", "cmd": "true", "upgradeStrategy": {"minimumHealthCapacity": 2}}"#, 422, "/upgradeStrategy"),
        (r#"{"id": "/x", "cmd": "true", "portDefinitions": [{"port": 80}, {"port": 80}]}"#, 422, "/portDefinitions"),
        (r#"{"id": "/x", "cmd": "true", "killSelection": "RANDOM"}"#, 422, "/killSelection"),
        (
            r#"{"id": "/x", "cmd": "true", "healthChecks": [{"protocol": "HTTP", "portIndex": 5}]}"#,
            422,
            "/healthChecks",
        ),
    ];
    for (body, status, path) in cases {
        let response = http
            .post(format!("{base}/v2/apps"))
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(error["message"].is_string(), "{body}: {error}");
        if status == 422 {
            let paths: Vec<&str> =
                error["details"].as_array().unwrap().iter().filter_map(|d| d["path"].as_str()).collect();
            assert!(paths.iter().any(|p| p.starts_with(path)), "{body}: expected a path under {path}, got {paths:?}");
        }
    }
    let too_big = "x".repeat(2 << 20);
    // On a connection of its own: one whose body was cut short may fail the next request
    // sent on it, were it pooled.
    let once = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    match once.post(format!("{base}/v2/apps")).header("content-type", "application/json").body(too_big).send().await {
        Ok(response) => assert_eq!(response.status(), 413),
        // The gateway answers 413 as soon as the size is known and closes the connection
        // without reading the rest; a client still sending may see the close (a reset, as
        // the unread data is discarded) before the answer. Nothing was stored either way,
        // and the gateway still answers (below).
        Err(error) => assert!(error.is_request(), "{error:?}"),
    }
    let apps: Value = http.get(format!("{base}/v2/apps")).send().await.unwrap().json().await.unwrap();
    assert_eq!(apps["apps"], json!([]), "nothing was stored");
    assert_eq!(http.get(format!("{base}/v2/apps/nope")).send().await.unwrap().status(), 404);
}

/// An image app is not placed on an agent whose runtime cannot run images; the queue says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_apps_wait_for_an_image_runtime() {
    marina_tests::binaries::binary("marina-supervise");
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(marina_agent::RuntimeChoice::Process)
        .gateways(1)
        .start()
        .await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let app = json!({ "id": "/boxed", "cmd": "sleep 1", "cpus": 0.1, "mem": 16, "container": { "docker": { "image": "marina-test/busybox" } } });
    assert_eq!(http.post(format!("{base}/v2/apps")).json(&app).send().await.unwrap().status(), 201);
    eventually(WAIT, "the queue to say no agent has a runtime for the app", || async {
        let queue: Value = http.get(format!("{base}/v2/queue")).send().await.ok()?.json().await.ok()?;
        queue["queue"][0]["processedOffersSummary"]["rejectSummaryLastOffers"]
            .as_array()?
            .iter()
            .any(|r| r["reason"] == "NoCapableRuntime")
            .then_some(())
    })
    .await;
    let tasks: Value = http.get(format!("{base}/v2/tasks")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tasks["tasks"], json!([]));
}

/// Ports declared 0 get service ports (Marathon's 10000-19999) that no two apps share and
/// that an app keeps across updates; a bulk kill of no task kills nothing; an app keeps at
/// most Marathon's 50 versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_ports_are_assigned_and_versions_are_bounded() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).gateways(1).start().await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let app = async |id: &str| -> Value {
        let body: Value = http.get(format!("{base}/v2/apps{id}")).send().await.unwrap().json().await.unwrap();
        body["app"].clone()
    };

    for (id, ports) in [("/web", json!([0, 0])), ("/api", json!([0]))] {
        let body = json!({ "id": id, "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 0, "ports": ports });
        assert_eq!(http.post(format!("{base}/v2/apps")).json(&body).send().await.unwrap().status(), 201);
    }
    let web = app("/web").await;
    let api = app("/api").await;
    let ports = |app: &Value| -> Vec<u64> {
        app["portDefinitions"].as_array().unwrap().iter().map(|p| p["port"].as_u64().unwrap()).collect()
    };
    let (web_ports, api_ports) = (ports(&web), ports(&api));
    assert_eq!(web["ports"], json!(web_ports), "`ports` mirrors the definitions");
    let mut all: Vec<u64> = web_ports.iter().chain(&api_ports).copied().collect();
    assert!(all.iter().all(|port| (10_000..20_000).contains(port)), "{all:?}");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "no service port is shared: {web_ports:?} {api_ports:?}");

    // A bulk kill naming no task kills nothing (not every task of every app).
    running(&http, &base, "/api", 0).await; // its first deployment done (else the app is locked)
    let scaled = http.put(format!("{base}/v2/apps/api")).json(&json!({ "instances": 1 })).send().await.unwrap();
    assert_eq!(scaled.status(), 200);
    running(&http, &base, "/api", 1).await;
    let none = http.post(format!("{base}/v2/tasks/delete")).json(&json!({ "ids": [] })).send().await.unwrap();
    assert_eq!(none.status(), 200);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["tasks"], json!([]), "{body}");
    let api = running(&http, &base, "/api", 1).await;
    assert!(api["tasks"][0]["state"] == "TASK_RUNNING" && api["tasksKilled"].as_u64().unwrap_or(0) == 0, "{api}");

    // 55 configuration changes: the ports stay, the history is capped at 50.
    for n in 0..55 {
        let update = json!({ "env": { "N": n.to_string() }, "ports": [0, 0] });
        let response = http.put(format!("{base}/v2/apps/web?force=true")).json(&update).send().await.unwrap();
        assert_eq!(response.status(), 200, "update {n}");
    }
    assert_eq!(ports(&app("/web").await), web_ports, "an update keeps its service ports");
    eventually(WAIT, "old versions to be pruned", || async {
        let versions: Value = http.get(format!("{base}/v2/apps/web/versions")).send().await.ok()?.json().await.ok()?;
        (versions["versions"].as_array()?.len() == 50).then_some(())
    })
    .await;
}

/// Concurrent changes to one app are each applied to what the one before left: partial
/// updates of different fields all stick, and of several creations of one id exactly one
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_to_one_app_all_apply() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).gateways(1).start().await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();

    let creations = (0..6).map(|_| {
        let body = json!({ "id": "/shared", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 0 });
        http.post(format!("{base}/v2/apps")).json(&body).send()
    });
    let mut statuses: Vec<u16> =
        futures::future::join_all(creations).await.into_iter().map(|r| r.unwrap().status().as_u16()).collect();
    statuses.sort();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409]);

    let patches = [
        json!({ "cpus": 0.2 }),
        json!({ "mem": 24 }),
        json!({ "disk": 5 }),
        json!({ "cmd": "sleep 2000" }),
        json!({ "env": { "A": "1" } }),
        json!({ "labels": { "team": "x" } }),
        json!({ "backoffSeconds": 3 }),
        json!({ "instances": 0, "maxLaunchDelaySeconds": 600 }),
    ];
    let updates = patches.iter().enumerate().map(|(n, patch)| {
        let url = format!("{base}/v2/apps/shared?force=true");
        if n % 2 == 0 { http.put(url).json(patch).send() } else { http.patch(url).json(patch).send() }
    });
    for response in futures::future::join_all(updates).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    let body: Value = http.get(format!("{base}/v2/apps/shared")).send().await.unwrap().json().await.unwrap();
    let app = &body["app"];
    for patch in &patches {
        for (field, value) in patch.as_object().unwrap() {
            let kept = match value.as_f64() {
                Some(number) => app[field].as_f64() == Some(number),
                None => &app[field] == value,
            };
            assert!(kept, "{field} was lost: {app}");
        }
    }
}

/// A readiness check holds a rolling upgrade: new instances run, but the old ones stay and
/// the deployment waits (showing why in `readinessCheckResults`) until the new ones answer
/// their readiness check; then the upgrade completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_checks_gate_a_rolling_upgrade() {
    marina_tests::binaries::binary("marina-supervise");
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(marina_agent::RuntimeChoice::Process)
        .agent_config(|_, config| {
            // Probed at the agent's hostname; these ports are this test's alone.
            config.hostname = Some("127.0.0.1".into());
            config.resources.ports = "24000-24099".into();
        })
        .gateways(1)
        .start()
        .await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let site = marina_tests::TestDir::new();
    let (v1, v2) = (site.path().join("v1"), site.path().join("v2"));
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v1.join("ready"), "warm").unwrap();
    let app = |dir: &std::path::Path| {
        json!({
            "id": "/warming", "cpus": 0.1, "mem": 64, "instances": 2,
            "cmd": format!("exec python3 -m http.server $PORT0 --bind 127.0.0.1 --directory {}", dir.display()),
            "portDefinitions": [{ "port": 0, "name": "http" }],
            "readinessChecks": [{ "name": "warm", "protocol": "HTTP", "path": "/ready", "portName": "http", "intervalSeconds": 2, "timeoutSeconds": 1, "httpStatusCodesForReady": [200] }],
        })
    };
    assert_eq!(http.post(format!("{base}/v2/apps")).json(&app(&v1)).send().await.unwrap().status(), 201);
    let before = running(&http, &base, "/warming", 2).await;
    let old: Vec<String> =
        before["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().into()).collect();

    let upgrade = http.put(format!("{base}/v2/apps/warming")).json(&app(&v2)).send().await.unwrap();
    assert_eq!(upgrade.status(), 200);
    // The new instances run and answer 404: not ready, so the deployment waits.
    let results = eventually(WAIT, "two new instances probed and found not ready", || async {
        let deployments: Value = http.get(format!("{base}/v2/deployments")).send().await.ok()?.json().await.ok()?;
        let results = deployments[0]["currentActions"][0]["readinessCheckResults"].as_array()?.clone();
        (results.len() == 2 && results.iter().all(|r| r["ready"] == false && r["lastResponse"]["status"] == 404))
            .then_some(results)
    })
    .await;
    assert!(results.iter().all(|r| r["name"] == "warm" && !old.contains(&r["taskId"].as_str().unwrap().to_owned())));
    let during: Value = http.get(format!("{base}/v2/apps/warming")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = during["app"]["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert!(old.iter().all(|id| ids.contains(&id.as_str())), "old instances stay until new ones are ready: {ids:?}");
    assert_eq!(during["app"]["deployments"].as_array().unwrap().len(), 1);

    std::fs::write(v2.join("ready"), "warm").unwrap();
    let after = running(&http, &base, "/warming", 2).await;
    let version = after["version"].clone();
    assert!(
        after["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["version"] == version && !old.contains(&t["id"].as_str().unwrap().to_owned()))
    );
    assert_eq!(http.delete(format!("{base}/v2/apps/warming")).send().await.unwrap().status(), 200);
    eventually(WAIT, "the app's processes to be gone", || async {
        let tasks: Value = http.get(format!("{base}/v2/tasks")).send().await.ok()?.json().await.ok()?;
        tasks["tasks"].as_array()?.is_empty().then_some(())
    })
    .await;
}

/// The event stream carries Marathon's instance events: `instance_changed_event` as an
/// instance's condition changes, `unhealthy_instance_kill_event` when failing health checks
/// get it killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_instance_changes_and_unhealthy_kills() {
    // Real processes: the health check really runs `false`.
    marina_tests::binaries::binary("marina-supervise");
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(marina_agent::RuntimeChoice::Process)
        .agent_config(|_, config| config.resources.ports = "24100-24199".into())
        .gateways(1)
        .start()
        .await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let mut events = marina_tests::events::subscribe(&format!("{base}/v2/events")).await;
    let sick = json!({
        "id": "/sick", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 1,
        "healthChecks": [{ "protocol": "COMMAND", "command": { "value": "false" }, "gracePeriodSeconds": 0, "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 1 }],
    });
    assert_eq!(http.post(format!("{base}/v2/apps")).json(&sick).send().await.unwrap().status(), 201);
    let mut conditions = Vec::new();
    let killed = loop {
        let (kind, event) = tokio::time::timeout(WAIT, events.recv()).await.expect("events keep coming").unwrap();
        match kind.as_str() {
            "instance_changed_event" if event["runSpecId"] == "/sick" => {
                conditions.push(event["condition"].as_str().unwrap().to_owned());
            }
            "unhealthy_instance_kill_event" if event["appId"] == "/sick" => break event,
            _ => {}
        }
    };
    assert!(conditions.contains(&"Running".to_owned()), "{conditions:?}");
    assert!(killed["taskId"].as_str().unwrap().starts_with("sick."), "{killed}");
    assert!(killed["version"].is_string() && killed["slaveId"].is_string(), "{killed}");
    // Agents leave their tasks running when they stop: the app goes first.
    assert_eq!(http.delete(format!("{base}/v2/apps/sick?force=true")).send().await.unwrap().status(), 200);
    eventually(WAIT, "the app's processes to be gone", || async {
        let tasks: Value = http.get(format!("{base}/v2/tasks")).send().await.ok()?.json().await.ok()?;
        let gone = http.get(format!("{base}/v2/apps/sick")).send().await.ok()?.status() == 404;
        (gone && tasks["tasks"].as_array()?.is_empty()).then_some(())
    })
    .await;
}

/// The in-process harness stops and restarts every kind of node: a stopped leading gateway
/// hands over and comes back as a standby; a stopped master leaves the standby leading; a
/// restarted agent comes back as the same agent. The app keeps its instance throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_stops_and_restarts_in_process() {
    let mut cluster = MarinaCluster::builder().masters(2).agents(1).gateways(2).start().await;
    let http = reqwest::Client::new();
    let app = json!({ "id": "/web", "cmd": "sleep 1000", "cpus": 0.1, "mem": 32, "instances": 1 });
    let first = cluster.leading_gateway_index().await;
    let created = http.post(format!("{}/v2/apps", cluster.gateway_url(first))).json(&app).send().await.unwrap();
    assert_eq!(created.status(), 201);
    running(&http, &cluster.gateway_url(first), "/web", 1).await;

    cluster.gateways[first].stop().await;
    let second = cluster.leading_gateway_index().await;
    assert_ne!(second, first, "the standby gateway took over");
    cluster.gateways[first].restart().await;
    let leader = cluster.gateways[second].address.to_string();
    eventually(WAIT, "the restarted gateway to follow the leader", || async {
        let url = format!("{}/v2/leader", cluster.gateway_url(first));
        let reported: Value = http.get(url).send().await.ok()?.json().await.ok()?;
        (reported["leader"] == leader.as_str()).then_some(())
    })
    .await;

    let master = cluster.leading_master().await;
    cluster.masters[master].stop().await;
    let other = cluster.leading_master().await;
    assert_ne!(other, master, "the standby master took over");
    cluster.masters[master].restart().await;
    assert!(cluster.masters[master].is_running());

    let agent_id = |cluster: &MarinaCluster| {
        let leader = cluster.masters[other].handle.as_ref().unwrap().master.leader().ok()?;
        let state = leader.state();
        state.agents.iter().find(|a| a.status == "active").and_then(|a| Some(a.info.as_ref()?.agent_id.clone()))
    };
    let before = eventually(WAIT, "the agent active at the new master", || async { agent_id(&cluster) }).await;
    cluster.agents[0].stop().await;
    eventually(WAIT, "the master to see the agent gone", || async { agent_id(&cluster).is_none().then_some(()) }).await;
    cluster.agents[0].restart().await;
    cluster.wait_for_agents(1).await;
    assert_eq!(agent_id(&cluster), Some(before), "the agent came back with its identity");
    let app = running(&http, &cluster.gateway_url(second), "/web", 1).await;
    assert_eq!(app["instances"], 1);
}
