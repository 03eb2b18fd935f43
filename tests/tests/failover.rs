//! Master failover with real processes: SIGKILL and SIGTERM of the leading master, a frozen
//! leader fenced off, agents and their tasks carried over to the new leader.

use std::time::Duration;

use marina_proto::agent::v1::TaskState;
use marina_tests::processes::Coord;
use marina_tests::scheduler::command_task;
use marina_tests::services::Service;
use marina_tests::{ProcessCluster, TestScheduler, Topology, eventually};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(30);

/// Settings that keep the tests quick: a short re-registration window and session TTL.
const MASTER_ENV: &[(&str, &str)] = &[
    ("MARINA_MASTER_AGENT_REREGISTER_TIMEOUT_MS", "10000"),
    ("MARINA_MASTER_SESSION_TTL_MS", "2000"),
    ("MARINA_MASTER_ALLOCATION_INTERVAL_MS", "50"),
];

const AGENT_ENV: &[(&str, &str)] = &[
    ("MARINA_AGENT_RESOURCES__CPUS", "4"),
    ("MARINA_AGENT_RESOURCES__MEM_MB", "2048"),
    ("MARINA_AGENT_RESOURCES__DISK_MB", "1024"),
];

/// A coord quorum in this process, `masters` masters (the first test's defaults unless
/// `master_env` says otherwise) and one agent of the process runtime.
async fn setup(masters: usize) -> ProcessCluster {
    setup_with(masters, MASTER_ENV, 3).await
}

/// Like [`setup`], the masters configured with `master_env`, on `coords` coord nodes.
async fn setup_with(masters: usize, master_env: &[(&str, &str)], coords: usize) -> ProcessCluster {
    let topology = Topology::new(masters, 1, "process", 0)
        .coord(Coord::InProcess(coords))
        .master_env(master_env)
        .agent_env(AGENT_ENV);
    ProcessCluster::start(topology).await
}

/// The agent's view: (master epoch it follows, its tasks' container ids by task id).
async fn agent_view(agent: &Service) -> Option<(u64, std::collections::BTreeMap<String, String>)> {
    let state = agent.get_json("/state").await?;
    let tasks = state["tasks"]
        .as_array()?
        .iter()
        .map(|t| {
            (t["id"].as_str().unwrap_or_default().to_owned(), t["container_id"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    Some((state["master"]["epoch"].as_u64()?, tasks))
}

async fn launch_two_tasks(setup: &ProcessCluster) -> (TestScheduler, String) {
    let addresses: Vec<String> = setup.masters.iter().map(|m| m.address.clone()).collect();
    let mut scheduler = TestScheduler::subscribe(setup.ca(), &addresses, "failover-test", None).await;
    scheduler.pump_until(WAIT, "an offer", |s| !s.offers.is_empty()).await;
    let offer = scheduler.offers[0].clone();
    let tasks = vec![
        command_task("sleeper-1", "exec sleep 600", 0.5, 32.0),
        command_task("sleeper-2", "exec sleep 600", 0.5, 32.0),
    ];
    scheduler.accept(vec![offer.offer_id], tasks).await.unwrap();
    scheduler
        .pump_until(WAIT, "both tasks running", |s| {
            ["sleeper-1", "sleeper-2"]
                .iter()
                .all(|id| s.latest(id).is_some_and(|t| t.state() == TaskState::TaskRunning))
        })
        .await;
    (scheduler, offer.agent_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_hands_agents_and_tasks_to_a_standby() {
    let mut setup = setup(2).await;
    let (mut scheduler, agent_id) = launch_two_tasks(&setup).await;
    let (old, old_epoch) = setup.leading_master().await;
    let (_, containers_before) = agent_view(&setup.agents[0]).await.unwrap();

    let killed_at = Instant::now();
    setup.masters[old].kill().await;
    let (new, new_epoch) = setup.leading_master().await;
    let elected_after = killed_at.elapsed();
    assert_ne!(new, old);
    assert!(new_epoch > old_epoch);
    assert!(elected_after < Duration::from_secs(3), "standby took {elected_after:?} to lead");

    // The agent re-registers with the new leader, with its tasks still running, untouched.
    let (epoch, containers_after) = eventually(WAIT, "the agent to follow the new leader", || async {
        agent_view(&setup.agents[0]).await.filter(|(epoch, _)| *epoch == new_epoch)
    })
    .await;
    assert_eq!(epoch, new_epoch);
    assert_eq!(containers_after, containers_before, "the same processes run: nothing was restarted");
    let state = eventually(WAIT, "the new leader to know the tasks", || async {
        let state = setup.masters[new].get_json("/master/state").await?;
        (state["tasks"].as_array()?.len() == 2).then_some(state)
    })
    .await;
    assert!(state["tasks"].as_array().unwrap().iter().all(|t| t["state"] == "TASK_RUNNING"), "{state}");

    // The scheduler re-subscribes as the same framework and reconciles: same tasks.
    let framework_id = scheduler.framework_id.clone();
    scheduler.resubscribe().await;
    assert_eq!(scheduler.framework_id, framework_id);
    let tasks = vec![("sleeper-1".to_owned(), agent_id.clone()), ("sleeper-2".to_owned(), agent_id.clone())];
    scheduler.reconcile(&tasks).await;
    scheduler
        .pump_until(WAIT, "reconciliation shows both running", |s| {
            ["sleeper-1", "sleeper-2"]
                .iter()
                .all(|id| s.latest(id).is_some_and(|t| t.state() == TaskState::TaskRunning && t.uuid.is_empty()))
        })
        .await;

    // The killed master comes back as a standby.
    setup.masters[old].restart();
    setup.masters[old].wait_healthy().await;
    let (leading, _) = setup.leading_master().await;
    assert_eq!(leading, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_the_leader_hands_over_at_once() {
    // A long session, and as long a grace for a dropped connection: only a resignation can
    // hand over quickly (with the default 300 ms grace, a process that merely exited would
    // lose its session about as fast, and the test could not tell).
    const TTL_MS: u64 = 10_000;
    let env = [
        ("MARINA_MASTER_AGENT_REREGISTER_TIMEOUT_MS", "10000"),
        ("MARINA_MASTER_SESSION_TTL_MS", "10000"),
        ("MARINA_MASTER_SESSION_DISCONNECT_GRACE_MS", "10000"),
    ];
    let mut setup = setup_with(2, &env, 3).await;
    let (old, _) = setup.leading_master().await;
    let status = setup.masters[old].terminate().await.unwrap();
    let stopped_at = Instant::now();
    assert!(status.success(), "{status:?}");
    let (new, _) = setup.leading_master().await;
    let handover = stopped_at.elapsed();
    assert_ne!(new, old);
    // Resigning deletes the member node first: no session timeout is waited for.
    assert!(handover < Duration::from_millis(TTL_MS / 2), "handover took {handover:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_fenced_and_returns_as_a_standby() {
    let setup = setup(2).await;
    let (_scheduler, _) = launch_two_tasks(&setup).await;
    let (old, old_epoch) = setup.leading_master().await;
    let other = 1 - old;

    setup.masters[old].freeze();
    // Its session (2 s TTL) expires; the other master takes over.
    let new_epoch = eventually(WAIT, "the other master to lead", || async {
        let state = setup.masters[other].get_json("/master/state").await?;
        (state["elected"] == true).then(|| state["epoch"].as_u64()).flatten()
    })
    .await;
    assert!(new_epoch > old_epoch);
    eventually(WAIT, "the agent to follow the new leader", || async {
        agent_view(&setup.agents[0]).await.filter(|(epoch, _)| *epoch == new_epoch)
    })
    .await;

    setup.masters[old].thaw();
    // The thawed master learns it lost its session and becomes a standby; it never leads
    // again under its old epoch, and the agent keeps obeying the new leader only.
    eventually(WAIT, "the old leader to step down", || async {
        let state = setup.masters[old].get_json("/master/state").await?;
        (state["elected"] == false).then_some(())
    })
    .await;
    let (epoch, tasks) = agent_view(&setup.agents[0]).await.unwrap();
    assert_eq!(epoch, new_epoch, "the agent still follows the new leader");
    assert_eq!(tasks.len(), 2);
    let (leading, epoch) = setup.leading_master().await;
    assert_eq!((leading, epoch), (other, new_epoch));
    assert!(setup.masters[old].log().contains("leadership ended"), "the old leader logged its step-down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_missing_after_a_failover_become_unreachable_with_their_tasks() {
    let env = [("MARINA_MASTER_AGENT_REREGISTER_TIMEOUT_MS", "1500")];
    let mut cluster = setup_with(2, &env, 1).await;
    let addresses: Vec<String> = cluster.masters.iter().map(|m| m.address.clone()).collect();
    let mut scheduler = TestScheduler::subscribe(cluster.ca(), &addresses, "unreachable", None).await;
    scheduler.pump_until(WAIT, "an offer", |s| !s.offers.is_empty()).await;
    let offer = scheduler.offers[0].clone();
    scheduler
        .accept(vec![offer.offer_id.clone()], vec![command_task("orphan", "exec sleep 600", 0.1, 16.0)])
        .await
        .unwrap();
    scheduler
        .pump_until(WAIT, "the task to run", |s| {
            s.latest("orphan").is_some_and(|t| t.state() == TaskState::TaskRunning)
        })
        .await;

    // The agent dies, then the leading master: the new leader never hears from the agent.
    cluster.agents[0].kill().await;
    let (old, _) = cluster.leading_master().await;
    cluster.masters[old].kill().await;
    cluster.leading_master().await;
    scheduler.resubscribe().await;
    scheduler.reconcile(&[("orphan".to_owned(), offer.agent_id.clone())]).await;
    scheduler
        .pump_until(WAIT, "TASK_UNREACHABLE once the re-registration window closes", |s| {
            s.latest("orphan").is_some_and(|t| t.state() == TaskState::TaskUnreachable)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_becomes_unreachable_and_its_tasks_come_back_with_it() {
    // Unreachable after 3 missed heartbeats of 200 ms.
    let env = [("MARINA_MASTER_AGENT_PING_INTERVAL_MS", "200"), ("MARINA_MASTER_MAX_AGENT_PING_TIMEOUTS", "3")];
    let cluster = setup_with(1, &env, 1).await;
    let (master, agent) = (&cluster.masters[0], &cluster.agents[0]);
    let mut scheduler =
        TestScheduler::subscribe(cluster.ca(), std::slice::from_ref(&master.address), "silent", None).await;
    scheduler.pump_until(WAIT, "an offer", |s| !s.offers.is_empty()).await;
    let offer = scheduler.offers[0].clone();
    scheduler
        .accept(vec![offer.offer_id.clone()], vec![command_task("patient", "exec sleep 600", 0.1, 16.0)])
        .await
        .unwrap();
    let running = |s: &TestScheduler| s.latest("patient").is_some_and(|t| t.state() == TaskState::TaskRunning);
    scheduler.pump_until(WAIT, "the task to run", running).await;
    let (_, containers_before) = agent_view(agent).await.unwrap();

    agent.freeze();
    scheduler
        .pump_until(WAIT, "TASK_UNREACHABLE while the agent is silent", |s| {
            s.latest("patient").is_some_and(|t| t.state() == TaskState::TaskUnreachable)
        })
        .await;
    agent.thaw();
    // The agent notices the master dropped its link, re-registers, and the master tells the
    // scheduler the task is running after all: the same process, never restarted.
    scheduler.pump_until(WAIT, "TASK_RUNNING again once the agent is back", running).await;
    let (_, containers_after) = agent_view(agent).await.unwrap();
    assert_eq!(containers_after, containers_before);
    let state = master.get_json("/master/state").await.unwrap();
    assert!(state["agents"].as_array().unwrap().iter().all(|a| a["status"] == "active"), "{state}");
}
