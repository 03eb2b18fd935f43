//! The workspace's binaries, for tests that run them as processes. They are built once per
//! test process (a no-op when up to date), so a test never runs a stale binary.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of binary `name` (e.g. `marina-coord`), built from the current sources.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.args(["build", "--quiet", "--workspace", "--bins"]);
        if !cfg!(debug_assertions) {
            command.arg("--release");
        }
        let status = command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .map_err(|error| format!("running cargo build: {error}"))?;
        if status.success() { Ok(()) } else { Err(format!("cargo build --bins failed: {status}")) }
    });
    if let Err(error) = built {
        panic!("{error}");
    }
    let path = target_dir().join(name);
    assert!(path.is_file(), "binary {} was not built", path.display());
    path
}

/// `target/<profile>`: test executables live in its `deps/` directory, binaries (such as
/// `marina-bench`) in it directly.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    if dir.ends_with("deps") { dir.parent().expect("profile directory").to_owned() } else { dir.to_owned() }
}
