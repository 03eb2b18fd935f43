//! A whole Marina cluster in one process: a coord quorum, masters and agents, each the
//! production `spawn` on a loopback listener with its own temp dir. Fast, and the real code
//! paths. Any node can be stopped (as SIGTERM stops it) and restarted from its work dir;
//! tests needing SIGKILL or SIGSTOP use processes ([`crate::ProcessCluster`]) instead.

use std::net::SocketAddr;
use std::time::Duration;

use marina_coord_client::CoordUrl;
use marina_daemon::Shutdown;
use tokio::net::TcpListener;

use crate::coord::CoordCluster;
use crate::wait::eventually;
use marina_daemon::tls::Role;

/// A service the in-process cluster runs: how to start one from its configuration and a
/// bound listener, and how to wait for it to stop.
pub trait Node: Sized {
    type Config: Clone;
    fn spawn(config: Self::Config, listener: TcpListener, shutdown: Shutdown) -> impl Future<Output = Self>;
    fn wait(self) -> impl Future<Output = ()>;
}

impl Node for marina_master::MasterHandle {
    type Config = marina_master::Config;
    async fn spawn(config: Self::Config, listener: TcpListener, shutdown: Shutdown) -> Self {
        marina_master::spawn(config, listener, shutdown).await.expect("starting a master")
    }
    async fn wait(self) {
        let _ = marina_master::MasterHandle::wait(self).await;
    }
}

impl Node for marina_agent::AgentHandle {
    type Config = marina_agent::Config;
    async fn spawn(config: Self::Config, listener: TcpListener, shutdown: Shutdown) -> Self {
        marina_agent::spawn(config, listener, shutdown).await.expect("starting an agent")
    }
    async fn wait(self) {
        let _ = marina_agent::AgentHandle::wait(self).await;
    }
}

impl Node for marina_gateway::GatewayHandle {
    type Config = marina_gateway::Config;
    async fn spawn(config: Self::Config, listener: TcpListener, shutdown: Shutdown) -> Self {
        marina_gateway::spawn(config, listener, shutdown).await.expect("starting a gateway")
    }
    async fn wait(self) {
        let _ = marina_gateway::GatewayHandle::wait(self).await;
    }
}

/// One node of the cluster: stopped and restarted (from its work dir, on its address) as
/// an operator would stop and restart the service.
pub struct Running<H: Node> {
    pub address: SocketAddr,
    pub handle: Option<H>,
    shutdown: Shutdown,
    config: H::Config,
}

impl<H: Node> Running<H> {
    /// Starts a node on a port of its own (bound here, so no other process can take it).
    async fn start(config: impl FnOnce(SocketAddr) -> H::Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("addr");
        let config = config(address);
        let shutdown = Shutdown::new();
        let handle = H::spawn(config.clone(), listener, shutdown.clone()).await;
        Self { address, handle: Some(handle), shutdown, config }
    }

    pub fn is_running(&self) -> bool {
        self.handle.is_some()
    }

    /// Stops the node as SIGTERM would (a leader resigns, connections drain) and waits.
    pub async fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(handle) = self.handle.take() {
            handle.wait().await;
        }
    }

    /// Starts the stopped node again with its configuration: same address, same work dir.
    pub async fn restart(&mut self) {
        assert!(self.handle.is_none(), "the node at {} is running", self.address);
        // The port was this node's until it stopped; listeners reuse addresses, but a stopped
        // node's last connections may hold it a moment longer (seen on a busy machine).
        let address = self.address;
        let listener = eventually(Duration::from_secs(20), "the node's address to be free again", || async move {
            TcpListener::bind(address).await.ok()
        })
        .await;
        self.shutdown = Shutdown::new();
        self.handle = Some(H::spawn(self.config.clone(), listener, self.shutdown.clone()).await);
    }
}

pub struct MarinaCluster {
    pub coord: CoordCluster,
    pub masters: Vec<Running<marina_master::MasterHandle>>,
    pub agents: Vec<Running<marina_agent::AgentHandle>>,
    pub gateways: Vec<Running<marina_gateway::GatewayHandle>>,
    pub dir: crate::TestDir,
}

/// Adjusts agent `n`'s configuration.
type AgentConfigTuner = Box<dyn Fn(usize, &mut marina_agent::Config)>;

pub struct Builder {
    coords: usize,
    masters: usize,
    agents: usize,
    gateways: usize,
    runtime: marina_agent::Runtimes,
    master_config: Box<dyn Fn(&mut marina_master::Config)>,
    agent_config: AgentConfigTuner,
    gateway_config: Box<dyn Fn(&mut marina_gateway::Config)>,
}

impl MarinaCluster {
    pub fn builder() -> Builder {
        Builder {
            coords: 1,
            masters: 1,
            agents: 1,
            gateways: 0,
            runtime: marina_agent::RuntimeChoice::Sim.into(),
            master_config: Box::new(|_| {}),
            agent_config: Box::new(|_, _| {}),
            gateway_config: Box::new(|_| {}),
        }
    }

    /// The cluster's CA (its services' certificates, and clients calling as any role).
    pub fn ca(&self) -> &crate::TestCa {
        self.coord.ca()
    }

    /// The coord URL every service uses (rooted at `/marina`).
    pub fn coord_url(&self) -> CoordUrl {
        CoordUrl { root: "/marina".into(), ..self.coord.url() }
    }

    pub fn master_addresses(&self) -> Vec<String> {
        self.masters.iter().map(|m| m.address.to_string()).collect()
    }

    /// The leading master's index.
    pub async fn leading_master(&self) -> usize {
        eventually(Duration::from_secs(20), "a leading master", || async {
            self.masters.iter().position(|m| m.handle.as_ref().is_some_and(|h| h.master.role.borrow().is_some()))
        })
        .await
    }

    /// Waits until the leading master has `count` active agents.
    pub async fn wait_for_agents(&self, count: usize) {
        eventually(Duration::from_secs(20), &format!("{count} active agents"), || async {
            let leader = self.masters.iter().find_map(|m| m.handle.as_ref()?.master.leader().ok())?;
            let state = leader.state();
            (state.agents.iter().filter(|a| a.status == "active").count() >= count).then_some(())
        })
        .await
    }

    /// The leading gateway's address, once it is subscribed to the master.
    pub async fn leading_gateway(&self) -> SocketAddr {
        eventually(Duration::from_secs(20), "a leading gateway subscribed to the master", || async {
            self.gateways.iter().find_map(|g| {
                let leader = g.handle.as_ref()?.gateway.leader()?;
                leader.master.borrow().is_some().then_some(g.address)
            })
        })
        .await
    }

    pub fn gateway_url(&self, index: usize) -> String {
        format!("http://{}", self.gateways[index].address)
    }

    /// The index of the gateway that leads and is subscribed to the master.
    pub async fn leading_gateway_index(&self) -> usize {
        let address = self.leading_gateway().await;
        self.gateways.iter().position(|g| g.address == address).expect("a gateway of this cluster")
    }
}

impl Builder {
    pub fn coords(mut self, count: usize) -> Self {
        self.coords = count;
        self
    }

    pub fn masters(mut self, count: usize) -> Self {
        self.masters = count;
        self
    }

    pub fn agents(mut self, count: usize) -> Self {
        self.agents = count;
        self
    }

    pub fn gateways(mut self, count: usize) -> Self {
        self.gateways = count;
        self
    }

    /// The agents' runtimes: one (`RuntimeChoice::Docker`) or several
    /// (`"docker,process".parse::<Runtimes>()`).
    pub fn runtime(mut self, runtime: impl Into<marina_agent::Runtimes>) -> Self {
        self.runtime = runtime.into();
        self
    }

    pub fn master_config(mut self, tune: impl Fn(&mut marina_master::Config) + 'static) -> Self {
        self.master_config = Box::new(tune);
        self
    }

    pub fn agent_config(mut self, tune: impl Fn(usize, &mut marina_agent::Config) + 'static) -> Self {
        self.agent_config = Box::new(tune);
        self
    }

    pub fn gateway_config(mut self, tune: impl Fn(&mut marina_gateway::Config) + 'static) -> Self {
        self.gateway_config = Box::new(tune);
        self
    }

    pub async fn start(self) -> MarinaCluster {
        let coord = CoordCluster::start(self.coords).await;
        let dir = crate::TestDir::new();
        let coord_url = CoordUrl { root: "/marina".into(), ..coord.url() };
        let ca = coord.ca().clone();
        let mut masters = Vec::new();
        for index in 0..self.masters {
            let tune = &self.master_config;
            let master = Running::start(|address| {
                let mut config = marina_master::Config {
                    listen: address.to_string(),
                    coord: coord_url.clone(),
                    work_dir: dir.path().join(format!("master-{index}")),
                    tls: ca.config(Role::Master, Some(&index.to_string())),
                    ..Default::default()
                };
                tune(&mut config);
                config
            });
            masters.push(master.await);
        }
        let mut agents = Vec::new();
        for index in 0..self.agents {
            let agent = Running::start(|address| {
                let mut config = marina_agent::Config {
                    listen: address.to_string(),
                    coord: coord_url.clone(),
                    work_dir: dir.path().join(format!("agent-{index}")),
                    runtime: self.runtime.clone(),
                    hostname: Some(format!("agent-{index}.test")),
                    tls: ca.config(Role::Agent, Some(&index.to_string())),
                    ..Default::default()
                };
                config.resources.cpus = Some(4.0);
                config.resources.mem_mb = Some(4096.0);
                config.resources.disk_mb = Some(10240.0);
                (self.agent_config)(index, &mut config);
                config
            });
            agents.push(agent.await);
        }
        let mut gateways = Vec::new();
        for index in 0..self.gateways {
            let gateway = Running::start(|address| {
                let mut config = marina_gateway::Config {
                    listen: address.to_string(),
                    coord: coord_url.clone(),
                    work_dir: dir.path().join(format!("gateway-{index}")),
                    // Plain `http://` REST on loopback as in `marina dev`; everything else
                    // (coord, the masters, the standbys' forwarding) over mutual TLS.
                    tls: marina_daemon::tls::TlsConfig {
                        accept_plaintext: true,
                        ..ca.config(Role::Gateway, Some(&index.to_string()))
                    },
                    ..Default::default()
                };
                (self.gateway_config)(&mut config);
                config
            });
            gateways.push(gateway.await);
        }
        let cluster = MarinaCluster { coord, masters, agents, gateways, dir };
        if !cluster.masters.is_empty() {
            cluster.leading_master().await;
            cluster.wait_for_agents(cluster.agents.len()).await;
        }
        if !cluster.gateways.is_empty() {
            cluster.leading_gateway().await;
        }
        cluster
    }
}

impl Drop for MarinaCluster {
    fn drop(&mut self) {
        for gateway in &self.gateways {
            gateway.shutdown.trigger();
        }
        for agent in &self.agents {
            agent.shutdown.trigger();
        }
        for master in &self.masters {
            master.shutdown.trigger();
        }
    }
}
