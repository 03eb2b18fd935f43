//! The agent's link to the leading master: find it through coord (the election members),
//! attach, (re-)register with every task, heartbeat, deliver status updates until
//! acknowledged, obey commands — and only from a master whose epoch is at least the highest
//! this agent has obeyed. When leadership moves, the agent follows it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use marina_coord_client::{Leader, LeaderObserver};
use marina_daemon::Shutdown;
use marina_daemon::leader::MemberInfo;
use marina_daemon::link::{Link, Liveness};
use marina_daemon::tls::{Role, Tls};
use marina_proto::master::v1::agent_link_client::AgentLinkClient;
use marina_proto::master::v1::master_message::Kind;
use marina_proto::master::v1::{AgentMessage, Heartbeat, MasterMessage, Register, agent_message};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::AbortOnDropHandle;

use crate::Agent;

/// The master this agent is attached to, as shown in its state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachedMaster {
    pub address: String,
    pub epoch: u64,
    pub registered: bool,
}

pub async fn run(
    agent: Arc<Agent>,
    observer: LeaderObserver,
    tls: Option<Arc<Tls>>,
    attached: watch::Sender<AttachedMaster>,
    shutdown: Shutdown,
) {
    let mut leaders = observer.receiver();
    let mut backoff = Duration::from_millis(50);
    // The leadership the backoff grew against: a new leader starts from the shortest delay
    // (retries against a dead master must not slow the first attach to its successor).
    let mut backing_off_from: Option<(String, u64)> = None;
    loop {
        let leader = tokio::select! {
            leader = leaders.wait_for(|leader| leader.is_some()) => match leader {
                Ok(leader) => leader.clone().expect("waited for Some"),
                Err(_) => return,
            },
            () = shutdown.cancelled() => return,
        };
        let highest = agent.highest_epoch();
        if leader.epoch < highest {
            tracing::warn!(
                epoch = leader.epoch,
                highest,
                "ignoring a master with a lower epoch than one already obeyed"
            );
            tokio::select! {
                _ = leaders.changed() => continue,
                () = shutdown.cancelled() => return,
            }
        }
        let Some(member) = MemberInfo::from_bytes(&leader.data) else {
            tracing::warn!(member = %leader.member, "the leading master's member node is not readable");
            tokio::select! {
                _ = leaders.changed() => continue,
                () = shutdown.cancelled() => return,
            }
        };
        let leadership = (leader.member.clone(), leader.epoch);
        if backing_off_from.as_ref() != Some(&leadership) {
            backoff = Duration::from_millis(50);
            backing_off_from = Some(leadership);
        }
        let started = Instant::now();
        let outcome = attach(&agent, &leader, &member, tls.as_ref(), &mut leaders, &attached, &shutdown).await;
        attached.send_replace(AttachedMaster::default());
        match outcome {
            Ok(Outcome::Shutdown) => return,
            Ok(Outcome::LeaderChanged) => backoff = Duration::from_millis(50),
            Err(error) => {
                tracing::info!(master = %member.address, %error, "link to the master lost; reconnecting");
                if started.elapsed() > Duration::from_secs(5) {
                    backoff = Duration::from_millis(50);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = leaders.changed() => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = backoff.saturating_mul(2).min(Duration::from_secs(2));
            }
        }
    }
}

enum Outcome {
    LeaderChanged,
    Shutdown,
}

async fn attach(
    agent: &Arc<Agent>,
    leader: &Leader,
    member: &MemberInfo,
    tls: Option<&Arc<Tls>>,
    leaders: &mut watch::Receiver<Option<Leader>>,
    attached: &watch::Sender<AttachedMaster>,
    shutdown: &Shutdown,
) -> Result<Outcome, String> {
    let channel = Link::new(&member.address, Liveness::TO_LEADER, tls, &[Role::Master])
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect to {}: {e}", member.address))?;
    let (outbound, outbound_stream) = mpsc::channel::<AgentMessage>(256);
    let register =
        Register { info: Some(agent.info()), tasks: agent.tasks.reports(), highest_epoch: agent.highest_epoch() };
    outbound.send(message(agent_message::Kind::Register(register))).await.map_err(|e| e.to_string())?;
    let mut inbound = AgentLinkClient::new(channel)
        .attach(ReceiverStream::new(outbound_stream))
        .await
        .map_err(|status| format!("attach refused: {}", status.message()))?
        .into_inner();
    tracing::info!(master = %member.address, epoch = leader.epoch, "attached to the leading master");

    let mut registered = false;
    // Heartbeats go from a task of their own (stopped with this link), never from this loop:
    // obeying a command can take long (removing a finished task's container is a Docker call
    // of a second or more, and a scale-down acknowledges many), and a heartbeat that waited
    // for it would have the master take a busy agent for a dead one.
    let mut _heartbeats: Option<AbortOnDropHandle<()>> = None;
    let mut retry = tokio::time::interval(Duration::from_millis(100));
    let mut sent = Sent::default();
    let first_retry = agent.update_retry;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(Outcome::Shutdown),
            changed = leaders.changed() => {
                if changed.is_err() {
                    return Ok(Outcome::Shutdown);
                }
                let current = leaders.borrow().clone();
                if current.as_ref().map(|l| (&l.member, l.epoch)) != Some((&leader.member, leader.epoch)) {
                    tracing::info!("master leadership moved; re-attaching");
                    return Ok(Outcome::LeaderChanged);
                }
            }
            message = inbound.next() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(status)) => return Err(format!("stream failed: {}", status.message())),
                    None => return Err("the master closed the stream".into()),
                };
                if !agent.accept_epoch(message.epoch) {
                    // Worth an operator's attention on its own line: a deposed master still
                    // believes it leads (a partition, a paused process).
                    let refused = format!(
                        "refused a command from a deposed master (epoch {} < {})",
                        message.epoch,
                        agent.highest_epoch()
                    );
                    tracing::warn!(master = %member.address, "{refused}");
                    return Err(refused);
                }
                if let Some(interval) = handle(agent, message, &mut registered).await {
                    _heartbeats = Some(AbortOnDropHandle::new(tokio::spawn(heartbeat(outbound.clone(), interval))));
                    sent = Sent::default();
                    attached.send_replace(AttachedMaster { address: member.address.clone(), epoch: leader.epoch, registered: true });
                }
            }
            _ = retry.tick(), if registered => deliver(agent, &outbound, &mut sent, first_retry).await?,
            () = agent.updates.changed(), if registered => deliver(agent, &outbound, &mut sent, first_retry).await?,
        }
    }
}

/// Sends a heartbeat every `interval` until the link's stream is gone. A heartbeat that
/// went out late (this agent's runtime starved, or its link backed up behind status
/// updates the master reads slowly) is worth an operator's notice: late enough, the master
/// takes the agent for gone. Said at most once a minute.
async fn heartbeat(outbound: mpsc::Sender<AgentMessage>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    // Late ticks are not made up for in a burst: one heartbeat says as much as several.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_warning: Option<Instant> = None;
    loop {
        let due = tick.tick().await;
        if outbound.send(message(agent_message::Kind::Heartbeat(Heartbeat {}))).await.is_err() {
            return;
        }
        let late = due.elapsed();
        if late > interval * 2 && last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
            last_warning = Some(Instant::now());
            tracing::warn!(
                late_ms = late.as_millis() as u64,
                "a heartbeat went out late: this agent is starved of CPU or its link to the master is backed up"
            );
        }
    }
}

fn message(kind: agent_message::Kind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

/// The updates sent on this link: when, and the backoff before each is sent again.
#[derive(Default)]
struct Sent {
    at: HashMap<String, (Instant, Duration)>,
    /// The updates' version at the last pass, and the earliest resend due then: a retry tick
    /// with neither a change nor a resend due has nothing to do (a thousand agents in one
    /// process tick ten thousand times a second).
    seen_version: Option<u64>,
    next_due: Option<Instant>,
}

/// Sends what is deliverable and was not sent recently (exponential backoff per update).
async fn deliver(
    agent: &Agent,
    outbound: &mpsc::Sender<AgentMessage>,
    sent: &mut Sent,
    first_retry: Duration,
) -> Result<(), String> {
    let now = Instant::now();
    let version = agent.updates.version();
    if sent.seen_version == Some(version) && sent.next_due.is_none_or(|due| now < due) {
        return Ok(());
    }
    let deliverable = agent.updates.deliverable();
    // Forget what was acknowledged (a set: hundreds of updates may be in flight per agent).
    let current: HashSet<&str> = deliverable.iter().map(|status| status.uuid.as_str()).collect();
    sent.at.retain(|uuid, _| current.contains(uuid.as_str()));
    for status in deliverable {
        let due = match sent.at.get(&status.uuid) {
            None => Some(first_retry),
            Some((at, backoff)) if now.duration_since(*at) >= *backoff => {
                Some(backoff.saturating_mul(2).min(Duration::from_secs(10)))
            }
            Some(_) => None,
        };
        if let Some(next_backoff) = due {
            sent.at.insert(status.uuid.clone(), (now, next_backoff));
            let status = Arc::unwrap_or_clone(status);
            outbound.send(message(agent_message::Kind::Update(status))).await.map_err(|e| e.to_string())?;
        }
    }
    sent.seen_version = Some(version);
    // A backoff past the clock's range is never due.
    sent.next_due = sent.at.values().filter_map(|(at, backoff)| at.checked_add(*backoff)).min();
    Ok(())
}

/// Obeys one command; returns the heartbeat interval when the master registered us.
async fn handle(agent: &Arc<Agent>, message: MasterMessage, registered: &mut bool) -> Option<Duration> {
    match message.kind? {
        Kind::Registered(done) => {
            agent.registered(&done.agent_id);
            *registered = true;
            tracing::info!(agent_id = %done.agent_id, "registered with the master");
            Some(Duration::from_millis(done.heartbeat_interval_ms.clamp(100, 60_000)))
        }
        Kind::Launch(launch) => {
            agent.tasks.launch(&launch.framework_id, launch.tasks, &launch.trace_context);
            None
        }
        Kind::Kill(kill) => {
            agent.tasks.kill(&kill.task_id, &kill.framework_id, kill.grace_period_seconds, None);
            None
        }
        Kind::Acknowledge(ack) => {
            if let Some(status) = agent.updates.acknowledge(&ack.task_id, &ack.uuid) {
                agent.tasks.acknowledged(&status).await;
            }
            None
        }
        Kind::Shutdown(shutdown) => {
            tracing::warn!(detail = %shutdown.message, "the master asked this agent to shut down its tasks");
            for report in agent.tasks.reports() {
                if let Some(task) = report.task {
                    agent.tasks.kill(&task.task_id, &task.framework_id, 0, None);
                }
            }
            None
        }
    }
}
