//! A whole Marina cluster of real processes, each on a host of its own in a
//! [`Network`] of network namespaces, for the fault suite (issue 20): a 3-node coord quorum,
//! masters, gateways and process-runtime agents, every one of which can be partitioned,
//! slowed, SIGKILLed and restarted from disk, or frozen with SIGSTOP.
//!
//! Hosts are laid out in that order (coord nodes first), so a fault names its target by
//! [`Member`] and the network by [`NetnsCluster::host_of`]. The test's own namespace reaches
//! every host through the network's observer link: it plays the clients (coord's, REST's)
//! and never sits on either side of a partition between hosts.
//!
//! Dropping the cluster kills every process (the network's drop kills what runs in its
//! namespaces; the [`TestDir`] reaps task processes and deletes every data dir).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use marina_coord_client::{ClientOptions, CoordClient, CoordUrl};
use marina_daemon::tls::Role;

use crate::netns::{Host, Network};
use crate::process::TestProcess;
use crate::services::Service;
use crate::tmpfs::Tmpfs;
use crate::{TestCa, TestDir, eventually};

/// The port every process listens on, each on its own host's address.
pub const PORT: u16 = 7100;

/// Where the services keep their state in coord.
pub const MARINA_ROOT: &str = "/marina";

/// How many of each kind of process.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub coord: usize,
    pub masters: usize,
    pub gateways: usize,
    pub agents: usize,
    /// Each coord node's data on a tmpfs of this size (as `mount -o size=` takes it), so a
    /// fault can fill its disk ([`NetnsCluster::fill_coord_disk`]); `None`: on the test's
    /// temp dir.
    pub coord_disk: Option<&'static str>,
}

/// One process of the cluster, by kind and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Member {
    Coord(usize),
    Master(usize),
    Gateway(usize),
    Agent(usize),
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Member::Coord(index) => write!(f, "coord-{}", index + 1),
            Member::Master(index) => write!(f, "master-{index}"),
            Member::Gateway(index) => write!(f, "gateway-{index}"),
            Member::Agent(index) => write!(f, "agent-{index}"),
        }
    }
}

/// A coord node's process on its host.
struct CoordNode {
    id: u64,
    host: Host,
    data_dir: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    process: Option<TestProcess>,
}

impl CoordNode {
    fn launch(&mut self) {
        let binary = crate::binaries::binary("marina-coord");
        let (program, args) = self.host.exec_args(&binary, &self.args);
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.process = Some(TestProcess::spawn(&format!("coord-{}", self.id), &program, &args, &envs, &self.log));
    }
}

pub struct NetnsCluster {
    shape: Shape,
    coord: Vec<CoordNode>,
    pub masters: Vec<Service>,
    pub gateways: Vec<Service>,
    pub agents: Vec<Service>,
    ca: TestCa,
    /// Calls the gateways as an operator with their credentials (`auth.http_credentials`:
    /// a gateway reachable from other hosts refuses to run without them).
    gateway_http: reqwest::Client,
    /// Dropped before the directory: kills what runs in the namespaces, removes them.
    network: Network,
    /// The coord nodes' disks, if on tmpfs: unmounted once the network's drop killed them.
    disks: Option<Tmpfs>,
    dir: TestDir,
}

impl NetnsCluster {
    /// Starts the quorum, then the services (each with `envs` of its kind: `(kind, key,
    /// value)` where kind is `master`, `gateway` or `agent`), and waits until a master leads
    /// with every agent and a gateway leads subscribed to it. Agents run the `process`
    /// runtime. Logs are JSON lines, for the checkers that read them.
    pub async fn start(prefix: &str, shape: Shape, envs: &[(&str, &str, &str)]) -> anyhow::Result<Self> {
        crate::init_logging();
        let hosts = shape.coord + shape.masters + shape.gateways + shape.agents;
        let network = Network::create_with_observer(prefix, hosts)?;
        let dir = TestDir::new();
        let ca = TestCa::new(&dir.path().join("tls"));
        let peers: Vec<String> =
            (0..shape.coord).map(|i| format!("{}={}", i + 1, network.host(i).socket_addr(PORT))).collect();
        let mut coord = Vec::new();
        let mut disks = shape.coord_disk.map(|_| Tmpfs::new());
        for index in 0..shape.coord {
            let id = index as u64 + 1;
            let host = network.host(index).clone();
            let data_dir = match (&mut disks, shape.coord_disk) {
                (Some(disks), Some(size)) => disks.mount(&format!("coord-{id}"), size),
                _ => dir.path().join(format!("coord-{id}")),
            };
            let args = vec![
                "--id".into(),
                id.to_string(),
                "--listen".into(),
                host.socket_addr(PORT).to_string(),
                "--peers".into(),
                peers.join(","),
                "--data-dir".into(),
                data_dir.display().to_string(),
            ];
            let mut envs = ca.env("coord", Role::Coord, Some(&id.to_string()));
            envs.push(("MARINA_COORD_LOG__FORMAT".into(), "json".into()));
            let log = dir.path().join(format!("coord-{id}.log"));
            let mut node = CoordNode { id, host, data_dir, args, envs, log, process: None };
            node.launch();
            coord.push(node);
        }
        let credentials = format!("chaos:{}", fastrand::u64(..));
        let gateway_http = crate::tls::http_client_with_credentials(&ca.operator(), &credentials);
        let mut cluster = NetnsCluster {
            shape,
            coord,
            masters: Vec::new(),
            gateways: Vec::new(),
            agents: Vec::new(),
            ca,
            gateway_http,
            network,
            disks,
            dir,
        };
        cluster.wait_for_coord_leader().await;
        let url = cluster.services_url();
        let kind_envs = |kind: &str, extra: &[(&str, &str)]| -> Vec<(String, String)> {
            let log_format = (format!("MARINA_{}_LOG__FORMAT", kind.to_uppercase()), "json".to_owned());
            let extra = extra.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned()));
            let given = envs
                .iter()
                .filter(|(k, _, _)| *k == kind)
                .map(|(_, key, value)| ((*key).to_owned(), (*value).to_owned()));
            // The caller's settings last: they may replace these.
            std::iter::once(log_format).chain(extra).chain(given).collect()
        };
        let kinds = [
            (Role::Master, shape.masters, kind_envs("master", &[])),
            (Role::Agent, shape.agents, kind_envs("agent", &[("MARINA_AGENT_RUNTIME", "process")])),
            (
                Role::Gateway,
                shape.gateways,
                kind_envs("gateway", &[("MARINA_GATEWAY_AUTH__HTTP_CREDENTIALS", &credentials)]),
            ),
        ];
        for (role, count, envs) in &kinds {
            let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            for index in 0..*count {
                let member = match role {
                    Role::Master => Member::Master(index),
                    Role::Gateway => Member::Gateway(index),
                    _ => Member::Agent(index),
                };
                let host = cluster.host_of(member).clone();
                let service = Service::in_host(
                    *role,
                    &host,
                    PORT,
                    &member.to_string(),
                    &url,
                    &cluster.ca,
                    cluster.dir.path(),
                    &envs,
                );
                match member {
                    Member::Master(_) => cluster.masters.push(service),
                    Member::Gateway(_) => cluster.gateways.push(service),
                    _ => cluster.agents.push(service),
                }
            }
        }
        for service in cluster.masters.iter().chain(&cluster.agents).chain(&cluster.gateways) {
            service.wait_healthy().await;
        }
        Ok(cluster)
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// An HTTP client for the gateways' APIs, as an operator with their credentials.
    pub fn gateway_http(&self) -> &reqwest::Client {
        &self.gateway_http
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Every process of the cluster.
    pub fn members(&self) -> Vec<Member> {
        let Shape { coord, masters, gateways, agents, .. } = self.shape;
        (0..coord)
            .map(Member::Coord)
            .chain((0..masters).map(Member::Master))
            .chain((0..gateways).map(Member::Gateway))
            .chain((0..agents).map(Member::Agent))
            .collect()
    }

    /// The index of `member`'s host in the network.
    pub fn host_index(&self, member: Member) -> usize {
        let Shape { coord, masters, gateways, .. } = self.shape;
        match member {
            Member::Coord(index) => index,
            Member::Master(index) => coord + index,
            Member::Gateway(index) => coord + masters + index,
            Member::Agent(index) => coord + masters + gateways + index,
        }
    }

    pub fn host_of(&self, member: Member) -> &Host {
        self.network.host(self.host_index(member))
    }

    /// Coord's URL for the services (rooted at [`MARINA_ROOT`]).
    pub fn services_url(&self) -> CoordUrl {
        CoordUrl { endpoints: self.coord_endpoints(), root: MARINA_ROOT.into() }
    }

    fn coord_endpoints(&self) -> Vec<String> {
        self.coord.iter().map(|node| node.host.socket_addr(PORT).to_string()).collect()
    }

    /// A coord client rooted at `root`, calling as an operator, with `options`.
    pub fn coord_client(&self, root: &str, mut options: ClientOptions) -> CoordClient {
        options.tls = options.tls.or_else(|| Some(self.ca.operator()));
        CoordClient::with_options(&CoordUrl { endpoints: self.coord_endpoints(), root: root.into() }, options)
    }

    /// The coord node every running node agrees leads (its index), within `timeout`.
    pub async fn coord_leader(&self, timeout: Duration) -> Option<usize> {
        let client = self.coord_client("/", ClientOptions::default());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut statuses = Vec::new();
            for node in self.coord.iter().filter(|node| node.process.is_some()) {
                let address = node.host.socket_addr(PORT).to_string();
                if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), client.node_status(&address)).await
                {
                    statuses.push(status);
                }
            }
            let leader = statuses.iter().find(|s| s.role == "leader").map(|s| s.id);
            if let Some(leader) = leader
                && statuses.iter().all(|s| s.leader_id == leader)
            {
                return Some(leader as usize - 1);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_coord_leader(&self) {
        eventually(Duration::from_secs(60), "a coord leader in the namespaces", || async {
            self.coord_leader(Duration::from_secs(1)).await
        })
        .await;
    }

    /// The index of the running master that says it leads.
    pub async fn leading_master(&self) -> Option<usize> {
        for (index, master) in self.masters.iter().enumerate().filter(|(_, m)| m.is_running()) {
            let state = master.get_json("/master/state").await?;
            if state["elected"] == true {
                return Some(index);
            }
        }
        None
    }

    /// The index of the running gateway that says it leads, subscribed to a master.
    pub async fn leading_gateway(&self) -> Option<usize> {
        for (index, gateway) in self.gateways.iter().enumerate().filter(|(_, g)| g.is_running()) {
            let info = async {
                self.gateway_http.get(gateway.url("/v2/info")).send().await?.json::<serde_json::Value>().await
            };
            let Ok(info) = info.await else { continue };
            if info["elected"] == true && info["leader"] == gateway.address.as_str() && info["frameworkId"].is_string()
            {
                return Some(index);
            }
        }
        None
    }

    /// Whether `member`'s process runs (it may be frozen).
    pub fn is_running(&self, member: Member) -> bool {
        match member {
            Member::Coord(index) => self.coord[index].process.is_some(),
            _ => self.service(member).is_running(),
        }
    }

    /// SIGKILLs `member`'s process.
    pub async fn kill(&mut self, member: Member) {
        match member {
            Member::Coord(index) => {
                if let Some(mut process) = self.coord[index].process.take() {
                    process.kill().await;
                }
            }
            _ => self.service_mut(member).kill().await,
        }
    }

    /// Restarts `member` from its data on disk, as it was started.
    pub fn restart(&mut self, member: Member) {
        match member {
            Member::Coord(index) => self.coord[index].launch(),
            _ => self.service_mut(member).restart(),
        }
    }

    /// SIGSTOPs (`true`) or SIGCONTs `member`'s process.
    pub fn freeze(&self, member: Member, frozen: bool) {
        let process = match member {
            Member::Coord(index) => self.coord[index].process.as_ref().expect("running"),
            _ => {
                let service = self.service(member);
                return if frozen { service.freeze() } else { service.thaw() };
            }
        };
        if frozen { process.freeze() } else { process.thaw() }
    }

    /// Copies every process's log into `dest` (created), named after the process: what a
    /// failed run leaves to read once the cluster and its temp dir are gone.
    pub async fn save_logs(&self, dest: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dest)?;
        for member in self.members() {
            std::fs::write(dest.join(format!("{member}.log")), self.log(member))?;
        }
        // And what each service says of its state now (a master's agents and tasks, a
        // gateway's apps and tasks, an agent's tasks), where it answers.
        let views = [("masters", "/master/state"), ("gateways", "/v2/apps?embed=apps.tasks"), ("agents", "/state")];
        for (kind, path) in views {
            let services = match kind {
                "masters" => &self.masters,
                "gateways" => &self.gateways,
                _ => &self.agents,
            };
            for service in services {
                let answer = self.gateway_http.get(service.url(path)).send().await;
                let text = match answer {
                    Ok(response) => response.text().await.unwrap_or_else(|error| error.to_string()),
                    Err(error) => format!("no answer: {error}"),
                };
                std::fs::write(dest.join(format!("{}.state.json", service.name)), text)?;
            }
        }
        Ok(())
    }

    /// Fills coord node `index`'s disk (a tmpfs: see [`Shape::coord_disk`]) with one file
    /// until a write fails; returns the file, to remove for space again.
    pub fn fill_coord_disk(&self, index: usize) -> PathBuf {
        assert!(self.disks.is_some(), "coord's disks are not tmpfs: set Shape::coord_disk");
        crate::tmpfs::fill(&self.coord[index].data_dir)
    }

    /// Everything `member` logged (JSON lines), across restarts.
    pub fn log(&self, member: Member) -> String {
        match member {
            Member::Coord(index) => std::fs::read_to_string(&self.coord[index].log).unwrap_or_default(),
            _ => self.service(member).log(),
        }
    }

    /// Restarts every process that exited on its own (a service that failed stops for its
    /// supervisor to restart it: this is that supervisor). Returns those restarted.
    pub async fn restart_exited(&mut self) -> Vec<Member> {
        let mut restarted = Vec::new();
        for member in self.members() {
            let exited = match member {
                Member::Coord(index) => {
                    let node = &mut self.coord[index];
                    let exited = node.process.as_mut().is_some_and(|process| process.exit_status().is_some());
                    if exited {
                        node.process = None;
                    }
                    exited
                }
                _ => {
                    let service = self.service_mut(member);
                    let exited = service.exit_status().is_some();
                    if exited {
                        // Forgets it: `kill` of an exited process only reaps it.
                        service.kill().await;
                    }
                    exited
                }
            };
            if exited {
                self.restart(member);
                restarted.push(member);
            }
        }
        restarted
    }

    pub fn service(&self, member: Member) -> &Service {
        match member {
            Member::Master(index) => &self.masters[index],
            Member::Gateway(index) => &self.gateways[index],
            Member::Agent(index) => &self.agents[index],
            Member::Coord(_) => panic!("coord nodes are not services"),
        }
    }

    fn service_mut(&mut self, member: Member) -> &mut Service {
        match member {
            Member::Master(index) => &mut self.masters[index],
            Member::Gateway(index) => &mut self.gateways[index],
            Member::Agent(index) => &mut self.agents[index],
            Member::Coord(_) => panic!("coord nodes are not services"),
        }
    }
}
