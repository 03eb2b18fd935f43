//! The gateway's doors: app JSON (REST and gRPC bodies), group bodies, partial updates, ids
//! and timestamps, REST query flags.

use std::sync::LazyLock;

use marina_gateway::app::{
    AppDefinition, AppError, PathId, Timestamp, apply_patch, parse_app, parse_app_at, rollback_version, stamp, validate,
};
use marina_gateway::model::task_info;
use marina_gateway::rest::{read_group, read_request_target};
use marina_proto::checks::check_task;

use crate::support::text;

/// An app id and a group every body is also read against (as `PUT /v2/apps/prod/web` and as
/// an app of the group `/prod`).
static PROD: LazyLock<PathId> = LazyLock::new(|| PathId::parse("/prod").expect("a valid id"));
static PROD_WEB: LazyLock<PathId> = LazyLock::new(|| PathId::parse("/prod/web").expect("a valid id"));

/// Apps as stored (stamped), for partial updates to apply to: Marathon 1.4's bridge app and
/// the 2014 app of the README.
static STORED: LazyLock<Vec<AppDefinition>> = LazyLock::new(|| {
    let fixtures = [
        include_str!("../../../services/gateway/src/app/fixtures/marathon-1.4-bridge.json"),
        include_str!("../../../services/gateway/src/app/fixtures/ubuntu-2014.json"),
    ];
    fixtures
        .iter()
        .map(|body| {
            let mut app = parse_app(body.as_bytes(), None).expect("the fixtures parse");
            stamp(&mut app, Timestamp::from_millis(1_764_000_000_000), None);
            app
        })
        .collect()
});

/// `POST /v2/apps`, `PUT /v2/apps/{id}` creating an app, an app in a group, and the stored
/// form read back: none may panic; every app accepted must survive being stored.
pub fn app_json(data: &[u8]) {
    check_outcome(parse_app(data, None));
    check_outcome(parse_app(data, Some(&PROD)));
    check_outcome(parse_app_at(data, &PROD_WEB));
    // How the gateway reads its own stored apps back from coord (lenient, not validated).
    let _ = serde_json::from_slice::<AppDefinition>(data);
}

/// `PATCH /v2/apps/{id}` (and gRPC `UpdateApp` with `partial`) on stored apps, and the
/// rollback form of an update body.
pub fn app_update(data: &[u8]) {
    for existing in STORED.iter() {
        match apply_patch(existing, data) {
            Ok(app) => {
                assert_eq!(app.id, existing.id, "a patch changed the app's id");
                assert_accepted(&app);
            }
            Err(error) => describe(&error),
        }
    }
    if let Err(error) = rollback_version(data) {
        describe(&error);
    }
}

/// `POST /v2/groups` and `PUT /v2/groups/prod`, through the gateway's own reading of a
/// group body (`rest::read_group`): every app accepted must survive being stored, and must
/// lie inside the group the request names (Marathon refuses a nested group that is not a
/// child of its parent).
pub fn app_group(data: &[u8]) {
    if let Ok(apps) = read_group(data, None) {
        apps.iter().for_each(assert_accepted);
    }
    if let Ok(apps) = read_group(data, Some(&PROD)) {
        for app in &apps {
            assert_accepted(app);
            assert!(PROD.contains(&app.id), "PUT /v2/groups/prod accepted an app outside it: {}", app.id);
        }
    }
}

/// App ids (URL paths, JSON ids), coord node names, Marathon task ids, and timestamps
/// (versions in URLs and bodies): each that reads must read back as itself from the form it
/// is written in.
pub fn app_ids(data: &[u8]) {
    let input = text(data);
    for result in [PathId::parse(&input), PathId::resolve(&input, &PROD)] {
        let Ok(id) = result else { continue };
        assert!(id.is_valid(), "{input:?} read as the invalid id {id}");
        let written = id.to_string();
        assert_eq!(PathId::parse(&written).as_ref(), Ok(&id), "the id {written} does not read back");
        assert_eq!(PathId::from_safe_path(&id.safe_path()).as_ref(), Ok(&id), "{written}: its node name");
        if !id.is_root() {
            let task_id = id.task_id("0c6f8c3e-1b5a-4e0b-9d6f-3e8a2b1c4d5e");
            assert_eq!(PathId::app_id_of_task(&task_id), Some(id.clone()), "the app of task {task_id}");
        }
        assert!(id.contains(&id) && id.parent().contains(&id));
    }
    if let Some(app) = PathId::app_id_of_task(&input) {
        assert!(app.is_valid() && !app.is_root(), "task {input:?} named the app {app}");
    }
    if let Ok(time) = Timestamp::parse(&input) {
        let written = time.to_string();
        assert_eq!(Timestamp::parse(&written), Ok(time), "{input:?} read as {written}, which does not read back");
        let json = serde_json::to_string(&time).expect("a timestamp serializes");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).ok(), Some(time), "{json} does not read back");
    }
}

/// REST request targets (`/v2/apps/prod/web/tasks?force=true&embed=apps.tasks`), read as
/// the handlers read them (`rest::read_request_target`: query flags, app and group paths).
pub fn rest_query(data: &[u8]) {
    let target = text(data);
    for target in
        [target.to_string(), format!("/v2/apps?{target}"), format!("/v2/apps/{target}"), format!("/v2/groups/{target}")]
    {
        let _ = read_request_target(&target);
    }
}

fn check_outcome(result: Result<AppDefinition, AppError>) {
    match result {
        Ok(app) => assert_accepted(&app),
        Err(error) => describe(&error),
    }
}

/// The error response is built for every refusal: it must not panic either.
fn describe(error: &AppError) {
    let _ = (error.status(), error.body(), error.to_string());
}

/// What an accepted app goes through. It is stored as its JSON (stamped with a version) and
/// read back from coord; the API writes the same JSON: stored, read back, and posted again,
/// it must be the same app, and write the same JSON again. Its instances are launched as the
/// gateway's `task_info` builds them: the checks the master and agent make of every task
/// (`check_task`) must accept them, or the app is accepted but can never run.
fn assert_accepted(app: &AppDefinition) {
    assert_eq!(validate(app), Ok(()), "an accepted app does not validate");
    let mut app = app.clone();
    stamp(&mut app, Timestamp::from_millis(1_764_000_000_000), None);
    let written = serde_json::to_string(&app).expect("an app serializes");
    let stored: AppDefinition = serde_json::from_str(&written)
        .unwrap_or_else(|error| panic!("the stored form of an accepted app does not read back: {error}\n{written}"));
    assert_eq!(stored, app, "the stored form reads back as another app\n{written}");
    assert_eq!(serde_json::to_string(&stored).expect("serializes"), written, "written differently once read back");
    match parse_app(written.as_bytes(), None) {
        Ok(posted) => assert_eq!(posted, app, "posted again, the stored form is another app\n{written}"),
        Err(error) => panic!("an accepted app, posted again as stored, is refused: {error}\n{written}"),
    }
    // As an offer's ports would be: real port numbers, however many the app asks for.
    let host_ports: Vec<u32> = (0..app.port_count()).map(|i| 31_000 + (i % 30_000) as u32).collect();
    let task = task_info(&app, &app.id.task_id("0c6f8c3e-1b5a-4e0b-9d6f-3e8a2b1c4d5e"), &host_ports);
    if let Err(error) = check_task(&task) {
        panic!("an accepted app launches a task the master refuses: {error}\n{written}");
    }
}
