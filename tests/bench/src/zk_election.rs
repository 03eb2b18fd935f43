//! ZooKeeper leader-election failover, the peer figure for Marina's master failover.
//!
//! The recipe is ZooKeeper's standard one: every candidate creates an ephemeral sequential
//! znode under an election path; the lowest sequence leads; every other candidate watches
//! only its predecessor (no herd effect) and, when that znode goes, lists again to see whether
//! it now leads.
//!
//! Each candidate is a child process (`marina-bench zk-candidate`, hidden) with its own
//! session and a 10 s session timeout. A round SIGKILLs the leader's process: its session is
//! not closed, so its znode stays until ZooKeeper expires the session, which is exactly the
//! crash case a failover has to handle. The figure is the time from the kill to another
//! candidate announcing leadership on its stdout.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use std::io::Read;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::stats::Latencies;
use crate::zookeeper::{self, ZkCluster};

/// ZooKeeper's usual session timeout (the Java client's examples and Curator's default is
/// 60 s; 10 s is common in production for faster failover, and is within the server's
/// default bounds of 2 to 20 ticks of 2 s).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(10);

const ELECTION_PATH: &str = "/marina-bench-election";
const CANDIDATES: usize = 3;

#[derive(clap::Args)]
pub struct Args {
    /// Failovers to measure; each takes about one session timeout (10 s).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Arguments of the hidden `zk-candidate` subcommand the measurement starts.
#[derive(clap::Args)]
pub struct CandidateArgs {
    /// ZooKeeper connection string.
    #[arg(long)]
    connect: String,
    /// The election znode.
    #[arg(long)]
    path: String,
    #[arg(long)]
    session_timeout_ms: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let latencies = crate::daemon::until_interrupted(zookeeper_election_failover(args.rounds)).await?;
    println!(
        "zk-election: 3 ZooKeeper 3.8 servers on loopback, {CANDIDATES} candidate processes, session timeout {} s",
        SESSION_TIMEOUT.as_secs()
    );
    println!("{:<10} {:<34} {:>6} {:>9} {:>9} {:>9}", "system", "scenario", "rounds", "min ms", "p50 ms", "max ms");
    println!(
        "{:<10} {:<34} {:>6} {:>9.0} {:>9.0} {:>9.0}",
        "zookeeper",
        "leader client SIGKILL -> new leader",
        latencies.count(),
        latencies.ms(0.0),
        latencies.ms(0.5),
        latencies.ms(1.0)
    );
    println!(
        "summary: zookeeper election failover p50 {:.0} ms, max {:.0} ms over {} rounds (bounded below by the {} s session timeout)",
        latencies.ms(0.5),
        latencies.ms(1.0),
        latencies.count(),
        SESSION_TIMEOUT.as_secs()
    );
    Ok(())
}

/// What a candidate announced on its stdout (or that it exited), and when we read it.
enum Event {
    Joined,
    Leader,
    Exited,
}

struct Candidate {
    id: usize,
    /// Its stdin stays open for as long as we hold the child: the candidate exits when it
    /// closes, so none outlives this process.
    child: Child,
}

/// Measures `rounds` ZooKeeper leader failovers (see the module doc): a fresh 3-server
/// ensemble, [`CANDIDATES`] candidate processes, kill the leader, time until the next leads,
/// replace the killed candidate, repeat. Everything is stopped when this returns.
pub async fn zookeeper_election_failover(rounds: usize) -> anyhow::Result<Latencies> {
    if zookeeper::installation().is_none() {
        bail!("ZooKeeper not found: {}", zookeeper::INSTALL_HINT);
    }
    let cluster = ZkCluster::start(3).await?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut candidates = Vec::new();
    let mut next_id = 0;
    for _ in 0..CANDIDATES {
        candidates.push(spawn_candidate(next_id, &cluster, &events_tx)?);
        next_id += 1;
    }
    // Generous: JVM-free processes, but the first sessions wait for a loaded ensemble.
    let setup_deadline = Duration::from_secs(60);
    let mut joined = 0;
    let mut leader = None;
    while joined < CANDIDATES || leader.is_none() {
        match next_event(&mut events, setup_deadline, "candidates to join and one to lead").await? {
            (_, _, Event::Joined) => joined += 1,
            (_, id, Event::Leader) => leader = Some(id),
            (_, id, Event::Exited) => bail!("candidate {id} exited while joining"),
        }
    }
    let mut leader = leader.expect("loop ends with a leader");

    let mut latencies = Latencies::new();
    // A new leader needs the old session to expire: allow several timeouts before failing.
    let round_deadline = SESSION_TIMEOUT * 3 + Duration::from_secs(30);
    for round in 1..=rounds {
        let position = candidates.iter().position(|c| c.id == leader).context("the leader is a live candidate")?;
        let mut victim = candidates.remove(position);
        let killed_at = Instant::now();
        // SIGKILL: no session close reaches ZooKeeper, the leader's znode lives on until the
        // session expires.
        victim.child.start_kill().context("killing the leader candidate")?;
        let (elected_at, new_leader) = loop {
            match next_event(&mut events, round_deadline, "another candidate to lead").await? {
                (at, id, Event::Leader) if id != victim.id => break (at, id),
                (_, id, Event::Exited) if id != victim.id => bail!("candidate {id} exited unexpectedly"),
                _ => {}
            }
        };
        let failover = elected_at - killed_at;
        latencies.record(failover);
        eprintln!(
            "zk-election round {round}/{rounds}: leader candidate {} killed, candidate {new_leader} leads after {failover:?}",
            victim.id
        );
        leader = new_leader;
        victim.child.wait().await.context("reaping the killed candidate")?;
        // Back to full strength before the next round, as a restarted instance would be.
        if round < rounds {
            candidates.push(spawn_candidate(next_id, &cluster, &events_tx)?);
            next_id += 1;
            loop {
                match next_event(&mut events, setup_deadline, "the replacement candidate to join").await? {
                    (_, _, Event::Joined) => break,
                    (_, id, Event::Exited) => bail!("candidate {id} exited unexpectedly"),
                    _ => {}
                }
            }
        }
    }
    // The candidates (kill_on_drop) go before the ensemble they are connected to.
    drop(candidates);
    drop(cluster);
    Ok(latencies)
}

async fn next_event(
    events: &mut mpsc::UnboundedReceiver<(Instant, usize, Event)>,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<(Instant, usize, Event)> {
    match tokio::time::timeout(timeout, events.recv()).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => bail!("event channel closed while waiting for {what}"),
        Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Starts candidate `id` (this very binary, `zk-candidate`) and a task forwarding its
/// announcements, timestamped on arrival.
fn spawn_candidate(
    id: usize,
    cluster: &ZkCluster,
    events: &mpsc::UnboundedSender<(Instant, usize, Event)>,
) -> anyhow::Result<Candidate> {
    let mut child = Command::new(std::env::current_exe().context("locating marina-bench")?)
        .args(["zk-candidate", "--connect", &cluster.connect_string(), "--path", ELECTION_PATH])
        .arg("--session-timeout-ms")
        .arg(SESSION_TIMEOUT.as_millis().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a zk-candidate process")?;
    let stdout = child.stdout.take().context("candidate stdout")?;
    let events = events.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let event = match line.split_whitespace().next() {
                Some("joined") => Event::Joined,
                Some("leader") => Event::Leader,
                _ => continue,
            };
            let _ = events.send((Instant::now(), id, event));
        }
        let _ = events.send((Instant::now(), id, Event::Exited));
    });
    Ok(Candidate { id, child })
}

/// The candidate process: joins the election, announces `joined <znode>` and, once it leads,
/// `leader <znode>` on stdout, then leads until killed. Exits when its stdin closes, i.e. when
/// the measuring process is gone, so that no candidate outlives it.
pub async fn candidate(args: CandidateArgs) -> ! {
    // A plain thread with a blocking read: no tokio `io-std` feature (which would build tokio
    // a second time for this crate alone).
    std::thread::spawn(|| {
        let mut buffer = [0u8; 64];
        while std::io::stdin().read(&mut buffer).is_ok_and(|n| n > 0) {}
        std::process::exit(0);
    });
    match elect(&args).await {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("zk-candidate: {error:#}");
            std::process::exit(1)
        }
    }
}

async fn elect(args: &CandidateArgs) -> anyhow::Result<()> {
    let client = zk::Client::connector()
        .with_session_timeout(Duration::from_millis(args.session_timeout_ms))
        .connect(&args.connect)
        .await
        .context("connecting to ZooKeeper")?;
    match client.create(&args.path, &[], &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await {
        Ok(_) | Err(zk::Error::NodeExists) => {}
        Err(error) => return Err(error).context("creating the election znode"),
    }
    let (_, sequence) = client
        .create(
            &format!("{}/n_", args.path),
            &[],
            &zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .context("creating our candidate znode")?;
    let me = format!("n_{sequence}");
    println!("joined {me} session_timeout_ms={}", client.session_timeout().as_millis());
    loop {
        let mut children = client.list_children(&args.path).await?;
        children.sort_by_key(|child| sequence_of(child));
        let position = children.iter().position(|child| *child == me).context("our znode is gone: session expired")?;
        if position == 0 {
            println!("leader {me}");
            // Lead until killed (or the parent goes away).
            std::future::pending::<()>().await;
        }
        let predecessor = format!("{}/{}", args.path, children[position - 1]);
        match client.check_and_watch_stat(&predecessor).await? {
            // Gone between the listing and the watch: list again.
            (None, _) => continue,
            // Deleted (its session expired or it resigned) or changed: list again.
            (Some(_), watcher) => {
                let _event = watcher.changed().await;
            }
        }
    }
}

/// The sequence ZooKeeper appended to a candidate's znode name (`n_0000000042`).
fn sequence_of(name: &str) -> i64 {
    name.rsplit('_').next().and_then(|digits| digits.parse().ok()).unwrap_or(i64::MAX)
}
