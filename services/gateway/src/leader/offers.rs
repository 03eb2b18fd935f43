//! Offers: placing waiting instances on them ([`decide`], pure), then recording the
//! instances, accepting, and declining the rest.

use std::collections::{BTreeMap, HashMap, HashSet};

use marina_proto::agent::v1::TaskInfo;
use marina_proto::master::v1 as master;
use tokio::time::Instant;
use tracing::Instrument;

use crate::app::{self, Timestamp};
use crate::engine::is_terminal;
use crate::model;
use crate::placement::{self, Demand, OfferView, Placement};
use crate::store::{self, Batch};

use super::effects::{Decline, Effects};
use super::{
    DeployError, Instance, InstanceRecord, Leader, MasterSession, State, TaskFailure, back_off, launch_failure, now_ts,
};

/// The tasks to launch on one offer, with the trace of the request that asked for them.
pub(super) type Launches = BTreeMap<String, (Vec<TaskInfo>, marina_daemon::trace::Carrier)>;

/// What [`decide`] placed: the tasks per offer, and the records of their instances (to be
/// written before any is launched, so a failover finds them).
#[derive(Default)]
pub(super) struct OfferPlan {
    pub launches: Launches,
    pub records: Vec<InstanceRecord>,
}

impl Leader {
    /// Uses offers for waiting instances: records the instances, then accepts; declines the
    /// rest.
    pub async fn handle_offers(&self, offers: Vec<master::Offer>) {
        let session = self.master.borrow().clone();
        let Some(session) = session else { return };
        let phases = &self.metrics.offer_phases;
        let now = Instant::now();
        let OfferPlan { mut launches, records } = decide(&mut self.lock(), &offers, now);
        let recording = Instant::now();
        phases.decide.observe((recording - now).as_secs_f64());
        phases.placed.observe(records.len() as f64);
        let all: Vec<String> = offers.iter().map(|o| o.offer_id.clone()).collect();
        let recorded = self.record_instances(&records, &mut launches).await;
        phases.record.observe(recording.elapsed().as_secs_f64());
        if let Err(error) = recorded {
            tracing::warn!(%error, "cannot record instances; not launching them");
            {
                let mut state = self.lock();
                for record in &records {
                    state.instances.remove(&record.task_id);
                }
            }
            let decline = Decline { offer_ids: all, refuse_seconds: 1.0 };
            let _ = self.execute(Effects { declines: vec![decline], ..Effects::default() }).await;
            return;
        }
        let unused: Vec<String> = all.into_iter().filter(|id| !launches.contains_key(id)).collect();
        let accepting = Instant::now();
        let refused = self.accept(&session, launches).await;
        phases.accept.observe(accepting.elapsed().as_secs_f64());
        let refuse_seconds = if self.wants_offers() { 1.0 } else { 5.0 };
        let effects = after_accepts(&mut self.lock(), refused, unused, refuse_seconds, Instant::now());
        if let Err(error) = self.execute(effects).await {
            tracing::warn!(%error, "forgetting instances failed");
        }
        self.converge_now.notify_one();
    }

    /// Accepts each offer with its tasks; returns the launches the master refused, each
    /// with its task ids.
    async fn accept(&self, session: &MasterSession, launches: Launches) -> Vec<(Vec<String>, tonic::Status)> {
        let launched: usize = launches.values().map(|(tasks, _)| tasks.len()).sum();
        let accepts = launches.into_iter().map(|(offer_id, (tasks, trace))| {
            let mut client = session.client.clone();
            let framework_id = session.framework_id.clone();
            // A child of the offers it uses, unless a request caused it: then it joins that
            // request's trace, linked to the offers.
            let span = tracing::info_span!("gateway.launch", offer = %offer_id, tasks = tasks.len(), trace_id = tracing::field::Empty);
            if !trace.is_empty() {
                span.follows_from(tracing::Span::current());
                marina_daemon::trace::set_parent(&span, &trace);
            }
            async move {
                let ids: Vec<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
                let request = master::AcceptRequest {
                    framework_id,
                    offer_ids: vec![offer_id],
                    launch: tasks,
                    filters: Some(master::Filters { refuse_seconds: 0.0 }),
                };
                client.accept(request).await.err().map(|status| (ids, status))
            }
            .instrument(span)
        });
        let failed: Vec<(Vec<String>, tonic::Status)> =
            futures::future::join_all(accepts).await.into_iter().flatten().collect();
        let refused: usize = failed.iter().map(|(ids, _)| ids.len()).sum();
        self.metrics.tasks_launched.inc_by((launched - refused) as u64);
        self.metrics.launches_refused.inc_by(refused as u64);
        failed
    }

    /// Records the instances about to be launched. If coord refuses what some app's records
    /// hold (a path or value it does not take), only that app's launches are dropped — it
    /// backs off, marked with coord's reason — and the others go ahead; any other failure
    /// is returned, and nothing is launched.
    pub(super) async fn record_instances(
        &self,
        records: &[InstanceRecord],
        launches: &mut Launches,
    ) -> Result<(), DeployError> {
        let batch_of = |records: &mut dyn Iterator<Item = &InstanceRecord>| {
            let mut batch = Batch::default();
            for record in records {
                batch.put(format!("{}/{}", store::INSTANCES, record.task_id), record);
            }
            batch
        };
        match self.apply(batch_of(&mut records.iter())).await {
            Err(DeployError::Refused(_)) => {}
            other => return other,
        }
        let mut by_app: BTreeMap<&str, Vec<&InstanceRecord>> = BTreeMap::new();
        for record in records {
            by_app.entry(record.app_id.as_str()).or_default().push(record);
        }
        let attempts = by_app.into_iter().map(|(app_id, records)| async move {
            (app_id, records.clone(), self.apply(batch_of(&mut records.into_iter())).await)
        });
        let mut refused: HashSet<String> = HashSet::new();
        for (app_id, app_records, result) in futures::future::join_all(attempts).await {
            match result {
                Ok(()) => {}
                Err(DeployError::Refused(reason)) => {
                    tracing::error!(app = %app_id, %reason, "coord refuses this app's instance records; it backs off");
                    let mut state = self.lock();
                    let now = Instant::now();
                    for record in &app_records {
                        state.instances.remove(&record.task_id);
                        refused.insert(record.task_id.clone());
                    }
                    let reason = format!("cannot record the instance: {reason}");
                    back_off(&mut state, app_id, launch_failure(app_records[0], &reason), now);
                }
                Err(error) => return Err(error),
            }
        }
        for (tasks, _) in launches.values_mut() {
            tasks.retain(|task| !refused.contains(&task.task_id));
        }
        launches.retain(|_, (tasks, _)| !tasks.is_empty());
        Ok(())
    }
}

/// Places the waiting instances of `state` (apps past their backoff) on `offers` at `now`:
/// each placed instance is staged in the state and its app's pending count drops; the
/// queue's statistics say how offers matched. Decides without I/O: returns the tasks per
/// offer and the records to write before launching them.
pub(super) fn decide(state: &mut State, offers: &[master::Offer], now: Instant) -> OfferPlan {
    let mut views: Vec<OfferView> = offers
        .iter()
        .map(|offer| {
            let resources = offer.resources.clone().unwrap_or_default();
            OfferView {
                offer_id: offer.offer_id.clone(),
                agent_id: offer.agent_id.clone(),
                hostname: offer.hostname.clone(),
                attributes: offer.attributes.iter().map(|a| (a.name.clone(), a.value.clone())).collect(),
                cpus: resources.cpus,
                mem: resources.mem_mb,
                disk: resources.disk_mb,
                ports: resources.ports,
            }
        })
        .collect();
    let agent_attributes: HashMap<String, Vec<(String, String)>> =
        views.iter().map(|v| (v.agent_id.clone(), v.attributes.clone())).collect();
    let mut demands: Vec<Demand<'_>> = Vec::new();
    for (id, count) in &state.pending {
        if *count == 0 || state.backoff.get(id).and_then(|b| b.until).is_some_and(|until| until > now) {
            continue;
        }
        let Some(app) = state.apps.get(id).and_then(|e| e.active.as_ref()) else { continue };
        // Where the app runs matters only to its constraints.
        let placed: Vec<Placement> = if app.constraints.is_empty() {
            Vec::new()
        } else {
            state
                .instances
                .of_app(id)
                .filter(|i| !is_terminal(i.state))
                .map(|i| Placement {
                    hostname: i.record.host.clone(),
                    attributes: agent_attributes.get(&i.record.agent_id).cloned().unwrap_or_default(),
                })
                .collect()
        };
        let constraints = app.constraints.clone();
        demands.push(Demand {
            app_id: id.clone(),
            count: *count,
            cpus: app.cpus,
            mem: app.mem,
            disk: app.disk,
            port_count: model::port_needs(app).len(),
            fixed_ports: model::port_needs(app),
            runtimes: model::runtimes(app),
            constraints: Box::new(move |offer: &OfferView, placed: &[Placement]| {
                if constraints.is_empty() {
                    return true;
                }
                let candidate = app::AgentView { hostname: &offer.hostname, attributes: &offer.attributes };
                let placed: Vec<app::AgentView<'_>> = placed
                    .iter()
                    .map(|p| app::AgentView { hostname: &p.hostname, attributes: &p.attributes })
                    .collect();
                constraints.iter().all(|c| c.satisfied(&candidate, &placed))
            }),
            placed,
        });
    }
    let (placed, stats) = placement::place(&mut demands, &mut views);
    drop(demands);
    for (app_id, round) in stats {
        let entry = state.queue.entry(app_id).or_default();
        entry.processed += round.processed;
        entry.unused += round.processed - round.used;
        if round.used > 0 {
            entry.last_used_at = Some(Timestamp::now());
        }
        if round.processed > round.used {
            entry.last_unused_at = Some(Timestamp::now());
        }
        for (reason, count) in round.rejected {
            *entry.rejected.entry(reason).or_default() += count;
        }
    }
    let mut launches: BTreeMap<String, Vec<TaskInfo>> = BTreeMap::new();
    let mut records = Vec::new();
    // Versions are worked out once per app, not per instance.
    let mut versions: HashMap<String, (String, String)> = HashMap::new();
    for placed in placed {
        let Some(app) = state.apps.get(&placed.app_id).and_then(|e| e.active.as_ref()) else { continue };
        let task_id = app.id.task_id(&marina_daemon::ids::uuid());
        let (version, config_version) = versions
            .entry(placed.app_id.clone())
            .or_insert_with(|| (model::version(app), model::config_version(app)))
            .clone();
        let record = InstanceRecord {
            task_id: task_id.clone(),
            app_id: placed.app_id.clone(),
            version,
            config_version,
            agent_id: placed.agent_id.clone(),
            host: placed.hostname.clone(),
            ports: placed.host_ports.clone(),
            staged_at: now_ts(),
        };
        if let Some(count) = state.pending.get_mut(&placed.app_id) {
            *count = count.saturating_sub(1);
        }
        launches.entry(placed.offer_id.clone()).or_default().push(model::task_info(app, &task_id, &placed.host_ports));
        state.instances.insert(Instance::staging(record.clone(), now));
        records.push(record);
    }
    // Each accept is traced as part of the deployment that asked for its tasks.
    let launches: Launches = launches
        .into_iter()
        .map(|(offer, tasks)| {
            let trace = tasks.iter().find_map(|task| state.traces.get(&task.name).cloned()).unwrap_or_default();
            (offer, (tasks, trace))
        })
        .collect();
    OfferPlan { launches, records }
}

/// After the accepts: the instances whose launch the master refused are forgotten (and
/// their records deleted); apps whose tasks it found wrong back off and say why, once per
/// round however many of their tasks were refused, instead of being refused again round
/// after round. The `unused` offers are declined for `refuse_seconds`.
pub(super) fn after_accepts(
    state: &mut State,
    refused: Vec<(Vec<String>, tonic::Status)>,
    unused: Vec<String>,
    refuse_seconds: f64,
    now: Instant,
) -> Effects {
    let mut effects = Effects::default();
    let mut wrong: BTreeMap<String, TaskFailure> = BTreeMap::new();
    for (ids, status) in refused {
        tracing::warn!(tasks = ids.len(), %status, "launch refused by the master; the instances will be replaced");
        for id in &ids {
            if let Some(instance) = state.instances.remove(id)
                && status.code() == tonic::Code::InvalidArgument
            {
                wrong
                    .entry(instance.record.app_id.clone())
                    .or_insert_with(|| launch_failure(&instance.record, status.message()));
            }
            effects.writes.delete(format!("{}/{id}", store::INSTANCES));
        }
    }
    for (app_id, failure) in wrong {
        back_off(state, &app_id, failure, now);
    }
    if !unused.is_empty() {
        effects.declines.push(Decline { offer_ids: unused, refuse_seconds });
    }
    effects
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use marina_proto::agent::v1::{Range, Resources, TaskState};

    use super::*;
    use crate::leader::convergence::round;
    use crate::leader::fixtures::{state_with, web};
    use crate::placement::Reject;

    fn offer(id: &str, cpus: f64) -> master::Offer {
        master::Offer {
            offer_id: id.into(),
            agent_id: format!("agent-{id}"),
            hostname: format!("host-{id}"),
            resources: Some(Resources {
                cpus,
                mem_mb: 1024.0,
                disk_mb: 1024.0,
                ports: vec![Range { begin: 31000, end: 31099 }],
            }),
            ..Default::default()
        }
    }

    /// `/web` with `instances` waiting for offers (a convergence round decided them).
    fn waiting(instances: i64) -> State {
        let mut state = state_with(&[web(instances, "x")]);
        round(&mut state, Instant::now(), Duration::from_secs(60));
        assert_eq!(state.pending["/web"], instances as u32);
        state
    }

    #[test]
    fn waiting_instances_are_placed_staged_and_to_be_recorded() {
        let mut state = waiting(2);
        let OfferPlan { launches, records } = decide(&mut state, &[offer("o1", 1.0)], Instant::now());
        let (tasks, _) = &launches["o1"];
        assert_eq!(tasks.len(), 2);
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.app_id == "/web" && r.agent_id == "agent-o1" && r.host == "host-o1"));
        assert!(tasks.iter().zip(&records).all(|(task, record)| task.task_id == record.task_id));
        assert_eq!(state.pending["/web"], 0, "none waits any more");
        assert!(records.iter().all(|r| state.instances.get(&r.task_id).unwrap().state == TaskState::TaskStaging));
        assert_eq!(state.queue["/web"].processed, 1);
    }

    #[test]
    fn an_offer_too_small_is_left_and_the_queue_says_why() {
        let mut state = waiting(1);
        let plan = decide(&mut state, &[offer("o1", 0.05)], Instant::now());
        assert!(plan.launches.is_empty() && plan.records.is_empty());
        assert_eq!(state.pending["/web"], 1);
        let stats = &state.queue["/web"];
        assert_eq!((stats.processed, stats.unused), (1, 1));
        assert_eq!(stats.rejected.get(&Reject::InsufficientCpus), Some(&1));
    }

    #[test]
    fn an_app_backing_off_is_not_placed_until_its_delay_ends() {
        let mut state = waiting(1);
        let now = Instant::now();
        let record = InstanceRecord { app_id: "/web".into(), ..InstanceRecord::default() };
        back_off(&mut state, "/web", launch_failure(&record, "failed"), now);
        assert!(decide(&mut state, &[offer("o1", 1.0)], now).launches.is_empty());
        let later = now + Duration::from_secs(61);
        assert_eq!(decide(&mut state, &[offer("o1", 1.0)], later).records.len(), 1, "placed once 60 s passed");
    }

    #[test]
    fn launches_the_master_refuses_are_forgotten_and_back_their_app_off_once() {
        let mut state = waiting(2);
        let now = Instant::now();
        let OfferPlan { records, .. } = decide(&mut state, &[offer("o1", 1.0)], now);
        let ids: Vec<String> = records.iter().map(|r| r.task_id.clone()).collect();
        let refused = vec![(ids.clone(), tonic::Status::invalid_argument("no such image"))];
        let effects = after_accepts(&mut state, refused, vec!["o2".into()], 5.0, now);
        let deleted: Vec<String> = ids.iter().map(|id| format!("delete /gateway/instances/{id}")).collect();
        assert_eq!(effects.writes.describe(), deleted);
        assert_eq!(effects.declines, [Decline { offer_ids: vec!["o2".into()], refuse_seconds: 5.0 }]);
        assert!(ids.iter().all(|id| state.instances.get(id).is_none()));
        assert_eq!(state.backoff["/web"].failures, 1, "once, however many of its tasks were refused");
        assert_eq!(state.failures["/web"].message, "no such image");
    }

    #[test]
    fn a_launch_lost_in_transit_is_replaced_without_backoff() {
        let mut state = waiting(1);
        let OfferPlan { records, .. } = decide(&mut state, &[offer("o1", 1.0)], Instant::now());
        let refused = vec![(vec![records[0].task_id.clone()], tonic::Status::unavailable("master gone"))];
        let effects = after_accepts(&mut state, refused, Vec::new(), 1.0, Instant::now());
        assert_eq!(effects.writes.describe().len(), 1);
        assert!(effects.declines.is_empty());
        assert!(!state.backoff.contains_key("/web"), "the app did nothing wrong");
    }
}
