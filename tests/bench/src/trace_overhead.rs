//! Tracing overhead: the latency of a coord read (`Get`, a linearizable read answered by the
//! leader) against five single-node coord processes that differ only in tracing — spans
//! off (log level `warn`), the default (spans, no exporter: no OpenTelemetry code), trace
//! ids without an exporter (`log.trace_ids = true`), the same with callers sending a sampled
//! `traceparent`, and spans exported over OTLP to a live receiver. The
//! requests go round-robin to all five, so machine noise falls on all of them alike.

use std::time::Duration;

use marina_proto::coord::v1 as pb;
use marina_proto::coord::v1::coord_client::CoordClient as CoordGrpc;
use marina_tests::CoordProcesses;
use marina_tests::otlp::OtlpReceiver;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::stats::Latencies;

#[derive(clap::Args)]
pub struct Args {
    /// Measured requests per configuration (one client, one request at a time).
    #[arg(long, default_value_t = 5000)]
    requests: usize,
}

/// One coord process and how its requests are sent.
struct Configuration {
    name: &'static str,
    _coord: CoordProcesses,
    client: CoordGrpc<Channel>,
    /// Whether requests carry a sampled `traceparent`, as a traced caller's do.
    caller_samples: bool,
    latencies: Latencies,
    total: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    // (name, the coord process's environment, whether requests carry a sampled traceparent)
    type Setup<'a> = (&'static str, Vec<(&'static str, &'a str)>, bool);
    let setups: [Setup; 5] = [
        ("spans off (level warn)", vec![("MARINA_COORD_LOG__LEVEL", "warn")], false),
        ("no exporter (default)", vec![], false),
        ("no exporter, trace ids on", vec![("MARINA_COORD_LOG__TRACE_IDS", "true")], false),
        ("trace ids on, caller samples", vec![("MARINA_COORD_LOG__TRACE_IDS", "true")], true),
        (
            "OTLP export, caller samples",
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
            true,
        ),
    ];
    let mut configurations = Vec::new();
    for (name, env, caller_samples) in setups {
        let coord = CoordProcesses::start_with_env(1, &env).await;
        let channel = marina_tests::tls::channel(&coord.ca().operator(), coord.address(1));
        let mut client = CoordGrpc::new(channel);
        client
            .set(pb::SetRequest {
                path: "/bench".into(),
                data: vec![b'x'; 256].into(),
                upsert: true,
                ..Default::default()
            })
            .await?;
        configurations.push(Configuration {
            name,
            _coord: coord,
            client,
            caller_samples,
            latencies: Latencies::new(),
            total: Duration::ZERO,
        });
    }

    let warmup = (args.requests / 10).max(10);
    for round in 0..warmup + args.requests {
        for configuration in &mut configurations {
            let elapsed = configuration.get().await?;
            if round >= warmup {
                configuration.latencies.record(elapsed);
                configuration.total += elapsed;
            }
        }
    }

    println!("tracing: coord Get latency, 1-node coord processes, {} sequential requests each", args.requests);
    println!("{:<30} {:>9} {:>9} {:>9} {:>10}", "configuration", "mean µs", "p50 µs", "p99 µs", "Δ mean µs");
    let mean = |configuration: &Configuration| configuration.total.as_secs_f64() * 1e6 / args.requests as f64;
    let baseline = mean(&configurations[0]);
    for configuration in &configurations {
        println!(
            "{:<30} {:>9.1} {:>9.1} {:>9.1} {:>+10.1}",
            configuration.name,
            mean(configuration),
            configuration.latencies.ms(0.5) * 1000.0,
            configuration.latencies.ms(0.99) * 1000.0,
            mean(configuration) - baseline
        );
    }
    // The exporter sends in batches: give the last one a moment to arrive.
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.all().len() < args.requests && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exported = receiver.all().len();
    let plain = mean(&configurations[1]);
    println!(
        "summary: without an exporter (the default) spans cost {:+.1} µs per request; trace ids without an \
         exporter add {:+.1} µs more ({:+.1} µs when the caller samples); exporting adds {:+.1} µs ({exported} \
         spans received)",
        plain - baseline,
        mean(&configurations[2]) - plain,
        mean(&configurations[3]) - plain,
        mean(&configurations[4]) - plain,
    );
    Ok(())
}

impl Configuration {
    async fn get(&mut self) -> anyhow::Result<Duration> {
        let mut request = tonic::Request::new(pb::GetRequest { path: "/bench".into(), stale: false });
        if self.caller_samples {
            let traceparent = format!("00-{:032x}-{:016x}-01", fastrand::u128(1..), fastrand::u64(1..));
            request.metadata_mut().insert("traceparent", traceparent.parse()?);
        }
        let started = Instant::now();
        self.client.get(request).await?;
        Ok(started.elapsed())
    }
}
