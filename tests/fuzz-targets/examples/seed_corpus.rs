//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*`, made by
//! Marina's real encoders: the gateway's app fixtures and what it writes of them, log
//! entries, snapshots and Raft messages as coord encodes them, journals the agent's own
//! `Checkpoint` wrote, tasks the gateway's `task_info` builds.
//!
//! ```sh
//! cargo run -p marina-fuzz-targets --example seed_corpus
//! ```
//!
//! Seeds are rewritten in place; inputs the fuzzer found are left alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use marina_agent::checkpoint::Checkpoint;
use marina_coord::command::{Command, Compare, CompareTarget, EndReason, Op, Txn};
use marina_coord::store::{HistoryLimits, Store};
use marina_coord::types::{Entry, LogId, NodeId, SnapshotMeta, StoredMembership, TypeConfig, Vote};
use marina_daemon::record::parse_framed;
use marina_fuzz_targets::support::{chunked_input, framed_input};
use marina_gateway::app::{AppDefinition, PathId, Timestamp, parse_app, stamp};
use marina_gateway::model::task_info;
use marina_proto::agent::v1 as agent;
use marina_proto::coord::v1 as coord;
use marina_proto::master::v1 as master;
use openraft::error::{Infallible, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, CommittedLeaderId, EntryPayload, Membership};
use prost::Message;

const BRIDGE: &str = include_str!("../../../services/gateway/src/app/fixtures/marathon-1.4-bridge.json");
const UBUNTU_2014: &str = include_str!("../../../services/gateway/src/app/fixtures/ubuntu-2014.json");
const RUN_ID: &str = "0c6f8c3e-1b5a-4e0b-9d6f-3e8a2b1c4d5e";

/// Named inputs of one target.
type Seeds = Vec<(String, Vec<u8>)>;

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let seeds: Vec<(&str, Seeds)> = vec![
        ("app_json", app_json()),
        ("app_update", app_update()),
        ("app_group", app_group()),
        ("app_ids", app_ids()),
        ("rest_query", rest_query()),
        ("coord_log_record", coord_log_record()),
        ("coord_log_segment", coord_log_segment()),
        ("coord_snapshot", coord_snapshot()),
        ("coord_raft_messages", coord_raft_messages()),
        ("coord_requests", coord_requests()),
        ("agent_journal", agent_journal()),
        ("agent_master_messages", agent_master_messages()),
        ("master_scheduler_requests", master_scheduler_requests()),
        ("master_agent_messages", master_agent_messages()),
    ];
    for (target, inputs) in seeds {
        assert!(marina_fuzz_targets::target(target).is_some(), "{target} is not a target");
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).expect("corpus dir");
        for (name, input) in &inputs {
            let body = marina_fuzz_targets::target(target).expect("checked");
            body(input);
            fs::write(dir.join(format!("seed-{name}")), input).expect("seed written");
        }
        println!("{target}: {} seeds", inputs.len());
    }
}

fn named(items: &[(&str, &str)]) -> Seeds {
    items.iter().map(|(name, text)| ((*name).to_owned(), text.as_bytes().to_vec())).collect()
}

fn stored(body: &str) -> AppDefinition {
    let mut app = parse_app(body.as_bytes(), None).expect("the fixture parses");
    stamp(&mut app, Timestamp::from_millis(1_764_000_000_000), None);
    app
}

fn app_json() -> Seeds {
    let mut seeds = named(&[
        ("bridge-1.4.json", BRIDGE),
        ("ubuntu-2014.json", UBUNTU_2014),
        ("minimal.json", r#"{"id": "sleep", "cmd": "sleep 1000"}"#),
        ("args.json", r#"{"id": "/a/b", "args": ["sleep", "1"], "instances": 0, "cpus": 0.1, "mem": 32}"#),
        (
            "host-ports.json",
            r#"{"id": "web", "cmd": "python3 -m http.server $PORT0", "portDefinitions": [{"port": 0, "name": "http", "protocol": "tcp", "labels": {"VIP_0": "1.1.1.1:80"}}], "requirePorts": false, "healthChecks": [{"protocol": "MESOS_HTTP", "portIndex": 0, "path": "/"}]}"#,
        ),
        (
            "networks-1.5.json",
            r#"{"id": "/net", "cmd": "x", "networks": [{"mode": "container/bridge"}], "container": {"type": "MESOS", "docker": {"image": "nginx"}, "portMappings": [{"containerPort": 80, "hostPort": 0, "labels": {}}]}}"#,
        ),
        (
            "strategies.json",
            r#"{"id": "s", "cmd": "x", "upgradeStrategy": {"minimumHealthCapacity": 1, "maximumOverCapacity": 0}, "unreachableStrategy": {"inactiveAfterSeconds": 60, "expungeAfterSeconds": 120}, "killSelection": "YOUNGEST_FIRST", "backoffSeconds": "2", "backoffFactor": "1.5"}"#,
        ),
        (
            "constraints.json",
            r#"{"id": "c", "cmd": "x", "constraints": [["hostname", "UNIQUE"], ["rack_id", "CLUSTER", "rack-1"], ["zone", "MAX_PER", "2"], ["attr", "UNLIKE", "a.*"], ["host", "IS", "h1"]]}"#,
        ),
        (
            "invalid.json",
            r#"{"id": "/Bad_Id", "cmd": "", "instances": -1, "cpus": "lots", "mem": null, "ports": [70000], "healthChecks": [{"protocol": "COMMAND"}]}"#,
        ),
        (
            "residency.json",
            r#"{"id": "r", "cmd": "x", "residency": {"relaunchEscalationTimeoutSeconds": 10, "taskLostBehavior": "WAIT_FOREVER"}, "ipAddress": {"networkName": "n"}, "user": "nobody", "executor": "//cmd", "storeUrls": ["http://s"], "fetch": [{"uri": "http://x/y.tgz", "extract": true, "executable": false, "cache": false}], "dependencies": ["/db"], "labels": {"a": "b"}, "acceptedResourceRoles": ["*"], "taskKillGracePeriodSeconds": 5, "gpus": 0, "disk": 10, "maxLaunchDelaySeconds": 60}"#,
        ),
    ]);
    for (name, body) in [("bridge-1.4", BRIDGE), ("ubuntu-2014", UBUNTU_2014)] {
        seeds.push((format!("stored-{name}.json"), serde_json::to_vec(&stored(body)).expect("serializes")));
    }
    seeds
}

fn app_update() -> Seeds {
    named(&[
        ("scale.json", r#"{"instances": 3}"#),
        ("cmd.json", r#"{"cmd": "sleep 2", "args": null}"#),
        ("args.json", r#"{"args": ["a", "b"]}"#),
        ("rollback.json", r#"{"version": "2025-11-24T15:20:00.000Z"}"#),
        ("rollback-and-more.json", r#"{"version": "2025-11-24T15:20:00.000Z", "cpus": 1}"#),
        ("ports.json", r#"{"ports": [0, 0], "requirePorts": true}"#),
        ("env.json", r#"{"env": {"A": "b", "SECRET": {"secret": "s"}}, "secrets": {"s": {"source": "/x"}}}"#),
        ("container.json", r#"{"container": {"type": "DOCKER", "docker": {"image": "busybox", "network": "HOST"}}}"#),
        ("health.json", r#"{"healthChecks": [{"protocol": "TCP", "portIndex": 0}], "readinessChecks": []}"#),
        ("id-ignored.json", r#"{"id": "/other", "mem": 256}"#),
        ("not-an-object.json", r#"[1, 2]"#),
    ])
}

fn app_group() -> Seeds {
    let nested = serde_json::json!({
        "id": "/prod",
        "apps": [{"id": "web", "cmd": "sleep 100", "cpus": 0.1, "mem": 32}],
        "groups": [{"id": "db", "apps": [{"id": "pg", "cmd": "postgres", "dependencies": ["../web"]}]}],
    });
    let bridge: serde_json::Value = serde_json::from_str(BRIDGE).expect("fixture");
    let fixture_group = serde_json::json!({"id": "/prod", "apps": [bridge]});
    let mut seeds = named(&[
        ("relative.json", r#"{"id": "g", "apps": [{"id": "a", "cmd": "x"}, {"id": "/g/b", "cmd": "y"}]}"#),
        ("no-apps.json", r#"{"id": "/empty", "groups": [{"id": "inner"}]}"#),
        ("outside.json", r#"{"id": "/g", "apps": [{"id": "/elsewhere/a", "cmd": "x"}]}"#),
    ]);
    seeds.push(("nested.json".into(), nested.to_string().into_bytes()));
    seeds.push(("bridge-1.4.json".into(), fixture_group.to_string().into_bytes()));
    seeds
}

fn app_ids() -> Seeds {
    let task = PathId::parse("/prod/web").expect("id").task_id(RUN_ID);
    let mut seeds = named(&[
        ("absolute", "/prod/web"),
        ("relative", "web/../db/./pg"),
        ("dotted", "/a.b-c/d1"),
        ("reserved", "/prod/tasks"),
        ("invalid", "/Prod/web_1"),
        ("instance", "prod_web.instance-0c6f8c3e-1b5a-4e0b-9d6f-3e8a2b1c4d5e._app.1"),
        ("marathon-task", "prod_web.marathon-0c6f8c3e-1b5a-4e0b-9d6f-3e8a2b1c4d5e"),
        ("time", "2026-11-25T10:41:21.874Z"),
        ("time-offset", "2014-03-01T23:17:50.295123+01:00"),
        ("time-leap", "2024-02-29T23:59:59Z"),
    ]);
    seeds.push(("task".into(), task.into_bytes()));
    seeds
}

fn rest_query() -> Seeds {
    named(&[
        ("force", "force=true"),
        ("flags", "force=1&scale=FALSE&wipe=0&partialUpdate=false"),
        ("embed", "embed=apps.tasks&embed=apps.deployments"),
        ("filters", "id=%2Fprod&label=env%3D%3Dprod&cmd=sleep"),
        ("status", "status=running&host=agent-1"),
        ("bad-bool", "force=maybe"),
    ])
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn create(path: &str, data: &str, session_id: u64, sequential: bool) -> Op {
    Op::Create { path: path.into(), data: Bytes::copy_from_slice(data.as_bytes()), session_id, sequential }
}

/// Commands as the coord API and the proposer make them.
fn commands() -> Vec<(&'static str, Command)> {
    let txn = Txn {
        compares: vec![
            Compare { path: "/marina/gateway/leader".into(), equal: true, target: CompareTarget::ModRevision(7) },
            Compare { path: "/a".into(), equal: false, target: CompareTarget::Value(Bytes::from_static(b"v")) },
            Compare { path: "/b".into(), equal: true, target: CompareTarget::Exists(false) },
        ],
        success: vec![
            create("/marina/apps/prod_web", r#"{"id":"/prod/web"}"#, 0, false),
            Op::Set { path: "/a".into(), data: Bytes::from_static(b"v2"), expected_version: Some(1), upsert: false },
        ],
        failure: vec![Op::Get { path: "/a".into() }],
    };
    vec![
        ("txn", Command::Txn(txn)),
        ("create", Command::single(create("/marina/master/members/m-", "host:5050", 1, true))),
        (
            "set",
            Command::single(Op::Set { path: "/a".into(), data: Bytes::new(), expected_version: None, upsert: true }),
        ),
        ("delete", Command::single(Op::Delete { path: "/marina".into(), expected_version: None, recursive: true })),
        ("session", Command::CreateSession { ttl_ms: 10_000, disconnect_grace_ms: 300 }),
        ("end-session", Command::EndSession { session_id: 1, reason: EndReason::Expired }),
        (
            "batch",
            Command::Batch(vec![
                Command::CreateSession { ttl_ms: 5000, disconnect_grace_ms: 0 },
                Command::single(create("/e", "", 1, false)),
                Command::EndSession { session_id: 1, reason: EndReason::Closed },
            ]),
        ),
    ]
}

fn membership() -> Membership<NodeId, BasicNode> {
    let nodes: BTreeMap<NodeId, BasicNode> =
        (1..=3).map(|id| (id, BasicNode::new(format!("127.0.0.1:{}", 2180 + id)))).collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

/// Log entries as the leader proposes them: blank, membership, then commands.
fn entries(first_index: u64) -> Vec<(String, Entry)> {
    let mut entries = vec![
        ("blank".to_owned(), EntryPayload::Blank),
        ("membership".to_owned(), EntryPayload::Membership(membership())),
    ];
    entries.extend(commands().into_iter().map(|(name, command)| (name.to_owned(), EntryPayload::Normal(command))));
    entries
        .into_iter()
        .enumerate()
        .map(|(i, (name, payload))| (name, Entry { log_id: log_id(2, first_index + i as u64), payload }))
        .collect()
}

fn postcard<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encodes")
}

fn coord_log_record() -> Seeds {
    let mut seeds: Vec<(String, Vec<u8>)> =
        entries(1).into_iter().map(|(name, entry)| (format!("entry-{name}"), postcard(&entry))).collect();
    seeds.push(("vote".into(), postcard(&Vote::new_committed(3, 2))));
    seeds.push(("purged".into(), postcard(&Some(log_id(2, 9000)))));
    let mut framed = Vec::new();
    marina_daemon::record::push_framed(&mut framed, &postcard(&Vote::new(4, 1)));
    seeds.push(("vote-file".into(), framed));
    seeds
}

fn coord_log_segment() -> Seeds {
    let first = marina_fuzz_targets::coord::SEGMENT_FIRST_INDEX;
    let payloads: Vec<Vec<u8>> = entries(first).iter().map(|(_, entry)| postcard(entry)).collect();
    let mut raw = vec![0];
    for payload in &payloads {
        marina_daemon::record::push_framed(&mut raw, payload);
    }
    let mut torn = framed_input(&payloads);
    torn.extend_from_slice(&[200, 0, 1, 2, 3]);
    let mut damaged = raw.clone();
    damaged[9] ^= 0xff;
    vec![
        ("framed".into(), framed_input(&payloads)),
        ("torn-tail".into(), torn),
        ("raw".into(), raw.clone()),
        ("raw-cut".into(), raw[..raw.len() - 3].to_vec()),
        ("damaged-first".into(), damaged),
    ]
}

fn store() -> Store {
    let mut store = Store::new(HistoryLimits::default());
    let mut changes = Vec::new();
    for (_, command) in commands() {
        store.apply(command, &mut changes);
    }
    store.apply(Command::CreateSession { ttl_ms: 1000, disconnect_grace_ms: 0 }, &mut changes);
    store.apply(Command::single(create("/marina/gateway/members/g-", "x", 3, true)), &mut changes);
    store
}

fn coord_snapshot() -> Seeds {
    vec![("store".into(), postcard(&store())), ("empty".into(), postcard(&Store::new(HistoryLimits::default())))]
}

fn coord_raft_messages() -> Seeds {
    let vote = Vote::new_committed(2, 1);
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(log_id(2, 0)),
        entries: entries(1).into_iter().map(|(_, entry)| entry).collect(),
        leader_commit: Some(log_id(2, 3)),
    };
    let heartbeat =
        AppendEntriesRequest::<TypeConfig> { vote, prev_log_id: None, entries: Vec::new(), leader_commit: None };
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(2, 10)),
        last_membership: StoredMembership::new(Some(log_id(1, 1)), membership()),
        snapshot_id: "2-10-1".into(),
    };
    let install = InstallSnapshotRequest::<TypeConfig> { vote, meta, offset: 0, data: postcard(&store()), done: true };
    let ok: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId, Infallible>> = Ok(AppendEntriesResponse::Conflict);
    let granted: Result<VoteResponse<NodeId>, RaftError<NodeId, Infallible>> =
        Ok(VoteResponse::new(vote, Some(log_id(2, 3)), true));
    let installed: Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, Infallible>> =
        Ok(InstallSnapshotResponse { vote });
    vec![
        ("append".into(), postcard(&append)),
        ("heartbeat".into(), postcard(&heartbeat)),
        ("vote".into(), postcard(&VoteRequest::new(Vote::new(3, 2), Some(log_id(2, 9))))),
        ("install".into(), postcard(&install)),
        ("append-answer".into(), postcard(&ok)),
        ("vote-answer".into(), postcard(&granted)),
        ("install-answer".into(), postcard(&installed)),
    ]
}

fn coord_requests() -> Seeds {
    let op = |op: coord::op::Op| coord::Op { op: Some(op) };
    let create = |path: &str, session_id: u64, sequential: bool| coord::CreateRequest {
        path: path.into(),
        data: Bytes::from_static(b"data"),
        session_id,
        sequential,
    };
    let election = chunked_input(&[
        (7, coord::CreateSessionRequest { ttl_ms: 10_000, disconnect_grace_ms: 300 }.encode_to_vec()),
        (1, create("/marina/gateway/members/g-", 1, true).encode_to_vec()),
        (1, create("/marina/gateway/members/g-", 1, true).encode_to_vec()),
        (5, coord::ListRequest { path: "/marina/gateway/members".into(), stale: false }.encode_to_vec()),
        (
            6,
            coord::WatchRequest { path: "/marina/gateway/members".into(), recursive: true, ..Default::default() }
                .encode_to_vec(),
        ),
        (8, coord::CloseSessionRequest { session_id: 1, ..Default::default() }.encode_to_vec()),
        (4, coord::GetRequest { path: "/marina/gateway/members/g-0000000000".into(), stale: true }.encode_to_vec()),
    ]);
    let fenced = coord::TxnRequest {
        compares: vec![coord::Compare {
            path: "/marina/gateway/members/g-0000000000".into(),
            result: coord::compare::Result::Equal as i32,
            target: Some(coord::compare::Target::ModRevision(2)),
        }],
        success: vec![
            op(coord::op::Op::Set(coord::SetRequest {
                path: "/marina/apps/prod_web".into(),
                data: Bytes::from_static(br#"{"id":"/prod/web"}"#),
                expected_version: None,
                upsert: true,
            })),
            op(coord::op::Op::Create(create("/marina/instances/prod_web.1", 0, false))),
        ],
        failure: vec![op(coord::op::Op::Get(coord::GetRequest { path: "/marina".into(), stale: false }))],
    };
    let store_ops = chunked_input(&[
        (1, create("/a", 0, false).encode_to_vec()),
        (1, create("/a/b", 0, false).encode_to_vec()),
        (
            2,
            coord::SetRequest { path: "/a".into(), data: Bytes::new(), expected_version: Some(1), upsert: false }
                .encode_to_vec(),
        ),
        (0, fenced.encode_to_vec()),
        (3, coord::DeleteRequest { path: "/a".into(), expected_version: None, recursive: true }.encode_to_vec()),
        (3, coord::DeleteRequest { path: "/".into(), expected_version: None, recursive: true }.encode_to_vec()),
    ]);
    vec![("election".into(), election), ("store-ops".into(), store_ops)]
}

/// The tasks the gateway launches for its fixture apps.
fn tasks() -> Vec<agent::TaskInfo> {
    [BRIDGE, UBUNTU_2014]
        .iter()
        .map(|body| {
            let app = stored(body);
            let ports: Vec<u32> = (31_000..).take(app.port_count()).collect();
            task_info(&app, &app.id.task_id(RUN_ID), &ports)
        })
        .collect()
}

fn status(task: &agent::TaskInfo, state: agent::TaskState) -> agent::TaskStatus {
    agent::TaskStatus {
        task_id: task.task_id.clone(),
        framework_id: "marina".into(),
        agent_id: "agent-1".into(),
        state: state as i32,
        message: "started".into(),
        healthy: Some(true),
        container_id: "c0ffee".into(),
        uuid: RUN_ID.into(),
        timestamp: 1_764_000_000.5,
        host: "agent-1.local".into(),
        trace_context: HashMap::from([(
            "traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        )]),
        ..Default::default()
    }
}

fn agent_journal() -> Seeds {
    let dir = tempfile::tempdir().expect("temp dir");
    let (checkpoint, _) = Checkpoint::open(dir.path()).expect("a fresh work dir");
    let records: Vec<agent::TaskCheckpoint> = tasks()
        .into_iter()
        .map(|info| agent::TaskCheckpoint {
            status: Some(status(&info, agent::TaskState::TaskRunning)),
            handle_json: r#"{"kind":"docker","id":"c0ffee"}"#.into(),
            sandbox: format!("/var/lib/marina/agent/sandboxes/{}", info.task_id),
            killing: false,
            info: Some(info),
        })
        .collect();
    checkpoint.save_tasks(&records).expect("saved");
    for (sequence, record) in records.iter().enumerate() {
        let info = record.info.as_ref().expect("info");
        let update = agent::UpdateCheckpoint {
            sequence: sequence as u64 + 1,
            status: Some(status(info, agent::TaskState::TaskRunning)),
        };
        checkpoint.save_update(&update).expect("saved");
    }
    checkpoint.remove_update(1).expect("saved");
    let killing = agent::TaskCheckpoint { killing: true, ..records[1].clone() };
    checkpoint.save_task(&killing).expect("saved");
    checkpoint.remove_task(&records[0].info.as_ref().expect("info").task_id).expect("saved");
    drop(checkpoint);
    let file = fs::read(journal_path(dir.path())).expect("the journal");
    let mut payloads = Vec::new();
    let mut offset = 0;
    while offset < file.len() {
        let (payload, len) = parse_framed(&file[offset..]).expect("the agent's own journal");
        payloads.push(payload.to_vec());
        offset += len;
    }
    let mut raw = vec![0];
    raw.extend_from_slice(&file);
    let mut torn = raw.clone();
    torn.truncate(torn.len() - 5);
    let mut damaged = raw.clone();
    damaged[12] ^= 0x40;
    vec![
        ("framed".into(), framed_input(&payloads)),
        ("raw".into(), raw),
        ("raw-torn".into(), torn),
        ("damaged-first".into(), damaged),
    ]
}

fn journal_path(work_dir: &Path) -> PathBuf {
    work_dir.join("meta/journal")
}

fn master_message(epoch: u64, kind: master::master_message::Kind) -> Vec<u8> {
    master::MasterMessage { epoch, kind: Some(kind) }.encode_to_vec()
}

fn agent_master_messages() -> Seeds {
    use master::master_message::Kind;
    let tasks = tasks();
    let session = chunked_input(&[
        (
            0,
            master_message(
                3,
                Kind::Registered(master::Registered {
                    agent_id: "agent-1".into(),
                    heartbeat_interval_ms: 1000,
                    master_id: "m1".into(),
                }),
            ),
        ),
        (
            0,
            master_message(
                3,
                Kind::Launch(master::LaunchTasks {
                    framework_id: "marina".into(),
                    tasks: tasks.clone(),
                    trace_context: HashMap::new(),
                }),
            ),
        ),
        (
            0,
            master_message(
                3,
                Kind::Kill(master::KillTask {
                    task_id: tasks[0].task_id.clone(),
                    framework_id: "marina".into(),
                    grace_period_seconds: 5,
                }),
            ),
        ),
        (
            0,
            master_message(
                3,
                Kind::Acknowledge(master::AcknowledgeUpdate { task_id: tasks[0].task_id.clone(), uuid: RUN_ID.into() }),
            ),
        ),
        (0, master_message(4, Kind::Shutdown(master::ShutdownAgent { message: "removed".into() }))),
    ]);
    vec![("session".into(), session)]
}

fn accept(tasks: Vec<agent::TaskInfo>) -> master::AcceptRequest {
    master::AcceptRequest {
        framework_id: "marina".into(),
        offer_ids: vec!["offer-1".into(), "offer-2".into()],
        launch: tasks,
        filters: Some(master::Filters { refuse_seconds: 5.0 }),
    }
}

fn master_scheduler_requests() -> Seeds {
    let tasks = tasks();
    let task_id = tasks[0].task_id.clone();
    let calls = chunked_input(&[
        (0, accept(tasks.clone()).encode_to_vec()),
        (
            1,
            master::DeclineRequest {
                framework_id: "marina".into(),
                offer_ids: vec!["offer-3".into()],
                filters: Some(master::Filters { refuse_seconds: 120.0 }),
            }
            .encode_to_vec(),
        ),
        (
            2,
            master::KillRequest {
                framework_id: "marina".into(),
                task_id: task_id.clone(),
                agent_id: "agent-1".into(),
                grace_period_seconds: 3,
            }
            .encode_to_vec(),
        ),
        (
            3,
            master::AcknowledgeRequest {
                framework_id: "marina".into(),
                agent_id: "agent-1".into(),
                task_id: task_id.clone(),
                uuid: RUN_ID.into(),
                more: vec![master::UpdateAcknowledgement {
                    agent_id: "agent-2".into(),
                    task_id: task_id.clone(),
                    uuid: RUN_ID.into(),
                }],
            }
            .encode_to_vec(),
        ),
        (
            4,
            master::ReconcileRequest {
                framework_id: "marina".into(),
                tasks: vec![master::reconcile_request::Task { task_id, agent_id: "agent-1".into() }],
            }
            .encode_to_vec(),
        ),
    ]);
    vec![("calls".into(), calls), ("accept".into(), chunked_input(&[(0, accept(tasks).encode_to_vec())]))]
}

fn master_agent_messages() -> Seeds {
    use master::agent_message::Kind;
    let tasks = tasks();
    let info = agent::AgentInfo {
        agent_id: "agent-1".into(),
        hostname: "agent-1.local".into(),
        address: "127.0.0.1:5051".into(),
        resources: Some(agent::Resources {
            cpus: 4.0,
            mem_mb: 15_872.0,
            disk_mb: 100_000.0,
            ports: vec![agent::Range { begin: 31_000, end: 32_000 }, agent::Range { begin: 8080, end: 8080 }],
        }),
        attributes: vec![agent::Attribute { name: "runtime".into(), value: "docker".into() }],
        runtime: "docker".into(),
        version: "0.1.0".into(),
        principal: String::new(),
    };
    let register = master::Register {
        info: Some(info),
        tasks: tasks
            .iter()
            .map(|task| agent::TaskReport {
                task: Some(task.clone()),
                status: Some(status(task, agent::TaskState::TaskRunning)),
            })
            .collect(),
        highest_epoch: 2,
    };
    let message = |kind| master::AgentMessage { kind: Some(kind) }.encode_to_vec();
    let stream = chunked_input(&[
        (0, message(Kind::Register(register))),
        (0, message(Kind::Heartbeat(master::Heartbeat {}))),
        (0, message(Kind::Update(status(&tasks[0], agent::TaskState::TaskFinished)))),
    ]);
    vec![("stream".into(), stream)]
}
