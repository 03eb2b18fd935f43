//! Placing instances on offers: resources, host ports and constraints, and — for
//! `/v2/queue` — why offers were not used.

use std::collections::BTreeMap;

use marina_proto::agent::v1::Range;
use marina_proto::resources::{EPSILON, contains_port, subtract_ports};

/// An offer's remaining resources, as placement consumes them.
#[derive(Debug, Clone)]
pub struct OfferView {
    pub offer_id: String,
    pub agent_id: String,
    pub hostname: String,
    pub attributes: Vec<(String, String)>,
    pub cpus: f64,
    pub mem: f64,
    pub disk: f64,
    pub ports: Vec<Range>,
}

/// Where an instance of an app already runs (or was just placed), for constraints.
#[derive(Debug, Clone)]
pub struct Placement {
    pub hostname: String,
    pub attributes: Vec<(String, String)>,
}

/// Whether an instance may go on an offer, given where the app's instances are.
pub type ConstraintCheck<'a> = Box<dyn Fn(&OfferView, &[Placement]) -> bool + 'a>;

/// Instances of one app waiting for resources.
pub struct Demand<'a> {
    pub app_id: String,
    pub count: u32,
    pub cpus: f64,
    pub mem: f64,
    pub disk: f64,
    /// How many host ports each instance needs...
    pub port_count: usize,
    /// ...and which of them must be exactly these numbers (0: any).
    pub fixed_ports: Vec<u32>,
    /// The runtimes that can run an instance (`docker`, `process`...): an agent advertising
    /// none of them (its `runtime` attribute, `docker,process`) is not offered the task.
    pub runtimes: &'static [&'static str],
    /// Whether an instance may go on this offer, given where the app's instances are.
    pub constraints: ConstraintCheck<'a>,
    /// Where the app's instances run now.
    pub placed: Vec<Placement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    InsufficientCpus,
    InsufficientMemory,
    InsufficientDisk,
    InsufficientPorts,
    UnfulfilledConstraint,
    /// None of the agent's runtimes can run the task (an image on an agent that only runs
    /// host processes, a command on one that only runs Docker). Marina's own reason.
    NoCapableRuntime,
}

impl Reject {
    /// Marathon's names in `processedOffersSummary`.
    pub fn marathon_name(self) -> &'static str {
        match self {
            Reject::InsufficientCpus => "InsufficientCpus",
            Reject::InsufficientMemory => "InsufficientMemory",
            Reject::InsufficientDisk => "InsufficientDisk",
            Reject::InsufficientPorts => "InsufficientPorts",
            Reject::UnfulfilledConstraint => "UnfulfilledConstraint",
            Reject::NoCapableRuntime => "NoCapableRuntime",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub app_id: String,
    pub offer_id: String,
    pub agent_id: String,
    pub hostname: String,
    pub host_ports: Vec<u32>,
}

/// What happened to an app's demand this round.
#[derive(Debug, Default, Clone)]
pub struct RoundStats {
    pub processed: u64,
    pub used: u64,
    pub rejected: BTreeMap<Reject, u64>,
}

fn take_ports(ranges: &[Range], count: usize, fixed: &[u32]) -> Option<Vec<u32>> {
    let mut chosen: Vec<u32> = Vec::with_capacity(count);
    for index in 0..count {
        let wanted = fixed.get(index).copied().unwrap_or(0);
        if wanted != 0 {
            if !contains_port(ranges, u64::from(wanted)) || chosen.contains(&wanted) {
                return None;
            }
            chosen.push(wanted);
        }
    }
    let dynamic = count - chosen.len();
    let mut found = 0;
    'ranges: for range in ranges {
        for port in range.begin..=range.end {
            if found == dynamic {
                break 'ranges;
            }
            let port = port as u32;
            if !chosen.contains(&port) && !fixed.contains(&port) {
                chosen.push(port);
                found += 1;
            }
        }
    }
    (found == dynamic).then_some(chosen)
}

/// Fits one instance of `demand` on `offer`, consuming its resources; why not otherwise.
fn fit(demand: &Demand<'_>, offer: &mut OfferView) -> Result<Vec<u32>, Reject> {
    // An agent that says nothing of its runtimes is taken at its word.
    let runtime = offer.attributes.iter().find(|(name, _)| name == "runtime");
    if !runtime.is_none_or(|(_, value)| value.split(',').any(|runtime| demand.runtimes.contains(&runtime.trim()))) {
        return Err(Reject::NoCapableRuntime);
    }
    if offer.cpus + EPSILON < demand.cpus {
        return Err(Reject::InsufficientCpus);
    }
    if offer.mem + EPSILON < demand.mem {
        return Err(Reject::InsufficientMemory);
    }
    if offer.disk + EPSILON < demand.disk {
        return Err(Reject::InsufficientDisk);
    }
    let ports = take_ports(&offer.ports, demand.port_count, &demand.fixed_ports).ok_or(Reject::InsufficientPorts)?;
    if !(demand.constraints)(offer, &demand.placed) {
        return Err(Reject::UnfulfilledConstraint);
    }
    offer.cpus -= demand.cpus;
    offer.mem -= demand.mem;
    offer.disk -= demand.disk;
    offer.ports = subtract_ports(&offer.ports, ports.iter().map(|&port| u64::from(port)));
    Ok(ports)
}

/// Places as many waiting instances as the offers hold, spreading across apps (one
/// instance per app per pass). Returns the placements and per-app statistics.
pub fn place(demands: &mut [Demand<'_>], offers: &mut [OfferView]) -> (Vec<Placed>, BTreeMap<String, RoundStats>) {
    let mut placed = Vec::new();
    // Per demand (by index): thousands of apps meet hundreds of offers per round, so nothing
    // here may cost more than a step per app per offer.
    let mut stats: Vec<RoundStats> = vec![RoundStats::default(); demands.len()];
    let mut used_for = vec![false; demands.len()];
    let mut rejected_by: Vec<Option<Reject>> = vec![None; demands.len()];
    for offer in offers.iter_mut() {
        used_for.fill(false);
        rejected_by.fill(None);
        loop {
            let mut progress = false;
            for (index, demand) in demands.iter_mut().enumerate().filter(|(_, d)| d.count > 0) {
                match fit(demand, offer) {
                    Ok(host_ports) => {
                        demand.count -= 1;
                        demand
                            .placed
                            .push(Placement { hostname: offer.hostname.clone(), attributes: offer.attributes.clone() });
                        placed.push(Placed {
                            app_id: demand.app_id.clone(),
                            offer_id: offer.offer_id.clone(),
                            agent_id: offer.agent_id.clone(),
                            hostname: offer.hostname.clone(),
                            host_ports,
                        });
                        used_for[index] = true;
                        progress = true;
                    }
                    Err(reason) => {
                        rejected_by[index].get_or_insert(reason);
                    }
                }
            }
            if !progress {
                break;
            }
        }
        for (index, entry) in stats.iter_mut().enumerate() {
            entry.processed += 1;
            if used_for[index] {
                entry.used += 1;
            } else if let Some(reason) = rejected_by[index] {
                *entry.rejected.entry(reason).or_default() += 1;
            }
        }
    }
    let mut by_app: BTreeMap<String, RoundStats> = BTreeMap::new();
    for (demand, round) in demands.iter().zip(stats) {
        let entry = by_app.entry(demand.app_id.clone()).or_default();
        entry.processed += round.processed;
        entry.used += round.used;
        for (reason, count) in round.rejected {
            *entry.rejected.entry(reason).or_default() += count;
        }
    }
    (placed, by_app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &str, host: &str, cpus: f64) -> OfferView {
        OfferView {
            offer_id: id.into(),
            agent_id: format!("agent-{id}"),
            hostname: host.into(),
            attributes: vec![],
            cpus,
            mem: 1024.0,
            disk: 0.0,
            ports: vec![Range { begin: 31000, end: 31009 }],
        }
    }

    fn demand(app: &str, count: u32, cpus: f64) -> Demand<'static> {
        Demand {
            app_id: app.into(),
            count,
            cpus,
            mem: 64.0,
            disk: 0.0,
            port_count: 1,
            fixed_ports: vec![],
            runtimes: &["process"],
            constraints: Box::new(|_, _| true),
            placed: vec![],
        }
    }

    #[test]
    fn instances_fill_offers_and_spread_across_apps() {
        let mut offers = vec![offer("o1", "h1", 1.0), offer("o2", "h2", 1.0)];
        let mut demands = vec![demand("/a", 3, 0.25), demand("/b", 3, 0.25)];
        let (placed, stats) = place(&mut demands, &mut offers);
        assert_eq!(placed.len(), 6);
        assert_eq!(placed.iter().filter(|p| p.offer_id == "o1").count(), 4);
        let ports: Vec<u32> = placed.iter().filter(|p| p.offer_id == "o1").map(|p| p.host_ports[0]).collect();
        assert_eq!(ports, vec![31000, 31001, 31002, 31003]);
        assert_eq!(stats["/a"].used, 2);
    }

    #[test]
    fn rejections_say_why() {
        let mut offers = vec![offer("o1", "h1", 0.1)];
        let mut fixed = demand("/fixed", 1, 0.05);
        fixed.fixed_ports = vec![8080];
        let mut demands = vec![demand("/big", 1, 2.0), fixed];
        let (placed, stats) = place(&mut demands, &mut offers);
        assert!(placed.is_empty());
        assert_eq!(stats["/big"].rejected[&Reject::InsufficientCpus], 1);
        assert_eq!(stats["/fixed"].rejected[&Reject::InsufficientPorts], 1);
    }

    #[test]
    fn a_task_goes_only_where_a_runtime_can_run_it() {
        let docker_only = OfferView { attributes: vec![("runtime".into(), "docker".into())], ..offer("o1", "h1", 4.0) };
        let both =
            OfferView { attributes: vec![("runtime".into(), "docker,process".into())], ..offer("o2", "h2", 4.0) };
        let mut offers = vec![docker_only.clone()];
        let mut demands = vec![demand("/command", 1, 0.1)];
        let (placed, stats) = place(&mut demands, &mut offers);
        assert!(placed.is_empty(), "a command on an agent that only runs Docker");
        assert_eq!(stats["/command"].rejected[&Reject::NoCapableRuntime], 1);
        assert_eq!(Reject::NoCapableRuntime.marathon_name(), "NoCapableRuntime");
        let mut offers = vec![docker_only, both];
        let mut demands = vec![demand("/command", 1, 0.1)];
        let (placed, _) = place(&mut demands, &mut offers);
        assert_eq!(placed.iter().map(|p| p.offer_id.as_str()).collect::<Vec<_>>(), ["o2"]);
    }

    #[test]
    fn constraints_see_earlier_placements() {
        let mut offers = vec![offer("o1", "h1", 4.0), offer("o2", "h2", 4.0)];
        let unique_host = |offer: &OfferView, placed: &[Placement]| placed.iter().all(|p| p.hostname != offer.hostname);
        let mut demands = vec![Demand { constraints: Box::new(unique_host), ..demand("/u", 3, 0.1) }];
        let (placed, stats) = place(&mut demands, &mut offers);
        assert_eq!(placed.len(), 2, "one per host");
        assert_eq!(stats["/u"].used, 2);
        assert_eq!(demands[0].count, 1);
    }
}
