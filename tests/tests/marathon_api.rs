//! The Marathon API as Marathon's own clients call it, against a real cluster in one process:
//! Traefik's and go-marathon's requests (repeated `embed`s, `DELETE` without `force` during a
//! deployment, `status=running`), the HAProxy bridge scripts' `text/plain` task list, label
//! selectors, and the fields of `/v2/info`, `/v2/queue` and `/v2/deployments`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use marina_tests::{MarinaCluster, eventually};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// These tests' agent ports: no other test uses them.
const PORTS: std::ops::Range<u64> = 24400..24500;

async fn get(http: &reqwest::Client, url: &str) -> Value {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    response.json().await.unwrap()
}

/// The app of that id in a `/v2/apps` answer.
fn app<'a>(apps: &'a Value, id: &str) -> &'a Value {
    apps["apps"].as_array().unwrap().iter().find(|app| app["id"] == id).unwrap_or_else(|| panic!("{id} in {apps}"))
}

fn ids(apps: &Value) -> BTreeSet<String> {
    apps["apps"].as_array().unwrap().iter().map(|app| app["id"].as_str().unwrap().to_owned()).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

/// An app serving `dir` over HTTP on its one port, named `http`, ready once `/ready` answers.
fn http_app(id: &str, dir: &Path, instances: u32) -> Value {
    json!({
        "id": id, "cpus": 0.1, "mem": 64, "instances": instances,
        "cmd": format!("exec python3 -m http.server $PORT0 --bind 127.0.0.1 --directory {}", dir.display()),
        "portDefinitions": [{ "port": 0, "name": "http", "labels": { "traefik.http": "yes" } }],
        "readinessChecks": [{ "name": "ready", "protocol": "HTTP", "path": "/ready", "portName": "http", "intervalSeconds": 2, "timeoutSeconds": 1, "httpStatusCodesForReady": [200] }],
    })
}

/// Traefik (`GET /v2/apps?embed=apps.tasks&embed=apps.deployments&embed=apps.readiness`),
/// go-marathon (every embed at once; `DELETE /v2/apps/{id}` with no `force` while a deployment
/// holds the app; `GET /v2/tasks?status=running`) and the HAProxy bridge's `text/plain`
/// tasks, against real processes that serve HTTP and pass health and readiness checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_go_marathon_and_haproxy_requests() {
    marina_tests::binaries::binary("marina-supervise");
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(marina_agent::RuntimeChoice::Process)
        .agent_config(|_, config| {
            // Probed (health, readiness) at the agent's hostname.
            config.hostname = Some("127.0.0.1".into());
            config.resources.ports = format!("{}-{}", PORTS.start, PORTS.end - 1);
        })
        .gateways(1)
        .start()
        .await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let site = marina_tests::TestDir::new();
    let (warm, cold) = (site.path().join("warm"), site.path().join("cold"));
    std::fs::create_dir_all(&warm).unwrap();
    std::fs::create_dir_all(&cold).unwrap();
    std::fs::write(warm.join("ready"), "yes").unwrap();

    let mut web = http_app("/web", &warm, 2);
    web["labels"] = json!({ "traefik.enable": "true", "env": "prod" });
    web["healthChecks"] = json!([{ "protocol": "HTTP", "path": "/", "portIndex": 0, "gracePeriodSeconds": 0, "intervalSeconds": 2, "timeoutSeconds": 1 }]);
    let db = json!({
        "id": "/db", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 1, "labels": { "env": "prod" },
        // No ports (an app that names none gets one, as in Marathon).
        "portDefinitions": [],
    });
    // An image no agent here can run (they run host processes): it waits in the queue, its
    // deployment in progress for as long as the test runs.
    let docker = json!({
        "id": "/dockerized", "cpus": 0.1, "mem": 16,
        "container": { "type": "DOCKER", "docker": { "image": "nginx", "network": "BRIDGE",
            "portMappings": [{ "containerPort": 80, "hostPort": 0, "servicePort": 0, "name": "http" }] } },
    });
    for app in [&web, &db, &http_app("/warming", &warm, 1), &docker] {
        let created = http.post(format!("{base}/v2/apps")).json(app).send().await.unwrap();
        let status = created.status();
        assert_eq!(status, 201, "{app}: {}", created.text().await.unwrap_or_default());
    }
    eventually(WAIT, "/web healthy, /db and /warming running", || async {
        let apps: Value = http.get(format!("{base}/v2/apps")).send().await.ok()?.json().await.ok()?;
        let (web, db, warming) = (app(&apps, "/web"), app(&apps, "/db"), app(&apps, "/warming"));
        (web["tasksRunning"] == 2
            && web["tasksHealthy"] == 2
            && web["deployments"].as_array()?.is_empty()
            && db["tasksRunning"] == 1
            && warming["tasksRunning"] == 1
            && warming["deployments"].as_array()?.is_empty())
        .then_some(())
    })
    .await;

    // /warming's new version does not answer `/ready`: its deployment waits on readiness.
    let upgrade =
        http.put(format!("{base}/v2/apps/warming")).json(&http_app("/warming", &cold, 1)).send().await.unwrap();
    assert_eq!(upgrade.status(), 200);

    // Traefik's request: one `embed` key per embed (a 400 "duplicate field" before).
    let traefik = format!("{base}/v2/apps?embed=apps.tasks&embed=apps.deployments&embed=apps.readiness");
    let apps = eventually(WAIT, "the waiting deployment's readiness results", || async {
        let apps: Value = http.get(&traefik).send().await.ok()?.json().await.ok()?;
        let results = app(&apps, "/warming")["readinessCheckResults"].as_array()?.clone();
        (results.len() == 1 && results[0]["ready"] == false && results[0]["lastResponse"]["status"] == 404)
            .then_some(apps)
    })
    .await;
    let web = app(&apps, "/web");
    assert_eq!(web["labels"], json!({ "traefik.enable": "true", "env": "prod" }));
    let service_port = web["portDefinitions"][0]["port"].as_u64().unwrap();
    assert!((10_000..20_000).contains(&service_port), "{web}");
    assert_eq!(web["portDefinitions"][0]["name"], "http");
    assert_eq!(web["readinessChecks"][0]["portName"], "http");
    assert_eq!(web["readinessCheckResults"], json!([]), "no deployment: nothing to wait for");
    assert_eq!(web["deployments"], json!([]));
    assert_eq!(web["tasksRunning"], 2, "counts come with every list");
    assert!(web.get("lastTaskFailure").is_none() && web.get("taskStats").is_none(), "not embedded: {web}");
    let tasks = web["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for task in tasks {
        assert!(task["id"].as_str().unwrap().starts_with("web."), "{task}");
        assert_eq!(task["appId"], "/web");
        assert_eq!(task["host"], "127.0.0.1");
        assert_eq!(task["state"], "TASK_RUNNING");
        assert!(task["ipAddresses"].is_array(), "{task}");
        let port = task["ports"][0].as_u64().unwrap();
        assert!(PORTS.contains(&port), "{task}");
        assert_eq!(task["servicePorts"], json!([service_port]));
        assert_eq!(task["healthCheckResults"][0]["alive"], true, "{task}");
    }
    let warming = app(&apps, "/warming");
    assert_eq!(warming["deployments"].as_array().unwrap().len(), 1);
    let docker = app(&apps, "/dockerized");
    assert_eq!(docker["container"]["docker"]["portMappings"][0]["containerPort"], 80);
    let docker_port = docker["container"]["docker"]["portMappings"][0]["servicePort"].as_u64().unwrap();
    assert!((10_000..20_000).contains(&docker_port), "{docker}");
    assert_eq!(docker["tasks"], json!([]));

    // go-marathon asking for everything; the prefix may be `apps.` or `app.` alike.
    let everything = format!(
        "{base}/v2/apps?embed=apps.tasks&embed=apps.counts&embed=apps.deployments&embed=apps.readiness&embed=app.lastTaskFailure&embed=apps.taskStats"
    );
    let apps = get(&http, &everything).await;
    let stats = &app(&apps, "/web")["taskStats"];
    assert_eq!(
        stats["totalSummary"]["stats"]["counts"],
        json!({ "staged": 0, "running": 2, "healthy": 2, "unhealthy": 0 })
    );
    let life = &stats["totalSummary"]["stats"]["lifeTime"];
    assert!(
        life["averageSeconds"].as_f64().unwrap() >= 0.0 && life["medianSeconds"].as_f64().unwrap() >= 0.0,
        "{stats}"
    );
    assert_eq!(stats["startedAfterLastScaling"]["stats"]["counts"]["running"], 2);
    assert_eq!(stats["withLatestConfig"]["stats"]["counts"]["running"], 2);
    assert!(stats.get("withOutdatedConfig").is_none(), "every instance has the latest config: {stats}");
    // Mid-upgrade, /warming runs its old instance and its new one.
    let stats = &app(&apps, "/warming")["taskStats"];
    assert_eq!(stats["withOutdatedConfig"]["stats"]["counts"]["running"], 1, "{stats}");
    assert_eq!(stats["withLatestConfig"]["stats"]["counts"]["running"], 1, "{stats}");
    assert_eq!(stats["totalSummary"]["stats"]["counts"]["running"], 2, "{stats}");
    assert!(app(&apps, "/dockerized")["taskStats"].as_object().unwrap().is_empty(), "no instance, no statistics");

    // One app: tasks, counts, deployments (and lastTaskFailure, had it one) always; more if asked.
    let one = get(&http, &format!("{base}/v2/apps/web?embed=app.taskStats")).await;
    let one = &one["app"];
    assert_eq!(one["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(one["tasksHealthy"], 2);
    assert_eq!(one["deployments"], json!([]));
    assert_eq!(one["taskStats"]["totalSummary"]["stats"]["counts"]["running"], 2);
    assert!(one.get("readinessCheckResults").is_none(), "not embedded: {one}");

    // `status=running` (go-marathon), `status[]=` (the Marathon UI): only tasks in that state.
    let running = get(&http, &format!("{base}/v2/tasks?status=running")).await;
    let running = running["tasks"].as_array().unwrap();
    assert!(running.iter().all(|t| t["state"] == "TASK_RUNNING"), "{running:?}");
    assert_eq!(running.iter().filter(|t| t["appId"] == "/web").count(), 2);
    let staging = get(&http, &format!("{base}/v2/tasks?status[]=staging")).await;
    assert!(staging["tasks"].as_array().unwrap().iter().all(|t| t["state"] == "TASK_STAGING"), "{staging}");

    // The HAProxy bridge's `text/plain`: `{id}\t{servicePort}\t{host}:{port}\t...` per port.
    let web_tasks: BTreeSet<String> = tasks.iter().map(|t| format!("127.0.0.1:{}", t["ports"][0])).collect();
    let text_of = |url: String| {
        let http = http.clone();
        async move {
            let response = http.get(url).header(ACCEPT, "text/plain").send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert!(response.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("text/plain"));
            response.text().await.unwrap()
        }
    };
    let text = text_of(format!("{base}/v2/tasks")).await;
    let line = |id: &str| -> Vec<String> {
        let line =
            text.lines().find(|line| line.split('\t').next() == Some(id)).unwrap_or_else(|| panic!("{id}: {text}"));
        assert!(line.ends_with('\t'), "{line:?}");
        line.trim_end_matches('\t').split('\t').map(str::to_owned).collect()
    };
    let web_line = line("web");
    assert_eq!(web_line[1], service_port.to_string());
    assert_eq!(web_line[2..].iter().cloned().collect::<BTreeSet<_>>(), web_tasks, "{text}");
    assert_eq!(line("db")[1..], [" ", "127.0.0.1"], "no service port: the hosts");
    assert_eq!(line("dockerized")[1..], [docker_port.to_string()], "no running task");
    assert_eq!(text.lines().count(), 4, "one line per app and port: {text}");
    let text = text_of(format!("{base}/v2/apps/web/tasks")).await;
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with(&format!("web\t{service_port}\t")), "{text}");
    // `*/*` (or no Accept) is JSON, as Marathon prefers it.
    let json_tasks = http.get(format!("{base}/v2/tasks")).header(ACCEPT, "*/*").send().await.unwrap();
    assert!(json_tasks.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));

    // go-marathon's DeleteApplication(id, false) sends no `force`: Marathon's default is
    // true, so the delete overrides the deployment that holds the app; `force=false` does not.
    let held = http.delete(format!("{base}/v2/apps/warming?force=false")).send().await.unwrap();
    assert_eq!(held.status(), 409);
    let deleted = http.delete(format!("{base}/v2/apps/warming")).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let deleted: Value = deleted.json().await.unwrap();
    assert!(deleted["deploymentId"].is_string(), "{deleted}");

    // Real processes: the apps go before the cluster does.
    for id in ["web", "db", "dockerized"] {
        assert_eq!(http.delete(format!("{base}/v2/apps/{id}")).send().await.unwrap().status(), 200, "{id}");
    }
    eventually(WAIT, "every task to be gone", || async {
        let tasks: Value = http.get(format!("{base}/v2/tasks")).send().await.ok()?.json().await.ok()?;
        let apps: Value = http.get(format!("{base}/v2/apps")).send().await.ok()?.json().await.ok()?;
        (tasks["tasks"].as_array()?.is_empty() && apps["apps"].as_array()?.is_empty()).then_some(())
    })
    .await;
}

/// Label selectors and the `id`/`cmd` filters as Marathon reads them; the embeds' defaults;
/// a group's apps; `/v2/info`, `/v2/queue` and `/v2/deployments` with every field Marathon
/// 1.11 writes; Marathon's refusals of a malformed selector and of `scale` with `wipe`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_embeds_info_queue_and_deployments() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).gateways(1).start().await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let apps = [
        json!({ "id": "/prod/web", "cmd": "python3 -m http.server", "labels": { "env": "prod", "tier": "web", "owner": "John Doe" } }),
        json!({ "id": "/prod/db", "cmd": "sleep 1000", "labels": { "env": "prod", "tier": "db" } }),
        json!({ "id": "/qa/web", "cmd": "nginx -g 'daemon off;'", "labels": { "env": "qa", "tier": "web" } }),
        // More than any agent has: it waits in the queue, its deployment in progress.
        json!({ "id": "/big", "cmd": "sleep 1000", "cpus": 64 }),
    ];
    for app in &apps {
        let mut app = app.clone();
        app["mem"] = json!(16);
        if app.get("cpus").is_none() {
            app["cpus"] = json!(0.1);
        }
        assert_eq!(http.post(format!("{base}/v2/apps")).json(&app).send().await.unwrap().status(), 201, "{app}");
    }
    eventually(WAIT, "the three small apps to run", || async {
        let listed: Value = http.get(format!("{base}/v2/apps")).send().await.ok()?.json().await.ok()?;
        listed["apps"]
            .as_array()?
            .iter()
            .filter(|app| app["id"] != "/big")
            .all(|app| app["tasksRunning"] == 1 && app["deployments"].as_array().is_some_and(Vec::is_empty))
            .then_some(())
    })
    .await;

    let selected = |query: &'static str| {
        let http = http.clone();
        let url = format!("{base}/v2/apps?{query}");
        async move { ids(&get(&http, &url).await) }
    };
    let label = |selector: &str| format!("label={}", urlencode(selector));
    for (selector, expected) in [
        ("env==prod", set(&["/prod/web", "/prod/db"])),
        ("env == prod", set(&["/prod/web", "/prod/db"])),
        ("tier in (web, cache)", set(&["/prod/web", "/qa/web"])),
        ("env notin (prod)", set(&["/qa/web"])),
        ("env!=qa, tier==web", set(&["/prod/web"])),
        ("tier", set(&["/prod/web", "/prod/db", "/qa/web"])),
        (r"owner==John\ Doe", set(&["/prod/web"])),
        ("tier!=web", set(&["/prod/db"])),
        ("", set(&["/prod/web", "/prod/db", "/qa/web", "/big"])),
    ] {
        let url = format!("{base}/v2/apps?{}", label(selector));
        assert_eq!(ids(&get(&http, &url).await), expected, "label={selector}");
    }
    let refused = http.get(format!("{base}/v2/apps?{}", label("!tier"))).send().await.unwrap();
    assert_eq!(refused.status(), 422);
    let refused: Value = refused.json().await.unwrap();
    assert!(refused["message"].as_str().unwrap().starts_with("Can not parse label selector !tier."), "{refused}");
    // `id` and `cmd` ignore case, as Marathon's lowercasing does; the filters combine.
    assert_eq!(selected("id=PROD").await, set(&["/prod/web", "/prod/db"]));
    assert_eq!(selected("cmd=SLEEP").await, set(&["/prod/db", "/big"]));
    assert_eq!(selected("id=prod&cmd=Python").await, set(&["/prod/web"]));
    // A repeated single-valued parameter is its first value; unknown parameters are ignored.
    assert_eq!(selected("id=qa&id=prod&page=2&embed=apps.nothing").await, set(&["/qa/web"]));

    // Embeds: the list has counts and deployments by default; tasks when asked (any prefix).
    let plain = get(&http, &format!("{base}/v2/apps?id=qa")).await;
    let qa = app(&plain, "/qa/web");
    assert_eq!(qa["tasksRunning"], 1);
    assert_eq!(qa["deployments"], json!([]));
    assert_eq!(qa["role"], "*");
    for absent in ["tasks", "lastTaskFailure", "taskStats", "readinessCheckResults"] {
        assert!(qa.get(absent).is_none(), "{absent}: {qa}");
    }
    for embed in ["apps.tasks", "app.tasks", "tasks", "group.apps.tasks", "apps.failures"] {
        let listed = get(&http, &format!("{base}/v2/apps?id=qa&embed={embed}")).await;
        assert_eq!(app(&listed, "/qa/web")["tasks"].as_array().unwrap().len(), 1, "embed={embed}");
    }
    let readiness = get(&http, &format!("{base}/v2/apps?id=qa&embed=apps.readiness")).await;
    assert_eq!(app(&readiness, "/qa/web")["readinessCheckResults"], json!([]));

    // A group's apps, as `GET /v2/apps/{group}/*` lists them.
    let group = get(&http, &format!("{base}/v2/apps/prod/*")).await;
    let members: BTreeSet<&str> = group["*"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(members, BTreeSet::from(["/prod/web", "/prod/db"]));
    assert!(group["*"].as_array().unwrap().iter().all(|a| a["tasks"].as_array().is_some_and(|t| t.len() == 1)));
    assert_eq!(get(&http, &format!("{base}/v2/apps/*")).await["*"].as_array().unwrap().len(), 4);
    assert_eq!(http.get(format!("{base}/v2/apps/nothing/*")).send().await.unwrap().status(), 404);

    // `/v2/info`: every key Marathon 1.11 writes.
    let info = eventually(WAIT, "the framework id in /v2/info", || async {
        let info: Value = http.get(format!("{base}/v2/info")).send().await.ok()?.json().await.ok()?;
        info["frameworkId"].is_string().then_some(info)
    })
    .await;
    assert_eq!(info["name"], "marathon");
    assert_eq!(info["version"], "1.11.0");
    assert_eq!(info["elected"], true);
    assert_eq!(info["leader"], base.trim_start_matches("http://"));
    assert!(info["buildref"].as_str().unwrap().starts_with("marina-"));
    let config = info["marathon_config"].as_object().unwrap();
    for key in [
        "access_control_allow_origin",
        "checkpoint",
        "decline_offer_duration",
        "default_network_name",
        "env_vars_prefix",
        "executor",
        "failover_timeout",
        "features",
        "framework_name",
        "ha",
        "hostname",
        "launch_token",
        "launch_token_refresh_interval",
        "leader_proxy_connection_timeout_ms",
        "leader_proxy_read_timeout_ms",
        "local_port_max",
        "local_port_min",
        "master",
        "max_instances_per_offer",
        "mesos_bridge_name",
        "mesos_heartbeat_failure_threshold",
        "mesos_heartbeat_interval",
        "mesos_leader_ui_url",
        "mesos_role",
        "mesos_user",
        "min_revive_offers_interval",
        "offer_matching_timeout",
        "on_elected_prepare_timeout",
        "reconciliation_initial_delay",
        "reconciliation_interval",
        "revive_offers_for_new_apps",
        "revive_offers_repetitions",
        "scale_apps_initial_delay",
        "scale_apps_interval",
        "store_cache",
        "task_launch_confirm_timeout",
        "task_launch_timeout",
        "task_lost_expunge_initial_delay",
        "task_lost_expunge_interval",
        "task_reservation_timeout",
        "webui_url",
    ] {
        assert!(config.contains_key(key), "marathon_config.{key}: {info}");
    }
    assert_eq!(config["framework_name"], "marathon");
    assert_eq!(config["hostname"], "127.0.0.1");
    assert_eq!((config["local_port_min"].clone(), config["local_port_max"].clone()), (json!(10_000), json!(20_000)));
    let zookeeper = info["zookeeper_config"].as_object().unwrap();
    for key in [
        "zk",
        "zk_compression",
        "zk_compression_threshold",
        "zk_connection_timeout",
        "zk_max_node_size",
        "zk_max_versions",
        "zk_session_timeout",
        "zk_timeout",
    ] {
        assert!(zookeeper.contains_key(key), "zookeeper_config.{key}: {info}");
    }
    assert_eq!(zookeeper["zk_max_versions"], 50);
    assert_eq!(info["http_config"]["http_port"].as_u64().unwrap().to_string(), base.rsplit(':').next().unwrap());

    // `/v2/queue`: /big waits, saying why; `lastUnusedOffers` only when embedded.
    let entry = eventually(WAIT, "/big in the queue, its offers declined for cpus", || async {
        let queue: Value = http.get(format!("{base}/v2/queue")).send().await.ok()?.json().await.ok()?;
        let entry = queue["queue"].as_array()?.iter().find(|e| e["app"]["id"] == "/big")?.clone();
        let cpus = entry["processedOffersSummary"]["rejectSummaryLastOffers"]
            .as_array()?
            .iter()
            .find(|step| step["reason"] == "InsufficientCpus")?
            .clone();
        (cpus["declined"].as_u64()? > 0).then_some(entry)
    })
    .await;
    assert_eq!(entry["count"], 1);
    assert_eq!(entry["app"]["role"], "*");
    assert!(entry["delay"]["overdue"].is_boolean() && entry["delay"]["timeLeftSeconds"].is_u64(), "{entry}");
    assert!(entry.get("lastUnusedOffers").is_none(), "{entry}");
    let funnel = entry["processedOffersSummary"]["rejectSummaryLaunchAttempt"].as_array().unwrap();
    assert_eq!(funnel[0]["reason"], "UnfulfilledRole", "Marathon's order: {funnel:?}");
    assert_eq!(funnel[0]["processed"], entry["processedOffersSummary"]["processedOffersCount"]);
    let queue = get(&http, &format!("{base}/v2/queue?embed=lastUnusedOffers")).await;
    assert_eq!(queue["queue"][0]["lastUnusedOffers"], json!([]));

    // `/v2/deployments`: /big's, with Marathon's fields (no pods in Marina).
    let deployments = get(&http, &format!("{base}/v2/deployments")).await;
    let deployment = deployments.as_array().unwrap().iter().find(|d| d["affectedApps"] == json!(["/big"])).unwrap();
    assert_eq!(deployment["affectedPods"], json!([]));
    for key in ["id", "version", "steps", "currentActions", "currentStep", "totalSteps"] {
        assert!(deployment.get(key).is_some(), "{key}: {deployment}");
    }

    // Marathon refuses `scale` with `wipe`.
    let both = http.delete(format!("{base}/v2/apps/prod/web/tasks?scale=true&wipe=true")).send().await.unwrap();
    assert_eq!(both.status(), 400);
    let both = http
        .post(format!("{base}/v2/tasks/delete?scale=true&wipe=true"))
        .json(&json!({ "ids": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 400);

    // Deleting /big with no `force`: its deployment is overridden (Marathon's default).
    assert_eq!(http.delete(format!("{base}/v2/apps/big")).send().await.unwrap().status(), 200);
    eventually(WAIT, "/big to be gone, and its deployment", || async {
        let gone = http.get(format!("{base}/v2/apps/big")).send().await.ok()?.status() == 404;
        let deployments: Value = http.get(format!("{base}/v2/deployments")).send().await.ok()?.json().await.ok()?;
        (gone && !deployments.as_array()?.iter().any(|d| d["affectedApps"] == json!(["/big"]))).then_some(())
    })
    .await;
}

/// Percent-encodes a query value (selectors hold spaces, `=`, `!`, `\`, parentheses).
fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
