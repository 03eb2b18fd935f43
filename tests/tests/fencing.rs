//! Epoch fencing as the agent enforces it: once an agent has obeyed a master's epoch, a
//! command stamped with an older epoch — what a deposed master would send — is refused and
//! the link that carried it dropped, while the same command stamped with the current epoch
//! is obeyed.
//!
//! The agent only ever links to the master coord says leads, so a real deposed master never
//! reaches it: to put a stale command on the wire, the test takes the master's place in the
//! election with a master of its own whose every message it writes.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use marina_coord_client::{CoordClient, CoordUrl, Election, ElectionState, Session};
use marina_daemon::leader::MemberInfo;
use marina_daemon::tls::Role;
use marina_daemon::{Endpoint, Metrics, Shutdown};
use marina_proto::layout::MASTER_ELECTION_DIR;
use marina_proto::master::v1::agent_link_server::{AgentLink, AgentLinkServer};
use marina_proto::master::v1::{
    AgentMessage, KillTask, LaunchTasks, MasterMessage, Register, Registered, agent_message, master_message,
};
use marina_tests::scheduler::command_task;
use marina_tests::services::Service;
use marina_tests::{ProcessCluster, Topology, eventually};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(30);
const SIM_AGENT: &[(&str, &str)] = &[("MARINA_AGENT_RESOURCES__CPUS", "4"), ("MARINA_AGENT_RESOURCES__MEM_MB", "4096")];
const FRAMEWORK: &str = "fencing-test";

/// A master the test drives by hand: it leads the master election like a real one (so its
/// epoch is a real one, coord's), and hands every agent link to the test, which decides what
/// is sent on it and with which epoch.
struct ScriptedMaster {
    /// The epoch coord gave this master's leadership.
    epoch: u64,
    links: mpsc::UnboundedReceiver<AgentLinkByHand>,
    shutdown: Shutdown,
    // Held for the life of the test: dropping them would end the leadership.
    _election: Election,
    _session: Session,
}

/// One agent link as the scripted master sees it: the agent's `Register`, what the agent
/// sends after it, and the sender of the master's messages.
struct AgentLinkByHand {
    register: Register,
    inbound: Streaming<AgentMessage>,
    outbound: mpsc::UnboundedSender<Result<MasterMessage, Status>>,
}

struct Links(mpsc::UnboundedSender<AgentLinkByHand>);

#[tonic::async_trait]
impl AgentLink for Links {
    type AttachStream = BoxStream<'static, Result<MasterMessage, Status>>;

    async fn attach(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let register = match inbound.message().await? {
            Some(AgentMessage { kind: Some(agent_message::Kind::Register(register)) }) => register,
            other => return Err(Status::invalid_argument(format!("the first message was not Register: {other:?}"))),
        };
        let (outbound, commands) = mpsc::unbounded_channel();
        self.0
            .send(AgentLinkByHand { register, inbound, outbound })
            .map_err(|_| Status::unavailable("the test is over"))?;
        let stream = futures::stream::unfold(commands, |mut commands| async move {
            commands.recv().await.map(|command| (command, commands))
        });
        Ok(Response::new(stream.boxed()))
    }
}

impl ScriptedMaster {
    /// Serves the agent link on a port of its own and leads the master election (once no
    /// other master does).
    async fn elect(coord: &CoordUrl, ca: &marina_tests::TestCa) -> Self {
        let (sender, links) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address").to_string();
        // A master certificate: the agent checks whom it attaches to.
        let tls = ca.tls(Role::Master, Some("scripted"));
        let (port, _health) = Endpoint::new("master", Metrics::new("master"))
            .tls(Some(tls.clone()))
            .allow("/marina.master.v1.AgentLink/", &[Role::Agent])
            .grpc(AgentLinkServer::new(Links(sender)))
            .build()
            .await;
        let shutdown = Shutdown::new();
        tokio::spawn(marina_daemon::endpoint::serve(listener, port, shutdown.clone()));

        let client = CoordClient::with_tls(coord, Some(tls));
        let session =
            client.create_session(Duration::from_secs(10), Duration::from_millis(300)).await.expect("session");
        let member = MemberInfo { id: "scripted-master".into(), address, version: marina_daemon::VERSION.into() };
        let election =
            Election::join(&client, &session, MASTER_ELECTION_DIR, member.to_bytes()).await.expect("joining");
        let mut state = election.state();
        let epoch = eventually(WAIT, "the scripted master to lead", || {
            let observed = *state.borrow_and_update();
            async move {
                match observed {
                    ElectionState::Leading { epoch } => Some(epoch),
                    _ => None,
                }
            }
        })
        .await;
        Self { epoch, links, shutdown, _election: election, _session: session }
    }

    /// The next link the agent opens.
    async fn next_link(&mut self) -> AgentLinkByHand {
        tokio::time::timeout(WAIT, self.links.recv())
            .await
            .expect("the agent to attach within the deadline")
            .expect("the server runs")
    }
}

impl Drop for ScriptedMaster {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

impl AgentLinkByHand {
    fn send(&self, epoch: u64, kind: master_message::Kind) {
        self.outbound.send(Ok(MasterMessage { epoch, kind: Some(kind) })).expect("the link is open");
    }

    /// Waits until the agent ends the link (heartbeats and status updates before that are
    /// of no interest here). The outbound side stays open meanwhile: the master does not
    /// hang up, so only the agent can.
    async fn wait_for_agent_to_hang_up(&mut self) {
        let ended = async { while let Ok(Some(_)) = self.inbound.message().await {} };
        tokio::time::timeout(WAIT, ended).await.expect("the agent to drop the link within the deadline");
    }
}

fn registered(agent_id: &str) -> master_message::Kind {
    master_message::Kind::Registered(Registered {
        agent_id: agent_id.to_owned(),
        heartbeat_interval_ms: 1000,
        master_id: "scripted-master".into(),
    })
}

fn launch(task_id: &str) -> master_message::Kind {
    master_message::Kind::Launch(LaunchTasks {
        framework_id: FRAMEWORK.into(),
        tasks: vec![command_task(task_id, "sleep 1000", 0.1, 16.0)],
        trace_context: Default::default(),
    })
}

fn kill(task_id: &str) -> master_message::Kind {
    master_message::Kind::Kill(KillTask {
        task_id: task_id.to_owned(),
        framework_id: FRAMEWORK.into(),
        grace_period_seconds: 0,
    })
}

/// The agent's tasks by id, with their states.
async fn agent_tasks(agent: &Service) -> Option<std::collections::BTreeMap<String, String>> {
    let state = agent.get_json("/state").await?;
    let tasks = state["tasks"].as_array()?;
    Some(
        tasks
            .iter()
            .map(|t| (t["id"].as_str().unwrap_or_default().into(), t["state"].as_str().unwrap_or_default().into()))
            .collect(),
    )
}

/// The highest epoch the agent has checkpointed as obeyed: what it holds masters to, even
/// after a restart.
fn checkpointed_epoch(agent: &Service) -> Option<u64> {
    let meta = std::fs::read(agent.work_dir.join("meta/agent.json")).ok()?;
    serde_json::from_slice::<serde_json::Value>(&meta).ok()?["highest_epoch"].as_u64()
}

/// An agent that has obeyed epoch P refuses a Kill and a Launch stamped with the epoch of
/// the master deposed before P — the running task is not killed, the task is not launched,
/// the agent drops the link, says why in its log and keeps P as its highest epoch — and,
/// as a control, obeys that same Launch stamped with P: the refusal is the epoch's doing,
/// not the message's. Without the agent's check the deposed master's kill would stop a task
/// the current leader counts as running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_commands_stamped_with_a_deposed_masters_epoch() {
    let mut cluster = ProcessCluster::start(Topology::new(1, 1, "sim", 0).agent_env(SIM_AGENT)).await;
    let url = cluster.url.clone();
    let ca = cluster.ca().clone();
    let ProcessCluster { masters, agents, .. } = &mut cluster;
    let (master, agent) = (&mut masters[0], &agents[0]);

    // The agent obeys the real master: its epoch becomes the deposed one below.
    let deposed_epoch = eventually(WAIT, "the agent to register with the real master", || async {
        let state = agent.get_json("/state").await?;
        (state["master"]["registered"] == true).then(|| state["master"]["epoch"].as_u64()).flatten()
    })
    .await;
    assert_eq!(checkpointed_epoch(agent), Some(deposed_epoch));
    // SIGTERM: the real master resigns, and the scripted one leads with a newer epoch.
    let status = master.terminate().await.expect("the master ran");
    assert!(status.success(), "{status:?}");
    let mut scripted = ScriptedMaster::elect(&url, &ca).await;
    let epoch = scripted.epoch;
    assert!(epoch > deposed_epoch, "coord orders leaderships: {epoch} after {deposed_epoch}");

    // First link: the agent obeys the new epoch (registration, then a launch).
    let link = scripted.next_link().await;
    assert_eq!(link.register.highest_epoch, deposed_epoch);
    let agent_id = link.register.info.as_ref().expect("agent info").agent_id.clone();
    assert!(!agent_id.is_empty(), "the real master gave the agent its id");
    link.send(epoch, registered(&agent_id));
    link.send(epoch, launch("kept"));
    eventually(WAIT, "the agent to run `kept` under the new epoch", || async {
        let tasks = agent_tasks(agent).await?;
        (tasks.get("kept")? == "TASK_RUNNING" && checkpointed_epoch(agent)? == epoch).then_some(())
    })
    .await;

    // A kill stamped with the deposed epoch: refused, and the link it came on dropped.
    let mut link = link;
    link.send(deposed_epoch, kill("kept"));
    link.wait_for_agent_to_hang_up().await;

    // The agent comes back (coord still says the scripted master leads), telling it the
    // epoch it obeyed and that `kept` still runs.
    let mut link = scripted.next_link().await;
    assert_eq!(link.register.highest_epoch, epoch, "the agent holds masters to the newest epoch it obeyed");
    let reported = link.register.tasks.iter().find(|r| r.task.as_ref().is_some_and(|t| t.task_id == "kept"));
    let kept_state = reported.and_then(|r| r.status.as_ref()).map(|s| s.state());
    assert_eq!(
        kept_state,
        Some(marina_proto::agent::v1::TaskState::TaskRunning),
        "the refused kill left `kept` running"
    );
    // A launch stamped with the deposed epoch: refused too.
    link.send(epoch, registered(&agent_id));
    link.send(deposed_epoch, launch("intruder"));
    link.wait_for_agent_to_hang_up().await;

    // The control: the very same launch, stamped with the current epoch, is obeyed.
    let link = scripted.next_link().await;
    assert_eq!(link.register.highest_epoch, epoch);
    link.send(epoch, registered(&agent_id));
    link.send(epoch, launch("welcome"));
    let tasks = eventually(WAIT, "the agent to run `welcome`", || async {
        let tasks = agent_tasks(agent).await?;
        (tasks.get("welcome")? == "TASK_RUNNING").then_some(tasks)
    })
    .await;
    // Messages on a link are handled in order and the intruder's link ended before this
    // one began: had the stale launch been obeyed, `intruder` would be listed by now.
    let expected: std::collections::BTreeMap<String, String> =
        [("kept", "TASK_RUNNING"), ("welcome", "TASK_RUNNING")].map(|(id, state)| (id.into(), state.into())).into();
    assert_eq!(tasks, expected, "neither stale command was obeyed");
    assert_eq!(checkpointed_epoch(agent), Some(epoch), "a refused epoch is never recorded");
    let refusal = format!("refused a command from a deposed master (epoch {deposed_epoch} < {epoch})");
    let warned = agent.log().lines().filter(|line| line.contains("WARN") && line.contains(&refusal)).count();
    assert_eq!(warned, 2, "each refusal is a warning of its own: {refusal}");
    let metrics = agent.get_text("/metrics").await.unwrap();
    assert!(metrics.lines().any(|line| line == "marina_agent_stale_commands_refused_total 2"), "counted:\n{metrics}");
    drop(scripted);
}
