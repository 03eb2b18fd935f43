//! `marina-coord` as a service: configuration precedence and errors, health, metrics,
//! reflection, graceful SIGTERM.

use std::process::Command;
use std::time::Duration;

use marina_tests::binaries::binary;
use marina_tests::{CoordCluster, TestProcess, eventually};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[test]
fn configuration_layers_flags_over_env_over_file_over_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coord.toml");
    std::fs::write(
        &file,
        "id = 3\nlisten = \"127.0.0.1:3000\"\n[raft]\nheartbeat_ms = 30\nelection_timeout_min_ms = 100\n",
    )
    .unwrap();
    let output = Command::new(binary("marina-coord"))
        .args(["--config", file.to_str().unwrap(), "--print-config", "--id", "7"])
        .env("MARINA_COORD_LISTEN", "127.0.0.1:4000")
        .env("MARINA_COORD_RAFT__ELECTION_TIMEOUT_MAX_MS", "450")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "id = 7",                                // flag over file
        "listen = \"127.0.0.1:4000\"",           // env over file
        "heartbeat_ms = 30",                     // file over default
        "election_timeout_max_ms = 450",         // nested env key
        "max_value_bytes = 1048576",             // default
        "max_watches_per_client = 1000",         // default
        "max_encoding_message_bytes = 67108864", // default
        "max_watch_message_bytes = 4194304",     // default
    ] {
        assert!(printed.contains(expected), "missing {expected:?} in:\n{printed}");
    }
}

/// The coord client decodes every message a node may be configured to send.
#[test]
fn the_client_reads_the_largest_message_a_node_may_send() {
    assert_eq!(marina_coord_client::MAX_MESSAGE_BYTES, marina_coord::config::MAX_MESSAGE_BYTES_CEILING);
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("coord.toml");
    std::fs::write(&file, "id = 1\nlisen = \"typo\"\n").unwrap();
    // A value larger than a watch message may carry.
    let limits = dir.path().join("limits.toml");
    std::fs::write(&limits, "[limits]\nmax_value_bytes = 8388608\n[server]\nmax_decoding_message_bytes = 16777216\n")
        .unwrap();
    for (args, expected) in [
        (vec!["--config".to_owned(), file.display().to_string()], "lisen"),
        (
            vec![
                "--peers".to_owned(),
                "1=nowhere".to_owned(),
                "--data-dir".to_owned(),
                dir.path().display().to_string(),
            ],
            "`peers`",
        ),
        (vec!["--id".to_owned(), "0".to_owned()], "`id`"),
        (vec!["--config".to_owned(), limits.display().to_string()], "limits.max_watch_message_bytes"),
        (vec!["--config".to_owned(), "/no/such/file.toml".to_owned()], "not found"),
    ] {
        let output = Command::new(binary("marina-coord")).args(&args).output().unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_reflection_on_the_one_port() {
    let cluster = CoordCluster::start(3).await;
    let http = marina_tests::tls::http_client(&cluster.ca().operator());
    for id in cluster.ids() {
        let address = cluster.address(id);
        eventually(Duration::from_secs(10), "HTTP /health to report serving", || async {
            let response = http.get(format!("https://{address}/health")).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        let channel = marina_tests::tls::channel(&cluster.ca().operator(), address);
        assert_reflection_lists(channel.clone(), &["marina.coord.v1.Coord", "grpc.health.v1.Health"]).await;
        let mut health = HealthClient::new(channel.clone());
        for service in ["", "marina.coord.v1.Coord", "marina.coord.v1.Cluster"] {
            let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
            assert_eq!(status.status(), ServingStatus::Serving, "service {service:?} on node {id}");
        }
    }
    let client = cluster.client();
    client.put("/m", "x").await.unwrap();
    let leader = cluster.leader().await;
    let metrics =
        http.get(format!("https://{}/metrics", cluster.address(leader))).send().await.unwrap().text().await.unwrap();
    for expected in [
        "marina_coord_is_leader 1",
        "marina_coord_term ",
        "marina_coord_commit_index ",
        "marina_coord_applied_index ",
        "marina_coord_revision ",
        "marina_coord_sessions ",
        "marina_coord_watches ",
        "marina_coord_fsync_duration_seconds_bucket",
        "marina_requests_total{code=\"0\",method=\"/marina.coord.v1.Coord/Set\",protocol=\"grpc\"}",
        "marina_request_duration_seconds_bucket",
        "marina_build_info{service=\"coord\"",
    ] {
        assert!(metrics.contains(expected), "missing {expected:?} in /metrics:\n{metrics}");
    }
    let missing = http.get(format!("https://{}/nope", cluster.address(leader))).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// Server reflection (v1) lists `expected` among the services.
async fn assert_reflection_lists(channel: tonic::transport::Channel, expected: &[&str]) {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("a reflection response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("{response:?}") };
    let names: Vec<String> = list.service.into_iter().map(|service| service.name).collect();
    for name in expected {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_node_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    // A single node binds any free port and says which it got.
    let address_file = dir.path().join("address");
    let args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--address-file".to_owned(),
        address_file.display().to_string(),
        "--data-dir".to_owned(),
        dir.path().join("data").display().to_string(),
    ];
    let mut process = TestProcess::spawn("coord", &binary("marina-coord"), &args, &[], &dir.path().join("coord.log"));
    let address = eventually(Duration::from_secs(10), "the node's bound address", || async {
        std::fs::read_to_string(&address_file).ok()
    })
    .await;
    assert!(!address.ends_with(":0"), "the address bound, not the one asked for: {address}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(10), "the single node to serve", || async {
        http.get(format!("http://{address}/health")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    // A watch stream is open: shutdown must not wait for it to end on its own.
    let url = format!("coord://{address}").parse().unwrap();
    let client = marina_coord_client::CoordClient::new(&url);
    let _watch = client.watch("/", true, 0).await.unwrap();
    let started = std::time::Instant::now();
    let status = process.terminate().await.expect("the process exits");
    assert!(status.success(), "exit status {status:?}\n{}", process.log());
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
}
