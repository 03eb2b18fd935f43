//! `marina-bench chaos`: Jepsen-style faults against a whole cluster of processes in
//! network namespaces (issue 20), with checkers over what was recorded.
//!
//! The run is a sequence of rounds drawn from the seed ([`schedule`]): in each, one to three
//! faults — partitions (a leader isolated, a minority, a majority, a bridge), SIGKILL and
//! restart from disk, SIGSTOP past session TTLs, packet loss, delay, a coord node's disk
//! filled up — start and end on
//! their own clocks, overlapping, while clients write coord registers ([`registers`]) and
//! scale and upgrade apps ([`apps`]). After each round everything is healed and the
//! cluster must converge (coord leader, master with every agent, gateway leader, apps as
//! declared); the time it takes is the liveness figure. At the end: the register history is
//! checked for linearizability, leaderships and agents' epochs are checked from the logs
//! ([`leadership`]), and every violation is printed. A seed reproduces the schedule.

mod apps;
mod leadership;
mod registers;
mod schedule;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use marina_tests::netns_cluster::{NetnsCluster, Shape};
use tokio::sync::watch;

use crate::stats::Latencies;

#[derive(clap::Args)]
pub struct Args {
    /// Faults to run, in rounds of one to three.
    #[arg(long, default_value_t = 20)]
    faults: usize,
    /// Seed of the schedule (default: from the clock; printed, to reproduce the run).
    #[arg(long)]
    seed: Option<u64>,
    /// Also print, while the cluster converges after a heal, what is still off each time
    /// that changes.
    #[arg(long)]
    verbose: bool,
    /// Print the seed's schedule (each fault with its round, start, hold and target by
    /// role) and exit without starting anything.
    #[arg(long)]
    dry_run: bool,
}

/// How long the cluster may take to converge after a heal before that is a violation.
const CONVERGENCE_LIMIT: Duration = Duration::from_secs(120);

/// Coord's disks are small tmpfs file systems, so one can be filled.
const SHAPE: Shape = Shape { coord: 3, masters: 2, gateways: 2, agents: 2, coord_disk: Some("512m") };

/// What the processes are told beyond their defaults: agents offer fixed resources.
/// Leaders log every fenced write they commit (`marina_fence` at debug), for the leadership
/// checker.
const ENVS: &[(&str, &str, &str)] = &[
    ("agent", "MARINA_AGENT_RESOURCES__CPUS", "4"),
    ("agent", "MARINA_AGENT_RESOURCES__MEM_MB", "4096"),
    ("master", "MARINA_MASTER_LOG__LEVEL", "info,openraft=warn,marina_fence=debug"),
    ("gateway", "MARINA_GATEWAY_LOG__LEVEL", "info,openraft=warn,marina_fence=debug"),
];

pub async fn run(args: Args) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |elapsed| elapsed.as_secs())
    });
    anyhow::ensure!(args.faults > 0, "--faults: at least 1");
    if let Some(reason) = marina_tests::netns::unavailable_reason() {
        anyhow::bail!("chaos needs network namespaces (run as root): {reason}");
    }
    let rounds = schedule::plan(seed, args.faults);
    if args.dry_run {
        for (index, round) in rounds.iter().enumerate() {
            for fault in &round.faults {
                println!(
                    "round {} fault {}: +{:.1} s for {:.1} s: {:?}",
                    index + 1,
                    fault.number,
                    fault.start.as_secs_f64(),
                    fault.hold.as_secs_f64(),
                    fault.action
                );
            }
        }
        return Ok(());
    }
    println!(
        "chaos: seed {seed}, {} faults in {} rounds; {} coord nodes, {} masters, {} gateways, {} agents (process runtime), each on a host of its own (network namespaces)",
        args.faults,
        rounds.len(),
        SHAPE.coord,
        SHAPE.masters,
        SHAPE.gateways,
        SHAPE.agents
    );
    let mut cluster = NetnsCluster::start("mchaos", SHAPE, ENVS).await?;
    let elections = leadership::ElectionHistory::follow(&cluster).await?;
    let mut apps = apps::Apps::new(seed);
    apps.create(&cluster).await?;
    let registers = registers::Registers::start(&cluster, seed);
    let mut convergence = Latencies::new();
    let mut violations: Vec<String> = Vec::new();
    let mut player = schedule::Player::new(seed);
    let started = Instant::now();

    // Before the first fault, the cluster must have settled (apps running).
    if let Err(reason) = converge(&mut cluster, &mut apps, &registers, 1, args.verbose).await {
        anyhow::bail!("the cluster did not settle before any fault: {reason}");
    }
    let mut rounds_run = 0;
    for (index, round) in rounds.iter().enumerate() {
        let number = index + 1;
        let (stop, stopped) = watch::channel(false);
        let workload = tokio::spawn(drive_apps(apps, apps::Endpoints::of(&cluster), stopped));
        let played = player.play(&mut cluster, round).await;
        let _ = stop.send(true);
        apps = workload.await?;
        played?;
        rounds_run = number;
        let healed = Instant::now();
        match converge(&mut cluster, &mut apps, &registers, number + 1, args.verbose).await {
            Ok(times) => {
                let took = healed.elapsed();
                convergence.record(took);
                println!("round {number}: healed; converged in {:.1} s ({times})", took.as_secs_f64());
            }
            Err(reason) => {
                violations.push(format!(
                    "liveness: round {number} did not converge within {} s of the heal: {reason}",
                    CONVERGENCE_LIMIT.as_secs()
                ));
                println!("round {number}: did NOT converge: {reason}");
                break;
            }
        }
    }
    println!("faults ran for {:.0} s", started.elapsed().as_secs_f64());

    let (line, register_violation) = registers.finish(rounds_run + 1).await;
    println!("checker coord-registers: {line}");
    if register_violation {
        violations.push(format!("coord registers: {line}"));
    }
    let (line, leadership_violations) = leadership::check(&cluster, &elections);
    print_checker("leadership", &line, &leadership_violations);
    violations.extend(leadership_violations);
    let line = format!(
        "{} apps, {} scale/upgrade requests ({} without a clear answer), at most {} live tasks of an app seen on the agents; converged to their declared instances, versions and no unknown task after every heal",
        apps::APPS,
        apps.requests,
        apps.indeterminate,
        apps.most_seen
    );
    print_checker("apps", &line, &apps.violations);
    violations.extend(apps.violations.iter().cloned());
    let liveness = format!(
        "converged after {} of {} heals; time from heal to converged: p50 {:.1} s, p90 {:.1} s, max {:.1} s",
        convergence.count(),
        rounds.len(),
        convergence.ms(0.5) / 1e3,
        convergence.ms(0.9) / 1e3,
        convergence.ms(1.0) / 1e3
    );
    let liveness_violations: Vec<String> = violations.iter().filter(|v| v.starts_with("liveness")).cloned().collect();
    print_checker("liveness", &liveness, &liveness_violations);

    let ran: Vec<String> = player.ran.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
    let skipped =
        if player.skipped > 0 { format!(", {} skipped with no free target", player.skipped) } else { String::new() };
    println!(
        "summary: {} faults ({}{skipped}) in {rounds_run} rounds, seed {seed}; {} violations; convergence p50 {:.1} s, max {:.1} s",
        player.ran.values().sum::<usize>(),
        ran.join(", "),
        violations.len(),
        convergence.ms(0.5) / 1e3,
        convergence.ms(1.0) / 1e3
    );
    if !violations.is_empty() {
        let dest = std::env::temp_dir().join(format!("marina-chaos-{seed}-{}", std::process::id()));
        match cluster.save_logs(&dest).await {
            Ok(()) => println!("logs of every process: {}", dest.display()),
            Err(error) => println!("could not save the processes' logs to {}: {error}", dest.display()),
        }
    }
    drop(cluster);
    anyhow::ensure!(violations.is_empty(), "{} violations:\n{}", violations.len(), violations.join("\n"));
    Ok(())
}

fn print_checker(name: &str, line: &str, violations: &[String]) {
    if violations.is_empty() {
        println!("checker {name}: ok — {line}");
    } else {
        println!("checker {name}: {} VIOLATIONS — {line}", violations.len());
        for violation in violations {
            println!("  violation: {violation}");
        }
    }
}

/// The apps workload while a round's faults run: a scale or upgrade every second or so,
/// agents sampled for duplicates twice a second. Hands the state back when stopped.
async fn drive_apps(
    mut apps: apps::Apps,
    endpoints: apps::Endpoints,
    mut stopped: watch::Receiver<bool>,
) -> apps::Apps {
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return apps,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        tick += 1;
        apps.sample(&endpoints).await;
        if tick.is_multiple_of(2) {
            apps.mutate(&endpoints).await;
        }
    }
}

/// Waits, within [`CONVERGENCE_LIMIT`], until everything has healed: a coord leader that
/// takes writes (then the next round's registers are created), a master leading with every
/// agent active, a gateway leading, the apps as declared. Restarts any process that exited
/// on its own meanwhile, as a supervisor would. Returns when each part got there.
async fn converge(
    cluster: &mut NetnsCluster,
    apps: &mut apps::Apps,
    registers: &registers::Registers,
    next_round: usize,
    verbose: bool,
) -> Result<String, String> {
    let started = Instant::now();
    let deadline = started + CONVERGENCE_LIMIT;
    let mut reached: BTreeMap<&'static str, Duration> = BTreeMap::new();
    let mut last_reason: Option<String> = None;
    loop {
        for member in cluster.restart_exited().await {
            println!("  {member} had exited on its own: restarted (as its supervisor would)");
        }
        let (done, pending) = progress(cluster, apps, &reached).await;
        for part in done {
            reached.entry(part).or_insert_with(|| started.elapsed());
        }
        let Some(reason) = pending else { break };
        if verbose && last_reason.as_ref() != Some(&reason) {
            println!("  +{:.1} s: {reason}", started.elapsed().as_secs_f64());
        }
        last_reason = Some(reason.clone());
        if Instant::now() >= deadline {
            return Err(reason);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    registers.begin_round(next_round).await.map_err(|error| error.to_string())?;
    let parts: Vec<String> = reached.iter().map(|(part, at)| format!("{part} {:.1} s", at.as_secs_f64())).collect();
    Ok(parts.join(", "))
}

/// Which parts have converged, and what is still off (the first part that is, and why).
async fn progress(
    cluster: &NetnsCluster,
    apps: &mut apps::Apps,
    reached: &BTreeMap<&'static str, Duration>,
) -> (Vec<&'static str>, Option<String>) {
    let mut done = Vec::new();
    if !reached.contains_key("coord") && cluster.coord_leader(Duration::from_secs(1)).await.is_none() {
        return (done, Some("no coord leader all running nodes agree on".into()));
    }
    done.push("coord");
    let Some(master) = cluster.leading_master().await else {
        return (done, Some("no master leads".into()));
    };
    let state = cluster.masters[master].get_json("/master/state").await.unwrap_or_default();
    let active =
        state["agents"].as_array().map_or(0, |agents| agents.iter().filter(|a| a["status"] == "active").count());
    if active < cluster.shape().agents {
        return (done, Some(format!("the leading master has {active} of {} agents active", cluster.shape().agents)));
    }
    done.push("master");
    if cluster.leading_gateway().await.is_none() {
        return (done, Some("no gateway leads subscribed to the master".into()));
    }
    done.push("gateway");
    if let Some(reason) = apps.settle(cluster).await {
        return (done, Some(reason));
    }
    done.push("apps");
    (done, None)
}
