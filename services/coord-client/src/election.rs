//! Leader election and fencing, the one recipe masters and gateways share:
//!
//! 1. Under a session, create the ephemeral sequential node `<dir>/member_NNNNNNNNNN` holding
//!    the candidate's description.
//! 2. The lowest member leads. Every other member watches only the member just below it
//!    (no herd effect when the leader changes) and re-checks when that one is deleted.
//! 3. The leader's epoch is its member node's `create_revision`. Its writes are transactions
//!    that first compare that its member node still exists with that revision: once
//!    deposed, it cannot write ([`CoordClient::fenced`]). Receivers of its commands remember the
//!    highest epoch seen and refuse lower ones.
//! 4. Losing the session ends the candidacy at once (state [`ElectionState::Lost`]).
//! 5. [`Election::resign`] deletes the member node first: the next member takes over
//!    without waiting for any timeout.
//!
//! [`LeaderObserver`] is for everyone who needs to know who leads (standbys answering with
//! redirects, agents, schedulers, the CLI).

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{CoordClient, CreateOptions, Node, OpResult, Txn, TxnResult};
use crate::error::Error;
use crate::session::{Session, SessionState};
use crate::watch::EventKind;

const MEMBER_PREFIX: &str = "member_";

/// How often a standby reads the members again while it waits for its predecessor to go.
/// The watch tells it at once; this is a safety net, so that a deletion the watch never
/// delivered cannot leave the election without a leader: `marina-bench chaos` once saw a
/// standby wait 120 s on a predecessor long deleted, after its coord node died and the
/// quorum moved under overlapping partitions (the cause is not yet pinned down).
const STANDBY_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElectionState {
    /// Another member leads (or is about to).
    Standby,
    /// This member leads; `epoch` orders leaderships (higher is newer).
    Leading { epoch: u64 },
    /// Final: the session was lost or the member node removed. Stop acting as leader now;
    /// to run again, join with a new session.
    Lost,
}

/// What a leader writes under: see [`CoordClient::fenced`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leader's member node (relative to the client's root).
    pub member: String,
    pub epoch: u64,
}

/// The current leader as seen by an observer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub member: String,
    /// The candidate's own description of itself (address, id, version...).
    pub data: Bytes,
    pub epoch: u64,
}

/// A candidacy. Dropping it stops following the election but leaves the member node to the
/// session; [`Election::resign`] hands leadership over at once.
pub struct Election {
    client: CoordClient,
    fence: Fence,
    state: watch::Receiver<ElectionState>,
    task: JoinHandle<()>,
}

impl Election {
    /// Becomes a candidate in `dir` (e.g. `/master/members`), describing itself with `data`.
    pub async fn join(
        client: &CoordClient,
        session: &Session,
        dir: &str,
        data: impl Into<Bytes>,
    ) -> Result<Self, Error> {
        let options = CreateOptions { session: Some(session.id()), sequential: true };
        let data = data.into();
        let member = match client.create(&format!("{dir}/{MEMBER_PREFIX}"), data.clone(), options).await {
            Ok(member) => member,
            // The create may have happened: a member of this session is ours (creating a
            // second one would leave an orphan that could lead while nobody acts for it).
            Err(Error::Indeterminate(reason)) => match own_member(client, dir, session.id()).await? {
                Some(member) => member,
                None => {
                    tracing::info!(%reason, "joining again after an interrupted create");
                    client.create(&format!("{dir}/{MEMBER_PREFIX}"), data, options).await?
                }
            },
            Err(error) => return Err(error),
        };
        let fence = Fence { member: member.path.clone(), epoch: member.create_revision };
        tracing::info!(member = %fence.member, epoch = fence.epoch, "joined election");
        let (state_tx, state) = watch::channel(ElectionState::Standby);
        let task = tokio::spawn(campaign(client.clone(), session.state(), dir.to_owned(), fence.clone(), state_tx));
        Ok(Self { client: client.clone(), fence, state, task })
    }

    pub fn state(&self) -> watch::Receiver<ElectionState> {
        self.state.clone()
    }

    pub fn current(&self) -> ElectionState {
        *self.state.borrow()
    }

    /// The fence this candidate writes under once it leads.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Steps down now: deletes the member node so the next candidate leads immediately.
    pub async fn resign(self) -> Result<(), Error> {
        self.task.abort();
        match self.client.delete(&self.fence.member, None).await {
            Ok(_) | Err(Error::NoNode(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CoordClient {
    /// A transaction that only applies while `fence` holds (the leader's member node still
    /// exists with its epoch); [`Error::Deposed`] otherwise. When the fence holds but one of
    /// `txn`'s own compares fails, the result is returned with `succeeded == false` and the
    /// results of `txn`'s failure branch, so a lost compare-and-swap is never mistaken for a
    /// lost leadership.
    pub async fn fenced(&self, fence: &Fence, txn: Txn) -> Result<TxnResult, Error> {
        let guarded = Txn::new().when_create_revision(&fence.member, fence.epoch).otherwise_get(&fence.member).and(txn);
        let mut result = self.txn(guarded).await?;
        if result.succeeded {
            // Every leader action that changes state, with the leadership it was made under
            // and the revision coord committed it at: what a fault run checks against the
            // election's history (a write must commit while its member node still exists).
            tracing::debug!(
                target: "marina_fence",
                member = %fence.member,
                epoch = fence.epoch,
                revision = result.revision,
                "fenced write committed"
            );
            return Ok(result);
        }
        // The failure branch starts with the read of the member node.
        let fence_held = matches!(
            result.results.first(),
            Some(OpResult::Got(Some(member))) if member.create_revision == fence.epoch
        );
        if !fence_held {
            return Err(Error::Deposed { member: fence.member.clone(), epoch: fence.epoch });
        }
        result.results.remove(0);
        Ok(result)
    }

    /// Every member of the election in `dir`, in line: the first leads, the next takes over
    /// when it goes. (A view for operators; to act on leadership, use an [`Election`].)
    pub async fn election_members(&self, dir: &str) -> Result<Vec<Leader>, Error> {
        let mut members = Vec::new();
        for name in sorted_members(self.list(dir).await?.children) {
            // A member gone between the listing and the read has simply left.
            if let Some(node) = self.get(&format!("{dir}/{name}")).await? {
                members.push(leader_of(node));
            }
        }
        Ok(members)
    }

    /// Follows who leads `dir`.
    pub async fn observe_leader(&self, dir: &str) -> Result<LeaderObserver, Error> {
        let (leader_tx, leader) = watch::channel(None);
        let initial = current_leader(self, dir).await?;
        leader_tx.send_replace(initial.0);
        let task = tokio::spawn(observe(self.clone(), dir.to_owned(), initial.1, leader_tx));
        Ok(LeaderObserver { leader, task })
    }
}

/// The member node `session` owns in `dir`, if any.
async fn own_member(client: &CoordClient, dir: &str, session: u64) -> Result<Option<Node>, Error> {
    for name in client.list(dir).await?.children {
        if let Some(node) = client.get(&format!("{dir}/{name}")).await?
            && node.ephemeral_owner == session
        {
            return Ok(Some(node));
        }
    }
    Ok(None)
}

/// Members sorted by sequence number (their zero-padded names sort the same way).
fn sorted_members(children: Vec<String>) -> Vec<String> {
    let mut members: Vec<String> = children.into_iter().filter(|name| name.starts_with(MEMBER_PREFIX)).collect();
    members.sort();
    members
}

async fn campaign(
    client: CoordClient,
    mut session: watch::Receiver<SessionState>,
    dir: String,
    fence: Fence,
    state: watch::Sender<ElectionState>,
) {
    let my_name = fence.member.rsplit('/').next().unwrap_or_default().to_owned();
    loop {
        if *session.borrow() == SessionState::Lost {
            break;
        }
        let listing = match client.list(&dir).await {
            Ok(listing) => listing,
            Err(error) => {
                tracing::warn!(%error, "election: cannot list members; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let members = sorted_members(listing.children);
        let Some(position) = members.iter().position(|name| *name == my_name) else {
            tracing::warn!(member = %fence.member, "election: my member node is gone");
            break;
        };
        // Watch the member that decides my next step: my predecessor, or myself as leader.
        let watched = if position == 0 {
            state.send_replace(ElectionState::Leading { epoch: fence.epoch });
            tracing::info!(member = %fence.member, epoch = fence.epoch, "leading");
            fence.member.clone()
        } else {
            // Unchanged on a recheck: nothing to tell the candidacy.
            state.send_if_modified(|current| {
                std::mem::replace(current, ElectionState::Standby) != ElectionState::Standby
            });
            format!("{dir}/{}", members[position - 1])
        };
        let mut watch = match client.watch(&watched, false, listing.revision.saturating_add(1)).await {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(%error, "election: cannot watch {watched}; retrying");
                continue;
            }
        };
        // A leader watches its own node: only the watch (and the session) can end it.
        let recheck = async {
            if position == 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(STANDBY_RECHECK).await;
        };
        let mut recheck = std::pin::pin!(recheck);
        let deleted = loop {
            tokio::select! {
                changed = session.wait_for(|state| *state == SessionState::Lost) => {
                    let _ = changed;
                    break false;
                }
                // Read the members again (the outer loop does): still waiting, or next.
                () = &mut recheck => break true,
                event = watch.next() => match event {
                    Some(Ok(change)) if change.events.iter().any(|event| event.kind == EventKind::Delete) => break true,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break true,
                }
            }
        };
        if !deleted {
            break;
        }
        if position == 0 {
            tracing::warn!(member = %fence.member, "election: my member node was deleted");
            break;
        }
    }
    state.send_replace(ElectionState::Lost);
}

/// Follows the lowest member of an election directory.
pub struct LeaderObserver {
    leader: watch::Receiver<Option<Leader>>,
    task: JoinHandle<()>,
}

impl LeaderObserver {
    pub fn current(&self) -> Option<Leader> {
        self.leader.borrow().clone()
    }

    pub fn receiver(&self) -> watch::Receiver<Option<Leader>> {
        self.leader.clone()
    }

    /// Waits until some member leads and returns it.
    pub async fn wait_for_leader(&self) -> Leader {
        let mut leader = self.leader.clone();
        let found = leader.wait_for(Option::is_some).await.expect("observer task owns the sender");
        found.clone().expect("waited for Some")
    }
}

impl Drop for LeaderObserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The lowest member and the revision the membership was read at.
async fn current_leader(client: &CoordClient, dir: &str) -> Result<(Option<Leader>, u64), Error> {
    loop {
        let listing = client.list(dir).await?;
        let Some(first) = sorted_members(listing.children).into_iter().next() else {
            return Ok((None, listing.revision));
        };
        let path = format!("{dir}/{first}");
        // Deleted between the list and the get: read the membership again.
        if let (Some(node), revision) = client.get_at(&path, false).await? {
            return Ok((Some(leader_of(node)), listing.revision.max(revision)));
        }
    }
}

fn leader_of(node: Node) -> Leader {
    Leader { member: node.path, data: node.data, epoch: node.create_revision }
}

async fn observe(client: CoordClient, dir: String, mut revision: u64, leader: watch::Sender<Option<Leader>>) {
    loop {
        let mut watch = match client.watch(&dir, true, revision.saturating_add(1)).await {
            Ok(watch) => watch,
            Err(error) => {
                tracing::debug!(%error, "leader observer: watch failed; re-reading");
                tokio::time::sleep(Duration::from_millis(100)).await;
                match current_leader(&client, &dir).await {
                    Ok((current, at)) => {
                        leader.send_replace(current);
                        revision = at;
                    }
                    Err(error) => tracing::debug!(%error, "leader observer: read failed"),
                }
                continue;
            }
        };
        while let Some(Ok(change)) = watch.next().await {
            // Membership changes are rare: re-read the lowest member on each.
            match current_leader(&client, &dir).await {
                Ok((current, at)) => {
                    revision = at.max(change.revision);
                    leader.send_if_modified(|seen| {
                        let modified = *seen != current;
                        *seen = current;
                        modified
                    });
                }
                Err(error) => {
                    tracing::debug!(%error, "leader observer: read failed");
                    revision = change.revision;
                }
            }
        }
        if leader.is_closed() {
            return;
        }
    }
}
