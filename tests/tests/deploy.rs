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
    }
}
