//! Latency recording and the printed tables.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies in microseconds, 1 µs to 60 s, 3 significant digits.
pub struct Latencies(Histogram<u64>);

impl Latencies {
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds"))
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = latency.as_micros().clamp(1, 60_000_000) as u64;
        self.0.record(micros).expect("value within bounds");
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.0.add(&other.0).expect("same bounds");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at `quantile` in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// One row of a throughput/latency table.
pub struct Row {
    pub system: String,
    pub workload: String,
    pub clients: usize,
    pub ops_per_sec: f64,
    pub latencies: Latencies,
    pub errors: u64,
}

pub fn print_table(rows: &[Row]) {
    println!(
        "{:<10} {:<18} {:>7} {:>11} {:>9} {:>9} {:>9} {:>7}",
        "system", "workload", "clients", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    );
    for row in rows {
        println!(
            "{:<10} {:<18} {:>7} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>7}",
            row.system,
            row.workload,
            row.clients,
            row.ops_per_sec,
            row.latencies.ms(0.5),
            row.latencies.ms(0.99),
            row.latencies.ms(0.999),
            row.errors
        );
    }
}
