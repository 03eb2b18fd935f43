//! The fault schedule: drawn from the seed up front (kinds, targets by role, timings), then
//! played against the cluster, each fault started and healed at its time whether or not
//! the cluster has recovered from the one before.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use marina_tests::netns::Fault;
use marina_tests::netns_cluster::{Member, NetnsCluster};

/// What kind of fault, as the summary names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Partition,
    Kill,
    Pause,
    Loss,
    Delay,
    DiskFull,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Partition => "partition",
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Loss => "loss",
            Kind::Delay => "delay",
            Kind::DiskFull => "disk-full",
        }
    }
}

/// Whom a fault hits, resolved when it starts (who leads then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    CoordLeader,
    CoordFollower,
    MasterLeader,
    GatewayLeader,
    Agent,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::CoordLeader => "the coord leader",
            Target::CoordFollower => "a coord follower",
            Target::MasterLeader => "the leading master",
            Target::GatewayLeader => "the leading gateway",
            Target::Agent => "an agent",
        })
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// The target's host cut off from every other host.
    Isolate(Target),
    /// One coord node and some services on one side, the rest of the cluster on the other
    /// (`majority`: two coord nodes on the first side).
    Split { majority: bool },
    /// Coord nodes 1 and 2 cannot reach each other; node 3 sees both (a bridge), as do the
    /// services.
    Bridge,
    /// SIGKILL, restarted from disk when the fault ends.
    Kill(Target),
    /// SIGSTOP for longer than a session lasts, then SIGCONT.
    Pause(Target),
    /// A share of the target host's packets lost.
    Loss(Target, u8),
    /// The target host's packets held for a while.
    Delay(Target, Duration),
    /// A coord node's disk filled up (it exits, as a node that cannot write must), then
    /// emptied and the node restarted.
    DiskFull(Target),
}

impl Action {
    pub fn kind(&self) -> Kind {
        match self {
            Action::Isolate(_) | Action::Split { .. } | Action::Bridge => Kind::Partition,
            Action::Kill(_) => Kind::Kill,
            Action::Pause(_) => Kind::Pause,
            Action::Loss(..) => Kind::Loss,
            Action::Delay(..) => Kind::Delay,
            Action::DiskFull(_) => Kind::DiskFull,
        }
    }
}

/// A fault at its time in its round.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    /// Numbered from 1 across the run.
    pub number: usize,
    pub start: Duration,
    pub hold: Duration,
    pub action: Action,
}

/// A round: a few faults that overlap and follow one another, after which everything is
/// healed and the cluster must converge.
#[derive(Debug, Clone)]
pub struct Round {
    pub faults: Vec<Planned>,
}

/// Draws `faults` faults into rounds of one to three, from `seed`.
pub fn plan(seed: u64, faults: usize) -> Vec<Round> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rounds = Vec::new();
    let mut number = 0;
    while number < faults {
        let count = rng.usize(1..=3).min(faults - number);
        let mut at = Duration::ZERO;
        let mut planned = Vec::new();
        for _ in 0..count {
            number += 1;
            // The run opens with the fault the promise is about: the coord leader cut off.
            let action = if number == 1 { Action::Isolate(Target::CoordLeader) } else { draw(&mut rng) };
            let hold = match action {
                // Longer than a session's TTL (5 s): the paused process's session expires.
                Action::Pause(_) => millis(&mut rng, 6_000..9_000),
                Action::Kill(_) => millis(&mut rng, 500..4_000),
                _ => millis(&mut rng, 1_500..6_000),
            };
            planned.push(Planned { number, start: at, hold, action });
            // The next one starts while this one may still hold: faults overlap.
            at += millis(&mut rng, 300..3_000);
        }
        rounds.push(Round { faults: planned });
    }
    rounds
}

fn millis(rng: &mut fastrand::Rng, range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rng.u64(range))
}

fn draw(rng: &mut fastrand::Rng) -> Action {
    let process_target = |rng: &mut fastrand::Rng| match rng.u8(0..4) {
        0 => Target::CoordLeader,
        1 => Target::CoordFollower,
        2 => Target::MasterLeader,
        _ => Target::GatewayLeader,
    };
    let any_target = |rng: &mut fastrand::Rng| if rng.u8(0..5) == 0 { Target::Agent } else { process_target(rng) };
    // Partitions are what production met most: half the faults.
    match rng.u8(0..13) {
        0..=2 => Action::Isolate(any_target(rng)),
        3 => Action::Split { majority: false },
        4 => Action::Split { majority: true },
        5 => Action::Bridge,
        6 | 7 => Action::Kill(process_target(rng)),
        8 | 9 => Action::Pause(process_target(rng)),
        10 => Action::Loss(any_target(rng), rng.u8(20..60)),
        11 => Action::Delay(any_target(rng), Duration::from_millis(rng.u64(50..400))),
        _ => Action::DiskFull(if rng.bool() { Target::CoordLeader } else { Target::CoordFollower }),
    }
}

/// A fault in force, and how to end it.
enum Active {
    /// With the host it delays, if a delay.
    Network(Fault, Option<usize>),
    Killed(Member),
    Paused(Member),
    /// A coord node's disk, with the file that fills it.
    DiskFull(Member, std::path::PathBuf),
}

/// Plays rounds against a cluster, printing each fault as it starts and ends.
pub struct Player {
    started: Instant,
    rng: fastrand::Rng,
    /// Processes a kill or pause holds: not picked again until it ends.
    held: HashSet<Member>,
    /// Hosts with a delay in force (a second would replace the first).
    delayed: HashSet<usize>,
    /// The faults that ran, by kind (a fault with no free target is skipped).
    pub ran: BTreeMap<&'static str, usize>,
    pub skipped: usize,
}

impl Player {
    pub fn new(seed: u64) -> Self {
        // Targets among equals (which follower, which agent) come from the seed too.
        Player {
            started: Instant::now(),
            rng: fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15),
            held: HashSet::new(),
            delayed: HashSet::new(),
            ran: BTreeMap::new(),
            skipped: 0,
        }
    }

    fn at(&self) -> String {
        format!("t={:.1}s", self.started.elapsed().as_secs_f64())
    }

    /// Plays `round`; returns once every fault of it has ended (healed, restarted, thawed).
    pub async fn play(&mut self, cluster: &mut NetnsCluster, round: &Round) -> anyhow::Result<()> {
        // Events in time order: (when, tie-breaker) → (start?, index). A fault's end is
        // queued when it actually starts (finding a leader may take a moment), so each
        // holds for its whole time.
        let mut events: BTreeMap<(Duration, usize), (bool, usize)> = BTreeMap::new();
        for (index, fault) in round.faults.iter().enumerate() {
            events.insert((fault.start, index * 2), (true, index));
        }
        let round_start = tokio::time::Instant::now();
        let mut active: BTreeMap<usize, Active> = BTreeMap::new();
        while let Some(((when, _), (start, index))) = events.pop_first() {
            tokio::time::sleep_until(round_start + when).await;
            let fault = &round.faults[index];
            if start {
                match self.start(cluster, fault).await {
                    Ok(Some((description, handle))) => {
                        println!(
                            "fault {} [{}]: {} — {description}, {:.1} s",
                            fault.number,
                            self.at(),
                            fault.action.kind().name(),
                            fault.hold.as_secs_f64()
                        );
                        active.insert(index, handle);
                        events.insert((round_start.elapsed() + fault.hold, index * 2 + 1), (false, index));
                        *self.ran.entry(fault.action.kind().name()).or_default() += 1;
                    }
                    Ok(None) => {
                        self.skipped += 1;
                        println!(
                            "fault {} [{}]: {} — no free target, skipped",
                            fault.number,
                            self.at(),
                            fault.action.kind().name()
                        );
                    }
                    Err(error) => anyhow::bail!("fault {}: could not be started: {error:#}", fault.number),
                }
            } else if let Some(handle) = active.remove(&index) {
                self.end(cluster, handle).await?;
                println!("fault {} [{}]: ended", fault.number, self.at());
            }
        }
        Ok(())
    }

    async fn resolve(&mut self, cluster: &NetnsCluster, target: Target) -> Option<Member> {
        let shape = cluster.shape();
        let candidates: Vec<Member> = match target {
            Target::CoordLeader | Target::CoordFollower => {
                let leader = cluster.coord_leader(Duration::from_secs(2)).await;
                (0..shape.coord)
                    .filter(|index| match (target, leader) {
                        (Target::CoordLeader, Some(leader)) => *index == leader,
                        (Target::CoordFollower, Some(leader)) => *index != leader,
                        // No leader now: any node.
                        _ => true,
                    })
                    .map(Member::Coord)
                    .collect()
            }
            Target::MasterLeader => match cluster.leading_master().await {
                Some(index) => vec![Member::Master(index)],
                None => (0..shape.masters).map(Member::Master).collect(),
            },
            Target::GatewayLeader => match cluster.leading_gateway().await {
                Some(index) => vec![Member::Gateway(index)],
                None => (0..shape.gateways).map(Member::Gateway).collect(),
            },
            Target::Agent => (0..shape.agents).map(Member::Agent).collect(),
        };
        let free: Vec<Member> = candidates.into_iter().filter(|member| !self.held.contains(member)).collect();
        (!free.is_empty()).then(|| free[self.rng.usize(..free.len())])
    }

    async fn start(&mut self, cluster: &mut NetnsCluster, fault: &Planned) -> anyhow::Result<Option<(String, Active)>> {
        let network_fault =
            |description: String, fault: anyhow::Result<Fault>| -> anyhow::Result<Option<(String, Active)>> {
                Ok(Some((description, Active::Network(fault?, None))))
            };
        let shape = cluster.shape();
        match fault.action {
            Action::Isolate(target) => {
                let Some(member) = self.resolve(cluster, target).await else { return Ok(None) };
                let host = cluster.host_index(member);
                network_fault(format!("{target} ({member}) isolated"), cluster.network().isolate(host))
            }
            Action::Split { majority } => {
                // One side: a coord node (two for a majority), a master, a gateway, an agent,
                // chosen from the seed; the other: the rest.
                let first_coord = self.rng.usize(..shape.coord);
                let mut side: Vec<Member> = vec![Member::Coord(first_coord)];
                if majority {
                    side.push(Member::Coord((first_coord + 1) % shape.coord));
                }
                side.push(Member::Master(self.rng.usize(..shape.masters)));
                side.push(Member::Gateway(self.rng.usize(..shape.gateways)));
                side.push(Member::Agent(self.rng.usize(..shape.agents)));
                let hosts: Vec<usize> = side.iter().map(|member| cluster.host_index(*member)).collect();
                let names: Vec<String> = side.iter().map(ToString::to_string).collect();
                let which = if majority { "a coord majority" } else { "a coord minority" };
                network_fault(
                    format!("{which} with {} cut from the rest", names.join(", ")),
                    cluster.network().split(&hosts),
                )
            }
            Action::Bridge => {
                let first = self.rng.usize(..shape.coord);
                let (a, b) = (Member::Coord(first), Member::Coord((first + 1) % shape.coord));
                let bridge = Member::Coord((first + 2) % shape.coord);
                let (ha, hb) = (cluster.host_index(a), cluster.host_index(b));
                network_fault(
                    format!("{a} and {b} cut from each other, {bridge} a bridge seeing both"),
                    cluster.network().partition(&[ha], &[hb]),
                )
            }
            Action::Kill(target) => {
                let Some(member) = self.resolve(cluster, target).await else { return Ok(None) };
                cluster.kill(member).await;
                self.held.insert(member);
                Ok(Some((format!("{target} ({member}) SIGKILLed, restarted from disk after"), Active::Killed(member))))
            }
            Action::Pause(target) => {
                let Some(member) = self.resolve(cluster, target).await else { return Ok(None) };
                if !cluster.is_running(member) {
                    return Ok(None);
                }
                cluster.freeze(member, true);
                self.held.insert(member);
                Ok(Some((format!("{target} ({member}) SIGSTOPped past its session TTL"), Active::Paused(member))))
            }
            Action::DiskFull(target) => {
                let Some(member) = self.resolve(cluster, target).await else { return Ok(None) };
                let Member::Coord(index) = member else { return Ok(None) };
                let filler = cluster.fill_coord_disk(index);
                self.held.insert(member);
                Ok(Some((format!("{target}'s ({member}) disk filled up"), Active::DiskFull(member, filler))))
            }
            Action::Loss(target, percent) => {
                let Some(member) = self.resolve(cluster, target).await else { return Ok(None) };
                let host = cluster.host_index(member);
                network_fault(
                    format!("{percent}% of {target}'s ({member}) packets lost"),
                    cluster.network().loss(host, f64::from(percent)),
                )
            }
            Action::Delay(target, delay) => {
                let Some(member) = self.resolve(cluster, target).await else { return Ok(None) };
                let host = cluster.host_index(member);
                if !self.delayed.insert(host) {
                    return Ok(None);
                }
                let jitter = delay / 4;
                let description = format!(
                    "{target}'s ({member}) packets delayed {} ms ± {} ms",
                    delay.as_millis(),
                    jitter.as_millis()
                );
                match cluster.network().delay(host, delay, jitter) {
                    Ok(fault) => Ok(Some((description, Active::Network(fault, Some(host))))),
                    Err(error) => {
                        self.delayed.remove(&host);
                        Err(error)
                    }
                }
            }
        }
    }

    async fn end(&mut self, cluster: &mut NetnsCluster, active: Active) -> anyhow::Result<()> {
        match active {
            Active::Network(fault, delayed) => {
                if let Some(host) = delayed {
                    self.delayed.remove(&host);
                }
                fault.heal()?;
            }
            Active::Killed(member) => {
                self.held.remove(&member);
                cluster.restart(member);
            }
            Active::Paused(member) => {
                self.held.remove(&member);
                cluster.freeze(member, false);
            }
            Active::DiskFull(member, filler) => {
                self.held.remove(&member);
                std::fs::remove_file(&filler)?;
                // A node that could not write exited (its supervisor restarts it).
                for restarted in cluster.restart_exited().await {
                    println!("  {restarted} had exited on its own: restarted (as its supervisor would)");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_reproduces_its_schedule() {
        let render = |rounds: Vec<Round>| format!("{rounds:?}");
        assert_eq!(render(plan(7, 40)), render(plan(7, 40)));
        assert_ne!(render(plan(7, 40)), render(plan(8, 40)));
    }

    #[test]
    fn a_schedule_has_the_faults_asked_for_and_every_kind_in_a_long_run() {
        let rounds = plan(1, 200);
        let faults: Vec<&Planned> = rounds.iter().flat_map(|round| &round.faults).collect();
        assert_eq!(faults.len(), 200);
        assert!(rounds.iter().all(|round| (1..=3).contains(&round.faults.len())));
        let kinds: HashSet<Kind> = faults.iter().map(|fault| fault.action.kind()).collect();
        assert_eq!(kinds.len(), 6, "{kinds:?}");
        // Numbered in order, and overlapping within rounds.
        assert!(faults.iter().enumerate().all(|(index, fault)| fault.number == index + 1));
        assert!(
            rounds.iter().any(|round| round.faults.windows(2).any(|pair| pair[1].start < pair[0].start + pair[0].hold))
        );
    }
}
