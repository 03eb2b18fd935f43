//! Marina services as processes (the real binaries), for tests of what only processes
//! show: SIGKILL, SIGSTOP, restarts from disk. Each keeps its command line so it can be
//! restarted as it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use marina_coord_client::CoordUrl;

use crate::netns::Host;
use crate::process::TestProcess;
use crate::tls::TestCa;
use crate::wait::eventually;
use marina_daemon::tls::Role;

pub struct Service {
    pub name: String,
    /// `host:port` of its gRPC + HTTP port.
    pub address: String,
    pub work_dir: PathBuf,
    binary: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    /// Where the process writes the address it bound.
    address_file: PathBuf,
    process: Option<TestProcess>,
    /// The network-namespace host it runs in, if not the test's own namespace.
    host: Option<Host>,
    /// Calls its HTTP side over TLS, as an operator.
    http: reqwest::Client,
    operator: std::sync::Arc<marina_daemon::tls::Tls>,
}

impl Service {
    /// Starts `binary` on a port it binds itself (port 0) and reports through its address
    /// file: no port is chosen here and freed for another process to take first.
    fn start(
        name: &str,
        binary: &str,
        args: Vec<String>,
        tls: Vec<(String, String)>,
        envs: &[(&str, &str)],
        ca: &TestCa,
        dir: &Path,
    ) -> Self {
        Self::start_at(None, name, binary, args, tls, envs, ca, dir)
    }

    /// [`Service::start`] in `at` (a host of a [`crate::netns::Network`] and the port to
    /// listen on there), or on loopback with a port of its own choosing.
    #[allow(clippy::too_many_arguments)]
    fn start_at(
        at: Option<(&Host, u16)>,
        name: &str,
        binary: &str,
        mut args: Vec<String>,
        tls: Vec<(String, String)>,
        envs: &[(&str, &str)],
        ca: &TestCa,
        dir: &Path,
    ) -> Self {
        let work_dir = dir.join(name);
        let address_file = dir.join(format!("{name}.address"));
        args.extend([
            "--work-dir".into(),
            work_dir.display().to_string(),
            "--address-file".into(),
            address_file.display().to_string(),
        ]);
        let mut service = Self {
            name: name.to_owned(),
            address: at.map_or_else(|| "127.0.0.1:0".to_owned(), |(host, port)| host.socket_addr(port).to_string()),
            work_dir,
            binary: crate::binaries::binary(binary),
            args,
            // The test's own settings last: they may replace the TLS ones.
            envs: tls.into_iter().chain(envs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))).collect(),
            log: dir.join(format!("{name}.log")),
            address_file,
            process: None,
            host: at.map(|(host, _)| host.clone()),
            http: crate::tls::http_client(&ca.operator()),
            operator: ca.operator(),
        };
        service.restart();
        service
    }

    /// A `marina-master` on `coord` with a certificate from `ca`; `envs` set configuration
    /// (`MARINA_MASTER_*`).
    pub fn master(name: &str, coord: &CoordUrl, ca: &TestCa, dir: &Path, envs: &[(&str, &str)]) -> Self {
        let args = vec!["--coord".to_owned(), coord.to_string()];
        let tls = ca.env("master", Role::Master, Some(name));
        Self::start(name, "marina-master", args, tls, envs, ca, dir)
    }

    /// A `marina-gateway` on `coord` with a certificate from `ca`, also taking plaintext
    /// REST on loopback (as in `marina dev`); `envs` set configuration (`MARINA_GATEWAY_*`).
    pub fn gateway(name: &str, coord: &CoordUrl, ca: &TestCa, dir: &Path, envs: &[(&str, &str)]) -> Self {
        let args = vec!["--coord".to_owned(), coord.to_string()];
        let mut tls = ca.env("gateway", Role::Gateway, Some(name));
        tls.push(("MARINA_GATEWAY_TLS__ACCEPT_PLAINTEXT".into(), "true".into()));
        Self::start(name, "marina-gateway", args, tls, envs, ca, dir)
    }

    /// A `marina-agent` on `coord` with `runtime` and a certificate from `ca`; `envs` set
    /// configuration (`MARINA_AGENT_*`).
    pub fn agent(name: &str, coord: &CoordUrl, ca: &TestCa, runtime: &str, dir: &Path, envs: &[(&str, &str)]) -> Self {
        let args = vec!["--coord".to_owned(), coord.to_string(), "--runtime".to_owned(), runtime.to_owned()];
        let tls = ca.env("agent", Role::Agent, Some(name));
        Self::start(name, "marina-agent", args, tls, envs, ca, dir)
    }

    /// A `marina-master`, `marina-gateway` or `marina-agent` (`kind`) running in `host` of a
    /// [`crate::netns::Network`] and listening on `port` there, like the constructors
    /// above; an agent's `runtime` is set with `MARINA_AGENT_RUNTIME` in `envs`.
    #[allow(clippy::too_many_arguments)]
    pub fn in_host(
        kind: Role,
        host: &Host,
        port: u16,
        name: &str,
        coord: &CoordUrl,
        ca: &TestCa,
        dir: &Path,
        envs: &[(&str, &str)],
    ) -> Self {
        let args = vec!["--coord".to_owned(), coord.to_string()];
        let (binary, service) = match kind {
            Role::Master => ("marina-master", "master"),
            Role::Gateway => ("marina-gateway", "gateway"),
            Role::Agent => ("marina-agent", "agent"),
            other => panic!("{} is not a service Service::in_host starts", other.as_str()),
        };
        let tls = ca.env(service, kind, Some(name));
        Self::start_at(Some((host, port)), name, binary, args, tls, envs, ca, dir)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// How the process ended, if it has since it was started; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.process.as_mut()?.exit_status()
    }

    /// The running process's id (e.g. to read its `/proc` entries).
    pub fn pid(&self) -> Option<nix::unistd::Pid> {
        self.process.as_ref()?.pid()
    }

    /// (Re)starts the process with its original command line. The first start binds any
    /// free port; a restart binds the port the service had (as a restarted service keeps its
    /// address), which it released only when it stopped. Returns once it listens.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "{} is running", self.name);
        let _ = std::fs::remove_file(&self.address_file);
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut args = self.args.clone();
        args.extend(["--listen".to_owned(), self.address.clone()]);
        let (binary, args) = match &self.host {
            Some(host) => host.exec_args(&self.binary, &args),
            None => (self.binary.clone(), args),
        };
        let mut process = TestProcess::spawn(&self.name, &binary, &args, &envs, &self.log);
        self.address = self.bound_address(&mut process);
        self.process = Some(process);
    }

    /// Waits for the address `process` bound (it writes it once listening, before anything
    /// else it does, so this takes as long as the binary's start).
    fn bound_address(&self, process: &mut TestProcess) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(address) = std::fs::read_to_string(&self.address_file) {
                return address;
            }
            if let Some(status) = process.exit_status() {
                panic!("{} exited ({status}) before listening:\n{}", self.name, process.log());
            }
            assert!(std::time::Instant::now() < deadline, "{} did not listen within 30 s", self.name);
            // Polled, not awaited: starting is synchronous for the tests that call it.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut process = self.process.take()?;
        process.terminate().await
    }

    pub fn freeze(&self) {
        self.process.as_ref().expect("running").freeze();
    }

    pub fn thaw(&self) {
        self.process.as_ref().expect("running").thaw();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The URL of `path` on the service's port (`https://`).
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    /// An HTTP client calling the service as an operator (over mutual TLS).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A gRPC channel to the service, calling as an operator.
    pub fn channel(&self) -> tonic::transport::Channel {
        crate::tls::channel(&self.operator, &self.address)
    }

    /// GET `path` on the service's HTTP port, as JSON.
    pub async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        self.http.get(self.url(path)).send().await.ok()?.json().await.ok()
    }

    /// GET `path` on the service's HTTP port, as text.
    pub async fn get_text(&self, path: &str) -> Option<String> {
        self.http.get(self.url(path)).send().await.ok()?.text().await.ok()
    }

    /// Waits until `/health` answers 200.
    pub async fn wait_healthy(&self) {
        eventually(Duration::from_secs(30), &format!("{} to be healthy", self.name), || async {
            let response = self.http.get(self.url("/health")).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }
}
