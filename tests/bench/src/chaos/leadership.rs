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
//! - Coord never accepts a fenced write from a deposed leader: every fenced write a master
//!   or gateway committed (each logs its member, epoch and coord's commit revision) came
//!   while its member node existed — created at its epoch, deleted (session expired,
//!   resigned) only at a later revision, as [`ElectionHistory`] saw coord's own history.
//!   Revisions, not log times, order them: a paused leader logs late, but coord numbered
//!   its write when it committed it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marina_coord_client::{ClientOptions, EventKind};
use marina_tests::netns_cluster::{MARINA_ROOT, Member, NetnsCluster};
use serde_json::Value;

/// The election directories, relative to the services' root.
const ELECTIONS: [&str; 2] = ["/master/members", "/gateway/members"];

/// When each election member node was deleted (its leadership's end), from coord's own
/// history: watches from revision 1, followed across coord's failovers by the client.
pub struct ElectionHistory {
    deleted: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Set if a watch ended or fell behind compaction: the history is then incomplete.
    broken: Arc<Mutex<Option<String>>>,
    _watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl ElectionHistory {
    pub async fn follow(cluster: &NetnsCluster) -> anyhow::Result<Self> {
        let client =
            cluster.coord_client(MARINA_ROOT, ClientOptions { retry_for: Duration::MAX, ..ClientOptions::default() });
        let deleted: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
        let broken: Arc<Mutex<Option<String>>> = Arc::default();
        let mut watchers = Vec::new();
        for dir in ELECTIONS {
            let mut watch = client.watch(dir, true, 1).await?;
            let (deleted, broken) = (deleted.clone(), broken.clone());
            watchers.push(tokio::spawn(async move {
                loop {
                    match watch.next().await {
                        Some(Ok(change)) => {
                            let mut deleted = deleted.lock().expect("history lock");
                            for event in change.events.iter().filter(|e| e.kind == EventKind::Delete) {
                                deleted.entry(event.node.path.clone()).or_insert(change.revision);
                            }
                        }
                        Some(Err(error)) => {
                            *broken.lock().expect("history lock") = Some(format!("watching {dir}: {error}"));
                            return;
                        }
                        None => return,
                    }
                }
            }));
        }
        Ok(ElectionHistory { deleted, broken, _watchers: watchers })
    }
}

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

/// A fenced write a leader logged: who, under which member node and epoch, and the
/// revision coord committed it at.
struct FencedWrite {
    leader: Member,
    member: String,
    epoch: u64,
    revision: u64,
}

fn fenced_writes(cluster: &NetnsCluster, leaders: &[Member]) -> Vec<FencedWrite> {
    let mut writes = Vec::new();
    for leader in leaders {
        for line in cluster.log(*leader).lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else { continue };
            if entry["message"] != "fenced write committed" {
                continue;
            }
            if let (Some(member), Some(epoch), Some(revision)) =
                (entry["member"].as_str(), entry["epoch"].as_u64(), entry["revision"].as_u64())
            {
                writes.push(FencedWrite { leader: *leader, member: member.to_owned(), epoch, revision });
            }
        }
    }
    writes
}

/// The writes of `writes` that coord committed outside their member node's life: before
/// its creation (its epoch) or at or after its deletion (`deleted`, by path).
fn stale_writes(writes: &[FencedWrite], deleted: &BTreeMap<String, u64>) -> Vec<String> {
    let mut violations = Vec::new();
    for FencedWrite { leader, member, epoch, revision } in writes {
        if revision < epoch {
            violations.push(format!(
                "{leader}: a fenced write of {member} (epoch {epoch}) committed at revision {revision}, before its member node existed"
            ));
        }
        if let Some(gone) = deleted.get(member)
            && gone <= revision
        {
            violations.push(format!(
                "{leader}: coord accepted a fenced write of {member} (epoch {epoch}) at revision {revision}, after the member node was deleted at revision {gone}: a deposed leader's write"
            ));
        }
    }
    violations
}

/// The checker's report line and its violations.
pub fn check(cluster: &NetnsCluster, history: &ElectionHistory) -> (String, Vec<String>) {
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
    let writes = fenced_writes(cluster, &leaders);
    let ended = history.deleted.lock().expect("history lock").clone();
    violations.extend(stale_writes(&writes, &ended));
    let (writes, ended) = (writes.len(), ended.len());
    if let Some(broken) = history.broken.lock().expect("history lock").clone() {
        violations
            .push(format!("the election history is incomplete, so fenced writes could not all be checked: {broken}"));
    }
    let line = format!(
        "{master_terms} master and {gateway_terms} gateway leaderships, each epoch led by one member, in epoch order; {writes} fenced writes, each committed while its leader's member node existed ({ended} member nodes seen deleted); {attachments} agent attachments, never to an older epoch; fencing refused {fenced} writes of deposed leaders in coord and {refused} commands at agents"
    );
    (line, violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_committed_after_its_member_node_went_is_a_deposed_leaders() {
        let write = |member: &str, epoch, revision| FencedWrite {
            leader: Member::Gateway(0),
            member: member.to_owned(),
            epoch,
            revision,
        };
        let deleted = BTreeMap::from([("/gateway/members/member_1".to_owned(), 50)]);
        let fine = [write("/gateway/members/member_1", 10, 49), write("/gateway/members/member_2", 51, 80)];
        assert!(stale_writes(&fine, &deleted).is_empty());
        let stale = [write("/gateway/members/member_1", 10, 50), write("/gateway/members/member_2", 51, 40)];
        let violations = stale_writes(&stale, &deleted);
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(violations[0].contains("deleted at revision 50"), "{}", violations[0]);
        assert!(violations[1].contains("before its member node existed"), "{}", violations[1]);
    }
}
