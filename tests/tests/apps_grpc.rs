//! The gRPC apps API (`marina.apps.v1.Apps`) against a real cluster: every operation, its
//! errors, and the events it publishes — the same the REST API's callers see, since both
//! doors call one apps service.

use std::time::Duration;

use marina_proto::apps::v1 as pb;
use marina_proto::apps::v1::apps_client::AppsClient;
use marina_tests::{MarinaCluster, eventually};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(30);

type Client = AppsClient<Channel>;

async fn app(client: &mut Client, id: &str) -> Result<pb::App, tonic::Status> {
    client.get_app(pb::GetAppRequest { id: id.into() }).await.map(tonic::Response::into_inner)
}

/// Waits until the app runs `count` tasks and no deployment touches it.
async fn settled(client: &Client, id: &str, count: u32) -> pb::App {
    eventually(WAIT, &format!("{id} to run {count} tasks, settled"), || async {
        let app = app(&mut client.clone(), id).await.ok()?;
        (app.tasks_running == count && app.instances == count && app.deployment_ids.is_empty()).then_some(app)
    })
    .await
}

async fn tasks(client: &mut Client, app_id: &str) -> Vec<pb::Task> {
    client.list_tasks(pb::ListTasksRequest { app_id: app_id.into() }).await.unwrap().into_inner().tasks
}

/// The next event of `kind` about `app` from a REST (server-sent events) subscription.
async fn rest_event(events: &mut mpsc::UnboundedReceiver<(String, Value)>, kind: &str, app: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let (event_type, json) = events.recv().await.expect("the event stream is open");
            if event_type == kind && json.to_string().contains(app) {
                return json;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} about {app} on /v2/events within {WAIT:?}"))
}

/// The next event of `kind` about `app` from a gRPC `WatchEvents` stream.
async fn grpc_event(events: &mut tonic::Streaming<pb::Event>, kind: &str, app: &str) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.message().await.expect("the watch is open").expect("the watch goes on");
            if event.event_type == kind && event.json.contains(app) {
                return serde_json::from_str(&event.json).expect("an event is JSON");
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} about {app} on WatchEvents within {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_apps_operation_works_over_grpc_and_publishes_what_rest_does() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).gateways(1).start().await;
    cluster.leading_gateway().await;
    let base = cluster.gateway_url(0);
    let mut client = AppsClient::connect(base.clone()).await.unwrap();
    let mut rest_events = marina_tests::events::subscribe(&format!("{base}/v2/events")).await;
    let mut grpc_events =
        client.watch_events(pb::WatchEventsRequest { event_types: vec![] }).await.unwrap().into_inner();

    // Create: the same event as a REST create, on both streams.
    let definition = json!({ "id": "/grpc/web", "cmd": "sleep 1000", "cpus": 0.1, "mem": 32, "instances": 1 });
    let created = client.create_app(pb::CreateAppRequest { json: definition.to_string() }).await.unwrap().into_inner();
    assert!(!created.deployment_id.is_empty() && !created.version.is_empty());
    for posted in [
        rest_event(&mut rest_events, "api_post_event", "/grpc/web").await,
        grpc_event(&mut grpc_events, "api_post_event", "/grpc/web").await,
    ] {
        assert_eq!(posted["appDefinition"]["id"], "/grpc/web", "{posted}");
        assert_eq!(posted["uri"], "/v2/apps/grpc/web", "{posted}");
    }
    grpc_event(&mut grpc_events, "deployment_success", "/grpc/web").await;
    let first = settled(&client, "/grpc/web", 1).await;
    assert_eq!(serde_json::from_str::<Value>(&first.json).unwrap()["cmd"], "sleep 1000");

    // Creating it again, or an invalid app, is refused as REST refuses it.
    let again = client.create_app(pb::CreateAppRequest { json: definition.to_string() }).await.unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let invalid = json!({ "id": "/grpc/bad", "cmd": "x", "cpus": -1 }).to_string();
    let refused = client.create_app(pb::CreateAppRequest { json: invalid }).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("/cpus"), "Marathon's error body names the field: {}", refused.message());

    // Read: one app, a listing by prefix, its tasks.
    let listed = client.list_apps(pb::ListAppsRequest { id_prefix: "/grpc".into() }).await.unwrap().into_inner();
    assert_eq!(listed.apps.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["/grpc/web"]);
    assert_eq!(tasks(&mut client, "/grpc/web").await.len(), 1);
    for bad in ["/Web", "/a b", "/web/tasks"] {
        let error = app(&mut client, bad).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{bad:?}: {error:?}");
    }
    assert_eq!(app(&mut client, "/grpc/none").await.unwrap_err().code(), Code::NotFound);

    // Scale, then a partial update, then a whole new definition.
    let request = pb::ScaleAppRequest { id: "/grpc/web".into(), instances: 2, force: false };
    client.scale_app(request).await.unwrap();
    settled(&client, "/grpc/web", 2).await;
    let patch = pb::UpdateAppRequest {
        id: "/grpc/web".into(),
        json: json!({ "instances": 3 }).to_string(),
        partial: true,
        force: false,
    };
    client.update_app(patch).await.unwrap();
    settled(&client, "/grpc/web", 3).await;
    let missing = pb::UpdateAppRequest { id: "/grpc/none".into(), json: "{}".into(), partial: true, force: false };
    assert_eq!(client.update_app(missing).await.unwrap_err().code(), Code::NotFound, "a patch needs an app");
    let replaced = json!({ "id": "/grpc/web", "cmd": "sleep 999", "cpus": 0.1, "mem": 32, "instances": 2 });
    let replace =
        pb::UpdateAppRequest { id: "/grpc/web".into(), json: replaced.to_string(), partial: false, force: false };
    client.update_app(replace).await.unwrap();
    let updated = settled(&client, "/grpc/web", 2).await;
    assert_eq!(serde_json::from_str::<Value>(&updated.json).unwrap()["cmd"], "sleep 999");

    // A rollback to the first version, as REST's `PUT {"version": V}`.
    let rollback = pb::UpdateAppRequest {
        id: "/grpc/web".into(),
        json: json!({ "version": first.version }).to_string(),
        partial: false,
        force: false,
    };
    client.update_app(rollback).await.unwrap();
    let rolled_back = settled(&client, "/grpc/web", 1).await;
    assert_eq!(serde_json::from_str::<Value>(&rolled_back.json).unwrap()["cmd"], "sleep 1000");

    // Restart: every task replaced, the definition kept.
    let before: Vec<String> = tasks(&mut client, "/grpc/web").await.into_iter().map(|t| t.id).collect();
    client.restart_app(pb::RestartAppRequest { id: "/grpc/web".into(), force: false }).await.unwrap();
    eventually(WAIT, "the restarted app's tasks to be new ones", || async {
        let now = tasks(&mut client.clone(), "/grpc/web").await;
        (now.len() == 1 && now.iter().all(|t| !before.contains(&t.id) && t.state == "TASK_RUNNING")).then_some(())
    })
    .await;
    settled(&client, "/grpc/web", 1).await;

    // Kill: replaced; with scale, not; a task the app does not have is NOT_FOUND.
    let request = pb::ScaleAppRequest { id: "/grpc/web".into(), instances: 2, force: false };
    client.scale_app(request).await.unwrap();
    settled(&client, "/grpc/web", 2).await;
    let victim = tasks(&mut client, "/grpc/web").await[0].id.clone();
    let kill = |task_ids: Vec<String>, scale: bool| pb::KillTasksRequest {
        app_id: "/grpc/web".into(),
        task_ids,
        scale,
        ..Default::default()
    };
    let killed = client.kill_tasks(kill(vec![victim.clone()], false)).await.unwrap().into_inner();
    assert_eq!(killed.killed.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), [victim.as_str()]);
    assert!(killed.deployment.is_none(), "a kill without scale is no deployment");
    eventually(WAIT, "the killed task to be replaced", || async {
        let now = tasks(&mut client.clone(), "/grpc/web").await;
        (now.len() == 2 && !now.iter().any(|t| t.id == victim)).then_some(())
    })
    .await;
    let victim = tasks(&mut client, "/grpc/web").await[0].id.clone();
    let scaled = client.kill_tasks(kill(vec![victim], true)).await.unwrap().into_inner();
    assert!(scaled.deployment.is_some(), "a kill with scale is a deployment");
    settled(&client, "/grpc/web", 1).await;
    let unknown = client.kill_tasks(kill(vec!["grpc_web.nothing".into()], false)).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Deployments: one that cannot finish (no agent has the cpus) is listed, and canceling
    // it rolls it back (the app it created goes).
    let huge = json!({ "id": "/grpc/huge", "cmd": "sleep 1000", "cpus": 1000, "mem": 32, "instances": 1 });
    let stuck = client.create_app(pb::CreateAppRequest { json: huge.to_string() }).await.unwrap().into_inner();
    let listed = client.list_deployments(pb::ListDeploymentsRequest {}).await.unwrap().into_inner().deployments;
    let deployment = listed.iter().find(|d| d.id == stuck.deployment_id).expect("the stuck deployment is listed");
    assert_eq!(deployment.affected_apps, ["/grpc/huge"]);
    assert_eq!(deployment.current_actions[0].action, "StartApplication");
    let request = pb::CancelDeploymentRequest { id: stuck.deployment_id.clone(), force: false };
    let canceled = client.cancel_deployment(request).await.unwrap().into_inner();
    assert!(canceled.rollback.is_some(), "canceling without force rolls back");
    eventually(WAIT, "the canceled app to be gone", || async {
        (app(&mut client.clone(), "/grpc/huge").await.err()?.code() == Code::NotFound).then_some(())
    })
    .await;
    grpc_event(&mut grpc_events, "deployment_failed", &stuck.deployment_id).await;
    rest_event(&mut rest_events, "deployment_failed", &stuck.deployment_id).await;

    // Delete.
    client.delete_app(pb::DeleteAppRequest { id: "/grpc/web".into(), force: false }).await.unwrap();
    eventually(WAIT, "the app and its tasks to be gone", || async {
        let gone = app(&mut client.clone(), "/grpc/web").await.err()?.code() == Code::NotFound;
        (gone && tasks(&mut client.clone(), "").await.is_empty()).then_some(())
    })
    .await;
    let again = client.delete_app(pb::DeleteAppRequest { id: "/grpc/web".into(), force: false }).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
}

/// A standby gateway answers the gRPC apps API through the leader, as it does REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_gateway_serves_grpc_through_the_leader() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).gateways(2).start().await;
    let leader = cluster.leading_gateway().await;
    let standby = (0..2).map(|i| cluster.gateway_url(i)).find(|url| *url != format!("http://{leader}")).unwrap();
    let client = AppsClient::connect(standby).await.unwrap();
    let definition = json!({ "id": "/via-standby", "cmd": "sleep 1000", "cpus": 0.1, "mem": 32 });
    let created = eventually(WAIT, "the standby to forward to the leader", || async {
        let request = pb::CreateAppRequest { json: definition.to_string() };
        client.clone().create_app(request).await.ok()
    })
    .await;
    assert!(!created.into_inner().deployment_id.is_empty());
    settled(&client, "/via-standby", 1).await;
}
