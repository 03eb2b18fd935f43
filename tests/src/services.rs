//! Marina services as processes (the real binaries), for tests of what only processes
//! show: SIGKILL, SIGSTOP, restarts from disk. Each keeps its command line so it can be
//! restarted as it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use marina_coord_client::CoordUrl;

use crate::process::TestProcess;
use crate::wait::eventually;

pub struct Service {
    pub name: String,
    /// `host:port` of its gRPC + HTTP port.
    pub address: String,
    pub work_dir: PathBuf,
    binary: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    process: Option<TestProcess>,
}

impl Service {
    fn start(name: &str, binary: &str, mut args: Vec<String>, envs: &[(&str, &str)], dir: &Path) -> Self {
        let address = format!("127.0.0.1:{}", crate::free_port());
        let work_dir = dir.join(name);
        args.extend(["--listen".into(), address.clone(), "--work-dir".into(), work_dir.display().to_string()]);
        let mut service = Self {
            name: name.to_owned(),
            address,
            work_dir,
            binary: crate::binaries::binary(binary),
            args,
            envs: envs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            log: dir.join(format!("{name}.log")),
            process: None,
        };
        service.restart();
        service
    }

    /// A `marina-master` on `coord`; `envs` set configuration (`MARINA_MASTER_*`).
    pub fn master(name: &str, coord: &CoordUrl, dir: &Path, envs: &[(&str, &str)]) -> Self {
        let args = vec!["--coord".to_owned(), coord.to_string()];
        Self::start(name, "marina-master", args, envs, dir)
    }

    /// A `marina-gateway` on `coord`; `envs` set configuration (`MARINA_GATEWAY_*`).
    pub fn gateway(name: &str, coord: &CoordUrl, dir: &Path, envs: &[(&str, &str)]) -> Self {
        let args = vec!["--coord".to_owned(), coord.to_string()];
        Self::start(name, "marina-gateway", args, envs, dir)
    }

    /// A `marina-agent` on `coord` with `runtime`; `envs` set configuration (`MARINA_AGENT_*`).
    pub fn agent(name: &str, coord: &CoordUrl, runtime: &str, dir: &Path, envs: &[(&str, &str)]) -> Self {
        let args = vec!["--coord".to_owned(), coord.to_string(), "--runtime".to_owned(), runtime.to_owned()];
        Self::start(name, "marina-agent", args, envs, dir)
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

    /// (Re)starts the process with its original command line.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "{} is running", self.name);
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.process = Some(TestProcess::spawn(&self.name, &self.binary, &self.args, &envs, &self.log));
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

    /// GET `path` on the service's HTTP port, as JSON.
    pub async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
        client.get(format!("http://{}{path}", self.address)).send().await.ok()?.json().await.ok()
    }

    /// Waits until `/health` answers 200.
    pub async fn wait_healthy(&self) {
        let client = reqwest::Client::new();
        eventually(Duration::from_secs(30), &format!("{} to be healthy", self.name), || async {
            let response = client.get(format!("http://{}/health", self.address)).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }
}
