//! What the master keeps in coord: the agents it admitted and the frameworks it knows.
//! Task state is not kept there — agents are the truth about what runs and tell a new
//! leader on re-registration. Every write is fenced by the leader's epoch.

use marina_coord_client::{CoordClient, Error, Fence, Txn};
use marina_proto::agent::v1::AgentInfo;
use marina_proto::master::v1::FrameworkInfo;
use prost::Message;

pub use marina_proto::layout::{MASTER_AGENTS_DIR as AGENTS_DIR, MASTER_FRAMEWORKS_DIR as FRAMEWORKS_DIR};

pub struct Registry {
    coord: CoordClient,
    fence: Fence,
}

impl Registry {
    pub fn new(coord: CoordClient, fence: Fence) -> Self {
        Self { coord, fence }
    }

    pub async fn agents(&self) -> Result<Vec<AgentInfo>, Error> {
        self.load(AGENTS_DIR).await
    }

    pub async fn frameworks(&self) -> Result<Vec<FrameworkInfo>, Error> {
        self.load(FRAMEWORKS_DIR).await
    }

    async fn load<T: Message + Default>(&self, dir: &str) -> Result<Vec<T>, Error> {
        let listing = self.coord.list(dir).await?;
        let mut records = Vec::with_capacity(listing.children.len());
        for name in listing.children {
            let path = format!("{dir}/{name}");
            if let Some(node) = self.coord.get(&path).await? {
                match T::decode(node.data) {
                    Ok(record) => records.push(record),
                    Err(error) => tracing::error!(%path, %error, "unreadable registry record skipped"),
                }
            }
        }
        Ok(records)
    }

    pub async fn put_agent(&self, info: &AgentInfo) -> Result<(), Error> {
        let path = format!("{AGENTS_DIR}/{}", info.agent_id);
        self.write(Txn::new().then_put(&path, info.encode_to_vec())).await
    }

    /// Puts and recursive deletes: retried when the outcome is unknown (applying twice is
    /// harmless).
    async fn write(&self, txn: Txn) -> Result<(), Error> {
        marina_coord_client::retry_idempotent(|| self.coord.fenced(&self.fence, txn.clone())).await.map(|_| ())
    }

    pub async fn put_framework(&self, info: &FrameworkInfo) -> Result<(), Error> {
        let path = format!("{FRAMEWORKS_DIR}/{}", info.framework_id);
        self.write(Txn::new().then_put(&path, info.encode_to_vec())).await
    }

    pub async fn remove_framework(&self, framework_id: &str) -> Result<(), Error> {
        let path = format!("{FRAMEWORKS_DIR}/{framework_id}");
        self.write(Txn::new().then_delete(&path, None, true)).await
    }
}
