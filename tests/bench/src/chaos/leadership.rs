//! Leadership under faults, from what the processes logged (JSON lines): every time a
//! master or gateway began to lead (`leading`, with its election member and epoch), and
//! every time an agent attached to a leading master (with that master's epoch).
//!
//! - An epoch belongs to one leadership: two members never lead under the same epoch.
//! - Leaderships follow one another in epoch order: a member that begins to lead after
//!   another did has a higher epoch (a deposed leader whose term came back would show as
//!   an epoch going backwards).
//! - Agents never go back to an older master's epoch: an agent that obeyed epoch N never
//!   attaches to a master of epoch < N (what fencing at the agent guarantees).

use std::collections::BTreeMap;

use marina_tests::netns_cluster::{Member, NetnsCluster};
use serde_json::Value;

/// One logged event: when (RFC 3339, UTC, one clock: every process runs on this machine),
/// who logged it, the member and epoch it names.
struct Event {
    at: String,
    process: Member,
    member: String,
    epoch: u64,
}

fn events(cluster: &NetnsCluster, members: &[Member], message: &str) -> Vec<Event> {
    let mut events = Vec::new();
    for member in members {
        for line in cluster.log(*member).lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else { continue };
            if entry["message"] != message {
                continue;
            }
            let (Some(at), Some(epoch)) = (entry["timestamp"].as_str(), entry["epoch"].as_u64()) else { continue };
            // The election's own line names the member (the candidacy's echo of it does not).
            let Some(name) = entry["member"].as_str().or_else(|| entry["master"].as_str()) else { continue };
            events.push(Event { at: at.to_owned(), process: *member, member: name.to_owned(), epoch });
        }
    }
    events.sort_by(|a, b| a.at.cmp(&b.at));
    events
}

/// Checks one kind's leaderships; returns (leaderships seen, violations).
fn check_leaders(kind: &str, events: &[Event]) -> (usize, Vec<String>) {
    let mut violations = Vec::new();
    let mut owner: BTreeMap<u64, &Event> = BTreeMap::new();
    let mut highest: Option<&Event> = None;
    for event in events {
        match owner.get(&event.epoch) {
            Some(first) if first.member != event.member => violations.push(format!(
                "{kind}: epoch {} led by two members: {} ({}, at {}) and {} ({}, at {})",
                event.epoch, first.member, first.process, first.at, event.member, event.process, event.at
            )),
            // The same leadership logging again (its election loop went round).
            Some(_) => continue,
            None => {
                owner.insert(event.epoch, event);
            }
        }
        if let Some(previous) = highest
            && event.epoch < previous.epoch
        {
            violations.push(format!(
                "{kind}: {} began to lead under epoch {} at {}, after {} led under the higher epoch {} at {}",
                event.process, event.epoch, event.at, previous.process, previous.epoch, previous.at
            ));
        }
        if highest.is_none_or(|previous| event.epoch > previous.epoch) {
            highest = Some(event);
        }
    }
    (owner.len(), violations)
}

/// The checker's report line and its violations.
pub fn check(cluster: &NetnsCluster) -> (String, Vec<String>) {
    let shape = cluster.shape();
    let masters: Vec<Member> = (0..shape.masters).map(Member::Master).collect();
    let gateways: Vec<Member> = (0..shape.gateways).map(Member::Gateway).collect();
    let (master_terms, mut violations) = check_leaders("masters", &events(cluster, &masters, "leading"));
    let (gateway_terms, gateway_violations) = check_leaders("gateways", &events(cluster, &gateways, "leading"));
    violations.extend(gateway_violations);
    let mut attachments = 0;
    for agent in (0..shape.agents).map(Member::Agent) {
        let attached = events(cluster, &[agent], "attached to the leading master");
        attachments += attached.len();
        for pair in attached.windows(2) {
            if pair[1].epoch < pair[0].epoch {
                violations.push(format!(
                    "{agent} attached to a master of epoch {} at {} after one of epoch {} at {}",
                    pair[1].epoch, pair[1].at, pair[0].epoch, pair[0].at
                ));
            }
        }
    }
    // Fencing at work (not violations: refusals are what keeps a deposed leader harmless):
    // coord refusing a deposed leader's fenced write, an agent refusing its command.
    let count = |members: &[Member], prefix: &str| -> usize {
        members
            .iter()
            .flat_map(|member| cluster.log(*member).lines().map(str::to_owned).collect::<Vec<_>>())
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .filter(|entry| entry["message"].as_str().is_some_and(|message| message.starts_with(prefix)))
            .count()
    };
    let leaders: Vec<Member> = masters.iter().chain(&gateways).copied().collect();
    let agents: Vec<Member> = (0..shape.agents).map(Member::Agent).collect();
    let fenced = count(&leaders, "a fenced write found the leadership gone");
    let refused = count(&agents, "refused a command from a deposed master");
    let line = format!(
        "{master_terms} master and {gateway_terms} gateway leaderships, each epoch led by one member, in epoch order; {attachments} agent attachments, never to an older epoch; fencing refused {fenced} writes of deposed leaders in coord and {refused} commands at agents"
    );
    (line, violations)
}
