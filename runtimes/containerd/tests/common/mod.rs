//! What every containerd test shares: the test image as an archive imported into containerd,
//! a runtime connected to the machine's real containerd, a unique agent id per test, and a
//! guard that deletes whatever the test created — containers, tasks, snapshots — even when
//! the test fails.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::snapshots::{ListSnapshotsRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    DeleteImageRequest, DeleteNamespaceRequest, DeleteRequest as DeleteLeaseRequest, ListImagesRequest,
    ListRequest as ListLeasesRequest,
};
use containerd_client::tonic::Request;
use containerd_client::with_namespace;
use futures::StreamExt;
use marina_runtime::conformance::Fixture;
use marina_runtime::{LABEL_AGENT_ID, Runtime};
use marina_runtime_containerd::{ContainerdConfig, ContainerdRuntime};

pub const IMAGE: &str = "marina-test/busybox:latest";

/// The crate's folder: the repository's scripts are two levels up.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// `docker save` of the test image, built if needed and cached under target/ by image id
/// (written to a temporary name and renamed, so concurrent test processes never read half
/// an archive).
pub fn test_image_archive() -> PathBuf {
    run(&mut Command::new(repo_root().join("scripts/build-test-images")));
    let id = run(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", IMAGE]));
    let id = id.trim_start_matches("sha256:");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("containerd-images");
    std::fs::create_dir_all(&dir).expect("creating the archive cache");
    let archive = dir.join(format!("busybox-{}.tar", &id[..16]));
    if !archive.exists() {
        let partial = dir.join(format!("busybox-{}.tar.{}", &id[..16], std::process::id()));
        run(Command::new("docker").arg("save").arg(IMAGE).arg("-o").arg(&partial));
        std::fs::rename(&partial, &archive).expect("moving the archive into place");
        // Archives of earlier builds of the image are of no more use.
        for stale in std::fs::read_dir(&dir).expect("the archive cache").flatten() {
            let name = stale.file_name().to_string_lossy().into_owned();
            if name.starts_with("busybox-") && name.ends_with(".tar") && stale.path() != archive {
                let _ = std::fs::remove_file(stale.path());
            }
        }
    }
    archive
}

/// An id no other test (in this or another process, this run or an earlier one) uses.
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
    format!("ct-{name}-{}-{:x}", std::process::id(), nanos % 0xffff_ffff)
}

pub fn config(namespace: &str) -> ContainerdConfig {
    ContainerdConfig { namespace: namespace.to_owned(), ..ContainerdConfig::default() }
}

/// One test's world: a runtime with the test image imported, a sandbox root, an agent id,
/// and the cleanup guard (dropped last).
pub struct TestEnv {
    pub runtime: Arc<ContainerdRuntime>,
    pub agent_id: String,
    pub sandbox_root: tempfile::TempDir,
    pub guard: CleanupGuard,
}

impl TestEnv {
    pub async fn new(name: &str) -> TestEnv {
        TestEnv::in_namespace(name, "marina", false).await
    }

    /// With `private`, the namespace is the test's own: emptied before (a killed earlier run
    /// may have left it) and deleted after, images and all. Private namespaces have fixed
    /// names: containerd and runc leave an empty state folder and parent cgroup per
    /// namespace behind, which unique names would pile up.
    pub async fn in_namespace(name: &str, namespace: &str, private: bool) -> TestEnv {
        let agent_id = unique(name);
        let config = config(namespace);
        if private {
            cleanup(&config, &agent_id, true).await.expect("emptying the test's namespace");
        }
        let guard = CleanupGuard { config: config.clone(), agent_id: agent_id.clone(), delete_namespace: private };
        let runtime = ContainerdRuntime::connect(&config).await.expect("containerd answers on this machine");
        let archive = tokio::task::spawn_blocking(test_image_archive).await.unwrap();
        let names = runtime.import_image(&archive).await.expect("importing the test image");
        assert!(names.contains(&format!("docker.io/{IMAGE}")), "{names:?}");
        let sandbox_root = tempfile::tempdir().expect("sandbox root");
        TestEnv { runtime: Arc::new(runtime), agent_id, sandbox_root, guard }
    }

    pub fn fixture(&self) -> Fixture {
        Fixture {
            runtime: self.runtime.clone(),
            sandbox_root: self.sandbox_root.path().to_path_buf(),
            image: Some(IMAGE.to_owned()),
            agent_id: self.agent_id.clone(),
        }
    }
}

/// Removes, on drop, every container (with its task and snapshot) labelled with the test's
/// agent id and every snapshot keyed by it; for a private namespace also its images, leases
/// and the namespace. Runs on a thread of its own with its own tokio runtime, because drop
/// cannot await and may run while the test's runtime unwinds.
pub struct CleanupGuard {
    config: ContainerdConfig,
    agent_id: String,
    delete_namespace: bool,
}

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        let config = self.config.clone();
        let agent_id = self.agent_id.clone();
        let delete_namespace = self.delete_namespace;
        let cleaned = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("cleanup runtime");
            runtime.block_on(async move {
                tokio::time::timeout(Duration::from_secs(120), cleanup(&config, &agent_id, delete_namespace)).await
            })
        })
        .join();
        match cleaned {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => eprintln!("cleanup of {}: {error}", self.agent_id),
            Ok(Err(_)) => eprintln!("cleanup of {} timed out", self.agent_id),
            Err(_) => eprintln!("cleanup of {} panicked", self.agent_id),
        }
    }
}

async fn cleanup(config: &ContainerdConfig, agent_id: &str, delete_namespace: bool) -> Result<(), String> {
    let runtime = ContainerdRuntime::connect(config).await.map_err(|e| e.to_string())?;
    let labels = [(LABEL_AGENT_ID.to_owned(), agent_id.to_owned())].into();
    let filter = if delete_namespace { Default::default() } else { labels };
    for task in runtime.list(&filter).await.map_err(|e| e.to_string())? {
        runtime.remove(&task.handle).await.map_err(|e| e.to_string())?;
    }
    let client = containerd_client::Client::from_path(runtime.socket()).await.map_err(|e| e.to_string())?;
    let ns = config.namespace.as_str();
    // Snapshots of starts that failed half-way (their key is the container id).
    let request = ListSnapshotsRequest { snapshotter: config.snapshotter.clone(), filters: vec![] };
    let mut snapshots =
        client.snapshots().list(with_namespace!(request, ns)).await.map_err(|e| e.to_string())?.into_inner();
    let mut keys = Vec::new();
    while let Some(page) = snapshots.next().await {
        keys.extend(page.map_err(|e| e.to_string())?.info.into_iter().map(|info| info.name));
    }
    for key in keys.into_iter().filter(|key| key.starts_with(agent_id)) {
        let request = RemoveSnapshotRequest { snapshotter: config.snapshotter.clone(), key };
        let _ = client.snapshots().remove(with_namespace!(request, ns)).await;
    }
    if delete_namespace {
        delete_namespace_contents(&client, ns).await?;
        let request = DeleteNamespaceRequest { name: ns.to_owned() };
        match client.namespaces().delete(Request::new(request)).await {
            Ok(_) => {}
            Err(status) if status.code() == containerd_client::tonic::Code::NotFound => {}
            Err(status) => return Err(format!("namespace delete: {status}")),
        }
    }
    Ok(())
}

/// Deletes every image and lease of a namespace, collecting garbage synchronously so that
/// its blobs and snapshots go too.
pub async fn delete_namespace_contents(client: &containerd_client::Client, ns: &str) -> Result<(), String> {
    let images = client.images().list(with_namespace!(ListImagesRequest { filters: vec![] }, ns)).await;
    for image in images.map_err(|e| e.to_string())?.into_inner().images {
        let request = DeleteImageRequest { name: image.name, sync: true, target: None };
        client.images().delete(with_namespace!(request, ns)).await.map_err(|e| e.to_string())?;
    }
    let leases = client.leases().list(with_namespace!(ListLeasesRequest { filters: vec![] }, ns)).await;
    for lease in leases.map_err(|e| e.to_string())?.into_inner().leases {
        let request = DeleteLeaseRequest { id: lease.id, sync: true };
        client.leases().delete(with_namespace!(request, ns)).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
