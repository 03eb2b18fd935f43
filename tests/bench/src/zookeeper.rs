//! A ZooKeeper ensemble of JVM processes on loopback (Debian's `zookeeper` package, 3.8), each
//! with its own data dir and `myid` in a temp dir, for the coord comparison and the election
//! failover measurement.
//!
//! Each server runs `java -cp zookeeper.jar org.apache.zookeeper.server.quorum.QuorumPeerMain
//! zoo.cfg` directly rather than through `zkServer.sh`, whose Debian variant reads
//! `/etc/zookeeper/conf` and logs to `/var/log/zookeeper`: this way nothing outside the temp
//! dir is touched and the harness owns the JVM's pid (SIGKILL really stops it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::daemon::{Daemon, find_program, wait_for};

pub const INSTALL_HINT: &str =
    "install ZooKeeper 3.8 with scripts/setup-bench (Debian packages zookeeper and zookeeperd, OpenJDK 17)";

/// Debian's server jar; its manifest's `Class-Path` names the dependencies in /usr/share/java.
const DEBIAN_JAR: &str = "/usr/share/java/zookeeper.jar";
/// An SLF4J binding so the servers' warnings reach their logs (without one SLF4J drops them).
const DEBIAN_SLF4J_SIMPLE: &str = "/usr/share/java/slf4j-simple.jar";

/// JVMs start slowly and the first election waits for all of them: generous on 2 cores.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// ZooKeeper's default tick (ms): session timeouts are negotiated between 2 and 20 ticks.
const TICK_MS: u64 = 2000;

/// `java` and the server classpath, if ZooKeeper is installed. `$MARINA_BENCH_ZOOKEEPER_JAR`
/// overrides the jar.
pub fn installation() -> Option<(PathBuf, String)> {
    let java = find_program("java", &[])?;
    let jar = std::env::var_os("MARINA_BENCH_ZOOKEEPER_JAR").map(PathBuf::from).unwrap_or(DEBIAN_JAR.into());
    if !jar.is_file() {
        return None;
    }
    let mut classpath = jar.display().to_string();
    if Path::new(DEBIAN_SLF4J_SIMPLE).is_file() {
        classpath = format!("{classpath}:{DEBIAN_SLF4J_SIMPLE}");
    }
    Some((java, classpath))
}

pub struct ZkCluster {
    /// Client addresses (`127.0.0.1:port`), one per server.
    pub addresses: Vec<String>,
    // Declared before `_dir`: the JVMs die before their data dirs are removed.
    daemons: Vec<Daemon>,
    _dir: TempDir,
}

impl ZkCluster {
    /// Starts `size` servers and waits until one is the leader and all others follow.
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let (java, classpath) = installation().with_context(|| format!("ZooKeeper not found: {INSTALL_HINT}"))?;
        let dir = tempfile::Builder::new().prefix("marina-bench-zookeeper-").tempdir()?;
        let client_ports: Vec<u16> = (0..size).map(|_| marina_tests::free_port()).collect();
        // Quorum (follower to leader) and leader-election ports, distinct per server since
        // they all share one host.
        let servers: String = (1..=size)
            .map(|id| format!("server.{id}=127.0.0.1:{}:{}\n", marina_tests::free_port(), marina_tests::free_port()))
            .collect();
        let mut daemons = Vec::new();
        for (index, client_port) in client_ports.iter().enumerate() {
            let id = index + 1;
            let data_dir = dir.path().join(format!("server-{id}"));
            std::fs::create_dir_all(&data_dir)?;
            std::fs::write(data_dir.join("myid"), format!("{id}\n"))?;
            // Stock settings otherwise (tickTime, initLimit, syncLimit as in the sample
            // zoo.cfg; forceSync on, so every write is fsync'd as with etcd and Marina).
            // maxClientCnxns=0 lifts the 60-connections-per-IP limit: every benchmark client
            // comes from 127.0.0.1. `srvr` is the only four-letter word, for readiness.
            let config = format!(
                "tickTime={TICK_MS}\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={client_port}\n\
                 clientPortAddress=127.0.0.1\nmaxClientCnxns=0\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=srvr\n{servers}",
                data_dir.display()
            );
            let config_path = dir.path().join(format!("zoo-{id}.cfg"));
            std::fs::write(&config_path, config)?;
            let args = [
                "-Xmx512m",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-cp",
                &classpath,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                &config_path.display().to_string(),
            ]
            .map(str::to_owned);
            let log = dir.path().join(format!("server-{id}.log"));
            daemons.push(Daemon::spawn(&format!("zookeeper {id}"), &java, &args, &log)?);
        }
        let addresses = client_ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let mut cluster = Self { addresses, daemons, _dir: dir };
        cluster.wait_for_quorum().await?;
        Ok(cluster)
    }

    /// The connection string of the whole ensemble (clients pick a server from it).
    pub fn connect_string(&self) -> String {
        self.addresses.join(",")
    }

    /// One server says `Mode: leader`, the others `Mode: follower` (a server that has not
    /// joined a quorum answers `srvr` with "not currently serving requests").
    async fn wait_for_quorum(&mut self) -> anyhow::Result<()> {
        let addresses = self.addresses.clone();
        let daemons = &mut self.daemons;
        wait_for(START_TIMEOUT, "a ZooKeeper leader with all servers following", || {
            let addresses = addresses.clone();
            let died = daemons.iter_mut().try_for_each(Daemon::check_running);
            async move {
                died?;
                let mut modes = Vec::new();
                for address in &addresses {
                    let Some(mode) = mode(address).await else { return Ok(None) };
                    modes.push(mode);
                }
                let leaders = modes.iter().filter(|mode| *mode == "leader").count();
                let followers = modes.iter().filter(|mode| *mode == "follower").count();
                Ok((leaders == 1 && leaders + followers == modes.len()).then_some(()))
            }
        })
        .await
    }
}

/// The server's `Mode:` from the `srvr` four-letter word, if it answers.
async fn mode(address: &str) -> Option<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream.write_all(b"srvr").await.ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.ok()?;
        reply.lines().find_map(|line| line.strip_prefix("Mode: ")).map(|mode| mode.trim().to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok().flatten()
}
