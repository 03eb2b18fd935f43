//! The master's Prometheus metrics (besides the per-RPC ones every service has).

use std::time::Instant;

use marina_daemon::Metrics;
use marina_proto::agent::v1::TaskState;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts};

use crate::leader::AgentStatus;

#[derive(Clone)]
pub struct MasterMetrics {
    pub elected: IntGauge,
    pub uptime_started: Instant,
    pub agents: IntGaugeVec,
    pub tasks: IntGaugeVec,
    pub frameworks: IntGauge,
    pub offers_outstanding: IntGauge,
    pub offers_made: IntCounter,
    pub offers_rescinded: IntCounter,
    pub tasks_launched: IntCounter,
    pub status_updates: IntCounter,
    pub scheduler_overflows: IntCounter,
    pub allocation_seconds: Histogram,
    pub accept_seconds: Histogram,
    pub elections_won: IntCounter,
    /// Time this master's liveness rounds ran late: when it could not hear its agents.
    pub stalled_seconds: prometheus::Counter,
    pub agents_marked_unreachable: IntCounter,
}

impl MasterMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("static metric");
            metrics.register(gauge.clone());
            gauge
        };
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("static metric");
            metrics.register(counter.clone());
            counter
        };
        let histogram = |name: &str, help: &str| {
            let buckets = prometheus::exponential_buckets(0.00001, 4.0, 12).expect("static buckets");
            let histogram =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("static metric");
            metrics.register(histogram.clone());
            histogram
        };
        let agents = IntGaugeVec::new(Opts::new("marina_master_agents", "Agents by status."), &["status"])
            .expect("static metric");
        metrics.register(agents.clone());
        let tasks = IntGaugeVec::new(Opts::new("marina_master_tasks", "Known tasks by state."), &["state"])
            .expect("static metric");
        metrics.register(tasks.clone());
        let started = Instant::now();
        let uptime = prometheus::Gauge::new("marina_master_uptime_seconds", "Seconds since this master started.")
            .expect("static metric");
        metrics.register(UptimeCollector { gauge: uptime, started });
        Self {
            elected: gauge("marina_master_elected", "1 while this master leads."),
            uptime_started: started,
            agents,
            tasks,
            frameworks: gauge("marina_master_frameworks_connected", "Subscribed frameworks."),
            offers_outstanding: gauge(
                "marina_master_offers_outstanding",
                "Offers neither accepted, declined nor rescinded.",
            ),
            offers_made: counter("marina_master_offers_total", "Offers made."),
            offers_rescinded: counter("marina_master_offers_rescinded_total", "Offers rescinded."),
            tasks_launched: counter("marina_master_tasks_launched_total", "Tasks launched through accepted offers."),
            status_updates: counter("marina_master_status_updates_total", "Status updates received from agents."),
            scheduler_overflows: counter(
                "marina_master_scheduler_overflows_total",
                "Subscriptions ended because the scheduler's event queue was full (it subscribes again and reconciles).",
            ),
            allocation_seconds: histogram("marina_master_allocation_duration_seconds", "Time of one allocation round."),
            accept_seconds: histogram(
                "marina_master_accept_duration_seconds",
                "Time to validate and launch one accept.",
            ),
            elections_won: counter("marina_master_elections_won_total", "Leaderships this master took."),
            agents_marked_unreachable: counter(
                "marina_master_agents_marked_unreachable_total",
                "Agents this master marked unreachable (silent too long, or not back after a failover).",
            ),
            stalled_seconds: {
                let counter = prometheus::Counter::new(
                    "marina_master_stalled_seconds_total",
                    "Time this master was too busy to hear its agents (its liveness rounds ran late); not counted \
                     as their silence.",
                )
                .expect("static metric");
                metrics.register(counter.clone());
                counter
            },
        }
    }

    pub fn observe_agents(&self, statuses: impl Iterator<Item = AgentStatus>) {
        let mut counts = [0i64; 4];
        for status in statuses {
            counts[status as usize] += 1;
        }
        for status in [AgentStatus::Reregistering, AgentStatus::Active, AgentStatus::Unreachable, AgentStatus::Draining]
        {
            self.agents.with_label_values(&[status.as_str()]).set(counts[status as usize]);
        }
    }

    pub fn observe_tasks(&self, states: impl Iterator<Item = TaskState>) {
        let mut counts = std::collections::BTreeMap::new();
        for state in states {
            *counts.entry(state.as_str_name()).or_insert(0i64) += 1;
        }
        self.tasks.reset();
        for (state, count) in counts {
            self.tasks.with_label_values(&[state]).set(count);
        }
    }
}

/// Uptime computed at scrape time.
struct UptimeCollector {
    gauge: prometheus::Gauge,
    started: Instant,
}

impl prometheus::core::Collector for UptimeCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.gauge.set(self.started.elapsed().as_secs_f64());
        self.gauge.collect()
    }
}
