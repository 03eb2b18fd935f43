//! The gateway's Prometheus metrics (besides the per-request ones every service has). The
//! leader's gauges are read from its state at scrape time, so they cannot drift from what
//! the API shows; a standby reports zeros and `marina_gateway_elected 0`.

use std::sync::Arc;

use marina_daemon::Metrics;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use tokio::sync::watch;

use crate::leader::Leader;

/// Counters the leader bumps as things happen.
#[derive(Clone)]
pub struct GatewayMetrics {
    pub elections_won: IntCounter,
    pub tasks_launched: IntCounter,
    pub launches_refused: IntCounter,
    pub status_updates: IntCounter,
    /// The apps service's writes at the door ([`crate::admission`]).
    pub admission: AdmissionMetrics,
    /// Where a deployment's time goes, from the leader taking it to its answer.
    pub deployment_phases: DeploymentPhases,
    /// Where the time of using offers goes.
    pub offer_phases: OfferPhases,
}

impl GatewayMetrics {
    /// Registers the gateway's metrics; the leader gauges follow `role`.
    pub fn new(metrics: &Metrics, role: watch::Receiver<Option<Arc<Leader>>>) -> Self {
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("static metric");
            metrics.register(counter.clone());
            counter
        };
        metrics.register(LeaderGauges::new(role));
        Self {
            elections_won: counter("marina_gateway_elections_won_total", "Leaderships this gateway took."),
            tasks_launched: counter("marina_gateway_tasks_launched_total", "Tasks sent to the master to launch."),
            launches_refused: counter(
                "marina_gateway_launches_refused_total",
                "Launches the master refused (their instances are replaced).",
            ),
            status_updates: counter("marina_gateway_status_updates_total", "Task status updates received."),
            admission: AdmissionMetrics::new(metrics),
            deployment_phases: DeploymentPhases::new(metrics),
            offer_phases: OfferPhases::new(metrics),
        }
    }
}

/// Deployments are carried out one at a time (each plans against the apps as the one
/// before left them), so the time one waits for its turn is the others' phases: these
/// show which phase to shorten when submissions queue.
#[derive(Clone)]
pub struct DeploymentPhases {
    /// Waiting for the deployments before it.
    pub queued: Histogram,
    /// Checking and planning the change against the apps.
    pub plan: Histogram,
    /// Writing it to coord (fenced transactions of up to 200 operations).
    pub commit: Histogram,
    /// Taking it into the leader's state and announcing it.
    pub adopt: Histogram,
}

impl DeploymentPhases {
    fn new(metrics: &Metrics) -> Self {
        let [queued, plan, commit, adopt] = phase_histograms(
            metrics,
            "marina_gateway_deployment_phase_seconds",
            "Time of each phase of a deployment on the leader: queued (behind the deployments before it), \
             plan, commit (to coord), adopt (into the leader's state, with its events).",
            ["queued", "plan", "commit", "adopt"],
        );
        Self { queued, plan, commit, adopt }
    }
}

/// Offers are used one batch at a time (see `scheduler::use_offers`): the time of each phase
/// of a batch, and how many tasks it placed, show what bounds the launch rate.
#[derive(Clone)]
pub struct OfferPhases {
    /// Placing waiting instances on the offers.
    pub decide: Histogram,
    /// Writing the placed instances' records to coord.
    pub record: Histogram,
    /// The master's answers to the accepts.
    pub accept: Histogram,
    /// Tasks placed per batch of offers.
    pub placed: Histogram,
}

impl OfferPhases {
    fn new(metrics: &Metrics) -> Self {
        let [decide, record, accept] = phase_histograms(
            metrics,
            "marina_gateway_offer_phase_seconds",
            "Time of each phase of using a batch of offers: decide (placing instances), record (their records \
             to coord), accept (the master's answers).",
            ["decide", "record", "accept"],
        );
        let placed = Histogram::with_opts(
            HistogramOpts::new("marina_gateway_offer_batch_tasks", "Tasks placed per batch of offers used.")
                .buckets(prometheus::exponential_buckets(1.0, 4.0, 9).expect("static buckets")),
        )
        .expect("static metric");
        metrics.register(placed.clone());
        Self { decide, record, accept, placed }
    }
}

/// One histogram per phase of `name` (label `phase`), 0.1 ms to about 30 s.
fn phase_histograms<const N: usize>(metrics: &Metrics, name: &str, help: &str, phases: [&str; N]) -> [Histogram; N] {
    let histograms = prometheus::HistogramVec::new(
        HistogramOpts::new(name, help)
            .buckets(prometheus::exponential_buckets(0.0001, 2.5, 14).expect("static buckets")),
        &["phase"],
    )
    .expect("static metric");
    let each = phases.map(|phase| histograms.with_label_values(&[phase]));
    metrics.register(histograms);
    each
}

/// Admission wait buckets, 1 ms to 30 s: an idle gateway admits at once, a busy one within
/// the queue wait (10 s by default, at most the port's request timeout).
const ADMISSION_WAIT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The writes at the door: refused (by why), waiting, in flight, and how long they waited.
#[derive(Clone)]
pub struct AdmissionMetrics {
    /// Refused because the writes in flight and the queue were full.
    pub refused_queue_full: IntCounter,
    /// Refused after waiting `admission.max_queue_wait_ms` without their turn.
    pub refused_queue_wait: IntCounter,
    pub waiting: IntGauge,
    pub in_flight: IntGauge,
    /// How long each write waited for its turn (admitted or not; 0 when admitted at once).
    pub wait: Histogram,
}

impl AdmissionMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let refused = IntCounterVec::new(
            Opts::new(
                "marina_gateway_writes_refused_total",
                "App writes refused at the door (HTTP 429, gRPC RESOURCE_EXHAUSTED), by reason: queue_full, queue_wait.",
            ),
            &["reason"],
        )
        .expect("static metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("static metric");
        let wait = Histogram::with_opts(
            HistogramOpts::new(
                "marina_gateway_write_admission_wait_seconds",
                "Time app writes waited for their turn (admitted or refused after waiting).",
            )
            .buckets(ADMISSION_WAIT_BUCKETS.to_vec()),
        )
        .expect("static metric");
        let admission = Self {
            // Both series exist from the start, so a rate over them needs no first refusal.
            refused_queue_full: refused.with_label_values(&["queue_full"]),
            refused_queue_wait: refused.with_label_values(&["queue_wait"]),
            waiting: gauge("marina_gateway_writes_waiting", "App writes waiting for their turn."),
            in_flight: gauge("marina_gateway_writes_in_flight", "App writes being carried out."),
            wait,
        };
        metrics.register(refused);
        metrics.register(admission.waiting.clone());
        metrics.register(admission.in_flight.clone());
        metrics.register(admission.wait.clone());
        admission
    }
}

/// What the leader holds, counted when scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaderStats {
    pub apps: usize,
    pub deployments: usize,
    /// Instances waiting for an offer.
    pub launch_queue: usize,
    pub master_connected: bool,
}

struct LeaderGauges {
    role: watch::Receiver<Option<Arc<Leader>>>,
    elected: IntGauge,
    apps: IntGauge,
    deployments: IntGauge,
    launch_queue: IntGauge,
    master_connected: IntGauge,
    instances: IntGaugeVec,
    descs: Vec<Desc>,
}

impl LeaderGauges {
    fn new(role: watch::Receiver<Option<Arc<Leader>>>) -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("static metric");
        let instances =
            IntGaugeVec::new(Opts::new("marina_gateway_instances", "App instances by task state."), &["state"])
                .expect("static metric");
        let mut gauges = Self {
            role,
            elected: gauge("marina_gateway_elected", "1 while this gateway leads."),
            apps: gauge("marina_gateway_apps", "Apps defined."),
            deployments: gauge("marina_gateway_deployments", "Deployments in progress."),
            launch_queue: gauge("marina_gateway_launch_queue", "Instances waiting for resources to launch on."),
            master_connected: gauge("marina_gateway_master_connected", "1 while subscribed to the leading master."),
            instances,
            descs: Vec::new(),
        };
        gauges.descs =
            [&gauges.elected, &gauges.apps, &gauges.deployments, &gauges.launch_queue, &gauges.master_connected]
                .into_iter()
                .flat_map(|gauge| gauge.desc().into_iter().cloned())
                .chain(gauges.instances.desc().into_iter().cloned())
                .collect();
        gauges
    }
}

impl Collector for LeaderGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let leader = self.role.borrow().clone();
        let (stats, instances) = match &leader {
            Some(leader) => (leader.stats(), leader.instance_states()),
            None => (LeaderStats::default(), Vec::new()),
        };
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.elected.set(i64::from(leader.is_some()));
        self.apps.set(count(stats.apps));
        self.deployments.set(count(stats.deployments));
        self.launch_queue.set(count(stats.launch_queue));
        self.master_connected.set(i64::from(stats.master_connected));
        self.instances.reset();
        for (state, number) in instances {
            self.instances.with_label_values(&[state]).set(count(number));
        }
        [&self.elected, &self.apps, &self.deployments, &self.launch_queue, &self.master_connected]
            .into_iter()
            .flat_map(|gauge| gauge.collect())
            .chain(self.instances.collect())
            .collect()
    }
}
