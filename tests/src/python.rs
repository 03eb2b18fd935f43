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
