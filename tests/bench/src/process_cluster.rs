//! A Marina cluster of real processes for the benchmarks that need them (failover, start,
//! footprint): 3 `marina-coord`, masters, agents and optionally one gateway, each the built
//! binary started through the marina-tests harness, with production settings (no
//! `MARINA_*` timing overrides). The Marathon REST calls the scenarios make live here too.

use std::time::Duration;

use marina_coord_client::{CoordClient, CoordUrl};
use marina_tests::services::Service;
use marina_tests::{CoordProcesses, TestDir, eventually};
use serde_json::Value;

/// Bound for the cluster to come up or settle between measurements (a loaded 2-core VM).
pub const SETTLE: Duration = Duration::from_secs(60);

/// The masters' election directory under the coord root.
pub const MASTER_MEMBERS: &str = marina_proto::layout::MASTER_ELECTION_DIR;

/// What to start.
pub struct Topology {
    pub masters: usize,
    pub agents: usize,
    /// The agents' runtime: `sim`, `process` or `docker`.
    pub runtime: String,
    pub gateway: bool,
}

pub struct ProcessCluster {
    /// Coord's `CoordUrl` rooted where the services keep their state.
    pub url: CoordUrl,
    pub masters: Vec<Service>,
    pub agents: Vec<Service>,
    pub gateway: Option<Service>,
    /// Held for its lifetime: the quorum stops when the cluster is dropped.
    _coord: CoordProcesses,
    /// Last field: dropped after the services, it then reaps what ran under it (tasks of the
    /// process runtime) and deletes every work dir.
    pub dir: TestDir,
}

/// Resources each agent offers: explicit, so placement does not depend on the machine.
const AGENT_RESOURCES: &[(&str, &str)] = &[
    ("MARINA_AGENT_RESOURCES__CPUS", "8"),
    ("MARINA_AGENT_RESOURCES__MEM_MB", "8192"),
    ("MARINA_AGENT_RESOURCES__DISK_MB", "10240"),
];

impl ProcessCluster {
    /// Starts everything and waits until a master leads with every agent active and the
    /// gateway (if any) leads, subscribed to it.
    pub async fn start(topology: Topology) -> Self {
        let coord = CoordProcesses::start(3).await;
        let dir = TestDir::new();
        let url = CoordUrl { root: "/marina".into(), ..coord.url() };
        let masters: Vec<Service> =
            (0..topology.masters).map(|i| Service::master(&format!("master-{i}"), &url, dir.path(), &[])).collect();
        let agents: Vec<Service> = (0..topology.agents)
            .map(|i| Service::agent(&format!("agent-{i}"), &url, &topology.runtime, dir.path(), AGENT_RESOURCES))
            .collect();
        let gateway = topology.gateway.then(|| Service::gateway("gateway", &url, dir.path(), &[]));
        for service in masters.iter().chain(&agents).chain(&gateway) {
            service.wait_healthy().await;
        }
        let cluster = Self { url, masters, agents, gateway, _coord: coord, dir };
        if !cluster.masters.is_empty() {
            cluster.leader_with_agents(cluster.agents.len(), 0).await;
        }
        if cluster.gateway.is_some() {
            cluster.wait_gateway_subscribed().await;
        }
        cluster
    }

    /// A client of the quorum rooted like the services.
    pub fn coord_client(&self) -> CoordClient {
        CoordClient::new(&self.url)
    }

    pub fn gateway_api(&self) -> AppsApi {
        AppsApi::new(&self.gateway.as_ref().expect("the cluster has a gateway").address)
    }

    /// The index of the master that leads with an epoch above `after` and `agents` active
    /// agents.
    pub async fn leader_with_agents(&self, agents: usize, after: u64) -> usize {
        let addresses: Vec<String> = self.masters.iter().map(|m| m.address.clone()).collect();
        let address = leader_with_agents(&addresses, agents, after).await;
        self.masters.iter().position(|m| m.address == address).expect("a known master")
    }

    async fn wait_gateway_subscribed(&self) {
        let gateway = self.gateway.as_ref().expect("a gateway");
        eventually(SETTLE, "the gateway to lead, subscribed to the master", || async {
            let info = gateway.get_json("/v2/info").await?;
            (info["elected"] == true && info["frameworkId"].is_string()).then_some(())
        })
        .await;
    }

    /// The framework id the gateway is registered under (it labels every task it starts).
    pub async fn framework_id(&self) -> String {
        let info = self.gateway.as_ref().expect("a gateway").get_json("/v2/info").await.expect("gateway info");
        info["frameworkId"].as_str().expect("subscribed").to_owned()
    }
}

/// The address of the master (among `addresses`) that leads with an epoch above `after`,
/// once `agents` agents are active with it. Polls each master's `/master/state`.
pub async fn leader_with_agents(addresses: &[String], agents: usize, after: u64) -> String {
    let http = http_client();
    let what = format!("a master leading after epoch {after} with {agents} active agents");
    eventually(SETTLE, &what, || async {
        for address in addresses {
            let Some(state) = get_json(&http, &format!("http://{address}/master/state")).await else { continue };
            if state["elected"] != true || state["epoch"].as_u64().is_none_or(|epoch| epoch <= after) {
                continue;
            }
            let active = state["agents"].as_array()?.iter().filter(|a| a["status"] == "active").count();
            return (active >= agents).then(|| address.clone());
        }
        None
    })
    .await
}

/// A short-timeout HTTP client: a request to a killed process fails fast.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("HTTP client")
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// The gateway's Marathon REST API, as the scenarios use it.
#[derive(Clone)]
pub struct AppsApi {
    http: reqwest::Client,
    base: String,
}

impl AppsApi {
    pub fn new(address: &str) -> Self {
        Self { http: http_client(), base: format!("http://{address}") }
    }

    /// `POST /v2/apps` (expects 201 Created).
    pub async fn create(&self, app: &Value) -> anyhow::Result<()> {
        let response = self.http.post(format!("{}/v2/apps", self.base)).json(app).send().await?;
        anyhow::ensure!(response.status() == 201, "POST /v2/apps: {} {}", response.status(), response.text().await?);
        Ok(())
    }

    /// `PUT /v2/apps/{id}` with a new instance count (expects 200).
    pub async fn scale(&self, id: &str, instances: usize) -> anyhow::Result<()> {
        let body = serde_json::json!({ "instances": instances });
        let response = self.http.put(format!("{}/v2/apps{id}", self.base)).json(&body).send().await?;
        anyhow::ensure!(response.status() == 200, "PUT /v2/apps{id}: {} {}", response.status(), response.text().await?);
        Ok(())
    }

    /// `DELETE /v2/apps/{id}` (expects 200).
    pub async fn delete(&self, id: &str) -> anyhow::Result<()> {
        let response = self.http.delete(format!("{}/v2/apps{id}", self.base)).send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "DELETE /v2/apps{id}: {} {}",
            response.status(),
            response.text().await?
        );
        Ok(())
    }

    /// Whether exactly `instances` tasks of app `id` run and no deployment is left.
    pub async fn is_stable(&self, id: &str, instances: usize) -> bool {
        let Some(body) = get_json(&self.http, &format!("{}/v2/apps{id}", self.base)).await else { return false };
        let app = &body["app"];
        app["tasksRunning"] == instances
            && app["tasks"].as_array().is_some_and(|tasks| tasks.len() == instances)
            && app["deployments"].as_array().is_some_and(Vec::is_empty)
    }

    /// Whether app `id` is gone (404).
    pub async fn is_gone(&self, id: &str) -> bool {
        let response = self.http.get(format!("{}/v2/apps{id}", self.base)).send().await;
        response.is_ok_and(|r| r.status() == 404)
    }

    pub fn events_url(&self) -> String {
        format!("{}/v2/events", self.base)
    }
}
