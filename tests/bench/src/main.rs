//! `marina-bench`: Marina's benchmarks. Each scenario prints a table and a one-line summary.
//!
//!   marina-bench chaos [--faults 20] [--seed S]
//!   marina-bench coord [--systems marina,etcd,zookeeper] [--clients 1,16,64] [--seconds 5]
//!   marina-bench zk-election [--rounds 3]
//!   marina-bench placement [--agents 1000] [--tasks 100000] [--apps N] [--runs 5] [--stress 2]
//!   marina-bench failover [--rounds 20] [--agents 3]
//!   marina-bench start [--runs 20]
//!   marina-bench footprint [--agents 1000] [--keys 100000]
//!   marina-bench tracing [--requests 5000]

mod chaos;
mod coord;
mod daemon;
mod etcd;
mod failover;
mod footprint;
mod heap;
mod placement;
mod report;
mod start;
mod stats;
mod trace_overhead;
mod zk_election;
mod zookeeper;

use clap::{Parser, Subcommand};

/// Heap bytes per service for `placement` (see [`heap`]), with `--features heap-profile`.
#[cfg(feature = "heap-profile")]
#[global_allocator]
static ALLOCATOR: heap::TaggingAllocator = heap::TaggingAllocator;

/// Otherwise the allocator of the control plane's binaries (coord, master, gateway). The
/// hollow agents share it: the agent binary keeps the system allocator for its footprint,
/// and on their own hosts agents do not take the control plane's CPU as they do here.
#[cfg(not(feature = "heap-profile"))]
#[global_allocator]
static ALLOCATOR: marina_daemon::Allocator = marina_daemon::Allocator;

#[derive(Parser)]
#[command(name = "marina-bench", about = "Marina's benchmarks")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Faults (partitions, kills, pauses, loss, delay) against a cluster in network
    /// namespaces, with linearizability, leadership, apps and liveness checkers.
    Chaos(chaos::Args),
    /// 3-node clusters of coord, etcd and ZooKeeper on loopback: writes, linearizable reads,
    /// mixed 90/10.
    Coord(coord::Args),
    /// ZooKeeper's leader-election recipe: time from SIGKILL of the leader's client to a new leader.
    ZkElection(zk_election::Args),
    /// One candidate of `zk-election` (started by it, not by hand).
    #[command(hide = true)]
    ZkCandidate(zk_election::CandidateArgs),
    /// Tasks/s from `POST /v2/apps` to RUNNING: coord, master, gateway and sim agents in one process.
    Placement(placement::Args),
    /// SIGKILL / SIGTERM of the leading master (processes): time to a new leader, to all
    /// agents re-registered, to a scale request RUNNING.
    Failover(failover::Args),
    /// Start overhead: a Docker app through the gateway to RUNNING vs `docker run -d`.
    Start(start::Args),
    /// Resident memory of an idle agent, a master with many agents, coord nodes with many keys.
    Footprint(footprint::Args),
    /// Tracing overhead: coord request latency with spans off, on without an exporter, and
    /// exported over OTLP.
    Tracing(trace_overhead::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Chaos(args) => chaos::run(args).await,
        Scenario::Coord(args) => coord::run(args).await,
        Scenario::ZkElection(args) => zk_election::run(args).await,
        Scenario::ZkCandidate(args) => zk_election::candidate(args).await,
        Scenario::Placement(args) => placement::run(args).await,
        Scenario::Failover(args) => failover::run(args).await,
        Scenario::Start(args) => start::run(args).await,
        Scenario::Footprint(args) => footprint::run(args).await,
        Scenario::Tracing(args) => trace_overhead::run(args).await,
    }
}
