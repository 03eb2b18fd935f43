//! Coord throughput and latency, side by side with its peers: 3-node clusters of
//! `marina-coord`, etcd 3.4 and ZooKeeper 3.8, each on loopback, driven by the same load
//! generator (N concurrent clients, each with its own connection, 256-byte values).
//!
//! The systems are measured one after the other, each cluster started just before its rows
//! and stopped right after, so that no cluster competes with another for the machine's cores.
//!
//! What an operation is, per system (each read is linearizable):
//! - marina: `put` (upsert) and `get` (linearizable by default; `get_stale` is the other kind);
//! - etcd: `Put` and `Range` with its default `serializable=false` (a ReadIndex round through
//!   the leader);
//! - ZooKeeper: `setData` on the pre-created znode, and `sync` + `getData`. A plain `getData`
//!   is served from the connected server's local, possibly stale, state; `sync` makes that
//!   server catch up with the leader first, which is ZooKeeper's documented way to read the
//!   latest committed value. Both requests are one operation and their sum one latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use marina_coord_client::CoordClient;
use marina_tests::CoordProcesses;
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::etcd::{self, EtcdCluster};
use crate::stats::{Latencies, Row, print_table};
use crate::zookeeper::{self, ZkCluster};

/// Where every system keeps the benchmark's keys.
const PREFIX: &str = "/bench";

/// ZooKeeper's default-ish session timeout for the load clients (none expires during a run).
const ZK_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct Args {
    /// Systems to measure: marina, etcd, zookeeper. By default all of them; a peer that is
    /// not installed is reported as skipped.
    #[arg(long, value_delimiter = ',', default_value = "marina,etcd,zookeeper")]
    systems: Vec<System>,
    /// Workloads to run: write, read, mixed (90 % reads, 10 % writes).
    #[arg(long, value_delimiter = ',', default_value = "write,read,mixed")]
    workloads: Vec<Workload>,
    /// Concurrent clients per workload.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Measured seconds per row.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Keys written and read.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// With TLS (Marina: mutual TLS between nodes and with clients, as it runs by default;
    /// etcd: peer and client TLS with client certificates), without, or both (rows named
    /// `marina-tls`, `etcd-tls`). ZooKeeper runs without: its TLS needs Netty and Java
    /// keystores, not set up here.
    #[arg(long, value_enum, default_value = "both")]
    tls: TlsMode,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TlsMode {
    On,
    Off,
    Both,
}

impl TlsMode {
    fn runs(self) -> &'static [bool] {
        match self {
            TlsMode::On => &[true],
            TlsMode::Off => &[false],
            TlsMode::Both => &[false, true],
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum System {
    Marina,
    Etcd,
    Zookeeper,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Marina => "marina",
            System::Etcd => "etcd",
            System::Zookeeper => "zookeeper",
        }
    }

    /// The name of its rows: `marina`, or `marina-tls` with TLS.
    fn row_name(self, tls: bool) -> String {
        if tls { format!("{}-tls", self.name()) } else { self.name().to_owned() }
    }

    /// Why the system cannot run here, if it cannot.
    fn missing(self) -> Option<&'static str> {
        match self {
            System::Marina => None,
            System::Etcd => etcd::binary().is_none().then_some(etcd::INSTALL_HINT),
            System::Zookeeper => zookeeper::installation().is_none().then_some(zookeeper::INSTALL_HINT),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    Write,
    Read,
    /// 90% reads, 10% writes.
    Mixed,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Write => "write 256B",
            Workload::Read => "linearizable read",
            Workload::Mixed => "mixed 90r/10w",
        }
    }
}

/// A running 3-node cluster of one system. Dropping it stops the processes and removes
/// their data.
enum Cluster {
    Marina(CoordProcesses),
    Etcd(EtcdCluster),
    Zookeeper(ZkCluster),
}

impl Cluster {
    async fn start(system: System, tls: bool) -> anyhow::Result<Self> {
        Ok(match system {
            System::Marina if tls => Cluster::Marina(CoordProcesses::start(3).await),
            System::Marina => Cluster::Marina(CoordProcesses::start_plaintext(3).await),
            System::Etcd => Cluster::Etcd(EtcdCluster::start(3, tls).await?),
            System::Zookeeper => Cluster::Zookeeper(ZkCluster::start(3).await?),
        })
    }

    /// A new client with its own connection(s), as an independent process would have.
    async fn client(&self) -> anyhow::Result<Client> {
        Ok(match self {
            Cluster::Marina(cluster) => Client::Marina(cluster.client()),
            Cluster::Etcd(cluster) => Client::Etcd(Box::new(cluster.client().await?)),
            Cluster::Zookeeper(cluster) => Client::Zookeeper(
                zk::Client::connector()
                    .with_session_timeout(ZK_SESSION_TIMEOUT)
                    .connect(&cluster.connect_string())
                    .await
                    .context("connecting to ZooKeeper")?,
            ),
        })
    }

    fn description(&self) -> &'static str {
        match self {
            Cluster::Marina(_) => "3 marina-coord processes",
            Cluster::Etcd(_) => "3 etcd 3.4 processes",
            Cluster::Zookeeper(_) => "3 ZooKeeper 3.8 JVMs",
        }
    }
}

/// One load client: the same workload loop drives every system through this.
enum Client {
    Marina(CoordClient),
    /// Boxed: etcd's client is some 3.5 kB, the others about 100 bytes.
    Etcd(Box<etcd_client::Client>),
    Zookeeper(zk::Client),
}

impl Client {
    async fn write(&mut self, key: &str, value: &Bytes) -> anyhow::Result<()> {
        match self {
            Client::Marina(client) => {
                client.put(key, value.clone()).await?;
            }
            Client::Etcd(client) => {
                client.put(key, value.to_vec(), None).await?;
            }
            // Any version: an unconditional overwrite, like the others' puts.
            Client::Zookeeper(client) => {
                client.set_data(key, value, None).await?;
            }
        }
        Ok(())
    }

    async fn read(&mut self, key: &str) -> anyhow::Result<()> {
        match self {
            Client::Marina(client) => {
                client.get(key).await?;
            }
            // `GetOptions` default: serializable=false, i.e. linearizable.
            Client::Etcd(client) => {
                client.get(key, None).await?;
            }
            Client::Zookeeper(client) => {
                client.sync(key).await?;
                client.get_data(key).await?;
            }
        }
        Ok(())
    }

    /// Ends the client's session before the next row (or the cluster's shutdown): a ZooKeeper
    /// client closes its session in the background when dropped, and a cluster stopped in the
    /// middle of that leaves the client retrying (and logging) against dead servers.
    async fn close(self) {
        if let Client::Zookeeper(client) = self {
            let mut state = client.state_watcher();
            drop(client);
            let closed = async { while !state.changed().await.is_terminated() {} };
            // Bounded: a slow close only costs time, never a hang.
            let _ = tokio::time::timeout(Duration::from_secs(5), closed).await;
        }
    }

    /// Makes `key` exist with `value` (ZooKeeper's `setData` needs an existing znode).
    async fn seed(&mut self, key: &str, value: &Bytes) -> anyhow::Result<()> {
        match self {
            Client::Zookeeper(client) => {
                let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                match client.create(key, value, &options).await {
                    Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
                    Err(error) => Err(error.into()),
                }
            }
            _ => self.write(key, value).await,
        }
    }
}

fn key(index: usize) -> String {
    format!("{PREFIX}/{index}")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    crate::daemon::until_interrupted(compare(args)).await
}

async fn compare(args: Args) -> anyhow::Result<()> {
    let value = Bytes::from(vec![b'x'; 256]);
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut descriptions = Vec::new();
    // The writes of each mixed row on their own: the rows' p99 is about their p90.
    let mut mixed_writes = Vec::new();
    let mut systems = args.systems.clone();
    systems.dedup();
    for system in systems {
        if let Some(hint) = system.missing() {
            println!("skipped {}: not installed ({hint})", system.name());
            skipped.push(system.name());
            continue;
        }
        for &tls in args.tls.runs() {
            let name = system.row_name(tls);
            if tls && system == System::Zookeeper {
                println!("skipped {name}: ZooKeeper's TLS needs Netty and Java keystores, not set up by this bench");
                continue;
            }
            let cluster = Cluster::start(system, tls).await.with_context(|| format!("starting {name}"))?;
            descriptions.push(format!("{}{}", cluster.description(), if tls { " with TLS" } else { "" }));
            seed(&cluster, &args, &value).await.with_context(|| format!("seeding {name}"))?;
            for &workload in &args.workloads {
                for &clients in &args.clients {
                    let (row, writes) = measure(&name, &cluster, workload, clients, &args, &value).await?;
                    if workload == Workload::Mixed {
                        mixed_writes.push((row.system.clone(), clients, writes));
                    }
                    rows.push(row);
                }
            }
            // `cluster` is dropped here: its processes stop before the next one starts.
        }
    }
    if !rows.is_empty() {
        println!(
            "coord: 3-node clusters on loopback ({}), {} keys, {}s per row",
            descriptions.join(", "),
            args.keys,
            args.seconds
        );
        print_table(&rows);
        for (system, clients, writes) in &mixed_writes {
            println!(
                "  writes within mixed 90r/10w, {system}, {clients} clients: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
                writes.ms(0.5),
                writes.ms(0.9),
                writes.ms(0.99)
            );
        }
    }
    println!("summary: {}", summary(&rows, &skipped));
    Ok(())
}

/// Creates every key (32 requests in flight) so that reads find them and ZooKeeper's writes
/// have a znode to set.
async fn seed(cluster: &Cluster, args: &Args, value: &Bytes) -> anyhow::Result<()> {
    let mut client = cluster.client().await?;
    client.seed(PREFIX, &Bytes::new()).await?;
    client.close().await;
    let mut clients = Vec::new();
    for _ in 0..32 {
        clients.push(cluster.client().await?);
    }
    let chunks: Vec<Vec<usize>> = (0..clients.len()).map(|c| (c..args.keys).step_by(clients.len()).collect()).collect();
    let mut results = futures::stream::iter(clients.into_iter().zip(chunks))
        .map(|(mut client, keys)| async move {
            for index in keys {
                client.seed(&key(index), value).await?;
            }
            anyhow::Ok(client)
        })
        .buffer_unordered(32);
    while let Some(result) = results.next().await {
        result?.close().await;
    }
    Ok(())
}

async fn measure(
    system: &str,
    cluster: &Cluster,
    workload: Workload,
    clients: usize,
    args: &Args,
    value: &Bytes,
) -> anyhow::Result<(Row, Latencies)> {
    // Connect every client before the clock starts: connection setup is not measured.
    let mut connected = Vec::new();
    for _ in 0..clients {
        connected.push(cluster.client().await?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (client_index, mut client) in connected.into_iter().enumerate() {
        let stop = stop.clone();
        let value = value.clone();
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::new();
            let mut write_latencies = Latencies::new();
            let mut errors = 0u64;
            let mut n = client_index;
            while !stop.load(Ordering::Relaxed) {
                // A per-client LCG: the same key and read/write sequence for every system.
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let key = key((n >> 16) % keys);
                let write = match workload {
                    Workload::Write => true,
                    Workload::Read => false,
                    Workload::Mixed => (n >> 24) % 10 == 0,
                };
                let started = Instant::now();
                let result = if write { client.write(&key, &value).await } else { client.read(&key).await };
                match result {
                    Ok(()) => {
                        let took = started.elapsed();
                        latencies.record(took);
                        if write {
                            write_latencies.record(took);
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, write_latencies, errors, client)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Latencies::new();
    let mut errors = 0;
    let mut write_latencies = Latencies::new();
    let mut clients_done = Vec::new();
    for task in tasks {
        let (task_latencies, task_writes, task_errors, client) = task.await.context("load task")?;
        latencies.merge(&task_latencies);
        write_latencies.merge(&task_writes);
        errors += task_errors;
        clients_done.push(client);
    }
    // Operations completed by the stop flag; the last ones finish slightly after `seconds`.
    let elapsed = started.elapsed().as_secs_f64();
    futures::future::join_all(clients_done.into_iter().map(Client::close)).await;
    let row = Row {
        system: system.to_owned(),
        workload: workload.name().into(),
        clients,
        ops_per_sec: latencies.count() as f64 / elapsed,
        latencies,
        errors,
    };
    Ok((row, write_latencies))
}

/// Every system's peaks, then per peer: the lowest ratio of Marina's ops/s to the peer's over
/// the rows both ran, and the rows where Marina's p99 is worse.
fn summary(rows: &[Row], skipped: &[&str]) -> String {
    let mut parts = Vec::new();
    let mut systems: Vec<&str> = rows.iter().map(|row| row.system.as_str()).collect();
    systems.dedup();
    for (workload, unit) in [(Workload::Write, "writes/s"), (Workload::Read, "linearizable reads/s")] {
        let peaks: Vec<String> = systems
            .iter()
            .map(|system| {
                let peak = rows
                    .iter()
                    .filter(|r| r.system == *system && r.workload == workload.name())
                    .map(|r| r.ops_per_sec)
                    .fold(0.0, f64::max);
                format!("{system} {peak:.0}")
            })
            .collect();
        if !peaks.is_empty() {
            parts.push(format!("peak {unit}: {}", peaks.join(", ")));
        }
    }
    // Marina against each peer, each with TLS or each without; and Marina with TLS against
    // itself without (what TLS costs).
    for (us, peer) in
        [("marina", "etcd"), ("marina", "zookeeper"), ("marina-tls", "etcd-tls"), ("marina-tls", "marina")]
    {
        let marina: Vec<&Row> = rows.iter().filter(|row| row.system == us).collect();
        let pairs: Vec<(&Row, &Row)> = rows
            .iter()
            .filter(|row| row.system == peer)
            .filter_map(|theirs| {
                marina
                    .iter()
                    .find(|ours| ours.workload == theirs.workload && ours.clients == theirs.clients)
                    .map(|ours| (*ours, theirs))
            })
            .collect();
        let Some((lowest, ours, theirs)) = pairs
            .iter()
            .map(|(ours, theirs)| (ours.ops_per_sec / theirs.ops_per_sec.max(f64::MIN_POSITIVE), ours, theirs))
            .min_by(|a, b| a.0.total_cmp(&b.0))
        else {
            continue;
        };
        let worse_p99: Vec<String> = pairs
            .iter()
            .filter(|(ours, theirs)| ours.latencies.ms(0.99) > theirs.latencies.ms(0.99))
            .map(|(ours, _)| format!("{}/{}", ours.workload, ours.clients))
            .collect();
        parts.push(format!(
            "{us} vs {peer}: {us} ops/s >= {lowest:.2}x {peer}'s over {} rows (lowest: {}/{}: {:.0} vs {:.0}), p99 worse in {}/{}{}",
            pairs.len(),
            ours.workload,
            ours.clients,
            ours.ops_per_sec,
            theirs.ops_per_sec,
            worse_p99.len(),
            pairs.len(),
            if worse_p99.is_empty() { String::new() } else { format!(" ({})", worse_p99.join(", ")) }
        ));
    }
    if !skipped.is_empty() {
        parts.push(format!("skipped (not installed): {}", skipped.join(", ")));
    }
    parts.join("; ")
}
