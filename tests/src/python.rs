//! The Python interpreter of `scripts/python-env` (third-party clients for tests).

use std::path::PathBuf;
use std::sync::OnceLock;

pub fn interpreter() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/python-env");
            let output = std::process::Command::new(script).output().expect("running scripts/python-env");
            assert!(output.status.success(), "scripts/python-env failed: {}", String::from_utf8_lossy(&output.stderr));
            PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
        })
        .clone()
}

/// Runs `tests/python/marathon_client.py` (Marathon's own Python client driving a whole app
/// journey) against the gateway at `url`, logging in with `credentials` (`user:password`)
/// if given; asserts it succeeded and printed each of `steps`.
pub async fn run_marathon_client(url: &str, credentials: Option<&str>, steps: &[&str]) {
    let mut args = vec![url];
    args.extend(credentials);
    run_script("marathon_client.py", &args, steps).await;
}

/// Runs `tests/python/<script>` with `args`; asserts it succeeded and printed each of
/// `steps`.
pub async fn run_script(script: &str, args: &[&str], steps: &[&str]) {
    let path = format!("{}/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(interpreter())
        .arg(&path)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|error| panic!("running {script}: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for step in steps {
        assert!(stdout.contains(step), "missing step {step:?} in:\n{stdout}");
    }
}
