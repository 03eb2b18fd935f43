//! Memory footprint (resident set, `VmRSS` in `/proc/PID/status`) of the service processes
//! in the states an operator sizes machines for:
//!
//! - an idle `marina-agent` (process runtime) registered with a `marina-master`;
//! - a leading `marina-master` with many agents registered: `sim` agents, each the
//!   production `marina_agent::spawn` in this bench process (as kubemark's hollow nodes), so
//!   the master sees as many real agent connections, heartbeats and registrations;
//! - the `marina-coord` nodes of a 3-process cluster holding many keys, written in batched
//!   transactions by concurrent clients.
//!
//! Each process is sampled every 100 ms for `--sample-seconds` once it is in that state; the
//! largest sample is reported, with `VmHWM` (the peak since start) beside it.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use marina_coord_client::{CoordClient, CoordUrl, Txn};
use marina_daemon::Shutdown;
use marina_daemon::tls::TlsConfig;
use marina_tests::{CoordProcesses, eventually};
use nix::unistd::Pid;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::report::verdict;
use marina_tests::processes::{Coord, ProcessCluster, SETTLE, Topology};

#[derive(clap::Args)]
pub struct Args {
    /// Sim agents registered with the measured master.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Keys written to the measured coord cluster.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// How long each process is sampled once in its measured state.
    #[arg(long, default_value_t = 3.0)]
    sample_seconds: f64,
}

const AGENT_TARGET_MB: f64 = 20.0;
const MASTER_TARGET_MB: f64 = 100.0;
/// Puts per transaction when filling coord (coord accepts up to 256 operations per txn).
const KEYS_PER_TXN: usize = 200;
/// Concurrent writers filling coord.
const WRITERS: usize = 8;
/// Bound for 1,000 agents to register on a loaded 2-core VM.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(180);

/// Resident memory of one process, in kB.
#[derive(Clone, Copy, Default)]
struct Memory {
    rss_kb: u64,
    hwm_kb: u64,
}

struct Row {
    process: &'static str,
    state: String,
    memory: Memory,
    target_mb: Option<f64>,
}

impl Row {
    fn mb(&self) -> f64 {
        self.memory.rss_kb as f64 / 1024.0
    }

    fn met(&self) -> Option<bool> {
        self.target_mb.map(|target| self.mb() <= target)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let window = Duration::from_secs_f64(args.sample_seconds);
    let mut rows = agent_and_master(&args, window).await?;
    rows.extend(coord(&args, window).await?);
    print_report(&args, &rows);
    Ok(())
}

/// The idle agent, then the master once `args.agents` more (sim) agents are registered.
async fn agent_and_master(args: &Args, window: Duration) -> anyhow::Result<Vec<Row>> {
    let topology = Topology::new(1, 1, "process", 0).coord(Coord::Processes(3));
    let cluster = ProcessCluster::start(topology).await;
    let agent = sample(pid(cluster.agents[0].pid())?, window).await?;
    let agent_row = Row {
        process: "marina-agent",
        state: "idle, process runtime, registered".into(),
        memory: agent,
        target_mb: Some(AGENT_TARGET_MB),
    };

    let started = Instant::now();
    let agent_tls = cluster.ca().config(marina_daemon::tls::Role::Agent, None);
    let sims = SimAgents::spawn(args.agents, &cluster.url, &agent_tls, &cluster.dir.path().join("sim")).await?;
    let total = args.agents + 1;
    eventually(REGISTER_TIMEOUT, &format!("{total} active agents"), || async {
        (active_agents(&cluster.masters[0]).await? >= total).then_some(())
    })
    .await;
    println!("footprint: {} sim agents registered in {:.1} s", args.agents, started.elapsed().as_secs_f64());
    let master = sample(pid(cluster.masters[0].pid())?, window).await?;
    let master_row = Row {
        process: "marina-master",
        state: format!("leading, {total} agents registered"),
        memory: master,
        target_mb: Some(MASTER_TARGET_MB),
    };
    sims.stop().await;
    drop(cluster);
    Ok(vec![agent_row, master_row])
}

/// Agents with the `sim` runtime in this process.
struct SimAgents {
    running: Vec<(Shutdown, marina_agent::AgentHandle)>,
}

impl SimAgents {
    async fn spawn(count: usize, coord: &CoordUrl, tls: &TlsConfig, dir: &Path) -> anyhow::Result<Self> {
        // A few at a time: each start reads coord and binds a port.
        let running = futures::stream::iter(0..count)
            .map(|index| spawn_sim_agent(index, coord.clone(), tls.clone(), dir.join(format!("agent-{index}"))))
            .buffer_unordered(16)
            .try_collect()
            .await?;
        Ok(Self { running })
    }

    async fn stop(self) {
        for (shutdown, _) in &self.running {
            shutdown.trigger();
        }
        for (_, handle) in self.running {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle.wait()).await;
        }
    }
}

async fn spawn_sim_agent(
    index: usize,
    coord: CoordUrl,
    tls: TlsConfig,
    work_dir: std::path::PathBuf,
) -> anyhow::Result<(Shutdown, marina_agent::AgentHandle)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut config = marina_agent::Config {
        listen: listener.local_addr()?.to_string(),
        coord,
        work_dir,
        runtime: marina_agent::RuntimeChoice::Sim.into(),
        hostname: Some(format!("sim-{index}.bench")),
        tls,
        ..Default::default()
    };
    config.resources.cpus = Some(8.0);
    config.resources.mem_mb = Some(8192.0);
    config.resources.disk_mb = Some(10240.0);
    let shutdown = Shutdown::new();
    let handle = marina_agent::spawn(config, listener, shutdown.clone()).await?;
    Ok((shutdown, handle))
}

/// The master's `marina_master_agents{status="active"}` gauge (cheaper to poll than the
/// full `/master/state` with a thousand agents).
async fn active_agents(master: &marina_tests::services::Service) -> Option<usize> {
    let text = master.get_text("/metrics").await?;
    let line = text.lines().find(|line| line.starts_with("marina_master_agents{status=\"active\"}"))?;
    line.rsplit(' ').next()?.parse::<f64>().ok().map(|value| value as usize)
}

/// The three coord nodes once `args.keys` keys are written and every node applied them.
async fn coord(args: &Args, window: Duration) -> anyhow::Result<Vec<Row>> {
    let cluster = CoordProcesses::start(3).await;
    let client = cluster.client();
    let started = Instant::now();
    fill(&client, args.keys, args.value_bytes).await?;
    let written = started.elapsed();
    let stored = client.list("/footprint").await?.children.len();
    anyhow::ensure!(stored == args.keys, "coord holds {stored} keys under /footprint, not {}", args.keys);
    let leader = cluster.leader().await;
    let applied = cluster.status(leader).await.ok_or_else(|| anyhow::anyhow!("leader status"))?.applied_index;
    eventually(SETTLE, "every coord node to apply the writes", || async {
        for id in 1..=3 {
            if cluster.status(id).await?.applied_index < applied {
                return None;
            }
        }
        Some(())
    })
    .await;
    println!(
        "footprint: {} keys x {} B written to coord in {:.1} s ({} per txn, {WRITERS} writers)",
        args.keys,
        args.value_bytes,
        written.as_secs_f64(),
        KEYS_PER_TXN
    );
    let mut rows = Vec::new();
    for id in 1..=3u64 {
        let memory = sample(pid(cluster.pid(id))?, window).await?;
        let role = if id == leader { "leader" } else { "follower" };
        rows.push(Row {
            process: "marina-coord",
            state: format!("node {id} ({role}), 3 nodes, {} keys x {} B", args.keys, args.value_bytes),
            memory,
            target_mb: None,
        });
    }
    Ok(rows)
}

/// Writes `/footprint/NNNNNNN` for `keys` keys: batches of puts in transactions, from
/// concurrent writers sharing one client.
async fn fill(client: &CoordClient, keys: usize, value_bytes: usize) -> anyhow::Result<()> {
    let value = Bytes::from(vec![b'x'; value_bytes]);
    let batches: Vec<std::ops::Range<usize>> =
        (0..keys).step_by(KEYS_PER_TXN).map(|start| start..(start + KEYS_PER_TXN).min(keys)).collect();
    futures::stream::iter(batches)
        .map(|batch| {
            let (client, value) = (client.clone(), value.clone());
            async move {
                let txn =
                    batch.fold(Txn::new(), |txn, key| txn.then_put(&format!("/footprint/{key:07}"), value.clone()));
                client.txn(txn).await.map(|_| ())
            }
        })
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn pid(pid: Option<Pid>) -> anyhow::Result<Pid> {
    pid.ok_or_else(|| anyhow::anyhow!("the process is not running"))
}

/// `VmRSS`/`VmHWM` of `pid` every 100 ms for `window`: the largest RSS and the last HWM.
async fn sample(pid: Pid, window: Duration) -> anyhow::Result<Memory> {
    let deadline = Instant::now() + window;
    let mut largest = Memory::default();
    loop {
        let now = read_memory(pid)?;
        largest = Memory { rss_kb: largest.rss_kb.max(now.rss_kb), hwm_kb: now.hwm_kb };
        if Instant::now() >= deadline {
            return Ok(largest);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn read_memory(pid: Pid) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))?;
        // "VmRSS:	   12345 kB"
        Ok(line.trim_start_matches(':').trim().trim_end_matches("kB").trim().parse()?)
    };
    Ok(Memory { rss_kb: field("VmRSS")?, hwm_kb: field("VmHWM")? })
}

fn print_report(args: &Args, rows: &[Row]) {
    println!(
        "footprint: resident memory (VmRSS, largest of samples every 100 ms over {} s; VmHWM = peak since start), \
         release binaries on loopback",
        args.sample_seconds
    );
    println!("{:<14} {:<50} {:>9} {:>9} {:>9} {:>4}", "process", "state", "RSS MB", "HWM MB", "target", "met");
    for row in rows {
        println!(
            "{:<14} {:<50} {:>9.1} {:>9.1} {:>9} {:>4}",
            row.process,
            row.state,
            row.mb(),
            row.memory.hwm_kb as f64 / 1024.0,
            row.target_mb.map(|t| format!("<= {t:.0}")).unwrap_or_else(|| "-".into()),
            row.met().map(verdict).unwrap_or("-"),
        );
    }
    let find = |process: &str| rows.iter().find(|r| r.process == process);
    let coord_max = rows.iter().filter(|r| r.process == "marina-coord").map(Row::mb).fold(0.0, f64::max);
    let all_met = rows.iter().all(|r| r.met().unwrap_or(true));
    println!(
        "summary: footprint agent {:.1} MB idle, master {:.1} MB with {} agents, coord {:.1} MB (largest node) with \
         {} keys; targets (agent <= {AGENT_TARGET_MB:.0} MB, master <= {MASTER_TARGET_MB:.0} MB) {}",
        find("marina-agent").map(Row::mb).unwrap_or(f64::NAN),
        find("marina-master").map(Row::mb).unwrap_or(f64::NAN),
        args.agents + 1,
        coord_max,
        args.keys,
        if all_met { "met" } else { "NOT met" },
    );
}
