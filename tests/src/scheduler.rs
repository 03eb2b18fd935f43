//! A minimal scheduler (framework) for master tests: subscribes to whichever master leads,
//! collects offers and status updates, acknowledges updates, accepts and reconciles.

use std::sync::Arc;
use std::time::Duration;

use marina_daemon::tls::{Role, Tls};

use marina_proto::agent::v1::{TaskInfo, TaskStatus};
use marina_proto::master::v1::scheduler_client::SchedulerClient;
use marina_proto::master::v1::{self as pb, scheduler_event};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::TestCa;

pub struct TestScheduler {
    /// What it calls the masters with: a framework certificate of the cluster's CA.
    tls: Arc<Tls>,
    masters: Vec<String>,
    name: String,
    pub framework_id: String,
    pub leader: String,
    pub epoch: u64,
    client: SchedulerClient<Channel>,
    events: mpsc::UnboundedReceiver<Option<pb::SchedulerEvent>>,
    /// Updates received (every one, including reconciliation answers).
    pub updates: Vec<TaskStatus>,
    /// Offers received and not used yet.
    pub offers: Vec<pb::Offer>,
}

impl TestScheduler {
    /// Subscribes (as a new framework, or as `framework_id`) with the leading master, with a
    /// framework certificate from `ca` (its id is `name`).
    pub async fn subscribe(ca: &TestCa, masters: &[String], name: &str, framework_id: Option<String>) -> Self {
        Self::subscribe_as(ca.tls(Role::Framework, Some(name)), masters, name, framework_id).await
    }

    /// Like [`subscribe`](Self::subscribe), calling with `tls`.
    pub async fn subscribe_as(tls: Arc<Tls>, masters: &[String], name: &str, framework_id: Option<String>) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut target = masters[0].clone();
        let mut index = 0;
        loop {
            let mut client = SchedulerClient::new(crate::tls::channel(&tls, &target));
            let request = pb::SubscribeRequest {
                framework: Some(pb::FrameworkInfo {
                    framework_id: framework_id.clone().unwrap_or_default(),
                    name: name.to_owned(),
                    role: "*".into(),
                    failover_timeout_seconds: 3600.0,
                    hostname: "test".into(),
                    principal: String::new(),
                }),
            };
            match client.subscribe(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    let (sender, events) = mpsc::unbounded_channel();
                    let first = stream.message().await.ok().flatten();
                    let Some(pb::SchedulerEvent { epoch, kind: Some(scheduler_event::Kind::Subscribed(subscribed)) }) =
                        first
                    else {
                        panic!("the first event was not Subscribed: {first:?}");
                    };
                    tokio::spawn(async move {
                        while let Ok(Some(event)) = stream.message().await {
                            if sender.send(Some(event)).is_err() {
                                return;
                            }
                        }
                        let _ = sender.send(None);
                    });
                    return Self {
                        tls,
                        masters: masters.to_vec(),
                        name: name.to_owned(),
                        framework_id: subscribed.framework_id,
                        leader: target,
                        epoch,
                        client,
                        events,
                        updates: Vec::new(),
                        offers: Vec::new(),
                    };
                }
                Err(status) => {
                    assert!(Instant::now() < deadline, "no master accepted the subscription: {status:?}");
                    match marina_daemon::leader::leader_hint(&status) {
                        Some(hint) if hint != target => target = hint,
                        _ => {
                            index = (index + 1) % masters.len();
                            target = masters[index].clone();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        }
    }

    /// Subscribes again (after a failover) as the same framework.
    pub async fn resubscribe(&mut self) {
        *self = Self::subscribe_as(self.tls.clone(), &self.masters, &self.name, Some(self.framework_id.clone())).await;
    }

    /// Handles events until `done` returns true (or the deadline passes: panic). Updates
    /// with a uuid are acknowledged.
    pub async fn pump_until(&mut self, timeout: Duration, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let Ok(event) = tokio::time::timeout_at(deadline, self.events.recv()).await else {
                // What each task last reported says why the wait was in vain.
                let updates: Vec<String> = self
                    .updates
                    .iter()
                    .map(|u| {
                        format!("{} {:?} healthy={:?} {} {}", u.task_id, u.state(), u.healthy, u.reason, u.message)
                    })
                    .collect();
                panic!("timed out after {timeout:?} waiting for: {what}; updates received:\n{}", updates.join("\n"))
            };
            let Some(Some(event)) = event else { panic!("the scheduler stream ended while waiting for: {what}") };
            self.handle(event).await;
        }
    }

    /// Handles events until the master ends the stream (or the deadline passes: panic).
    pub async fn pump_until_closed(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("the stream did not end within {timeout:?}"));
            match event {
                Some(Some(event)) => self.handle(event).await,
                Some(None) | None => return,
            }
        }
    }

    async fn handle(&mut self, event: pb::SchedulerEvent) {
        match event.kind {
            Some(scheduler_event::Kind::Offers(offers)) => self.offers.extend(offers.offers),
            Some(scheduler_event::Kind::Rescind(rescind)) => self.offers.retain(|o| o.offer_id != rescind.offer_id),
            Some(scheduler_event::Kind::Update(status)) => {
                if !status.uuid.is_empty() {
                    let ack = pb::AcknowledgeRequest {
                        framework_id: self.framework_id.clone(),
                        agent_id: status.agent_id.clone(),
                        task_id: status.task_id.clone(),
                        uuid: status.uuid.clone(),
                        // One at a time, the simplest way (the gateway batches).
                        more: Vec::new(),
                    };
                    let _ = self.client.acknowledge(ack).await;
                }
                self.updates.push(status);
            }
            _ => {}
        }
    }

    /// The scheduler's gRPC client (for requests the helpers here do not make).
    pub fn client(&self) -> SchedulerClient<Channel> {
        self.client.clone()
    }

    /// The latest update received for `task_id`.
    pub fn latest(&self, task_id: &str) -> Option<&TaskStatus> {
        self.updates.iter().rev().find(|status| status.task_id == task_id)
    }

    pub async fn accept(&mut self, offer_ids: Vec<String>, tasks: Vec<TaskInfo>) -> Result<(), tonic::Status> {
        self.offers.retain(|offer| !offer_ids.contains(&offer.offer_id));
        let request = pb::AcceptRequest {
            framework_id: self.framework_id.clone(),
            offer_ids,
            launch: tasks,
            filters: Some(pb::Filters { refuse_seconds: 0.0 }),
        };
        self.client.accept(request).await.map(|_| ())
    }

    pub async fn decline_all(&mut self) {
        let offer_ids: Vec<String> = self.offers.drain(..).map(|offer| offer.offer_id).collect();
        if offer_ids.is_empty() {
            return;
        }
        let request = pb::DeclineRequest {
            framework_id: self.framework_id.clone(),
            offer_ids,
            filters: Some(pb::Filters { refuse_seconds: 0.0 }),
        };
        let _ = self.client.decline(request).await;
    }

    pub async fn kill(&mut self, task_id: &str, agent_id: &str) {
        let request = pb::KillRequest {
            framework_id: self.framework_id.clone(),
            task_id: task_id.to_owned(),
            agent_id: agent_id.to_owned(),
            grace_period_seconds: 1,
        };
        self.client.kill(request).await.expect("kill accepted");
    }

    /// Asks for the state of `tasks` (task id, agent id), or of all tasks when empty.
    pub async fn reconcile(&mut self, tasks: &[(String, String)]) {
        let request = pb::ReconcileRequest {
            framework_id: self.framework_id.clone(),
            tasks: tasks
                .iter()
                .map(|(task_id, agent_id)| pb::reconcile_request::Task {
                    task_id: task_id.clone(),
                    agent_id: agent_id.clone(),
                })
                .collect(),
        };
        self.client.reconcile(request).await.expect("reconcile accepted");
    }
}

/// A command task (`/bin/sh -c <command>`) asking for `cpus` and `mem_mb`.
pub fn command_task(task_id: &str, command: &str, cpus: f64, mem_mb: f64) -> TaskInfo {
    TaskInfo {
        task_id: task_id.to_owned(),
        name: task_id.to_owned(),
        resources: Some(marina_proto::agent::v1::Resources { cpus, mem_mb, disk_mb: 0.0, ports: Vec::new() }),
        command: Some(marina_proto::agent::v1::CommandSpec {
            shell: true,
            value: command.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The first `count` host ports of an offer.
pub fn offered_ports(offer: &pb::Offer, count: usize) -> Vec<u32> {
    let ranges = offer.resources.as_ref().map(|r| r.ports.clone()).unwrap_or_default();
    ranges.iter().flat_map(|range| range.begin..=range.end).take(count).map(|port| port as u32).collect()
}
