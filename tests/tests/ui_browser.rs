//! The web UI in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, driven by Selenium from `tests/python/ui_browser.py`) against a real
//! cluster in this process, whose agent runs command apps as host processes. No mocks: what
//! the page shows comes from the gateways' API, what the clicks do is done by the cluster.
//!
//! A failing step leaves a screenshot (and the page's HTML and the browser's console) in
//! `target/ui-screenshots/<test>/`, named after the step; the failure message says where.
//! `MARINA_UI_SCREENSHOTS=docs` also saves the apps, an app's and the cluster page for the
//! README (`docs/ui-apps.png`, `docs/ui-app.png`, `docs/ui-cluster.png`).

use std::path::PathBuf;
use std::time::Duration;

use marina_tests::MarinaCluster;

/// Where a test's screenshots go: emptied first, so what is there is this run's.
fn screenshots(test: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    let dir = target.join("ui-screenshots").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A cluster whose one agent runs commands as host processes, on ports of its own.
fn cluster(gateways: usize, ports: &'static str) -> marina_tests::cluster::Builder {
    // The process runtime's supervisor, built with the other binaries (a no-op when they
    // are up to date).
    let started = std::time::Instant::now();
    marina_tests::binaries::binary("marina-supervise");
    println!("the binaries are up to date after {:.1?}", started.elapsed());
    MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .runtime(marina_agent::RuntimeChoice::Process)
        .agent_config(move |_, config| config.resources.ports = ports.into())
        .gateways(gateways)
}

/// Runs `tests/python/ui_browser.py` with `args` in the test virtualenv's Python, shows
/// what it printed (each step and its time; on a failure, where the screenshot is), and
/// asserts it succeeded after each of `steps`.
async fn run(args: &[&str], steps: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/ui_browser.py");
    let started = std::time::Instant::now();
    let mut command = tokio::process::Command::new(marina_tests::python::interpreter());
    command.arg(script).args(args).kill_on_drop(true);
    // The README's pictures: a relative directory is the workspace's (`docs`).
    if let Some(dir) = std::env::var_os("MARINA_UI_SCREENSHOTS") {
        command.env("MARINA_UI_SCREENSHOTS", PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(dir));
    }
    let output = command.output().await.expect("running ui_browser.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("ui_browser.py {} ({:.1?}):\n{stdout}", args[0], started.elapsed());
    assert!(output.status.success(), "ui_browser.py failed ({}):\n{stdout}\n{stderr}", output.status);
    for step in steps {
        assert!(stdout.contains(&format!("{step} (")), "missing step {step:?} in:\n{stdout}");
    }
}

/// The pages are one document at every path the UI has (an app's id may hold slashes),
/// served with a policy that allows this origin's script and styles only.
async fn pages_are_served_with_their_policy(base: &str) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    // Addresses that name no app id are the document too: the page says what is wrong.
    let not_ids = ["/ui/apps/..%2Fdeployments%2FX", "/ui/apps/ui/%E0%A4%A", "/ui/apps/%ZZ"];
    let pages = ["/", "/ui", "/ui/", "/ui/apps/web", "/ui/apps/prod/web", "/ui/apps/a/b/c", "/ui/cluster"];
    for path in pages.into_iter().chain(not_ids) {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8", "{path}");
        let policy = response.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(response.text().await.unwrap().contains("/ui/assets/app.js"), "{path}");
    }
    for (path, content_type) in
        [("/ui/assets/app.js", "text/javascript; charset=utf-8"), ("/ui/assets/style.css", "text/css; charset=utf-8")]
    {
        let response = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
    }
    assert_eq!(http.get(format!("{base}/ui/nothing-here")).send().await.unwrap().status(), 404);
}

/// An operator's whole journey with one app: the list, a new app from the form (a bad field
/// refused next to it), scaled by clicking, its tasks and their output followed live, an
/// invalid edit refused at the field's path, a valid one deployed, markup in an app's label
/// and output shown as text, a failing app and why, a deployment waiting for resources and
/// why, rolled back; the cluster page with the agents and the leading master; addresses
/// that name no app id refused without calling the API; a task killed and the app
/// destroyed by clicking. The console may hold only the failed requests the steps expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_an_app_from_the_web_ui() {
    let started = std::time::Instant::now();
    let cluster = cluster(1, "25100-25149").start().await;
    let base = cluster.gateway_url(0);
    cluster.leading_gateway().await;
    println!("the cluster is up after {:.1?}", started.elapsed());
    pages_are_served_with_their_policy(&base).await;
    let master = cluster.masters[cluster.leading_master().await].address.to_string();
    let shots = screenshots("journey");
    let steps = [
        "the app list loads",
        "the new-app form refuses a bad field next to it",
        "a new app is created with the form",
        "it is scaled by clicking",
        "a task's output is followed live",
        "the list shows it running",
        "an invalid edit shows the gateway's error at its path",
        "a valid edit deploys and makes a version to roll back to",
        "a version is rolled back to by clicking",
        "the app is restarted by clicking",
        "text from the API stays text, on the list and the app page",
        "a failing app says why, on the list and its page",
        "a deployment that cannot finish shows why it waits",
        "the cluster page lists the agents and the leading master",
        "an app page opened directly loads",
        "an address that is no app id shows not found and calls nothing",
        "a task is killed by clicking",
        "the app is suspended by clicking",
        "the app is destroyed by clicking",
        "the browser's console has no errors",
    ];
    run(&["journey", &base, "--master", &master, "--shots", shots.to_str().unwrap()], &steps).await;
}

/// A gateway with credentials, used through its standby: the API and the pages refuse
/// callers without them; with the browser's own (Basic) credentials it lists the apps, creates one, follows its output, sees a
/// change made elsewhere arrive by events (forwarded by the standby from the leader), and
/// the cluster page marks the leading gateway and the one that served the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_works_through_a_standby_with_credentials() {
    let started = std::time::Instant::now();
    let cluster = cluster(2, "25150-25199")
        .gateway_config(|config| config.auth.http_credentials = vec!["ops:s3cret".into()])
        .start()
        .await;
    let leader = cluster.leading_gateway_index().await;
    println!("the cluster is up after {:.1?}", started.elapsed());
    let standby = cluster.gateway_url(1 - leader);
    let shots = screenshots("guarded");
    let steps = [
        "without credentials the gateway refuses",
        "signed in, the list loads through the standby",
        "an app is created through the standby and shows its output",
        "events reach the page through the standby",
        "the cluster page marks the leading gateway",
        "the app is destroyed through the standby",
        "the browser's console has no errors",
    ];
    let leader_url = cluster.gateway_url(leader);
    let args = ["guarded", &standby, "--leader", &leader_url, "--user", "ops", "--password", "s3cret"];
    run(&[&args[..], &["--shots", shots.to_str().unwrap()]].concat(), &steps).await;
}
