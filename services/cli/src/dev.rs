//! `marina dev`: a whole HA cluster on this machine — 3 coord nodes, 2 masters, agents,
//! 2 gateways — each the real binary in its own process (so any of them can be killed to
//! watch the cluster heal, exactly as in a deployment). Logs go to `<data-dir>/logs/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use marina_coord_client::{CoordClient, CoordUrl};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tokio::process::{Child, Command};

use marina_daemon::tls::issue::Request;
use marina_daemon::tls::{Role, Tls};
use std::sync::Arc;

#[derive(Args)]
pub struct DevArgs {
    /// Where every service keeps its data and logs (reused across runs). Default:
    /// `$XDG_DATA_HOME/marina/dev` or `~/.local/share/marina/dev`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How many agents.
    #[arg(long, default_value_t = 1)]
    agents: usize,
    /// The agents' runtimes: auto (every one that answers: Docker, else containerd, for
    /// images; host processes for commands), docker, containerd, process, sim, or a list
    /// (docker,process).
    #[arg(long, default_value = "auto")]
    runtime: String,
    /// `fixed`: the well-known ports (coord 2181-2183, masters 5050 and 5052, agents 5051,
    /// 5061, 5071..., gateways 8080 and 8081). `auto`: free ports, printed and written to
    /// `<data-dir>/endpoints.json`.
    #[arg(long, default_value = "fixed", value_parser = ["fixed", "auto"])]
    ports: String,
    /// `user:password` the gateways require of REST and gRPC callers (Marathon's
    /// --http_credentials). Without it the gateways, on loopback, answer anyone.
    #[arg(long)]
    http_credentials: Option<String>,
    /// The services' log filter.
    #[arg(long, default_value = "info,openraft=warn")]
    log_level: String,
}

/// `$XDG_DATA_HOME/marina/dev` (`~/.local/share/marina/dev`); for root `/var/lib/marina/dev`:
/// a root agent runs command tasks as `nobody`, who must reach their sandboxes, and root's
/// home is closed to other users.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/marina/dev");
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("marina/dev")
}

/// The ports of every service. Coord nodes record each other's addresses in the Raft
/// membership, so a data dir must keep its ports: auto-picked ones are saved in
/// `<data-dir>/ports.json` and used again by the next run.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Ports {
    coord: Vec<u16>,
    masters: Vec<u16>,
    agents: Vec<u16>,
    gateways: Vec<u16>,
}

impl Ports {
    fn choose(data_dir: &Path, auto: bool, agents: usize) -> anyhow::Result<Self> {
        let file = data_dir.join("ports.json");
        let saved: Ports = match std::fs::read(&file) {
            Ok(bytes) if auto => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is unreadable (delete it to pick new ports)", file.display()))?,
            _ => Ports::default(),
        };
        let agent_ports: Vec<u16> = (0..agents as u16).map(|i| 5051 + 10 * i).collect();
        // Every port is checked before any is reported, so one run names all the busy ones.
        let mut busy = Vec::new();
        let mut pick = |kind: &str, saved: &[u16], fixed: &[u16]| -> anyhow::Result<Vec<u16>> {
            let mut ports = Vec::new();
            for (i, fixed) in fixed.iter().enumerate() {
                let wanted = if auto { saved.get(i).copied() } else { Some(*fixed) };
                match wanted {
                    Some(port) if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() => {
                        busy.push(format!("{port} ({kind}-{})", i + 1));
                        ports.push(port);
                    }
                    Some(port) => ports.push(port),
                    None => ports.push(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()),
                }
            }
            Ok(ports)
        };
        let ports = Ports {
            coord: pick("coord", &saved.coord, &[2181, 2182, 2183])?,
            masters: pick("master", &saved.masters, &[5050, 5052])?,
            agents: pick("agent", &saved.agents, &agent_ports)?,
            gateways: pick("gateway", &saved.gateways, &[8080, 8081])?,
        };
        if !busy.is_empty() {
            let hint = if auto {
                "this data dir's cluster used them before: is another `marina dev` running on it?"
            } else {
                "is another `marina dev` running? `marina dev --ports auto` picks free ports"
            };
            bail!("ports taken on 127.0.0.1: {} — {hint}", busy.join(", "));
        }
        if auto {
            std::fs::write(&file, serde_json::to_vec_pretty(&ports)?)
                .with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(ports)
    }
}

/// One service process.
struct Service {
    name: String,
    command: Vec<String>,
    child: Option<Child>,
}

/// The binaries sit next to `marina` (as `cargo build` and the release archives put them).
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the marina binary")?;
    let path = exe.parent().map(|dir| dir.join(name)).context("marina has no directory")?;
    if !path.is_file() {
        bail!("{} not found next to {} (`cargo build --release` builds every binary)", path.display(), exe.display());
    }
    Ok(path)
}

/// Starts service `name`. `secrets` go in its environment, not on its command line: a
/// command line is visible to every user of the machine, and recorded in `commands.txt`.
fn spawn(
    name: &str,
    program: &Path,
    args: Vec<String>,
    secrets: &[(String, String)],
    logs: &Path,
    log_level: &str,
) -> anyhow::Result<Service> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(logs.join(format!("{name}.log")))?;
    // Its own process group: a Ctrl-C in the terminal reaches `marina dev` only, which then
    // stops the services in order (gateways and masters hand over while coord still runs).
    let mut command = Command::new(program);
    exit_with_parent(&mut command);
    let child = command
        .process_group(0)
        .args(&args)
        .env("RUST_LOG", "")
        .env(format!("MARINA_{}_LOG__LEVEL", service_kind(name).to_ascii_uppercase()), log_level)
        .envs(secrets.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let mut command = vec![program.display().to_string()];
    command.extend(args);
    Ok(Service { name: name.to_owned(), command, child: Some(child) })
}

/// The service is sent SIGTERM when `marina dev` dies, however it dies (SIGKILL, a crash,
/// a closed terminal): otherwise its services outlive it, holding every port, and the next
/// `marina dev` cannot start. SIGTERM, so each still shuts down cleanly (a gateway or master
/// resigns, an agent leaves its tasks running to be re-adopted) — all at once, though, not
/// tier by tier as a Ctrl-C stops them.
///
/// Linux sends the signal when the *thread* that forked the child ends: services are spawned
/// from `run`, which runs on the main thread (`block_on` in `main`), which lives as long as
/// the process.
fn exit_with_parent(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec of a multi-threaded
    // process, where only async-signal-safe calls are allowed: prctl(2) and getppid(2) are
    // bare system calls, and the errors are made from raw errno values (no allocation, no
    // lock that another thread could have held at the fork).
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            // The parent may have died before the prctl: then no signal will ever come.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

fn service_kind(name: &str) -> &str {
    name.split('-').next().unwrap_or(name)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.agents == 0 {
        bail!("--agents must be at least 1");
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let logs = data_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let auto = args.ports == "auto";

    let Ports { coord: coord_ports, masters: master_ports, agents: agent_ports, gateways: gateway_ports } =
        Ports::choose(&data_dir, auto, args.agents)?;
    let peers =
        coord_ports.iter().enumerate().map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1)).collect::<Vec<_>>().join(",");
    let coord_url =
        CoordUrl { endpoints: coord_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(), root: "/marina".into() };
    let dir = |name: &str| data_dir.join(name).display().to_string();
    let tls_dir = data_dir.join("tls");
    let certificates = Certificates::make(&tls_dir, &coord_ports, &master_ports, &agent_ports, &gateway_ports)?;
    let operator = crate::operator::load_dir(&tls_dir)?.context("the operator certificate")?;

    let mut services = Vec::new();
    let coord_binary = binary("marina-coord")?;
    for (index, port) in coord_ports.iter().enumerate() {
        let name = format!("coord-{}", index + 1);
        let coord_args = vec![
            "--id".into(),
            (index + 1).to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--peers".into(),
            peers.clone(),
            "--data-dir".into(),
            dir(&name),
        ];
        let coord_args = certificates.flags(&name, coord_args);
        services.push(spawn(&name, &coord_binary, coord_args, &[], &logs, &args.log_level)?);
    }
    let common = |name: &str, port: u16| -> Vec<String> {
        vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--coord".into(),
            coord_url.to_string(),
            "--work-dir".into(),
            dir(name),
        ]
    };
    let master_binary = binary("marina-master")?;
    for (index, port) in master_ports.iter().enumerate() {
        let name = format!("master-{}", index + 1);
        let master_args = certificates.flags(&name, common(&name, *port));
        services.push(spawn(&name, &master_binary, master_args, &[], &logs, &args.log_level)?);
    }
    let agent_binary = binary("marina-agent")?;
    for (index, port) in agent_ports.iter().enumerate() {
        let name = format!("agent-{}", index + 1);
        let mut agent_args = common(&name, *port);
        agent_args.extend(["--runtime".into(), args.runtime.clone()]);
        let agent_args = certificates.flags(&name, agent_args);
        services.push(spawn(&name, &agent_binary, agent_args, &[], &logs, &args.log_level)?);
    }
    let gateway_binary = binary("marina-gateway")?;
    let mut gateway_env: Vec<(String, String)> = args
        .http_credentials
        .iter()
        .map(|credentials| ("MARINA_GATEWAY_AUTH__HTTP_CREDENTIALS".to_owned(), credentials.clone()))
        .collect();
    // REST in plain `http://` on loopback, as the seed's curl calls it; the gateways' own
    // links (coord, masters, each other) stay mutual TLS.
    gateway_env.push(("MARINA_GATEWAY_TLS__ACCEPT_PLAINTEXT".to_owned(), "true".to_owned()));
    for (index, port) in gateway_ports.iter().enumerate() {
        let name = format!("gateway-{}", index + 1);
        let gateway_args = certificates.flags(&name, common(&name, *port));
        services.push(spawn(&name, &gateway_binary, gateway_args, &gateway_env, &logs, &args.log_level)?);
    }

    let commands: Vec<String> = services.iter().map(|s| format!("{}: {}", s.name, s.command.join(" "))).collect();
    std::fs::write(logs.join("commands.txt"), commands.join("\n") + "\n")?;
    let endpoints = json!({
        "data_dir": data_dir,
        "coord": coord_url.to_string(),
        "masters": master_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>(),
        "agents": agent_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>(),
        "gateways": gateway_ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect::<Vec<_>>(),
        "gateway_grpc": gateway_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>(),
        "tls": tls_dir,
    });
    std::fs::write(data_dir.join("endpoints.json"), serde_json::to_vec_pretty(&endpoints)?)?;
    save_credentials(&data_dir, args.http_credentials.as_deref())?;
    let join = |ports: &[u16], scheme: &str| {
        ports.iter().map(|p| format!("{scheme}127.0.0.1:{p}")).collect::<Vec<_>>().join("  ")
    };
    println!("Marina dev cluster — data and logs in {}", data_dir.display());
    println!("  gateway REST   {}", join(&gateway_ports, "http://"));
    println!("  gateway gRPC   {}", join(&gateway_ports, ""));
    println!("  masters        {}", join(&master_ports, ""));
    println!("  agents         {} (runtime: {})", join(&agent_ports, ""), args.runtime);
    println!("  coord          {coord_url}");
    println!(
        "  mutual TLS     CA {}/ca.pem; `marina coord` calls as {}/operator.pem",
        tls_dir.display(),
        tls_dir.display()
    );

    // One listener for the whole run, so no Ctrl-C falls between two of them.
    let mut interrupted = std::pin::pin!(marina_daemon::shutdown::signal());
    let outcome = tokio::select! {
        ready = wait_ready(&coord_url, &operator, &gateway_ports, args.agents, args.http_credentials.as_deref()) => ready.map(|()| true),
        () = &mut interrupted => Ok(false),
    };
    match outcome {
        Ok(true) => {
            // The user's own credentials, on their own terminal; the password stays a placeholder.
            let login = match args.http_credentials.as_deref().and_then(|pair| pair.split_once(':')) {
                Some((user, _)) => format!("-u {user}:PASSWORD "),
                None => String::new(),
            };
            let gateway = format!("http://127.0.0.1:{}", gateway_ports[0]);
            // The CLI reads the gateways and credentials from `marina dev`'s default data
            // dir by itself; another one it must be told of.
            let cli_env = match &args.data_dir {
                None => String::new(),
                Some(_) => format!("MARINA_DATA_DIR={} ", data_dir.display()),
            };
            println!(
                "ready: deploy with `{cli_env}marina app deploy app.json`, or `curl {login}-X POST -H 'Content-Type: application/json' {gateway}/v2/apps -d@app.json`; the web UI is at {gateway}/"
            );
            supervise(&mut services, interrupted).await;
        }
        Ok(false) => {}
        Err(error) => {
            println!("not ready: {error} (see the logs in {})", logs.display());
            supervise(&mut services, interrupted).await;
        }
    }
    println!("stopping (tasks keep running; the next `marina dev` on this data dir re-adopts them)");
    stop(&mut services).await;
    println!("stopped");
    Ok(())
}

/// `<data-dir>/credentials`: the gateways' `user:password`, readable by this user only, for
/// the `marina` CLI to call them with. Removed when the gateways take none.
fn save_credentials(data_dir: &Path, credentials: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = data_dir.join("credentials");
    let _ = std::fs::remove_file(&file);
    if let Some(credentials) = credentials {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut out| out.write_all(credentials.as_bytes()))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// Until Ctrl-C: reports services that exit (killed by hand, say), with how to restart them.
async fn supervise(services: &mut [Service], mut interrupted: std::pin::Pin<&mut impl Future<Output = ()>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = &mut interrupted => return,
            _ = tick.tick() => {}
        }
        for service in services.iter_mut() {
            let Some(child) = service.child.as_mut() else { continue };
            if let Ok(Some(status)) = child.try_wait() {
                println!("{} exited ({status}); to start it again: {}", service.name, service.command.join(" "));
                service.child = None;
            }
        }
    }
}

/// Stops the services tier by tier, each with SIGTERM and up to 10 s to finish: gateways
/// and masters first (they hand leadership over through coord, and the masters tell no
/// agent to do anything on the way out), then agents (their tasks keep running, to be
/// re-adopted next time), and coord last.
async fn stop(services: &mut [Service]) {
    for tier in ["gateway", "master", "agent", "coord"] {
        let members = || services.iter().filter(|service| service_kind(&service.name) == tier);
        for service in members() {
            if let Some(id) = service.child.as_ref().and_then(Child::id) {
                let _ = kill(Pid::from_raw(id as i32), Signal::SIGTERM);
            }
        }
        for service in services.iter_mut().filter(|service| service_kind(&service.name) == tier) {
            if let Some(mut child) = service.child.take()
                && tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err()
            {
                println!("{} did not stop within 10 s: killed", service.name);
                let _ = child.kill().await;
            }
        }
    }
}

/// Coord has a leader, a master leads with every agent registered, a gateway leads and is
/// subscribed to the master.
async fn wait_ready(
    coord_url: &CoordUrl,
    operator: &Arc<Tls>,
    gateways: &[u16],
    agents: usize,
    credentials: Option<&str>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let coord = CoordClient::with_options(
        coord_url,
        marina_coord_client::ClientOptions {
            retry_for: Duration::from_millis(500),
            tls: Some(operator.clone()),
            ..Default::default()
        },
    );
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(operator.http1_client_config(&[Role::Master, Role::Gateway])?)
        .timeout(Duration::from_secs(2))
        .build()?;
    let get = async |url: String| -> Option<serde_json::Value> {
        let mut request = http.get(url);
        if let Some((user, password)) = credentials.and_then(|pair| pair.split_once(':')) {
            request = request.basic_auth(user, Some(password));
        }
        request.send().await.ok()?.json().await.ok()
    };
    let mut reported: Vec<&str> = Vec::new();
    loop {
        let coord_ok = coord.list("/").await.is_ok();
        let master = match coord.list(marina_proto::layout::MASTER_ELECTION_DIR).await {
            Ok(listing) => match listing.children.iter().min() {
                Some(first) => coord
                    .get(&format!("{}/{first}", marina_proto::layout::MASTER_ELECTION_DIR))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|node| marina_daemon::leader::MemberInfo::from_bytes(&node.data)),
                None => None,
            },
            Err(_) => None,
        };
        let state = match &master {
            Some(member) => get(format!("https://{}/master/state", member.address)).await,
            None => None,
        };
        let active = state
            .as_ref()
            .and_then(|s| s["agents"].as_array().map(|a| a.iter().filter(|a| a["status"] == "active").count()))
            .unwrap_or(0);
        let info = get(format!("http://127.0.0.1:{}/v2/info", gateways[0])).await;
        let gateway_ok = info.as_ref().is_some_and(|i| i["elected"] == true && i["frameworkId"].is_string());
        for (name, ok) in [
            ("coord quorum", coord_ok),
            ("master elected", state.as_ref().is_some_and(|s| s["elected"] == true)),
            ("agents registered", active >= agents),
            ("gateway elected", gateway_ok),
        ] {
            if ok && !reported.contains(&name) {
                println!("  ✓ {name}");
                reported.push(name);
            }
        }
        if reported.len() == 4 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The dev cluster's certificates, in `<data-dir>/tls/`: a CA kept across runs (`ca.pem`,
/// `ca-key.pem`), and every process's certificate (plus `operator.pem` for the CLI) issued
/// afresh from it at each start, valid for loopback.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make(dir: &Path, coords: &[u16], masters: &[u16], agents: &[u16], gateways: &[u16]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = if dir.join("ca-key.pem").exists() {
            crate::certs::read_ca(dir)?
        } else {
            let ca = marina_daemon::tls::issue::new_ca(3650)?;
            marina_daemon::tls::issue::write(&dir.join("ca-key.pem"), &ca.key, true)?;
            marina_daemon::tls::issue::write(&dir.join("ca.pem"), &ca.cert, false)?;
            ca
        };
        let mut holders = vec![(Role::Operator, None)];
        for (role, count) in [
            (Role::Coord, coords.len()),
            (Role::Master, masters.len()),
            (Role::Agent, agents.len()),
            (Role::Gateway, gateways.len()),
        ] {
            holders.extend((1..=count).map(|n| (role, Some(n.to_string()))));
        }
        for (role, id) in holders {
            let request = Request { role, id: id.as_deref(), dns: &[], ip: &[], days: 365 };
            crate::certs::issue_into(&ca, &request, dir)?;
        }
        Ok(Certificates { dir: dir.to_owned() })
    }

    /// `args` with the TLS flags of process `name` (`coord-1`: `coord-1.pem`).
    fn flags(&self, name: &str, mut args: Vec<String>) -> Vec<String> {
        let path = |file: String| self.dir.join(file).display().to_string();
        args.extend([
            "--tls-ca".into(),
            path("ca.pem".into()),
            "--tls-cert".into(),
            path(format!("{name}.pem")),
            "--tls-key".into(),
            path(format!("{name}-key.pem")),
        ]);
        args
    }
}
