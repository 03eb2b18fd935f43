//! Groups and events as Marathon has them, against a real cluster in one process: explicit
//! groups that outlive a gateway failover, group replacement, `scaleBy`, rollback to a group
//! version, `dryRun`, changes that change nothing, each event's fields, and the
//! `healthCheckResults` of a task whose command check fails and then passes.

use std::time::Duration;

use marina_tests::{MarinaCluster, eventually};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(30);

fn app(id: &str, instances: u32) -> Value {
    json!({ "id": id, "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": instances })
}

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Waits until no deployment is in progress.
async fn settled(http: &reqwest::Client, base: &str) {
    eventually(WAIT, "no deployment in progress", || async {
        let deployments: Value = http.get(format!("{base}/v2/deployments")).send().await.ok()?.json().await.ok()?;
        deployments.as_array()?.is_empty().then_some(())
    })
    .await;
}

/// The running task ids of `app`, once exactly `count` run.
async fn running(http: &reqwest::Client, base: &str, app: &str, count: usize) -> Vec<String> {
    eventually(WAIT, &format!("{app} to run {count} tasks"), || async {
        let body: Value = http.get(format!("{base}/v2/apps{app}")).send().await.ok()?.json().await.ok()?;
        let tasks = body["app"]["tasks"].as_array()?;
        let ids: Vec<String> = tasks
            .iter()
            .filter(|t| t["state"] == "TASK_RUNNING")
            .filter_map(|t| Some(t["id"].as_str()?.to_owned()))
            .collect();
        (ids.len() == count && tasks.len() == count).then_some(ids)
    })
    .await
}

/// The next event of `kind` for which `matches` holds.
async fn next_event(
    events: &mut UnboundedReceiver<(String, Value)>,
    kind: &str,
    matches: impl Fn(&Value) -> bool,
) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let (event_type, json) = events.recv().await.expect("the event stream is open");
            if event_type == kind && matches(&json) {
                return json;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching {kind} within {WAIT:?}"))
}

/// Every event up to and including the next of `kind` for which `matches` holds.
async fn events_until(
    events: &mut UnboundedReceiver<(String, Value)>,
    kind: &str,
    matches: impl Fn(&Value) -> bool,
) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let (event_type, json) = events.recv().await.expect("the event stream is open");
            let last = event_type == kind && matches(&json);
            seen.push((event_type, json));
            if last {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching {kind} within {WAIT:?}"));
    seen
}

/// The first of `seen` of `kind` for which `matches` holds.
fn find(seen: &[(String, Value)], kind: &str, matches: impl Fn(&Value) -> bool) -> Value {
    let found = seen.iter().find(|(event_type, json)| event_type == kind && matches(json));
    let types: Vec<&str> = seen.iter().map(|(event_type, _)| event_type.as_str()).collect();
    found.map(|(_, json)| json.clone()).unwrap_or_else(|| panic!("no {kind} among {types:?}"))
}

/// The keys of an event, sorted.
fn keys(event: &Value) -> Vec<String> {
    let mut keys: Vec<String> = event.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    names.sort();
    names
}

/// An empty group is a group: created, listed, kept in coord (the next leader has it, at the
/// same version), and gone once deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_empty_group_survives_a_gateway_failover() {
    let mut cluster = MarinaCluster::builder().masters(1).agents(1).gateways(2).start().await;
    let http = reqwest::Client::new();
    let first = cluster.leading_gateway_index().await;
    let base = cluster.gateway_url(first);

    let created = http.post(format!("{base}/v2/groups")).json(&json!({ "id": "/empty" })).send().await.unwrap();
    assert_eq!(created.status(), 201);
    assert!(created.headers().contains_key("Marathon-Deployment-Id"));
    let body: Value = created.json().await.unwrap();
    assert!(body["deploymentId"].is_string() && body["version"].is_string(), "{body}");
    let again = http.post(format!("{base}/v2/groups")).json(&json!({ "id": "/empty" })).send().await.unwrap();
    assert_eq!(again.status(), 409, "Marathon: the group is already created");

    let (_, root) = get(&http, format!("{base}/v2/groups")).await;
    let listed = root["groups"].as_array().unwrap().iter().find(|g| g["id"] == "/empty").cloned();
    let listed = listed.unwrap_or_else(|| panic!("/empty in the tree: {root}"));
    assert_eq!((listed["apps"].clone(), listed["groups"].clone()), (json!([]), json!([])));
    let (status, group) = get(&http, format!("{base}/v2/groups/empty")).await;
    assert_eq!(status, 200);
    let (_, same) = get(&http, format!("{base}/v2/groups/empty")).await;
    assert_eq!(group["version"], same["version"], "reading a group does not change its version");
    assert_eq!(group["version"], listed["version"]);

    cluster.gateways[first].stop().await;
    let second = cluster.leading_gateway_index().await;
    assert_ne!(second, first, "the standby took over");
    let base = cluster.gateway_url(second);
    let (status, after) = get(&http, format!("{base}/v2/groups/empty")).await;
    assert_eq!(status, 200, "the new leader knows the group: {after}");
    assert_eq!(after["version"], group["version"], "at the same version");

    let deleted = http.delete(format!("{base}/v2/groups/empty")).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let (status, _) = get(&http, format!("{base}/v2/groups/empty")).await;
    assert_eq!(status, 404);
    let missing = http.delete(format!("{base}/v2/groups/empty")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// `PUT` replaces (what it leaves out goes, what is unchanged is untouched), `scaleBy`
/// multiplies, `dryRun` changes nothing, a version brings the group back, and a change of
/// nothing finishes at once and keeps the group's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_replaced_scaled_dry_run_and_rolled_back() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).gateways(1).start().await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let mut events = marina_tests::events::subscribe(&format!("{base}/v2/events")).await;

    let group = json!({ "id": "/shop", "apps": [app("cart", 1), app("pay", 1)] });
    assert_eq!(http.post(format!("{base}/v2/groups")).json(&group).send().await.unwrap().status(), 201);
    let cart = running(&http, &base, "/shop/cart", 1).await;
    running(&http, &base, "/shop/pay", 1).await;
    settled(&http, &base).await;
    let (_, first) = get(&http, format!("{base}/v2/groups/shop")).await;
    let v1 = first["version"].as_str().unwrap().to_owned();

    // Without `pay`: it goes; `cart`, the same as before, keeps its task.
    let replaced =
        http.put(format!("{base}/v2/groups/shop")).json(&json!({ "apps": [app("cart", 1)] })).send().await.unwrap();
    assert_eq!(replaced.status(), 200);
    eventually(WAIT, "/shop/pay to be gone", || async {
        (get(&http, format!("{base}/v2/apps/shop/pay")).await.0 == 404).then_some(())
    })
    .await;
    settled(&http, &base).await;
    assert_eq!(running(&http, &base, "/shop/cart", 1).await, cart, "an unchanged app is not restarted");
    let (_, second) = get(&http, format!("{base}/v2/groups/shop")).await;
    let v2 = second["version"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2, "the group changed");
    assert_eq!(second["apps"].as_array().unwrap().len(), 1);

    // scaleBy, as marathon-python's scale_group sends it.
    let scaled = http.put(format!("{base}/v2/groups/shop?force=true")).json(&json!({ "scaleBy": 2 })).send().await;
    assert_eq!(scaled.unwrap().status(), 200);
    running(&http, &base, "/shop/cart", 2).await;
    settled(&http, &base).await;
    let (_, third) = get(&http, format!("{base}/v2/groups/shop")).await;
    let v3 = third["version"].as_str().unwrap().to_owned();

    // dryRun: the steps, and nothing done.
    let body = json!({ "apps": [app("cart", 2), app("new", 1)] });
    let dry = http.put(format!("{base}/v2/groups/shop?dryRun=true")).json(&body).send().await.unwrap();
    assert_eq!(dry.status(), 200);
    let dry: Value = dry.json().await.unwrap();
    assert_eq!(dry, json!({ "steps": [{ "actions": [{ "action": "StartApplication", "app": "/shop/new" }] }] }));
    assert_eq!(get(&http, format!("{base}/v2/apps/shop/new")).await.0, 404, "a dry run creates nothing");
    assert_eq!(get(&http, format!("{base}/v2/groups/shop")).await.1["version"], v3.as_str());

    // Versions: newest first, each readable.
    let (_, versions) = get(&http, format!("{base}/v2/groups/shop/versions")).await;
    let versions: Vec<&str> = versions.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(&versions[..3], [v3.as_str(), v2.as_str(), v1.as_str()], "{versions:?}");
    let (status, then) = get(&http, format!("{base}/v2/groups/shop/versions/{v1}")).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = then["apps"].as_array().unwrap().iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["/shop/cart", "/shop/pay"], "{then}");
    assert_eq!(then["version"], v1.as_str());

    // Rollback to v1: pay is back, cart runs one instance again.
    let rollback =
        http.put(format!("{base}/v2/groups/shop?force=true")).json(&json!({ "version": v1 })).send().await.unwrap();
    assert_eq!(rollback.status(), 200);
    running(&http, &base, "/shop/pay", 1).await;
    running(&http, &base, "/shop/cart", 1).await;
    settled(&http, &base).await;
    let unknown = http
        .put(format!("{base}/v2/groups/shop"))
        .json(&json!({ "version": "2001-01-01T00:00:00.000Z" }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 422, "a version that is not kept");

    // Changes of nothing: answered with a deployment that is over at once; the version stays.
    let (_, before) = get(&http, format!("{base}/v2/groups/shop")).await;
    let nothing = [
        (format!("{base}/v2/groups/shop"), json!({ "scaleBy": 1 })),
        (format!("{base}/v2/apps"), json!([])),
        (format!("{base}/v2/groups/shop"), json!({ "apps": [app("cart", 1), app("pay", 1)] })),
    ];
    for (url, body) in nothing {
        let response = http.put(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url} {body}");
        let answer: Value = response.json().await.unwrap();
        let id = answer["deploymentId"].as_str().expect("a deployment id").to_owned();
        assert!(answer["version"].is_string(), "{answer}");
        next_event(&mut events, "deployment_success", |event| event["id"] == id.as_str()).await;
        let deployments: Value = http.get(format!("{base}/v2/deployments")).send().await.unwrap().json().await.unwrap();
        assert!(!deployments.to_string().contains(&id), "{url} {body}: over at once: {deployments}");
    }
    let (_, after) = get(&http, format!("{base}/v2/groups/shop")).await;
    assert_eq!(after["version"], before["version"], "nothing changed");

    // Embeds: only what is asked.
    let (_, embedded) = get(&http, format!("{base}/v2/groups/shop?embed=group.apps&embed=group.apps.counts")).await;
    assert!(embedded.get("groups").is_none() && embedded["apps"][0]["tasksRunning"].is_number(), "{embedded}");
    let (_, plain) = get(&http, format!("{base}/v2/groups/shop")).await;
    assert!(plain["apps"][0].get("tasksRunning").is_none() && plain["pods"] == json!([]), "{plain}");
}

/// Each event carries Marathon's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_marathons_fields() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).gateways(1).start().await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let mut events = marina_tests::events::subscribe(&format!("{base}/v2/events")).await;
    let (kind, attached) = events.recv().await.unwrap();
    assert_eq!((kind.as_str(), attached["remoteAddress"].as_str()), ("event_stream_attached", Some("127.0.0.1")));
    let common = ["eventType", "timestamp"];
    let with_common = |fields: &[&str]| sorted(&[fields, &common].concat());

    // A group created: its app announced (with the caller's address), the tree changed.
    let group = json!({ "id": "/ev", "apps": [{
        "id": "checked", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16,
        "healthChecks": [{ "protocol": "COMMAND", "command": { "value": "true" }, "gracePeriodSeconds": 0, "intervalSeconds": 1 }],
    }] });
    assert_eq!(http.post(format!("{base}/v2/groups")).json(&group).send().await.unwrap().status(), 201);
    // In Marathon's order: the deployment starts (its checks with it), the tree changed, and
    // the app is announced.
    let seen = events_until(&mut events, "api_post_event", |e| e["appDefinition"]["id"] == "/ev/checked").await;
    let types: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["deployment_info", "add_health_check_event", "group_change_success", "api_post_event"]);
    let posted = find(&seen, "api_post_event", |_| true);
    assert_eq!(keys(&posted), with_common(&["clientIp", "uri", "appDefinition"]));
    assert_eq!((posted["clientIp"].as_str(), posted["uri"].as_str()), (Some("127.0.0.1"), Some("/v2/groups/ev")));
    let timestamp = posted["timestamp"].as_str().unwrap();
    assert!(timestamp.len() == 24 && timestamp.ends_with('Z'), "Marathon's timestamps: {timestamp}");
    let changed = find(&seen, "group_change_success", |_| true);
    assert_eq!(keys(&changed), with_common(&["groupId", "version"]));
    assert_eq!(changed["groupId"], "/", "a group's change is made in its parent");
    let added = find(&seen, "add_health_check_event", |_| true);
    assert_eq!(keys(&added), with_common(&["appId", "version", "healthCheck"]));
    assert_eq!(
        (added["appId"].as_str(), added["healthCheck"]["protocol"].as_str()),
        (Some("/ev/checked"), Some("COMMAND"))
    );
    assert_eq!(added["version"], posted["appDefinition"]["version"], "the version deployed");
    let info = find(&seen, "deployment_info", |_| true);
    for field in ["id", "version", "steps", "original", "target"] {
        assert!(info["plan"].get(field).is_some(), "{field} in {info}");
    }
    assert_eq!(info["currentStep"]["actions"][0]["action"], "StartApplication");
    settled(&http, &base).await;

    // An app created through /v2/apps, and created again: the change fails.
    let plain = app("/ev/plain", 0);
    assert_eq!(http.post(format!("{base}/v2/apps")).json(&plain).send().await.unwrap().status(), 201);
    let seen = events_until(&mut events, "api_post_event", |e| e["appDefinition"]["id"] == "/ev/plain").await;
    let posted = find(&seen, "api_post_event", |_| true);
    assert_eq!((posted["uri"].as_str(), posted["clientIp"].as_str()), (Some("/v2/apps/ev/plain"), Some("127.0.0.1")));
    let changed = find(&seen, "group_change_success", |_| true);
    assert_eq!(changed["groupId"], "/ev", "an app's change is made in its group");
    assert!(changed["version"].is_string());
    assert_eq!(http.post(format!("{base}/v2/apps")).json(&plain).send().await.unwrap().status(), 409);
    let failed = next_event(&mut events, "group_change_failed", |e| e["groupId"] == "/ev").await;
    assert_eq!(keys(&failed), with_common(&["groupId", "version", "reason"]));
    assert!(failed["reason"].as_str().unwrap().contains("already exists"), "{failed}");

    // Scaled and restarted: each announced.
    let scaled = http.put(format!("{base}/v2/apps/ev/plain")).json(&json!({ "instances": 1 })).send().await.unwrap();
    assert_eq!(scaled.status(), 200);
    let posted = next_event(&mut events, "api_post_event", |e| e["appDefinition"]["id"] == "/ev/plain").await;
    assert_eq!(posted["appDefinition"]["instances"], 1);
    assert_eq!(posted["clientIp"], "127.0.0.1");
    settled(&http, &base).await;
    let restart = http.post(format!("{base}/v2/apps/ev/plain/restart")).send().await.unwrap();
    assert_eq!(restart.status(), 200);
    let posted = next_event(&mut events, "api_post_event", |e| e["uri"] == "/v2/apps/ev/plain/restart").await;
    assert_eq!(posted["appDefinition"]["id"], "/ev/plain");
    settled(&http, &base).await;

    // A deployment that cannot finish, canceled: its step fails, then it does, with its plan.
    let stuck = json!({ "id": "/ev/huge", "cmd": "sleep 1000", "cpus": 1000, "mem": 16 });
    let created = http.post(format!("{base}/v2/apps")).json(&stuck).send().await.unwrap();
    let deployment = created.headers()["Marathon-Deployment-Id"].to_str().unwrap().to_owned();
    let canceled = http.delete(format!("{base}/v2/deployments/{deployment}?force=true")).send().await.unwrap();
    assert_eq!(canceled.status(), 202);
    let step = next_event(&mut events, "deployment_step_failure", |e| e["plan"]["id"] == deployment.as_str()).await;
    assert_eq!(keys(&step), with_common(&["plan", "currentStep"]));
    assert_eq!(step["currentStep"]["actions"][0]["app"], "/ev/huge");
    let failed = next_event(&mut events, "deployment_failed", |e| e["id"] == deployment.as_str()).await;
    assert_eq!(failed["plan"]["id"], deployment.as_str(), "always with its plan: {failed}");
    assert_eq!(failed["plan"]["target"]["groups"][0]["apps"][0]["id"], "/ev/huge");

    // The group deleted: its apps announced as they were, their checks removed.
    let deleted = http.delete(format!("{base}/v2/groups/ev?force=true")).send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    let seen = events_until(&mut events, "api_post_event", |e| e["appDefinition"]["id"] == "/ev/checked").await;
    assert_eq!(find(&seen, "api_post_event", |_| true)["uri"], "/v2/groups/ev");
    let removed = find(&seen, "remove_health_check_event", |e| e["appId"] == "/ev/checked");
    assert_eq!(keys(&removed), with_common(&["appId"]));
    next_event(&mut events, "app_terminated_event", |e| e["appId"] == "/ev/checked").await;
}

/// A command check failing, then passing: the task's `healthCheckResults` say so field by
/// field, and the failure is announced with its check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_results_follow_a_command_check() {
    // Real processes: the check really runs.
    marina_tests::binaries::binary("marina-supervise");
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(marina_agent::RuntimeChoice::Process)
        .agent_config(|_, config| config.resources.ports = "24500-24599".into())
        .gateways(2)
        .start()
        .await;
    let base = format!("http://{}", cluster.leading_gateway().await);
    let http = reqwest::Client::new();
    let mut events = marina_tests::events::subscribe(&format!("{base}/v2/events")).await;
    let dir = marina_tests::TestDir::new();
    let flag = dir.path().join("healthy");
    let checked = json!({
        "id": "/checked", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 1,
        "healthChecks": [{
            "protocol": "COMMAND", "command": { "value": format!("test -f {}", flag.display()) },
            "gracePeriodSeconds": 0, "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 0,
        }],
    });
    assert_eq!(http.post(format!("{base}/v2/apps")).json(&checked).send().await.unwrap().status(), 201);
    let result = |wanted_alive: bool| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let body: Value = http.get(format!("{base}/v2/apps/checked")).send().await.ok()?.json().await.ok()?;
            let task = body["app"]["tasks"].as_array()?.first()?.clone();
            let result = task["healthCheckResults"].as_array()?.first()?.clone();
            (result["alive"] == wanted_alive).then_some((task["id"].as_str()?.to_owned(), result))
        }
    };
    let (task, failing) = eventually(WAIT, "a failing health check result", || result(false)).await;
    let fields = ["alive", "consecutiveFailures", "firstSuccess", "lastSuccess", "lastFailure", "lastFailureCause"];
    assert_eq!(keys(&failing), sorted(&[&fields[..], &["taskId", "instanceId"]].concat()));
    assert_eq!(
        (failing["taskId"].as_str(), failing["instanceId"].as_str()),
        (Some(task.as_str()), Some(task.as_str()))
    );
    assert_eq!(failing["consecutiveFailures"], 1);
    assert!(failing["lastFailure"].is_string() && failing["lastFailureCause"].is_string(), "{failing}");
    assert!(failing["firstSuccess"].is_null() && failing["lastSuccess"].is_null(), "{failing}");
    let event = next_event(&mut events, "failed_health_check_event", |e| e["appId"] == "/checked").await;
    assert_eq!(event["healthCheck"]["protocol"], "COMMAND");
    assert_eq!((event["taskId"].as_str(), event["instanceId"].as_str()), (Some(task.as_str()), Some(task.as_str())));

    std::fs::write(&flag, b"").unwrap();
    let (_, passing) = eventually(WAIT, "a passing health check result", || result(true)).await;
    assert_eq!(passing["consecutiveFailures"], 0);
    assert!(passing["firstSuccess"].is_string() && passing["lastSuccess"].is_string(), "{passing}");
    assert_eq!(passing["lastFailure"], failing["lastFailure"], "the last failure is remembered");
    assert!(passing["lastSuccess"].as_str() > passing["lastFailure"].as_str(), "{passing}");
    let changed = next_event(&mut events, "health_status_changed_event", |e| e["appId"] == "/checked").await;
    assert!(changed["alive"].is_boolean());

    // Agents leave their tasks running when they stop: the app goes first.
    assert_eq!(http.delete(format!("{base}/v2/apps/checked?force=true")).send().await.unwrap().status(), 200);
    eventually(WAIT, "the app's processes to be gone", || async {
        let tasks: Value = http.get(format!("{base}/v2/tasks")).send().await.ok()?.json().await.ok()?;
        tasks["tasks"].as_array()?.is_empty().then_some(())
    })
    .await;
}
