//! Properties of the gateway's decisions, over inputs generated to be hostile:
//! - any app definition the validator accepts can be planned, launched, decided for and
//!   backed off without a panic, and yields tasks the master accepts (the gateway and the
//!   master agree on what is valid);
//! - the convergence engine never runs more instances than declared plus the upgrade's
//!   over-capacity, and never kills an instance twice;
//! - placement never places more than asked, never overcommits an offer, and gives each
//!   instance distinct host ports from the offer.

use std::collections::HashSet;
use std::time::Duration;

use marina_gateway::app::{self, Timestamp};
use marina_gateway::engine::{self, AppPlan, InstanceView};
use marina_gateway::model;
use marina_gateway::placement::{self, Demand, OfferView};
use marina_proto::agent::v1::{Range, TaskState};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

/// Numbers at and beyond every edge a field could have, and their text forms.
fn hostile_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(i64::from(i32::MAX))),
        Just(json!(i64::from(i32::MAX) + 1)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(1e308)),
        Just(json!(-1e308)),
        Just(json!(1e-300)),
        Just(json!(0.001)),
        Just(json!(0.5)),
        Just(json!("1e3")),
        Just(json!("NaN")),
        Just(json!("inf")),
        any::<i32>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
    ]
}

/// An app definition with hostile values in the fields that become arithmetic.
fn hostile_app() -> impl Strategy<Value = Value> {
    // Most fields left out (their defaults) and a few hostile, so that a good share of the
    // definitions pass validation and reach what comes after it.
    let scalars = prop::collection::vec(prop::option::weighted(0.1, hostile_number()), 14);
    let env_name = prop_oneof![
        8 => prop_oneof![Just("PORT"), Just("_ok"), Just("JAVA_OPTS")],
        1 => prop_oneof![Just("A=B"), Just("1X"), Just(""), Just("a\u{0}")],
    ];
    (scalars, env_name, any::<bool>(), 0usize..4).prop_map(|(n, env_name, health, ports)| {
        let mut app = Map::new();
        app.insert("id".into(), json!("/prop/app"));
        app.insert("cmd".into(), json!("sleep 1"));
        for (key, value) in [
            "instances",
            "cpus",
            "mem",
            "disk",
            "gpus",
            "backoffSeconds",
            "backoffFactor",
            "maxLaunchDelaySeconds",
            "taskKillGracePeriodSeconds",
        ]
        .into_iter()
        .zip(&n)
        {
            if let Some(value) = value {
                app.insert(key.into(), value.clone());
            }
        }
        let n: Vec<Value> = n.into_iter().map(|v| v.unwrap_or(Value::Null)).collect();
        app.insert(
            "upgradeStrategy".into(),
            json!({ "minimumHealthCapacity": n[9], "maximumOverCapacity": n[10] }),
        );
        app.insert(
            "unreachableStrategy".into(),
            json!({ "inactiveAfterSeconds": n[11], "expungeAfterSeconds": n[12] }),
        );
        app.insert("env".into(), json!({ env_name: "x" }));
        app.insert("portDefinitions".into(), json!(vec![json!({ "port": 0 }); ports]));
        if health && ports > 0 {
            app.insert(
                "healthChecks".into(),
                json!([{ "protocol": "TCP", "portIndex": 0, "intervalSeconds": n[13], "timeoutSeconds": n[13], "gracePeriodSeconds": n[13] }]),
            );
        }
        Value::Object(app)
    })
}

/// Instances as the engine sees them: any state, config, health and age.
#[derive(Debug, Clone)]
struct InstanceSpec {
    state: TaskState,
    current: bool,
    healthy: Option<bool>,
    ready: bool,
    killing: bool,
    age_secs: u64,
    unreachable_for: Option<u64>,
}

fn instance_spec() -> impl Strategy<Value = InstanceSpec> {
    let states = prop_oneof![
        Just(TaskState::TaskStaging),
        Just(TaskState::TaskStarting),
        Just(TaskState::TaskRunning),
        Just(TaskState::TaskRunning),
        Just(TaskState::TaskRunning),
        Just(TaskState::TaskKilling),
        Just(TaskState::TaskFailed),
        Just(TaskState::TaskUnreachable),
        Just(TaskState::TaskLost),
    ];
    (
        states,
        any::<bool>(),
        prop::option::of(any::<bool>()),
        any::<bool>(),
        prop::bool::weighted(0.1),
        0u64..10_000,
        prop::option::weighted(0.1, 0u64..1_000),
    )
        .prop_map(|(state, current, healthy, ready, killing, age_secs, unreachable_for)| InstanceSpec {
            state,
            current,
            healthy,
            ready,
            killing,
            age_secs,
            unreachable_for,
        })
}

fn views<'a>(specs: &'a [InstanceSpec], ids: &'a [String], config: &'a str, now: Instant) -> Vec<InstanceView<'a>> {
    specs
        .iter()
        .zip(ids)
        .map(|(spec, id)| InstanceView {
            task_id: id,
            config_version: if spec.current { config } else { "old" },
            state: spec.state,
            healthy: spec.healthy,
            ready: spec.ready,
            killing: spec.killing,
            launched_at: now.checked_sub(Duration::from_secs(spec.age_secs)).unwrap_or(now),
            unreachable_since: spec.unreachable_for.and_then(|s| now.checked_sub(Duration::from_secs(s))),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn accepted_definitions_never_panic_and_make_valid_tasks(
        json in hostile_app(),
        specs in prop::collection::vec(instance_spec(), 0..12),
        failures in any::<u32>(),
    ) {
        let Ok(mut app) = app::parse_app(json.to_string().as_bytes(), None) else { return Ok(()) };
        // Within the default limits too, as a deployment checks.
        prop_assume!(app::AppLimits::default().check(&app).is_empty());
        app::stamp(&mut app, Timestamp::now(), None);
        let plan = model::plan(&app);
        let now = Instant::now();
        let ids: Vec<String> = (0..specs.len()).map(|i| app.id.task_id(&format!("{i:08}-0000-0000-0000-000000000000"))).collect();
        let config = model::config_version(&app);
        let decision = engine::decide(Some(&plan), &views(&specs, &ids, &config, now), now);
        prop_assert!(decision.launch <= plan.instances);
        let ports: Vec<u32> = (0..model::port_needs(&app).len() as u32).map(|i| 31_000 + i).collect();
        let task = model::task_info(&app, &ids.first().cloned().unwrap_or_else(|| app.id.task_id("x")), &ports);
        prop_assert_eq!(marina_proto::checks::check_task(&task), Ok(()), "the master must accept {:?}", task);
        let delay = engine::backoff_delay(
            app.backoff_seconds as f64,
            app.backoff_factor,
            app.max_launch_delay_seconds as f64,
            failures,
        );
        prop_assert!(delay <= Duration::from_secs(app.max_launch_delay_seconds.max(0) as u64));
        let _ = marina_daemon::time::deadline(now, delay);
    }

    #[test]
    fn the_engine_never_exceeds_the_over_capacity(
        target in 0u32..20,
        minimum in prop_oneof![Just(0.0), Just(0.5), Just(1.0), 0.0f64..=1.0],
        over in prop_oneof![Just(0.0), Just(0.5), Just(1.0), 0.0f64..=1.0],
        health_checks in any::<bool>(),
        readiness in any::<bool>(),
        youngest in any::<bool>(),
        inactive in prop::option::of(0u64..600),
        specs in prop::collection::vec(instance_spec(), 0..30),
    ) {
        let plan = AppPlan {
            id: "/prop".into(),
            instances: target,
            config_version: "new".into(),
            has_health_checks: health_checks,
            has_readiness_checks: readiness,
            minimum_health_capacity: minimum,
            maximum_over_capacity: over,
            kill_youngest_first: youngest,
            inactive_after: inactive.map(Duration::from_secs),
        };
        let now = Instant::now();
        let ids: Vec<String> = (0..specs.len()).map(|i| format!("prop.{i}")).collect();
        let instances = views(&specs, &ids, "new", now);
        let decision = engine::decide(Some(&plan), &instances, now);
        let killed: HashSet<&str> = decision.kill.iter().map(String::as_str).collect();
        prop_assert_eq!(killed.len(), decision.kill.len(), "an instance killed twice: {:?}", decision.kill);
        let known: HashSet<&str> = ids.iter().map(String::as_str).collect();
        prop_assert!(killed.is_subset(&known), "a kill of no instance");
        let live_after = instances.iter().filter(|i| i.is_live(&plan, now) && !killed.contains(i.task_id)).count()
            + decision.launch as usize;
        let maximum = target as usize + (f64::from(target) * over).floor() as usize;
        prop_assert!(
            decision.launch == 0 || live_after <= maximum,
            "{} live after launching {}, above {} + over-capacity = {}", live_after, decision.launch, target, maximum
        );
    }

    #[test]
    fn placement_never_overcommits(
        offers in prop::collection::vec((0.0f64..8.0, 0.0f64..4096.0, 0.0f64..100.0, 31_000u64..31_020, 0u64..8), 0..6),
        demands in prop::collection::vec(
            (0u32..40, prop_oneof![Just(0.0), Just(0.001), 0.0f64..2.0], 0.0f64..512.0, 0usize..3, prop::option::of(31_000u32..31_030)),
            0..6,
        ),
    ) {
        let mut views: Vec<OfferView> = offers
            .iter()
            .enumerate()
            .map(|(i, &(cpus, mem, disk, begin, width))| OfferView {
                offer_id: format!("o{i}"),
                agent_id: format!("a{i}"),
                hostname: format!("h{i}"),
                attributes: Vec::new(),
                cpus,
                mem,
                disk,
                ports: vec![Range { begin, end: begin + width }],
            })
            .collect();
        let original = views.clone();
        let mut wanted: Vec<Demand<'_>> = demands
            .iter()
            .enumerate()
            .map(|(i, &(count, cpus, mem, port_count, fixed))| Demand {
                app_id: format!("/d{i}"),
                count,
                cpus,
                mem,
                disk: 0.0,
                port_count,
                fixed_ports: fixed.into_iter().take(port_count).collect(),
                runtimes: &["process"],
                constraints: Box::new(|_, _| true),
                placed: Vec::new(),
            })
            .collect();
        let (placed, _) = placement::place(&mut wanted, &mut views);
        for (i, &(count, ..)) in demands.iter().enumerate() {
            let app = format!("/d{i}");
            let mine = placed.iter().filter(|p| p.app_id == app).count();
            prop_assert!(mine <= count as usize, "{} placed {} of {}", app, mine, count);
        }
        for offer in &original {
            let on: Vec<_> = placed.iter().filter(|p| p.offer_id == offer.offer_id).collect();
            let cpus: f64 = on.iter().map(|p| demands[app_index(&p.app_id)].1).sum();
            let mem: f64 = on.iter().map(|p| demands[app_index(&p.app_id)].2).sum();
            prop_assert!(cpus <= offer.cpus + 1e-6, "{} cpus placed on an offer of {}", cpus, offer.cpus);
            prop_assert!(mem <= offer.mem + 1e-6, "{} MB placed on an offer of {}", mem, offer.mem);
            let ports: Vec<u32> = on.iter().flat_map(|p| p.host_ports.iter().copied()).collect();
            let distinct: HashSet<u32> = ports.iter().copied().collect();
            prop_assert_eq!(distinct.len(), ports.len(), "a host port given twice on {}", offer.offer_id);
            let range = &offer.ports[0];
            prop_assert!(ports.iter().all(|&p| u64::from(p) >= range.begin && u64::from(p) <= range.end));
        }
    }
}

fn app_index(app_id: &str) -> usize {
    app_id.trim_start_matches("/d").parse().expect("a demand's app id")
}
