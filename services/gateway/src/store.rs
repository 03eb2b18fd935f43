//! What the gateway keeps in coord (under `/gateway`, see [`marina_proto::layout`]), every
//! write fenced by its leadership epoch: the framework id, apps, their versions, groups and
//! the changes of the group tree, deployments in progress and instance records.
//!
//! An instance is recorded before its launch is sent, so a gateway that takes over knows
//! every task its predecessor may have started: nothing is launched twice or forgotten.
//! Task *state* is not stored; it comes from the master (reconciliation) and the agents.

use marina_coord_client::{CoordClient, Error, Fence, Txn};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use marina_proto::layout::{
    GATEWAY_APPS as APPS, GATEWAY_DEPLOYMENTS as DEPLOYMENTS, GATEWAY_FAILURES as FAILURES,
    GATEWAY_FRAMEWORK as FRAMEWORK, GATEWAY_GROUP_VERSIONS as GROUP_VERSIONS, GATEWAY_GROUPS as GROUPS,
    GATEWAY_INSTANCES as INSTANCES, GATEWAY_VERSIONS as VERSIONS,
};

/// The longest path the gateway writes, below the coord root: a version of an app with the
/// longest id (its node name, a `/`, a version timestamp) or an instance record named by
/// the longest task id, whichever is longer.
pub const LONGEST_PATH_BELOW_ROOT: usize = {
    let version = VERSIONS.len() + 1 + crate::app::MAX_APP_ID_BYTES + 1 + "2026-12-06T11:56:26.123Z".len();
    let instance = INSTANCES.len() + 1 + marina_proto::checks::MAX_ID_BYTES;
    if version > instance { version } else { instance }
};

/// How many versions of an app are kept (Marathon's `zk_max_versions`); as many changes of
/// the group tree are kept (Marathon keeps as many versions of its root group).
pub const MAX_VERSIONS: usize = 50;

/// The node of group `id` under [`GROUPS`].
pub fn group_node(group_id: &str) -> String {
    match node_name(group_id) {
        root if root.is_empty() => "_".to_owned(),
        node => node,
    }
}

/// Most operations per coord transaction.
const TXN_OPS: usize = 200;

/// `/prod/web` → `prod_web`: Marathon ids never contain `_`, so this is reversible.
pub fn node_name(app_id: &str) -> String {
    app_id.trim_start_matches('/').replace('/', "_")
}

/// A batch of writes applied together (in as few transactions as the size limit allows).
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
}

enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

impl Batch {
    pub fn put(&mut self, path: String, value: &impl Serialize) {
        self.ops.push(Op::Put(path, serde_json::to_vec(value).expect("records serialize")));
    }

    pub fn delete(&mut self, path: String) {
        self.ops.push(Op::Delete(path));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The batch as lines `put <path>` and `delete <path>`, in order (for tests and logs).
    pub fn describe(&self) -> Vec<String> {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put(path, _) => format!("put {path}"),
                Op::Delete(path) => format!("delete {path}"),
            })
            .collect()
    }

    /// True if no path is written twice and none lies under another (a recursive delete):
    /// then the order in which the batch's parts apply does not matter.
    fn paths_disjoint(&self) -> bool {
        let mut paths = std::collections::HashSet::with_capacity(self.ops.len());
        for op in &self.ops {
            let (Op::Put(path, _) | Op::Delete(path)) = op;
            if !paths.insert(path.as_str()) {
                return false;
            }
        }
        paths.iter().all(|path| {
            let mut ancestor = *path;
            while let Some((parent, _)) = ancestor.rsplit_once('/') {
                if paths.contains(parent) {
                    return false;
                }
                ancestor = parent;
            }
            true
        })
    }
}

#[derive(Clone)]
pub struct Store {
    coord: CoordClient,
    fence: Fence,
}

impl Store {
    pub fn new(coord: CoordClient, fence: Fence) -> Self {
        Self { coord, fence }
    }

    pub fn coord(&self) -> &CoordClient {
        &self.coord
    }

    /// Applies `batch` under the fence. Batches larger than one transaction are split;
    /// each part is atomic. Parts that touch disjoint paths are sent together, so coord
    /// commits them in one Raft round rather than one round each (thousands of instance
    /// records per placement round); otherwise they go one after the other, in order.
    pub async fn apply(&self, batch: Batch) -> Result<(), Error> {
        let independent = batch.paths_disjoint();
        let mut txns = Vec::new();
        let mut ops = batch.ops.into_iter().peekable();
        while ops.peek().is_some() {
            let mut txn = Txn::new();
            for op in ops.by_ref().take(TXN_OPS) {
                txn = match op {
                    Op::Put(path, value) => txn.then_put(&path, value),
                    Op::Delete(path) => txn.then_delete(&path, None, true),
                };
            }
            txns.push(txn);
        }
        // Puts and recursive deletes: safe to apply twice if the outcome was unknown.
        let commit =
            |txn: Txn| marina_coord_client::retry_idempotent(move || self.coord.fenced(&self.fence, txn.clone()));
        if independent {
            let mut pending: futures::stream::FuturesUnordered<_> = txns.into_iter().map(commit).collect();
            while let Some(result) = futures::StreamExt::next(&mut pending).await {
                result?;
            }
        } else {
            for txn in txns {
                commit(txn).await?;
            }
        }
        Ok(())
    }

    /// Every record under `dir`, decoded; unreadable ones are logged and skipped.
    pub async fn load<T: DeserializeOwned>(&self, dir: &str) -> Result<Vec<(String, T)>, Error> {
        let listing = self.coord.list(dir).await?;
        let mut records = Vec::with_capacity(listing.children.len());
        for name in listing.children {
            let path = format!("{dir}/{name}");
            let Some(node) = self.coord.get(&path).await? else { continue };
            match serde_json::from_slice(&node.data) {
                Ok(record) => records.push((name, record)),
                Err(error) => tracing::error!(%path, %error, "unreadable record skipped"),
            }
        }
        Ok(records)
    }

    pub async fn framework_id(&self) -> Result<Option<String>, Error> {
        Ok(self.coord.get(FRAMEWORK).await?.map(|node| String::from_utf8_lossy(&node.data).into_owned()))
    }

    pub async fn set_framework_id(&self, id: &str) -> Result<(), Error> {
        let txn = Txn::new().then_put(FRAMEWORK, id.to_owned());
        marina_coord_client::retry_idempotent(|| self.coord.fenced(&self.fence, txn.clone())).await.map(|_| ())
    }

    /// The stored versions of an app, oldest first.
    pub async fn versions(&self, app_id: &str) -> Result<Vec<String>, Error> {
        let mut versions = self.coord.list(&format!("{VERSIONS}/{}", node_name(app_id))).await?.children;
        versions.sort();
        Ok(versions)
    }

    /// Deletes all but the newest `keep` versions of an app (Marathon keeps
    /// `zk_max_versions`, 50); returns how many went.
    pub async fn prune_versions(&self, app_id: &str, keep: usize) -> Result<usize, Error> {
        let versions = self.versions(app_id).await?;
        let excess = versions.len().saturating_sub(keep);
        if excess == 0 {
            return Ok(0);
        }
        let mut batch = Batch::default();
        for version in &versions[..excess] {
            batch.delete(format!("{VERSIONS}/{}/{version}", node_name(app_id)));
        }
        self.apply(batch).await?;
        Ok(excess)
    }

    pub async fn version<T: DeserializeOwned>(&self, app_id: &str, version: &str) -> Result<Option<T>, Error> {
        let path = format!("{VERSIONS}/{}/{version}", node_name(app_id));
        Ok(self.coord.get(&path).await?.and_then(|node| serde_json::from_slice(&node.data).ok()))
    }

    /// The kept changes of the group tree, by version, oldest first.
    pub async fn group_versions(&self) -> Result<Vec<String>, Error> {
        let mut versions = self.coord.list(GROUP_VERSIONS).await?.children;
        versions.sort();
        Ok(versions)
    }

    /// One change of the group tree; `None` if it is not kept (or unreadable).
    pub async fn group_version<T: DeserializeOwned>(&self, version: &str) -> Result<Option<T>, Error> {
        let path = format!("{GROUP_VERSIONS}/{version}");
        Ok(self.coord.get(&path).await?.and_then(|node| serde_json::from_slice(&node.data).ok()))
    }

    /// Deletes all but the newest `keep` changes of the group tree. The versions of the apps
    /// a dropped change deleted (`deleted` names them) that are not newer than it go too: no
    /// kept change can bring those back, and a deleted app's versions are otherwise kept for
    /// exactly that. Returns how many changes went.
    pub async fn prune_group_versions<T: DeserializeOwned>(
        &self,
        keep: usize,
        deleted: impl Fn(&T) -> Vec<String>,
    ) -> Result<usize, Error> {
        let versions = self.group_versions().await?;
        let excess = versions.len().saturating_sub(keep);
        let mut batch = Batch::default();
        for version in &versions[..excess] {
            if let Some(change) = self.group_version::<T>(version).await? {
                for app_id in deleted(&change) {
                    let node = node_name(&app_id);
                    for old in self.versions(&app_id).await?.into_iter().filter(|old| old <= version) {
                        batch.delete(format!("{VERSIONS}/{node}/{old}"));
                    }
                }
            }
            batch.delete(format!("{GROUP_VERSIONS}/{version}"));
        }
        self.apply(batch).await?;
        Ok(excess)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_order_free_only_with_disjoint_paths() {
        let batch = |ops: &[(&str, bool)]| {
            let mut batch = Batch::default();
            for (path, put) in ops {
                if *put { batch.put(path.to_string(), &1) } else { batch.delete(path.to_string()) }
            }
            batch
        };
        assert!(batch(&[("/i/a", true), ("/i/b", true), ("/i/ab", false)]).paths_disjoint());
        assert!(!batch(&[("/i/a", true), ("/i/a", false)]).paths_disjoint(), "the same path twice");
        assert!(!batch(&[("/v/app/1", true), ("/v/app", false)]).paths_disjoint(), "a path under a deleted one");
        assert!(batch(&[("/v/app", false), ("/v/app2/1", true)]).paths_disjoint(), "a sibling, not a child");
        let between = [("/v/app", false), ("/v/app-x", true), ("/v/app/1", true)];
        assert!(!batch(&between).paths_disjoint(), "a child, whatever sorts between");
    }
}
