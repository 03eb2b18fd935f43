//! Network namespaces on a private bridge, for real partitions and link faults (issue 20).
//!
//! A [`Network`] is a set of hosts, each a Linux network namespace with one interface
//! (`eth0`) and one address in a private /24, all plugged into a bridge that lives in a
//! namespace of its own (the "switch"):
//!
//! ```text
//!   {name}-h0: eth0 10.203.x.1 ──veth── h0 ┐
//!   {name}-h1: eth0 10.203.x.2 ──veth── h1 ├─ br0   ({name}-sw, the switch namespace)
//!   {name}-h2: eth0 10.203.x.3 ──veth── h2 ┘ (obs ── mno… 10.203.x.254 in the test's own
//!                                              namespace, only with an observer)
//! ```
//!
//! Hosts reach each other and nothing else: no default route, no NAT, no link to the test's
//! namespace unless asked for ([`Network::create_with_observer`]). Every host may bind the
//! same port on its own address ([`Host::address`]), as real machines would.
//!
//! Faults are installed where a real network would suffer them, so the processes' own
//! stacks see nothing but missing or late packets (a drop in the sender's own OUTPUT hook
//! would instead fail its UDP sends with `EPERM`):
//! - partitions and loss: nftables tables of their own (`bridge marina_chaos_<id>`) on the
//!   switch's forward hook, matched by bridge port, so everything between the cut hosts
//!   goes (IPv4, ARP, IPv6);
//! - delay: on the host's egress (`eth0`), with `tc netem` where the kernel has it and
//!   otherwise with an NFQUEUE rule (iptables, in the host's namespace) and a small Python
//!   helper that holds each packet for the delay before accepting it ([`DelayMethod`]).
//!
//! Each fault returns a [`Fault`] guard: healed when dropped, by [`Fault::heal`], or, if
//! [`Fault::keep`] was called, by [`Network::heal_all`] or the network's drop. Faults
//! overlap freely (a partition while another host is slow; two partitions sharing a bridge
//! node); a second delay on a host replaces the first.
//!
//! Processes run inside a host with [`Host::command`] (or [`Host::exec_args`] for
//! [`crate::TestProcess::spawn`]): `nsenter --net=/run/netns/<ns> -- program …`. nsenter
//! enters the namespace and execs the program in place, so the child's pid is the
//! program's own: SIGKILL, SIGSTOP and SIGCONT sent to it reach the real program. (`ip
//! netns exec` would also exec in place, but it gives the program a private mount
//! namespace with a fresh /sys, hiding /sys/fs/cgroup; nsenter changes nothing but the
//! network.) Setting the namespace in a `pre_exec` hook would need `unsafe` and nix's
//! `sched` feature; nsenter needs neither.
//!
//! Dropping the [`Network`] SIGKILLs whatever still runs in its namespaces, then deletes
//! them (which removes their veths and the bridge), also while unwinding from a panic.
//! Leftovers of runs that died without dropping (SIGKILL, a timeout) carry their pid in
//! their names; [`cleanup_stale`] (which [`Network::create`] calls for its prefix) removes
//! those whose pid is gone.
//!
//! All calls are synchronous and take milliseconds (an `ip`, `nft` or `tc` process each);
//! call them from async tests directly or through `spawn_blocking`.
//!
//! Outside its namespaces a network touches nothing but `/run/marina-netns.lock` (which
//! serialises subnet choices between test processes) and, with an observer, its one
//! interface and route.
//!
//! Needs root, iproute2 (`ip`), util-linux `nsenter` and `nft`; delay without netem also
//! needs `iptables` and `python3`. Tests check [`available`] first and skip, saying why,
//! where namespaces cannot be made, unless `MARINA_NETNS_REQUIRED=1` (then they fail).
//! `MARINA_NETNS_DELAY=netem|nfqueue` forces a delay method.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Host subnets are 10.203.<x>.0/24, x chosen free of the test machine's own addresses and
/// routes (and of other live networks' observers).
const SUBNET_BASE: [u8; 2] = [10, 203];
/// The bridge, inside the switch namespace.
const BRIDGE: &str = "br0";
/// Every host's one interface, inside its namespace.
const HOST_INTERFACE: &str = "eth0";
/// The observer's bridge port, inside the switch namespace.
const OBSERVER_PORT: &str = "obs";
/// The observer's last octet; hosts have 1..=250.
const OBSERVER_OCTET: u8 = 254;
const MAX_HOSTS: usize = 250;
/// The observer's interface in the test's namespace: `mno<pid hex>-<counter hex>` (≤ 15).
const OBSERVER_INTERFACE_PREFIX: &str = "mno";
/// nftables tables of faults, in the switch namespace: `bridge marina_chaos_<id>`.
const TABLE_PREFIX: &str = "marina_chaos_";
/// Serialises the choice of subnets across test processes.
const LOCK_FILE: &str = "/run/marina-netns.lock";
const NETNS_DIR: &str = "/run/netns";
const REQUIRED_ENV: &str = "MARINA_NETNS_REQUIRED";
const DELAY_ENV: &str = "MARINA_NETNS_DELAY";
const PROBE_PREFIX: &str = "marina-probe";

/// Whether real network namespaces can be made here (root, the tools, and a trial
/// namespace with a bridge and an nftables table). When not, prints why, for the test to
/// return early; panics instead if `MARINA_NETNS_REQUIRED` is set (CI).
pub fn available() -> bool {
    let Some(reason) = unavailable_reason() else { return true };
    let required = std::env::var(REQUIRED_ENV).is_ok_and(|value| !value.is_empty() && value != "0");
    assert!(!required, "{REQUIRED_ENV} is set but network namespaces are unavailable: {reason}");
    eprintln!("skipping: network namespaces are unavailable here ({reason}); {REQUIRED_ENV}=1 fails instead");
    false
}

/// Why network namespaces cannot be made here, if they cannot (checked once per process).
pub fn unavailable_reason() -> Option<String> {
    static CHECK: OnceLock<Option<String>> = OnceLock::new();
    CHECK.get_or_init(check_available).clone()
}

fn check_available() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    if let Some(missing) = ["ip", "nsenter", "nft"].into_iter().find(|name| find_tool(name).is_none()) {
        return Some(format!("`{missing}` is not installed"));
    }
    let _ = cleanup_stale(PROBE_PREFIX);
    let name = format!("{PROBE_PREFIX}-{}-{}-sw", std::process::id(), next_counter());
    let result = (|| -> Result<()> {
        run(ip().args(["netns", "add", &name]), None)?;
        run(ip().args(["-n", &name, "link", "add", BRIDGE, "type", "bridge"]), None)?;
        run(in_namespace(&name, tool("nft")).args(["list", "tables"]), None)?;
        Ok(())
    })();
    remove_namespace(&name);
    result.err().map(|error| format!("{error:#}"))
}

/// How [`Network::delay`] delays packets on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DelayMethod {
    /// `tc qdisc replace dev eth0 root netem delay D J` in the host's namespace.
    Netem,
    /// The kernel has no netem (`sch_netem`): an iptables rule in the host's namespace
    /// (`OUTPUT -o eth0 -j NFQUEUE --queue-bypass`) hands each outgoing packet to a Python
    /// helper in that namespace, which accepts it after the delay (± uniform jitter).
    /// Should the helper die, packets pass undelayed (bypass).
    Nfqueue,
}

/// One host of a [`Network`]: a network namespace with `eth0` on the bridge.
#[derive(Clone, Debug)]
pub struct Host {
    index: usize,
    namespace: String,
    address: Ipv4Addr,
}

impl Host {
    /// Its position in [`Network::hosts`], as fault methods name it.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its address, on `eth0` in its namespace (in the network's /24).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// `address:port`, e.g. for a `--listen` flag.
    pub fn socket_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.address, port))
    }

    /// The network namespace's name (`ip netns list`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `/run/netns/<namespace>`.
    pub fn namespace_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.namespace)
    }

    /// A command running `program` inside this host's namespace (via nsenter, which execs
    /// it in place: the child's pid is the program's, and signals reach it directly).
    pub fn command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        tokio::process::Command::from(self.std_command(program))
    }

    /// [`Host::command`] for std's `Command`.
    pub fn std_command(&self, program: impl AsRef<OsStr>) -> Command {
        in_namespace(&self.namespace, program)
    }

    /// The program and arguments that run `program args…` inside this host, for APIs that
    /// take both (such as [`crate::TestProcess::spawn`]).
    pub fn exec_args(&self, program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
        let mut wrapped = vec![format!("--net={}", self.namespace_path().display()), "--".into()];
        wrapped.push(program.to_string_lossy().into_owned());
        wrapped.extend(args.iter().cloned());
        (tool("nsenter"), wrapped)
    }

    fn port(&self) -> String {
        format!("h{}", self.index)
    }
}

/// Hosts on a bridge, each in its own network namespace; see the module docs. Deletes
/// everything it made when dropped.
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    switch: String,
    hosts: Vec<Host>,
    subnet: Ipv4Addr,
    observer: Option<Observer>,
    state: Mutex<State>,
}

struct Observer {
    interface: String,
    address: Ipv4Addr,
}

#[derive(Default)]
struct State {
    next_fault: u64,
    /// Faults not yet healed, by id.
    active: BTreeMap<u64, Active>,
    /// The fault whose delay each delayed host has now.
    delays: BTreeMap<usize, u64>,
    /// NFQUEUE delay helpers, started on a host's first delay and kept until the end.
    helpers: BTreeMap<usize, DelayHelper>,
    torn_down: bool,
}

struct Active {
    description: String,
    kind: ActiveKind,
}

enum ActiveKind {
    /// `bridge marina_chaos_<id>` in the switch.
    Table,
    Delay {
        host: usize,
    },
}

impl Network {
    /// `hosts` hosts on a new bridge, all namespaces named `{prefix}-{pid}-{counter}-…`
    /// (`prefix`: letters, digits, `_` and `-`, at most 32). First removes leftovers of
    /// dead runs with the same prefix ([`cleanup_stale`]).
    pub fn create(prefix: &str, hosts: usize) -> Result<Self> {
        Self::build(prefix, hosts, false)
    }

    /// [`Network::create`], plus a veth from the bridge into the test's own namespace with
    /// the address [`Network::observer_address`], so the test process itself reaches every
    /// host directly (clients, probes). This is the one change to the test's namespace (an
    /// interface and its /24 route, removed on drop). The observer is never part of a
    /// partition: like a Jepsen control node it sees every host, though a host's loss and
    /// delay apply to its traffic with the observer too.
    pub fn create_with_observer(prefix: &str, hosts: usize) -> Result<Self> {
        Self::build(prefix, hosts, true)
    }

    fn build(prefix: &str, count: usize, observer: bool) -> Result<Self> {
        ensure!(
            !prefix.is_empty()
                && prefix.len() <= 32
                && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "network prefix {prefix:?}: want 1 to 32 letters, digits, '_' or '-'"
        );
        ensure!((1..=MAX_HOSTS).contains(&count), "a network has 1 to {MAX_HOSTS} hosts, not {count}");
        if let Err(error) = cleanup_stale(prefix) {
            eprintln!("removing stale {prefix} namespaces: {error:#}");
        }
        let pid = std::process::id();
        let counter = next_counter();
        let name = format!("{prefix}-{pid}-{counter}");
        // Held until the observer's address exists, so that a parallel test sees it.
        let lock = lock_subnets()?;
        let subnet = pick_subnet(pid, counter)?;
        let [a, b, c, _] = subnet.octets();
        let hosts = (0..count)
            .map(|index| Host {
                index,
                namespace: format!("{name}-h{index}"),
                address: Ipv4Addr::new(a, b, c, index as u8 + 1),
            })
            .collect();
        let observer = observer.then(|| Observer {
            interface: format!("{OBSERVER_INTERFACE_PREFIX}{pid:x}-{:x}", counter & 0xffff),
            address: Ipv4Addr::new(a, b, c, OBSERVER_OCTET),
        });
        let switch = format!("{name}-sw");
        let inner = Inner { name, switch, hosts, subnet, observer, state: Mutex::default() };
        // From here on, a failure drops `network`, which deletes whatever was made.
        let network = Network { inner: Arc::new(inner) };
        network.set_up().with_context(|| format!("creating network {}", network.inner.name))?;
        drop(lock);
        Ok(network)
    }

    fn set_up(&self) -> Result<()> {
        let switch = self.inner.switch.as_str();
        run(ip().args(["netns", "add", switch]), None)?;
        run(ip().args(["-n", switch, "link", "add", BRIDGE, "type", "bridge"]), None)?;
        run(ip().args(["-n", switch, "link", "set", BRIDGE, "up"]), None)?;
        for host in &self.inner.hosts {
            let (namespace, port) = (host.namespace.as_str(), host.port());
            let address = format!("{}/24", host.address);
            run(ip().args(["netns", "add", namespace]), None)?;
            run(
                ip().args(["-n", switch, "link", "add", &port, "type", "veth"]).args([
                    "peer",
                    "name",
                    HOST_INTERFACE,
                    "netns",
                    namespace,
                ]),
                None,
            )?;
            run(ip().args(["-n", switch, "link", "set", &port, "master", BRIDGE, "up"]), None)?;
            run(ip().args(["-n", namespace, "addr", "add", &address, "dev", HOST_INTERFACE]), None)?;
            run(ip().args(["-n", namespace, "link", "set", HOST_INTERFACE, "up"]), None)?;
            run(ip().args(["-n", namespace, "link", "set", "lo", "up"]), None)?;
        }
        if let Some(observer) = &self.inner.observer {
            let interface = observer.interface.as_str();
            let address = format!("{}/24", observer.address);
            run(
                ip().args(["link", "add", interface, "type", "veth"]).args([
                    "peer",
                    "name",
                    OBSERVER_PORT,
                    "netns",
                    switch,
                ]),
                None,
            )?;
            run(ip().args(["-n", switch, "link", "set", OBSERVER_PORT, "master", BRIDGE, "up"]), None)?;
            run(ip().args(["addr", "add", &address, "dev", interface]), None)?;
            run(ip().args(["link", "set", interface, "up"]), None)?;
        }
        self.wait_forwarding()
    }

    /// A bridge port forwards once the bridge hears that its veth has carrier, which the
    /// kernel reports through linkwatch, rate-limited to once a second: until then the
    /// port drops everything. Waits for every port to forward.
    fn wait_forwarding(&self) -> Result<()> {
        let ports = self.inner.hosts.len() + usize::from(self.inner.observer.is_some());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let links = run(ip().args(["-n", &self.inner.switch, "-d", "-o", "link", "show", "master", BRIDGE]), None)?;
            let forwarding = links.lines().filter(|line| line.contains("bridge_slave state forwarding ")).count();
            if forwarding == ports {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "bridge ports not all forwarding after 10 s:\n{links}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `{prefix}-{pid}-{counter}`: every namespace of this network starts with it.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn hosts(&self) -> &[Host] {
        &self.inner.hosts
    }

    /// Host `index`; panics if there is none.
    pub fn host(&self, index: usize) -> &Host {
        &self.inner.hosts[index]
    }

    /// The hosts' /24 (its network address).
    pub fn subnet(&self) -> Ipv4Addr {
        self.inner.subnet
    }

    /// The switch namespace, which holds the bridge and the fault tables.
    pub fn switch_namespace(&self) -> &str {
        &self.inner.switch
    }

    /// The test process's own address on the bridge, with [`Network::create_with_observer`].
    pub fn observer_address(&self) -> Option<Ipv4Addr> {
        self.inner.observer.as_ref().map(|observer| observer.address)
    }

    /// The observer's interface in the test's namespace, with
    /// [`Network::create_with_observer`].
    pub fn observer_interface(&self) -> Option<&str> {
        self.inner.observer.as_ref().map(|observer| observer.interface.as_str())
    }

    /// How [`Network::delay`] works here (probed once per process).
    pub fn delay_method(&self) -> DelayMethod {
        delay_method(&self.inner.switch)
    }

    /// Drops every packet between the hosts of `a` and those of `b`, both ways. Hosts in
    /// neither keep seeing both sides: `partition(&[0], &[1])` in a three-host network
    /// leaves host 2 a bridge between 0 and 1.
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<Fault> {
        self.check_groups(a, b)?;
        let (a_ports, b_ports) = (self.ports(a), self.ports(b));
        let rules = format!("iifname {a_ports} oifname {b_ports} drop\niifname {b_ports} oifname {a_ports} drop");
        self.install_table(format!("partition {a:?} | {b:?}"), &rules)
    }

    /// Drops every IP packet from the hosts of `from` to those of `to`, one way only (ARP
    /// passes, or no address would resolve either way). TCP needs both ways, so it fails
    /// both ways too; datagrams from `to` still arrive.
    pub fn partition_one_way(&self, from: &[usize], to: &[usize]) -> Result<Fault> {
        self.check_groups(from, to)?;
        let rules = format!("iifname {} oifname {} ether type != arp drop", self.ports(from), self.ports(to));
        self.install_table(format!("partition {from:?} -> {to:?}"), &rules)
    }

    /// Cuts `group` off from every other host (a minority, a majority, a leader alone).
    pub fn split(&self, group: &[usize]) -> Result<Fault> {
        let rest: Vec<usize> = (0..self.inner.hosts.len()).filter(|index| !group.contains(index)).collect();
        self.partition(group, &rest)
    }

    /// Cuts `host` off from every other host.
    pub fn isolate(&self, host: usize) -> Result<Fault> {
        self.split(&[host])
    }

    /// Drops each packet to or from `host` with probability `percent` (both ways, so a
    /// round trip is lost more often). Overlapping losses compound.
    pub fn loss(&self, host: usize, percent: f64) -> Result<Fault> {
        self.check_host(host)?;
        ensure!(percent > 0.0 && percent <= 100.0, "loss of {percent}%: want more than 0 and at most 100");
        let port = &self.inner.hosts[host].port();
        let threshold = (percent * 100.0).round() as u32;
        let rules = format!(
            "iifname \"{port}\" numgen random mod 10000 < {threshold} drop\n\
             oifname \"{port}\" numgen random mod 10000 < {threshold} drop"
        );
        self.install_table(format!("loss {percent}% at {host}"), &rules)
    }

    /// Delays every packet `host` sends by `delay` ± `jitter` (uniform; packets may then
    /// reorder), so each round trip with it takes `delay` longer. Replaces an earlier delay
    /// on that host (whose guard then has nothing left to heal).
    pub fn delay(&self, host: usize, delay: Duration, jitter: Duration) -> Result<Fault> {
        self.check_host(host)?;
        ensure!(!delay.is_zero(), "a delay of zero");
        let method = self.delay_method();
        let namespace = self.inner.hosts[host].namespace.clone();
        let description = format!("delay {delay:?}±{jitter:?} at {host}");
        let mut state = self.inner.state();
        ensure!(!state.torn_down, "network {} is gone", self.inner.name);
        match method {
            DelayMethod::Netem => {
                let mut tc = in_namespace(&namespace, tool("tc"));
                tc.args(["qdisc", "replace", "dev", HOST_INTERFACE, "root", "netem", "delay"]);
                tc.arg(format!("{}us", delay.as_micros()));
                if !jitter.is_zero() {
                    tc.arg(format!("{}us", jitter.as_micros()));
                }
                run(&mut tc, None).with_context(|| description.clone())?;
            }
            DelayMethod::Nfqueue => {
                let helper = match state.helpers.entry(host) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        entry.insert(DelayHelper::start(&namespace).with_context(|| description.clone())?)
                    }
                };
                if let Err(error) = helper.set(delay, jitter) {
                    // It is dead (and reaped): the next delay starts another.
                    state.helpers.remove(&host);
                    return Err(error.context(description));
                }
                add_queue_rule(&namespace).with_context(|| description.clone())?;
            }
        }
        let id = state.next_id();
        if let Some(replaced) = state.delays.insert(host, id) {
            state.active.remove(&replaced);
        }
        state.active.insert(id, Active { description: description.clone(), kind: ActiveKind::Delay { host } });
        Ok(Fault { inner: Arc::clone(&self.inner), id, description, armed: true })
    }

    /// Heals every fault, including kept ones; their guards then have nothing to heal.
    pub fn heal_all(&self) -> Result<()> {
        let mut state = self.inner.state();
        if state.torn_down {
            return Ok(());
        }
        let mut errors = Vec::new();
        state.active.clear();
        // Every fault table in the switch, whatever this process remembers.
        match run(in_namespace(&self.inner.switch, tool("nft")).args(["list", "tables"]), None) {
            Ok(tables) => {
                for line in tables.lines() {
                    if let Some(table) = line.strip_prefix("table bridge ").filter(|t| t.starts_with(TABLE_PREFIX)) {
                        errors.extend(self.inner.delete_table(table).err());
                    }
                }
            }
            Err(error) => errors.push(error),
        }
        for host in std::mem::take(&mut state.delays).into_keys() {
            errors.extend(self.inner.clear_delay(&mut state, host).err());
        }
        if errors.is_empty() {
            return Ok(());
        }
        let errors: Vec<String> = errors.iter().map(|error| format!("{error:#}")).collect();
        bail!("healing all faults: {}", errors.join("; "))
    }

    /// The faults now in force, described, oldest first.
    pub fn active_faults(&self) -> Vec<String> {
        self.inner.state().active.values().map(|active| active.description.clone()).collect()
    }

    fn check_host(&self, host: usize) -> Result<()> {
        ensure!(host < self.inner.hosts.len(), "no host {host} in {} hosts", self.inner.hosts.len());
        Ok(())
    }

    fn check_groups(&self, a: &[usize], b: &[usize]) -> Result<()> {
        ensure!(!a.is_empty() && !b.is_empty(), "a partition between {a:?} and {b:?}: both sides need hosts");
        for &host in a.iter().chain(b) {
            self.check_host(host)?;
        }
        ensure!(!a.iter().any(|host| b.contains(host)), "a partition between {a:?} and {b:?}: the sides overlap");
        Ok(())
    }

    /// An nftables set of the hosts' bridge ports: `{ "h0", "h2" }`.
    fn ports(&self, hosts: &[usize]) -> String {
        let ports: Vec<String> = hosts.iter().map(|&host| format!("\"{}\"", self.inner.hosts[host].port())).collect();
        format!("{{ {} }}", ports.join(", "))
    }

    fn install_table(&self, description: String, rules: &str) -> Result<Fault> {
        let mut state = self.inner.state();
        ensure!(!state.torn_down, "network {} is gone", self.inner.name);
        let id = state.next_id();
        let table = format!("{TABLE_PREFIX}{id}");
        // Atomic, and idempotent: the add-then-delete empties a table left by a retry.
        let script = format!(
            "add table bridge {table}\ndelete table bridge {table}\ntable bridge {table} {{\n\
             \tchain forward {{\n\t\ttype filter hook forward priority 0; policy accept;\n{rules}\n\t}}\n}}\n"
        );
        run(in_namespace(&self.inner.switch, tool("nft")).args(["-f", "-"]), Some(&script))
            .with_context(|| format!("installing {description}"))?;
        state.active.insert(id, Active { description: description.clone(), kind: ActiveKind::Table });
        Ok(Fault { inner: Arc::clone(&self.inner), id, description, armed: true })
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("name", &self.inner.name)
            .field("subnet", &self.inner.subnet)
            .field("hosts", &self.inner.hosts)
            .field("observer", &self.observer_address())
            .finish()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.inner.tear_down();
    }
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_fault += 1;
        self.next_fault
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn heal(&self, id: u64) -> Result<()> {
        let mut state = self.state();
        if state.torn_down {
            return Ok(());
        }
        // Already healed, replaced, or cleared by heal_all: nothing to do.
        let Some(active) = state.active.remove(&id) else { return Ok(()) };
        let result = match active.kind {
            ActiveKind::Table => self.delete_table(&format!("{TABLE_PREFIX}{id}")),
            ActiveKind::Delay { host } => {
                state.delays.remove(&host);
                self.clear_delay(&mut state, host)
            }
        };
        if let Err(error) = result {
            let description = active.description.clone();
            if let ActiveKind::Delay { host } = active.kind {
                state.delays.insert(host, id);
            }
            state.active.insert(id, active);
            return Err(error.context(format!("healing {description}")));
        }
        Ok(())
    }

    fn delete_table(&self, table: &str) -> Result<()> {
        match run(in_namespace(&self.switch, tool("nft")).args(["delete", "table", "bridge", table]), None) {
            Err(error) if format!("{error:#}").contains("No such file or directory") => Ok(()),
            result => result.map(drop),
        }
    }

    fn clear_delay(&self, state: &mut State, host: usize) -> Result<()> {
        let namespace = &self.hosts[host].namespace;
        match state.helpers.get_mut(&host) {
            Some(helper) => {
                remove_queue_rule(namespace)?;
                helper.set(Duration::ZERO, Duration::ZERO)
            }
            None => {
                let deleted = run(
                    in_namespace(namespace, tool("tc")).args(["qdisc", "del", "dev", HOST_INTERFACE, "root"]),
                    None,
                );
                match deleted {
                    Ok(_) => Ok(()),
                    Err(error) => {
                        let qdiscs = run(
                            in_namespace(namespace, tool("tc")).args(["qdisc", "show", "dev", HOST_INTERFACE]),
                            None,
                        )?;
                        if qdiscs.contains("netem") { Err(error) } else { Ok(()) }
                    }
                }
            }
        }
    }

    fn tear_down(&self) {
        let helpers = {
            let mut state = self.state();
            state.torn_down = true;
            state.active.clear();
            state.delays.clear();
            std::mem::take(&mut state.helpers)
        };
        drop(helpers);
        if let Some(observer) = &self.observer {
            let _ = run(ip().args(["link", "delete", &observer.interface]), None);
        }
        for host in &self.hosts {
            remove_namespace(&host.namespace);
        }
        remove_namespace(&self.switch);
    }
}

/// A fault in force: healed when dropped (errors printed), with [`Fault::heal`] (errors
/// returned), or never by itself after [`Fault::keep`].
#[must_use = "a fault is healed as soon as its guard drops; `keep` it to leave it in force"]
pub struct Fault {
    inner: Arc<Inner>,
    id: u64,
    description: String,
    armed: bool,
}

impl Fault {
    /// E.g. `partition [0] | [1, 2]`, `delay 200ms±0ns at 1`, `loss 30% at 2`.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Removes the fault now. Idempotent with [`Network::heal_all`]; a replaced delay has
    /// nothing left to heal.
    pub fn heal(mut self) -> Result<()> {
        self.armed = false;
        self.inner.heal(self.id)
    }

    /// Leaves the fault in force until [`Network::heal_all`] or the network's drop.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fault").field("id", &self.id).field("description", &self.description).finish()
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        if self.armed
            && let Err(error) = self.inner.heal(self.id)
        {
            eprintln!("{error:#}");
        }
    }
}

/// Removes namespaces (and the observer interfaces) that earlier runs with `prefix` left
/// behind: those whose pid (in their name) no longer exists. SIGKILLs processes still
/// inside them first. Returns how many namespaces went.
pub fn cleanup_stale(prefix: &str) -> Result<usize> {
    let own = std::process::id();
    let dead = |pid: u32| pid != own && !Path::new(&format!("/proc/{pid}")).exists();
    let mut removed = 0;
    let namespaces = run(ip().args(["netns", "list"]), None)?;
    for name in namespaces.lines().filter_map(|line| line.split_whitespace().next()) {
        if stale_owner(prefix, name).is_some_and(dead) {
            remove_namespace(name);
            removed += 1;
        }
    }
    // Observer ends normally go with their switch namespace; these are strays.
    let links = run(ip().args(["-o", "link", "show"]), None)?;
    for link in links.lines().filter_map(|line| line.split(": ").nth(1)) {
        let link = link.split('@').next().unwrap_or(link);
        let owner = link.strip_prefix(OBSERVER_INTERFACE_PREFIX).and_then(|rest| rest.split_once('-')).and_then(
            |(pid, counter)| {
                u32::from_str_radix(counter, 16).ok()?;
                u32::from_str_radix(pid, 16).ok()
            },
        );
        if owner.is_some_and(dead) {
            let _ = run(ip().args(["link", "delete", link]), None);
        }
    }
    Ok(removed)
}

/// The pid in `{prefix}-{pid}-{counter}-{sw|h<i>}`, if `name` is one of ours.
fn stale_owner(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let mut parts = rest.split('-');
    let (pid, counter, role, extra) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    let host = role.strip_prefix('h').is_some_and(|index| index.parse::<usize>().is_ok());
    if extra.is_some() || counter.parse::<u32>().is_err() || !(role == "sw" || host) {
        return None;
    }
    pid.parse().ok()
}

/// SIGKILLs what runs in `namespace` and deletes it (its veths and bridge go with it).
fn remove_namespace(namespace: &str) {
    if let Ok(pids) = run(ip().args(["netns", "pids", namespace]), None) {
        for pid in pids.split_whitespace().filter_map(|pid| pid.parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if let Err(error) = run(ip().args(["netns", "delete", namespace]), None)
        && Path::new(NETNS_DIR).join(namespace).exists()
    {
        eprintln!("deleting network namespace {namespace}: {error:#}");
    }
}

fn next_counter() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn lock_subnets() -> Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .with_context(|| format!("opening {LOCK_FILE}"))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, error)| anyhow!("locking {LOCK_FILE}: {error}"))
}

/// A /24 in 10.203.0.0/16 that no address or route of the test's namespace overlaps.
fn pick_subnet(pid: u32, counter: u32) -> Result<Ipv4Addr> {
    let mut text = run(ip().args(["-4", "-o", "addr", "show"]), None)?;
    text += &run(ip().args(["-4", "route", "show", "table", "all"]), None)?;
    let used: Vec<(u32, u32)> = text
        .split_whitespace()
        .filter_map(|token| {
            let (address, length) = token.split_once('/').unwrap_or((token, "32"));
            let length: u32 = length.parse().ok().filter(|length| *length <= 32)?;
            Some((u32::from(address.parse::<Ipv4Addr>().ok()?), length))
        })
        .collect();
    let overlaps = |net: u32| {
        used.iter().any(|&(address, length)| {
            let mask = u32::MAX.checked_shl(32 - length.min(24)).unwrap_or(0);
            net & mask == address & mask
        })
    };
    let start = pid.wrapping_mul(7).wrapping_add(counter);
    (0..256u32)
        .map(|step| Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], (start.wrapping_add(step) % 256) as u8, 0))
        .find(|net| !overlaps(u32::from(*net)))
        .ok_or_else(|| anyhow!("no free /24 left in {}.{}.0.0/16", SUBNET_BASE[0], SUBNET_BASE[1]))
}

fn delay_method(probe_namespace: &str) -> DelayMethod {
    static METHOD: Mutex<Option<DelayMethod>> = Mutex::new(None);
    let mut method = METHOD.lock().unwrap_or_else(PoisonError::into_inner);
    *method.get_or_insert_with(|| match std::env::var(DELAY_ENV).as_deref() {
        Ok("netem") => DelayMethod::Netem,
        Ok("nfqueue") => DelayMethod::Nfqueue,
        _ => {
            // On the switch's loopback, which carries nothing.
            let tc = || in_namespace(probe_namespace, tool("tc"));
            match run(tc().args(["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]), None) {
                Ok(_) => {
                    let _ = run(tc().args(["qdisc", "del", "dev", "lo", "root"]), None);
                    DelayMethod::Netem
                }
                Err(error) => {
                    eprintln!("netem unavailable, delaying with NFQUEUE instead: {error:#}");
                    DelayMethod::Nfqueue
                }
            }
        }
    })
}

const QUEUE_RULE: [&str; 8] = ["OUTPUT", "-o", HOST_INTERFACE, "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"];

fn iptables(namespace: &str, action: &str) -> Command {
    let mut command = in_namespace(namespace, tool("iptables"));
    command.args(["-w", action]).args(QUEUE_RULE);
    command
}

fn add_queue_rule(namespace: &str) -> Result<()> {
    if run(&mut iptables(namespace, "-C"), None).is_err() {
        run(&mut iptables(namespace, "-A"), None)?;
    }
    Ok(())
}

fn remove_queue_rule(namespace: &str) -> Result<()> {
    while run(&mut iptables(namespace, "-C"), None).is_ok() {
        run(&mut iptables(namespace, "-D"), None)?;
    }
    Ok(())
}

/// The NFQUEUE delay helper (Python, standard library only, speaking nfnetlink_queue
/// itself): binds queue `argv[1]`, says `ready`, then holds each queued packet for the
/// current delay ± jitter before accepting it. Each stdin line `DELAY_MS JITTER_MS` sets
/// them (answered `ok`); at stdin's end (the test gone) it accepts what it holds and exits.
const DELAY_HELPER: &str = r#"
import heapq, os, random, select, socket, struct, sys, time

queue = int(sys.argv[1])
NETLINK_NETFILTER, SOL_NETLINK, NETLINK_NO_ENOBUFS, SO_RCVBUFFORCE = 12, 270, 5, 33
MSG_PACKET, MSG_VERDICT, MSG_CONFIG = 3 << 8, 3 << 8 | 1, 3 << 8 | 2
NLM_F_REQUEST, NLM_F_ACK, NLMSG_ERROR, NF_ACCEPT = 1, 4, 2, 1

sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
try:
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
except OSError:
    pass
sock.bind((0, 0))
seq = 0

def attr(kind, payload):
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)

def send(kind, attrs, flags=NLM_F_REQUEST):
    global seq
    seq += 1
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    sock.send(struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body)

def configure(*attrs):
    send(MSG_CONFIG, attrs, NLM_F_REQUEST | NLM_F_ACK)
    data = sock.recv(65536)
    if struct.unpack_from("=H", data, 4)[0] == NLMSG_ERROR:
        error = struct.unpack_from("=i", data, 16)[0]
        if error:
            sys.exit("configuring nfqueue %d: %s" % (queue, os.strerror(-error)))

configure(attr(1, struct.pack("!BxH", 1, 0)))          # NFQNL_CFG_CMD_BIND
configure(attr(2, struct.pack("!IB", 0, 1)))           # copy metadata only
configure(attr(3, struct.pack("!I", 1 << 16)))         # queue length
configure(attr(4, struct.pack("!I", 1)), attr(5, struct.pack("!I", 1)))  # fail open

def accept(packet_id):
    send(MSG_VERDICT, [attr(2, struct.pack("!II", NF_ACCEPT, packet_id))])

delay = jitter = 0.0
held = []
pending = b""
print("ready", flush=True)
while True:
    now = time.monotonic()
    while held and held[0][0] <= now:
        accept(heapq.heappop(held)[1])
    timeout = max(0.0, held[0][0] - now) if held else None
    readable, _, _ = select.select([sock, 0], [], [], timeout)
    if 0 in readable:
        chunk = os.read(0, 4096)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            delay, jitter = (float(value) / 1000 for value in line.split())
            print("ok", flush=True)
    if sock in readable:
        try:
            data = sock.recv(1 << 20)
        except OSError:
            continue
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if kind == MSG_PACKET:
                position, end = offset + 20, offset + length
                while position + 4 <= end:
                    attr_length, attr_kind = struct.unpack_from("=HH", data, position)
                    if attr_length < 4:
                        break
                    if attr_kind & 0x3FFF == 1:                 # NFQA_PACKET_HDR
                        packet_id = struct.unpack_from("!I", data, position + 4)[0]
                        wait = max(0.0, delay + random.uniform(-jitter, jitter))
                        heapq.heappush(held, (time.monotonic() + wait, packet_id))
                        break
                    position += (attr_length + 3) & ~3
            offset += (length + 3) & ~3
for _, packet_id in held:
    accept(packet_id)
"#;

/// A running [`DELAY_HELPER`] in one host's namespace (queue 0 there).
struct DelayHelper {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl DelayHelper {
    fn start(namespace: &str) -> Result<Self> {
        let mut command = in_namespace(namespace, python3());
        command.args(["-c", DELAY_HELPER, "0"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().with_context(|| format!("starting `{}`", command_line(&command)))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut helper = Self { child, stdin, stdout };
        helper.expect("ready")?;
        Ok(helper)
    }

    fn set(&mut self, delay: Duration, jitter: Duration) -> Result<()> {
        let line = format!("{} {}\n", delay.as_secs_f64() * 1000.0, jitter.as_secs_f64() * 1000.0);
        let stdin = self.stdin.as_mut().context("the delay helper's stdin is closed")?;
        stdin.write_all(line.as_bytes()).and_then(|()| stdin.flush()).context("writing to the delay helper")?;
        self.expect("ok")
    }

    fn expect(&mut self, answer: &str) -> Result<()> {
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line);
        if read.is_ok() && line.trim() == answer {
            return Ok(());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        bail!("the NFQUEUE delay helper answered {line:?} ({read:?}), not {answer:?}: {}", stderr.trim())
    }
}

impl Drop for DelayHelper {
    fn drop(&mut self) {
        // Its stdin's end tells it to release what it holds and exit.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` run in `namespace` by nsenter (which execs it in place).
fn in_namespace(namespace: &str, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(tool("nsenter"));
    command.arg(format!("--net={}", Path::new(NETNS_DIR).join(namespace).display())).arg("--").arg(program);
    command
}

fn ip() -> Command {
    Command::new(tool("ip"))
}

fn python3() -> PathBuf {
    // The system's own, not a pyenv shim (whose start is slow).
    let system = Path::new("/usr/bin/python3");
    if system.is_file() { system.to_owned() } else { tool("python3") }
}

/// `name` on PATH or in the usual sbin directories (root's tools are often off PATH).
fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let standard = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(standard).map(|dir| dir.join(name)).find(|path| path.is_file())
}

fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `command` (feeding it `input`); its stdout, or an error naming the command line,
/// its exit status and its stderr.
fn run(command: &mut Command, input: Option<&str>) -> Result<String> {
    let line = command_line(command);
    command
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("starting `{line}`"))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input.as_bytes()).with_context(|| format!("writing to `{line}`"))?;
    }
    let output = child.wait_with_output().with_context(|| format!("waiting for `{line}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let input = input.map(|input| format!("\ninput:\n{input}")).unwrap_or_default();
        bail!("`{line}` failed ({}): {}{input}", output.status, stderr.trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
