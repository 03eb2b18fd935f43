//! What operators' tools see of a running cluster (real processes of every service):
//! - one deployment is one distributed trace, from the REST call through the gateway, the
//!   master and the agent, received by an OTLP collector, with the agent's logs carrying
//!   its trace id;
//! - every `/metrics` passes Prometheus' own linter (`promtool check metrics`);
//! - every gRPC port answers health checks and reflection from Python's gRPC.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use marina_tests::otlp::{OtlpReceiver, ReceivedSpan};
use marina_tests::processes::Coord;
use marina_tests::services::Service;
use marina_tests::{ProcessCluster, Topology, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// A coord node, a master, a sim agent and a gateway, all exporting to `otlp` (when given),
/// spans flushed every 100 ms rather than every 5 s.
async fn cluster(otlp: Option<&OtlpReceiver>) -> ProcessCluster {
    let endpoint = otlp.map(OtlpReceiver::endpoint).unwrap_or_default();
    // Without an exporter, trace ids are asked for (`log.trace_ids`) so logs still carry them.
    let trace_ids = if otlp.is_none() { "true" } else { "false" };
    let export = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("MARINA_COORD_LOG__TRACE_IDS", trace_ids),
        ("MARINA_MASTER_LOG__TRACE_IDS", trace_ids),
        ("MARINA_AGENT_LOG__TRACE_IDS", trace_ids),
        ("MARINA_GATEWAY_LOG__TRACE_IDS", trace_ids),
    ];
    let topology = Topology::new(1, 1, "sim", 1)
        .coord(Coord::Processes(1))
        .coord_env(&export)
        .master_env(&export)
        .agent_env(&export)
        .agent_env(&[("MARINA_AGENT_LOG__FORMAT", "json"), ("MARINA_AGENT_RESOURCES__CPUS", "4")])
        .gateway_env(&export);
    ProcessCluster::start(topology).await
}

fn span<'a>(trace: &'a [ReceivedSpan], service: &str, name: &str) -> Option<&'a ReceivedSpan> {
    trace.iter().find(|span| span.service == service && span.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_is_one_trace_across_gateway_master_and_agent() {
    let otlp = OtlpReceiver::start().await;
    let cluster = cluster(Some(&otlp)).await;
    eventually(WAIT, "the gateway to lead with a master", || async {
        let info = cluster.gateways[0].get_json("/v2/info").await?;
        (info["elected"] == true && info["frameworkId"].is_string()).then_some(())
    })
    .await;

    // The caller's own span: the trace starts on the client side, as a dashboard shows it.
    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let client_span = format!("{:016x}", fastrand::u64(1..));
    let response = reqwest::Client::new()
        .post(format!("http://{}/v2/apps", cluster.gateways[0].address))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&json!({ "id": "/traced", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

    let expected = [
        ("marina-gateway", "POST /v2/apps"),
        ("marina-gateway", "gateway.launch"),
        ("marina-master", "/marina.master.v1.Scheduler/Accept"),
        ("marina-agent", "agent.launch"),
        ("marina-agent", "runtime.start"),
        ("marina-coord", "coord.propose"),
        ("marina-coord", "coord.commit"),
        ("marina-master", "master.status_update"),
        ("marina-gateway", "gateway.status_update"),
    ];
    // One tree: every span's parent is the client's span or another span of the trace. Each
    // service exports in batches, so a span may arrive before its parent: the tree is
    // awaited whole (a span whose parent never comes fails the wait, naming the trace).
    let one_tree = |trace: &[ReceivedSpan]| {
        let ids: std::collections::HashSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
        trace.iter().all(|s| s.parent_span_id == client_span || ids.contains(s.parent_span_id.as_str()))
    };
    let trace = otlp
        .wait_for_trace(&trace_id, WAIT, |trace| {
            expected.iter().all(|(service, name)| span(trace, service, name).is_some())
                && trace.iter().filter(|s| s.name == "agent.launch").count() == 2
                // STARTING and RUNNING of both tasks, each routed and handled.
                && trace.iter().filter(|s| s.name == "gateway.status_update").count() == 4
                && one_tree(trace)
        })
        .await;
    let by_id: HashMap<&str, &ReceivedSpan> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for span in &trace {
        assert!(
            span.parent_span_id == client_span || by_id.contains_key(span.parent_span_id.as_str()),
            "{span:?} hangs off a span outside the trace: {trace:#?}"
        );
    }
    // The causal chain: request → launch → master accept → agent launch → runtime start.
    let post = span(&trace, "marina-gateway", "POST /v2/apps").unwrap();
    assert_eq!(post.parent_span_id, client_span);
    let launch = span(&trace, "marina-gateway", "gateway.launch").unwrap();
    assert_eq!(launch.parent_span_id, post.span_id);
    let accept = span(&trace, "marina-master", "/marina.master.v1.Scheduler/Accept").unwrap();
    assert_eq!(accept.parent_span_id, launch.span_id);
    let agent_launches: Vec<&ReceivedSpan> = trace.iter().filter(|s| s.name == "agent.launch").collect();
    for agent_launch in &agent_launches {
        let accepted_by = by_id[agent_launch.parent_span_id.as_str()];
        assert_eq!((accepted_by.service.as_str(), accepted_by.name.as_str()), ("marina-master", accept.name.as_str()));
    }
    let start = span(&trace, "marina-agent", "runtime.start").unwrap();
    assert!(agent_launches.iter().any(|l| l.span_id == start.parent_span_id), "{start:?}");
    // The app's definition was written to coord inside the request: the coord request,
    // its proposal, and the Raft entry that carried it.
    let propose = span(&trace, "marina-coord", "coord.propose").unwrap();
    let coord_request = by_id[propose.parent_span_id.as_str()];
    assert_eq!(
        (coord_request.service.as_str(), coord_request.parent_span_id.as_str()),
        ("marina-coord", post.span_id.as_str())
    );
    let commit = span(&trace, "marina-coord", "coord.commit").unwrap();
    assert_eq!(commit.parent_span_id, propose.span_id);
    // Status updates travel back in the same trace: agent → master → gateway → acknowledged.
    for routed in trace.iter().filter(|s| s.name == "master.status_update") {
        assert!(agent_launches.iter().any(|l| l.span_id == routed.parent_span_id), "{routed:?}");
    }
    for handled in trace.iter().filter(|s| s.name == "gateway.status_update") {
        assert_eq!(by_id[handled.parent_span_id.as_str()].name, "master.status_update");
    }
    // Acknowledgements are batched across updates (and traces): each call is a trace of
    // its own, linked to the handling of every update it acknowledges.
    let handled: Vec<&str> =
        trace.iter().filter(|s| s.name == "gateway.status_update").map(|s| s.span_id.as_str()).collect();
    eventually(WAIT, "the acknowledgement of this trace's updates, linked to them", || async {
        let everything = otlp.all();
        let batch = everything
            .iter()
            .find(|s| s.name == "gateway.acknowledge" && s.links.iter().any(|l| handled.contains(&l.as_str())))?;
        everything
            .iter()
            .any(|s| s.name == "/marina.master.v1.Scheduler/Acknowledge" && s.parent_span_id == batch.span_id)
            .then_some(())
    })
    .await;

    // The launch links to the offers it used, which belong to the master's allocation round.
    let everything = otlp.all();
    let find = |id: &str| everything.iter().find(|s| s.span_id == id);
    let offers = launch.links.iter().filter_map(|id| find(id)).find(|s| s.name == "gateway.offers");
    let offers = offers.unwrap_or_else(|| panic!("gateway.launch links to no gateway.offers: {launch:?}"));
    let round = find(&offers.parent_span_id).expect("the offers' parent");
    assert_eq!((round.service.as_str(), round.name.as_str()), ("marina-master", "master.offer_round"));
    // Each leader's take-over is a trace of its own.
    for service in ["marina-master", "marina-gateway"] {
        assert!(everything.iter().any(|s| s.service == service && s.name == "election.take_over"), "{service}");
    }

    // The same deployment, as the metrics tell it.
    for (service, lines) in [
        (
            &cluster.gateways[0],
            &[
                "marina_gateway_elected 1",
                "marina_gateway_master_connected 1",
                "marina_gateway_apps 1",
                "marina_gateway_deployments 0",
                "marina_gateway_launch_queue 0",
                "marina_gateway_instances{state=\"TASK_RUNNING\"} 2",
                "marina_gateway_tasks_launched_total 2",
            ][..],
        ),
        (&cluster.masters[0], &["marina_master_elected 1", "marina_master_tasks_launched_total 2"][..]),
    ] {
        eventually(WAIT, &format!("{} metrics to show the deployment", service.name), || async {
            let metrics = service.get_text("/metrics").await?;
            lines.iter().all(|line| metrics.lines().any(|l| l == *line)).then_some(())
        })
        .await;
    }

    // The agent's JSON log lines about the tasks carry the trace id, so logs and traces join.
    let log = cluster.agents[0].log();
    let correlated = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "task status")
        .any(|line| line.to_string().contains(&trace_id));
    assert!(correlated, "no agent log line with trace id {trace_id}:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_valid_metrics_health_and_reflection() {
    let cluster = cluster(None).await;
    let coord = cluster.coord_processes().address(1).to_owned();
    let ports = [
        (coord.as_str(), "marina.coord.v1.Coord,marina.coord.v1.Cluster,marina.coord.v1.Raft"),
        (
            &cluster.masters[0].address,
            "marina.master.v1.Scheduler,marina.master.v1.AgentLink,marina.master.v1.Operator",
        ),
        (&cluster.agents[0].address, "marina.agent.v1.Agent"),
        (&cluster.gateways[0].address, "marina.apps.v1.Apps"),
    ];

    let http = marina_tests::tls::http_client(&cluster.ca().operator());
    for (address, _) in &ports {
        let metrics = http.get(format!("https://{address}/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metrics.contains("process_resident_memory_bytes"), "{address}: {metrics}");
        let mut promtool = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (installed by scripts/setup)");
        promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
        let checked = promtool.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "promtool rejects {address}/metrics: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/grpc_check.py");
    let arguments = ports.iter().map(|(address, services)| format!("{address}=grpc.health.v1.Health,{services}"));
    let output = std::process::Command::new(marina_tests::python::interpreter())
        .arg(script)
        .args(["--tls-dir", &cluster.ca().operator_dir()])
        .args(arguments)
        .output()
        .expect("running grpc_check.py");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).matches("SERVING").count(), 4);
}

/// Without any exporter but with `log.trace_ids`, the caller's trace id crosses gateway →
/// master → agent and lands in the agent's log lines: logs alone lead back to the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_the_callers_trace_id_without_an_exporter() {
    let cluster = cluster(None).await;
    eventually(WAIT, "the gateway to lead with a master", || async {
        let info = cluster.gateways[0].get_json("/v2/info").await?;
        (info["elected"] == true && info["frameworkId"].is_string()).then_some(())
    })
    .await;
    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let response = reqwest::Client::new()
        .post(format!("http://{}/v2/apps", cluster.gateways[0].address))
        .header("traceparent", format!("00-{trace_id}-{:016x}-01", fastrand::u64(1..)))
        .json(&json!({ "id": "/logged", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16 }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    eventually(WAIT, "an agent log line with the caller's trace id", || async {
        let log = cluster.agents[0].log();
        log.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .any(|line| line["message"] == "task status" && line.to_string().contains(&trace_id))
            .then_some(())
    })
    .await;
}

/// A request sent to a standby gateway is proxied to the leader within one trace: the
/// leader's request span is a child of the standby's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_a_standby_gateway_is_one_trace() {
    let otlp = OtlpReceiver::start().await;
    let cluster = cluster(Some(&otlp)).await;
    eventually(WAIT, "the first gateway to lead", || async {
        (cluster.gateways[0].get_json("/v2/info").await?["elected"] == true).then_some(())
    })
    .await;
    let endpoint = otlp.endpoint();
    let export = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    let standby = Service::gateway("gateway-2", &cluster.url, cluster.ca(), cluster.dir.path(), &export);
    standby.wait_healthy().await;
    eventually(WAIT, "the standby to know the leader", || async {
        let leader = standby.get_json("/v2/leader").await?;
        (leader["leader"] == cluster.gateways[0].address.as_str()).then_some(())
    })
    .await;

    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let client_span = format!("{:016x}", fastrand::u64(1..));
    let response = reqwest::Client::new()
        .get(format!("http://{}/v2/apps", standby.address))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The standby's request (continuing the caller's span), its hop to the leader, and the
    // leader's request: one chain.
    let requests = |trace: &[ReceivedSpan]| -> usize {
        trace.iter().filter(|span| span.service == "marina-gateway" && span.name == "GET /v2/apps").count()
    };
    let trace = otlp
        .wait_for_trace(&trace_id, WAIT, |trace| {
            span(trace, "marina-gateway", "gateway.proxy").is_some() && requests(trace) == 2
        })
        .await;
    let child_of =
        |parent: &str| trace.iter().find(|span| span.name == "GET /v2/apps" && span.parent_span_id == parent).cloned();
    let at_standby =
        child_of(&client_span).unwrap_or_else(|| panic!("the standby continues the caller's span: {trace:#?}"));
    let hop = span(&trace, "marina-gateway", "gateway.proxy").unwrap();
    assert_eq!(hop.parent_span_id, at_standby.span_id, "the hop is the standby's request's child: {trace:#?}");
    assert!(child_of(&hop.span_id).is_some(), "the leader's request is the hop's child: {trace:#?}");
}
