//! Offer allocation: dominant resource fairness (DRF) across schedulers, in batches.
//!
//! Each round, every agent's free resources go (as one offer) to the subscribed framework
//! with the lowest dominant share — its largest fraction of the cluster's cpus, memory or
//! disk, counting what it runs and what it has been offered — among those not refusing that
//! agent. Giving an agent away raises the receiver's share before the next agent is placed,
//! so two equal frameworks split a cluster evenly.

use std::collections::HashSet;

use marina_proto::agent::v1::Resources;
use marina_proto::resources::{add, is_allocatable};

#[derive(Debug, Clone)]
pub struct FreeAgent {
    pub agent_id: String,
    pub free: Resources,
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub framework_id: String,
    /// Running tasks plus outstanding offers.
    pub allocated: Resources,
    /// Agents this framework refuses for now (decline filters).
    pub refused: HashSet<String>,
}

pub fn dominant_share(allocated: &Resources, total: &Resources) -> f64 {
    let share = |used: f64, all: f64| if all > 0.0 { used / all } else { 0.0 };
    share(allocated.cpus, total.cpus)
        .max(share(allocated.mem_mb, total.mem_mb))
        .max(share(allocated.disk_mb, total.disk_mb))
}

/// Which framework each agent's free resources are offered to: `(agent_id, framework_id)`.
pub fn allocate(agents: &[FreeAgent], candidates: &mut [Candidate], total: &Resources) -> Vec<(String, String)> {
    let mut offers = Vec::new();
    for agent in agents {
        if !is_allocatable(&agent.free) {
            continue;
        }
        let chosen =
            candidates.iter_mut().filter(|candidate| !candidate.refused.contains(&agent.agent_id)).min_by(|a, b| {
                dominant_share(&a.allocated, total)
                    .total_cmp(&dominant_share(&b.allocated, total))
                    .then_with(|| a.framework_id.cmp(&b.framework_id))
            });
        if let Some(candidate) = chosen {
            candidate.allocated = add(&candidate.allocated, &agent.free);
            offers.push((agent.agent_id.clone(), candidate.framework_id.clone()));
        }
    }
    offers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(cpus: f64, mem_mb: f64) -> Resources {
        Resources { cpus, mem_mb, disk_mb: 0.0, ports: vec![] }
    }

    fn candidate(id: &str, allocated: Resources) -> Candidate {
        Candidate { framework_id: id.into(), allocated, refused: HashSet::new() }
    }

    #[test]
    fn equal_frameworks_split_the_cluster() {
        let agents: Vec<FreeAgent> =
            (0..10).map(|i| FreeAgent { agent_id: format!("a{i}"), free: resources(4.0, 4096.0) }).collect();
        let total = resources(40.0, 40960.0);
        let mut candidates = vec![candidate("f1", resources(0.0, 0.0)), candidate("f2", resources(0.0, 0.0))];
        let offers = allocate(&agents, &mut candidates, &total);
        assert_eq!(offers.len(), 10);
        assert_eq!(offers.iter().filter(|(_, f)| f == "f1").count(), 5);
        assert_eq!(offers.iter().filter(|(_, f)| f == "f2").count(), 5);
    }

    #[test]
    fn the_lowest_dominant_share_goes_first_and_refusals_hold() {
        let total = resources(10.0, 10000.0);
        // f1 uses little cpu but much memory: its dominant share (memory, 0.5) is higher.
        let mut candidates = vec![candidate("f1", resources(1.0, 5000.0)), candidate("f2", resources(3.0, 1000.0))];
        candidates[1].refused.insert("a2".into());
        let agents = vec![
            FreeAgent { agent_id: "a1".into(), free: resources(1.0, 100.0) },
            FreeAgent { agent_id: "a2".into(), free: resources(1.0, 100.0) },
            FreeAgent { agent_id: "tiny".into(), free: resources(0.0, 1.0) },
        ];
        let offers = allocate(&agents, &mut candidates, &total);
        assert_eq!(offers, vec![("a1".to_owned(), "f2".to_owned()), ("a2".to_owned(), "f1".to_owned())]);
    }
}
