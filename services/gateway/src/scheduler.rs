//! The gateway as a framework on the leading master: subscribe (as the framework id kept in
//! coord, so failovers of either side keep the same framework), reconcile every known task
//! (at each subscription and periodically, beside the event loop; until its state is known
//! a recorded instance holds its slot, so nothing is launched twice meanwhile), turn offers
//! into launches and status updates into state, acknowledge updates once applied, and
//! follow the master's leadership.

use std::sync::Arc;
use std::time::Duration;

use marina_daemon::leader::MemberInfo;
use marina_daemon::link::{Link, Liveness};
use marina_daemon::tls::{Role, Tls};
use marina_proto::master::v1 as master;
use marina_proto::master::v1::operator_client::OperatorClient;
use marina_proto::master::v1::scheduler_client::SchedulerClient;
use marina_proto::master::v1::scheduler_event::Kind;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::leader::{Leader, MasterSession};

pub async fn run(
    leader: Arc<Leader>,
    mut leaders: tokio::sync::watch::Receiver<Option<marina_coord_client::Leader>>,
    tls: Option<Arc<Tls>>,
    framework_name: String,
    reconcile_every: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    // The master leadership the backoff grew against: a new one starts from the shortest
    // delay (retries against a dead master must not slow the first subscribe to its successor).
    let mut backing_off_from: Option<(String, u64)> = None;
    loop {
        if leader.ended.is_cancelled() {
            return;
        }
        let current = leaders.borrow_and_update().clone();
        let leadership = current.as_ref().map(|l| (l.member.clone(), l.epoch));
        let Some(member) = current.and_then(|l| MemberInfo::from_bytes(&l.data)) else {
            tokio::select! {
                _ = leaders.changed() => continue,
                () = leader.ended.cancelled() => return,
            }
        };
        if leadership != backing_off_from {
            backoff = Duration::from_millis(50);
            backing_off_from = leadership;
        }
        match session(&leader, &member.address, tls.as_ref(), &framework_name, reconcile_every, &mut leaders).await {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(error) => {
                tracing::info!(master = %member.address, %error, "scheduler link lost; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = leaders.changed() => {}
                    () = leader.ended.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
        leader.master.send_replace(None);
    }
}

async fn session(
    leader: &Arc<Leader>,
    address: &str,
    tls: Option<&Arc<Tls>>,
    framework_name: &str,
    reconcile_every: Duration,
    leaders: &mut tokio::sync::watch::Receiver<Option<marina_coord_client::Leader>>,
) -> Result<(), String> {
    let channel = Link::new(address, Liveness::TO_LEADER, tls, &[Role::Master])
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let operator =
        OperatorClient::new(marina_daemon::trace::traced(channel.clone())).max_decoding_message_size(64 << 20);
    let mut client = SchedulerClient::new(marina_daemon::trace::traced(channel)).max_decoding_message_size(64 << 20);
    let framework_id = leader.store.framework_id().await.map_err(|e| e.to_string())?.unwrap_or_default();
    let request = master::SubscribeRequest {
        framework: Some(master::FrameworkInfo {
            framework_id: framework_id.clone(),
            name: framework_name.to_owned(),
            role: "*".into(),
            failover_timeout_seconds: 7.0 * 24.0 * 3600.0,
            hostname: leader.address.clone(),
            principal: String::new(),
        }),
    };
    let mut events =
        client.subscribe(request).await.map_err(|status| format!("subscribe: {}", status.message()))?.into_inner();
    let subscribed = match events.message().await.map_err(|e| e.to_string())? {
        Some(master::SchedulerEvent { kind: Some(Kind::Subscribed(subscribed)), .. }) => subscribed,
        other => return Err(format!("expected Subscribed, got {other:?}")),
    };
    if subscribed.framework_id != framework_id {
        leader.store.set_framework_id(&subscribed.framework_id).await.map_err(|e| e.to_string())?;
    }
    tracing::info!(framework = %subscribed.framework_id, master = %address, "subscribed to the leading master");
    let session = MasterSession { client: client.clone(), operator, framework_id: subscribed.framework_id.clone() };
    leader.master.send_replace(Some(session.clone()));
    leader.resend_kills();
    // Reconciliation runs beside this loop, which must keep reading the answers it asks for
    // (and paces it: see `reconcile`); it stops with the session.
    let (handled, handled_updates) = tokio::sync::watch::channel(0u64);
    let reconciliation = CancellationToken::new();
    let _stop_reconciling = reconciliation.clone().drop_guard();
    tokio::spawn(
        reconcile_periodically(session.clone(), leader.clone(), reconcile_every, handled_updates, reconciliation)
            .in_current_span(),
    );
    let (acks, pending_acks) = tokio::sync::mpsc::unbounded_channel();
    // Ends with the session, when `acks` goes.
    tokio::spawn(send_acknowledgements(client.clone(), session.framework_id.clone(), pending_acks).in_current_span());
    // Offers are used on a task of their own, in the order they came: using them waits on
    // coord (the instances' records) and on the master (the accepts), and status updates
    // must not wait behind that — the master keeps a bounded queue of them per scheduler,
    // and ends the subscription when it fills. No update can overtake the offer its task
    // was launched on: a task's instance is in the state before its launch is sent. The
    // queue is bounded by the offers outstanding (each agent's resources are offered once
    // until used or declined); it ends with the session (offers still queued then are
    // the old master's, and go unused).
    let (offers, pending_offers) = tokio::sync::mpsc::unbounded_channel();
    let offers_session = CancellationToken::new();
    let _stop_using_offers = offers_session.clone().drop_guard();
    tokio::spawn(use_offers(leader.clone(), pending_offers, offers_session).in_current_span());
    // Checked often: a new deployment waits for offers until its revive (the check is cheap,
    // and the revive itself is sent only when the want appears).
    let mut revive = tokio::time::interval(Duration::from_millis(50));
    let mut reviving = false;
    loop {
        tokio::select! {
            () = leader.ended.cancelled() => return Ok(()),
            _ = leaders.changed() => return Ok(()),
            _ = revive.tick() => {
                // Offers are declined with a refuse filter while nothing waits; revive as
                // soon as something does.
                let wants = leader.wants_offers();
                if wants && !reviving {
                    let _ = client.revive(master::ReviveRequest { framework_id: session.framework_id.clone() }).await;
                }
                reviving = wants;
            }
            event = events.message() => {
                let event = match event {
                    Ok(Some(event)) => event,
                    Ok(None) => return Err("the master closed the stream".into()),
                    Err(status) => return Err(format!("stream failed: {}", status.message())),
                };
                match event.kind {
                    Some(Kind::Offers(received)) => {
                        let span = tracing::info_span!(parent: None, "gateway.offers", offers = received.offers.len());
                        marina_daemon::trace::set_parent(&span, &received.trace_context);
                        let _ = offers.send((received.offers, span));
                    }
                    Some(Kind::Update(status)) => {
                        // Delivery of a status update continues the trace it was sent in.
                        let span = tracing::info_span!(
                            parent: None,
                            "gateway.status_update",
                            task_id = %status.task_id,
                            state = status.state().as_str_name(),
                        );
                        marina_daemon::trace::set_parent(&span, &status.trace_context);
                        let ack = (!status.uuid.is_empty()).then(|| master::UpdateAcknowledgement {
                            agent_id: status.agent_id.clone(),
                            task_id: status.task_id.clone(),
                            uuid: status.uuid.clone(),
                        });
                        // Acknowledged only once applied (and recorded): the agent resends
                        // an update that was not. The acknowledgement itself is sent in the
                        // background (see `send_acknowledgements`).
                        async {
                            if leader.handle_update(status).await.is_ok() && let Some(ack) = ack {
                                let _ = acks.send((ack, tracing::Span::current()));
                            }
                        }
                        .instrument(span)
                        .await;
                        handled.send_modify(|count| *count += 1);
                    }
                    Some(Kind::Error(error)) => return Err(format!("the master ended the subscription: {}", error.message)),
                    Some(Kind::Rescind(_) | Kind::Heartbeat(_) | Kind::Subscribed(_)) | None => {}
                }
            }
        }
    }
}

/// Uses offers one batch after another, as the session's stream delivered them, until the
/// session ends (a batch being used then is used to its end). Batches that queued while one
/// was being used are used together: one coord write for all their instances and one
/// placement pass, instead of one each (the master offers every 100 ms, and using a batch
/// can take longer on a busy host).
async fn use_offers(
    leader: Arc<Leader>,
    mut pending: tokio::sync::mpsc::UnboundedReceiver<(Vec<master::Offer>, tracing::Span)>,
    session: CancellationToken,
) {
    let mut received = Vec::new();
    loop {
        let count = tokio::select! {
            biased;
            () = session.cancelled() => return,
            count = pending.recv_many(&mut received, usize::MAX) => count,
        };
        if count == 0 {
            return;
        }
        let span = match received.as_slice() {
            [(_, span)] => span.clone(),
            batches => {
                let offers: usize = batches.iter().map(|(offers, _)| offers.len()).sum();
                let merged = tracing::info_span!(parent: None, "gateway.offers", offers, batches = batches.len());
                for (_, span) in batches {
                    merged.follows_from(span);
                }
                merged
            }
        };
        let offers = received.drain(..).flat_map(|(offers, _)| offers).collect();
        leader.handle_offers(offers).instrument(span).await;
    }
}

/// Sends acknowledgements as they come, all those that queued during a call in the next
/// one: waiting for each round trip would cap the updates the session applies at one per
/// round trip, and a call per update costs the master and this gateway more than the update
/// itself at thousands per second. Acknowledgements are idempotent and need no order; one
/// that is lost is made good by the agent resending its update.
///
/// A call serves updates of many traces, so it is a trace of its own (`gateway.acknowledge`)
/// linked to the span that handled each update.
async fn send_acknowledgements(
    mut client: SchedulerClient<marina_daemon::trace::TracedChannel>,
    framework_id: String,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<(master::UpdateAcknowledgement, tracing::Span)>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, ACKS_PER_CALL).await > 0 {
        let span = tracing::info_span!(parent: None, "gateway.acknowledge", updates = batch.len());
        let mut more = Vec::with_capacity(batch.len());
        for (ack, handled) in batch.drain(..) {
            span.follows_from(&handled);
            more.push(ack);
        }
        let request = master::AcknowledgeRequest { framework_id: framework_id.clone(), more, ..Default::default() };
        if let Err(status) = client.acknowledge(request).instrument(span).await {
            tracing::debug!(%status, "acknowledgements not delivered; the agents will resend their updates");
        }
    }
}

/// Most acknowledgements per call.
const ACKS_PER_CALL: usize = 4096;

/// Reconciles at the session's start, then every `every`, until `stop`.
async fn reconcile_periodically(
    session: MasterSession,
    leader: Arc<Leader>,
    every: Duration,
    mut handled: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let rounds = async {
        loop {
            reconcile(&session, &leader, &mut handled).await;
            tokio::time::sleep(every).await;
        }
    };
    tokio::select! {
        () = rounds => {}
        () = stop.cancelled() => {}
    }
}

/// Explicit reconciliation of every recorded instance, then implicit.
///
/// The master answers each request at once, into this session's event queue: the explicit
/// requests go [`RECONCILE_CHUNK`] tasks at a time, each once the event loop has handled
/// about as many updates as the previous one asked for (`handled` counts them), so a
/// hundred thousand answers never pile up in that queue. A request whose answers wait for
/// agents to re-register is followed after at most [`RECONCILE_CHUNK_WAIT`].
async fn reconcile(session: &MasterSession, leader: &Leader, handled: &mut tokio::sync::watch::Receiver<u64>) {
    let tasks: Vec<master::reconcile_request::Task> = leader
        .reconcile_list()
        .into_iter()
        .map(|(task_id, agent_id)| master::reconcile_request::Task { task_id, agent_id })
        .collect();
    let mut client = session.client.clone();
    for chunk in tasks.chunks(RECONCILE_CHUNK) {
        let answered = *handled.borrow_and_update() + chunk.len() as u64;
        let request = master::ReconcileRequest { framework_id: session.framework_id.clone(), tasks: chunk.to_vec() };
        if client.reconcile(request).await.is_err() {
            // The session is ending; the next one reconciles from the start.
            return;
        }
        let _ = tokio::time::timeout(RECONCILE_CHUNK_WAIT, handled.wait_for(|count| *count >= answered)).await;
    }
    let _ = client
        .reconcile(master::ReconcileRequest { framework_id: session.framework_id.clone(), tasks: Vec::new() })
        .await;
}

/// Tasks per explicit reconciliation request.
const RECONCILE_CHUNK: usize = 1000;

/// The longest wait for a request's answers before the next request.
const RECONCILE_CHUNK_WAIT: Duration = Duration::from_secs(5);
