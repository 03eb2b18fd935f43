//! `marina coord`, the operator CLI, against a real 3-node quorum: what it prints, in text
//! and JSON, and how it fails.

use std::process::{Output, Stdio};
use std::time::Duration;

use marina_tests::binaries::binary;
use marina_tests::{CoordCluster, eventually};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(20);

/// Runs `marina coord --coord URL ARGS...` to completion, as an operator of `cluster` (with
/// its certificate), or in plaintext without one.
async fn coord_cli(cluster: Option<&CoordCluster>, url: &str, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(binary("marina"));
    command.args(["coord", "--coord", url]).args(args);
    match cluster {
        Some(cluster) => command.env("MARINA_TLS_DIR", cluster.ca().operator_dir()),
        None => command.arg("--plaintext"),
    };
    command.output().await.expect("marina runs")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_str(&stdout(output)).expect("JSON output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_members_show_every_node() {
    let cluster = CoordCluster::start(3).await;
    let url = cluster.url().to_string();

    let table = stdout(&coord_cli(Some(&cluster), &url, &["status"]).await);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("ROLE") && lines[0].contains("APPLIED"), "{table}");
    assert_eq!(lines.len(), 4, "a header and one row per node:\n{table}");
    assert_eq!(lines.iter().filter(|line| line.contains(" leader ")).count(), 1, "{table}");

    let rows = json(&coord_cli(Some(&cluster), &url, &["status", "--json"]).await);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let leader = cluster.leader().await;
    for row in rows {
        assert_eq!(row["reachable"], true);
        assert_eq!(row["leader_id"], leader);
        assert!(row["term"].as_u64().unwrap() >= 1 && row["applied_index"].as_u64().is_some(), "{row}");
    }

    let members = json(&coord_cli(Some(&cluster), &url, &["members", "--json"]).await);
    let mut ids: Vec<u64> = members.as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tree_is_read_and_written_with_clear_failures() {
    let cluster = CoordCluster::start(3).await;
    let url = cluster.url().to_string();

    assert_eq!(stdout(&coord_cli(Some(&cluster), &url, &["set", "/config/web", "v1"]).await), "v1\n");
    let node = json(&coord_cli(Some(&cluster), &url, &["get", "/config/web", "--json"]).await);
    assert_eq!((node["data"].as_str(), node["version"].as_u64()), (Some("v1"), Some(1)));
    stdout(&coord_cli(Some(&cluster), &url, &["set", "/config/web", "v2", "--version", "1"]).await);

    // A stale version is refused, says why, and changes nothing.
    let refused = coord_cli(Some(&cluster), &url, &["set", "/config/web", "v3", "--version", "1"]).await;
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("version"), "{message}");
    assert_eq!(cluster.client().get("/config/web").await.unwrap().unwrap().data, "v2");

    let sequential =
        json(&coord_cli(Some(&cluster), &url, &["create", "--sequential", "/jobs/job-", "x", "--json"]).await);
    let path = sequential["path"].as_str().unwrap().to_owned();
    assert!(path.starts_with("/jobs/job-") && path["/jobs/job-".len()..].chars().all(|c| c.is_ascii_digit()), "{path}");

    let listing = stdout(&coord_cli(Some(&cluster), &url, &["ls", "/"]).await);
    assert_eq!(listing.lines().collect::<Vec<_>>(), ["config", "jobs"]);
    assert_eq!(stdout(&coord_cli(Some(&cluster), &url, &["ls", "/config", "--stale"]).await), "web\n");

    // Parents are implicit: the subtree holds the one sequential node.
    assert_eq!(stdout(&coord_cli(Some(&cluster), &url, &["rm", "-r", "/jobs"]).await), "deleted 1 node(s)\n");
    assert_eq!(stdout(&coord_cli(Some(&cluster), &url, &["ls", "/"]).await), "config\n");
    let missing = coord_cli(Some(&cluster), &url, &["get", &path]).await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains(&format!("{path}: no such node")));

    // Bad input is named.
    let bad = coord_cli(Some(&cluster), &url, &["set", "relative", "x"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must start with '/'"));

    // `rm -r /` is refused, naming the path, and deletes nothing.
    let everything = coord_cli(Some(&cluster), &url, &["rm", "-r", "/"]).await;
    assert!(!everything.status.success());
    let message = String::from_utf8_lossy(&everything.stderr);
    assert!(message.contains("\"/\"") && message.contains("deleting the root is refused"), "{message}");
    assert_eq!(stdout(&coord_cli(Some(&cluster), &url, &["ls", "/"]).await), "config\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_quorum_is_reported() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let output = coord_cli(None, &format!("coord://{closed}"), &["status"]).await;
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("no coord endpoint answered") && message.contains(&closed.to_string()), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_node_lives_as_long_as_the_command_and_watch_prints_changes() {
    let cluster = CoordCluster::start(3).await;
    let url = cluster.url().to_string();
    let client = cluster.client();

    let mut watch = tokio::process::Command::new(binary("marina"))
        .args(["coord", "--coord", &url, "--json", "watch", "/locks"])
        .env("MARINA_TLS_DIR", cluster.ca().operator_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The watch is established once it says so on stderr.
    let mut established = BufReader::new(watch.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, established.next_line()).await.unwrap().unwrap().unwrap();
    assert!(line.contains("watching /locks"), "{line}");
    let mut events = BufReader::new(watch.stdout.take().unwrap()).lines();

    let mut holder = tokio::process::Command::new(binary("marina"))
        .args(["coord", "--coord", &url, "create", "--ephemeral", "/locks/holder", "me"])
        .env("MARINA_TLS_DIR", cluster.ca().operator_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let held =
        eventually(WAIT, "the ephemeral node", || async { client.get("/locks/holder").await.ok().flatten() }).await;
    assert_ne!(held.ephemeral_owner, 0);

    // Ctrl-C releases it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(holder.id().unwrap() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let status = tokio::time::timeout(WAIT, holder.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(client.get("/locks/holder").await.unwrap().is_none(), "closing the session deleted it");

    let mut next_event = async || -> Value {
        let line = tokio::time::timeout(WAIT, events.next_line()).await.unwrap().unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    };
    let put = next_event().await;
    assert_eq!((put["type"].as_str(), put["node"]["path"].as_str()), (Some("PUT"), Some("/locks/holder")));
    let delete = next_event().await;
    assert_eq!(delete["type"], "DELETE");
    assert!(delete["revision"].as_u64() > put["revision"].as_u64());
    watch.kill().await.unwrap();
}

/// `marina certs`: a CA, then certificates that name their holder in a URI SAN, carry the
/// addresses asked for, chain to that CA (checked by openssl, an independent verifier) and
/// to no other, with keys only their owner can read; an existing CA is never overwritten.
#[test]
fn marina_certs_makes_a_ca_and_certificates_that_chain_to_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let certs = |args: &[&str]| {
        std::process::Command::new(binary("marina")).arg("certs").args(args).current_dir(dir.path()).output().unwrap()
    };
    let openssl =
        |args: &[&str]| std::process::Command::new("openssl").args(args).current_dir(dir.path()).output().unwrap();
    stdout(&certs(&["init", "--dir", "tls"]));
    let issued = stdout(&certs(&["issue", "--role", "coord", "--id", "2", "--ip", "10.1.2.3", "--dir", "tls"]));
    assert!(issued.contains("spiffe://marina/coord/2"), "{issued}");
    stdout(&certs(&["issue", "--role", "operator", "--dir", "tls"]));

    let verified = openssl(&["verify", "-CAfile", "tls/ca.pem", "tls/coord-2.pem", "tls/operator.pem"]);
    assert_eq!(stdout(&verified).matches(": OK").count(), 2);
    let sans = stdout(&openssl(&["x509", "-in", "tls/coord-2.pem", "-noout", "-ext", "subjectAltName"]));
    assert!(sans.contains("URI:spiffe://marina/coord/2") && sans.contains("IP Address:10.1.2.3"), "{sans}");
    let defaults =
        stdout(&openssl(&["x509", "-in", "tls/operator.pem", "-noout", "-ext", "subjectAltName,extendedKeyUsage"]));
    assert!(
        defaults.contains("URI:spiffe://marina/operator") && defaults.contains("IP Address:127.0.0.1"),
        "{defaults}"
    );
    assert!(defaults.contains("Client Authentication") && !defaults.contains("Server Authentication"), "{defaults}");
    for key in ["tls/ca-key.pem", "tls/coord-2-key.pem", "tls/operator-key.pem"] {
        let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    // Another cluster's CA does not vouch for these.
    stdout(&certs(&["init", "--dir", "other"]));
    let foreign = openssl(&["verify", "-CAfile", "other/ca.pem", "tls/coord-2.pem"]);
    assert!(!foreign.status.success(), "a certificate verified against a CA that did not sign it");
    let again = certs(&["init", "--dir", "tls"]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));
    let unknown = certs(&["issue", "--role", "root", "--dir", "tls"]);
    assert!(!unknown.status.success());
}
