//! The coord quorum in one process: real nodes, real loopback gRPC, real disk.

use std::time::Duration;

use futures::StreamExt;

use marina_coord_client::{CoordClient, CoordUrl, CreateOptions, Election, Error, EventKind, OpResult, Txn};
use marina_proto::coord::v1 as pb;
use marina_tests::{CoordCluster, eventually};

const WAIT: Duration = Duration::from_secs(20);

/// A plain gRPC client of one node, with tonic's defaults (4 MiB decoding limit): what
/// grpcurl, Python or another language's client sees.
async fn raw_client(
    cluster: &CoordCluster,
    address: std::net::SocketAddr,
) -> pb::coord_client::CoordClient<tonic::transport::Channel> {
    pb::coord_client::CoordClient::new(marina_tests::tls::channel(&cluster.ca().operator(), address))
}

fn error_kind(status: &tonic::Status) -> &str {
    status.metadata().get(marina_proto::coord::error_kind::METADATA).and_then(|kind| kind.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_api_versions_revisions_and_errors() {
    let cluster = CoordCluster::start(3).await;
    let client = cluster.client();

    let created = client.create("/apps/web", "v1", CreateOptions::default()).await.unwrap();
    assert_eq!((created.path.as_str(), created.version), ("/apps/web", 1));
    assert_eq!(created.create_revision, created.mod_revision);

    let updated = client.set("/apps/web", "v2", Some(1)).await.unwrap();
    assert_eq!(updated.version, 2);
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(updated.create_revision, created.create_revision);

    assert!(matches!(client.set("/apps/web", "v3", Some(1)).await, Err(Error::BadVersion(_))));
    assert!(matches!(client.create("/apps/web", "x", CreateOptions::default()).await, Err(Error::NodeExists(_))));
    assert!(matches!(client.set("/missing", "x", None).await, Err(Error::NoNode(_))));
    assert!(matches!(client.delete("/apps", None).await, Err(Error::NoNode(_))));
    client.put("/apps", "").await.unwrap();
    assert!(matches!(client.delete("/apps", None).await, Err(Error::NotEmpty(_))));

    let got = client.get("/apps/web").await.unwrap().unwrap();
    assert_eq!(&got.data[..], b"v2");
    assert_eq!(client.list("/apps").await.unwrap().children, vec!["web"]);
    assert_eq!(client.get_stale("/apps/web").await.unwrap().unwrap().version, 2);

    let first = client.create("/q/item-", "", CreateOptions { sequential: true, ..Default::default() }).await.unwrap();
    let second = client.create("/q/item-", "", CreateOptions { sequential: true, ..Default::default() }).await.unwrap();
    assert_eq!(first.path, "/q/item-0000000000");
    assert_eq!(second.path, "/q/item-0000000001");

    assert_eq!(client.delete_recursive("/apps").await.unwrap(), 2);
    assert!(client.get("/apps/web").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compares_and_is_all_or_nothing() {
    let cluster = CoordCluster::start(3).await;
    let client = cluster.client();
    let lock = client.create("/lock", "owner-a", CreateOptions::default()).await.unwrap();

    let txn = Txn::new()
        .when_version("/lock", lock.version)
        .when_value("/lock", "owner-a")
        .then_put("/state", "written under the lock")
        .then_get("/lock");
    let result = client.txn(txn).await.unwrap();
    assert!(result.succeeded);
    assert!(matches!(&result.results[1], OpResult::Got(Some(node)) if &node.data[..] == b"owner-a"));

    let stale = Txn::new().when_version("/lock", 99).then_put("/state", "must not land").otherwise_get("/state");
    let result = client.txn(stale).await.unwrap();
    assert!(!result.succeeded);
    assert!(matches!(&result.results[0], OpResult::Got(Some(node)) if &node.data[..] == b"written under the lock"));

    // The second create fails, so the first must not have happened either.
    let partial = Txn::new().then_create("/fresh", "", CreateOptions::default()).then_create(
        "/lock",
        "",
        CreateOptions::default(),
    );
    assert!(matches!(client.txn(partial).await, Err(Error::NodeExists(_))));
    assert!(client.get("/fresh").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_store_nothing() {
    let cluster = CoordCluster::start_with(1, |config| config.limits.max_value_bytes = 1024).await;
    let client = cluster.client();
    for (path, expected) in [
        ("relative", "must start with '/'"),
        ("/trailing/", "must not end with '/'"),
        ("/double//slash", "empty segment"),
        ("/dot/../dot", "\"..\""),
    ] {
        match client.put(path, "x").await {
            Err(Error::InvalidArgument(message)) => assert!(message.contains(expected), "{path}: {message}"),
            other => panic!("{path}: expected InvalidArgument, got {other:?}"),
        }
    }
    match client.put("/big", vec![0u8; 2048]).await {
        Err(Error::InvalidArgument(message)) => assert!(message.contains("exceed the limit of 1024"), "{message}"),
        other => panic!("expected a size error, got {other:?}"),
    }
    // Session TTLs stay within limits.session_ttl_min_ms..=max_ms (200..=300000), however
    // large the asked duration (no truncation lands one in range).
    for (ttl, grace, expected) in [
        (Duration::from_millis(10), Duration::ZERO, "ttl_ms"),
        (Duration::from_secs(3600), Duration::ZERO, "200..=300000"),
        (Duration::MAX, Duration::ZERO, "200..=300000"),
        // 2^64 + 1000 ms: cut to 64 bits it would read as one second.
        (Duration::new(18_446_744_073_709_552, 616_000_000), Duration::ZERO, "200..=300000"),
        (Duration::from_secs(1), Duration::from_secs(2), "disconnect_grace_ms"),
    ] {
        match client.create_session(ttl, grace).await {
            Err(Error::InvalidArgument(message)) => assert!(message.contains(expected), "{ttl:?}: {message}"),
            other => panic!("{ttl:?}: expected a TTL error, got {:?}", other.map(|s| s.id())),
        }
    }
    assert!(client.list("/").await.unwrap().children.is_empty(), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_writes_and_linearizable_reads() {
    let cluster = CoordCluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let via_follower = cluster.client_of(follower);
    assert_eq!(via_follower.preferred_endpoint(), cluster.address(follower).to_string());
    via_follower.put("/forwarded", "yes").await.unwrap();
    // The relayed answer named the leader: the client goes there directly from now on.
    assert_eq!(via_follower.preferred_endpoint(), cluster.address(leader).to_string());
    // A linearizable read through the follower sees the write at once.
    let via_follower = cluster.client_of(follower);
    assert_eq!(&via_follower.get("/forwarded").await.unwrap().unwrap().data[..], b"yes");
    let via_follower = cluster.client_of(follower);
    let session = via_follower.create_session(Duration::from_secs(5), Duration::ZERO).await.unwrap();
    via_follower.create("/eph", "", CreateOptions { session: Some(session.id()), sequential: false }).await.unwrap();
    session.close().await.unwrap();
    assert!(cluster.client().get("/eph").await.unwrap().is_none(), "closing deletes ephemerals at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemerals_go_when_keep_alives_stop() {
    let cluster = CoordCluster::start(3).await;
    let client = cluster.client();
    let ttl = Duration::from_millis(600);
    let session = client.create_session(ttl, Duration::ZERO).await.unwrap();
    let options = CreateOptions { session: Some(session.id()), sequential: false };
    client.create("/alive", "", options).await.unwrap();

    // Keep-alives run in the background: the node outlives several TTLs.
    tokio::time::sleep(ttl * 3).await;
    assert!(session.is_alive());
    assert!(client.get("/alive").await.unwrap().is_some());

    // Dropping the session stops the keep-alives; the leader expires it after the TTL.
    let stopped = tokio::time::Instant::now();
    drop(session);
    eventually(WAIT, "the ephemeral node to be deleted", || async {
        client.get("/alive").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(stopped.elapsed() >= ttl / 2, "expired after about the TTL, not at once ({:?})", stopped.elapsed());
}

/// Only a session's owner keeps it alive or ends it: its id is public (every ephemeral node
/// names its owner), so a keep-alive or close that does not carry the session's secret is
/// refused, and the session and its nodes stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_sessions_owner_keeps_it_alive_or_closes_it() {
    let cluster = CoordCluster::start(3).await;
    let client = cluster.client();
    let session = client.create_session(Duration::from_secs(10), Duration::ZERO).await.unwrap();
    let options = CreateOptions { session: Some(session.id()), sequential: false };
    client.create("/owned", "", options).await.unwrap();
    let owner = client.get("/owned").await.unwrap().expect("created").ephemeral_owner;
    assert_eq!(owner, session.id(), "anyone can read whose node it is");

    let leader = cluster.address(cluster.leader().await);
    let mut intruder = raw_client(&cluster, leader).await;
    for secret in [bytes::Bytes::new(), bytes::Bytes::from_static(&[0; 16])] {
        let close = pb::CloseSessionRequest { session_id: owner, secret: secret.clone() };
        let refused = intruder.close_session(close).await.expect_err("a close without the secret");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        let keep_alive = pb::KeepAliveRequest { session_id: owner, secret };
        let mut replies = intruder.keep_alive(futures::stream::iter([keep_alive])).await.unwrap().into_inner();
        let refused = replies.message().await.expect_err("a keep-alive without the secret");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    assert!(session.is_alive());
    assert!(client.get("/owned").await.unwrap().is_some(), "the session and its node stay");
    session.close().await.expect("its owner closes it");
    assert!(client.get("/owned").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_session_ends_after_its_grace() {
    let cluster = CoordCluster::start(3).await;
    let client = cluster.client();
    let session = client.create_session(Duration::from_secs(30), Duration::from_millis(300)).await.unwrap();
    client.create("/grace", "", CreateOptions { session: Some(session.id()), sequential: false }).await.unwrap();
    // Once a keep-alive is acknowledged, the leader has the stream attached.
    eventually(WAIT, "a keep-alive to be acknowledged", || async { (session.acknowledged() > 0).then_some(()) }).await;
    let closed = tokio::time::Instant::now();
    drop(session); // closes the keep-alive stream, as a killed process's kernel would
    eventually(WAIT, "the ephemeral node to be deleted", || async {
        client.get("/grace").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(closed.elapsed() < Duration::from_secs(10), "ended after the grace, not the 30 s TTL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_watches_survive_a_leader_change() {
    let mut cluster = CoordCluster::start(3).await;
    let client = cluster.client();
    let writer = cluster.client();
    // The services' own session TTL (5 s): it must outlive a leader change, which takes up
    // to twice the max election timeout (the old leader's lease, then an election).
    let session = client.create_session(Duration::from_secs(5), Duration::ZERO).await.unwrap();
    client.create("/members/me", "", CreateOptions { session: Some(session.id()), sequential: false }).await.unwrap();
    let mut watch = client.watch("/counter", true, 0).await.unwrap();

    let total = 40u64;
    let old_leader = cluster.leader().await;
    for i in 1..=total {
        if i == total / 2 {
            cluster.stop(old_leader).await;
        }
        let key = format!("/counter/{i:03}");
        loop {
            match writer.put(&key, i.to_string()).await {
                Ok(_) => break,
                // A write cut off by the leader stopping may or may not have landed: a put is
                // idempotent, so write it again.
                Err(Error::Indeterminate(_) | Error::Unavailable(_)) => continue,
                Err(error) => panic!("write {i}: {error}"),
            }
        }
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);

    // Every key's first PUT, exactly once and in order; revisions strictly increase.
    let mut seen = Vec::new();
    let mut last_revision = 0;
    while seen.len() < total as usize {
        let change = tokio::time::timeout(WAIT, watch.next()).await.expect("watch delivers").unwrap().unwrap();
        assert!(change.revision > last_revision, "revisions increase");
        last_revision = change.revision;
        for event in change.events {
            assert_eq!(event.kind, EventKind::Put);
            if !seen.contains(&event.node.path) {
                seen.push(event.node.path);
            }
        }
    }
    let expected: Vec<String> = (1..=total).map(|i| format!("/counter/{i:03}")).collect();
    assert_eq!(seen, expected);

    assert!(session.is_alive(), "the session survived the leader change");
    assert!(client.get("/members/me").await.unwrap().is_some(), "and so did its ephemeral");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_falls_behind_misses_nothing_and_repeats_nothing() {
    // A queue of 4: bursts of applied changes overflow it (and so does a client that reads
    // nothing until the end, once the transport's buffers are full).
    let cluster = CoordCluster::start_with(1, |config| config.limits.watch_queue = 4).await;
    let client = cluster.client();
    let mut watch = client.watch("/lag", true, 0).await.unwrap();
    // Far more changes than the watch's queues hold while nobody reads it (and as many of
    // a path it does not watch, interleaved).
    let total = 3000usize;
    futures::stream::iter(0..total)
        .map(|i| {
            let client = client.clone();
            async move {
                client.put(&format!("/lag/{i:05}"), "x").await.unwrap();
                client.put(&format!("/other/{i:05}"), "x").await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let mut seen = std::collections::BTreeSet::new();
    let mut last_revision = 0;
    while seen.len() < total {
        let change = tokio::time::timeout(WAIT, watch.next()).await.expect("watch delivers").unwrap().unwrap();
        assert!(change.revision > last_revision, "revision {} after {last_revision}", change.revision);
        last_revision = change.revision;
        for event in change.events {
            assert!(event.node.path.starts_with("/lag/"), "{}", event.node.path);
            assert!(seen.insert(event.node.path.clone()), "{} twice", event.node.path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_from_a_revision_or_say_it_was_compacted() {
    let cluster = CoordCluster::start_with(1, |config| config.limits.history_revisions = 5).await;
    let client = cluster.client();
    let first = client.put("/w", "0").await.unwrap().mod_revision;
    for i in 1..10 {
        client.put("/w", i.to_string()).await.unwrap();
    }
    let mut resumed = client.watch("/w", false, first + 6).await.unwrap();
    let change = resumed.next().await.unwrap().unwrap();
    assert_eq!(change.revision, first + 6);
    assert_eq!(&change.events[0].node.data[..], b"6");
    match client.watch("/w", false, first).await {
        Err(Error::Compacted(message)) => assert!(message.contains("compacted"), "{message}"),
        other => panic!("expected Compacted, got {:?}", other.map(|w| w.established_at)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_full_restart_and_snapshots_compact_the_log() {
    // No entries kept after a snapshot: once a node's log is compacted, the writes its
    // snapshot covers exist nowhere else on it.
    let mut cluster = CoordCluster::start_with(3, |config| {
        config.raft.snapshot_every_entries = 50;
        config.raft.keep_entries_after_snapshot = 0;
    })
    .await;
    let client = cluster.client();
    for i in 0..200 {
        client.put(&format!("/k/{i}"), i.to_string()).await.unwrap();
    }
    let mut compacted = Vec::new();
    for id in cluster.ids() {
        let node = cluster.node(id);
        let purged = eventually(WAIT, &format!("node {id} to snapshot and compact its log"), || async {
            let metrics = node.metrics();
            let (snapshot, purged) = (metrics.snapshot?.index, metrics.purged?.index);
            (purged > 0 && snapshot >= purged).then_some(purged)
        })
        .await;
        compacted.push((id, purged));
    }
    for id in cluster.ids() {
        cluster.stop(id).await;
    }
    for id in cluster.ids() {
        cluster.restart(id).await;
    }
    cluster.leader().await;
    // Restarted, each node starts from its snapshot: its log still begins past what it
    // compacted, so what follows can only have come back through the snapshot.
    for (id, purged) in compacted {
        let metrics = cluster.node(id).metrics();
        let restored = metrics.snapshot.map(|log_id| log_id.index);
        assert!(restored >= Some(purged), "node {id} restarted without its snapshot: {metrics:?}");
        assert!(metrics.purged.map(|log_id| log_id.index) >= Some(purged), "node {id}'s log: {metrics:?}");
    }
    let listing = client.list("/k").await.unwrap();
    assert_eq!(listing.children.len(), 200);
    assert_eq!(&client.get("/k/199").await.unwrap().unwrap().data[..], b"199");
    let status = cluster.node(1).status();
    assert!(status.applied_index >= 200, "{status:?}");
}

/// A leader replicates an entry while its own disk write runs, so its followers can commit
/// entries its disk never gets: a full disk or a power loss stops it with the tail of its
/// log missing. Restarted, it must not lead the same term again — it would append at those
/// indexes under the same log ids, with other content, and Raft takes entries with equal
/// ids for the same entry: acknowledged writes lost and the replicas diverged. Found by
/// `marina-bench chaos` (seed 11: the coord leader's disk filled); here the missing tail
/// is made by cutting the stopped leader's last records, and its restart is quick enough
/// (elections are slow here) to come before any other node would call an election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_without_its_log_tail_loses_no_committed_entry() {
    let mut cluster = CoordCluster::start_with(3, |config| {
        config.raft.election_timeout_min_ms = 2000;
        config.raft.election_timeout_max_ms = 3000;
    })
    .await;
    let client = cluster.client();
    let writes = 10;
    for i in 0..writes {
        client.put(&format!("/tail/{i}"), i.to_string()).await.unwrap();
    }
    let leader = cluster.leader().await;
    let last = cluster.node(leader).status().last_log_index;
    eventually(WAIT, "every node to hold the leader's whole log", || async {
        cluster.ids().into_iter().all(|id| cluster.node(id).status().last_log_index >= last).then_some(())
    })
    .await;

    cluster.stop(leader).await;
    let cut = cut_last_log_records(cluster.data_dir(leader), 3);
    assert_eq!(cut, 3, "the stopped leader's log ends with the last writes");
    cluster.restart(leader).await;

    // Writes go on through whoever leads now; then every node holds every acknowledged write.
    marina_coord_client::retry_idempotent(|| client.put("/after", "x")).await.unwrap();
    let leader = cluster.leader().await;
    let applied = cluster.node(leader).status().applied_index;
    for id in cluster.ids() {
        eventually(WAIT, &format!("node {id} to apply the leader's log"), || async {
            (cluster.node(id).status().applied_index >= applied).then_some(())
        })
        .await;
        let on_node = cluster.client_of(id);
        for i in 0..writes {
            let node = on_node.get_stale(&format!("/tail/{i}")).await.unwrap();
            assert_eq!(node.map(|n| n.data), Some(i.to_string().into()), "node {id}: acknowledged write {i}");
        }
        assert_eq!(on_node.get_stale("/after").await.unwrap().map(|n| n.data), Some("x".into()), "node {id}");
    }
    let revisions: Vec<u64> = cluster.ids().into_iter().map(|id| cluster.node(id).status().revision).collect();
    assert!(revisions.iter().all(|revision| *revision == revisions[0]), "replicas diverged: revisions {revisions:?}");
    for i in 0..writes {
        assert_eq!(&client.get(&format!("/tail/{i}")).await.unwrap().unwrap().data[..], i.to_string().as_bytes());
    }
}

/// Cuts the last `count` records off the newest log segment under a stopped node's data
/// dir, as a crash before they reached the disk leaves it; returns how many it cut.
fn cut_last_log_records(data_dir: &std::path::Path, count: usize) -> usize {
    let segments = data_dir.join("raft/log");
    let mut paths: Vec<_> = std::fs::read_dir(&segments).unwrap().map(|dirent| dirent.unwrap().path()).collect();
    paths.sort();
    let newest = paths.pop().expect("a log segment");
    let bytes = std::fs::read(&newest).unwrap();
    let mut offsets = Vec::new();
    let mut offset = 0;
    while let Ok((_, length)) = marina_daemon::record::parse_framed(&bytes[offset..]) {
        offsets.push(offset);
        offset += length;
    }
    let keep = offsets.len().saturating_sub(count);
    let cut_at = offsets.get(keep).copied().unwrap_or(bytes.len());
    std::fs::OpenOptions::new().write(true).open(&newest).unwrap().set_len(cut_at as u64).unwrap();
    offsets.len() - keep
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_can_be_added_promoted_and_removed() {
    let mut cluster = CoordCluster::start_with(3, |config| {
        config.raft.snapshot_every_entries = 20;
        config.raft.keep_entries_after_snapshot = 0;
    })
    .await;
    let client = cluster.client();
    for i in 0..50 {
        client.put(&format!("/before/{i}"), "x").await.unwrap();
    }
    // Every member compacts its log first, so whichever leads cannot send the newcomer the
    // log from its start.
    let mut compacted = u64::MAX;
    for id in cluster.ids() {
        let node = cluster.node(id);
        let purged = eventually(WAIT, &format!("node {id} to compact its log"), || async {
            node.metrics().purged.map(|log_id| log_id.index)
        })
        .await;
        compacted = compacted.min(purged);
    }
    let joiner = cluster.start_joiner(|_| {}).await;
    let address = cluster.address(joiner).to_string();
    let members = client.add_learner(joiner, &address).await.unwrap();
    assert!(members.iter().any(|m| m.id == joiner && m.kind == "learner"));
    let members = client.promote_learner(joiner).await.unwrap();
    assert!(members.iter().any(|m| m.id == joiner && m.kind == "voter"));
    // The new voter caught up, through a snapshot: it holds one reaching past where every
    // log now begins, which only the leader's could be.
    let stale_from_joiner = cluster.client_of(joiner);
    eventually(WAIT, "the new member to hold the data", || async {
        stale_from_joiner.get_at("/before/49", true).await.ok()?.0.map(|_| ())
    })
    .await;
    let metrics = cluster.node(joiner).metrics();
    assert!(
        metrics.snapshot.map(|log_id| log_id.index) >= Some(compacted),
        "the new member caught up without the leader's snapshot (logs compacted up to {compacted}): {metrics:?}"
    );

    let removed = cluster.ids().into_iter().find(|id| *id != joiner && *id != 1).unwrap();
    let members = client.remove_member(removed).await.unwrap();
    assert!(members.iter().all(|m| m.id != removed));
    assert_eq!(members.iter().filter(|m| m.kind == "voter").count(), 3);
    client.put("/after", "x").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_write_tells_a_failed_compare_from_a_lost_leadership() {
    let cluster = CoordCluster::start(3).await;
    let client = cluster.client();
    let session = client.create_session(Duration::from_secs(5), Duration::ZERO).await.unwrap();
    let election = Election::join(&client, &session, "/election", "me").await.unwrap();
    let fence = election.fence().clone();
    client.put("/config", "v1").await.unwrap();

    // The leader's own compare fails: not deposed, and its failure branch answers.
    let stale = Txn::new().when_value("/config", "v0").then_put("/config", "v2").otherwise_get("/config");
    let result = client.fenced(&fence, stale).await.unwrap();
    assert!(!result.succeeded);
    assert!(matches!(&result.results[..], [OpResult::Got(Some(node))] if node.data == "v1"), "{result:?}");

    let current = Txn::new().when_value("/config", "v1").then_put("/config", "v2");
    assert!(client.fenced(&fence, current).await.unwrap().succeeded);

    // Once the member node is gone, the same write is refused as deposed and not applied.
    election.resign().await.unwrap();
    let after = Txn::new().when_value("/config", "v2").then_put("/config", "v3");
    assert!(matches!(client.fenced(&fence, after).await, Err(Error::Deposed { .. })));
    assert_eq!(client.get("/config").await.unwrap().unwrap().data, "v2");
}

/// A storage failure Raft itself meets (here: a snapshot whose file cannot be written, as on
/// a full disk) fails the node with the reason, for its binary to exit non-zero (the
/// multi-process test fills a real disk under the log instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_cannot_be_written_fails_the_node() {
    let cluster = CoordCluster::start_with(1, |config| {
        config.raft.snapshot_every_entries = 20;
        // Snapshots are written through `current.tmp`: make it a device whose writes fail
        // with ENOSPC.
        let snapshots = config.data_dir.join("raft").join("snapshot");
        std::fs::create_dir_all(&snapshots).unwrap();
        std::os::unix::fs::symlink("/dev/full", snapshots.join("current.tmp")).unwrap();
    })
    .await;
    // Short retries: once the node stops, nothing answers.
    let options = marina_coord_client::ClientOptions {
        retry_for: Duration::from_secs(1),
        tls: Some(cluster.ca().operator()),
        ..Default::default()
    };
    let client = CoordClient::with_options(&cluster.url(), options);
    let node = cluster.node(1);
    for i in 0..40 {
        if node.shutdown.failure().is_some() || client.put(&format!("/s/{i}"), "x").await.is_err() {
            break;
        }
    }
    let failure = eventually(WAIT, "the node to fail", || async { node.shutdown.failure() }).await;
    assert!(failure.contains("current.tmp") && failure.contains("No space left on device"), "{failure}");
    // The reason is recorded before the stop is triggered (so that whoever sees the stop
    // sees why): the stop follows at once.
    eventually(WAIT, "the node to stop", || async { node.shutdown.is_triggered().then_some(()) }).await;
}

/// `rm -r /` is refused, by the client (its root holds every service's state) and by the
/// quorum itself (whoever asks, directly or in a transaction, on any node): nothing is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_root_is_refused() {
    let cluster = CoordCluster::start(3).await;
    let client = cluster.client(); // rooted at /test
    client.put("/keep", "x").await.unwrap();
    let refusals = [
        client.delete_recursive("/").await,
        client.delete("/", None).await,
        client.txn(Txn::new().then_delete("/", None, true)).await.map(|result| result.revision),
    ];
    for refusal in refusals {
        match refusal {
            Err(Error::InvalidArgument(message)) => {
                assert!(message.contains("\"/\"") && message.contains("/test"), "names the path: {message}")
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    let delete_root = |recursive| pb::DeleteRequest { path: "/".into(), expected_version: None, recursive };
    for id in cluster.ids() {
        let mut raw = raw_client(&cluster, cluster.address(id)).await;
        for recursive in [true, false] {
            let status = raw.delete(delete_root(recursive)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "node {id}: {status:?}");
            assert_eq!(error_kind(&status), "invalid_argument");
            assert!(status.message().contains("\"/\""), "names the path: {}", status.message());
        }
        let txn = pb::TxnRequest {
            compares: Vec::new(),
            success: vec![
                pb::Op {
                    op: Some(pb::op::Op::Set(pb::SetRequest {
                        path: "/other".into(),
                        upsert: true,
                        ..Default::default()
                    })),
                },
                pb::Op { op: Some(pb::op::Op::Delete(delete_root(true))) },
            ],
            failure: Vec::new(),
        };
        let status = raw.txn(txn).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "node {id}: {status:?}");
        assert!(status.message().contains("\"/\""), "{}", status.message());
    }
    assert_eq!(client.get("/keep").await.unwrap().unwrap().data, "x");
    assert!(cluster.client().get_stale("/other").await.unwrap().is_none(), "nothing of the refused txn applied");
}

/// One client (one connection) gets `limits.max_watches_per_client` watch streams on a node;
/// the next is refused with RESOURCE_EXHAUSTED naming the limit. Other clients keep theirs,
/// and a closed watch frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_only_so_many_watches() {
    let cluster = CoordCluster::start_with(1, |config| config.limits.max_watches_per_client = 3).await;
    let greedy = cluster.client();
    let mut watches = Vec::new();
    for i in 0..3 {
        watches.push(greedy.watch(&format!("/w/{i}"), false, 0).await.unwrap());
    }
    match greedy.watch("/w/3", false, 0).await {
        Err(Error::Other { code: tonic::Code::ResourceExhausted, message }) => {
            assert!(message.contains("limits.max_watches_per_client = 3"), "names the limit: {message}")
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {:?}", other.map(|watch| watch.established_at)),
    }

    // As any gRPC client sees it, with the error kind the coord client maps.
    let mut raw = raw_client(&cluster, cluster.address(1)).await;
    let request = || pb::WatchRequest { path: "/test/w".into(), recursive: true, ..Default::default() };
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(raw.watch(request()).await.unwrap().into_inner());
    }
    let status = raw.watch(request()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(error_kind(&status), "too_many_watches");
    assert!(status.message().contains("limits.max_watches_per_client = 3"), "{}", status.message());
    assert_eq!(cluster.node(1).status().watches, 6);

    // Another client is not affected; a closed watch frees its slot for its client.
    let mut other = cluster.client().watch("/w/0", false, 0).await.unwrap();
    drop(watches.pop());
    let mut reopened =
        eventually(WAIT, "the closed watch's slot to be free", || async { greedy.watch("/w/2", false, 0).await.ok() })
            .await;
    let written = greedy.put("/w/0", "x").await.unwrap().mod_revision;
    for watch in [&mut other, &mut watches[0]] {
        let change = tokio::time::timeout(WAIT, watch.next()).await.expect("watch delivers").unwrap().unwrap();
        assert_eq!(change.revision, written);
    }
    greedy.put("/w/2", "y").await.unwrap();
    let change = tokio::time::timeout(WAIT, reopened.next()).await.expect("watch delivers").unwrap().unwrap();
    assert_eq!(change.events[0].node.path, "/w/2");
}

/// Creates `count` nodes `/big/00000`... of `value_bytes` each, `per_txn` to a transaction.
async fn create_subtree(client: &CoordClient, count: usize, value_bytes: usize, per_txn: usize) {
    let value = vec![b'v'; value_bytes];
    for batch in (0..count).collect::<Vec<_>>().chunks(per_txn) {
        let txn = batch.iter().fold(Txn::new(), |txn, i| txn.then_put(&format!("/big/{i:05}"), value.clone()));
        client.txn(txn).await.unwrap();
    }
}

/// Asserts `events` are the deletes of `/big/00000`... `/big/{count - 1}`, each once.
fn assert_subtree_deleted(events: &[marina_coord_client::Event], count: usize) {
    let paths: std::collections::BTreeSet<&str> = events.iter().map(|event| event.node.path.as_str()).collect();
    assert_eq!(events.len(), count, "every event once");
    assert_eq!(paths.len(), count, "no event twice");
    assert!(events.iter().all(|event| event.kind == EventKind::Delete && event.node.path.starts_with("/big/")));
}

/// One revision larger than a gRPC message: a recursive delete of 5,000 nodes of 1 KiB
/// (over 5 MiB of events; gRPC clients decode 4 MiB by default, the node's default
/// `limits.max_watch_message_bytes`). The coord client gets it whole, once; a plain gRPC client
/// with tonic's default limit reads every part; a watcher that takes no parts is told which
/// limit it met instead of being fed a part as if it were everything. Watches go on after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_larger_than_a_message_reaches_watchers_whole() {
    let cluster = CoordCluster::start(3).await;
    let client = cluster.client();
    let count = 5_000;
    create_subtree(&client, count, 1024, 250).await;
    let mut watch = client.watch("/big", true, 0).await.unwrap();
    // On a follower: watches are served by whichever node the client reaches.
    let leader = cluster.leader().await;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let mut raw = raw_client(&cluster, cluster.address(follower)).await;
    let request =
        |fragment| pb::WatchRequest { path: "/test/big".into(), recursive: true, start_revision: 0, fragment };
    let mut parts = raw.watch(request(true)).await.unwrap().into_inner();
    let mut whole = raw.watch(request(false)).await.unwrap().into_inner();
    for stream in [&mut parts, &mut whole] {
        let created = stream.message().await.unwrap().expect("the created message");
        assert!(created.events.is_empty());
    }

    assert_eq!(client.delete_recursive("/big").await.unwrap(), count as u64);

    let change = tokio::time::timeout(WAIT, watch.next()).await.expect("the watch delivers").unwrap().unwrap();
    assert_subtree_deleted(&change.events, count);

    // The follower may have opened the raw watches before it applied the subtree's last
    // writes: those revisions come first.
    let (mut received, mut messages) = (0, 0);
    loop {
        let part = tokio::time::timeout(WAIT, parts.message()).await.expect("a part").expect("decodes").unwrap();
        if part.revision < change.revision {
            continue;
        }
        assert_eq!(part.revision, change.revision);
        received += part.events.len();
        messages += 1;
        if !part.fragment {
            break;
        }
    }
    assert_eq!(received, count);
    assert!(messages >= 2, "{messages} message(s) for over 5 MiB of events");

    let status = loop {
        match tokio::time::timeout(WAIT, whole.message()).await.expect("an answer") {
            Ok(Some(earlier)) if earlier.revision < change.revision => continue,
            Ok(other) => panic!("expected the revision to be refused, got {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limits.max_watch_message_bytes") && status.message().contains("fragment"),
        "{}",
        status.message()
    );

    // Both watches that took the revision go on.
    let after = client.put("/big/after", "x").await.unwrap().mod_revision;
    let change = tokio::time::timeout(WAIT, watch.next()).await.expect("the watch delivers").unwrap().unwrap();
    assert_eq!((change.revision, change.events.len()), (after, 1));
    let next = tokio::time::timeout(WAIT, parts.message()).await.expect("a message").unwrap().unwrap();
    assert_eq!((next.revision, next.events.len(), next.fragment), (after, 1, false));
}

/// `List` has no paging: a directory whose names alone pass 4 MiB (a gateway's instance
/// records for a hundred thousand instances come close) is answered whole, within the
/// node's default `server.max_encoding_message_bytes`, to the coord client, which decodes
/// that much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_larger_than_grpcs_default_message_is_answered_whole() {
    let cluster = CoordCluster::start(3).await;
    let client = cluster.client();
    let (count, name_bytes) = (18_000, 250);
    let name = |i: usize| format!("{i:05}{}", "n".repeat(name_bytes - 5));
    for batch in (0..count).collect::<Vec<_>>().chunks(250) {
        let txn = batch.iter().fold(Txn::new(), |txn, i| txn.then_put(&format!("/wide/{}", name(*i)), ""));
        client.txn(txn).await.unwrap();
    }
    let listing = client.list("/wide").await.unwrap();
    assert!(count * name_bytes > 4 << 20, "the listing is larger than 4 MiB");
    assert_eq!(listing.children.len(), count);
    let mut children = listing.children;
    children.sort();
    assert_eq!(children.first(), Some(&name(0)));
    assert_eq!(children.last(), Some(&name(count - 1)));
}

/// A TCP proxy in front of one node that, once armed, cuts the connection that carries the
/// next so many bytes from the node (once): a stream broken at a chosen point.
struct CuttingProxy {
    address: std::net::SocketAddr,
    /// Bytes from the node still allowed through before the cut (armed by `cut_after`).
    budget: std::sync::Arc<std::sync::atomic::AtomicI64>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let budget = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (task_budget, task_cut) = (budget.clone(), cut.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let (budget, cut) = (task_budget.clone(), task_cut.clone());
                connections.spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else { return };
                    let (mut client_read, mut client_write) = inbound.into_split();
                    let (mut node_read, mut node_write) = outbound.into_split();
                    let up = tokio::io::copy(&mut client_read, &mut node_write);
                    let down = async {
                        let mut buffer = vec![0u8; 16 << 10];
                        loop {
                            let read = match node_read.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(read) => read,
                            };
                            let left = budget.fetch_sub(read as i64, Ordering::SeqCst) - read as i64;
                            if left <= 0 && !cut.swap(true, Ordering::SeqCst) {
                                return;
                            }
                            if client_write.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    };
                    // Either way ends the connection: both sockets close here.
                    tokio::select! {
                        _ = up => {}
                        () = down => {}
                    }
                });
            }
        });
        Self { address, budget, cut, task }
    }

    fn cut_after(&self, bytes: i64) {
        self.budget.store(bytes, std::sync::atomic::Ordering::SeqCst);
    }

    fn was_cut(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// A watch whose stream breaks between the parts of a revision drops the parts it has,
/// resumes from that revision on another node, and hands the revision over once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_broken_mid_revision_resumes_it_whole() {
    // Small messages: 2,000 nodes of 1 KiB make a revision of about nine parts.
    let cluster = CoordCluster::start_with(3, |config| {
        config.limits.max_value_bytes = 16 << 10;
        config.server.max_decoding_message_bytes = 128 << 10;
        config.server.max_encoding_message_bytes = 256 << 10;
    })
    .await;
    let writer = cluster.client();
    let count = 2_000;
    create_subtree(&writer, count, 1024, 100).await;
    let proxy = CuttingProxy::start(cluster.address(1)).await;
    let url = CoordUrl {
        endpoints: vec![proxy.address.to_string(), cluster.address(2).to_string(), cluster.address(3).to_string()],
        root: "/test".into(),
    };
    let watcher = CoordClient::with_tls(&url, Some(cluster.ca().operator()));
    let mut watch = watcher.watch("/big", true, 0).await.unwrap();
    // The watch's stream runs through the proxy: cut it halfway through the revision's
    // bytes (over two megabytes of events).
    proxy.cut_after(1 << 20);
    writer.delete_recursive("/big").await.unwrap();

    let change = tokio::time::timeout(WAIT, watch.next()).await.expect("the watch delivers").unwrap().unwrap();
    assert!(proxy.was_cut(), "the stream was cut mid-revision");
    assert_subtree_deleted(&change.events, count);
    // Delivered once: the next change is the next revision.
    let after = writer.put("/big/after", "x").await.unwrap().mod_revision;
    let next = tokio::time::timeout(WAIT, watch.next()).await.expect("the watch delivers").unwrap().unwrap();
    assert_eq!((next.revision, next.events.len()), (after, 1));
}
