//! Apps under faults: a few apps are scaled and upgraded through any gateway while faults
//! run; agents are sampled for duplicated instances as they go; after each heal the apps
//! must converge to what the gateway says they declare — exactly that many instances, all
//! of the declared version, no deployment left — with no task running on an agent that the
//! gateway does not know.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use marina_tests::netns_cluster::NetnsCluster;
use serde_json::{Value, json};

pub const APPS: usize = 2;

/// What the bench asked of one app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Definition {
    instances: usize,
    /// Bumped by an upgrade (an env change: a rolling restart).
    generation: u64,
}

struct App {
    id: String,
    /// Every definition sent since the app last converged (the one in force first): the
    /// gateway may end on any of them if some answer was lost.
    candidates: Vec<Definition>,
    /// Some request's outcome is unknown: the definition is sent again after the heal.
    uncertain: bool,
    /// Every definition ever sent: a request whose answer was lost may still be applied
    /// after a later one (it waited in a gateway that was cut off), so the gateway may end
    /// on any of them — but never on one nobody sent.
    sent: HashSet<Definition>,
}

/// Where the gateways and agents answer, for the workload running beside the faults (it
/// does not hold the cluster, which the fault player changes).
#[derive(Clone)]
pub struct Endpoints {
    gateways: Vec<String>,
    agents: Vec<String>,
    http: reqwest::Client,
}

impl Endpoints {
    pub fn of(cluster: &NetnsCluster) -> Self {
        Endpoints {
            gateways: cluster.gateways.iter().map(|gateway| gateway.url("")).collect(),
            agents: cluster.agents.iter().map(|agent| agent.url("")).collect(),
            http: cluster.gateway_http().clone(),
        }
    }

    async fn get_json(&self, url: &str) -> Option<Value> {
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    /// `PUT /v2/apps/{id}?force=true` on gateway `gateway`, within 5 s.
    async fn put(&self, gateway: usize, id: &str, body: &Value) -> anyhow::Result<(u16, String)> {
        let request = self.http.put(format!("{}/v2/apps{id}?force=true", self.gateways[gateway])).json(body);
        let response = tokio::time::timeout(Duration::from_secs(5), request.send()).await??;
        let status = response.status().as_u16();
        Ok((status, response.text().await.unwrap_or_default()))
    }

    /// The live (not terminal) tasks on the agents that answer, by task id, with the
    /// agent's index; and whether every agent answered (the counts are then complete).
    async fn agent_tasks(&self) -> (BTreeMap<String, usize>, bool) {
        let mut tasks = BTreeMap::new();
        let mut every_agent = true;
        for (index, agent) in self.agents.iter().enumerate() {
            let state = async { self.http.get(format!("{agent}/state")).send().await?.json::<Value>().await };
            let Ok(Ok(state)) = tokio::time::timeout(Duration::from_secs(2), state).await else {
                every_agent = false;
                continue;
            };
            for task in state["tasks"].as_array().into_iter().flatten() {
                let live = matches!(
                    task["state"].as_str(),
                    Some("TASK_STAGING" | "TASK_STARTING" | "TASK_RUNNING" | "TASK_KILLING")
                );
                if let (true, Some(id)) = (live, task["id"].as_str()) {
                    tasks.insert(id.to_owned(), index);
                }
            }
        }
        (tasks, every_agent)
    }
}

pub struct Apps {
    apps: Vec<App>,
    rng: fastrand::Rng,
    pub requests: usize,
    pub indeterminate: usize,
    /// The most instances of one app seen on agents at once, against the bound then.
    pub most_seen: usize,
    pub violations: Vec<String>,
}

impl App {
    fn task_prefix(&self) -> String {
        format!("{}.", self.id.trim_start_matches('/').replace('/', "_"))
    }

    fn body(&self, definition: Definition) -> Value {
        json!({
            "id": self.id,
            "cmd": "sleep 100000",
            "cpus": 0.01,
            "mem": 16,
            "instances": definition.instances,
            "env": { "CHAOS_GENERATION": definition.generation.to_string() },
        })
    }

    /// At most twice the largest instance count asked for since the last convergence: an
    /// upgrade may start a whole new set before stopping the old (Marathon's default
    /// `maximumOverCapacity` 1.0).
    fn bound(&self) -> usize {
        2 * self.candidates.iter().map(|d| d.instances).max().unwrap_or(0)
    }
}

impl Apps {
    pub fn new(seed: u64) -> Self {
        let apps = (0..APPS)
            .map(|index| {
                let first = Definition { instances: 2, generation: 0 };
                App {
                    id: format!("/chaos/app-{index}"),
                    candidates: vec![first],
                    uncertain: false,
                    sent: HashSet::from([first]),
                }
            })
            .collect();
        Apps {
            apps,
            rng: fastrand::Rng::with_seed(seed ^ 0x5bd1_e995),
            requests: 0,
            indeterminate: 0,
            most_seen: 0,
            violations: Vec::new(),
        }
    }

    /// Creates the apps (before any fault) and waits for them to run.
    pub async fn create(&mut self, cluster: &NetnsCluster) -> anyhow::Result<()> {
        let endpoints = Endpoints::of(cluster);
        for index in 0..self.apps.len() {
            let definition = self.apps[index].candidates[0];
            let body = self.apps[index].body(definition);
            let gateway = cluster.leading_gateway().await.unwrap_or(0);
            let (status, text) = endpoints.put(gateway, &self.apps[index].id, &body).await?;
            anyhow::ensure!(status < 300, "creating {}: {status} {text}", self.apps[index].id);
        }
        Ok(())
    }

    /// One scale or upgrade of a random app through a random gateway (a standby forwards it).
    pub async fn mutate(&mut self, endpoints: &Endpoints) {
        let index = self.rng.usize(..self.apps.len());
        let gateway = self.rng.usize(..endpoints.gateways.len());
        let app = &mut self.apps[index];
        let current = *app.candidates.last().expect("one at least");
        let next = if self.rng.bool() {
            Definition { instances: self.rng.usize(1..=3), ..current }
        } else {
            Definition { generation: current.generation + 1, ..current }
        };
        app.candidates.push(next);
        app.sent.insert(next);
        self.requests += 1;
        let acknowledged = match endpoints.put(gateway, &app.id, &app.body(next)).await {
            Ok((status, _)) => status < 300,
            Err(_) => false,
        };
        if !acknowledged {
            // A refusal (429, 503) usually means not applied, but a forwarded request may
            // still land: unknown either way.
            app.uncertain = true;
            self.indeterminate += 1;
        }
    }

    /// Counts each app's live tasks on the agents that answer now; a count above the
    /// app's bound is a violation (duplicated instances).
    pub async fn sample(&mut self, endpoints: &Endpoints) {
        let (tasks, _) = endpoints.agent_tasks().await;
        for app in &self.apps {
            let prefix = app.task_prefix();
            let live = tasks.keys().filter(|id| id.starts_with(&prefix)).count();
            self.most_seen = self.most_seen.max(live);
            if live > app.bound() {
                self.violations.push(format!(
                    "{}: {live} live tasks on the agents, more than twice the most instances asked for ({})",
                    app.id,
                    app.bound() / 2
                ));
            }
        }
    }

    /// After a heal: sends each uncertain app's last definition again (through whichever
    /// gateway answers), then reports whether everything converged: `None` when it has,
    /// or what is still off.
    pub async fn settle(&mut self, cluster: &NetnsCluster) -> Option<String> {
        let endpoints = Endpoints::of(cluster);
        for app in &mut self.apps {
            if !app.uncertain {
                continue;
            }
            let last = *app.candidates.last().expect("one at least");
            let leader = cluster.leading_gateway().await?;
            match endpoints.put(leader, &app.id, &app.body(last)).await {
                Ok((status, _)) if status < 300 => app.uncertain = false,
                Ok((status, text)) => return Some(format!("{}: re-sending its definition: {status} {text}", app.id)),
                Err(error) => return Some(format!("{}: re-sending its definition: {error}", app.id)),
            }
        }
        let leader = cluster.leading_gateway().await?;
        let gateway = &endpoints.gateways[leader];
        let (agents, every_agent) = endpoints.agent_tasks().await;
        if !every_agent {
            return Some("an agent does not answer".into());
        }
        let mut known: HashSet<String> = HashSet::new();
        let mut settled = Vec::new();
        for app in &self.apps {
            let view = endpoints.get_json(&format!("{gateway}/v2/apps{}", app.id)).await?;
            let view = &view["app"];
            let instances = view["instances"].as_u64()? as usize;
            let generation: u64 = view["env"]["CHAOS_GENERATION"].as_str()?.parse().ok()?;
            let declared = Definition { instances, generation };
            let tasks = view["tasks"].as_array()?;
            known.extend(tasks.iter().filter_map(|task| task["id"].as_str().map(str::to_owned)));
            let running = tasks.iter().filter(|task| task["state"] == "TASK_RUNNING").count();
            // Launched under the current configuration: a scale changes the app's version
            // but not `lastConfigChangeAt`, and tasks keep the version they were launched at.
            let config = view["versionInfo"]["lastConfigChangeAt"].as_str()?;
            let current = tasks.iter().all(|task| task["version"].as_str().is_some_and(|version| version >= config));
            let on_agents = agents.keys().filter(|id| id.starts_with(&app.task_prefix())).count();
            let deployments = view["deployments"].as_array().map_or(0, Vec::len);
            if running != instances || tasks.len() != instances || !current || deployments > 0 || on_agents != instances
            {
                return Some(format!(
                    "{}: {instances} declared, {running} running of {} known, {on_agents} on the agents, {} current, {deployments} deployments",
                    app.id,
                    tasks.len(),
                    if current { "all" } else { "not all" }
                ));
            }
            settled.push(declared);
        }
        let unknown: Vec<&String> = agents.keys().filter(|id| !known.contains(*id)).collect();
        if !unknown.is_empty() {
            return Some(format!("tasks running on agents that the gateway does not know: {unknown:?}"));
        }
        for (app, declared) in self.apps.iter_mut().zip(settled) {
            if !app.sent.contains(&declared) {
                self.violations
                    .push(format!("{}: the gateway declares {declared:?}, which was never asked for", app.id));
            }
            app.candidates = vec![declared];
        }
        None
    }
}
