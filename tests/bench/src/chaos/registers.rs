//! Coord as a register store under faults: clients read, write and compare-and-set a few
//! keys through every fault, each operation recorded with its call and return times; the
//! history, closed by one read per key after the last heal, is checked for
//! linearizability (which includes "no acknowledged write is lost").
//!
//! Keys change every round (`r{round}-{k}`), so each key's history stays short enough for
//! an exact check however long the run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use marina_coord_client::{ClientOptions, CoordClient, Error};
use marina_tests::linearizability::{self, Budget, Expected, Input, Outcome, Output, Recorder};
use marina_tests::netns_cluster::NetnsCluster;

/// Where the registers live in coord.
const ROOT: &str = "/chaos-registers";
const KEYS_PER_ROUND: usize = 3;
const CLIENTS: usize = 3;

/// The clients, running until [`Registers::stop`].
pub struct Registers {
    recorder: Arc<Recorder<u64>>,
    round: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// For setup and final reads: patient, unlike the workload's clients.
    admin: CoordClient,
}

/// A client that gives up fast: a fault must not stall the history, only make operations
/// indeterminate.
fn impatient() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(2),
        retry_for: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

pub fn key(round: usize, k: usize) -> String {
    format!("/r{round}-{k}")
}

impl Registers {
    pub fn start(cluster: &NetnsCluster, seed: u64) -> Self {
        let recorder = Arc::new(Recorder::new());
        let round = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..CLIENTS)
            .map(|client| {
                let coord = cluster.coord_client(ROOT, impatient());
                let rng = fastrand::Rng::with_seed(seed.wrapping_add(client as u64 + 1));
                let (recorder, round, stop) = (recorder.clone(), round.clone(), stop.clone());
                tokio::spawn(run_client(client, coord, rng, recorder, round, stop))
            })
            .collect();
        let admin = cluster
            .coord_client(ROOT, ClientOptions { retry_for: Duration::from_secs(60), ..ClientOptions::default() });
        Registers { recorder, round, stop, tasks, admin }
    }

    /// Creates round `round`'s keys (recorded, as writes of 0) and moves the clients to
    /// them. Called between rounds, when the cluster has converged.
    pub async fn begin_round(&self, round: usize) -> anyhow::Result<()> {
        for k in 0..KEYS_PER_ROUND {
            let key = key(round, k);
            let invocation = self.recorder.invoke(usize::MAX - 1, key.clone(), Input::Write(0));
            // A put whose outcome is unknown (a connection the last faults broke) is sent
            // again: no client writes this key yet, so a second write of 0 changes nothing.
            let output = match marina_coord_client::retry_idempotent(|| self.admin.put(&key, "0")).await {
                Ok(_) => Output::WriteOk,
                Err(error) => anyhow::bail!("creating register {key} after convergence: {error}"),
            };
            self.recorder.complete(invocation, output);
        }
        self.round.store(round, Ordering::SeqCst);
        Ok(())
    }

    /// Stops the clients, reads every key once more and checks the history. Returns the
    /// checker's report line and whether it found a violation.
    pub async fn finish(self, rounds: usize) -> (String, bool) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            let _ = task.await;
        }
        let mut final_reads = Vec::new();
        for round in 1..=rounds {
            for k in 0..KEYS_PER_ROUND {
                let key = key(round, k);
                match self.admin.get(&key).await {
                    Ok(node) => final_reads.push((key, node.and_then(|node| parse(&node.data)))),
                    Err(error) => return (format!("could not read {key} after the last heal: {error}"), true),
                }
            }
        }
        let history = self.recorder.history();
        let operations = history.len();
        let indeterminate = history.iter().filter(|op| op.output == Output::Unknown && op.input != Input::Read).count();
        let acknowledged = history.iter().filter(|op| matches!(op.output, Output::WriteOk | Output::CasOk)).count();
        let budget = Budget::default().within(Duration::from_secs(300));
        let started = std::time::Instant::now();
        let keys = final_reads.len();
        let outcome = tokio::task::spawn_blocking(move || {
            linearizability::check_with_final_reads(&history, final_reads, &budget)
        })
        .await;
        let stats = format!(
            "{} operations on {keys} keys ({acknowledged} acknowledged writes, {indeterminate} indeterminate), checked in {:.1} s",
            operations,
            started.elapsed().as_secs_f64()
        );
        match outcome {
            Ok(Ok(Outcome::Ok)) => {
                (format!("ok — linearizable with a final read per key, no acknowledged write lost: {stats}"), false)
            }
            Ok(Ok(Outcome::Unknown { undecided_keys })) => (
                format!("undecided — the checker's budget ran out on {undecided_keys:?} (no violation found): {stats}"),
                false,
            ),
            Ok(Ok(Outcome::Violation(violation))) => (format!("VIOLATION — {violation}\n  ({stats})"), true),
            Ok(Err(invalid)) => (format!("VIOLATION — the history could not be checked: {invalid}"), true),
            Err(panic) => (format!("VIOLATION — the checker panicked: {panic}"), true),
        }
    }
}

fn parse(data: &[u8]) -> Option<u64> {
    std::str::from_utf8(data).ok()?.parse().ok()
}

async fn run_client(
    client: usize,
    coord: CoordClient,
    mut rng: fastrand::Rng,
    recorder: Arc<Recorder<u64>>,
    round: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    // Unique values: the client in the high bits, a counter below.
    let mut next_value = (client as u64 + 1) << 40;
    // The version this client last saw of each key, to compare-and-set against.
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        let current = round.load(Ordering::SeqCst);
        if current == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let key = key(current, rng.usize(..KEYS_PER_ROUND));
        match rng.u8(0..10) {
            0..=3 => {
                let invocation = recorder.invoke(client, key.clone(), Input::Read);
                let output = match coord.get(&key).await {
                    Ok(Some(node)) => {
                        seen.insert(key.clone(), node.version);
                        match parse(&node.data) {
                            Some(value) => Output::ReadVersionedOk { value: Some(value), version: node.version },
                            // Not a value this workload writes: the checker will say so.
                            None => Output::ReadVersionedOk { value: Some(u64::MAX), version: node.version },
                        }
                    }
                    Ok(None) => Output::ReadVersionedOk { value: None, version: 0 },
                    // A read that failed changed nothing.
                    Err(_) => Output::Failed,
                };
                recorder.complete(invocation, output);
            }
            4..=6 => {
                next_value += 1;
                let invocation = recorder.invoke(client, key.clone(), Input::Write(next_value));
                let output = match coord.put(&key, next_value.to_string()).await {
                    Ok(node) => {
                        seen.insert(key.clone(), node.version);
                        Output::WriteOk
                    }
                    // When in doubt, indeterminate: never wrong, only weaker.
                    Err(_) => Output::Unknown,
                };
                recorder.complete(invocation, output);
            }
            _ => {
                next_value += 1;
                let version = seen.get(&key).copied().unwrap_or(1);
                let input = Input::Cas { expected: Expected::Version(version), new: next_value };
                let invocation = recorder.invoke(client, key.clone(), input);
                let output = match coord.set(&key, next_value.to_string(), Some(version)).await {
                    Ok(node) => {
                        seen.insert(key.clone(), node.version);
                        Output::CasOk
                    }
                    Err(Error::BadVersion(_)) => {
                        seen.remove(&key);
                        Output::CasFailed
                    }
                    Err(_) => Output::Unknown,
                };
                recorder.complete(invocation, output);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(10..60))).await;
    }
}
