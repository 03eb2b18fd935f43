//! Admission control for the apps service's writes: backpressure at the door. Every change
//! of apps, groups, deployments and tasks ends in coord writes, which the leader carries out
//! one deployment at a time (its deployment lock); under a submission storm, requests would
//! otherwise pile up behind that lock, unbounded and with no deadline but the port's request
//! timeout, until they fail with a 503 after 30 s each. Instead, at most
//! `max_inflight_writes` writes run at once, at most `max_queued_writes` more wait their turn
//! (first come, first served) for at most `max_queue_wait_ms`, and any other is refused at
//! once with a time to retry after (HTTP 429 with `Retry-After`, gRPC `RESOURCE_EXHAUSTED`
//! with `retry-after`), which Marathon's clients honour.
//!
//! Admission is the first thing a write does after reading its request and before anything
//! changes: a refused write has changed nothing. Reads never come here, so they are never
//! held behind writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use marina_daemon::ServerLimits;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::AdmissionMetrics;

/// The shortest and longest time a refused caller is told to wait (see [`Inner::retry_after`]).
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The weight of each new write's time in the running mean (1/8: the mean follows a change
/// of pace within a few dozen writes, and one slow write does not swing it).
const MEAN_WEIGHT: u64 = 8;

/// How many of the apps service's writes run and wait at once (the gateway's `admission`).
///
/// The defaults take any ordinary workload without refusing anything (the placement
/// benchmark's 8 concurrent submissions do not even queue) and bound a storm:
///
/// - 16 in flight: the leader carries out one deployment at a time, so more writes in flight
///   only move the queue behind its deployment lock, where nothing bounds it; 16 still let
///   the parts that do not take that lock (kills, reading what a change starts from)
///   overlap.
/// - 256 queued: at the few to tens of milliseconds a coord write takes, about what can be
///   served within the queue wait; a longer queue would only hold callers that time out.
///   With the writes in flight, well below the port's 1,024 requests, so reads always find
///   room on the port.
/// - 10 s queue wait: well inside the port's 30 s request timeout, which leaves the admitted
///   write 20 s to be carried out and answers a caller that cannot be served soon with a
///   429 to retry rather than a 503 after the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionLimits {
    /// Writes being carried out at once.
    pub max_inflight_writes: usize,
    /// Writes waiting for their turn beyond those; one more is refused at once (429). 0: none
    /// wait.
    pub max_queued_writes: usize,
    /// How long a write waits for its turn before it is refused (429). Below
    /// `server.request_timeout_ms`.
    pub max_queue_wait_ms: u64,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits { max_inflight_writes: 16, max_queued_writes: 256, max_queue_wait_ms: 10_000 }
    }
}

impl AdmissionLimits {
    /// What is wrong with these limits (a configuration error), naming the key. They must
    /// fit inside the port's own bounds: a waiting write holds one of the port's requests,
    /// and must still have time to be carried out once admitted.
    pub fn problem(&self, server: &ServerLimits) -> Option<(&'static str, String)> {
        if self.max_inflight_writes == 0 || self.max_inflight_writes > Semaphore::MAX_PERMITS {
            return Some(("admission.max_inflight_writes", "must be at least 1".to_owned()));
        }
        let writes = self.max_inflight_writes.saturating_add(self.max_queued_writes);
        if writes >= server.max_concurrent_requests {
            return Some((
                "admission.max_queued_writes",
                format!(
                    "with admission.max_inflight_writes ({}), must stay below server.max_concurrent_requests ({}): \
                     waiting writes hold the port's requests, and reads must still find room",
                    self.max_inflight_writes, server.max_concurrent_requests
                ),
            ));
        }
        if self.max_queue_wait_ms == 0 || self.max_queue_wait_ms >= server.request_timeout_ms {
            return Some((
                "admission.max_queue_wait_ms",
                format!(
                    "must be at least 1 and below server.request_timeout_ms ({}), so that an admitted write \
                     still has time to be carried out",
                    server.request_timeout_ms
                ),
            ));
        }
        None
    }

    fn queue_wait(&self) -> Duration {
        Duration::from_millis(self.max_queue_wait_ms)
    }
}

/// Why a write was not admitted. It changed nothing; the caller may retry after
/// [`Refused::retry_after`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The writes in flight and the queue were full when it came.
    #[error(
        "too many changes at once: {in_flight} writes in progress and {queued} waiting on the leading gateway \
         (admission.max_inflight_writes, admission.max_queued_writes); nothing was changed, retry in {} s",
        retry_after.as_secs()
    )]
    QueueFull { in_flight: usize, queued: usize, retry_after: Duration },
    /// It waited its longest in the queue without its turn coming.
    #[error(
        "too many changes at once: this one waited {} ms on the leading gateway (admission.max_queue_wait_ms) \
         without its turn coming; nothing was changed, retry in {} s",
        waited.as_millis(),
        retry_after.as_secs()
    )]
    WaitedTooLong { waited: Duration, retry_after: Duration },
}

impl Refused {
    /// How long the caller should wait before trying again: whole seconds, at least 1.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refused::QueueFull { retry_after, .. } | Refused::WaitedTooLong { retry_after, .. } => *retry_after,
        }
    }
}

/// The admission of the gateway's writes (cheap to clone: one shared state).
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    limits: AdmissionLimits,
    /// One permit per write in flight. Tokio's semaphore is fair: a released permit goes to
    /// the longest waiter, and a newcomer cannot take it ahead of the queue.
    slots: Arc<Semaphore>,
    /// Writes waiting for a permit (bounded by `max_queued_writes`).
    waiting: AtomicUsize,
    /// The running mean of how long an admitted write holds its permit, in microseconds
    /// (0 until one has).
    mean_hold_micros: AtomicU64,
    metrics: AdmissionMetrics,
}

impl Admission {
    pub fn new(limits: AdmissionLimits, metrics: AdmissionMetrics) -> Self {
        let inner = Inner {
            slots: Arc::new(Semaphore::new(limits.max_inflight_writes)),
            limits,
            waiting: AtomicUsize::new(0),
            mean_hold_micros: AtomicU64::new(0),
            metrics,
        };
        Admission { inner: Arc::new(inner) }
    }

    /// Waits for this write's turn: admitted at once if a slot is free, else queued (first
    /// come, first served) for at most `max_queue_wait_ms`; refused at once if the queue is
    /// full. The write runs while it holds the returned [`Admitted`].
    pub async fn admit(&self) -> Result<Admitted, Refused> {
        let inner = &self.inner;
        if let Ok(slot) = inner.slots.clone().try_acquire_owned() {
            inner.metrics.wait.observe(0.0);
            return Ok(Admitted::new(inner, slot));
        }
        let Some(place) = Place::take(inner) else {
            let refused = Refused::QueueFull {
                in_flight: inner.limits.max_inflight_writes,
                queued: inner.limits.max_queued_writes,
                retry_after: inner.retry_after(inner.limits.max_queued_writes),
            };
            return Err(inner.refuse(refused));
        };
        let started = Instant::now();
        let turn = tokio::time::timeout(inner.limits.queue_wait(), inner.slots.clone().acquire_owned()).await;
        let waited = started.elapsed();
        // The others queued now: a retry goes behind them.
        let others = inner.waiting.load(Ordering::Relaxed).saturating_sub(1);
        drop(place);
        inner.metrics.wait.observe(waited.as_secs_f64());
        match turn {
            Ok(Ok(slot)) => Ok(Admitted::new(inner, slot)),
            // `Err(_)` inside: the semaphore was closed, which it never is; read as no turn.
            Ok(Err(_)) | Err(_) => {
                let refused = Refused::WaitedTooLong { waited, retry_after: inner.retry_after(others) };
                Err(inner.refuse(refused))
            }
        }
    }

    /// Writes waiting for their turn now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn refuse(&self, refused: Refused) -> Refused {
        match refused {
            Refused::QueueFull { .. } => self.metrics.refused_queue_full.inc(),
            Refused::WaitedTooLong { .. } => self.metrics.refused_queue_wait.inc(),
        }
        tracing::warn!("write refused: {refused}");
        refused
    }

    /// How long a caller refused with `ahead` writes queued before it should wait: about the
    /// time those take to go through. With every slot taken (as it is whenever writes
    /// queue), writes finish at `max_inflight_writes` per mean hold time (Little's law), so
    /// `ahead` queued writes and this one are through in `(ahead + 1) × mean hold /
    /// max_inflight_writes`. Rounded up to whole seconds (what `Retry-After` carries; 0 would
    /// invite a retry straight into the same full queue), at least 1 s, at most 30 s: beyond
    /// that the estimate is a few slow writes' noise, and a caller told to wait longer may
    /// give up on a gateway that drains sooner.
    fn retry_after(&self, ahead: usize) -> Duration {
        let mean = Duration::from_micros(self.mean_hold_micros.load(Ordering::Relaxed));
        let writes = u32::try_from(ahead.saturating_add(1)).unwrap_or(u32::MAX);
        let slots = u32::try_from(self.limits.max_inflight_writes).unwrap_or(u32::MAX).max(1);
        let drain = mean.saturating_mul(writes) / slots;
        Duration::from_secs(drain.as_secs() + u64::from(drain.subsec_nanos() > 0))
            .clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER)
    }

    /// Folds one write's hold time into the running mean.
    fn record_hold(&self, held: Duration) {
        let held = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        let _ = self.mean_hold_micros.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |mean| {
            Some(if mean == 0 { held } else { mean - mean / MEAN_WEIGHT + held / MEAN_WEIGHT })
        });
    }
}

/// A place in the queue, given back when its write stops waiting — admitted, refused, or
/// dropped with its caller (a client that went away must not keep its place).
struct Place<'a> {
    inner: &'a Inner,
}

impl<'a> Place<'a> {
    /// A place, unless the queue is full.
    fn take(inner: &'a Inner) -> Option<Self> {
        let limit = inner.limits.max_queued_writes;
        inner.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).ok()?;
        inner.metrics.waiting.inc();
        Some(Place { inner })
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.inner.waiting.fetch_sub(1, Ordering::AcqRel);
        self.inner.metrics.waiting.dec();
    }
}

/// An admitted write's slot, given back when dropped (its time counts towards the mean that
/// [`Refused::retry_after`] is derived from).
///
/// A deployment's commit, once on its way to coord, goes on even if its caller goes away
/// (see `Leader::carry_out`); its slot is given back with the caller, so for that moment one
/// more write may run than the limit says. Those writes still take the leader's deployment
/// lock in turn.
pub struct Admitted {
    inner: Arc<Inner>,
    since: Instant,
    _slot: OwnedSemaphorePermit,
}

impl Admitted {
    fn new(inner: &Arc<Inner>, slot: OwnedSemaphorePermit) -> Self {
        inner.metrics.in_flight.inc();
        Admitted { inner: inner.clone(), since: Instant::now(), _slot: slot }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.inner.record_hold(self.since.elapsed());
        self.inner.metrics.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_inflight_writes: usize, max_queued_writes: usize, max_queue_wait_ms: u64) -> Admission {
        let limits = AdmissionLimits { max_inflight_writes, max_queued_writes, max_queue_wait_ms };
        Admission::new(limits, AdmissionMetrics::new(&marina_daemon::Metrics::new("test")))
    }

    /// Waits (yielding, not sleeping) until `admission` has `count` writes queued.
    async fn queued(admission: &Admission, count: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while admission.waiting() != count {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the writes to queue");
    }

    #[tokio::test]
    async fn writes_beyond_the_slots_and_the_queue_are_refused_at_once() {
        let admission = admission(1, 2, 10_000);
        let held = admission.admit().await.unwrap();
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move { admission.admit().await.map(drop) })
            })
            .collect();
        queued(&admission, 2).await;
        let started = Instant::now();
        let refused = admission.admit().await.err().expect("the queue is full");
        assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not after the queue wait");
        assert!(matches!(refused, Refused::QueueFull { in_flight: 1, queued: 2, .. }), "{refused:?}");
        assert!(refused.retry_after() >= Duration::from_secs(1));
        assert!(refused.to_string().contains("admission.max_queued_writes"), "{refused}");
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap().expect("the queued writes are admitted in turn");
        }
        assert_eq!(admission.waiting(), 0);
        let metrics = &admission.inner.metrics;
        assert_eq!(metrics.refused_queue_full.get(), 1);
        assert_eq!((metrics.waiting.get(), metrics.in_flight.get()), (0, 0));
    }

    #[tokio::test]
    async fn a_write_that_waits_too_long_is_refused_and_leaves_the_queue() {
        let admission = admission(1, 4, 50);
        let held = admission.admit().await.unwrap();
        let refused = admission.admit().await.err().expect("no turn within the wait");
        let Refused::WaitedTooLong { waited, retry_after } = refused else { panic!("{refused:?}") };
        assert!(waited >= Duration::from_millis(50), "{waited:?}");
        assert!(retry_after >= Duration::from_secs(1));
        assert_eq!(admission.waiting(), 0, "its place was given back");
        assert_eq!(admission.inner.metrics.refused_queue_wait.get(), 1);
        drop(held);
        admission.admit().await.expect("a free slot admits at once");
    }

    #[tokio::test]
    async fn queued_writes_are_admitted_first_come_first_served() {
        let admission = admission(1, 8, 10_000);
        let held = admission.admit().await.unwrap();
        let (order, mut admitted) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for n in 0..5 {
            let (waiter, order) = (admission.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let slot = waiter.admit().await.unwrap();
                order.send(n).unwrap();
                drop(slot);
            }));
            // Each in the queue before the next comes.
            queued(&admission, n + 1).await;
        }
        drop(held);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        let mut seen = Vec::new();
        while let Ok(n) = admitted.try_recv() {
            seen.push(n);
        }
        assert_eq!(seen, [0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_gives_its_place_back() {
        let admission = admission(1, 1, 10_000);
        let _held = admission.admit().await.unwrap();
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit().await.map(drop) }
        });
        queued(&admission, 1).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(admission.waiting(), 0);
        assert_eq!(admission.inner.metrics.waiting.get(), 0);
    }

    #[tokio::test]
    async fn no_queue_refuses_as_soon_as_the_slots_are_taken() {
        let admission = admission(2, 0, 10_000);
        let _one = admission.admit().await.unwrap();
        let _two = admission.admit().await.unwrap();
        assert!(matches!(admission.admit().await, Err(Refused::QueueFull { .. })));
    }

    #[test]
    fn retry_after_is_the_queue_drain_time_in_whole_seconds_within_bounds() {
        let admission = admission(4, 100, 10_000);
        let inner = &admission.inner;
        assert_eq!(inner.retry_after(100), Duration::from_secs(1), "no write measured yet: the least");
        inner.record_hold(Duration::from_millis(200));
        // 101 writes at 4 per 200 ms: 5.05 s, rounded up.
        assert_eq!(inner.retry_after(100), Duration::from_secs(6));
        assert_eq!(inner.retry_after(0), Duration::from_secs(1), "50 ms rounds up to the least");
        inner.record_hold(Duration::from_secs(3600));
        assert_eq!(inner.retry_after(100), MAX_RETRY_AFTER);
    }

    #[test]
    fn the_mean_hold_time_follows_writes_without_one_swinging_it() {
        let admission = admission(1, 1, 10_000);
        let inner = &admission.inner;
        inner.record_hold(Duration::from_millis(80));
        assert_eq!(inner.mean_hold_micros.load(Ordering::Relaxed), 80_000);
        inner.record_hold(Duration::from_millis(880));
        assert_eq!(inner.mean_hold_micros.load(Ordering::Relaxed), 180_000);
    }

    #[test]
    fn limits_must_fit_inside_the_ports_bounds() {
        let server = ServerLimits::default();
        assert_eq!(AdmissionLimits::default().problem(&server), None);
        let key = |limits: AdmissionLimits| limits.problem(&server).map(|(key, _)| key);
        let defaults = AdmissionLimits::default();
        assert_eq!(key(AdmissionLimits { max_inflight_writes: 0, ..defaults }), Some("admission.max_inflight_writes"));
        assert_eq!(key(AdmissionLimits { max_queued_writes: 0, ..defaults }), None, "no queue is a choice");
        assert_eq!(key(AdmissionLimits { max_queued_writes: 1008, ..defaults }), Some("admission.max_queued_writes"));
        assert_eq!(
            key(AdmissionLimits { max_queued_writes: usize::MAX, ..defaults }),
            Some("admission.max_queued_writes")
        );
        assert_eq!(key(AdmissionLimits { max_queue_wait_ms: 0, ..defaults }), Some("admission.max_queue_wait_ms"));
        assert_eq!(
            key(AdmissionLimits { max_queue_wait_ms: server.request_timeout_ms, ..defaults }),
            Some("admission.max_queue_wait_ms")
        );
    }
}
