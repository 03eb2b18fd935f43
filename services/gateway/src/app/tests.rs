//! Cross-module tests of the app model: what clients send, what they get back, what is refused.

use serde_json::{Value, json};

use super::*;

const SEED_2014: &str = include_str!("fixtures/ubuntu-2014.json");
const BRIDGE_1_4: &str = include_str!("fixtures/marathon-1.4-bridge.json");

fn parse(body: &str) -> AppDefinition {
    parse_app(body.as_bytes(), None).unwrap_or_else(|e| panic!("{body} must parse: {e}"))
}

fn parse_err(body: &str) -> AppError {
    match parse_app(body.as_bytes(), None) {
        Ok(app) => panic!("{body} must be refused, got {app:?}"),
        Err(e) => e,
    }
}

fn id(path: &str) -> PathId {
    PathId::parse(path).unwrap()
}

/// A stored app reads back as itself, and writes the same JSON again.
fn assert_round_trips(app: &AppDefinition) {
    let written = serde_json::to_string(app).unwrap();
    let read: AppDefinition = serde_json::from_str(&written).unwrap();
    assert_eq!(&read, app, "{written}");
    assert_eq!(serde_json::to_string(&read).unwrap(), written);
    assert_eq!(validate(&read), Ok(()));
}

#[test]
fn the_seeds_2014_app_parses_verbatim_and_normalizes() {
    let app = parse(SEED_2014);
    let mut expected = AppDefinition::new(id("/ubuntu"));
    expected.cmd = Some("while sleep 10; do date -u +%T; done".to_owned());
    expected.instances = 1;
    expected.cpus = 0.5;
    expected.mem = 512.0;
    expected.container = Some(Container {
        kind: ContainerType::Docker,
        docker: Some(DockerContainer::new("libmesos/ubuntu")),
        appc: None,
        volumes: vec![],
        port_mappings: None,
    });
    assert_eq!(app, expected);
    assert_eq!(app.image(), Some("libmesos/ubuntu"));
    assert_eq!(app.port_definitions, [PortDefinition::new(0)], "Marathon's one dynamic port");
}

#[test]
fn the_seeds_2014_app_is_written_in_marathon_1x_shape() {
    let written = parse(SEED_2014).to_json();
    let expected = json!({
        "id": "/ubuntu",
        "cmd": "while sleep 10; do date -u +%T; done",
        "env": {},
        "instances": 1,
        "cpus": 0.5,
        "mem": 512.0,
        "disk": 0.0,
        "gpus": 0,
        "executor": "",
        "constraints": [],
        "uris": [],
        "fetch": [],
        "storeUrls": [],
        "ports": [0],
        "portDefinitions": [{"port": 0, "protocol": "tcp", "labels": {}}],
        "requirePorts": false,
        "backoffSeconds": 1,
        "backoffFactor": 1.15,
        "maxLaunchDelaySeconds": 3600,
        "container": {
            "type": "DOCKER",
            "docker": {"image": "libmesos/ubuntu", "privileged": false, "parameters": [], "forcePullImage": false},
            "volumes": []
        },
        "healthChecks": [],
        "readinessChecks": [],
        "dependencies": [],
        "upgradeStrategy": {"minimumHealthCapacity": 1.0, "maximumOverCapacity": 1.0},
        "labels": {},
        "killSelection": "YOUNGEST_FIRST",
        "unreachableStrategy": {"inactiveAfterSeconds": 300, "expungeAfterSeconds": 600}
    });
    assert_eq!(written, expected);
    assert!(written["container"].get("image").is_none(), "never the 2014 shape");
    assert_round_trips(&parse(SEED_2014));
}

#[test]
fn numbers_and_booleans_may_be_strings() {
    let app = parse(
        r#"{"id": "s", "cmd": "x", "instances": "3", "cpus": ".3", "mem": "1e3", "disk": " 10 ", "gpus": "0",
            "backoffSeconds": "2", "backoffFactor": "2.5", "maxLaunchDelaySeconds": "60.0", "requirePorts": "false",
            "ports": ["8080", 9090], "upgradeStrategy": {"minimumHealthCapacity": "0.5"},
            "healthChecks": [{"protocol": "tcp", "portIndex": "1", "intervalSeconds": "5"}]}"#,
    );
    assert_eq!((app.instances, app.cpus, app.mem, app.disk), (3, 0.3, 1000.0, 10.0));
    assert_eq!((app.backoff_seconds, app.backoff_factor, app.max_launch_delay_seconds), (2, 2.5, 60));
    assert_eq!(app.port_definitions, [PortDefinition::new(8080), PortDefinition::new(9090)]);
    assert_eq!(app.upgrade_strategy, UpgradeStrategy { minimum_health_capacity: 0.5, maximum_over_capacity: 1.0 });
    assert_eq!(app.health_checks[0].protocol, HealthCheckProtocol::Tcp, "enum names in any case");
    assert_eq!((app.health_checks[0].port_index, app.health_checks[0].interval_seconds), (Some(1), 5));
}

#[test]
fn a_marathon_1_4_docker_app_reads_with_every_field() {
    let app = parse(BRIDGE_1_4);
    assert_eq!(app.id, id("/prod/web"));
    assert_eq!(app.instances, 2);
    let container = app.container.as_ref().unwrap();
    let docker = container.docker.as_ref().unwrap();
    assert_eq!(docker.network, Some(DockerNetwork::Bridge));
    assert!(docker.force_pull_image && !docker.privileged);
    assert_eq!(docker.parameters, [DockerParameter { key: "hostname".into(), value: "a.corp.org".into() }]);
    let mappings = container.port_mappings.as_ref().unwrap();
    assert_eq!(mappings.len(), 2);
    assert_eq!(mappings[1].host_port, Some(0), "bridge mode: a missing host port is dynamic");
    assert_eq!(mappings[1].protocol, Protocol::Udp);
    assert!(app.port_definitions.is_empty(), "bridged apps get no default host port");
    assert!(!app.is_host_networked());
    assert_eq!(app.port_count(), 2);
    assert_eq!(container.volumes.len(), 1);
    assert_eq!(app.env["PORT_HINT"], EnvValue::Value("8080".into()));
    assert_eq!(app.env["DB_PASSWORD"], EnvValue::Secret { secret: "db-password".into() });
    assert_eq!(app.secrets["db-password"], json!({"source": "/prod/db/password"}));
    assert_eq!(
        app.constraints.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["hostname:UNIQUE", "rack:GROUP_BY:3", "jdk:LIKE:7|8"]
    );
    assert_eq!(app.health_checks[0].port_index, Some(0), "Marathon fills in the first port");
    assert_eq!(app.health_checks[0].max_consecutive_failures, 0);
    assert_eq!(app.health_checks[1].protocol, HealthCheckProtocol::Command);
    assert_eq!(app.health_checks[1].port_index, None);
    assert_eq!(app.readiness_checks[0].http_status_codes_for_ready, [200]);
    assert_eq!(app.dependencies, [id("/prod/db"), id("/shared/cache")], "relative to the app's group");
    assert_eq!(
        app.fetch.iter().map(|f| (f.uri.as_str(), f.extract)).collect::<Vec<_>>(),
        [("https://example.com/assets.tar.gz", true), ("https://example.com/run.sh", false)]
    );
    assert_eq!(app.accepted_resource_roles, Some(vec!["slave_public".to_owned()]));
    assert_eq!(app.kill_selection, KillSelection::OldestFirst);
    assert_eq!(app.unreachable_strategy, UnreachableStrategy::Disabled);
    assert_eq!(app.task_kill_grace_period_seconds, Some(30));
    assert_round_trips(&app);

    let written = app.to_json();
    assert_eq!(written["uris"], json!(["https://example.com/assets.tar.gz", "https://example.com/run.sh"]));
    assert_eq!(written["unreachableStrategy"], json!("disabled"));
    assert_eq!(written["container"]["portMappings"], written["container"]["docker"]["portMappings"]);
    assert_eq!(
        written["container"]["docker"]["portMappings"][0],
        json!({
            "containerPort": 8080, "hostPort": 0, "servicePort": 10000, "protocol": "tcp", "name": "http", "labels": {}
        })
    );
    assert_eq!(
        written["constraints"],
        json!([["hostname", "UNIQUE"], ["rack", "GROUP_BY", "3"], ["jdk", "LIKE", "7|8"]])
    );
    assert_eq!(written["env"]["DB_PASSWORD"], json!({"secret": "db-password"}));
    assert_eq!(written["healthChecks"][1]["command"], json!({"value": "curl -f http://$HOST:$PORT0/"}));
    assert!(written.get("tasksRunning").is_none(), "unknown fields are ignored");
}

#[test]
fn marathon_1_5_networks_and_container_port_mappings() {
    let app = parse(
        r#"{"id": "/net/app", "networks": [{"mode": "container", "name": "dcos"}],
            "container": {"type": "MESOS", "docker": {"image": "nginx"},
                          "portMappings": [{"containerPort": 80, "name": "http", "labels": {"VIP_0": "/web:80"}}]}}"#,
    );
    let container = app.container.as_ref().unwrap();
    assert_eq!(container.kind, ContainerType::Mesos);
    assert_eq!(container.port_mappings.as_ref().unwrap()[0].host_port, None, "no host port on a named network");
    assert_eq!(
        app.networks[0],
        Network { mode: NetworkMode::Container, name: Some("dcos".into()), labels: Default::default() }
    );
    assert!(app.port_definitions.is_empty());
    assert_eq!(app.port_names(), [Some("http")]);
    assert_round_trips(&app);
}

#[test]
fn containerd_args_and_container_only_apps() {
    // Marina's former CONTAINERD, written as Marathon's MESOS (which its clients parse).
    let containerd =
        parse(r#"{"id": "c", "container": {"type": "containerd", "docker": {"image": "docker:///busybox"}}}"#);
    assert_eq!(containerd.container.as_ref().unwrap().kind, ContainerType::Mesos);
    assert_eq!(containerd.image(), Some("busybox"));
    assert_eq!(containerd.to_json()["container"]["type"], "MESOS");
    assert_round_trips(&containerd);

    let args = parse(r#"{"id": "a", "args": ["sleep", "60"], "cmd": ""}"#);
    assert_eq!((args.cmd, args.args), (None, Some(vec!["sleep".to_owned(), "60".to_owned()])));

    // Marathon 0.x's `docker run` options become Marathon 1.x's parameters (never written
    // back as `options`, which Marathon's clients cannot parse).
    let legacy = parse(
        r#"{"id": "l", "container": {"image": "redis", "options": ["-e", "X=7", "--log-driver=none", "--init", "--label", "a=b"]}}"#,
    );
    let parameters = &legacy.container.as_ref().unwrap().docker.as_ref().unwrap().parameters;
    let pairs: Vec<(&str, &str)> = parameters.iter().map(|p| (p.key.as_str(), p.value.as_str())).collect();
    assert_eq!(pairs, [("env", "X=7"), ("log-driver", "none"), ("init", "true"), ("label", "a=b")]);
    assert!(legacy.to_json()["container"].get("options").is_none());
    assert_round_trips(&legacy);
    let AppError::Invalid(refused) = parse_err(r#"{"id": "l", "container": {"image": "redis", "options": ["-it"]}}"#)
    else {
        panic!("a violation")
    };
    let paths: Vec<&str> = refused.iter().map(|v| v.path.as_str()).collect();
    assert_eq!(paths, ["/container/options(0)"]);

    let lenient = parse(
        r#"{"id": "u", "cmd": "x", "constraints": [["hostname", "UNIQUE", ""]], "acceptedResourceRoles": [], "unreachableStrategy": {"inactiveAfterSeconds": 0, "expungeAfterSeconds": 0}}"#,
    );
    assert_eq!(lenient.constraints[0].value, None, "old clients send an empty value");
    assert_eq!(lenient.accepted_resource_roles, None);
    assert_round_trips(&lenient);
}

#[test]
fn ids_resolve_against_the_base_or_the_url() {
    let group = id("/prod");
    let app = parse_app(br#"{"id": "web", "cmd": "x", "dependencies": ["db", "/ops/log"]}"#, Some(&group)).unwrap();
    assert_eq!(app.id, id("/prod/web"));
    assert_eq!(app.dependencies, [id("/prod/db"), id("/ops/log")]);
    let at = parse_app_at(br#"{"id": "ignored", "cmd": "x", "dependencies": ["../db"]}"#, &id("/prod/api/v1")).unwrap();
    assert_eq!(at.id, id("/prod/api/v1"));
    assert_eq!(at.dependencies, [id("/prod/db")]);
    let without_id = parse_app_at(br#"{"cmd": "x"}"#, &id("/x")).unwrap();
    assert_eq!(without_id.id, id("/x"));

    for outside in [r#"{"id": "/ops/web", "cmd": "x"}"#, r#"{"id": "a/b", "cmd": "x"}"#, r#"{"id": "..", "cmd": "x"}"#]
    {
        let error = parse_app(outside.as_bytes(), Some(&group)).unwrap_err();
        let AppError::Invalid(violations) = &error else { panic!("{error:?}") };
        assert_eq!(violations[0], Violation::new("/id", "Identifier is not child of /prod. Hint: use relative paths."));
    }
    assert!(parse_app(br#"{"id": "/prod/web", "cmd": "x"}"#, Some(&group)).is_ok(), "absolute ids inside are fine");
}

/// `(what, body, status, paths reported)`: each bad definition and Marathon's answer to it.
const BAD: &[(&str, &str, u16, &[&str])] = &[
    ("malformed JSON", r#"{"id": "x", "cmd": "#, 400, &[]),
    ("empty body", "", 400, &[]),
    ("not an object", "[1, 2]", 422, &["/"]),
    ("missing id", r#"{"cmd": "x"}"#, 422, &["/id"]),
    ("root id", r#"{"id": "/", "cmd": "x"}"#, 422, &["/id"]),
    ("uppercase id", r#"{"id": "/Ubuntu", "cmd": "x"}"#, 422, &["/id"]),
    ("id with a space", r#"{"id": "a b", "cmd": "x"}"#, 422, &["/id"]),
    ("id with an underscore", r#"{"id": "/prod/my_app", "cmd": "x"}"#, 422, &["/id"]),
    ("id ending in a keyword", r#"{"id": "/app/versions", "cmd": "x"}"#, 422, &["/id"]),
    ("cpus -1", r#"{"id": "x", "cmd": "x", "cpus": -1}"#, 422, &["/cpus"]),
    ("mem -1 and disk -1", r#"{"id": "x", "cmd": "x", "mem": "-1", "disk": -1}"#, 422, &["/mem", "/disk"]),
    ("instances abc", r#"{"id": "x", "cmd": "x", "instances": "abc"}"#, 422, &["/instances"]),
    ("instances -1", r#"{"id": "x", "cmd": "x", "instances": -1}"#, 422, &["/instances"]),
    ("instances 1.5", r#"{"id": "x", "cmd": "x", "instances": 1.5}"#, 422, &["/instances"]),
    ("cmd and args", r#"{"id": "x", "cmd": "x", "args": ["y"]}"#, 422, &["/"]),
    ("no cmd, args or container", r#"{"id": "x"}"#, 422, &["/"]),
    (
        "bad constraint operator",
        r#"{"id": "x", "cmd": "x", "constraints": [["hostname", "unique"]]}"#,
        422,
        &["/constraints(0)"],
    ),
    (
        "constraint with 4 fields",
        r#"{"id": "x", "cmd": "x", "constraints": [["a", "LIKE", "b", "c"]]}"#,
        422,
        &["/constraints(0)"],
    ),
    (
        "constraint not an array",
        r#"{"id": "x", "cmd": "x", "constraints": ["hostname:UNIQUE"]}"#,
        422,
        &["/constraints(0)"],
    ),
    (
        "LIKE with a bad regex",
        r#"{"id": "x", "cmd": "x", "constraints": [["rack", "LIKE", "rack-[1-"]]}"#,
        422,
        &["/constraints(0)"],
    ),
    (
        "UNIQUE with a value",
        r#"{"id": "x", "cmd": "x", "constraints": [["h", "UNIQUE", "v"]]}"#,
        422,
        &["/constraints(0)"],
    ),
    (
        "MAX_PER without a number",
        r#"{"id": "x", "cmd": "x", "constraints": [["rack", "MAX_PER"]]}"#,
        422,
        &["/constraints(0)"],
    ),
    (
        "portIndex out of range",
        r#"{"id": "x", "cmd": "x", "healthChecks": [{"protocol": "HTTP", "portIndex": 1}]}"#,
        422,
        &["/healthChecks(0)"],
    ),
    (
        "HTTP check without ports",
        r#"{"id": "x", "cmd": "x", "ports": [], "healthChecks": [{}]}"#,
        422,
        &["/healthChecks(0)"],
    ),
    (
        "COMMAND check without command",
        r#"{"id": "x", "cmd": "x", "healthChecks": [{"protocol": "COMMAND"}]}"#,
        422,
        &["/healthChecks(0)/command"],
    ),
    (
        "bad health protocol",
        r#"{"id": "x", "cmd": "x", "healthChecks": [{"protocol": "UDP"}]}"#,
        422,
        &["/healthChecks(0)/protocol"],
    ),
    (
        "two Mesos checks",
        r#"{"id": "x", "cmd": "x", "healthChecks": [{"protocol": "MESOS_HTTP"}, {"protocol": "MESOS_TCP"}]}"#,
        422,
        &["/"],
    ),
    (
        "minimumHealthCapacity 2",
        r#"{"id": "x", "cmd": "x", "upgradeStrategy": {"minimumHealthCapacity": 2}}"#,
        422,
        &["/upgradeStrategy/minimumHealthCapacity"],
    ),
    (
        "maximumOverCapacity -0.1",
        r#"{"id": "x", "cmd": "x", "upgradeStrategy": {"maximumOverCapacity": -0.1}}"#,
        422,
        &["/upgradeStrategy/maximumOverCapacity"],
    ),
    ("duplicate ports", r#"{"id": "x", "cmd": "x", "ports": [8080, 8080]}"#, 422, &["/portDefinitions"]),
    (
        "duplicate port names",
        r#"{"id": "x", "cmd": "x", "portDefinitions": [{"name": "a"}, {"name": "a"}]}"#,
        422,
        &["/portDefinitions"],
    ),
    ("port 70000", r#"{"id": "x", "cmd": "x", "ports": [70000]}"#, 422, &["/ports(0)"]),
    (
        "ports and portDefinitions disagree",
        r#"{"id": "x", "cmd": "x", "ports": [1], "portDefinitions": [{"port": 2}]}"#,
        422,
        &["/"],
    ),
    (
        "requirePorts with port 0",
        r#"{"id": "x", "cmd": "x", "requirePorts": true, "ports": [8080, 0]}"#,
        422,
        &["/requirePorts"],
    ),
    ("requirePorts with the default port", r#"{"id": "x", "cmd": "x", "requirePorts": true}"#, 422, &["/requirePorts"]),
    ("bad killSelection", r#"{"id": "x", "cmd": "x", "killSelection": "RANDOM"}"#, 422, &["/killSelection"]),
    ("backoffFactor below 1", r#"{"id": "x", "cmd": "x", "backoffFactor": 0.5}"#, 422, &["/backoffFactor"]),
    (
        "negative backoff",
        r#"{"id": "x", "cmd": "x", "backoffSeconds": -1, "maxLaunchDelaySeconds": -1}"#,
        422,
        &["/backoffSeconds", "/maxLaunchDelaySeconds"],
    ),
    (
        "docker without image",
        r#"{"id": "x", "container": {"type": "DOCKER", "docker": {}}}"#,
        422,
        &["/container/docker/image"],
    ),
    (
        "DOCKER without docker",
        r#"{"id": "x", "cmd": "x", "container": {"type": "DOCKER"}}"#,
        422,
        &["/container/docker"],
    ),
    (
        "legacy non-docker image",
        r#"{"id": "x", "container": {"image": "s3://bucket/image"}}"#,
        422,
        &["/container/image"],
    ),
    ("bad container type", r#"{"id": "x", "cmd": "x", "container": {"type": "LXC"}}"#, 422, &["/container/type"]),
    ("env value an array", r#"{"id": "x", "cmd": "x", "env": {"X": [1]}}"#, 422, &["/env/X"]),
    ("empty env name", r#"{"id": "x", "cmd": "x", "env": {"": "v"}}"#, 422, &["/env()"]),
    ("bad dependency", r#"{"id": "x", "cmd": "x", "dependencies": ["/Db"]}"#, 422, &["/dependencies(0)"]),
    ("bad executor", r#"{"id": "x", "cmd": "x", "executor": "/test//path"}"#, 422, &["/executor"]),
    (
        "readiness port unknown",
        r#"{"id": "x", "cmd": "x", "readinessChecks": [{"portName": "nope"}]}"#,
        422,
        &["/readinessChecks(0)/portName"],
    ),
    (
        "unreachable inactive after expunge",
        r#"{"id": "x", "cmd": "x", "unreachableStrategy": {"inactiveAfterSeconds": 700}}"#,
        422,
        &["/unreachableStrategy/inactiveAfterSeconds"],
    ),
    (
        "unreachable unknown word",
        r#"{"id": "x", "cmd": "x", "unreachableStrategy": "never"}"#,
        422,
        &["/unreachableStrategy"],
    ),
    ("bad version", r#"{"id": "x", "cmd": "x", "version": "last tuesday"}"#, 422, &["/version"]),
    (
        "single instance app with 2",
        r#"{"id": "x", "cmd": "x", "instances": 2, "labels": {"MARATHON_SINGLE_INSTANCE_APP": "true"}, "upgradeStrategy": {"minimumHealthCapacity": 0, "maximumOverCapacity": 0}}"#,
        422,
        &["/"],
    ),
    ("uris and fetch disagree", r#"{"id": "x", "cmd": "x", "uris": ["a"], "fetch": [{"uri": "b"}]}"#, 422, &["/uris"]),
    ("several at once", r#"{"id": "Bad", "cmd": "x", "cpus": -1, "mem": -2}"#, 422, &["/id", "/cpus", "/mem"]),
    // What once panicked a leader or stalled every app, refused at the door instead.
    (
        "a backoff beyond int32",
        r#"{"id": "x", "cmd": "false", "backoffSeconds": 9223372036854775807}"#,
        422,
        &["/backoffSeconds"],
    ),
    (
        "a launch delay beyond int32",
        r#"{"id": "x", "cmd": "x", "maxLaunchDelaySeconds": 2147483648}"#,
        422,
        &["/maxLaunchDelaySeconds"],
    ),
    (
        "a kill grace beyond int32",
        r#"{"id": "x", "cmd": "x", "taskKillGracePeriodSeconds": 1e12}"#,
        422,
        &["/taskKillGracePeriodSeconds"],
    ),
    ("instances beyond int32", r#"{"id": "x", "cmd": "x", "instances": 4294967296}"#, 422, &["/instances"]),
    (
        "an unreachable tolerance of centuries",
        r#"{"id": "x", "cmd": "x", "unreachableStrategy": {"inactiveAfterSeconds": 1, "expungeAfterSeconds": 9999999999}}"#,
        422,
        &["/unreachableStrategy/expungeAfterSeconds"],
    ),
    ("cpus beyond any machine", r#"{"id": "x", "cmd": "x", "cpus": 1e300}"#, 422, &["/cpus"]),
    (
        "a health check every 0 s",
        r#"{"id": "x", "cmd": "x", "healthChecks": [{"protocol": "TCP", "intervalSeconds": 0}]}"#,
        422,
        &["/healthChecks(0)/intervalSeconds"],
    ),
    ("an env name with =", r#"{"id": "x", "cmd": "x", "env": {"A=B": "1"}}"#, 422, &["/env(A=B)"]),
    ("a NUL in an env value", "{\"id\": \"x\", \"cmd\": \"x\", \"env\": {\"A\": \"a\\u0000b\"}}", 422, &["/env(A)"]),
    ("a NUL in the command", "{\"id\": \"x\", \"cmd\": \"a\\u0000b\"}", 422, &["/cmd"]),
];

#[test]
fn bad_definitions_get_marathons_status_and_paths() {
    for (what, body, status, paths) in BAD {
        let error = parse_err(body);
        assert_eq!(error.status(), *status, "{what}: {error}");
        let body = error.body();
        assert!(body["message"].is_string(), "{what}: {body}");
        if let AppError::Invalid(violations) = &error {
            let reported: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
            assert_eq!(reported, *paths, "{what}: {error}");
            assert!(violations.iter().all(|v| !v.errors.is_empty()), "{what}");
            assert_eq!(body["details"].as_array().map(Vec::len), Some(paths.len()), "{what}: {body}");
        }
    }
}

#[test]
fn ids_must_leave_room_for_their_task_ids() {
    let longest = format!("/{}", "a".repeat(MAX_APP_ID_BYTES - 1));
    let app = parse(&format!(r#"{{"id": "{longest}", "cmd": "x"}}"#));
    let task_id = app.id.task_id("0c6f8c3e-1b5a-4e0b-9d6f-3e8a2b1c4d5e");
    assert_eq!(task_id.len(), marina_proto::checks::MAX_ID_BYTES, "the longest id's task ids just fit");
    assert!(marina_proto::checks::check_id(&task_id).is_ok());
    let error = parse_err(&format!(r#"{{"id": "{longest}a", "cmd": "x"}}"#));
    assert!(error.to_string().contains("expected 219 or less"), "{error}");
    let thousand = format!("/{}", ["abcdefghi"; 100].join("/"));
    let AppError::Invalid(violations) = parse_err(&format!(r#"{{"id": "{thousand}", "cmd": "x"}}"#)) else {
        panic!("a 1,000-character id is a 422");
    };
    assert_eq!(violations[0].path, "/id");
}

#[test]
fn lists_are_bounded() {
    let many = |n: usize| vec![r#"["hostname", "UNIQUE"]"#; n].join(",");
    let fits = parse(&format!(r#"{{"id": "x", "cmd": "x", "constraints": [{}]}}"#, many(MAX_CONSTRAINTS)));
    assert_eq!(fits.constraints.len(), MAX_CONSTRAINTS);
    let AppError::Invalid(violations) =
        parse_err(&format!(r#"{{"id": "x", "cmd": "x", "constraints": [{}]}}"#, many(MAX_CONSTRAINTS + 1)))
    else {
        panic!("too many constraints is a 422");
    };
    assert_eq!(violations[0].path, "/constraints");
    let env: Vec<String> = (0..=MAX_ITEMS).map(|i| format!(r#""V{i}": "x""#)).collect();
    let error = parse_err(&format!(r#"{{"id": "x", "cmd": "x", "env": {{{}}}}}"#, env.join(",")));
    assert!(error.to_string().contains("/env: got 1001 items"), "{error}");
}

#[test]
fn error_messages_and_bodies_are_marathons() {
    let error = parse_err(r#"{"id": "x", "cmd": "x", "cpus": -1}"#);
    assert_eq!(
        error.body(),
        json!({
            "message": "Object is not valid",
            "details": [{"path": "/cpus", "errors": ["got -1.0, expected 0.0 or more"]}]
        })
    );
    let error = parse_err(r#"{"id": "x", "cmd": "x", "instances": "abc"}"#);
    assert_eq!(error.status(), 422);
    assert_eq!(
        error.body(),
        json!({
            "message": "Invalid JSON",
            "details": [{"path": "/instances", "errors": ["error.expected.jsnumber"]}]
        })
    );
    let error = parse_err(r#"{"id": "x", "cmd": "#);
    assert_eq!(error.status(), 400);
    assert_eq!(error.body()["message"], "Invalid JSON");
    assert!(error.body()["details"].as_str().is_some_and(|d| d.contains("EOF")), "{}", error.body());

    let message = |body: &str| match parse_err(body) {
        AppError::Invalid(v) => v[0].errors.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(message(r#"{"id": "x", "cmd": "x", "instances": -3}"#), ["got -3, expected 0 or more"]);
    assert_eq!(
        message(r#"{"id": "x", "cmd": "x", "upgradeStrategy": {"minimumHealthCapacity": 1.2}}"#),
        ["got 1.2, expected between 0.0 and 1.0"]
    );
    assert_eq!(
        message(r#"{"id": "x", "cmd": "x", "args": ["y"]}"#),
        ["AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'."]
    );
    assert_eq!(
        message(r#"{"id": "UPPER", "cmd": "x"}"#),
        [format!("must fully match regular expression '{ID_SEGMENT_PATTERN}'")]
    );
    assert_eq!(
        message(r#"{"id": "x", "cmd": "x", "constraints": [["rack", "LIKE", "[a-"]]}"#),
        ["'[a-' is not a valid regular expression"]
    );
    assert_eq!(
        message(r#"{"id": "x", "cmd": "x", "constraints": [["rack", "NEAR"]]}"#),
        ["Constraint operator must be one of the following UNIQUE, CLUSTER, GROUP_BY, LIKE, MAX_PER, UNLIKE or IS"]
    );
    assert_eq!(
        message(r#"{"id": "x", "cmd": "x", "healthChecks": [{"portIndex": 3}]}"#),
        ["Health check port indices must address an element of the ports array or container port mappings."]
    );
    assert_eq!(message(r#"{"id": "x", "cmd": "x", "ports": [80, 80]}"#), ["Ports must be unique."]);
    assert_eq!(message(r#"{"id": "x", "cmd": "x", "killSelection": "RANDOM"}"#), ["error.unknown.enum.literal"]);
    assert_eq!(
        invalid_body(&[Violation::new("/", "x")]),
        json!({"message": "Object is not valid", "details": [{"path": "/", "errors": ["x"]}]})
    );
}

fn base_app() -> AppDefinition {
    let mut app = parse(
        r#"{"id": "/prod/web", "cmd": "serve", "instances": 2, "ports": [0, 0], "labels": {"a": "1"},
            "healthChecks": [{"protocol": "HTTP", "portIndex": 1, "path": "/health"}]}"#,
    );
    stamp(&mut app, Timestamp::parse("2026-01-01T00:00:00.000Z").unwrap(), None);
    app
}

#[test]
fn patch_replaces_given_fields_and_keeps_the_rest() {
    let old = base_app();
    let scaled = apply_patch(&old, br#"{"instances": 5, "id": "/elsewhere", "cpus": null}"#).unwrap();
    assert_eq!(scaled.instances, 5);
    assert_eq!(scaled.id, old.id, "the URL's id wins");
    assert_eq!(scaled.cpus, old.cpus, "null means not given");
    assert_eq!(scaled.health_checks, old.health_checks);
    assert_eq!(scaled.version, old.version, "stamping is the caller's");
    assert!(is_scale_only(&old, &scaled));
    assert!(config_equal(&old, &scaled));

    let relabeled = apply_patch(&old, br#"{"labels": {"b": "2"}}"#).unwrap();
    assert_eq!(relabeled.labels.len(), 1, "a field is replaced, not merged");
    assert!(!is_scale_only(&old, &relabeled) && !config_equal(&old, &relabeled));

    let args = apply_patch(&old, br#"{"args": ["serve", "--fast"]}"#).unwrap();
    assert_eq!((args.cmd.as_deref(), args.args.as_ref().map(Vec::len)), (None, Some(2)), "args replace cmd");

    let ports =
        apply_patch(&old, br#"{"portDefinitions": [{"port": 0, "name": "http"}, {"port": 0}, {"port": 9000}]}"#)
            .unwrap();
    assert_eq!(ports.port_definitions.len(), 3);
    assert_eq!(ports.port_definitions[0].name.as_deref(), Some("http"));

    let docker = apply_patch(&old, br#"{"container": {"docker": {"image": "nginx:1.25"}}, "cmd": ""}"#).unwrap();
    assert_eq!(docker.image(), Some("nginx:1.25"));
    assert_eq!(docker.cmd, None);

    let unchanged = apply_patch(&old, b"{}").unwrap();
    assert_eq!(unchanged, old);
    assert!(!is_scale_only(&old, &unchanged), "no change is no scale");
}

#[test]
fn patch_errors_are_marathons() {
    let old = base_app();
    let invalid = apply_patch(&old, br#"{"cpus": -1, "healthChecks": [{"portIndex": 7}]}"#).unwrap_err();
    assert_eq!(invalid.status(), 422);
    let AppError::Invalid(violations) = &invalid else { panic!("{invalid:?}") };
    assert_eq!(violations.iter().map(|v| v.path.as_str()).collect::<Vec<_>>(), ["/cpus", "/healthChecks(0)"]);
    assert_eq!(apply_patch(&old, b"{\"cpus\": ").unwrap_err().status(), 400);
    assert_eq!(apply_patch(&old, b"[]").unwrap_err().status(), 422);
    let mixed = apply_patch(&old, br#"{"version": "2026-01-01T00:00:00.000Z", "cpus": 2}"#).unwrap_err();
    assert_eq!(
        mixed.body(),
        json!({
            "message": "Object is not valid",
            "details": [{"path": "/", "errors": ["The 'version' field may only be combined with the 'id' field."]}]
        })
    );
}

#[test]
fn a_version_alone_is_a_rollback() {
    let old = base_app();
    let body = br#"{"id": "/prod/web", "version": "2025-12-31T23:59:59.999Z"}"#;
    assert_eq!(rollback_version(body).unwrap(), Some(Timestamp::parse("2025-12-31T23:59:59.999Z").unwrap()));
    assert_eq!(apply_patch(&old, body).unwrap(), old, "the caller performs rollbacks");
    assert_eq!(rollback_version(br#"{"instances": 3}"#).unwrap(), None);
    assert_eq!(rollback_version(br#"{"version": "soon"}"#).unwrap_err().status(), 422);
    assert_eq!(rollback_version(br#"{"version": "2025-12-31T23:59:59.999Z", "cmd": "x"}"#).unwrap_err().status(), 422);
}

#[test]
fn stamping_tracks_scaling_and_config_changes() {
    let t0 = Timestamp::parse("2026-11-25T10:41:21.874Z").unwrap();
    let mut created = parse(SEED_2014);
    stamp(&mut created, t0, None);
    assert_eq!(created.version, Some(t0));
    assert_eq!(created.version_info, Some(VersionInfo { last_scaling_at: t0, last_config_change_at: t0 }));
    let written = created.to_json();
    assert_eq!(written["version"], "2026-11-25T10:41:21.874Z");
    assert_eq!(
        written["versionInfo"],
        json!({
            "lastScalingAt": "2026-11-25T10:41:21.874Z", "lastConfigChangeAt": "2026-11-25T10:41:21.874Z"
        })
    );
    assert_round_trips(&created);

    let t1 = t0.plus_millis(60_000);
    let mut scaled = apply_patch(&created, br#"{"instances": 4}"#).unwrap();
    stamp(&mut scaled, t1, Some(&created));
    assert_eq!(scaled.version_info, Some(VersionInfo { last_scaling_at: t1, last_config_change_at: t0 }));

    let t2 = t1.plus_millis(60_000);
    let mut changed = apply_patch(&scaled, br#"{"mem": 1024}"#).unwrap();
    stamp(&mut changed, t2, Some(&scaled));
    assert_eq!(changed.version_info, Some(VersionInfo { last_scaling_at: t2, last_config_change_at: t2 }));

    let mut skewed = changed.clone();
    stamp(&mut skewed, t0, Some(&changed));
    assert_eq!(skewed.version, Some(t2.plus_millis(1)), "versions only grow");
}

#[test]
fn placement_reads_constraints_from_the_app() {
    let app = parse(r#"{"id": "x", "cmd": "x", "constraints": [["hostname", "UNIQUE"], ["rack", "MAX_PER", "1"]]}"#);
    let attrs = |rack: &str| vec![("rack".to_owned(), rack.to_owned())];
    let (r1, r2) = (attrs("r1"), attrs("r2"));
    let a = AgentView { hostname: "a", attributes: &r1 };
    let b = AgentView { hostname: "b", attributes: &r1 };
    let c = AgentView { hostname: "c", attributes: &r2 };
    assert_eq!(first_unsatisfied(&app.constraints, &a, &[a]).map(ToString::to_string), Some("hostname:UNIQUE".into()));
    assert_eq!(first_unsatisfied(&app.constraints, &b, &[a]).map(ToString::to_string), Some("rack:MAX_PER:1".into()));
    assert_eq!(first_unsatisfied(&app.constraints, &c, &[a]), None);
}

#[test]
fn stored_form_survives_storage_even_when_invalid_bits_are_absent() {
    // The stored form is the written JSON; reading it needs no validation, only decoding.
    let stored: Value = serde_json::to_value(base_app()).unwrap();
    let read: AppDefinition = serde_json::from_value(stored.clone()).unwrap();
    assert_eq!(serde_json::to_value(&read).unwrap(), stored);
    let broken = json!({"id": "/x", "cpus": "lots"});
    let error = serde_json::from_value::<AppDefinition>(broken).unwrap_err().to_string();
    assert!(error.contains("/cpus: error.expected.jsnumber"), "{error}");
}

#[test]
fn networks_follow_marathons_rules() {
    let named = parse(r#"{"id": "n", "cmd": "x", "networks": [{"mode": "container", "name": "dev"}]}"#);
    assert!(!named.is_host_networked());
    let legacy = parse(r#"{"id": "n", "cmd": "x", "ipAddress": {"networkName": "dev"}}"#);
    assert!(!legacy.is_host_networked(), "Marathon 1.4's ipAddress is IP-per-task");
    for (body, path) in [
        (r#"{"id": "n", "cmd": "x", "networks": [{"mode": "host"}, {"mode": "container", "name": "a"}]}"#, "/networks"),
        (r#"{"id": "n", "cmd": "x", "networks": [{"mode": "container"}]}"#, "/networks(0)"),
        (r#"{"id": "n", "cmd": "x", "networks": [{"mode": "host", "name": "a"}]}"#, "/networks(0)"),
        (
            r#"{"id": "n", "cmd": "x", "networks": [{"mode": "container", "name": "a"}, {"mode": "container", "name": "a"}]}"#,
            "/networks(1)",
        ),
    ] {
        let AppError::Invalid(violations) = parse_err(body) else { panic!("{body}: a violation") };
        assert!(violations.iter().any(|v| v.path == path), "{body}: {violations:?}");
    }
}
