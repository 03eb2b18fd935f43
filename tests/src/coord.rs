//! Coord clusters for tests: [`CoordCluster`] runs N nodes in this process (the production
//! `spawn` on loopback listeners, storage in temp dirs); [`CoordProcesses`] runs N
//! `marina-coord` processes that can be killed, frozen and restarted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use marina_coord::{Config, CoordHandle, CoordNode};
use marina_coord_client::{ClientOptions, CoordClient, CoordUrl, StatusResponse};
use marina_daemon::Shutdown;
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::process::TestProcess;
use crate::tls::TestCa;
use crate::wait::eventually;
use marina_daemon::tls::Role;

/// Generous bound for elections and catch-up on a loaded 2-core CI machine.
pub const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);

struct InProcessNode {
    id: u64,
    address: SocketAddr,
    config: Config,
    running: Option<(Shutdown, CoordHandle)>,
}

pub struct CoordCluster {
    nodes: Vec<InProcessNode>,
    /// The cluster's CA: every node, service and client of it has a certificate from it.
    ca: TestCa,
    _dir: TempDir,
}

impl CoordCluster {
    /// Starts `size` nodes and waits for a leader.
    pub async fn start(size: usize) -> Self {
        Self::start_with(size, |_| {}).await
    }

    /// Like [`start`](Self::start), with every node's config adjusted by `tune`.
    pub async fn start_with(size: usize, tune: impl Fn(&mut Config)) -> Self {
        crate::init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new(&dir.path().join("tls"));
        let mut listeners = Vec::new();
        for _ in 0..size {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("binding loopback"));
        }
        let addresses: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().expect("local addr")).collect();
        let peers =
            addresses.iter().enumerate().map(|(i, addr)| format!("{}={addr}", i + 1)).collect::<Vec<_>>().join(",");
        let mut nodes = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            let id = index as u64 + 1;
            let mut config = Config {
                id,
                listen: addresses[index].to_string(),
                peers: peers.clone(),
                data_dir: dir.path().join(format!("node-{id}")),
                tls: ca.config(Role::Coord, Some(&id.to_string())),
                ..Config::default()
            };
            tune(&mut config);
            let shutdown = Shutdown::new();
            let handle =
                marina_coord::spawn(config.clone(), listener, shutdown.clone()).await.expect("starting coord node");
            nodes.push(InProcessNode { id, address: addresses[index], config, running: Some((shutdown, handle)) });
        }
        let cluster = Self { nodes, ca, _dir: dir };
        cluster.leader().await;
        cluster
    }

    /// The cluster's CA.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// A client of `url` (some of this cluster's nodes) with `options`, calling as an
    /// operator unless they say how to call.
    pub fn client_at(&self, url: &CoordUrl, mut options: ClientOptions) -> CoordClient {
        options.tls = options.tls.or_else(|| Some(self.ca.operator()));
        CoordClient::with_options(url, options)
    }

    /// `coord://` URL of every node, rooted at `/test`.
    pub fn url(&self) -> CoordUrl {
        CoordUrl { endpoints: self.nodes.iter().map(|n| n.address.to_string()).collect(), root: "/test".into() }
    }

    /// A client calling as an operator.
    pub fn client(&self) -> CoordClient {
        CoordClient::with_tls(&self.url(), Some(self.ca.operator()))
    }

    /// A client that only knows node `id`'s endpoint (to exercise forwarding).
    pub fn client_of(&self, id: u64) -> CoordClient {
        let url = CoordUrl { endpoints: vec![self.address(id).to_string()], root: "/test".into() };
        let options =
            ClientOptions { retry_for: Duration::from_secs(5), tls: Some(self.ca.operator()), ..Default::default() };
        CoordClient::with_options(&url, options)
    }

    pub fn address(&self, id: u64) -> SocketAddr {
        self.slot(id).address
    }

    /// Node `id`'s data directory (Raft log, vote, snapshots).
    pub fn data_dir(&self, id: u64) -> &std::path::Path {
        &self.slot(id).config.data_dir
    }

    pub fn node(&self, id: u64) -> Arc<CoordNode> {
        self.slot(id).running.as_ref().map(|(_, handle)| handle.node.clone()).expect("node is running")
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn slot(&self, id: u64) -> &InProcessNode {
        self.nodes.iter().find(|n| n.id == id).expect("no such node")
    }

    fn slot_mut(&mut self, id: u64) -> &mut InProcessNode {
        self.nodes.iter_mut().find(|n| n.id == id).expect("no such node")
    }

    /// The id of the leader every running node agrees on.
    pub async fn leader(&self) -> u64 {
        eventually(CLUSTER_TIMEOUT, "one leader all running nodes agree on", || async {
            let statuses: Vec<StatusResponse> =
                self.nodes.iter().filter_map(|n| n.running.as_ref()).map(|(_, h)| h.node.status()).collect();
            let leader = statuses.iter().find(|s| s.role == "leader")?.id;
            statuses.iter().all(|s| s.leader_id == leader).then_some(leader)
        })
        .await
    }

    /// Stops node `id` (shuts its server and Raft down; its data stays).
    pub async fn stop(&mut self, id: u64) {
        if let Some((shutdown, handle)) = self.slot_mut(id).running.take() {
            shutdown.trigger();
            handle.wait().await.expect("node stops cleanly");
        }
    }

    /// Starts node `id` again on the same address and data.
    pub async fn restart(&mut self, id: u64) {
        let slot = self.slot_mut(id);
        assert!(slot.running.is_none(), "node {id} is running");
        let listener = TcpListener::bind(slot.address).await.expect("rebinding the node's address");
        let shutdown = Shutdown::new();
        let handle =
            marina_coord::spawn(slot.config.clone(), listener, shutdown.clone()).await.expect("restarting node");
        slot.running = Some((shutdown, handle));
    }

    /// Adds a node that is not a member yet (its `peers` are the current ones plus itself).
    pub async fn start_joiner(&mut self, tune: impl Fn(&mut Config)) -> u64 {
        let id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding loopback");
        let address = listener.local_addr().expect("local addr");
        let mut peers: Vec<String> = self.nodes.iter().map(|n| format!("{}={}", n.id, n.address)).collect();
        peers.push(format!("{id}={address}"));
        let mut config = Config {
            id,
            listen: address.to_string(),
            peers: peers.join(","),
            data_dir: self._dir.path().join(format!("node-{id}")),
            tls: self.ca.config(Role::Coord, Some(&id.to_string())),
            ..self.nodes[0].config.clone()
        };
        tune(&mut config);
        let shutdown = Shutdown::new();
        let handle = marina_coord::spawn(config.clone(), listener, shutdown.clone()).await.expect("starting joiner");
        self.nodes.push(InProcessNode { id, address, config, running: Some((shutdown, handle)) });
        id
    }
}

impl Drop for CoordCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some((shutdown, _)) = &node.running {
                shutdown.trigger();
            }
        }
    }
}

struct ProcessNode {
    id: u64,
    address: String,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<TestProcess>,
}

/// `marina-coord` processes on loopback.
pub struct CoordProcesses {
    nodes: Vec<ProcessNode>,
    peers: String,
    binary: PathBuf,
    envs: Vec<(String, String)>,
    ca: TestCa,
    /// Whether the nodes run on mutual TLS (the default; plaintext only to measure its cost).
    tls: bool,
    dir: TempDir,
}

impl CoordProcesses {
    pub async fn start(size: usize) -> Self {
        Self::start_with_env(size, &[]).await
    }

    /// Like [`Self::start`], with environment variables for every node.
    pub async fn start_with_env(size: usize, envs: &[(&str, &str)]) -> Self {
        Self::start_configured(size, envs, None, true).await
    }

    /// Like [`Self::start`], without TLS (nodes and clients in plaintext): what TLS costs
    /// is measured against it.
    pub async fn start_plaintext(size: usize) -> Self {
        Self::start_configured(size, &[], None, false).await
    }

    /// Like [`Self::start`], with node `id`'s data in `data_dir(id)` (a file system the test
    /// mounted, say) instead of the cluster's temp dir.
    pub async fn start_with_data_dirs(size: usize, data_dir: impl Fn(u64) -> PathBuf) -> Self {
        Self::start_configured(size, &[], Some(&data_dir), true).await
    }

    async fn start_configured(
        size: usize,
        envs: &[(&str, &str)],
        data_dir: Option<&dyn Fn(u64) -> PathBuf>,
        tls: bool,
    ) -> Self {
        crate::init_logging();
        let dir = tempfile::tempdir().expect("temp dir");
        let binary = crate::binaries::binary("marina-coord");
        let nodes: Vec<ProcessNode> = (1..=size as u64)
            .map(|id| ProcessNode {
                id,
                address: format!("127.0.0.1:{}", crate::free_port()),
                data_dir: data_dir.map_or_else(|| dir.path().join(format!("node-{id}")), |data_dir| data_dir(id)),
                log: dir.path().join(format!("node-{id}.log")),
                process: None,
            })
            .collect();
        let peers = nodes.iter().map(|n| format!("{}={}", n.id, n.address)).collect::<Vec<_>>().join(",");
        let envs = envs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let ca = TestCa::new(&dir.path().join("tls"));
        let mut cluster = Self { nodes, peers, binary, envs, ca, tls, dir };
        for id in 1..=size as u64 {
            cluster.launch(id);
        }
        cluster.leader().await;
        cluster
    }

    fn launch(&mut self, id: u64) {
        let peers = self.peers.clone();
        let binary = self.binary.clone();
        let node = self.nodes.iter_mut().find(|n| n.id == id).expect("no such node");
        let args = vec![
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            node.address.clone(),
            "--peers".into(),
            peers,
            "--data-dir".into(),
            node.data_dir.display().to_string(),
        ];
        let mut envs = if self.tls { self.ca.env("coord", Role::Coord, Some(&id.to_string())) } else { Vec::new() };
        envs.extend(self.envs.iter().cloned());
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        node.process = Some(TestProcess::spawn(&format!("coord-{id}"), &binary, &args, &envs, &node.log));
    }

    pub fn url(&self) -> CoordUrl {
        CoordUrl { endpoints: self.nodes.iter().map(|n| n.address.clone()).collect(), root: "/test".into() }
    }

    /// A client calling as an operator (in plaintext if the cluster has no TLS).
    pub fn client(&self) -> CoordClient {
        self.client_with(ClientOptions::default())
    }

    /// A client with `options`, calling as an operator unless they say how to call.
    pub fn client_with(&self, options: ClientOptions) -> CoordClient {
        self.client_at(&self.url(), options)
    }

    /// The cluster's CA.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// A client of `url` (some of this cluster's nodes) with `options`, calling as an
    /// operator unless they say how to call.
    pub fn client_at(&self, url: &CoordUrl, mut options: ClientOptions) -> CoordClient {
        if self.tls {
            options.tls = options.tls.or_else(|| Some(self.ca.operator()));
        }
        CoordClient::with_options(url, options)
    }

    pub fn address(&self, id: u64) -> &str {
        &self.nodes.iter().find(|n| n.id == id).expect("no such node").address
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Status of node `id`, if it answers.
    pub async fn status(&self, id: u64) -> Option<StatusResponse> {
        self.client().node_status(self.address(id)).await.ok()
    }

    /// The leader every live node agrees on.
    pub async fn leader(&self) -> u64 {
        eventually(CLUSTER_TIMEOUT, "one leader all live coord processes agree on", || async {
            let mut statuses = Vec::new();
            for node in self.nodes.iter().filter(|n| n.process.is_some()) {
                statuses.push(self.status(node.id).await?);
            }
            let leader = statuses.iter().find(|s| s.role == "leader")?.id;
            statuses.iter().all(|s| s.leader_id == leader).then_some(leader)
        })
        .await
    }

    pub async fn kill(&mut self, id: u64) {
        let node = self.nodes.iter_mut().find(|n| n.id == id).expect("no such node");
        if let Some(mut process) = node.process.take() {
            process.kill().await;
        }
    }

    /// Node `id`'s process id while it runs (e.g. to read its `/proc` entries).
    pub fn pid(&self, id: u64) -> Option<nix::unistd::Pid> {
        self.nodes.iter().find(|n| n.id == id)?.process.as_ref()?.pid()
    }

    /// Waits up to `timeout` for node `id` to exit on its own; its exit status, or None if it
    /// still runs (or was not running). An exited node counts as stopped (it can be
    /// restarted).
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let node = self.nodes.iter_mut().find(|n| n.id == id).expect("no such node");
        let status = node.process.as_mut()?.wait_exit(timeout).await?;
        node.process = None;
        Some(status)
    }

    /// Everything node `id` has logged (stdout and stderr, across restarts).
    pub fn log(&self, id: u64) -> String {
        let node = self.nodes.iter().find(|n| n.id == id).expect("no such node");
        std::fs::read_to_string(&node.log).unwrap_or_default()
    }

    pub fn restart(&mut self, id: u64) {
        assert!(self.nodes.iter().find(|n| n.id == id).is_some_and(|n| n.process.is_none()), "node {id} is running");
        self.launch(id);
    }
}
