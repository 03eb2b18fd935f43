//! Master failover with real processes: 3 `marina-coord`, 3 `marina-master`, N
//! `marina-agent` and a `marina-gateway`, one app deployed through the gateway. Each round
//! stops the leading master (SIGKILL, then in a second series SIGTERM) and measures, from
//! the signal:
//!
//! - **elected**: a new leader in coord (the lowest member of the masters' election
//!   directory changes to one with a higher epoch), seen through a watch;
//! - **agents**: the new leader reports every agent active (its `/master/state`);
//! - **scale**: a `PUT /v2/apps/{id}` sent right after the signal has all its instances
//!   RUNNING with no deployment left (the gateway must follow the new master to get offers).
//!
//! The stopped master is then restarted and the round ends once it is back as a standby, so
//! every round starts with 3 masters. Every service runs with its production defaults: the
//! figures are what an operator gets without tuning.

use std::time::Duration;

use marina_coord_client::{Leader, LeaderObserver};
use marina_daemon::leader::MemberInfo;
use serde_json::json;
use tokio::time::Instant;

use crate::report::verdict;
use crate::stats::Latencies;
use marina_proto::layout::MASTER_ELECTION_DIR as MASTER_MEMBERS;
use marina_tests::processes::{AppsApi, Coord, ProcessCluster, SETTLE, Topology, leader_with_agents};

#[derive(clap::Args)]
pub struct Args {
    /// Rounds per signal (first SIGKILL, then SIGTERM).
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// `marina-agent` processes.
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// The agents' runtime (`sim`: no side effects, the control plane alone; `process`: real
    /// host processes).
    #[arg(long, default_value = "sim", value_parser = ["sim", "process"])]
    runtime: String,
}

const APP_ID: &str = "/bench-failover";
const MASTERS: usize = 3;

/// How the leading master is stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL: a crash; the new leader waits for the old session to end.
    Kill,
    /// SIGTERM: graceful; the leader resigns (deletes its member node) first.
    Terminate,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Kill => "SIGKILL",
            Stop::Terminate => "SIGTERM",
        }
    }
}

/// Times from the signal to each milestone of one round.
struct Round {
    elected: Duration,
    agents: Duration,
    scaled: Duration,
}

/// The latencies of one series of rounds.
struct Series {
    stop: Stop,
    elected: Latencies,
    agents: Latencies,
    scaled: Latencies,
}

impl Series {
    fn new(stop: Stop) -> Self {
        Self { stop, elected: Latencies::new(), agents: Latencies::new(), scaled: Latencies::new() }
    }

    fn record(&mut self, round: &Round) {
        self.elected.record(round.elected);
        self.agents.record(round.agents);
        self.scaled.record(round.scaled);
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // Production-like: coord as processes, no timing overrides.
    let topology = Topology::new(MASTERS, args.agents, &args.runtime, 1).coord(Coord::Processes(3));
    let mut cluster = ProcessCluster::start(topology).await;
    let apps = cluster.gateway_api(0);
    let mut instances = args.agents;
    let app = json!({ "id": APP_ID, "cmd": "sleep 100000", "cpus": 0.1, "mem": 16, "instances": instances });
    apps.create(&app).await?;
    wait_stable(&apps, instances).await;
    let observer = cluster.coord_client().observe_leader(MASTER_MEMBERS).await?;

    let mut series = Vec::new();
    for stop in [Stop::Kill, Stop::Terminate] {
        let mut measured = Series::new(stop);
        for _ in 0..args.rounds {
            // Always a scale-up: it needs offers from the new leader.
            instances += 1;
            let round = round(&mut cluster, &observer, stop, instances).await?;
            measured.record(&round);
        }
        series.push(measured);
    }
    print_report(&args, &series);
    Ok(())
}

/// One failover: stop the leader, time the milestones, bring the stopped master back.
async fn round(
    cluster: &mut ProcessCluster,
    observer: &LeaderObserver,
    stop: Stop,
    instances: usize,
) -> anyhow::Result<Round> {
    let old = observer.current().ok_or_else(|| anyhow::anyhow!("no master leads"))?;
    let victim = master_index(cluster, &old)?;
    let survivors: Vec<String> =
        cluster.masters.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, m)| m.address.clone()).collect();
    let agents = cluster.agents.len();
    let apps = cluster.gateway_api(0);
    let ca = cluster.ca().clone();
    let mut leaders = observer.receiver();

    let started = Instant::now();
    let stopping = async {
        match stop {
            Stop::Kill => cluster.masters[victim].kill().await,
            Stop::Terminate => {
                let status = cluster.masters[victim].terminate().await;
                assert!(status.is_some_and(|s| s.success()), "the master exits cleanly on SIGTERM: {status:?}");
            }
        }
    };
    let elected = async {
        let newer = tokio::time::timeout(SETTLE, leaders.wait_for(|l| l.as_ref().is_some_and(|l| l.epoch > old.epoch)));
        newer.await.expect("a new master elected in time").expect("the observer runs");
        started.elapsed()
    };
    let registered = async {
        leader_with_agents(&ca, &survivors, agents, old.epoch).await;
        started.elapsed()
    };
    let scaled = async {
        marina_tests::eventually(SETTLE, "the gateway to accept the scale request", || async {
            apps.scale(APP_ID, instances).await.ok()
        })
        .await;
        wait_stable(&apps, instances).await;
        started.elapsed()
    };
    let ((), elected, agents, scaled) = tokio::join!(stopping, elected, registered, scaled);

    cluster.masters[victim].restart();
    wait_standby(cluster, victim).await;
    Ok(Round { elected, agents, scaled })
}

/// The index of the master `leader` describes (its member node holds its address).
fn master_index(cluster: &ProcessCluster, leader: &Leader) -> anyhow::Result<usize> {
    let member =
        MemberInfo::from_bytes(&leader.data).ok_or_else(|| anyhow::anyhow!("unreadable member {}", leader.member))?;
    cluster
        .masters
        .iter()
        .position(|m| m.address == member.address)
        .ok_or_else(|| anyhow::anyhow!("leader {} is not one of the bench's masters", member.address))
}

async fn wait_stable(apps: &AppsApi, instances: usize) {
    let what = format!("{instances} instances of {APP_ID} running");
    marina_tests::eventually(SETTLE, &what, || async { apps.is_stable(APP_ID, instances).await.then_some(()) }).await;
}

/// Waits until the restarted master `index` is a member of the election again, not leading.
async fn wait_standby(cluster: &ProcessCluster, index: usize) {
    let master = &cluster.masters[index];
    master.wait_healthy().await;
    let coord = cluster.coord_client();
    marina_tests::eventually(SETTLE, &format!("{} to be a standby", master.name), || async {
        let members = coord.list(MASTER_MEMBERS).await.ok()?.children.len();
        let state = master.get_json("/master/state").await?;
        (members == MASTERS && state["elected"] == false).then_some(())
    })
    .await;
}

/// Targets (p99): elected after a crash < 1 s, scale done < 2 s, graceful handover < 200 ms.
fn target_ms(stop: Stop, milestone: &str) -> Option<f64> {
    match (stop, milestone) {
        (Stop::Kill, "elected") => Some(1000.0),
        (Stop::Kill, "scale") => Some(2000.0),
        (Stop::Terminate, "elected") => Some(200.0),
        _ => None,
    }
}

fn print_report(args: &Args, series: &[Series]) {
    let master = marina_master::Config::default();
    let gateway = marina_gateway::Config::default();
    println!(
        "failover: 3 marina-coord, {MASTERS} marina-master, {} marina-agent ({}), 1 marina-gateway; processes on \
         loopback; {} rounds per signal",
        args.agents, args.runtime, args.rounds
    );
    println!(
        "settings: production defaults, no overrides: master session_ttl_ms={} session_disconnect_grace_ms={} \
         agent_ping_interval_ms={} max_agent_ping_timeouts={} allocation_interval_ms={}; gateway session_ttl_ms={} \
         session_disconnect_grace_ms={}",
        master.session_ttl_ms,
        master.session_disconnect_grace_ms,
        master.agent_ping_interval_ms,
        master.max_agent_ping_timeouts,
        master.allocation_interval_ms,
        gateway.session_ttl_ms,
        gateway.session_disconnect_grace_ms,
    );
    println!(
        "{:<8} {:<34} {:>5} {:>9} {:>9} {:>9} {:>14} {:>4}",
        "signal", "from the signal to", "n", "p50 ms", "p99 ms", "max ms", "target", "met"
    );
    let mut all_met = true;
    for s in series {
        for (milestone, label, latencies) in [
            ("elected", "new leader elected (coord)", &s.elected),
            ("agents", "all agents re-registered", &s.agents),
            ("scale", "scale request: all RUNNING", &s.scaled),
        ] {
            let target = target_ms(s.stop, milestone);
            let met = target.map(|t| latencies.ms(0.99) < t);
            all_met &= met.unwrap_or(true);
            println!(
                "{:<8} {:<34} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>14} {:>4}",
                s.stop.name(),
                label,
                latencies.count(),
                latencies.ms(0.5),
                latencies.ms(0.99),
                latencies.ms(1.0),
                target.map(|t| format!("p99 < {t:.0}")).unwrap_or_else(|| "-".into()),
                met.map(verdict).unwrap_or("-"),
            );
        }
    }
    let kill = series.iter().find(|s| s.stop == Stop::Kill);
    let term = series.iter().find(|s| s.stop == Stop::Terminate);
    let p99 = |s: Option<&Series>, pick: fn(&Series) -> &Latencies| s.map(|s| pick(s).ms(0.99)).unwrap_or(f64::NAN);
    println!(
        "summary: failover (SIGKILL) p99: elected {:.0} ms, agents back {:.0} ms, scale RUNNING {:.0} ms; handover \
         (SIGTERM) p99 {:.0} ms; targets {}",
        p99(kill, |s| &s.elected),
        p99(kill, |s| &s.agents),
        p99(kill, |s| &s.scaled),
        p99(term, |s| &s.elected),
        if all_met { "met" } else { "NOT met" },
    );
}
