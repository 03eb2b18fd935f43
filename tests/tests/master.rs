//! The master with real agents (sim runtime) in one process: offers, fair shares, launch
//! validation, status routing, kill, reconciliation, standby redirects.

use std::time::Duration;

use marina_proto::agent::v1::TaskState;
use marina_tests::scheduler::command_task;
use marina_tests::{MarinaCluster, TestScheduler};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_get_fair_shares_of_offers() {
    let cluster = MarinaCluster::builder().masters(1).agents(4).start().await;
    let masters = cluster.master_addresses();
    // The first, alone, is offered every agent; once the second has subscribed it hands them
    // back (no refusal), and the next round splits them between two frameworks that hold
    // nothing. (Subscribed at once, a round between the two subscriptions could give the
    // first everything, and the second would wait for offers to time out.)
    let mut first = TestScheduler::subscribe(cluster.ca(), &masters, "first", None).await;
    first.pump_until(WAIT, "every agent offered to the first", |s| s.offers.len() == 4).await;
    let mut second = TestScheduler::subscribe(cluster.ca(), &masters, "second", None).await;
    first.decline_all().await;
    // Four equal agents, two equal frameworks: two each (DRF).
    first.pump_until(WAIT, "two offers", |s| s.offers.len() >= 2).await;
    second.pump_until(WAIT, "two offers", |s| s.offers.len() >= 2).await;
    assert_eq!(first.offers.len(), 2, "{:?}", first.offers);
    assert_eq!(second.offers.len(), 2, "{:?}", second.offers);
    let agents_of =
        |s: &TestScheduler| s.offers.iter().map(|o| o.agent_id.clone()).collect::<std::collections::HashSet<_>>();
    assert!(agents_of(&first).is_disjoint(&agents_of(&second)), "an agent's resources go to one framework at a time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launches_are_validated_against_the_offer_and_run() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).start().await;
    let mut scheduler = TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "launcher", None).await;
    scheduler.pump_until(WAIT, "an offer", |s| !s.offers.is_empty()).await;
    let offer = scheduler.offers[0].clone();
    let offered = offer.resources.clone().unwrap();
    assert_eq!(offered.cpus, 4.0);

    let too_big = command_task("too-big", "sleep 1000", offered.cpus + 1.0, 64.0);
    let error = scheduler.accept(vec![offer.offer_id.clone()], vec![too_big]).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().contains("exceed") && error.message().contains("cpus"), "{}", error.message());

    // The refused offer's resources come back in a later offer.
    scheduler.pump_until(WAIT, "a new offer", |s| !s.offers.is_empty()).await;
    let offer = scheduler.offers[0].clone();
    let tasks = vec![command_task("web-1", "sleep 1000", 1.0, 128.0), command_task("web-2", "sleep 1000", 1.0, 128.0)];
    scheduler.accept(vec![offer.offer_id.clone()], tasks).await.unwrap();
    scheduler
        .pump_until(WAIT, "both tasks running", |s| {
            ["web-1", "web-2"].iter().all(|id| s.latest(id).is_some_and(|t| t.state() == TaskState::TaskRunning))
        })
        .await;
    let running = scheduler.latest("web-1").unwrap().clone();
    assert_eq!(running.agent_id, offer.agent_id);
    assert_eq!(running.host, "agent-0.test");

    // Reused task ids are refused; kills are routed; reconciliation answers.
    scheduler.pump_until(WAIT, "another offer", |s| !s.offers.is_empty()).await;
    let offer = scheduler.offers[0].clone();
    let remaining = offer.resources.clone().unwrap();
    assert!((remaining.cpus - 2.0).abs() < 1e-9, "the offer excludes running tasks: {remaining:?}");
    let duplicate =
        scheduler.accept(vec![offer.offer_id], vec![command_task("web-1", "x", 0.1, 1.0)]).await.unwrap_err();
    assert!(duplicate.message().contains("already running"), "{}", duplicate.message());

    scheduler.kill("web-2", &running.agent_id).await;
    scheduler
        .pump_until(WAIT, "web-2 killed", |s| s.latest("web-2").is_some_and(|t| t.state() == TaskState::TaskKilled))
        .await;

    let count = scheduler.updates.len();
    scheduler.reconcile(&[("web-1".into(), running.agent_id.clone()), ("nope".into(), running.agent_id.clone())]).await;
    scheduler.pump_until(WAIT, "reconciliation answers", |s| s.updates.len() >= count + 2).await;
    let answers = &scheduler.updates[count..];
    let web1 = answers.iter().find(|s| s.task_id == "web-1").unwrap();
    assert_eq!(web1.state(), TaskState::TaskRunning);
    assert!(web1.uuid.is_empty(), "reconciliation answers are not acknowledged");
    assert_eq!(answers.iter().find(|s| s.task_id == "nope").unwrap().state(), TaskState::TaskGone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_redirect_to_the_leader() {
    let cluster = MarinaCluster::builder().masters(2).agents(0).start().await;
    let leader = cluster.leading_master().await;
    let standby = 1 - leader;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .use_preconfigured_tls(cluster.ca().operator().http1_client_config(marina_tests::tls::ANY_SERVER).unwrap())
        .build()
        .unwrap();
    // The standby learns who leads from the election, a moment after the leader knows.
    let response = marina_tests::eventually(WAIT, "the standby to redirect to the leader", || async {
        let url = format!("https://{}/master/redirect", cluster.masters[standby].address);
        let response = http.get(url).send().await.ok()?;
        (response.status() == 307).then_some(response)
    })
    .await;
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains(&cluster.masters[leader].address.to_string()), "{location}");

    let mut client = marina_proto::master::v1::operator_client::OperatorClient::new(marina_tests::tls::channel(
        &cluster.ca().operator(),
        cluster.masters[standby].address,
    ));
    let status = client.get_state(marina_proto::master::v1::GetStateRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(marina_daemon::leader::leader_hint(&status), Some(cluster.masters[leader].address.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_agent_gets_no_offers_and_its_tasks_are_killed() {
    let cluster = MarinaCluster::builder().masters(1).agents(2).start().await;
    let mut scheduler = TestScheduler::subscribe(cluster.ca(), &cluster.master_addresses(), "drain", None).await;
    scheduler.pump_until(WAIT, "offers from both agents", |s| s.offers.len() >= 2).await;
    let offer = scheduler.offers[0].clone();
    scheduler
        .accept(vec![offer.offer_id.clone()], vec![command_task("moving", "sleep 1000", 0.5, 64.0)])
        .await
        .unwrap();
    scheduler
        .pump_until(WAIT, "the task to run", |s| {
            s.latest("moving").is_some_and(|t| t.state() == TaskState::TaskRunning)
        })
        .await;

    let leader = cluster.masters[cluster.leading_master().await].address;
    let mut operator = marina_proto::master::v1::operator_client::OperatorClient::new(marina_tests::tls::channel(
        &cluster.ca().operator(),
        leader,
    ));
    operator
        .drain_agent(marina_proto::master::v1::DrainAgentRequest { agent_id: offer.agent_id.clone() })
        .await
        .unwrap();
    scheduler
        .pump_until(WAIT, "the task to be killed", |s| {
            s.latest("moving").is_some_and(|t| t.state() == TaskState::TaskKilled)
        })
        .await;
    // Later offers only come from the other agent. Everything offered so far goes back
    // (`decline_all` empties `offers`), so what `offers` holds from here on was offered
    // after the drain. Declined without a filter, the other agent is offered again at the
    // next allocation round; one round offers every free agent to the only framework at
    // once, so that round would carry the drained agent (idle since its task was killed)
    // too, were it still offered.
    scheduler.decline_all().await;
    scheduler
        .pump_until(WAIT, "an offer of the other agent after the drain", |s| {
            s.offers.iter().any(|o| o.agent_id != offer.agent_id)
        })
        .await;
    assert!(scheduler.offers.iter().all(|o| o.agent_id != offer.agent_id), "{:?}", scheduler.offers);
    let state = operator.get_state(marina_proto::master::v1::GetStateRequest {}).await.unwrap().into_inner();
    let drained = state.agents.iter().find(|a| a.info.as_ref().unwrap().agent_id == offer.agent_id).unwrap();
    assert_eq!(drained.status, "draining");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_whose_queue_overflows_is_unsubscribed_and_loses_nothing_by_reconciling() {
    let cluster =
        MarinaCluster::builder().masters(1).agents(1).master_config(|c| c.scheduler_queue_events = 16).start().await;
    let masters = cluster.master_addresses();
    let mut scheduler = TestScheduler::subscribe(cluster.ca(), &masters, "overflowing", None).await;
    // Forty answers at once into a queue of sixteen: the master ends the subscription
    // rather than drop the ones that do not fit (nobody would resend them).
    let unknown: Vec<(String, String)> = (0..40).map(|i| (format!("unknown-{i}"), String::new())).collect();
    scheduler.reconcile(&unknown).await;
    scheduler.pump_until_closed(WAIT).await;
    let answered = scheduler.updates.len();
    assert!(answered < unknown.len(), "{answered} answers came through a queue of 16");
    let operator = marina_tests::tls::http_client(&cluster.ca().operator());
    let metrics = operator.get(format!("https://{}/metrics", masters[0])).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("marina_master_scheduler_overflows_total 1"), "{metrics}");

    // Subscribed again, the scheduler asks in pieces that fit, and gets every answer.
    scheduler.resubscribe().await;
    for piece in unknown.chunks(10) {
        scheduler.reconcile(piece).await;
        let wanted: Vec<String> = piece.iter().map(|(task_id, _)| task_id.clone()).collect();
        scheduler
            .pump_until(WAIT, "every answer of the piece", |s| {
                wanted.iter().all(|id| s.latest(id).is_some_and(|t| t.state() == TaskState::TaskUnknown))
            })
            .await;
    }
}

/// Task ids name tasks within a framework, as in Mesos: another framework can neither kill
/// a task nor learn its state by naming its id — the master answers as for a task it does
/// not have — and the owner's task runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framework_acts_only_on_its_own_tasks() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).start().await;
    let masters = cluster.master_addresses();
    let mut owner = TestScheduler::subscribe(cluster.ca(), &masters, "owner", None).await;
    owner.pump_until(WAIT, "an offer", |s| !s.offers.is_empty()).await;
    let offer = owner.offers[0].clone();
    owner.accept(vec![offer.offer_id.clone()], vec![command_task("guarded", "sleep 1000", 0.5, 64.0)]).await.unwrap();
    let running = |s: &TestScheduler| s.latest("guarded").is_some_and(|t| t.state() == TaskState::TaskRunning);
    owner.pump_until(WAIT, "the owner's task running", running).await;

    let mut intruder = TestScheduler::subscribe(cluster.ca(), &masters, "intruder", None).await;
    intruder.kill("guarded", &offer.agent_id).await;
    intruder
        .pump_until(WAIT, "the kill answered as of an unknown task", |s| {
            s.latest("guarded").is_some_and(|t| t.state() == TaskState::TaskUnknown)
        })
        .await;
    intruder.reconcile(&[("guarded".to_owned(), offer.agent_id.clone())]).await;
    intruder
        .pump_until(WAIT, "reconciliation telling nothing of another's task", |s| {
            s.updates.iter().filter(|u| u.task_id == "guarded").count() >= 2
        })
        .await;
    // As of any task the agent does not run for it: gone, never the owner's running state.
    let told: Vec<TaskState> = intruder.updates.iter().filter(|u| u.task_id == "guarded").map(|u| u.state()).collect();
    assert_eq!(told, [TaskState::TaskUnknown, TaskState::TaskGone]);

    // The owner's task was not touched: reconciliation says it runs, and no kill came.
    owner.reconcile(&[("guarded".to_owned(), offer.agent_id.clone())]).await;
    owner
        .pump_until(WAIT, "the owner's reconciliation", |s| {
            s.updates.iter().filter(|u| u.task_id == "guarded" && u.state() == TaskState::TaskRunning).count() >= 2
        })
        .await;
    assert!(owner.updates.iter().all(|u| u.state() != TaskState::TaskKilled), "{:?}", owner.updates);
}
