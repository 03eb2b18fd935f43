//! What no caller can make the cluster do unless its operator allows it: the container
//! policy, refused at the gateway with a 422 naming the field and enforced again by every
//! agent at launch; process tasks run as their user, never as root by default.

use std::time::Duration;

use marina_agent::RuntimeChoice;
use marina_tests::{MarinaCluster, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn post(http: &reqwest::Client, base: &str, app: &Value) -> (u16, Value) {
    let response = http.post(format!("{base}/v2/apps")).json(app).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Each thing a container may ask beyond the default confinement is refused by default,
/// with Marathon's 422 naming the field and the setting that would allow it; what tightens
/// confinement, and host networking (Marathon's default), are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_what_the_container_policy_does_not_allow() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).gateways(1).start().await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    let image_app = |id: &str, mut docker: Value| {
        docker["image"] = json!("marina-test/busybox");
        json!({ "id": id, "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "container": { "type": "DOCKER", "docker": docker } })
    };
    let cases = [
        (image_app("/privileged", json!({ "privileged": true })), "/container/docker/privileged", "allow_privileged"),
        (
            image_app("/caps", json!({ "parameters": [{ "key": "cap-add", "value": "SYS_ADMIN" }] })),
            "/container/docker/parameters(0)",
            "allowed_capabilities",
        ),
        (
            image_app(
                "/unconfined",
                json!({ "parameters": [
                { "key": "security-opt", "value": "no-new-privileges" },
                { "key": "security-opt", "value": "seccomp=unconfined" },
            ] }),
            ),
            "/container/docker/parameters(1)",
            "allow_security_options",
        ),
        (
            image_app("/sysctl", json!({ "parameters": [{ "key": "sysctl", "value": "net.ipv4.ip_forward=1" }] })),
            "/container/docker/parameters(0)",
            "allow_sysctls",
        ),
        (
            json!({ "id": "/volume", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "container": {
                "type": "DOCKER", "docker": { "image": "marina-test/busybox" },
                "volumes": [{ "containerPath": "/host", "hostPath": "/", "mode": "RW" }] } }),
            "/container/volumes(0)/hostPath",
            "allow_host_volumes",
        ),
        (json!({ "id": "/root", "cmd": "id", "user": "root", "cpus": 0.1, "mem": 16 }), "/user", "allow_root"),
    ];
    for (app, path, setting) in cases {
        let (status, body) = post(&http, &base, &app).await;
        assert_eq!(status, 422, "{app}: {body}");
        let details = body["details"].as_array().expect("details");
        let detail = details.iter().find(|d| d["path"] == path).unwrap_or_else(|| panic!("{path} in {body}"));
        assert!(detail["errors"].to_string().contains(setting), "{path} names {setting}: {body}");
        assert_eq!(details.len(), 1, "only what the policy refuses: {body}");
    }
    let tightened = image_app(
        "/tight",
        json!({ "network": "HOST", "parameters": [
            { "key": "cap-drop", "value": "ALL" },
            { "key": "security-opt", "value": "no-new-privileges" },
        ] }),
    );
    let (status, body) = post(&http, &base, &tightened).await;
    assert_eq!(status, 201, "{body}");
}

/// The agent enforces its own policy whatever the gateway lets through: an app adding a
/// capability the gateway allows fails on an agent that does not (its last failure says
/// why), and runs with the capability on the agent that allows it. (A privileged container
/// is refused the same way; this machine's Docker cannot run one, so a capability shows the
/// allowed path.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_enforces_its_policy_and_runs_what_it_allows() {
    marina_tests::docker::ensure_test_images();
    let net_admin = || vec!["NET_ADMIN".to_owned()];
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(2)
        .runtime(RuntimeChoice::Docker)
        .agent_config(move |index, config| {
            if index == 0 {
                config.policy.allowed_capabilities = net_admin();
            }
        })
        .gateway_config(move |config| config.policy.allowed_capabilities = net_admin())
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
    let net_admin_on = |id: &str, host: &str| {
        json!({ "id": id, "cmd": "grep CapEff /proc/self/status; exec sleep 1000", "cpus": 0.1, "mem": 16,
                "constraints": [["hostname", "CLUSTER", host]],
                "container": { "type": "DOCKER", "docker": { "image": "marina-test/busybox",
                    "parameters": [{ "key": "cap-add", "value": "NET_ADMIN" }] } } })
    };

    let (status, body) = post(&http, &base, &net_admin_on("/refused", "agent-1.test")).await;
    assert_eq!(status, 201, "{body}");
    let failure = eventually(WAIT, "the refusing agent's reason as the app's last failure", || async {
        let app: Value = http.get(format!("{base}/v2/apps/refused")).send().await.ok()?.json().await.ok()?;
        let failure = app["app"]["lastTaskFailure"].clone();
        failure.is_object().then_some(failure)
    })
    .await;
    let message = failure["message"].as_str().unwrap_or_default();
    assert!(message.contains("container policy refuses") && message.contains("NET_ADMIN"), "{failure}");
    assert_eq!(failure["host"], "agent-1.test");

    let (status, body) = post(&http, &base, &net_admin_on("/allowed", "agent-0.test")).await;
    assert_eq!(status, 201, "{body}");
    let task = eventually(WAIT, "the task to run on the agent that allows it", || async {
        let app: Value = http.get(format!("{base}/v2/apps/allowed")).send().await.ok()?.json().await.ok()?;
        let task = app["app"]["tasks"].as_array()?.first()?.clone();
        (task["state"] == "TASK_RUNNING").then_some(task)
    })
    .await;
    let id = task["id"].as_str().unwrap();
    let container = std::process::Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=marina.task_id={id}")])
        .output()
        .unwrap();
    let container = String::from_utf8_lossy(&container.stdout).trim().to_owned();
    let added = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{json .HostConfig.CapAdd}}", &container])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&added.stdout).trim(), r#"["NET_ADMIN"]"#);
    let logs = std::process::Command::new("docker").args(["logs", &container]).output().unwrap();
    let effective = String::from_utf8_lossy(&logs.stdout);
    let bits = effective.trim().trim_start_matches("CapEff:").trim();
    let bits = u64::from_str_radix(bits, 16).unwrap_or_else(|_| panic!("CapEff in {effective:?}"));
    assert_ne!(bits & (1 << 12), 0, "CAP_NET_ADMIN (12) is effective in the task: {effective}");
}

/// On a root agent a process task runs as its app's `user`, and one without a user as the
/// policy's default user (`nobody`), never as root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_tasks_run_as_their_user_and_never_as_root_by_default() {
    assert!(nix::unistd::geteuid().is_root(), "a root agent is what this tests: run the tests as root, as CI does");
    let cluster =
        MarinaCluster::builder().masters(1).agents(1).runtime(RuntimeChoice::Process).gateways(1).start().await;
    let base = cluster.gateway_url(0);
    let http = reqwest::Client::new();
    for (id, user) in [("/default", None), ("/daemon", Some("daemon"))] {
        let mut app = json!({ "id": id, "cmd": "id -un; exec sleep 1000", "cpus": 0.1, "mem": 16 });
        if let Some(user) = user {
            app["user"] = json!(user);
        }
        let (status, body) = post(&http, &base, &app).await;
        assert_eq!(status, 201, "{body}");
    }
    let sandboxes = cluster.dir.path().join("agent-0/sandboxes");
    for (id, expected) in [("default", "nobody"), ("daemon", "daemon")] {
        eventually(WAIT, &format!("/{id}'s task to say who it runs as"), || async {
            let app: Value = http.get(format!("{base}/v2/apps/{id}")).send().await.ok()?.json().await.ok()?;
            let task = app["app"]["tasks"].as_array()?.first()?["id"].as_str()?.to_owned();
            let sandbox = marina_agent::checkpoint::sandbox_name(&task).ok()?;
            let stdout = std::fs::read_to_string(sandboxes.join(sandbox).join("stdout")).ok()?;
            (stdout.trim() == expected).then_some(())
        })
        .await;
    }
}
