//! Real network faults between processes in their own network namespaces
//! (`marina_tests::netns`): partitions cut exactly the named hosts and heal, delay and loss
//! show on the wire, processes inside take signals directly, and nothing is left behind.
//! Skipped (saying why) where namespaces cannot be made, unless `MARINA_NETNS_REQUIRED=1`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use marina_tests::netns::{self, Network};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const PORT: u16 = 7000;
/// An undelayed connect and echo on a bridge takes well under a millisecond when idle.
const FAST_MS: f64 = 150.0;

/// `serve ADDRESS PORT`: TCP and UDP echo. `tcp ADDRESS PORT TIMEOUT`: connect, echo
/// once, print the milliseconds it took (exit 1 on failure). `udp ADDRESS PORT COUNT`:
/// send COUNT datagrams, print how many came back. `send ADDRESS PORT COUNT`: send COUNT
/// datagrams.
const PROBE: &str = r#"
import socket, sys, threading, time
mode, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "serve":
    tcp = socket.socket()
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((address, port))
    tcp.listen(128)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, port))
    def echo_udp():
        while True:
            data, peer = udp.recvfrom(2048)
            udp.sendto(data, peer)
    def echo_tcp(conn):
        conn.settimeout(10)
        try:
            while data := conn.recv(4096):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
    threading.Thread(target=echo_udp, daemon=True).start()
    print("listening", flush=True)
    while True:
        conn, _ = tcp.accept()
        threading.Thread(target=echo_tcp, args=(conn,), daemon=True).start()
elif mode == "tcp":
    start = time.monotonic()
    try:
        with socket.create_connection((address, port), timeout=float(sys.argv[4])) as conn:
            conn.sendall(b"ping")
            if conn.recv(4) != b"ping":
                sys.exit("no echo")
    except OSError as error:
        sys.exit("failed: %s" % error)
    print((time.monotonic() - start) * 1000)
elif mode == "udp":
    count = int(sys.argv[4])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((address, port))
    echoed = set()
    def collect(timeout):
        sock.settimeout(timeout)
        try:
            echoed.add(sock.recv(64))
        except OSError:
            pass
    for i in range(count):
        sock.send(b"%d" % i)
        time.sleep(0.001)
        collect(0)
    deadline = time.monotonic() + 1
    while len(echoed) < count and time.monotonic() < deadline:
        collect(0.05)
    print(len(echoed))
elif mode == "send":
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(int(sys.argv[4])):
        sock.sendto(b"%d" % i, (address, port))
"#;

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").is_file() { "/usr/bin/python3" } else { "python3" }
}

/// An echo server on `host`'s address; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(network: &Network, host: usize) -> Server {
    let address = network.host(host).address().to_string();
    let mut child = network
        .host(host)
        .std_command(python())
        .args(["-c", PROBE, "serve", &address, &PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the echo server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut line).expect("reading the server");
    assert_eq!(line.trim(), "listening", "the echo server on host {host} did not start");
    Server(child)
}

/// Milliseconds for a TCP connect and one echo from host `from` to host `to`, or why not.
fn tcp(network: &Network, from: usize, to: usize, timeout: Duration) -> Result<f64, String> {
    let address = network.host(to).address().to_string();
    let output = network
        .host(from)
        .std_command(python())
        .args(["-c", PROBE, "tcp", &address, &PORT.to_string(), &timeout.as_secs_f64().to_string()])
        .output()
        .expect("running the TCP probe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("{}{}", stdout.trim(), String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(stdout.trim().parse().expect("milliseconds"))
}

/// How many of `count` UDP datagrams from host `from` came back from host `to`.
fn udp_echoed(network: &Network, from: usize, to: usize, count: usize) -> usize {
    let address = network.host(to).address().to_string();
    let output = network
        .host(from)
        .std_command(python())
        .args(["-c", PROBE, "udp", &address, &PORT.to_string(), &count.to_string()])
        .output()
        .expect("running the UDP probe");
    assert!(output.status.success(), "UDP probe: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("a count")
}

/// How many UDP datagrams host `to` received while host `from` sent it `count` (from its
/// namespace's counters: the echo server there gets them all).
fn udp_received(network: &Network, from: usize, to: usize, count: usize) -> u64 {
    let received = || {
        let output = network.host(to).std_command("cat").arg("/proc/net/snmp").output().expect("cat");
        let snmp = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut udp = snmp.lines().filter(|line| line.starts_with("Udp: "));
        let (names, values) = (udp.next().expect("Udp names"), udp.next().expect("Udp values"));
        let column = names.split_whitespace().position(|name| name == "InDatagrams").expect("InDatagrams");
        values.split_whitespace().nth(column).and_then(|value| value.parse::<u64>().ok()).expect("a count")
    };
    let before = received();
    let address = network.host(to).address().to_string();
    let status = network
        .host(from)
        .std_command(python())
        .args(["-c", PROBE, "send", &address, &PORT.to_string(), &count.to_string()])
        .status()
        .expect("running the UDP sender");
    assert!(status.success(), "UDP sender failed");
    // They cross a local bridge: give the last ones a moment to arrive.
    let deadline = Instant::now() + Duration::from_millis(500);
    while received() - before < count as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    received() - before
}

/// Checks, all at once, that each `(from, to, reachable)` holds: a cut pair fails within
/// the 1 s connect timeout; a reachable one is retried for a while (ARP after a heal).
fn expect_reachability(network: &Network, expected: &[(usize, usize, bool)]) {
    let failures: Vec<String> = std::thread::scope(|scope| {
        let checks: Vec<_> = expected
            .iter()
            .map(|&(from, to, reachable)| {
                scope.spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        let result = tcp(network, from, to, Duration::from_secs(1));
                        match (result, reachable) {
                            (Ok(_), true) | (Err(_), false) => return None,
                            (Ok(ms), false) => return Some(format!("{from} -> {to} connected in {ms:.1} ms")),
                            (Err(error), true) if Instant::now() > deadline => {
                                return Some(format!("{from} -> {to} unreachable: {error}"));
                            }
                            (Err(_), true) => std::thread::sleep(Duration::from_millis(50)),
                        }
                    }
                })
            })
            .collect();
        checks.into_iter().filter_map(|check| check.join().expect("check thread")).collect()
    });
    assert!(failures.is_empty(), "with faults {:?}: {failures:#?}", network.active_faults());
}

/// Every ordered pair of `hosts`, reachable or not as `reachable(a, b)` says.
fn matrix(hosts: usize, reachable: impl Fn(usize, usize) -> bool) -> Vec<(usize, usize, bool)> {
    (0..hosts)
        .flat_map(|a| (0..hosts).filter(move |&b| b != a).map(move |b| (a, b)))
        .map(|(a, b)| (a, b, reachable(a, b)))
        .collect()
}

fn namespaces() -> String {
    let output = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_partition_cuts_exactly_the_named_hosts_and_heals() {
    if !netns::available() {
        return;
    }
    let network = Network::create("nnpart", 3).expect("network");
    let _servers: Vec<Server> = (0..3).map(|host| serve(&network, host)).collect();
    expect_reachability(&network, &matrix(3, |_, _| true));

    // 0 | 1, and host 2 a bridge that sees both.
    let cut = network.partition(&[0], &[1]).expect("partition");
    assert_eq!(network.active_faults(), vec!["partition [0] | [1]"]);
    expect_reachability(&network, &matrix(3, |a, b| a + b != 1));

    cut.heal().expect("heal");
    assert!(network.active_faults().is_empty());
    expect_reachability(&network, &matrix(3, |_, _| true));

    // The leader alone; healed by dropping its guard.
    let alone = network.isolate(1).expect("isolate");
    expect_reachability(&network, &matrix(3, |a, b| a != 1 && b != 1));
    drop(alone);
    expect_reachability(&network, &[(1, 0, true), (2, 1, true)]);
}

#[test]
fn minority_and_majority_splits_overlap_and_heal_one_by_one() {
    if !netns::available() {
        return;
    }
    let network = Network::create("nnsplit", 5).expect("network");
    let _servers: Vec<Server> = (0..5).map(|host| serve(&network, host)).collect();
    let side = |host: usize| host < 2;

    // A minority {0, 1} against the majority {2, 3, 4}.
    let split = network.split(&[0, 1]).expect("split");
    expect_reachability(&network, &matrix(5, |a, b| side(a) == side(b)));

    // Meanwhile host 3 is cut off from everyone, and 2 -> 4 only one way (which TCP,
    // needing both, cannot cross either way; datagrams 4 -> 2 still arrive).
    network.isolate(3).expect("isolate").keep();
    let one_way = network.partition_one_way(&[2], &[4]).expect("one way");
    let cut_one_way = |a, b| (a, b) == (2, 4) || (a, b) == (4, 2);
    expect_reachability(&network, &matrix(5, |a, b| side(a) == side(b) && a != 3 && b != 3 && !cut_one_way(a, b)));
    assert_eq!(network.active_faults().len(), 3);
    assert!(udp_received(&network, 4, 2, 20) >= 20, "datagrams 4 -> 2 lost under a 2 -> 4 cut");
    assert_eq!(udp_received(&network, 2, 4, 20), 0, "datagrams crossed a 2 -> 4 cut");

    // Healing the split leaves the others in force.
    split.heal().expect("heal split");
    drop(one_way);
    expect_reachability(&network, &matrix(5, |a, b| a != 3 && b != 3));

    // heal_all takes the kept one too; healing twice is harmless.
    network.heal_all().expect("heal all");
    network.heal_all().expect("heal all again");
    assert!(network.active_faults().is_empty());
    expect_reachability(&network, &matrix(5, |_, _| true));
}

#[test]
fn delay_slows_round_trips_overlapping_a_partition() {
    if !netns::available() {
        return;
    }
    let network = Network::create("nndelay", 3).expect("network");
    eprintln!("delay method: {:?}", network.delay_method());
    let _servers: Vec<Server> = (0..3).map(|host| serve(&network, host)).collect();
    expect_reachability(&network, &matrix(3, |_, _| true));
    // A delay only ever adds time, so one slow sample proves it; a busy machine can slow
    // any sample, so a fast pair has one of several samples fast.
    let timed = |from, to| tcp(&network, from, to, Duration::from_secs(5)).expect("a round trip");
    let fastest = |from, to| {
        let mut best = f64::INFINITY;
        for _ in 0..10 {
            best = best.min(timed(from, to));
            if best < FAST_MS {
                break;
            }
        }
        best
    };
    let fast = fastest(1, 0);
    assert!(fast < FAST_MS, "an undelayed connect and echo took {fast:.1} ms");

    // Everything host 0 sends waits 200 ms: its SYN-ACK and its echo, 400 ms in all.
    let slow = network.delay(0, Duration::from_millis(200), Duration::ZERO).expect("delay");
    for from in [1, 2] {
        let ms = timed(from, 0);
        assert!(ms >= 300.0, "{from} -> 0 took {ms:.1} ms with 0 delayed 200 ms");
    }
    let ms = fastest(2, 1);
    assert!(ms < FAST_MS, "2 -> 1 took {ms:.1} ms though neither is delayed");

    // A partition between 1 and 2 while 0 is slow: both still reach 0, slowly.
    let cut = network.partition(&[1], &[2]).expect("partition");
    expect_reachability(&network, &[(1, 2, false), (2, 1, false), (1, 0, true), (2, 0, true)]);
    let ms = timed(1, 0);
    assert!(ms >= 300.0, "1 -> 0 took {ms:.1} ms during the partition, 0 delayed 200 ms");
    drop(cut);

    // A second delay replaces the first (with jitter); the first's guard then heals nothing.
    let slower = network.delay(0, Duration::from_millis(400), Duration::from_millis(50)).expect("delay");
    let ms = timed(1, 0);
    assert!(ms >= 650.0, "1 -> 0 took {ms:.1} ms with 0 delayed 400±50 ms");
    slow.heal().expect("heal the replaced delay");
    let ms = timed(1, 0);
    assert!(ms >= 650.0, "healing a replaced delay undid its replacement: {ms:.1} ms");

    slower.heal().expect("heal");
    let ms = fastest(1, 0);
    assert!(ms < FAST_MS, "1 -> 0 took {ms:.1} ms after the delay healed");
}

#[test]
fn loss_drops_a_share_of_the_packets() {
    if !netns::available() {
        return;
    }
    let network = Network::create("nnloss", 2).expect("network");
    let _server = serve(&network, 0);
    expect_reachability(&network, &[(1, 0, true)]);
    let clean = udp_echoed(&network, 1, 0, 200);
    assert!(clean >= 190, "{clean} of 200 datagrams came back without loss");

    // 50% each way: a quarter of the round trips survive (≈ 50 of 200).
    let lossy = network.loss(0, 50.0).expect("loss");
    let echoed = udp_echoed(&network, 1, 0, 200);
    assert!((10..=120).contains(&echoed), "{echoed} of 200 datagrams came back with 50% loss each way");

    drop(lossy);
    let healed = udp_echoed(&network, 1, 0, 200);
    assert!(healed >= 190, "{healed} of 200 datagrams came back after the loss healed");
}

#[tokio::test]
async fn processes_run_inside_their_host_and_take_signals_directly() {
    if !netns::available() {
        return;
    }
    let network = Network::create("nnproc", 2).expect("network");
    let host = network.host(1);

    // The child is the program itself (nsenter execs it), in the host's namespace.
    let mut child = host.command("sleep").arg("300").kill_on_drop(true).spawn().expect("sleep");
    let pid = child.id().expect("a pid");
    // (Until nsenter has execed it, the child is still the fork, then nsenter.)
    marina_tests::eventually(Duration::from_secs(5), "the child to be sleep", || {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        async move { (comm.trim() == "sleep").then_some(()) }
    })
    .await;
    let namespace = std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("the child's netns").ino();
    assert_eq!(namespace, std::fs::metadata(host.namespace_path()).expect("the host's netns").ino());

    let state = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        stat.rsplit(") ").next().and_then(|rest| rest.chars().next()).expect("a state")
    };
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP");
    marina_tests::eventually(Duration::from_secs(5), "the process to stop", || {
        let stopped = state() == 'T';
        async move { stopped.then_some(()) }
    })
    .await;
    kill(Pid::from_raw(pid as i32), Signal::SIGCONT).expect("SIGCONT");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL");
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.expect("exits").expect("status");
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));

    // exec_args, for TestProcess::spawn: the program sees the host's interfaces only.
    let (program, args) = host.exec_args(Path::new("/bin/cat"), &["/proc/net/dev".to_owned()]);
    let output = Command::new(program).args(args).output().expect("cat");
    let devices = String::from_utf8_lossy(&output.stdout);
    assert!(devices.contains("eth0:") && devices.contains("lo:"), "{devices}");
    assert_eq!(devices.lines().count(), 4, "two headers, lo and eth0: {devices}");
}

#[test]
fn drop_removes_namespaces_interfaces_and_processes_inside() {
    if !netns::available() {
        return;
    }
    let network = Network::create_with_observer("nndrop", 2).expect("network");
    let name = network.name().to_owned();
    let interface = network.observer_interface().expect("an observer").to_owned();

    // The observer: the test process itself reaches the hosts.
    let _server = serve(&network, 0);
    let address = network.host(0).socket_addr(PORT);
    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).expect("connecting from the observer");

    let mut sleeper = network.host(1).std_command("sleep").arg("300").spawn().expect("sleep");
    let comm = format!("/proc/{}/comm", sleeper.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
        assert!(Instant::now() < deadline, "sleep never started in host 1");
        std::thread::sleep(Duration::from_millis(5));
    }
    network.partition(&[0], &[1]).expect("partition").keep();
    network.delay(1, Duration::from_millis(50), Duration::ZERO).expect("delay").keep();
    assert!(namespaces().contains(&format!("{name}-sw")));
    drop(network);

    let leftovers: Vec<String> =
        namespaces().lines().filter(|line| line.starts_with(&format!("{name}-"))).map(str::to_owned).collect();
    assert!(leftovers.is_empty(), "namespaces left: {leftovers:?}");
    let links = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link");
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&interface), "{interface} left behind");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = sleeper.try_wait().expect("polling sleep") {
            break status;
        }
        assert!(Instant::now() < deadline, "the process inside outlived its network");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
}

#[test]
fn cleanup_removes_only_dead_runs() {
    if !netns::available() {
        return;
    }
    // No pid reaches 4194305 (PID_MAX_LIMIT is 4194304): that run is surely dead.
    let prefix = format!("nnstale{}", std::process::id());
    let dead = [format!("{prefix}-4194305-0-sw"), format!("{prefix}-4194305-0-h0")];
    let foreign = &format!("{prefix}-4194305-x-sw");
    for name in dead.iter().chain([foreign]) {
        let status = Command::new("ip").args(["netns", "add", name]).status().expect("ip netns add");
        assert!(status.success(), "ip netns add {name}");
    }

    // Creating a network cleans its prefix's leftovers; a second sweep spares it (alive).
    let network = Network::create(&prefix, 1).expect("network");
    let listed = namespaces();
    let _ = Command::new("ip").args(["netns", "delete", foreign]).status();
    for name in &dead {
        assert!(!listed.contains(name.as_str()), "{name} survived: {listed}");
    }
    assert!(listed.contains(foreign.as_str()), "{foreign} is not a name of ours and must stay: {listed}");
    assert_eq!(netns::cleanup_stale(&prefix).expect("cleanup"), 0);
    assert!(namespaces().contains(&format!("{}-h0", network.name())));
}
