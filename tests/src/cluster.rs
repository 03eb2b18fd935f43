//! A whole Marina cluster in one process: a coord quorum, masters and agents, each the
//! production `spawn` on a loopback listener with its own temp dir. Fast, and the real code
//! paths; tests needing SIGKILL use [`crate::services`] instead.

use std::net::SocketAddr;
use std::time::Duration;

use marina_coord_client::CoordUrl;
use marina_daemon::Shutdown;
use tokio::net::TcpListener;

use crate::coord::CoordCluster;
use crate::wait::eventually;

pub struct Running<H> {
    pub address: SocketAddr,
    pub handle: Option<H>,
    shutdown: Shutdown,
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
    runtime: marina_agent::RuntimeChoice,
    master_config: Box<dyn Fn(&mut marina_master::Config)>,
    agent_config: AgentConfigTuner,
}

impl MarinaCluster {
    pub fn builder() -> Builder {
        Builder {
            coords: 1,
            masters: 1,
            agents: 1,
            gateways: 0,
            runtime: marina_agent::RuntimeChoice::Sim,
            master_config: Box::new(|_| {}),
            agent_config: Box::new(|_, _| {}),
        }
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

    pub async fn stop_master(&mut self, index: usize) {
        let master = &mut self.masters[index];
        master.shutdown.trigger();
        if let Some(handle) = master.handle.take() {
            let _ = handle.wait().await;
        }
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

    pub fn runtime(mut self, runtime: marina_agent::RuntimeChoice) -> Self {
        self.runtime = runtime;
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

    pub async fn start(self) -> MarinaCluster {
        let coord = CoordCluster::start(self.coords).await;
        let dir = crate::TestDir::new();
        let coord_url = CoordUrl { root: "/marina".into(), ..coord.url() };
        let mut masters = Vec::new();
        for index in 0..self.masters {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("addr");
            let mut config = marina_master::Config {
                listen: address.to_string(),
                coord: coord_url.clone(),
                work_dir: dir.path().join(format!("master-{index}")),
                ..Default::default()
            };
            (self.master_config)(&mut config);
            let shutdown = Shutdown::new();
            let handle = marina_master::spawn(config, listener, shutdown.clone()).await.expect("starting a master");
            masters.push(Running { address, handle: Some(handle), shutdown });
        }
        let mut agents = Vec::new();
        for index in 0..self.agents {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("addr");
            let mut config = marina_agent::Config {
                listen: address.to_string(),
                coord: coord_url.clone(),
                work_dir: dir.path().join(format!("agent-{index}")),
                runtime: self.runtime,
                hostname: Some(format!("agent-{index}.test")),
                ..Default::default()
            };
            config.resources.cpus = Some(4.0);
            config.resources.mem_mb = Some(4096.0);
            config.resources.disk_mb = Some(10240.0);
            (self.agent_config)(index, &mut config);
            let shutdown = Shutdown::new();
            let handle = marina_agent::spawn(config, listener, shutdown.clone()).await.expect("starting an agent");
            agents.push(Running { address, handle: Some(handle), shutdown });
        }
        let mut gateways = Vec::new();
        for index in 0..self.gateways {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("addr");
            let config = marina_gateway::Config {
                listen: address.to_string(),
                coord: coord_url.clone(),
                work_dir: dir.path().join(format!("gateway-{index}")),
                ..Default::default()
            };
            let shutdown = Shutdown::new();
            let handle = marina_gateway::spawn(config, listener, shutdown.clone()).await.expect("starting a gateway");
            gateways.push(Running { address, handle: Some(handle), shutdown });
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
