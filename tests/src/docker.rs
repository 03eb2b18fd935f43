//! Cleanup of Docker containers a test's agents started (matched by a label value).

/// Force-removes, when dropped, every container whose `label` equals `value`.
pub struct DockerCleanup {
    pub label: String,
    pub value: String,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let filter = format!("label={}={}", self.label, self.value);
        let Ok(output) = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&output.stdout).split_whitespace().map(str::to_owned).collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
        }
    }
}

/// Builds the locally made test images (idempotent; fast when they exist).
pub fn ensure_test_images() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-images");
    let status = std::process::Command::new(script).status().expect("running build-test-images");
    assert!(status.success(), "build-test-images failed");
}
