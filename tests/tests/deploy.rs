//! The example configurations in `deploy/config` are valid for their services.

use std::process::Command;

use marina_tests::binaries::binary;

#[test]
fn example_configs_load() {
    for service in ["coord", "master", "agent", "gateway"] {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config/").to_owned() + service + ".toml";
        let output = Command::new(binary(&format!("marina-{service}")))
            .args(["--config", &file, "--print-config"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{service}: {}", String::from_utf8_lossy(&output.stderr));
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(printed.contains("listen = \"0.0.0.0:"), "{service}:\n{printed}");
        // Beyond loopback, on mutual TLS: no --insecure needed.
        assert!(
            printed.contains("[tls]") && printed.contains("ca = \"/etc/marina/tls/ca.pem\""),
            "{service}:\n{printed}"
        );
    }
}

/// The tracing overlay merges onto the compose deployment: every Marina service sends its
/// spans to the collector, and keeps the rest of its environment.
#[test]
fn the_tracing_overlay_points_every_service_at_the_collector() {
    let compose = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/compose/");
    let output = Command::new("docker-compose")
        .args(["-f", &format!("{compose}docker-compose.yml"), "-f", &format!("{compose}tracing.yml"), "config"])
        .env("MARINA_HTTP_CREDENTIALS", "ops:secret")
        .output()
        .expect("docker-compose runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let merged = String::from_utf8_lossy(&output.stdout);
    let traced = merged.matches("OTEL_EXPORTER_OTLP_ENDPOINT: http://127.0.0.1:4317").count();
    assert_eq!(traced, 9, "every coord, master, agent and gateway is traced:\n{merged}");
    assert_eq!(merged.matches("MARINA_COORD_PEERS:").count(), 3, "the base environment is kept:\n{merged}");
    for service in ["otel-collector:", "jaeger:"] {
        assert!(merged.contains(service), "{service} missing:\n{merged}");
    }
}
