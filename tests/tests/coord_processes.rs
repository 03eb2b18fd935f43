//! The coord quorum as real processes: SIGKILL, restart from disk, loss of quorum, a full
//! disk, and the election recipe across processes (SIGKILL and SIGSTOP of the leader).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use marina_coord_client::{ClientOptions, CoordClient, Error};
use marina_tests::tmpfs::{Tmpfs, fill};
use marina_tests::{CoordProcesses, TestProcess, eventually};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

/// The longest a lost leader takes to be replaced with the default configuration, and a
/// second more for clients to find the new one: a follower stands only once the old
/// leader's lease (the max election timeout) and then its own election timeout have run out.
fn failover_bound() -> Duration {
    let raft = marina_coord::Config::default().raft;
    Duration::from_millis(2 * raft.election_timeout_max_ms) + Duration::from_secs(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_leader_then_two_nodes() {
    let mut cluster = CoordProcesses::start(3).await;
    let client = cluster.client();
    for i in 0..20 {
        client.put(&format!("/acked/{i}"), i.to_string()).await.unwrap();
    }

    // SIGKILL the leader: writes go through the other two within the election timeout.
    let leader = cluster.leader().await;
    cluster.kill(leader).await;
    let killed_at = Instant::now();
    // A put sent on the dead leader's connection as it broke has an unknown outcome
    // (Indeterminate); a put may be applied twice, so it is retried as callers do.
    marina_coord_client::retry_idempotent(|| client.put("/after-kill", "x")).await.unwrap();
    let recovered = killed_at.elapsed();
    let bound = failover_bound();
    assert!(recovered < bound, "writes resumed {recovered:?} after the leader died (bound {bound:?})");
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);

    // Restarted from its data dir, it rejoins and catches up; nothing acknowledged is lost.
    let restarted_only = restart_and_check_acked_writes(&mut cluster, leader, new_leader, "SIGKILL").await;

    // SIGKILL two of three: writes fail with a clear no-quorum error; stale reads still answer.
    let survivor = leader;
    for id in [1, 2, 3].into_iter().filter(|id| *id != survivor) {
        cluster.kill(id).await;
    }
    // Patient enough for the survivor to find its leader gone (it names the dead one until
    // then, and the client is refused there), with room for a busy machine; then it gives
    // up with the error the test checks.
    let impatient = cluster.client_with(ClientOptions { retry_for: 2 * failover_bound(), ..Default::default() });
    match impatient.put("/no-quorum", "x").await {
        // NoQuorum when the survivor knows no leader; Indeterminate if it still led and took
        // the write into its log (it would commit should the majority return).
        Err(Error::NoQuorum(message) | Error::Indeterminate(message)) => {
            assert!(message.contains("majority"), "{message}")
        }
        other => panic!("expected NoQuorum or Indeterminate, got {other:?}"),
    }
    let stale = restarted_only.get_stale("/after-kill").await.unwrap();
    assert_eq!(stale.map(|n| n.data), Some("x".into()));
}

/// A coord node whose disk fills up does not idle as NOT_SERVING: it stops and exits
/// non-zero for its supervisor to restart it, its log naming the file and the error. The
/// others carry on; once there is space again, the node restarts from its data and catches
/// up (its log's torn last record is cut off, nothing acknowledged is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_up_exits_non_zero_and_the_others_carry_on() {
    // Declared first, dropped last: the processes die before their file systems go.
    let mut disks = Tmpfs::new();
    let data_dirs: Vec<PathBuf> = (1..=3).map(|id| disks.mount(&format!("node-{id}"), "16m")).collect();
    let mut cluster = CoordProcesses::start_with_data_dirs(3, |id| data_dirs[id as usize - 1].clone()).await;
    let client = cluster.client();
    for i in 0..20 {
        client.put(&format!("/acked/{i}"), i.to_string()).await.unwrap();
    }
    let leader = cluster.leader().await;
    let full_dir = &data_dirs[leader as usize - 1];
    let filler = fill(full_dir);

    // Writes go on until the leader's next log append finds no space.
    let filled = Instant::now();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let _ = client.put(&format!("/after-full/{i}"), vec![b'x'; 4096]).await;
            }
        })
    };
    let status = cluster.wait_exit(leader, Duration::from_secs(30)).await;
    writer.abort();
    let log = cluster.log(leader);
    let status = status.unwrap_or_else(|| panic!("the leader kept running with a full disk; its log:\n{log}"));
    assert!(!status.success(), "a node whose storage failed must exit non-zero, got {status:?}");
    let stopped = filled.elapsed();
    assert!(stopped < Duration::from_secs(30), "the node took {stopped:?} to stop");
    let reason = log
        .lines()
        .find(|line| line.contains("stopped after a fatal error"))
        .unwrap_or_else(|| panic!("no final error line in the log:\n{log}"));
    assert!(
        reason.contains("No space left on device") && reason.contains(&full_dir.display().to_string()),
        "the reason names the error and the file: {reason}"
    );

    // The other two elect a leader and take writes.
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    marina_coord_client::retry_idempotent(|| client.put("/after-failure", "x")).await.unwrap();

    // With space again, the node starts from its data and catches up.
    std::fs::remove_file(&filler).unwrap();
    let restarted_only = restart_and_check_acked_writes(&mut cluster, leader, new_leader, "the full disk").await;
    assert_eq!(restarted_only.get_stale("/after-failure").await.unwrap().map(|n| n.data), Some("x".into()));
}

/// A candidate process and the lines it prints.
struct Candidate {
    process: TestProcess,
    lines: Lines<BufReader<ChildStdout>>,
    name: String,
}

impl Candidate {
    fn start(cluster: &CoordProcesses, name: &str, log_dir: PathBuf) -> Self {
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_marina-test-candidate"));
        let args = vec![
            cluster.url().to_string(),
            "/election/members".into(),
            name.into(),
            "1500".into(),
            "300".into(),
            cluster.ca().operator_dir(),
        ];
        let log = log_dir.join(format!("{name}.log"));
        let (process, stdout) = TestProcess::spawn_piped(name, &binary, &args, &log);
        Self { process, lines: BufReader::new(stdout).lines(), name: name.into() }
    }

    /// Waits for a line starting with `prefix`.
    async fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{} did not print {prefix:?}", self.name))
                .expect("reading candidate output")
                .unwrap_or_else(|| panic!("{} exited before printing {prefix:?}", self.name));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }
}

/// Every fenced write, by revision: (mod_revision, epoch, candidate).
async fn fenced_writes(client: &CoordClient) -> Vec<(u64, u64, String)> {
    let listing = client.list("/election/writes").await.unwrap();
    let mut writes = Vec::new();
    for name in listing.children {
        let node = client.get(&format!("/election/writes/{name}")).await.unwrap().unwrap();
        let epoch: u64 = String::from_utf8_lossy(&node.data).parse().unwrap();
        writes.push((node.mod_revision, epoch, name.rsplit_once('-').unwrap().0.to_owned()));
    }
    writes.sort();
    writes
}

/// Leaderships never overlap in the store: ordered by revision, epochs never go back, and
/// each epoch belongs to one candidate.
fn assert_one_leader_at_a_time(writes: &[(u64, u64, String)]) {
    let mut owners: HashMap<u64, &str> = HashMap::new();
    for window in writes.windows(2) {
        assert!(window[0].1 <= window[1].1, "an older leader wrote after a newer one: {window:?}");
    }
    for (_, epoch, name) in writes {
        let owner = owners.entry(*epoch).or_insert(name);
        assert_eq!(owner, name, "epoch {epoch} used by two candidates");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_survives_sigkill_and_fences_a_frozen_leader() {
    let cluster = CoordProcesses::start(3).await;
    let client = cluster.client();
    // Exactly one of three leads (the first to join); the others stand by.
    let mut first = Candidate::start(&cluster, "a", cluster.dir().to_owned());
    first.expect("leading").await;
    let mut candidates = Vec::new();
    for name in ["b", "c"] {
        let mut candidate = Candidate::start(&cluster, name, cluster.dir().to_owned());
        candidate.expect("standby").await;
        candidates.push(candidate);
    }

    // SIGKILL the leader: the next candidate leads within the disconnect grace plus an
    // election round, far below the session TTL.
    let killed_at = Instant::now();
    first.process.kill().await;
    candidates[0].expect("leading").await;
    let takeover = killed_at.elapsed();
    assert!(takeover < Duration::from_millis(1500), "takeover after SIGKILL took {takeover:?}");

    // SIGSTOP the new leader past its TTL: the last candidate takes over.
    let frozen_epoch = eventually(WAIT, "b to write as leader", || async {
        fenced_writes(&client).await.iter().filter(|w| w.2 == "b").map(|w| w.1).max()
    })
    .await;
    candidates[0].process.freeze();
    candidates[1].expect("leading").await;
    let takeover_revision = eventually(WAIT, "the new leader's first write", || async {
        fenced_writes(&client).await.iter().find(|w| w.2 == "c").map(|w| w.0)
    })
    .await;

    // Thawed, the old leader cannot write: it learns it is deposed or that its session is
    // lost, and nothing it attempted after the takeover landed.
    candidates[0].process.thaw();
    candidates[0].expect("lost").await;
    let writes = fenced_writes(&client).await;
    assert!(
        writes
            .iter()
            .all(|(revision, epoch, name)| name != "b" || *revision < takeover_revision && *epoch == frozen_epoch),
        "the frozen leader wrote after it was replaced: {writes:?}"
    );
    assert_one_leader_at_a_time(&writes);
}

/// Lease reads stay linearizable: a leader frozen (SIGSTOP) while the others elect a new
/// one and write, then thawed, never answers a read from its old state — its lease ran out
/// while it was frozen, so it must confirm leadership and finds it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_old_leader_never_serves_a_stale_read() {
    use nix::sys::signal::{Signal, kill};
    let cluster = CoordProcesses::start(3).await;
    let client = cluster.client();
    client.put("/lease/k", "old").await.unwrap();
    let leader = cluster.leader().await;
    let on_leader = |id: u64| {
        let url =
            marina_coord_client::CoordUrl { endpoints: vec![cluster.address(id).to_owned()], root: "/test".into() };
        cluster.client_at(&url, ClientOptions { retry_for: Duration::from_secs(5), ..Default::default() })
    };
    let old_leader = on_leader(leader);
    // Reads on the leader: it now answers them under a lease.
    for _ in 0..20 {
        assert_eq!(old_leader.get("/lease/k").await.unwrap().unwrap().data, "old");
    }
    let operator = marina_tests::tls::http_client(&cluster.ca().operator());
    let url = format!("https://{}/metrics", cluster.address(leader));
    let metrics = operator.get(url).send().await.unwrap().text().await.unwrap();
    let lease_reads: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("marina_coord_lease_reads_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    assert!(lease_reads > 0, "no read was answered under the lease:\n{metrics}");

    let pid = cluster.pid(leader).unwrap();
    kill(pid, Signal::SIGSTOP).unwrap();
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let survivors = cluster.client_at(
        &marina_coord_client::CoordUrl {
            endpoints: others.iter().map(|id| cluster.address(*id).to_owned()).collect(),
            root: "/test".into(),
        },
        ClientOptions::default(),
    );
    // The followers forward writes to the frozen leader until they elect another: a put
    // (idempotent) is retried for as long as that takes. Only patience: what the test
    // checks is the reads after the thaw, not how soon the write lands.
    let deadline = Instant::now() + WAIT;
    loop {
        match survivors.put("/lease/k", "new").await {
            Ok(_) => break,
            Err(Error::Indeterminate(_) | Error::Unavailable(_)) if Instant::now() < deadline => {}
            Err(error) => panic!("the survivors took no write within {WAIT:?}: {error}"),
        }
    }
    kill(pid, Signal::SIGCONT).unwrap();

    // At once, and for a while after: the old leader gives the new value (it found its
    // leadership gone and named the new leader, whom the client asked) or says it cannot
    // serve the read as leader: it could not confirm its leadership with a majority
    // (NoQuorum), or it no longer leads and knew no leader to name (Unavailable, once the
    // client gave up). Any other error is not this test's outcome.
    let until = Instant::now() + Duration::from_secs(2);
    let mut answered = 0;
    while Instant::now() < until {
        match old_leader.get("/lease/k").await {
            Ok(node) => {
                assert_eq!(node.unwrap().data, "new", "a stale read from the thawed leader");
                answered += 1;
            }
            Err(Error::NoQuorum(_) | Error::Unavailable(_)) => {}
            Err(other) => panic!("the thawed leader failed a read otherwise than by lost leadership: {other:?}"),
        }
    }
    assert!(answered > 0, "the thawed node answered no read at all");
}

/// Restarts node `id` from its data dir, waits until it follows `leader` and has applied
/// what the leader had, and checks that the 20 writes under `/acked` acknowledged before
/// `what` all survived on it. Returns a client of that node alone.
async fn restart_and_check_acked_writes(cluster: &mut CoordProcesses, id: u64, leader: u64, what: &str) -> CoordClient {
    cluster.restart(id);
    let target = cluster.status(leader).await.unwrap().applied_index;
    eventually(WAIT, "the restarted node to catch up", || async {
        let status = cluster.status(id).await?;
        (status.applied_index >= target && status.leader_id == leader).then_some(())
    })
    .await;
    let restarted_only = cluster.client_at(
        &marina_coord_client::CoordUrl { endpoints: vec![cluster.address(id).to_owned()], root: "/test".into() },
        ClientOptions::default(),
    );
    for i in 0..20 {
        let node = restarted_only.get_stale(&format!("/acked/{i}")).await.unwrap();
        assert_eq!(node.map(|n| n.data), Some(i.to_string().into()), "acked write {i} survived {what}");
    }
    restarted_only
}
