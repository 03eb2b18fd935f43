//! The coord quorum in one process: real nodes, real loopback gRPC, real disk.

use std::time::Duration;

use futures::StreamExt;

use marina_coord_client::{CreateOptions, Election, Error, EventKind, OpResult, Txn};
use marina_tests::{CoordCluster, eventually};

const WAIT: Duration = Duration::from_secs(20);

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
    match client.create_session(Duration::from_millis(10), Duration::ZERO).await {
        Err(Error::InvalidArgument(message)) => assert!(message.contains("ttl_ms"), "{message}"),
        other => panic!("expected a TTL error, got {:?}", other.map(|s| s.id())),
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
    let session = client.create_session(Duration::from_secs(3), Duration::ZERO).await.unwrap();
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
    let mut cluster = CoordCluster::start_with(3, |config| config.raft.snapshot_every_entries = 50).await;
    let client = cluster.client();
    for i in 0..200 {
        client.put(&format!("/k/{i}"), i.to_string()).await.unwrap();
    }
    for id in cluster.ids() {
        cluster.stop(id).await;
    }
    for id in cluster.ids() {
        cluster.restart(id).await;
    }
    cluster.leader().await;
    let listing = client.list("/k").await.unwrap();
    assert_eq!(listing.children.len(), 200);
    assert_eq!(&client.get("/k/199").await.unwrap().unwrap().data[..], b"199");
    let status = cluster.node(1).status();
    assert!(status.applied_index >= 200, "{status:?}");
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
    let joiner = cluster.start_joiner(|_| {}).await;
    let address = cluster.address(joiner).to_string();
    let members = client.add_learner(joiner, &address).await.unwrap();
    assert!(members.iter().any(|m| m.id == joiner && m.kind == "learner"));
    let members = client.promote_learner(joiner).await.unwrap();
    assert!(members.iter().any(|m| m.id == joiner && m.kind == "voter"));
    // The new voter caught up (through a snapshot: the log was compacted meanwhile).
    let stale_from_joiner = cluster.client_of(joiner);
    eventually(WAIT, "the new member to hold the data", || async {
        stale_from_joiner.get_at("/before/49", true).await.ok()?.0.map(|_| ())
    })
    .await;

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
