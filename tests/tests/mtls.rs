//! Mutual TLS between Marina's services, with real nodes: no port serves plaintext or a
//! caller without a certificate of the cluster's CA, and each RPC family refuses
//! certificates of the wrong role (Raft from anyone but a member coord node, the agent link
//! from anything but an agent, the scheduler API from anything but a framework, membership
//! from anyone but an operator), a service writes only its own subtree of coord, and a
//! framework or agent cannot be impersonated by another certificate. Certificates rotate
//! without a restart.

use std::sync::Arc;
use std::time::Duration;

use marina_daemon::tls::{Role, Tls};
use marina_proto::coord::v1 as coord_pb;
use marina_proto::master::v1 as master_pb;
use marina_tests::tls::channel;
use marina_tests::{CoordProcesses, MarinaCluster, TestCa, TestScheduler, eventually};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

/// Whether a plaintext gRPC health check of `address` fails (it must: the port speaks TLS).
async fn plaintext_grpc_refused(address: std::net::SocketAddr) -> bool {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap().connect_lazy();
    let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
    tonic_health::pb::health_client::HealthClient::new(channel).check(request).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_port_refuses_plaintext_and_callers_without_a_certificate() {
    let cluster = MarinaCluster::builder()
        .masters(1)
        .agents(1)
        .gateways(1)
        // Beyond `marina dev`'s loopback convenience: the gateway speaks only TLS.
        .gateway_config(|config| config.tls.accept_plaintext = false)
        .start()
        .await;
    let ca = cluster.ca();
    let internal = [
        ("coord", cluster.coord.address(1)),
        ("master", cluster.masters[0].address),
        ("agent", cluster.agents[0].address),
    ];
    let anonymous = marina_tests::tls::anonymous_client(ca);
    let stranger = TestCa::new(&cluster.dir.path().join("other-ca"));
    let stranger = marina_tests::tls::http_client(&stranger.operator());
    let operator = marina_tests::tls::http_client(&ca.operator());
    for (name, address) in internal {
        assert!(plaintext_grpc_refused(address).await, "{name} answered plaintext gRPC");
        let plain = reqwest::get(format!("http://{address}/health")).await;
        assert!(plain.is_err(), "{name} answered plaintext HTTP: {plain:?}");
        let refused = anonymous.get(format!("https://{address}/health")).send().await;
        assert!(refused.is_err(), "{name} answered a caller without a certificate: {refused:?}");
        let foreign = stranger.get(format!("https://{address}/health")).send().await;
        assert!(foreign.is_err(), "{name} answered a certificate of another CA: {foreign:?}");
        let health = operator.get(format!("https://{address}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200, "{name} over mutual TLS");
    }

    // The gateway: REST clients need no certificate (they authenticate with credentials),
    // but they need TLS.
    let gateway = cluster.gateways[0].address;
    assert!(plaintext_grpc_refused(gateway).await, "the gateway answered plaintext gRPC");
    assert!(reqwest::get(format!("http://{gateway}/v2/info")).await.is_err(), "plaintext REST");
    let info = anonymous.get(format!("https://{gateway}/v2/info")).send().await.unwrap();
    assert_eq!(info.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rpc_family_refuses_the_wrong_role() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).start().await;
    let ca = cluster.ca();
    let as_role = |role, id: Option<&str>| ca.tls(role, id);
    let coord = cluster.coord.address(1);
    let master = cluster.masters[0].address;

    // Raft: not from an operator, nor from a coord certificate of a node that is no member.
    let vote = || coord_pb::RaftPayload { data: Vec::new().into() };
    let mut raft = coord_pb::raft_client::RaftClient::new(channel(&ca.operator(), coord));
    assert_eq!(raft.vote(vote()).await.unwrap_err().code(), Code::PermissionDenied);
    let mut raft = coord_pb::raft_client::RaftClient::new(channel(&as_role(Role::Coord, Some("9")), coord));
    let refused = raft.vote(vote()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("not a member"), "{refused:?}");

    // Membership changes: operators only.
    let add = coord_pb::AddLearnerRequest { id: 9, address: "127.0.0.1:1".into() };
    let mut membership = coord_pb::cluster_client::ClusterClient::new(channel(&as_role(Role::Gateway, None), coord));
    assert_eq!(membership.add_learner(add).await.unwrap_err().code(), Code::PermissionDenied);

    // Coord paths: a service writes its own subtree only; an agent only reads.
    let url = cluster.coord_url();
    let coord_as = |tls: Arc<Tls>| marina_coord_client::CoordClient::with_tls(&url, Some(tls));
    let master_client = coord_as(as_role(Role::Master, Some("0")));
    master_client.put("/master/scratch", "mine").await.expect("a master writes under /master");
    let error = master_client.put("/gateway/apps/forged", "{}").await.unwrap_err();
    assert!(error.to_string().contains("may not write"), "{error}");
    let stranger = coord_as(as_role(Role::Coord, Some("9")));
    let error = stranger.put("/master/scratch", "stranger").await.unwrap_err();
    assert!(error.to_string().contains("not a member"), "a coord certificate of no member: {error}");
    let agent_client = coord_as(as_role(Role::Agent, Some("0")));
    assert!(agent_client.get("/master/scratch").await.unwrap().is_some(), "agents read");
    let error = agent_client.put("/master/scratch", "agent").await.unwrap_err();
    assert!(error.to_string().contains("only reads"), "{error}");

    // The agent link: agents only.
    let register = master_pb::AgentMessage {
        kind: Some(master_pb::agent_message::Kind::Register(master_pb::Register::default())),
    };
    let mut link = master_pb::agent_link_client::AgentLinkClient::new(channel(&as_role(Role::Gateway, None), master));
    let refused = link.attach(futures::stream::iter([register])).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // The scheduler API: frameworks (and gateways) only; draining an agent: operators only.
    let subscribe = master_pb::SubscribeRequest {
        framework: Some(master_pb::FrameworkInfo { name: "agent-posing".into(), ..Default::default() }),
    };
    let mut scheduler = master_pb::scheduler_client::SchedulerClient::new(channel(&as_role(Role::Agent, None), master));
    assert_eq!(scheduler.subscribe(subscribe).await.unwrap_err().code(), Code::PermissionDenied);
    let drain = master_pb::DrainAgentRequest { agent_id: "any".into() };
    let mut operator = master_pb::operator_client::OperatorClient::new(channel(&as_role(Role::Gateway, None), master));
    assert_eq!(operator.drain_agent(drain).await.unwrap_err().code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framework_or_agent_cannot_be_impersonated_with_another_certificate() {
    let cluster = MarinaCluster::builder().masters(1).agents(1).start().await;
    let ca = cluster.ca();
    let masters = cluster.master_addresses();
    let owner = TestScheduler::subscribe(ca, &masters, "owner", None).await;
    let intruder = ca.tls(Role::Framework, Some("intruder"));
    let mut client = master_pb::scheduler_client::SchedulerClient::new(channel(&intruder, &owner.leader));

    let subscribe = master_pb::SubscribeRequest {
        framework: Some(master_pb::FrameworkInfo {
            framework_id: owner.framework_id.clone(),
            name: "owner".into(),
            ..Default::default()
        }),
    };
    let refused = client.subscribe(subscribe).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("spiffe://marina/framework/owner"), "{refused:?}");
    let teardown = master_pb::TeardownRequest { framework_id: owner.framework_id.clone() };
    assert_eq!(client.teardown(teardown).await.unwrap_err().code(), Code::PermissionDenied);
    let kill = master_pb::KillRequest {
        framework_id: owner.framework_id.clone(),
        task_id: "anything".into(),
        ..Default::default()
    };
    assert_eq!(client.kill(kill).await.unwrap_err().code(), Code::PermissionDenied);

    // An agent id is bound to the certificate that registered it.
    let agent_id = eventually(WAIT, "the agent registered", || async {
        let leader = cluster.masters[0].handle.as_ref()?.master.leader().ok()?;
        Some(leader.state().agents.first()?.info.as_ref()?.agent_id.clone())
    })
    .await;
    let register = master_pb::AgentMessage {
        kind: Some(master_pb::agent_message::Kind::Register(master_pb::Register {
            info: Some(marina_proto::agent::v1::AgentInfo {
                agent_id: agent_id.clone(),
                hostname: "forged".into(),
                address: "127.0.0.1:1".into(),
                resources: Some(marina_proto::agent::v1::Resources { cpus: 1.0, mem_mb: 64.0, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let forged = ca.tls(Role::Agent, Some("forged"));
    let mut link = master_pb::agent_link_client::AgentLinkClient::new(channel(&forged, &masters[0]));
    let refused = link.attach(futures::stream::iter([register])).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains(&agent_id), "{refused:?}");
}

/// A node's certificate replaced (by one from a new CA) and SIGHUP: the node serves with it
/// at once, without a restart; the old CA's certificates are no longer taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_sighup_without_a_restart() {
    let cluster = CoordProcesses::start(1).await;
    let before = cluster.client();
    before.put("/rotation", "before").await.unwrap();

    let successor = TestCa::new(&cluster.dir().join("successor"));
    let node = marina_daemon::tls::TlsConfig::in_dir(cluster.ca().dir(), "coord-1");
    std::fs::copy(successor.ca_file(), node.ca.as_ref().unwrap()).unwrap();
    successor.issue_to(Role::Coord, Some("1"), node.cert.as_ref().unwrap(), node.key.as_ref().unwrap());
    let pid = cluster.pid(1).expect("the node runs");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    eventually(WAIT, "the node to reload its certificates", || async {
        cluster.log(1).contains("certificates reloaded").then_some(())
    })
    .await;

    let after = marina_coord_client::CoordClient::with_tls(&cluster.url(), Some(successor.operator()));
    let read = eventually(WAIT, "the node to take the new CA's certificates", || async {
        after.get("/rotation").await.ok().flatten()
    })
    .await;
    assert_eq!(read.data, "before", "the same node, its data kept");
    assert_eq!(cluster.pid(1), Some(pid), "not restarted");
    let old = marina_tests::tls::http_client(&cluster.ca().operator());
    let refused = old.get(format!("https://{}/health", cluster.address(1))).send().await;
    assert!(refused.is_err(), "the old CA's certificate still taken: {refused:?}");
}
