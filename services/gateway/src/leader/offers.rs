//! Offers: placing waiting instances on them, recording the instances, accepting, and
//! declining the rest.

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

use super::{
    DeployError, Instance, InstanceRecord, Leader, MasterSession, TaskFailure, back_off, launch_failure, now_ts,
};

impl Leader {
    /// Uses offers for waiting instances: records the instances, then accepts; declines the
    /// rest.
    pub async fn handle_offers(&self, offers: Vec<master::Offer>) {
        let session = self.master.borrow().clone();
        let Some(session) = session else { return };
        let now = Instant::now();
        let (launches, records) = {
            let mut guard = self.lock();
            let state = &mut *guard;
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
                let runtimes = model::runtimes(app);
                demands.push(Demand {
                    app_id: id.clone(),
                    count: *count,
                    cpus: app.cpus,
                    mem: app.mem,
                    disk: app.disk,
                    port_count: model::port_needs(app).len(),
                    fixed_ports: model::port_needs(app),
                    constraints: Box::new(move |offer: &OfferView, placed: &[Placement]| {
                        let runtime_ok = runtimes.is_none_or(|allowed| {
                            offer
                                .attributes
                                .iter()
                                .find(|(name, _)| name == "runtime")
                                .is_none_or(|(_, value)| allowed.contains(&value.as_str()))
                        });
                        if constraints.is_empty() {
                            return runtime_ok;
                        }
                        let candidate = app::AgentView { hostname: &offer.hostname, attributes: &offer.attributes };
                        let placed: Vec<app::AgentView<'_>> = placed
                            .iter()
                            .map(|p| app::AgentView { hostname: &p.hostname, attributes: &p.attributes })
                            .collect();
                        runtime_ok && constraints.iter().all(|c| c.satisfied(&candidate, &placed))
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
                launches.entry(placed.offer_id.clone()).or_default().push(model::task_info(
                    app,
                    &task_id,
                    &placed.host_ports,
                ));
                state.instances.insert(Instance::staging(record.clone(), now));
                records.push(record);
            }
            // Each accept is traced as part of the deployment that asked for its tasks.
            let launches: BTreeMap<String, (Vec<TaskInfo>, marina_daemon::trace::Carrier)> = launches
                .into_iter()
                .map(|(offer, tasks)| {
                    let trace = tasks.iter().find_map(|task| state.traces.get(&task.name).cloned()).unwrap_or_default();
                    (offer, (tasks, trace))
                })
                .collect();
            (launches, records)
        };
        let mut launches = launches;
        if let Err(error) = self.record_instances(&records, &mut launches).await {
            tracing::warn!(%error, "cannot record instances; not launching them");
            {
                let mut state = self.lock();
                for record in &records {
                    state.instances.remove(&record.task_id);
                }
            }
            let all: Vec<String> = offers.iter().map(|o| o.offer_id.clone()).collect();
            self.decline(&session, all, 1.0).await;
            return;
        }
        let unused: Vec<String> =
            offers.iter().map(|o| o.offer_id.clone()).filter(|id| !launches.contains_key(id)).collect();
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
        // Apps whose tasks the master found wrong, with one of the failures: they back off
        // (and show why) instead of being refused again at once, round after round — once
        // per round, however many of their tasks were refused.
        let mut wrong: BTreeMap<String, TaskFailure> = BTreeMap::new();
        for (ids, status) in failed {
            tracing::warn!(tasks = ids.len(), %status, "launch refused by the master; the instances will be replaced");
            if status.code() == tonic::Code::InvalidArgument {
                let state = self.lock();
                for instance in ids.iter().filter_map(|id| state.instances.get(id)) {
                    wrong
                        .entry(instance.record.app_id.clone())
                        .or_insert_with(|| launch_failure(&instance.record, status.message()));
                }
            }
            self.forget_instances(&ids).await;
        }
        if !wrong.is_empty() {
            let mut state = self.lock();
            let now = Instant::now();
            for (app_id, failure) in wrong {
                back_off(&mut state, &app_id, failure, now);
            }
        }
        if !unused.is_empty() {
            let refuse = if self.wants_offers() { 1.0 } else { 5.0 };
            self.decline(&session, unused, refuse).await;
        }
        self.converge_now.notify_one();
    }

    /// Records the instances about to be launched. If coord refuses what some app's records
    /// hold (a path or value it does not take), only that app's launches are dropped — it
    /// backs off, marked with coord's reason — and the others go ahead; any other failure
    /// is returned, and nothing is launched.
    pub(super) async fn record_instances(
        &self,
        records: &[InstanceRecord],
        launches: &mut BTreeMap<String, (Vec<TaskInfo>, marina_daemon::trace::Carrier)>,
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

    pub(super) async fn decline(&self, session: &MasterSession, offer_ids: Vec<String>, refuse_seconds: f64) {
        let request = master::DeclineRequest {
            framework_id: session.framework_id.clone(),
            offer_ids,
            filters: Some(master::Filters { refuse_seconds }),
        };
        let _ = session.client.clone().decline(request).await;
    }

    pub(super) async fn forget_instances(&self, ids: &[String]) {
        let mut batch = Batch::default();
        {
            let mut state = self.lock();
            for id in ids {
                state.instances.remove(id);
                batch.delete(format!("{}/{id}", store::INSTANCES));
            }
        }
        if let Err(error) = self.apply(batch).await {
            tracing::warn!(%error, "forgetting instances failed");
        }
    }
}
