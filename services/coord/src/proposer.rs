//! The write and read paths' batching.
//!
//! [`Proposer`]: concurrent writes are gathered into one log entry (a `Command::Batch`) while
//! earlier entries are in flight. At most `max_in_flight` entries are uncommitted at once:
//! under light load a write is proposed the moment it arrives; under heavy load writes queue
//! while the pipeline is full and the next entry carries all of them, so the per-entry cost
//! of Raft (an fsync on every node, a replication round) is shared.
//!
//! Traces: each write is a `coord.propose` span of its request; each log entry a
//! `coord.commit` span (hand-off to Raft, replication, commit, apply) that is a child of the
//! first write it carries and linked to the others.
//!
//! [`ReadBarrier`]: linearizable reads need the leader to confirm its leadership with a
//! quorum (read-index). Reads arriving while a confirmation is in flight share the next one.
//! A confirmation also grants a lease: for a while after it no other leader can exist (see
//! [`LEASE_FRACTION`]), so reads in that time are answered at once, without a round; while
//! reads keep coming, the lease is renewed in the background.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use prometheus::{Histogram, HistogramOpts, IntCounter};
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{Instrument, Span};

use crate::command::{Command, CommandResult};
use crate::error::CoordError;
use crate::types::{NodeId, Raft};

type Reply<T> = oneshot::Sender<Result<T, CoordError>>;

/// A write waiting to be proposed: the command, where its result goes, and its span.
type Proposal = (Command, Reply<CommandResult>, Span);

#[derive(Clone)]
pub struct ProposerMetrics {
    pub entries: IntCounter,
    pub batch_size: Histogram,
}

impl ProposerMetrics {
    pub fn new(metrics: &marina_daemon::Metrics) -> Self {
        let entries = IntCounter::new("marina_coord_proposals_total", "Log entries proposed by this node as leader.")
            .expect("static metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("marina_coord_proposal_batch_size", "Client commands per proposed log entry.")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
        )
        .expect("static metric");
        metrics.register(entries.clone());
        metrics.register(batch_size.clone());
        Self { entries, batch_size }
    }
}

#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
}

impl Proposer {
    pub fn spawn(
        raft: Raft,
        max_batch: usize,
        max_in_flight: usize,
        timeout: Duration,
        metrics: ProposerMetrics,
    ) -> Self {
        let (queue, proposals) = mpsc::channel(max_batch * 4);
        let in_flight = Arc::new(Semaphore::new(max_in_flight));
        tokio::spawn(run_proposer(raft, proposals, max_batch, in_flight, timeout, metrics));
        Self { queue }
    }

    /// Replicates `command` and returns the result of applying it.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, CoordError> {
        let span = tracing::info_span!("coord.propose");
        async {
            let (reply, result) = oneshot::channel();
            self.queue.send((command, reply, Span::current())).await.map_err(|_| CoordError::ShuttingDown)?;
            // Once queued, the write may have been handed to Raft before the node stopped.
            result
                .await
                .map_err(|_| CoordError::Indeterminate("the node stopped while the write was in flight".into()))?
        }
        .instrument(span)
        .await
    }
}

async fn run_proposer(
    raft: Raft,
    mut proposals: mpsc::Receiver<Proposal>,
    max_batch: usize,
    in_flight: Arc<Semaphore>,
    timeout: Duration,
    metrics: ProposerMetrics,
) {
    // Proposals received but not yet proposed: what did not fit in the last entry waits here.
    let mut pending: Vec<Proposal> = Vec::with_capacity(max_batch);
    loop {
        // Wait for room in the pipeline first: whatever queues meanwhile joins this entry.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        if pending.is_empty() {
            if proposals.recv_many(&mut pending, max_batch).await == 0 {
                return;
            }
        } else {
            while pending.len() < max_batch
                && let Ok(proposal) = proposals.try_recv()
            {
                pending.push(proposal);
            }
        }
        let take = entry_prefix(pending.iter().map(|(command, _, _)| command.payload_bytes()), max_batch);
        let mut commands = Vec::with_capacity(take);
        let mut replies = Vec::with_capacity(take);
        let mut spans = Vec::with_capacity(take);
        for (command, reply, span) in pending.drain(..take) {
            commands.push(command);
            replies.push(reply);
            spans.push(span);
        }
        metrics.batch_size.observe(commands.len() as f64);
        let commit = tracing::info_span!(parent: &spans[0], "coord.commit", writes = commands.len());
        for other in &spans[1..] {
            commit.follows_from(other);
        }
        let command = if commands.len() == 1 {
            commands.into_iter().next().expect("one command")
        } else {
            Command::Batch(commands)
        };
        // Handing the entry to Raft preserves proposal order; the commit is awaited
        // elsewhere so the next batch can be gathered and proposed meanwhile.
        let receiver = match raft.client_write_ff(command).instrument(commit.clone()).await {
            Ok(receiver) => receiver,
            Err(fatal) => {
                for reply in replies {
                    let _ = reply.send(Err(CoordError::Raft(fatal.to_string())));
                }
                continue;
            }
        };
        metrics.entries.inc();
        tokio::spawn(
            async move {
                let _permit = permit;
                let outcome = match tokio::time::timeout(timeout, receiver).await {
                    Err(_elapsed) => Err(CoordError::Indeterminate(format!(
                        "the write was not committed within {timeout:?}: the leader cannot reach a majority \
                         (it may still be applied if the majority returns)"
                    ))),
                    // The entry was in Raft's hands when this node stepped down or stopped:
                    // the new leader may still commit it.
                    Ok(Err(_dropped)) => Err(CoordError::Indeterminate(
                        "the leader stepped down or stopped before the write committed \
                         (it may still be applied by the next leader)"
                            .into(),
                    )),
                    Ok(Ok(Err(error))) => Err(write_error(error)),
                    Ok(Ok(Ok(response))) => Ok(response.data),
                };
                distribute(outcome, replies);
            }
            .instrument(commit),
        );
    }
}

/// The largest entry Raft is given, in payload bytes. Entries are replicated whole in one
/// message, so a batch of large writes must not outgrow what a peer accepts
/// ([`crate::network::MAX_DECODING_BYTES`]); what does not fit waits for the next entry.
pub const MAX_ENTRY_PAYLOAD_BYTES: usize = 16 << 20;

/// How many of the pending commands (given their payload sizes) the next entry carries: at
/// most `max_batch`, within [`MAX_ENTRY_PAYLOAD_BYTES`], and always at least one (the API
/// refuses single commands larger than the cap).
fn entry_prefix(sizes: impl Iterator<Item = usize>, max_batch: usize) -> usize {
    let mut bytes = 0;
    let mut take = 0;
    for size in sizes.take(max_batch) {
        if take > 0 && bytes + size > MAX_ENTRY_PAYLOAD_BYTES {
            break;
        }
        bytes += size;
        take += 1;
    }
    take
}

/// Sends each client its own result out of a (possibly batched) outcome.
fn distribute(outcome: Result<CommandResult, CoordError>, replies: Vec<Reply<CommandResult>>) {
    match outcome {
        Ok(CommandResult::Batch(results)) if replies.len() > 1 => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Ok(result) => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

fn write_error(error: ClientWriteError<NodeId, openraft::BasicNode>) -> CoordError {
    match error {
        ClientWriteError::ForwardToLeader(forward) => {
            CoordError::NotLeader { leader: forward.leader_node.map(|node| node.addr) }
        }
        ClientWriteError::ChangeMembershipError(error) => CoordError::Membership(error.to_string()),
    }
}

/// Maps openraft's leadership-check failure.
pub fn leadership_error(error: RaftError<NodeId, CheckIsLeaderError<NodeId, openraft::BasicNode>>) -> CoordError {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)) => {
            CoordError::NotLeader { leader: forward.leader_node.map(|node| node.addr) }
        }
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error)) => CoordError::NoQuorum(error.to_string()),
        RaftError::Fatal(fatal) => CoordError::Raft(fatal.to_string()),
    }
}

/// A lease lasts this fraction of the election timeout's maximum, counted from *before* the
/// confirmation round began. Followers that acknowledged the round refuse to vote for the
/// whole maximum after hearing from the leader (openraft's leader lease), and a node that
/// restarts refuses to vote for as long (`RaftService`), so no majority can elect another
/// leader before then; the other half is the margin for clocks running at different rates.
pub const LEASE_FRACTION: f64 = 0.5;

/// Leadership confirmed by a quorum until `until`, for one term and membership.
#[derive(Debug, Clone, Copy)]
struct Lease {
    until: std::time::Instant,
    term: u64,
    membership: Option<openraft::LogId<NodeId>>,
}

#[derive(Clone)]
pub struct ReadBarrier {
    waiters: mpsc::Sender<Reply<()>>,
    /// Reads answered under the lease, and confirmation rounds run.
    lease_reads: IntCounter,
    /// `None` when leases are off (every read confirms leadership).
    lease: Option<Arc<LeaseState>>,
}

struct LeaseState {
    duration: Duration,
    current: std::sync::Mutex<Option<Lease>>,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, openraft::BasicNode>>,
    /// A read was answered from the lease since the last renewal.
    used: std::sync::atomic::AtomicBool,
}

impl LeaseState {
    /// The lease, if it holds now: not expired, and this node still leads the same term
    /// with the same membership (a membership change brings voters that never promised
    /// anything).
    fn holds(&self) -> bool {
        let Some(lease) = *self.current.lock().expect("lease lock") else { return false };
        if std::time::Instant::now() >= lease.until {
            return false;
        }
        let metrics = self.metrics.borrow();
        metrics.state == openraft::ServerState::Leader
            && metrics.current_term == lease.term
            && metrics.membership_config.log_id() == &lease.membership
    }

    /// The term and membership as a confirmation round begins.
    fn observe(&self) -> (u64, Option<openraft::LogId<NodeId>>) {
        let metrics = self.metrics.borrow();
        (metrics.current_term, *metrics.membership_config.log_id())
    }

    /// A confirmation round that began at `began`, with `seen` as its term and membership,
    /// succeeded. If either changed meanwhile, the round may have confirmed the old ones:
    /// no lease.
    fn grant(&self, began: std::time::Instant, seen: (u64, Option<openraft::LogId<NodeId>>)) {
        if self.observe() != seen {
            return;
        }
        let lease = Lease { until: began + self.duration, term: seen.0, membership: seen.1 };
        let mut current = self.current.lock().expect("lease lock");
        if current.is_none_or(|held| held.until < lease.until) {
            *current = Some(lease);
        }
    }
}

impl ReadBarrier {
    /// `startup_last_index` is the last log index this node held when it started. A
    /// restarted node does not know how far the commit index had advanced, and its store is
    /// rebuilt by replaying the log; reads wait until that replay has passed everything it
    /// held, which includes everything it ever acknowledged. (A restarted node no longer
    /// resumes a leadership, see `LogStore::open`, and a new term's read index covers the
    /// replay too; this stays as a cheap second guard.)
    ///
    /// `lease`: how long a confirmation lets reads skip the next one (`None`: never).
    pub fn spawn(
        raft: Raft,
        timeout: Duration,
        startup_last_index: u64,
        lease: Option<Duration>,
        metrics: &marina_daemon::Metrics,
    ) -> Self {
        let lease_reads = IntCounter::new(
            "marina_coord_lease_reads_total",
            "Linearizable reads this leader answered under its lease, without a confirmation round.",
        )
        .expect("static metric");
        let rounds = IntCounter::new(
            "marina_coord_read_rounds_total",
            "Leadership confirmations (read-index rounds) this node ran for linearizable reads.",
        )
        .expect("static metric");
        metrics.register(lease_reads.clone());
        metrics.register(rounds.clone());
        let (waiters, queue) = mpsc::channel(4096);
        let lease = lease.map(|duration| {
            Arc::new(LeaseState {
                duration,
                current: std::sync::Mutex::new(None),
                metrics: raft.metrics(),
                used: std::sync::atomic::AtomicBool::new(false),
            })
        });
        tokio::spawn(run_read_barrier(raft, queue, timeout, startup_last_index, lease.clone(), rounds));
        let barrier = Self { waiters, lease_reads, lease };
        if let Some(lease) = &barrier.lease {
            tokio::spawn(renew_leases(barrier.waiters.clone(), Arc::downgrade(lease)));
        }
        barrier
    }

    /// Returns once this node is confirmed leader and has applied everything committed
    /// before the call: a read of the local store after this is linearizable.
    ///
    /// Under a lease that holds, at once: every write acknowledged before this call was
    /// applied here before its acknowledgement (and the lease's round waited for the
    /// entries of earlier terms to be applied), and no other leader can have committed any.
    pub async fn wait(&self) -> Result<(), CoordError> {
        if let Some(lease) = &self.lease
            && lease.holds()
        {
            lease.used.store(true, std::sync::atomic::Ordering::Relaxed);
            self.lease_reads.inc();
            return Ok(());
        }
        let (reply, result) = oneshot::channel();
        self.waiters.send(reply).await.map_err(|_| CoordError::ShuttingDown)?;
        result.await.map_err(|_| CoordError::ShuttingDown)?
    }
}

/// While reads are answered from the lease, renews it a few times per lease so they never
/// wait for a round; when reads stop, so do the renewals.
async fn renew_leases(waiters: mpsc::Sender<Reply<()>>, lease: std::sync::Weak<LeaseState>) {
    loop {
        let Some(state) = lease.upgrade() else { return };
        let period = state.duration / 3;
        drop(state);
        tokio::time::sleep(period).await;
        let Some(state) = lease.upgrade() else { return };
        if state.used.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let (reply, result) = oneshot::channel();
            if waiters.send(reply).await.is_err() {
                return;
            }
            let _ = result.await;
        }
    }
}

async fn run_read_barrier(
    raft: Raft,
    mut queue: mpsc::Receiver<Reply<()>>,
    timeout: Duration,
    floor: u64,
    lease: Option<Arc<LeaseState>>,
    rounds: IntCounter,
) {
    let mut waiting = Vec::new();
    let mut replayed = floor == 0;
    while queue.recv_many(&mut waiting, 4096).await > 0 {
        rounds.inc();
        let began = std::time::Instant::now();
        let seen = lease.as_ref().map(|lease| lease.observe());
        let confirm = async {
            confirm_leadership(&raft).await?;
            if !replayed {
                raft.wait(Some(timeout))
                    .applied_index_at_least(Some(floor), "replay after restart")
                    .await
                    .map_err(|error| CoordError::NoQuorum(format!("replaying the log after a restart: {error}")))?;
                replayed = true;
            }
            Ok(())
        };
        let outcome = match tokio::time::timeout(timeout, confirm).await {
            Err(_elapsed) => Err(CoordError::NoQuorum(format!(
                "leadership could not be confirmed within {timeout:?}: the leader cannot reach a majority"
            ))),
            Ok(result) => result,
        };
        if outcome.is_ok()
            && let (Some(lease), Some(seen)) = (&lease, seen)
        {
            lease.grant(began, seen);
        }
        for reply in waiting.drain(..) {
            let _ = reply.send(outcome.clone());
        }
    }
}

/// Confirms leadership with a quorum (read-index). A round can miss its quorum without
/// anything being wrong: followers busy with an fsync answer after the round's RPC timeout,
/// or a fresh leader's first round races its followers learning of it. So a short-of-quorum
/// round is tried again (the caller bounds the whole wait); losing leadership is final.
async fn confirm_leadership(raft: &Raft) -> Result<(), CoordError> {
    let mut backoff = Duration::from_millis(5);
    loop {
        match raft.ensure_linearizable().await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
            Err(error) => return Err(leadership_error(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_within_the_batch_and_byte_caps() {
        // Small writes: the batch cap decides.
        assert_eq!(entry_prefix([300; 10].into_iter(), 4), 4);
        assert_eq!(entry_prefix([300; 3].into_iter(), 4), 3);
        // Large writes: what would push the entry past the byte cap waits for the next one.
        let mib = 1 << 20;
        assert_eq!(entry_prefix([6 * mib, 6 * mib, 6 * mib].into_iter(), 1024), 2);
        assert_eq!(entry_prefix([10 * mib, 10 * mib].into_iter(), 1024), 1);
        // A single command always goes (the API refuses ones over the cap).
        assert_eq!(entry_prefix([MAX_ENTRY_PAYLOAD_BYTES + 1].into_iter(), 1024), 1);
    }
}
