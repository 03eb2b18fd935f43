//! The agent's doors: its checkpoint journal (recovered at every start) and what the master
//! sends it (`MasterMessage` on the agent link).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use marina_agent::checkpoint::{Checkpoint, Recovered, sandbox_name};
use marina_agent::tasks::normalize_image;
use marina_proto::checks::check_task;
use marina_proto::master::v1 as pb;
use prost::Message;

use crate::master::{assert_single_component, assert_task_usable};
use crate::support::{chunks, record_file, scratch_dir};

/// The journal (`<work_dir>/meta/journal`; see [`record_file`] for how the input becomes
/// one), recovered by the real `Checkpoint::open`. Recovery may cut off a torn final record
/// but must refuse damage anywhere else without touching the file; a journal recovered once
/// opens again to the same tasks and updates, with nothing more rewritten.
pub fn agent_journal(data: &[u8]) {
    let dir = scratch_dir();
    let meta = dir.path().join("meta");
    fs::create_dir_all(&meta).expect("scratch meta dir");
    let journal = meta.join("journal");
    let file = record_file(data);
    fs::write(&journal, &file).expect("scratch journal");
    match Checkpoint::open(dir.path()) {
        Err(_) => assert_eq!(fs::read(&journal).expect("journal"), file, "a refused journal was changed"),
        Ok((checkpoint, recovered)) => {
            drop(checkpoint);
            let kept = fs::read(&journal).expect("journal");
            let (_, again) = Checkpoint::open(dir.path())
                .unwrap_or_else(|error| panic!("a journal recovered once does not open again: {error}"));
            assert_same(&again, &recovered);
            assert_eq!(fs::read(&journal).expect("journal"), kept, "reopening rewrote the journal");
        }
    }
}

/// The same tasks in any order (they are kept by id; their protobuf maps encode in no fixed
/// order, so they are compared decoded), and the same updates in sequence order (as they are
/// resent).
fn assert_same(again: &Recovered, first: &Recovered) {
    let same_tasks =
        again.tasks.len() == first.tasks.len() && again.tasks.iter().all(|task| first.tasks.contains(task));
    assert!(same_tasks, "reopened, the journal holds other tasks: {:?}\nthen {:?}", first.tasks, again.tasks);
    assert_eq!(again.updates, first.updates, "reopened, the journal holds other updates");
}

/// What the leading master sends an agent, as chunks (see [`chunks`]) of `MasterMessage`.
/// Launched tasks go where `Tasks::launch` sends them: `check_task`, then
/// `Checkpoint::sandbox_path`. A sandbox must be a directory of `<work_dir>/sandboxes`, and
/// sandbox names (`sandbox_name`, for any id) one plain path component, one-to-one. A task
/// `check_task` accepts must be usable as the agent uses it.
pub fn agent_master_messages(data: &[u8]) {
    let dir = scratch_dir();
    let Ok((checkpoint, _)) = Checkpoint::open(dir.path()) else { panic!("a fresh work dir opens") };
    let mut names: HashMap<String, String> = HashMap::new();
    for (_, body) in chunks(data) {
        let Ok(message) = pb::MasterMessage::decode(body) else { continue };
        match message.kind {
            Some(pb::master_message::Kind::Launch(launch)) => {
                for task in &launch.tasks {
                    if let Ok(name) = sandbox_name(&task.task_id) {
                        assert_single_component(&name);
                        if let Some(other) = names.insert(name.clone(), task.task_id.clone()) {
                            assert_eq!(other, task.task_id, "two task ids share the sandbox name {name:?}");
                        }
                    }
                    if check_task(task).is_err() {
                        continue;
                    }
                    assert_task_usable(task);
                    if let Ok(sandbox) = checkpoint.sandbox_path(&task.task_id) {
                        assert_sandbox_inside(&checkpoint, &sandbox, &task.task_id);
                    }
                    if let Some(container) = &task.container {
                        let _ = normalize_image(&container.image);
                    }
                }
            }
            Some(pb::master_message::Kind::Kill(kill)) => {
                let _ = std::time::Duration::from_secs(u64::from(kill.grace_period_seconds));
            }
            Some(
                pb::master_message::Kind::Registered(_)
                | pb::master_message::Kind::Acknowledge(_)
                | pb::master_message::Kind::Shutdown(_),
            )
            | None => {}
        }
    }
}

fn assert_sandbox_inside(checkpoint: &Checkpoint, sandbox: &Path, task_id: &str) {
    assert_eq!(sandbox.parent(), Some(checkpoint.sandboxes()), "the sandbox of {task_id:?} is {}", sandbox.display());
    if checkpoint.create_sandbox(sandbox).is_err() {
        return;
    }
    let (Ok(made), Ok(sandboxes)) = (sandbox.canonicalize(), checkpoint.sandboxes().canonicalize()) else { return };
    assert_eq!(made.parent(), Some(sandboxes.as_path()), "the sandbox of {task_id:?} is {}", made.display());
}
