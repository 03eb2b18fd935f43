//! A task's sandbox files through the gateway, by task id (Marina's extension of Marathon's
//! API: `/v2/tasks/{id}/files/{browse,read,download}?path=REL`), with real processes: a
//! command app on the process runtime writes lines; its sandbox is browsed, its `stdout`
//! read and followed by offset, downloaded; paths out of the sandbox are refused before the
//! agent is asked; the same through a standby gateway, which forwards to the leader.

use std::time::Duration;

use marina_tests::{ProcessCluster, Topology, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Says hello, then a numbered line every 0.2 s.
const SCRIPT: &str = "echo hello; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_sandbox_files_are_served_by_task_id_through_any_gateway() {
    let cluster = ProcessCluster::start(Topology::new(1, 1, "process", 2)).await;
    let leader = cluster.leading_gateway().await;
    let standby = 1 - leader;
    let api = cluster.gateway_api(leader);
    api.create(&json!({ "id": "/chatty", "cmd": SCRIPT, "cpus": 0.1, "mem": 16 })).await.unwrap();
    let task = eventually(WAIT, "the app's task to run", || async {
        let app = api.app("/chatty").await?;
        let task = app["tasks"].as_array()?.first()?.clone();
        (task["state"] == "TASK_RUNNING").then(|| task["id"].as_str().map(str::to_owned)).flatten()
    })
    .await;

    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let get = async |gateway: usize, task: &str, what: &str, query: &[(&str, &str)]| {
        let url = format!("http://{}/v2/tasks/{task}/files/{what}", cluster.gateways[gateway].address);
        let response = http.get(url).query(query).send().await.unwrap();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), content_type, response.bytes().await.unwrap())
    };
    let json_of = |body: &[u8]| -> Value { serde_json::from_slice(body).unwrap() };

    // The sandbox's root: its output files, named relative to the sandbox.
    let listing = eventually(WAIT, "the sandbox to list stdout and stderr", || async {
        let (status, _, body) = get(leader, &task, "browse", &[]).await;
        assert_eq!(status, 200, "{body:?}");
        let listing = json_of(&body);
        let names: Vec<&str> = listing.as_array()?.iter().filter_map(|e| e["path"].as_str()).collect();
        (names.contains(&"stdout") && names.contains(&"stderr")).then_some(listing)
    })
    .await;
    let stdout_entry = listing.as_array().unwrap().iter().find(|e| e["path"] == "stdout").unwrap();
    assert!(stdout_entry["mode"].as_str().unwrap().starts_with("-rw"), "{stdout_entry}");
    let (status, _, body) = get(leader, &task, "browse", &[("path", "")]).await;
    assert_eq!(status, 200, "{body:?}");
    let names = |listing: &Value| -> Vec<String> {
        listing.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(&json_of(&body)), names(&listing), "an empty path is the root too");

    // Read from the start, then follow: a read from where the last one ended has new lines.
    let first = eventually(WAIT, "stdout to hold the first lines", || async {
        let (status, content_type, body) = get(leader, &task, "read", &[("path", "stdout"), ("offset", "0")]).await;
        assert_eq!(status, 200, "{body:?}");
        assert_eq!(content_type.as_deref(), Some("application/json"));
        let read = json_of(&body);
        assert_eq!(read["offset"], 0);
        let data = read["data"].as_str()?.to_owned();
        data.contains("line 0\n").then_some(data)
    })
    .await;
    assert!(first.starts_with("hello\nline 0\n"), "{first:?}");
    let end = first.len().to_string();
    let more = eventually(WAIT, "stdout to grow past the first read", || async {
        let (status, _, body) = get(leader, &task, "read", &[("path", "stdout"), ("offset", &end)]).await;
        assert_eq!(status, 200, "{body:?}");
        let read = json_of(&body);
        assert_eq!(read["offset"].to_string(), end, "the read starts where asked");
        let data = read["data"].as_str()?.to_owned();
        (!data.is_empty()).then_some(data)
    })
    .await;
    let followed = format!("{first}{more}");
    assert!(more.contains("line "), "new lines: {more:?}");
    let (_, _, body) = get(leader, &task, "read", &[("path", "stdout"), ("offset", "0"), ("length", "5")]).await;
    assert_eq!(json_of(&body), json!({ "data": "hello", "offset": 0 }), "a read of `length` bytes");
    // Offset -1 (Mesos' way to start tailing): no data, the file's length.
    let (status, _, body) = get(leader, &task, "read", &[("path", "stdout"), ("offset", "-1")]).await;
    let size = json_of(&body);
    assert_eq!((status, &size["data"]), (200, &json!("")), "{size}");
    assert!(size["offset"].as_u64().unwrap() >= followed.len() as u64, "{size}");

    let (status, content_type, body) = get(leader, &task, "download", &[("path", "stdout")]).await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("application/octet-stream"));
    let downloaded = String::from_utf8(body.to_vec()).unwrap();
    assert!(downloaded.starts_with(&followed), "the whole file: {downloaded:?}");

    // Out of the sandbox: refused before the agent is asked, with Marathon's body.
    for (what, path) in [("read", "../x"), ("read", "/etc/passwd"), ("download", "/etc/passwd"), ("browse", "..")] {
        let (status, _, body) = get(leader, &task, what, &[("path", path)]).await;
        assert_eq!(status, 400, "{what} {path}: {body:?}");
        assert!(json_of(&body)["message"].is_string(), "{body:?}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "{path} leaked");
    }
    let (status, _, body) = get(leader, &task, "read", &[]).await;
    assert_eq!(status, 400, "a read names a file: {body:?}");
    // What the agent refuses is passed on as it answered.
    let (status, _, body) = get(leader, &task, "read", &[("path", "no-such-file")]).await;
    assert_eq!(status, 404, "{body:?}");
    assert!(json_of(&body)["message"].as_str().unwrap().contains("no such file"), "{body:?}");
    let unknown = "chatty.00000000-0000-0000-0000-000000000000";
    let (status, _, body) = get(leader, unknown, "read", &[("path", "stdout")]).await;
    assert_eq!(status, 404, "{body:?}");
    assert_eq!(json_of(&body), json!({ "message": format!("Task '{unknown}' does not exist") }));

    // A standby serves the same (it forwards to the leader), and refuses the same.
    assert_ne!(standby, leader);
    let (status, _, body) = get(standby, &task, "read", &[("path", "stdout"), ("offset", "0")]).await;
    assert_eq!(status, 200, "{body:?}");
    assert!(json_of(&body)["data"].as_str().unwrap().starts_with(&followed));
    let (status, _, body) = get(standby, &task, "browse", &[]).await;
    assert_eq!(status, 200, "{body:?}");
    assert!(json_of(&body).as_array().unwrap().iter().any(|e| e["path"] == "stdout"));
    let (status, _, body) = get(standby, &task, "download", &[("path", "stdout")]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with(followed.as_bytes()));
    let (status, _, _) = get(standby, &task, "read", &[("path", "../../etc/passwd")]).await;
    assert_eq!(status, 400);
    let (status, _, _) = get(standby, unknown, "browse", &[]).await;
    assert_eq!(status, 404);
}

/// A task that failed, and that its agent has forgotten, still has its output read through
/// the gateway while its app's `lastTaskFailure` names it (its sandbox stays until collected):
/// what a failing app printed last is what an operator needs most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tasks_output_is_still_served() {
    let cluster = ProcessCluster::start(Topology::new(1, 1, "process", 1)).await;
    let api = cluster.gateway_api(0);
    let app = json!({ "id": "/doomed", "cmd": "echo dying words; echo why >&2; exit 3", "cpus": 0.1, "mem": 16 });
    api.create(&app).await.unwrap();
    let failed = eventually(WAIT, "the app's lastTaskFailure", || async {
        let app = api.app("/doomed").await?;
        app["lastTaskFailure"]["taskId"].as_str().map(str::to_owned)
    })
    .await;
    // Until its agent forgets it, a task's sandbox is found among the agent's tasks; the
    // point here is what happens after.
    eventually(WAIT, "the agent to forget the failed task", || async {
        let state = cluster.agents[0].get_json("/state").await?;
        let tasks = state["tasks"].as_array()?;
        tasks.iter().all(|task| task["id"] != failed.as_str()).then_some(())
    })
    .await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    for (file, words) in [("stdout", "dying words\n"), ("stderr", "why\n")] {
        let url = format!("http://{}/v2/tasks/{failed}/files/read", cluster.gateways[0].address);
        let response = http.get(url).query(&[("path", file), ("offset", "0")]).send().await.unwrap();
        assert_eq!(response.status(), 200, "{file}: {}", response.text().await.unwrap());
        let read: Value = response.json().await.unwrap();
        assert!(read["data"].as_str().unwrap().contains(words), "{file}: {read}");
    }
}
