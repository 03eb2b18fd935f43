//! Marina's test harness: clusters of real nodes on loopback with their own temp dirs, in
//! one process (fast, every node the production `spawn`) or as real processes (for
//! SIGKILL, SIGSTOP and restarts from disk). Conditions are awaited with deadlines, never
//! with fixed sleeps; everything started is stopped and removed on drop.

pub mod binaries;
pub mod cluster;
pub mod coord;
pub mod docker;
pub mod events;
pub mod linearizability;
pub mod netns;
pub mod netns_cluster;
pub mod otlp;
pub mod process;
pub mod processes;
pub mod python;
pub mod scheduler;
pub mod services;
pub mod testdir;
pub mod tls;
pub mod tmpfs;
pub mod wait;

pub use cluster::MarinaCluster;
pub use coord::{CoordCluster, CoordProcesses};
pub use process::TestProcess;
pub use processes::{ProcessCluster, Topology};
pub use scheduler::TestScheduler;
pub use testdir::TestDir;
pub use tls::TestCa;
pub use wait::eventually;

/// Installs a test log subscriber once (`MARINA_TEST_LOG=debug` for more).
pub fn init_logging() {
    let level = std::env::var("MARINA_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let config = marina_daemon::telemetry::LogConfig { level, ..Default::default() };
    let identity = marina_daemon::telemetry::Identity { service: "marina-tests", instance: "test" };
    // The guard lives for the whole test process: spans (if exported at all) flush at exit.
    if let Ok(guard) = marina_daemon::telemetry::init(&config, identity) {
        std::mem::forget(guard);
    }
}

/// A free TCP port on 127.0.0.1, for processes that must be told their port up front
/// (coord peers, which name each other; etcd and ZooKeeper in the benchmarks): the port is
/// released before its user binds it, so another process may take it meanwhile. Marina's
/// other services bind port 0 and report the port they got ([`crate::services`]). Never a
/// port this test process was given before: the kernel may hand the same ephemeral port to
/// the next bind — two calls in a row once gave a ZooKeeper its client and election port
/// alike.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("binding an ephemeral port");
        if GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(port) {
            return port;
        }
    }
}
