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
        json!({ "id": id, "cmd": "sleep 1000", "cpus": 0.1, "mem": 16,
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
    // The container's first process: its capabilities are the container's (read with exec,
    // not from the task's output, which may not have reached the log yet).
    let status = std::process::Command::new("docker")
        .args(["exec", &container, "grep", "CapEff", "/proc/1/status"])
        .output()
        .unwrap();
    let effective = String::from_utf8_lossy(&status.stdout);
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

const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";
const READER_TOKEN: &str = "0123456789abcdef0123456789abcdef-reader";

/// Two gateways that require Marathon-style credentials (`ops:s3cret`) or a bearer token.
async fn guarded_cluster() -> MarinaCluster {
    MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .gateways(2)
        .gateway_config(|config| {
            config.auth.http_credentials = vec!["ops:s3cret".into()];
            config.auth.tokens = vec![
                marina_gateway::Token { token: ADMIN_TOKEN.into(), role: marina_gateway::Role::Admin },
                marina_gateway::Token { token: READER_TOKEN.into(), role: marina_gateway::Role::ReadOnly },
            ];
        })
        .start()
        .await
}

fn app(id: &str) -> Value {
    json!({ "id": id, "cmd": "sleep 1000", "cpus": 0.1, "mem": 16 })
}

/// With credentials configured, every REST call but `/ping` and `/health` needs them: none
/// or wrong ones are a 401 that asks for Basic (as Marathon answers, so clients and browsers
/// prompt), a read-only token reads but may not write (403); a standby checks them too and
/// forwards the caller's credentials to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_callers_need_credentials_and_read_only_ones_only_read() {
    let cluster = guarded_cluster().await;
    let leader = cluster.leading_gateway_index().await;
    let standby = 1 - leader;
    let http = reqwest::Client::new();
    for gateway in [leader, standby] {
        let base = cluster.gateway_url(gateway);
        for open in ["/ping", "/health"] {
            assert_eq!(http.get(format!("{base}{open}")).send().await.unwrap().status(), 200, "{open} stays open");
        }
        let anonymous = http.get(format!("{base}/v2/apps")).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.starts_with("Basic "), "{challenge}");
        let wrong = http.get(format!("{base}/v2/apps")).basic_auth("ops", Some("guess")).send().await.unwrap();
        assert_eq!(wrong.status(), 401);
        let bad_token = http.get(format!("{base}/v2/apps")).bearer_auth("not-a-token").send().await.unwrap();
        assert_eq!(bad_token.status(), 401);
        // The web UI: a browser is asked to log in, and then served.
        assert_eq!(http.get(format!("{base}/")).send().await.unwrap().status(), 401);
        let ui = http.get(format!("{base}/")).basic_auth("ops", Some("s3cret")).send().await.unwrap();
        assert_eq!(ui.status(), 200);
        assert!(ui.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        let reader = http.get(format!("{base}/v2/apps")).bearer_auth(READER_TOKEN).send().await.unwrap();
        assert_eq!(reader.status(), 200, "a read-only token reads");
        let refused = http.post(format!("{base}/v2/apps")).bearer_auth(READER_TOKEN).json(&app("/nope")).send();
        assert_eq!(refused.await.unwrap().status(), 403, "a read-only token may not write");
    }
    let created = http
        .post(format!("{}/v2/apps", cluster.gateway_url(standby)))
        .basic_auth("ops", Some("s3cret"))
        .json(&app("/through-standby"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "the standby forwards the caller's credentials to the leader");
    let created = http
        .post(format!("{}/v2/apps", cluster.gateway_url(leader)))
        .bearer_auth(ADMIN_TOKEN)
        .json(&app("/by-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let listed: Value = http
        .get(format!("{}/v2/apps", cluster.gateway_url(leader)))
        .basic_auth("ops", Some("s3cret"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = listed["apps"].as_array().unwrap().iter().filter_map(|a| a["id"].as_str()).collect();
    assert_eq!(ids, ["/by-token", "/through-standby"]);
}

/// A web page cannot make an operator's browser change apps: whatever the credentials, a
/// write whose body is not JSON (a form, `text/plain`, no type) is 415, and a write from
/// another origin is 403; the same request from the gateway's own origin (the web UI) goes
/// through. With no credentials configured the same holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_cannot_be_made_to_write_across_sites() {
    let guarded = guarded_cluster().await;
    let open = MarinaCluster::builder().masters(1).agents(1).gateways(1).start().await;
    let http = reqwest::Client::new();
    for (base, login) in [(guarded.gateway_url(0), true), (open.gateway_url(0), false)] {
        let authorized = |request: reqwest::RequestBuilder| {
            if login { request.basic_auth("ops", Some("s3cret")) } else { request }
        };
        let body = app("/csrf").to_string();
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let request = http.post(format!("{base}/v2/apps")).header("content-type", content_type).body(body.clone());
            let status = authorized(request).send().await.unwrap().status();
            assert_eq!(status, 415, "{content_type} at {base}");
        }
        let untyped = authorized(http.post(format!("{base}/v2/apps")).body(body.clone())).send().await.unwrap();
        assert_eq!(untyped.status(), 415, "a body of no type");
        let host = base.trim_start_matches("http://");
        let cross = http
            .post(format!("{base}/v2/apps"))
            .header("content-type", "application/json")
            .header("origin", "http://attacker.example")
            .body(body.clone());
        assert_eq!(authorized(cross).send().await.unwrap().status(), 403);
        let same = http
            .post(format!("{base}/v2/apps"))
            .header("content-type", "application/json; charset=utf-8")
            .header("origin", format!("http://{host}"))
            .body(body.clone());
        assert_eq!(authorized(same).send().await.unwrap().status(), 201, "the web UI's own origin");
        // Writes without a body need no type (Marathon's restart, a delete).
        let restart = authorized(http.post(format!("{base}/v2/apps/csrf/restart?force=true"))).send();
        assert_eq!(restart.await.unwrap().status(), 200);
    }
}

/// A gRPC request carrying `authorization` metadata.
fn with<T>(authorization: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", authorization.parse().unwrap());
    request
}

/// The gRPC apps API takes the same credentials as `authorization` metadata: none is
/// UNAUTHENTICATED, a read-only token may list but not create (PERMISSION_DENIED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_need_the_same_credentials() {
    use marina_proto::apps::v1 as pb;
    use marina_proto::apps::v1::apps_client::AppsClient;
    use tonic::Code;

    let cluster = guarded_cluster().await;
    let leader = cluster.leading_gateway_index().await;
    let mut client = AppsClient::connect(cluster.gateway_url(leader)).await.unwrap();
    let create = || pb::CreateAppRequest { json: app("/grpc").to_string() };
    let refused = client.create_app(create()).await.expect_err("no credentials");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let reader = format!("Bearer {READER_TOKEN}");
    client.list_apps(with(&reader, pb::ListAppsRequest::default())).await.expect("a read-only token lists");
    let refused = client.create_app(with(&reader, create())).await.expect_err("a read-only token");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let basic = format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ops:s3cret"));
    client.create_app(with(&basic, create())).await.expect("Marathon's credentials");
    // Health stays open for load balancers and orchestrators.
    let channel =
        tonic::transport::Endpoint::from_shared(cluster.gateway_url(leader)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health is open");
}

/// Marathon's Python client with a username and password, unchanged: refused without them,
/// and its whole journey (create, list, scale, kill, versions, delete) with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathons_python_client_logs_in_with_http_credentials() {
    let cluster = guarded_cluster().await;
    let url = cluster.gateway_url(cluster.leading_gateway_index().await);
    let steps = ["refused without credentials", "created /py-app", "listed 1", "scaled 3", "killed", "deleted"];
    marina_tests::python::run_marathon_client(&url, Some("ops:s3cret"), &steps).await;
}

/// Every service refuses to serve plaintext beyond loopback unless told so with
/// `--insecure`, which it then warns about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_or_an_open_gateway_beyond_loopback_needs_insecure() {
    let dir = marina_tests::TestDir::new();
    for service in ["marina-coord", "marina-master", "marina-agent", "marina-gateway"] {
        let binary = marina_tests::binaries::binary(service);
        let work = dir.path().join(service);
        let mut args: Vec<String> = vec!["--listen".into(), "0.0.0.0:0".into()];
        let dir_flag = if service == "marina-coord" { "--data-dir" } else { "--work-dir" };
        args.extend([dir_flag.into(), work.display().to_string()]);
        if service == "marina-agent" {
            args.extend(["--runtime".into(), "sim".into()]);
        }
        let refused = std::process::Command::new(&binary).args(&args).output().unwrap();
        assert!(!refused.status.success(), "{service} served plaintext on 0.0.0.0");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("without TLS") && stderr.contains("--insecure"), "{service}: {stderr}");

        let address_file = dir.path().join(format!("{service}.address"));
        args.extend(["--insecure".into(), "--address-file".into(), address_file.display().to_string()]);
        let log = dir.path().join(format!("{service}.log"));
        let process = marina_tests::TestProcess::spawn(service, &binary, &args, &[], &log);
        eventually(WAIT, &format!("{service} to listen with --insecure"), || async {
            let listening = std::fs::read_to_string(&address_file).is_ok_and(|a| a.starts_with("0.0.0.0:"));
            (listening && process.log().contains("--insecure: listening beyond loopback without TLS")).then_some(())
        })
        .await;
    }

    // TLS does not say who calls the gateway's API (its callers need no certificate): beyond
    // loopback it needs credentials too.
    let ca = marina_tests::TestCa::new(&dir.path().join("tls"));
    let tls = ca.env("gateway", marina_daemon::tls::Role::Gateway, Some("1"));
    let work = dir.path().join("gateway-tls").display().to_string();
    let args = ["--listen", "0.0.0.0:0", "--work-dir", &work];
    let gateway = marina_tests::binaries::binary("marina-gateway");
    let refused = std::process::Command::new(&gateway).args(args).envs(tls.clone()).output().unwrap();
    assert!(!refused.status.success(), "a gateway open to anyone on 0.0.0.0");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no credentials configured") && stderr.contains("--insecure"), "{stderr}");
    let address_file = dir.path().join("gateway-tls.address");
    let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    args.extend(["--address-file".into(), address_file.display().to_string()]);
    let mut envs = tls;
    envs.push(("MARINA_GATEWAY_AUTH__HTTP_CREDENTIALS".into(), "ops:secret".into()));
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let log = dir.path().join("gateway-tls.log");
    let _gateway = marina_tests::TestProcess::spawn("gateway-tls", &gateway, &args, &envs, &log);
    eventually(WAIT, "the gateway with TLS and credentials to listen on 0.0.0.0", || async {
        std::fs::read_to_string(&address_file).is_ok_and(|a| a.starts_with("0.0.0.0:")).then_some(())
    })
    .await;
}
