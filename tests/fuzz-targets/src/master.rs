//! The master's doors: scheduler calls (`marina.master.v1.Scheduler`) and what agents send
//! on their link (`AgentLink.Attach`), decoded from protobuf and put through the checks of
//! `marina_proto::checks` and the master's resource arithmetic.

use std::collections::HashSet;
use std::ffi::CString;
use std::path::{Component, Path};
use std::time::{Duration, Instant};

use marina_master::allocator::{Candidate, FreeAgent, allocate};
use marina_proto::agent::v1::{Range, Resources, TaskInfo};
use marina_proto::checks::{MAX_PORT, check_id, check_resources, check_task};
use marina_proto::master::v1 as pb;
use marina_proto::resources::{
    add, contains_port, covers_scalars, normalize, port_count, subtract, subtract_ports, subtract_ranges,
};
use prost::Message;

use crate::support::chunks;

/// Scheduler calls, as chunks (see [`chunks`]) whose kind picks `Accept`, `Decline`,
/// `Kill`, `Acknowledge` or `Reconcile`. Launched tasks go through `check_task`; a task it
/// accepts must be safe to use as the agent uses it (see [`assert_task_usable`]) and its
/// resources must add up against an offer. Offer filters go through what the master does
/// with them.
pub fn master_scheduler_requests(data: &[u8]) {
    for (kind, body) in chunks(data) {
        match kind % 5 {
            0 => {
                let Ok(request) = pb::AcceptRequest::decode(body) else { continue };
                ids(std::iter::once(&request.framework_id).chain(&request.offer_ids));
                let accepted: Vec<&TaskInfo> = request.launch.iter().filter(|task| check_task(task).is_ok()).collect();
                accepted.iter().for_each(|task| assert_task_usable(task));
                launch_against_offer(&accepted);
                if let Some(filters) = &request.filters {
                    refuse_until(filters.refuse_seconds);
                }
            }
            1 => {
                let Ok(request) = pb::DeclineRequest::decode(body) else { continue };
                ids(std::iter::once(&request.framework_id).chain(&request.offer_ids));
                if let Some(filters) = &request.filters {
                    refuse_until(filters.refuse_seconds);
                }
            }
            2 => {
                let Ok(request) = pb::KillRequest::decode(body) else { continue };
                ids([&request.framework_id, &request.task_id, &request.agent_id]);
                let _ = Duration::from_secs(u64::from(request.grace_period_seconds));
            }
            3 => {
                let Ok(request) = pb::AcknowledgeRequest::decode(body) else { continue };
                ids([&request.framework_id, &request.agent_id, &request.task_id]);
                for more in &request.more {
                    ids([&more.agent_id, &more.task_id]);
                }
            }
            _ => {
                let Ok(request) = pb::ReconcileRequest::decode(body) else { continue };
                ids(request.tasks.iter().flat_map(|task| [&task.task_id, &task.agent_id]));
            }
        }
    }
}

/// What agents send on their link: `Register` (the agent's resources through
/// `check_resources`, its running tasks through `check_task`), heartbeats and status
/// updates. Resources the check accepts must keep the master's arithmetic exact and its
/// allocation sound.
pub fn master_agent_messages(data: &[u8]) {
    let mut agents = Vec::new();
    for (_, body) in chunks(data) {
        let Ok(message) = pb::AgentMessage::decode(body) else { continue };
        match message.kind {
            Some(pb::agent_message::Kind::Register(register)) => {
                let Some(info) = register.info else { continue };
                // What the master checks of an agent when it registers.
                if marina_master::leader::check_agent(&info).is_err() {
                    continue;
                }
                assert!(info.agent_id.is_empty() || check_id(&info.agent_id).is_ok());
                let resources = info.resources.unwrap_or_default();
                assert!(check_resources("agent", &resources).is_ok());
                assert_arithmetic_sound(&resources);
                for report in &register.tasks {
                    if let Some(task) = report.task.as_ref().filter(|task| check_task(task).is_ok()) {
                        assert_task_usable(task);
                    }
                }
                agents.push(FreeAgent { agent_id: format!("a{}", agents.len()), free: resources });
            }
            Some(pb::agent_message::Kind::Update(status)) => {
                ids([&status.task_id, &status.agent_id, &status.framework_id]);
                let _ = status.state().is_terminal();
            }
            Some(pb::agent_message::Kind::Heartbeat(_)) | None => {}
        }
    }
    assert_allocation_sound(&agents);
}

/// What `accept` and `decline` do with a scheduler's `Filters.refuse_seconds`: the
/// master's own `refusal`, then the instant until which the framework refuses the agent.
/// Before it existed, `Duration::from_secs_f64(refuse)` panicked on an infinite or huge value
/// (fuzz/artifacts/master_scheduler_requests/).
fn refuse_until(seconds: f64) {
    if let Ok(refuse) = marina_master::leader::refusal(seconds) {
        assert!(refuse <= marina_master::leader::MAX_REFUSE);
        let _until = Instant::now() + refuse;
    }
}

/// Ids that pass `check_id` can name a directory entry: one normal path component.
fn ids<'a>(ids: impl IntoIterator<Item = &'a String>) {
    for id in ids {
        if check_id(id).is_ok() {
            assert_single_component(id);
        }
    }
}

pub(crate) fn assert_single_component(id: &str) {
    let components: Vec<Component<'_>> = Path::new(id).components().collect();
    assert!(
        matches!(components[..], [Component::Normal(name)] if name == id),
        "the id {id:?} passes check_id but is the path {components:?}"
    );
}

/// What `check_task` promises the agent: the id names one directory entry; the command,
/// its arguments, environment and image can be handed to `execve` and the runtimes (no
/// NUL, names without `=`); ports are ports; resources are finite and within bounds.
pub(crate) fn assert_task_usable(task: &TaskInfo) {
    assert_single_component(&task.task_id);
    if let Some(command) = &task.command {
        for text in std::iter::once(&command.value).chain(&command.arguments) {
            assert!(CString::new(text.as_bytes()).is_ok(), "an accepted command line holds a NUL");
        }
        for (name, value) in &command.environment {
            assert!(!name.is_empty() && !name.contains('='), "accepted the environment variable {name:?}");
            assert!(CString::new(format!("{name}={value}")).is_ok(), "accepted the environment variable {name:?}");
        }
    }
    if let Some(container) = &task.container {
        for mapping in &container.port_mappings {
            assert!(u16::try_from(mapping.host_port).is_ok() && u16::try_from(mapping.container_port).is_ok());
        }
        assert!(CString::new(container.image.as_bytes()).is_ok(), "an accepted image name holds a NUL");
    }
    if let Some(resources) = &task.resources {
        assert_arithmetic_sound(resources);
    }
}

/// Resources that pass `check_resources`: sums stay finite, ranges normalize idempotently,
/// port counts do not overflow, subtraction takes away exactly what it should.
fn assert_arithmetic_sound(resources: &Resources) {
    for value in [resources.cpus, resources.mem_mb, resources.disk_mb] {
        assert!(value.is_finite() && value >= 0.0, "accepted the scalar {value}");
    }
    let ranges = normalize(resources.ports.clone());
    assert_eq!(normalize(ranges.clone()), ranges, "normalizing twice changed the ranges");
    for pair in ranges.windows(2) {
        assert!(pair[0].end.saturating_add(1) < pair[1].begin, "normalized ranges touch: {pair:?}");
    }
    let count = port_count(&ranges);
    assert!(count <= MAX_PORT + 1, "{count} ports in {ranges:?}");
    for range in &resources.ports {
        for port in [range.begin, range.end] {
            assert_eq!(contains_port(&ranges, port), contains_port(&resources.ports, port), "port {port}");
            let without = subtract_ports(&ranges, [port]);
            assert!(!contains_port(&without, port), "{port} still in {without:?}");
            assert_eq!(port_count(&without) + 1, count, "taking {port} from {ranges:?} gave {without:?}");
        }
    }
    assert!(subtract_ranges(&ranges, &ranges).is_empty(), "{ranges:?} minus itself");
    let doubled = add(resources, resources);
    assert!(doubled.cpus.is_finite() && doubled.mem_mb.is_finite() && doubled.disk_mb.is_finite());
    assert_eq!(doubled.ports, ranges, "adding ranges to themselves");
    assert!(covers_scalars(&doubled, resources).is_ok(), "twice {resources:?} does not cover it");
    let none = subtract(resources, resources);
    assert!(none.ports.is_empty() && none.cpus == 0.0 && none.mem_mb == 0.0 && none.disk_mb == 0.0);
}

/// Accepted tasks asking for resources within an offer's: the sum is finite, and the master
/// decides coverage without panicking.
fn launch_against_offer(tasks: &[&TaskInfo]) {
    let offer = Resources {
        cpus: 8.0,
        mem_mb: 16_384.0,
        disk_mb: 100_000.0,
        ports: vec![Range { begin: 31_000, end: 32_000 }],
    };
    let mut asked = Resources::default();
    let mut ports = HashSet::new();
    for task in tasks {
        let resources = task.resources.clone().unwrap_or_default();
        asked = add(&asked, &Resources { ports: Vec::new(), ..resources });
        for mapping in task.container.as_ref().map(|c| c.port_mappings.as_slice()).unwrap_or_default() {
            let port = u64::from(mapping.host_port);
            if contains_port(&offer.ports, port) {
                ports.insert(port);
            }
        }
    }
    assert!(asked.cpus.is_finite() && asked.mem_mb.is_finite() && asked.disk_mb.is_finite(), "{asked:?}");
    let _ = covers_scalars(&offer, &asked);
    let left = subtract_ports(&offer.ports, ports.iter().copied());
    assert_eq!(port_count(&left) + ports.len() as u64, port_count(&offer.ports));
}

/// Allocation over registered agents: each allocatable agent offered once, to a known
/// framework.
fn assert_allocation_sound(agents: &[FreeAgent]) {
    let total = agents.iter().fold(Resources::default(), |sum, agent| add(&sum, &agent.free));
    let mut candidates: Vec<Candidate> = ["f1", "f2"]
        .iter()
        .map(|id| Candidate { framework_id: (*id).into(), allocated: Resources::default(), refused: HashSet::new() })
        .collect();
    let offers = allocate(agents, &mut candidates, &total);
    let offered: HashSet<&str> = offers.iter().map(|(agent, _)| agent.as_str()).collect();
    assert_eq!(offered.len(), offers.len(), "an agent was offered twice");
    assert!(offers.iter().all(|(_, framework)| framework == "f1" || framework == "f2"));
}
