//! Coord throughput and latency: a 3-node cluster of `marina-coord` processes on loopback,
//! N concurrent clients, 256-byte values.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use marina_coord_client::CoordClient;
use marina_tests::CoordProcesses;
use tokio::time::Instant;

use crate::stats::{Latencies, Row, print_table};

#[derive(clap::Args)]
pub struct Args {
    /// Concurrent clients per workload.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Measured seconds per row.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Keys written and read.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
}

#[derive(Clone, Copy)]
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

pub async fn run(args: Args) -> anyhow::Result<()> {
    let cluster = CoordProcesses::start(3).await;
    let value = Bytes::from(vec![b'x'; 256]);
    let seed = cluster.client();
    for key in 0..args.keys {
        seed.put(&format!("/bench/{key}"), value.clone()).await?;
    }
    let mut rows = Vec::new();
    for workload in [Workload::Write, Workload::Read, Workload::Mixed] {
        for &clients in &args.clients {
            rows.push(measure(&cluster, workload, clients, &args, value.clone()).await);
        }
    }
    println!("coord: 3 marina-coord processes on loopback, {} keys, {}s per row", args.keys, args.seconds);
    print_table(&rows);
    let best_write =
        rows.iter().filter(|r| r.workload == Workload::Write.name()).map(|r| r.ops_per_sec).fold(0.0, f64::max);
    let best_read =
        rows.iter().filter(|r| r.workload == Workload::Read.name()).map(|r| r.ops_per_sec).fold(0.0, f64::max);
    println!("summary: coord peak {best_write:.0} writes/s, {best_read:.0} linearizable reads/s");
    Ok(())
}

async fn measure(cluster: &CoordProcesses, workload: Workload, clients: usize, args: &Args, value: Bytes) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        // One connection per client, as independent processes would have.
        let client: CoordClient = cluster.client();
        let stop = stop.clone();
        let value = value.clone();
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::new();
            let mut errors = 0u64;
            let mut n = client_index;
            while !stop.load(Ordering::Relaxed) {
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let key = format!("/bench/{}", n % keys);
                let write = match workload {
                    Workload::Write => true,
                    Workload::Read => false,
                    Workload::Mixed => n % 10 == 0,
                };
                let started = Instant::now();
                let result = if write {
                    client.put(&key, value.clone()).await.map(|_| ())
                } else {
                    client.get(&key).await.map(|_| ())
                };
                match result {
                    Ok(()) => latencies.record(started.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Latencies::new();
    let mut errors = 0;
    for task in tasks {
        let (task_latencies, task_errors) = task.await.expect("load task");
        latencies.merge(&task_latencies);
        errors += task_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Row {
        system: "marina".into(),
        workload: workload.name().into(),
        clients,
        ops_per_sec: latencies.count() as f64 / elapsed,
        latencies,
        errors,
    }
}
