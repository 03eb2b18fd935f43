//! A Marina cluster of real processes — masters, agents and gateways, each the built binary
//! ([`Service`]), over a coord quorum in this process ([`CoordCluster`], fast) or of
//! processes ([`CoordProcesses`], production-like) — for the tests and benchmarks that need
//! processes: SIGKILL, SIGTERM, SIGSTOP, restarts from disk. Every node can be killed,
//! terminated, frozen, thawed and restarted through its [`Service`]. The Marathon REST calls
//! scenarios make are here too ([`AppsApi`]).

use std::time::Duration;

use marina_coord_client::{CoordClient, CoordUrl};
use serde_json::Value;

use crate::services::Service;
use crate::{CoordCluster, CoordProcesses, TestCa, TestDir, eventually};

/// Bound for the cluster to come up or settle between measurements (a loaded 2-core VM).
pub const SETTLE: Duration = Duration::from_secs(60);

/// Where the quorum runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coord {
    /// In this process (the production node code; fast to start).
    InProcess(usize),
    /// `marina-coord` processes.
    Processes(usize),
}

/// What to start. Each kind's `*_env` sets its configuration (`MARINA_<SERVICE>_*`).
#[derive(Debug, Clone)]
pub struct Topology {
    pub coord: Coord,
    pub masters: usize,
    pub agents: usize,
    /// The agents' runtime: `sim`, `process` or `docker`.
    pub runtime: String,
    pub gateways: usize,
    /// Set on coord's processes ([`Coord::Processes`]).
    pub coord_env: Vec<(String, String)>,
    pub master_env: Vec<(String, String)>,
    pub agent_env: Vec<(String, String)>,
    pub gateway_env: Vec<(String, String)>,
}

/// Resources each agent offers unless told otherwise: explicit, so placement does not
/// depend on the machine.
pub const AGENT_RESOURCES: &[(&str, &str)] = &[
    ("MARINA_AGENT_RESOURCES__CPUS", "8"),
    ("MARINA_AGENT_RESOURCES__MEM_MB", "8192"),
    ("MARINA_AGENT_RESOURCES__DISK_MB", "10240"),
];

impl Topology {
    /// One coord node in this process, `masters` masters, `agents` agents of `runtime`
    /// (with [`AGENT_RESOURCES`]) and `gateways` gateways, all with their defaults.
    pub fn new(masters: usize, agents: usize, runtime: &str, gateways: usize) -> Self {
        Topology {
            coord: Coord::InProcess(1),
            masters,
            agents,
            runtime: runtime.to_owned(),
            gateways,
            coord_env: Vec::new(),
            master_env: Vec::new(),
            agent_env: owned(AGENT_RESOURCES),
            gateway_env: Vec::new(),
        }
    }

    pub fn coord(mut self, coord: Coord) -> Self {
        self.coord = coord;
        self
    }

    pub fn coord_env(mut self, env: &[(&str, &str)]) -> Self {
        self.coord_env.extend(owned(env));
        self
    }

    pub fn master_env(mut self, env: &[(&str, &str)]) -> Self {
        self.master_env.extend(owned(env));
        self
    }

    pub fn agent_env(mut self, env: &[(&str, &str)]) -> Self {
        self.agent_env.extend(owned(env));
        self
    }

    pub fn gateway_env(mut self, env: &[(&str, &str)]) -> Self {
        self.gateway_env.extend(owned(env));
        self
    }
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect()
}

/// The quorum, held for the cluster's lifetime.
pub enum Quorum {
    InProcess(CoordCluster),
    Processes(CoordProcesses),
}

impl Quorum {
    /// The cluster's CA.
    pub fn ca(&self) -> &TestCa {
        match self {
            Quorum::InProcess(coord) => coord.ca(),
            Quorum::Processes(coord) => coord.ca(),
        }
    }
}

pub struct ProcessCluster {
    /// Coord's URL rooted where the services keep their state (`/marina`).
    pub url: CoordUrl,
    pub masters: Vec<Service>,
    pub agents: Vec<Service>,
    pub gateways: Vec<Service>,
    pub quorum: Quorum,
    /// Last field: dropped after the services, it then reaps what ran under it (tasks of the
    /// process runtime) and deletes every work dir.
    pub dir: TestDir,
}

impl ProcessCluster {
    /// Starts everything and waits until every service is healthy, a master leads with every
    /// agent active (if there are masters), and a gateway leads subscribed to it (if any).
    pub async fn start(topology: Topology) -> Self {
        let (quorum, url) = match topology.coord {
            Coord::InProcess(size) => {
                let coord = CoordCluster::start(size).await;
                let url = coord.url();
                (Quorum::InProcess(coord), url)
            }
            Coord::Processes(size) => {
                let coord = CoordProcesses::start_with_env(size, &borrowed(&topology.coord_env)).await;
                let url = coord.url();
                (Quorum::Processes(coord), url)
            }
        };
        let url = CoordUrl { root: "/marina".into(), ..url };
        let ca = quorum.ca().clone();
        let dir = TestDir::new();
        let (master_env, agent_env, gateway_env) =
            (borrowed(&topology.master_env), borrowed(&topology.agent_env), borrowed(&topology.gateway_env));
        let masters: Vec<Service> = (0..topology.masters)
            .map(|i| Service::master(&format!("master-{i}"), &url, &ca, dir.path(), &master_env))
            .collect();
        let agents: Vec<Service> = (0..topology.agents)
            .map(|i| Service::agent(&format!("agent-{i}"), &url, &ca, &topology.runtime, dir.path(), &agent_env))
            .collect();
        let gateways: Vec<Service> = (0..topology.gateways)
            .map(|i| Service::gateway(&format!("gateway-{i}"), &url, &ca, dir.path(), &gateway_env))
            .collect();
        for service in masters.iter().chain(&agents).chain(&gateways) {
            service.wait_healthy().await;
        }
        let cluster = Self { url, masters, agents, gateways, quorum, dir };
        if !cluster.masters.is_empty() {
            cluster.leader_with_agents(cluster.agents.len(), 0).await;
        }
        if !cluster.gateways.is_empty() {
            cluster.leading_gateway().await;
        }
        cluster
    }

    /// The quorum's processes (for a cluster started with [`Coord::Processes`]).
    pub fn coord_processes(&self) -> &CoordProcesses {
        match &self.quorum {
            Quorum::Processes(coord) => coord,
            Quorum::InProcess(_) => panic!("this cluster's quorum runs in the test process"),
        }
    }

    /// The quorum's processes, to kill or restart one.
    pub fn coord_processes_mut(&mut self) -> &mut CoordProcesses {
        match &mut self.quorum {
            Quorum::Processes(coord) => coord,
            Quorum::InProcess(_) => panic!("this cluster's quorum runs in the test process"),
        }
    }

    /// A client of the quorum rooted like the services, calling as an operator.
    pub fn coord_client(&self) -> CoordClient {
        CoordClient::with_tls(&self.url, Some(self.ca().operator()))
    }

    /// The cluster's CA.
    pub fn ca(&self) -> &TestCa {
        self.quorum.ca()
    }

    /// The Marathon API of gateway `index` (a standby forwards to the leader).
    pub fn gateway_api(&self, index: usize) -> AppsApi {
        AppsApi::new(&self.gateways[index].address)
    }

    /// The index of the master that leads with an epoch above `after` and `agents` active
    /// agents.
    pub async fn leader_with_agents(&self, agents: usize, after: u64) -> usize {
        let addresses: Vec<String> = self.masters.iter().map(|m| m.address.clone()).collect();
        let address = leader_with_agents(self.ca(), &addresses, agents, after).await;
        self.masters.iter().position(|m| m.address == address).expect("a known master")
    }

    /// The index of the running master that says it leads, with its epoch.
    pub async fn leading_master(&self) -> (usize, u64) {
        eventually(SETTLE, "a master to lead", || async {
            for (index, master) in self.masters.iter().enumerate().filter(|(_, m)| m.is_running()) {
                let state = master.get_json("/master/state").await?;
                if state["elected"] == true {
                    return Some((index, state["epoch"].as_u64()?));
                }
            }
            None
        })
        .await
    }

    /// The index of the gateway that leads, subscribed to the master (its framework id
    /// known).
    pub async fn leading_gateway(&self) -> usize {
        eventually(SETTLE, "a gateway to lead, subscribed to the master", || async {
            for (index, gateway) in self.gateways.iter().enumerate().filter(|(_, g)| g.is_running()) {
                let info = gateway.get_json("/v2/info").await?;
                let leads = info["elected"] == true && info["leader"] == gateway.address.as_str();
                if leads && info["frameworkId"].is_string() {
                    return Some(index);
                }
            }
            None
        })
        .await
    }

    /// The framework id the gateways are registered under (it labels every task they start).
    pub async fn framework_id(&self) -> String {
        let leader = self.leading_gateway().await;
        let info = self.gateways[leader].get_json("/v2/info").await.expect("gateway info");
        info["frameworkId"].as_str().expect("subscribed").to_owned()
    }
}

/// The address of the master (among `addresses`, with certificates from `ca`) that leads
/// with an epoch above `after`, once `agents` agents are active with it. Polls each
/// master's `/master/state`.
pub async fn leader_with_agents(ca: &TestCa, addresses: &[String], agents: usize, after: u64) -> String {
    let http = crate::tls::http_client(&ca.operator());
    let what = format!("a master leading after epoch {after} with {agents} active agents");
    eventually(SETTLE, &what, || async {
        for address in addresses {
            let Some(state) = get_json(&http, &format!("https://{address}/master/state")).await else { continue };
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

/// How long [`AppsApi::create`] waits for its answer.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway's Marathon REST API, as scenarios use it.
#[derive(Clone)]
pub struct AppsApi {
    http: reqwest::Client,
    base: String,
}

impl AppsApi {
    pub fn new(address: &str) -> Self {
        Self { http: http_client(), base: format!("http://{address}") }
    }

    /// `POST /v2/apps` (expects 201 Created). Up to [`CREATE_TIMEOUT`]: a create is a
    /// coord write, sent to a live gateway, and on a CI machine busy with parallel tests it
    /// once took longer than the client's 2 s (the `start` bench's smoke test).
    pub async fn create(&self, app: &Value) -> anyhow::Result<()> {
        let request = self.http.post(format!("{}/v2/apps", self.base)).json(app).timeout(CREATE_TIMEOUT);
        let response = request.send().await?;
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

    /// The app's JSON (`GET /v2/apps/{id}`'s `app`), if it answers.
    pub async fn app(&self, id: &str) -> Option<Value> {
        Some(get_json(&self.http, &format!("{}/v2/apps{id}", self.base)).await?["app"].take())
    }

    /// Whether exactly `instances` tasks of app `id` run and no deployment is left.
    pub async fn is_stable(&self, id: &str, instances: usize) -> bool {
        let Some(app) = self.app(id).await else { return false };
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
