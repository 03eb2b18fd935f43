//! Mesos' fetcher, end to end: apps' `fetch` URIs served by a loopback HTTP server are
//! downloaded into their tasks' sandboxes before the tasks start — an archive extracted, a
//! script made executable, both cached so two tasks download each once — and a fetch that
//! fails (an archive reaching out of the sandbox, a missing file) fails the task with a
//! message naming the URI, which the app's `lastTaskFailure` shows.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_agent::RuntimeChoice;
use marina_tests::processes::AppsApi;
use marina_tests::{MarinaCluster, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A `.tar.gz` holding `app/data.txt`.
fn app_archive() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let data = b"hello from the archive\n";
    let mut header = tar::Header::new_gnu();
    header.set_path("app/data.txt").unwrap();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append(&header, &data[..]).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// A tar whose only entry is `../escaped` (written raw: the tar crate refuses to build it).
fn escaping_archive() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    let name = b"../escaped";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_size(2);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append(&header, &b"x\n"[..]).unwrap();
    tar.into_inner().unwrap()
}

/// Serves `files` on a loopback port, counting the requests for each path.
async fn artifact_server(files: HashMap<&'static str, Vec<u8>>) -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let served: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let files = Arc::new(files);
    let counts = served.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (files, counts) = (files.clone(), counts.clone());
        async move {
            *counts.lock().unwrap().entry(uri.path().to_owned()).or_default() += 1;
            match files.get(uri.path()) {
                Some(bytes) => (axum::http::StatusCode::OK, bytes.clone()),
                None => (axum::http::StatusCode::NOT_FOUND, b"no such artifact".to_vec()),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, served)
}

async fn last_failure(api: &AppsApi, id: &str) -> Value {
    eventually(WAIT, "the app's last task failure", || async {
        let failure = api.app(id).await?["lastTaskFailure"].clone();
        failure.is_object().then_some(failure)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_artifacts_are_extracted_made_executable_cached_and_failures_name_the_uri() {
    let run_script = b"#!/bin/sh\ngrep -q 'hello from the archive' app/data.txt\n".to_vec();
    let (base, served) = artifact_server(HashMap::from([
        ("/artifacts/app.tar.gz", app_archive()),
        ("/artifacts/run.sh", run_script),
        ("/artifacts/escape.tar", escaping_archive()),
    ]))
    .await;
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(RuntimeChoice::Process)
        .agent_config(|_, config| config.resources.ports = "24200-24299".into())
        .gateways(1)
        .start()
        .await;
    let api = AppsApi::new(&cluster.leading_gateway().await.to_string());

    // Healthy only if the archive was unpacked and the script is executable.
    let fetched = json!({
        "id": "/fetched", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "instances": 2,
        "healthChecks": [{ "protocol": "COMMAND", "command": { "value": "./run.sh" }, "intervalSeconds": 1 }],
        "fetch": [
            { "uri": format!("{base}/artifacts/app.tar.gz"), "extract": true, "cache": true },
            { "uri": format!("{base}/artifacts/run.sh"), "executable": true, "cache": true },
        ],
    });
    api.create(&fetched).await.unwrap();
    eventually(WAIT, "both fetched instances healthy", || async {
        (api.app("/fetched").await?["tasksHealthy"] == 2).then_some(())
    })
    .await;
    let app = api.app("/fetched").await.unwrap();
    assert!(app["lastTaskFailure"].is_null(), "no task failed: {}", app["lastTaskFailure"]);
    {
        let served = served.lock().unwrap();
        assert_eq!(served.get("/artifacts/app.tar.gz"), Some(&1), "one download for two tasks: {served:?}");
        assert_eq!(served.get("/artifacts/run.sh"), Some(&1), "one download for two tasks: {served:?}");
    }

    // An archive reaching out of the sandbox fails its task, naming the URI and the entry.
    let escape_uri = format!("{base}/artifacts/escape.tar");
    api.create(&json!({
        "id": "/escaping", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16,
        "fetch": [{ "uri": escape_uri, "extract": true }],
    }))
    .await
    .unwrap();
    let failure = last_failure(&api, "/escaping").await;
    let message = failure["message"].as_str().unwrap_or_default();
    assert_eq!(failure["state"], "TASK_FAILED", "{failure}");
    assert!(message.contains(&format!("fetching {escape_uri}")), "{message}");
    assert!(message.contains("../escaped") && message.contains("leaves the sandbox"), "{message}");

    // So does a URI the server does not have.
    let missing_uri = format!("{base}/artifacts/missing.tgz");
    api.create(&json!({
        "id": "/missing", "cmd": "sleep 1000", "cpus": 0.1, "mem": 16, "fetch": [{ "uri": missing_uri }],
    }))
    .await
    .unwrap();
    let failure = last_failure(&api, "/missing").await;
    let message = failure["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("fetching {missing_uri}")) && message.contains("404"), "{message}");

    // A URI no agent may fetch is refused at the door, at its field.
    let response = reqwest::Client::new()
        .post(format!("{}/v2/apps", cluster.gateway_url(0)))
        .json(&json!({ "id": "/ftp", "cmd": "true", "fetch": [{ "uri": "ftp://example.com/x" }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["details"][0]["path"], "/fetch(0)", "{body}");
}

/// An image task finds what was fetched for it at `$MESOS_SANDBOX` (`/mnt/mesos/sandbox`),
/// as Marathon apps on Mesos' docker containerizer did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_tasks_find_their_fetched_files_at_mesos_sandbox() {
    marina_tests::docker::ensure_test_images();
    let check = b"#!/bin/sh\n[ \"$MESOS_SANDBOX\" = /mnt/mesos/sandbox ] && grep -q 'hello from the archive' \"$MESOS_SANDBOX/app/data.txt\"\n";
    let (base, _served) = artifact_server(HashMap::from([
        ("/artifacts/app.tar.gz", app_archive()),
        ("/artifacts/check.sh", check.to_vec()),
    ]))
    .await;
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(RuntimeChoice::Docker)
        .agent_config(|_, config| config.resources.ports = "24300-24399".into())
        .gateways(1)
        .start()
        .await;
    let _cleanup =
        marina_tests::docker::DockerCleanup { label: "MARATHON_APP_ID".into(), value: "/fetched-image".into() };
    let api = AppsApi::new(&cluster.leading_gateway().await.to_string());
    api.create(&json!({
        "id": "/fetched-image", "cmd": "sleep 1000", "cpus": 0.1, "mem": 32,
        "healthChecks": [{ "protocol": "COMMAND", "command": { "value": "/mnt/mesos/sandbox/check.sh" }, "intervalSeconds": 1 }],
        "container": { "type": "DOCKER", "docker": { "image": "libmesos/ubuntu" } },
        "fetch": [
            { "uri": format!("{base}/artifacts/app.tar.gz") },
            { "uri": format!("{base}/artifacts/check.sh"), "executable": true },
        ],
    }))
    .await
    .unwrap();
    eventually(WAIT, "the image task healthy", || async {
        (api.app("/fetched-image").await?["tasksHealthy"] == 1).then_some(())
    })
    .await;
    let app = api.app("/fetched-image").await.unwrap();
    assert!(app["lastTaskFailure"].is_null(), "no task failed: {}", app["lastTaskFailure"]);
}

/// Accepts TLS connections for `axum::serve` (handshakes that fail are dropped).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, address);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An `https` artifact is fetched by an agent that trusts its server's CA
/// (`fetcher.ca_file`), and refused, naming the URI and the certificate, by one that does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_artifacts_need_a_trusted_server() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    // The artifact server's own CA, not the cluster's; its certificate names 127.0.0.1.
    let dir = marina_tests::TestDir::new();
    let artifacts_ca = marina_tests::TestCa::new(&dir.path().join("artifacts-ca"));
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server-key.pem"));
    artifacts_ca.issue_to(marina_daemon::tls::Role::Gateway, None, &cert, &key);
    let provider = marina_daemon::tls::provider();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_file_iter(&cert).unwrap().collect::<Result<_, _>>().unwrap(),
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", tcp.local_addr().unwrap());
    let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)) };
    let script = b"#!/bin/sh\nexit 0\n".to_vec();
    let app = axum::Router::new().route("/check.sh", axum::routing::get(move || async move { script.clone() }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let ca_file = artifacts_ca.ca_file();
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(2)
        .runtime(RuntimeChoice::Process)
        .agent_config(move |index, config| {
            config.resources.ports = if index == 0 { "24700-24749" } else { "24750-24799" }.into();
            if index == 0 {
                config.fetcher.ca_file = Some(ca_file.clone());
            }
        })
        .gateways(1)
        .start()
        .await;
    let api = AppsApi::new(&cluster.leading_gateway().await.to_string());
    let uri = format!("{base}/check.sh");
    let app = |id: &str, agent: &str| {
        json!({
            "id": id, "cmd": "sleep 1000", "cpus": 0.1, "mem": 16,
            "constraints": [["hostname", "CLUSTER", agent]],
            "fetch": [{ "uri": uri, "executable": true }],
            "healthChecks": [{ "protocol": "COMMAND", "command": { "value": "./check.sh" }, "intervalSeconds": 1 }],
        })
    };
    api.create(&app("/trusting", "agent-0.test")).await.unwrap();
    api.create(&app("/untrusting", "agent-1.test")).await.unwrap();
    eventually(WAIT, "the trusting agent's task healthy", || async {
        (api.app("/trusting").await?["tasksHealthy"] == 1).then_some(())
    })
    .await;
    let failure = last_failure(&api, "/untrusting").await;
    let message = failure["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("fetching {uri}")) && message.contains("certificate"), "{message}");
}
