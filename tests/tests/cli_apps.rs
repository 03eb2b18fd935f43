//! `marina app|task|deployment|queue|leader`, the operator CLI for apps, run as a process
//! against a real cluster (coord, a master, an agent running host processes, gateways):
//! deploying from a file and following the deployment to its end, scaling, restarting,
//! rolling back, deleting, task output (once and followed), a crash-looping app ending by
//! its timeout with its failure printed, a deployment cancelled, the gateway's validation
//! errors, the same through a standby gateway, and a busy gateway (429) asked again after its
//! `Retry-After`. Exit codes are the contract scripts use:
//! 0 done, 1 error, 3 deployment failed, 4 timed out.

use std::process::{Output, Stdio};
use std::time::Duration;

use marina_tests::binaries::binary;
use marina_tests::{MarinaCluster, TestDir, eventually};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);

/// Says hello, then a numbered line every 0.2 s.
const CHATTY: &str = "echo hello from cli; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done";

async fn start_cluster(gateways: usize) -> MarinaCluster {
    // The process runtime runs each task under marina-supervise.
    binary("marina-supervise");
    MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(marina_agent::RuntimeChoice::Process)
        .gateways(gateways)
        .start()
        .await
}

/// The `marina` binary aimed at `gateway` (`MARINA_GATEWAY`), with an empty data dir so a
/// `marina dev` cluster on this machine (its endpoints, its credentials) plays no part.
struct Cli {
    gateway: String,
    data_dir: TestDir,
}

impl Cli {
    fn new(gateway: String) -> Cli {
        Cli { gateway, data_dir: TestDir::new() }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(binary("marina"));
        command
            .args(args)
            .env("MARINA_GATEWAY", &self.gateway)
            .env("MARINA_DATA_DIR", self.data_dir.path())
            .env_remove("MARINA_CREDENTIALS")
            .env_remove("MARINA_TOKEN")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, args: &[&str]) -> Output {
        let output = self.command(args).output();
        tokio::time::timeout(Duration::from_secs(60), output)
            .await
            .unwrap_or_else(|_| panic!("marina {args:?} did not finish within 60s"))
            .expect("marina runs")
    }

    /// Runs it with `input` on its standard input.
    async fn run_with_input(&self, args: &[&str], input: &str) -> Output {
        let mut child =
            self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap()
    }

    /// Runs it and expects success: its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(output.status.success(), "marina {args:?}: {:?}\n{}", output.status, text(&output.stderr));
        text(&output.stdout)
    }

    async fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args).await;
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("marina {args:?}: not JSON ({e}): {stdout}"))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn app_file(dir: &TestDir, name: &str, app: &Value) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(app).unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The app as the gateway shows it (`None` once it is gone).
async fn app(gateway: &str, id: &str) -> Option<Value> {
    let response = reqwest::get(format!("{gateway}/v2/apps{id}")).await.ok()?;
    if response.status() == 404 {
        return None;
    }
    Some(response.json::<Value>().await.ok()?["app"].clone())
}

fn task_ids(app: &Value) -> Vec<String> {
    let mut ids: Vec<String> =
        app["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

/// The operator's journey on one app: deploy from a file, list, logs (once and followed),
/// scale, restart, roll back, delete; plus `leader` and shell completions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_scale_logs_restart_rollback_and_delete_an_app() {
    let cluster = start_cluster(1).await;
    let gateway = cluster.gateway_url(0);
    let cli = Cli::new(gateway.clone());
    let files = TestDir::new();
    let file = app_file(&files, "echo.json", &json!({ "id": "echo", "cmd": CHATTY, "cpus": 0.1, "mem": 16 }));

    // Deployed from the file, followed to its end.
    let deployed = cli.run(&["app", "deploy", &file, "--timeout", "30s"]).await;
    assert!(deployed.status.success(), "{}", text(&deployed.stderr));
    assert!(text(&deployed.stdout).contains("succeeded"), "{}", text(&deployed.stdout));
    let running = app(&gateway, "/echo").await.expect("the app exists");
    assert_eq!((running["tasksRunning"].as_u64(), running["instances"].as_u64()), (Some(1), Some(1)), "{running}");
    let followed_task = task_ids(&running).remove(0);

    let listed = cli.json(&["app", "list", "--json"]).await;
    let echo = listed["apps"].as_array().unwrap().iter().find(|a| a["id"] == "/echo").expect("/echo listed").clone();
    assert_eq!(echo["tasksRunning"], 1, "{echo}");
    let table = cli.ok(&["app", "list"]).await;
    let header = table.lines().next().unwrap();
    for column in ["ID", "INSTANCES", "HEALTHY", "STATUS", "CPUS", "MEM", "VERSION"] {
        assert!(header.contains(column), "{table}");
    }
    let row = table.lines().find(|l| l.starts_with("/echo")).expect("a row for /echo");
    assert!(row.contains("1/1") && row.contains("running"), "{table}");
    let shown = cli.ok(&["app", "show", "echo"]).await;
    assert!(shown.contains("status:      running") && shown.contains(CHATTY), "{shown}");
    let tasks = cli.ok(&["task", "list", "echo"]).await;
    assert!(tasks.starts_with("TASK ") && tasks.contains("echo.") && tasks.contains("running"), "{tasks}");

    // Its output: what the command echoed, and -f sees new lines appear.
    let logs = eventually(WAIT, "the task's output to hold its first lines", || async {
        let logs = cli.ok(&["task", "logs", "echo"]).await;
        logs.contains("line 1\n").then_some(logs)
    })
    .await;
    assert!(logs.starts_with("hello from cli\nline 0\n"), "{logs}");
    let last = cli.ok(&["task", "logs", "echo", "--lines", "1"]).await;
    assert_eq!(last.lines().count(), 1, "{last:?}");
    let mut follower = cli
        .command(&["task", "logs", "echo", "-f", "--lines", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().expect("the last line");
    let later = tokio::time::timeout(WAIT, lines.next_line()).await.unwrap().unwrap().expect("a new line");
    let number = |line: &str| line.strip_prefix("line ").and_then(|n| n.parse::<u64>().ok());
    assert!(number(&later) > number(&first), "followed {first:?} then {later:?}");

    // Scaled, followed to its end.
    cli.ok(&["app", "scale", "echo", "3", "--timeout", "30s"]).await;
    let scaled = app(&gateway, "/echo").await.unwrap();
    assert_eq!((scaled["instances"].as_u64(), scaled["tasksRunning"].as_u64()), (Some(3), Some(3)), "{scaled}");

    // Restarted: every task replaced.
    let before = task_ids(&scaled);
    let restarted = cli.json(&["app", "restart", "echo", "--json", "--timeout", "30s"]).await;
    assert_eq!(restarted["result"], "succeeded", "{restarted}");
    let after = app(&gateway, "/echo").await.unwrap();
    let replaced = task_ids(&after);
    assert_eq!(replaced.len(), 3, "{after}");
    assert!(replaced.iter().all(|id| !before.contains(id)), "{before:?} → {replaced:?}");
    // The followed task was replaced too: following ends, saying so.
    let mut said = follower.stderr.take().unwrap();
    let status = tokio::time::timeout(WAIT, follower.wait()).await.expect("following ends with the task").unwrap();
    let mut said_text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut said, &mut said_text).await.unwrap();
    assert!(status.success(), "{status:?}: {said_text}");
    // Killed by the restart: gone from its app's tasks, or listed as killed.
    let ending = said_text.lines().last().unwrap_or_default();
    assert!(
        [format!("task {followed_task} has ended"), format!("task {followed_task} has ended (killed)")]
            .contains(&ending.to_owned()),
        "{said_text}"
    );

    // Rolled back to the first version: one instance again.
    let versions = cli.json(&["app", "versions", "echo", "--json"]).await;
    let versions: Vec<&str> = versions["versions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(versions.len() >= 2, "{versions:?}");
    let first_version = versions.last().unwrap();
    cli.ok(&["app", "rollback", "echo", first_version, "--timeout", "30s"]).await;
    let rolled_back = app(&gateway, "/echo").await.unwrap();
    assert_eq!((rolled_back["instances"].as_u64(), rolled_back["tasksRunning"].as_u64()), (Some(1), Some(1)));

    // The leader, and shell completions.
    let leader = cli.json(&["leader", "--json"]).await;
    assert_eq!(leader["leader"], cluster.gateways[0].address.to_string(), "{leader}");
    assert_eq!(leader["answeredByLeader"], true, "{leader}");
    let completions = cli.ok(&["completions", "bash"]).await;
    assert!(completions.contains("marina") && completions.contains("deploy"), "bash completions");

    // Deleted.
    cli.ok(&["app", "rm", "echo"]).await;
    eventually(WAIT, "/echo to be gone", || async { app(&gateway, "/echo").await.is_none().then_some(()) }).await;
    let gone = cli.run(&["app", "scale", "echo", "2"]).await;
    assert_eq!(gone.status.code(), Some(1));
    assert!(text(&gone.stderr).contains("no app /echo"), "{}", text(&gone.stderr));
}

/// A crash-looping app: its deployment never fails (Marathon retries), so `app deploy` ends
/// by its timeout (exit 4) and prints the last task failure; a deployment that cannot place
/// its app waits in the queue with its reason and is cancelled; bad input is exit 1 with
/// what is wrong, the gateway's validation errors one per field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_timeouts_cancels_and_bad_input_are_reported() {
    let cluster = start_cluster(1).await;
    let gateway = cluster.gateway_url(0);
    let cli = Cli::new(gateway.clone());

    // From standard input.
    let failing = json!({ "id": "/failing", "cmd": "echo boom >&2; exit 3", "cpus": 0.1, "mem": 16 }).to_string();
    let started = std::time::Instant::now();
    let output = cli.run_with_input(&["app", "deploy", "-", "--timeout", "5s"], &failing).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "timed out: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let failure = app(&gateway, "/failing").await.unwrap()["lastTaskFailure"]["message"].as_str().unwrap().to_owned();
    assert!(stderr.contains("last task failure") && stderr.contains(&failure), "{failure:?} in {stderr}");
    let listed = cli.ok(&["app", "list"]).await;
    let row = listed.lines().find(|l| l.starts_with("/failing")).unwrap();
    assert!(row.contains("failing: "), "{listed}");

    // An app no agent has room for: it waits (the queue says why) until cancelled.
    let huge_dir = TestDir::new();
    let huge = app_file(&huge_dir, "huge.json", &json!({ "id": "/huge", "cmd": "sleep 100", "cpus": 64, "mem": 16 }));
    let submitted = cli.json(&["app", "deploy", &huge, "--detach", "--json"]).await;
    let deployment = submitted["deploymentId"].as_str().expect("a deployment id").to_owned();
    let queue = eventually(WAIT, "the queue to say why /huge waits", || async {
        let queue = cli.ok(&["queue"]).await;
        queue.lines().any(|l| l.starts_with("/huge") && l.contains("InsufficientCpus")).then_some(queue)
    })
    .await;
    assert!(queue.starts_with("APP "), "{queue}");
    let watched = cli.run(&["deployment", "watch", &deployment, "--timeout", "1s"]).await;
    assert_eq!(watched.status.code(), Some(4), "{}", text(&watched.stderr));
    assert!(text(&watched.stderr).contains("InsufficientCpus"), "{}", text(&watched.stderr));
    let deployments = cli.json(&["deployment", "list", "--json"]).await;
    assert!(deployments.as_array().unwrap().iter().any(|d| d["id"] == deployment.as_str()), "{deployments}");
    // A watcher sees the cancellation as a failure (exit 3). It is cancelled once the
    // watcher shows progress: it has subscribed and found the deployment by then.
    let mut watcher =
        cli.command(&["deployment", "watch", &deployment, "--timeout", "30s"]).stderr(Stdio::piped()).spawn().unwrap();
    let mut progress = BufReader::new(watcher.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, progress.next_line()).await.unwrap().unwrap().expect("a progress line");
    assert!(first.contains(&format!("deployment {deployment}: step 1/1")), "{first}");
    let cancelled = cli.ok(&["deployment", "cancel", &deployment]).await;
    assert!(cancelled.contains("rolling its apps back"), "{cancelled}");
    let mut said = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(WAIT, progress.next_line()).await.unwrap() {
        said.push(line);
    }
    let status = tokio::time::timeout(WAIT, watcher.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(3), "{said:?}");
    assert!(said.iter().any(|l| l.contains(&format!("deployment {deployment} failed"))), "{said:?}");
    eventually(WAIT, "the cancelled creation to be rolled back", || async {
        app(&gateway, "/huge").await.is_none().then_some(())
    })
    .await;

    // Bad input: exit 1, saying what is wrong.
    let dir = TestDir::new();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"id\": ").unwrap();
    let output = cli.run(&["app", "deploy", broken.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("broken.json is not JSON"), "{}", text(&output.stderr));
    let output = cli.run(&["app", "deploy", dir.path().join("missing.json").to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("missing.json"), "{}", text(&output.stderr));
    let invalid =
        app_file(&dir, "invalid.json", &json!({ "id": "/invalid", "cmd": "true", "cpus": -1, "instances": -2 }));
    let output = cli.run(&["app", "deploy", &invalid]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("422"), "{stderr}");
    let fields: Vec<&str> = stderr.lines().filter(|l| l.starts_with("  /")).collect();
    assert!(
        fields.iter().any(|l| l.starts_with("  /cpus: ")) && fields.iter().any(|l| l.starts_with("  /instances: ")),
        "{stderr}"
    );
    let output = cli.run(&["app", "deploy", "--timeout", "soon", &invalid]).await;
    assert_eq!(output.status.code(), Some(2), "a usage error: {}", text(&output.stderr));
    let unreachable = Cli::new("http://127.0.0.1:1".into());
    let output = unreachable.run(&["app", "list"]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("no gateway answered at http://127.0.0.1:1"), "{}", text(&output.stderr));
}

/// A stand-in gateway on this machine: answers every request `{"apps":[]}` and keeps the
/// requests' headers (lowercase), one string per request.
async fn recording_gateway() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tokio::io::AsyncReadExt::read(&mut stream, &mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                kept.lock().unwrap().push(String::from_utf8_lossy(&head).to_lowercase());
                let body = r#"{"apps":[]}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, requests)
}

/// The login in `<data-dir>/credentials` goes only to the gateways that data dir lists (or
/// picks by default): a gateway named with MARINA_GATEWAY elsewhere, even on this machine,
/// gets no Authorization header. A credentials file that cannot be used is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dirs_login_goes_only_to_its_own_gateways() {
    let (url, requests) = recording_gateway().await;
    let cli = Cli::new(url.clone());
    std::fs::write(cli.data_dir.path().join("credentials"), "ops:s3cret\n").unwrap();
    let authorization = |requests: &std::sync::Mutex<Vec<String>>| {
        let requests = requests.lock().unwrap();
        let last = requests.last().expect("a request").clone();
        last.lines().find_map(|line| line.strip_prefix("authorization: ").map(str::to_owned))
    };

    // Not listed (no endpoints.json), not the default: no login.
    cli.json(&["app", "list", "--json"]).await;
    assert_eq!(authorization(&requests), None);
    // Listed is another gateway.
    let endpoints = cli.data_dir.path().join("endpoints.json");
    std::fs::write(&endpoints, json!({ "gateways": ["http://127.0.0.1:1"] }).to_string()).unwrap();
    cli.json(&["app", "list", "--json"]).await;
    assert_eq!(authorization(&requests), None);

    // Listed: named, or chosen from endpoints.json, it gets the login.
    std::fs::write(&endpoints, json!({ "gateways": [url] }).to_string()).unwrap();
    let basic = format!("basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ops:s3cret"));
    cli.json(&["app", "list", "--json"]).await;
    assert_eq!(authorization(&requests), Some(basic.to_lowercase()));
    let output = cli.command(&["app", "list", "--json"]).env_remove("MARINA_GATEWAY").output().await.unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(authorization(&requests), Some(basic.to_lowercase()));

    // A credentials file that cannot be used is said, not left out.
    let sent = requests.lock().unwrap().len();
    std::fs::write(cli.data_dir.path().join("credentials"), b"ops:\xff\xfe\n").unwrap();
    let output = cli.run(&["app", "list", "--json"]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("credentials: not UTF-8"), "{stderr}");
    assert_eq!(requests.lock().unwrap().len(), sent, "nothing sent");
}

/// Any gateway answers: a standby forwards every call (the event stream too, with the
/// caller's credentials) to the leader. A list of gateways is tried in turn when one cannot
/// be reached. Credentials come from `<data-dir>/credentials` (as `marina dev
/// --http-credentials` writes them); without them the gateway's 401 says what to give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_gateway_with_credentials_serves_the_cli() {
    binary("marina-supervise");
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(marina_agent::RuntimeChoice::Process)
        .gateway_config(|config| config.auth.http_credentials = vec!["ops:s3cret".into()])
        .gateways(2)
        .start()
        .await;
    let leader = cluster.leading_gateway_index().await;
    let standby = cluster.gateway_url(1 - leader);
    // The first gateway listed answers nothing: the CLI moves on to the standby.
    let cli = Cli::new(format!("http://127.0.0.1:1,{standby}"));
    // The data dir's login goes only to the gateways it lists, as `marina dev` lists its own.
    let endpoints = json!({ "gateways": ["http://127.0.0.1:1", standby] });
    std::fs::write(cli.data_dir.path().join("endpoints.json"), endpoints.to_string()).unwrap();

    let refused = cli.run(&["app", "list"]).await;
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401") && stderr.contains("--credentials"), "{stderr}");
    std::fs::write(cli.data_dir.path().join("credentials"), "ops:s3cret\n").unwrap();

    let file_dir = TestDir::new();
    let file = app_file(&file_dir, "echo.json", &json!({ "id": "/echo", "cmd": CHATTY, "cpus": 0.1, "mem": 16 }));

    let deployed = cli.json(&["app", "deploy", &file, "--json", "--timeout", "30s"]).await;
    assert_eq!(deployed["result"], "succeeded", "{deployed}");
    assert_eq!(deployed["apps"][0]["tasksRunning"], 1, "{deployed}");
    let scaled = cli.json(&["app", "scale", "echo", "2", "--json", "--timeout", "30s"]).await;
    assert_eq!((&scaled["result"], &scaled["apps"][0]["tasksRunning"]), (&json!("succeeded"), &json!(2)), "{scaled}");
    let logs = eventually(WAIT, "the output through the standby", || async {
        let output = cli.run(&["task", "logs", "echo"]).await;
        let logs = text(&output.stdout);
        (output.status.success() && logs.contains("hello from cli")).then_some(text(&output.stderr))
    })
    .await;
    assert!(logs.contains("/echo has 2 tasks; showing the newest running one"), "{logs}");

    // A task killed through the standby is replaced.
    let tasks = cli.json(&["task", "list", "echo", "--json"]).await;
    let victim = tasks["tasks"][0]["id"].as_str().unwrap().to_owned();
    let killed = cli.ok(&["task", "kill", &victim]).await;
    assert!(killed.contains(&format!("killed {victim}")), "{killed}");
    eventually(WAIT, "a replacement for the killed task", || async {
        let tasks = cli.json(&["task", "list", "echo", "--json"]).await;
        let ids: Vec<&str> = tasks["tasks"].as_array()?.iter().filter_map(|t| t["id"].as_str()).collect();
        (ids.len() == 2 && !ids.contains(&victim.as_str())).then_some(())
    })
    .await;

    let said = cli.ok(&["leader"]).await;
    let leader_address = cluster.gateways[leader].address.to_string();
    assert!(said.contains(&format!("leader: {leader_address}")), "{said}");
    assert!(said.contains("a standby"), "{said}");
}

/// A gateway too busy for a write (its write queue full: 429 with `Retry-After`) has
/// changed nothing, so the CLI asks again after that long, as Marathon's clients do, and
/// says so; once the write path is free the deploy goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_gateway_is_asked_again_after_its_retry_after() {
    let limits =
        marina_gateway::AdmissionLimits { max_inflight_writes: 1, max_queued_writes: 0, max_queue_wait_ms: 1_000 };
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .gateways(1)
        .gateway_config(move |config| config.admission = limits)
        .start()
        .await;
    let gateway_url = cluster.gateway_url(0);
    let cli = Cli::new(gateway_url.clone());
    let gateway = cluster.gateways[0].handle.as_ref().unwrap().gateway.clone();
    // The only write slot held by the test: every write is refused at once.
    let held = gateway.admission.admit().await.expect("the write path is free");

    let dir = TestDir::new();
    let file = app_file(
        &dir,
        "busy.json",
        &json!({"id": "/busy", "cmd": "sleep 1000", "instances": 0, "cpus": 0.1, "mem": 32}),
    );
    let mut child = cli
        .command(&["app", "deploy", &file, "--no-wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let busy = tokio::time::timeout(WAIT, async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("the gateway is busy (429): trying again in") {
                return line;
            }
        }
        panic!("marina ended without saying the gateway was busy");
    })
    .await
    .expect("the CLI to be refused and say so");
    assert!(app(&gateway_url, "/busy").await.is_none(), "a refused write changed nothing ({busy})");

    drop(held);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.unwrap().unwrap();
    assert!(output.status.success(), "marina app deploy: {:?}\n{}", output.status, text(&output.stdout));
    assert!(app(&gateway_url, "/busy").await.is_some(), "deployed once the write path was free");
}
