//! Hostile input against real processes: every request that once took a leader down (or
//! could, by reading), and others in the same vein, answered with a 4xx or an
//! INVALID_ARGUMENT — and the cluster still serving afterwards: every process running and
//! none having panicked, both gateways deploying and scaling a new app, `GET /v2/groups`
//! answering. And a leader whose
//! term panics resigns at once and exits non-zero, so a standby takes over without waiting
//! for its session to expire.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use marina_proto::agent::v1::{AgentInfo, CommandSpec, Resources};
use marina_proto::master::v1 as master;
use marina_tests::processes::Coord;
use marina_tests::scheduler::command_task;
use marina_tests::services::Service;
use marina_tests::{
    CoordCluster, CoordProcesses, ProcessCluster, TestDir, TestProcess, TestScheduler, Topology, eventually,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);
const PROCESS_AGENT: &[(&str, &str)] =
    &[("MARINA_AGENT_RESOURCES__CPUS", "4"), ("MARINA_AGENT_RESOURCES__MEM_MB", "4096")];

/// One hostile REST request: what it is, and what must come back.
struct Case {
    what: &'static str,
    method: Method,
    path: &'static str,
    body: String,
    status: u16,
    /// Text the answer must contain (the field it names).
    names: &'static str,
}

fn case(
    what: &'static str,
    method: Method,
    path: &'static str,
    body: impl Into<String>,
    status: u16,
    names: &'static str,
) -> Case {
    Case { what, method, path, body: body.into(), status, names }
}

fn rest_cases() -> Vec<Case> {
    let long_id = format!("/{}", ["abcdefghi"; 100].join("/"));
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let too_big = json!({ "id": "big", "cmd": "x".repeat(2 << 20) }).to_string();
    let many_apps: Vec<Value> = (0..1001).map(|i| json!({ "id": format!("a{i}"), "cmd": "sleep 1" })).collect();
    vec![
        case(
            "a backoff of i64::MAX seconds (once panicked the leader)",
            Method::POST,
            "/v2/apps",
            json!({ "id": "/crash", "cmd": "false", "backoffSeconds": 9_223_372_036_854_775_807u64 }).to_string(),
            422,
            "/backoffSeconds",
        ),
        case(
            "a 1,000-character id (once stopped every launch)",
            Method::POST,
            "/v2/apps",
            json!({ "id": long_id, "cmd": "sleep 1" }).to_string(),
            422,
            "/id",
        ),
        case(
            "a million instances that ask for nothing (once ran the leader out of memory)",
            Method::POST,
            "/v2/apps",
            json!({ "id": "/many", "cmd": "sleep 1", "instances": 1_000_000, "cpus": 0, "mem": 0, "disk": 0 })
                .to_string(),
            422,
            "/instances",
        ),
        case(
            "an env name with '='",
            Method::POST,
            "/v2/apps",
            json!({ "id": "/env", "cmd": "sleep 1", "env": { "A=B": "c" } }).to_string(),
            422,
            "/env(A=B)",
        ),
        case(
            "a NUL in the command",
            Method::POST,
            "/v2/apps",
            json!({ "id": "/nul", "cmd": "sleep\u{0}1" }).to_string(),
            422,
            "/cmd",
        ),
        case(
            "a health check every 0 seconds",
            Method::POST,
            "/v2/apps",
            json!({ "id": "/spin", "cmd": "sleep 1", "healthChecks": [{ "protocol": "TCP", "intervalSeconds": 0 }] })
                .to_string(),
            422,
            "intervalSeconds",
        ),
        case(
            "not a number",
            Method::POST,
            "/v2/apps",
            json!({ "id": "/nan", "cmd": "sleep 1", "cpus": "NaN" }).to_string(),
            422,
            "/cpus",
        ),
        case("not JSON", Method::POST, "/v2/apps", "{\"id\": ", 400, "Invalid JSON"),
        case("JSON nested 100,000 deep", Method::POST, "/v2/apps", nested, 400, "Invalid JSON"),
        case("a body over the limit", Method::POST, "/v2/apps", too_big, 413, ""),
        case(
            "a group of 1,001 apps",
            Method::POST,
            "/v2/groups",
            json!({ "id": "/flood", "apps": many_apps }).to_string(),
            422,
            "/apps",
        ),
        case(
            "a flag that is not a boolean",
            Method::PUT,
            "/v2/apps/tasks/web?force=maybe",
            json!({ "instances": 1 }).to_string(),
            400,
            "",
        ),
        case(
            "an app id that climbs out (folded to /etc, which is no app)",
            Method::GET,
            "/v2/apps/..%2F..%2Fetc",
            "",
            404,
            "",
        ),
        case("a NUL in a group id", Method::DELETE, "/v2/groups/a%00b", "", 400, ""),
        case(
            "scaling beyond the cluster's cap",
            Method::PUT,
            "/v2/apps/tasks/web",
            json!({ "instances": 2_147_483_647 }).to_string(),
            422,
            "limits.max_instances",
        ),
        case("an unknown app", Method::POST, "/v2/apps/nothing/restart", "", 404, ""),
    ]
}

async fn send(http: &reqwest::Client, gateway: &Service, method: Method, path: &str, body: String) -> (u16, String) {
    try_send(http, gateway, method, path, body).await.expect("the gateway answers")
}

async fn try_send(
    http: &reqwest::Client,
    gateway: &Service,
    method: Method,
    path: &str,
    body: String,
) -> Result<(u16, String), reqwest::Error> {
    let response = http
        .request(method, format!("http://{}{path}", gateway.address))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    Ok((response.status().as_u16(), response.text().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_and_the_cluster_keeps_serving() {
    let topology = Topology::new(2, 1, "process", 2).coord(Coord::Processes(3)).agent_env(PROCESS_AGENT);
    let mut cluster = ProcessCluster::start(topology).await;
    let gateway_leader = cluster.leading_gateway().await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    // An app whose group has a reserved word as its name: `GET /v2/groups` once panicked on it.
    let (status, body) = send(
        &http,
        &cluster.gateways[0],
        Method::POST,
        "/v2/apps",
        json!({ "id": "/tasks/web", "cmd": "sleep 1000", "cpus": 0.01, "mem": 16 }).to_string(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for path in ["/v2/groups", "/v2/groups/tasks"] {
        let (status, body) = send(&http, &cluster.gateways[1], Method::GET, path, String::new()).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        assert!(body.contains("/tasks/web"), "GET {path}: {body}");
    }

    // Each through either gateway: the standby forwards to the leader.
    for (index, case) in rest_cases().into_iter().enumerate() {
        let gateway = &cluster.gateways[index % 2];
        // Each on a connection of its own: one whose body was cut short (a 413 is answered
        // as soon as the size is known, the rest never read) may fail the next request sent
        // on it, were it pooled.
        let once =
            reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(10)).build().unwrap();
        let (status, body) = match try_send(&once, gateway, case.method.clone(), case.path, case.body).await {
            Ok(answer) => answer,
            // A client still sending such a body may see the close before the answer.
            Err(error) if case.status == 413 && error.is_request() => continue,
            Err(error) => panic!("{}: {} {} failed: {error:?}", case.what, case.method, case.path),
        };
        assert_eq!(status, case.status, "{}: {} {} answered {body}", case.what, case.method, case.path);
        assert!(body.contains(case.names), "{}: the answer names {:?}: {body}", case.what, case.names);
    }

    // The gRPC apps API refuses what REST refuses.
    let mut apps =
        marina_proto::apps::v1::apps_client::AppsClient::connect(format!("http://{}", cluster.gateways[1].address))
            .await
            .unwrap();
    let json = json!({ "id": "/grpc", "cmd": "false", "backoffSeconds": 9_223_372_036_854_775_807u64 }).to_string();
    let refused = apps.create_app(marina_proto::apps::v1::CreateAppRequest { json }).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("/backoffSeconds"), "{refused:?}");

    // A valid app at the very edge: it fails at once, and its backoff of 68 years must not
    // overflow the leader's clock arithmetic.
    let edge = json!({
        "id": "/edge", "cmd": "exit 3", "cpus": 0.01, "mem": 16,
        "backoffSeconds": 2_147_483_647, "maxLaunchDelaySeconds": 2_147_483_647, "backoffFactor": 1e308,
    });
    let (status, body) = send(&http, &cluster.gateways[1], Method::POST, "/v2/apps", edge.to_string()).await;
    assert_eq!(status, 201, "{body}");
    let failure = eventually(WAIT, "the edge app's task to fail and be recorded", || async {
        let app = cluster.gateways[gateway_leader].get_json("/v2/apps/edge").await?;
        let failure = app["app"]["lastTaskFailure"].clone();
        (failure["state"] == "TASK_FAILED").then_some(failure)
    })
    .await;
    assert!(failure["taskId"].as_str().is_some_and(|id| id.starts_with("edge.")), "{failure}");
    // Its replacement waits in the queue (once the next round sees the instance missing).
    let delayed = eventually(WAIT, "the edge app to wait in the queue", || async {
        let queue = cluster.gateways[gateway_leader].get_json("/v2/queue").await?;
        queue["queue"].as_array()?.iter().find(|q| q["app"]["id"] == "/edge").cloned()
    })
    .await;
    assert!(delayed["delay"]["timeLeftSeconds"].as_u64() > Some(86_400), "{delayed}");

    hostile_master_requests(cluster.ca(), &cluster.masters).await;
    hostile_coord_requests(cluster.coord_processes()).await;

    // Nothing above took a service down: every process runs, none panicked, each answers,
    // and a gateway and a master lead (leadership itself may move: that is not a failure).
    for service in cluster.masters.iter_mut().chain(cluster.agents.iter_mut()).chain(cluster.gateways.iter_mut()) {
        assert_eq!(service.exit_status(), None, "{} exited:\n{}", service.name, service.log());
        assert!(!service.log().contains("panicked"), "{} panicked:\n{}", service.name, service.log());
        service.wait_healthy().await;
    }
    cluster.leading_gateway().await;
    cluster.leader_with_agents(1, 0).await;

    // Both gateways still deploy and scale.
    let app = json!({ "id": "/after", "cmd": "sleep 1000", "cpus": 0.01, "mem": 16, "instances": 1 });
    let (status, body) = send(&http, &cluster.gateways[0], Method::POST, "/v2/apps", app.to_string()).await;
    assert_eq!(status, 201, "{body}");
    eventually(WAIT, "the new app to run", || async {
        let app = cluster.gateways[1].get_json("/v2/apps/after").await?;
        (app["app"]["tasksRunning"] == 1 && app["app"]["deployments"].as_array()?.is_empty()).then_some(())
    })
    .await;
    let (status, body) =
        send(&http, &cluster.gateways[1], Method::PUT, "/v2/apps/after", json!({ "instances": 2 }).to_string()).await;
    assert_eq!(status, 200, "{body}");
    eventually(WAIT, "the new app to run 2 tasks", || async {
        let app = cluster.gateways[0].get_json("/v2/apps/after").await?;
        (app["app"]["tasksRunning"] == 2).then_some(())
    })
    .await;
    for gateway in &cluster.gateways {
        let (status, body) = send(&http, gateway, Method::GET, "/v2/groups", String::new()).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("/after"), "{body}");
    }
}

/// The master's gRPC: non-finite refuse filters, tasks whose ids or environments no process
/// could be given, an agent describing itself with numbers that are not.
async fn hostile_master_requests(ca: &marina_tests::TestCa, masters: &[Service]) {
    let addresses: Vec<String> = masters.iter().map(|m| m.address.clone()).collect();
    let mut scheduler = TestScheduler::subscribe(ca, &addresses, "hostile", None).await;
    let mut client = scheduler.client();
    for refuse_seconds in [f64::NAN, f64::INFINITY, -1.0] {
        let request = master::DeclineRequest {
            framework_id: scheduler.framework_id.clone(),
            offer_ids: vec!["offer-x".into()],
            filters: Some(master::Filters { refuse_seconds }),
        };
        let refused = client.decline(request).await.expect_err("a refuse filter that is not a duration");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refuse_seconds}: {refused:?}");
        assert!(refused.message().contains("refuse_seconds"), "{refused:?}");
    }
    let mut environment = std::collections::HashMap::new();
    environment.insert("A=B".to_owned(), "c".to_owned());
    let bad_tasks = [
        command_task("../escape", "sleep 1", 0.01, 16.0),
        command_task("nul\0id", "sleep 1", 0.01, 16.0),
        command_task(&"x".repeat(256), "sleep 1", 0.01, 16.0),
        marina_proto::agent::v1::TaskInfo {
            command: Some(CommandSpec { shell: true, value: "sleep 1".into(), environment, ..Default::default() }),
            ..command_task("env", "sleep 1", 0.01, 16.0)
        },
        command_task("nan", "sleep 1", f64::NAN, 16.0),
    ];
    for task in bad_tasks {
        scheduler.pump_until(WAIT, "an offer", |s| !s.offers.is_empty()).await;
        let offer = scheduler.offers[0].offer_id.clone();
        let refused = scheduler.accept(vec![offer], vec![task.clone()]).await.expect_err("a task no agent could run");
        assert_eq!(refused.code(), Code::InvalidArgument, "{:?}: {refused:?}", task.task_id);
    }
    // A refusal for ever is a year: accepted, and this framework gets no more offers.
    scheduler.pump_until(WAIT, "an offer", |s| !s.offers.is_empty()).await;
    let offer_ids: Vec<String> = scheduler.offers.drain(..).map(|o| o.offer_id).collect();
    let request = master::DeclineRequest {
        framework_id: scheduler.framework_id.clone(),
        offer_ids,
        filters: Some(master::Filters { refuse_seconds: 1e300 }),
    };
    client.decline(request).await.expect("a very long refusal is capped, not refused");

    // An agent whose resources are not numbers is refused at the door.
    let leader = scheduler.leader.clone();
    let forged = ca.tls(marina_daemon::tls::Role::Agent, Some("forged"));
    let mut link = master::agent_link_client::AgentLinkClient::new(marina_tests::tls::channel(&forged, &leader));
    let register = master::AgentMessage {
        kind: Some(master::agent_message::Kind::Register(master::Register {
            info: Some(AgentInfo {
                hostname: "forged".into(),
                address: "127.0.0.1:1".into(),
                resources: Some(Resources { cpus: f64::NAN, mem_mb: f64::INFINITY, disk_mb: -1.0, ports: Vec::new() }),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let refused = link.attach(futures::stream::iter([register])).await.expect_err("an agent of NaN cpus");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
}

/// Coord's gRPC: `rm -r /`, a path beyond the limit, sessions of no or endless life.
async fn hostile_coord_requests(coord: &CoordProcesses) {
    use marina_proto::coord::v1 as pb;
    let leader = coord.leader().await;
    let mut client =
        pb::coord_client::CoordClient::new(marina_tests::tls::channel(&coord.ca().operator(), coord.address(leader)));
    let refused = client
        .delete(pb::DeleteRequest { path: "/".into(), recursive: true, ..Default::default() })
        .await
        .expect_err("rm -r /");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let long = format!("/{}", "x".repeat(4096));
    let refused = client
        .set(pb::SetRequest { path: long, data: b"x".to_vec().into(), upsert: true, ..Default::default() })
        .await
        .expect_err("a path beyond the limit");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    for ttl_ms in [0, u64::MAX] {
        let refused = client
            .create_session(pb::CreateSessionRequest { ttl_ms, disconnect_grace_ms: u64::MAX })
            .await
            .expect_err("a session TTL out of bounds");
        assert_eq!(refused.code(), Code::InvalidArgument, "{ttl_ms}: {refused:?}");
    }
    // The marina tree is still there.
    let listing = client.list(pb::ListRequest { path: "/marina".into(), ..Default::default() }).await.unwrap();
    assert!(!listing.into_inner().children.is_empty());
}

/// Waits for a line of a fixture's stdout starting with `prefix`.
async fn expect_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>, prefix: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line {prefix:?} within {WAIT:?}"))
            .expect("reading the fixture's output")
            .unwrap_or_else(|| panic!("the fixture exited before printing {prefix:?}"));
        if line.starts_with(prefix) {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_term_panics_resigns_at_once_and_exits_non_zero() {
    const TTL_MS: u64 = 10_000;
    let coord = CoordCluster::start(1).await;
    let dir = TestDir::new();
    let url = coord.url();
    let panicking = PathBuf::from(env!("CARGO_BIN_EXE_marina-test-panicking-leader"));
    let args = |name: &str, last: &str| {
        vec![
            url.to_string(),
            "/panic/members".into(),
            name.into(),
            TTL_MS.to_string(),
            last.into(),
            coord.ca().operator_dir(),
        ]
    };
    let panic_file = dir.path().join("panic");
    let (mut leader, stdout) = TestProcess::spawn_piped(
        "panicking",
        &panicking,
        &args("panicking", &panic_file.display().to_string()),
        &dir.path().join("panicking.log"),
    );
    let mut leader_lines = BufReader::new(stdout).lines();
    expect_line(&mut leader_lines, "leading").await;

    let standby_binary = PathBuf::from(env!("CARGO_BIN_EXE_marina-test-candidate"));
    let standby_args = vec![
        url.to_string(),
        "/panic/members".into(),
        "standby".into(),
        TTL_MS.to_string(),
        "300".into(),
        coord.ca().operator_dir(),
    ];
    let (_standby, stdout) =
        TestProcess::spawn_piped("standby", &standby_binary, &standby_args, &dir.path().join("standby.log"));
    let mut standby_lines = BufReader::new(stdout).lines();
    expect_line(&mut standby_lines, "standby").await;
    // The bug strikes once a standby waits.
    std::fs::write(&panic_file, "").unwrap();

    let status = leader.wait_exit(WAIT).await.expect("the panicking leader exits");
    let exited = Instant::now();
    assert_eq!(status.code(), Some(1), "a failed service exits non-zero: {status:?}\n{}", leader.log());
    expect_line(&mut standby_lines, "leading").await;
    let handover = exited.elapsed();
    assert!(
        handover < Duration::from_millis(TTL_MS / 2),
        "the standby led {handover:?} after the exit: the panicking leader did not resign (its session's TTL is {TTL_MS} ms)"
    );
    let log = leader.log();
    assert!(log.contains("a bug in the leader's term"), "the panic is logged:\n{log}");
    assert!(log.contains("stopped after a fatal error"), "the exit says why:\n{log}");
}
