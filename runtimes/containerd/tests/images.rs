//! Images without a registry, against the real containerd: importing `docker save` and OCI
//! layout archives, idempotence, name normalization, garbage collection (what an import
//! leaves is kept, and all of it goes with the image), and connecting.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{IMAGE, TestEnv, unique};
use containerd_client::services::v1::snapshots::ListSnapshotsRequest;
use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteImageRequest, DeleteRequest as DeleteLeaseRequest, ListContentRequest,
};
use containerd_client::tonic::Request;
use containerd_client::with_namespace;
use futures::StreamExt;
use marina_runtime::conformance::eventually;
use marina_runtime::{Runtime, RuntimeError, TaskHandle};
use marina_runtime_containerd::{ContainerdConfig, ContainerdRuntime, DOCKER_MANAGED_SOCKET, SYSTEM_SOCKET};
use sha2::{Digest, Sha256};

async fn client(runtime: &ContainerdRuntime) -> containerd_client::Client {
    containerd_client::Client::from_path(runtime.socket()).await.expect("a raw containerd client")
}

/// Runs containerd's garbage collector to completion (a synchronous lease delete does).
async fn collect_garbage(client: &containerd_client::Client, ns: &str) {
    let id = unique("gc-trigger");
    let create = CreateLeaseRequest { id: id.clone(), labels: HashMap::new() };
    client.leases().create(with_namespace!(create, ns)).await.expect("lease create");
    client.leases().delete(with_namespace!(DeleteLeaseRequest { id, sync: true }, ns)).await.expect("lease delete");
}

/// (blobs in the content store, snapshots) of a namespace.
async fn stored(client: &containerd_client::Client, ns: &str, snapshotter: &str) -> (usize, usize) {
    let mut blobs = 0;
    let mut content =
        client.content().list(with_namespace!(ListContentRequest { filters: vec![] }, ns)).await.unwrap().into_inner();
    while let Some(page) = content.next().await {
        blobs += page.expect("content list").info.len();
    }
    let mut snapshots = 0;
    let request = ListSnapshotsRequest { snapshotter: snapshotter.to_owned(), filters: vec![] };
    let mut listed = client.snapshots().list(with_namespace!(request, ns)).await.unwrap().into_inner();
    while let Some(page) = listed.next().await {
        snapshots += page.expect("snapshot list").info.len();
    }
    (blobs, snapshots)
}

/// Starts a task from `image` that prints and exits, and checks it did.
async fn run_once(env: &TestEnv, name: &str, image: &str) {
    let mut spec = env.fixture().spec(name, "echo ran");
    spec.image = Some(image.to_owned());
    env.runtime.ensure_image(image, false).await.expect("ensure_image");
    let handle: TaskHandle = env.runtime.start(&spec).await.expect("start");
    let status =
        tokio::time::timeout(Duration::from_secs(60), env.runtime.wait(&handle)).await.expect("exits").expect("wait");
    assert_eq!(status.code, Some(0), "{status:?}");
    env.runtime.remove(&handle).await.expect("remove");
    assert_eq!(std::fs::read_to_string(spec.sandbox.join("stdout")).unwrap(), "ran\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_is_idempotent_and_short_and_full_names_resolve() {
    let env = TestEnv::new("import").await;
    let socket = env.runtime.socket();
    assert!(socket == Path::new(SYSTEM_SOCKET) || socket == Path::new(DOCKER_MANAGED_SOCKET), "{}", socket.display());
    assert!(!env.runtime.version().is_empty());
    let archive = tokio::task::spawn_blocking(common::test_image_archive).await.unwrap();
    for _ in 0..2 {
        let names = env.runtime.import_image(&archive).await.expect("import again");
        assert_eq!(names, [format!("docker.io/{IMAGE}")]);
    }
    for name in [IMAGE, "docker.io/marina-test/busybox:latest", "marina-test/busybox"] {
        env.runtime.ensure_image(name, false).await.unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // force_pull pulls, as Docker does: with no registry reachable that fails, saying why.
    match env.runtime.ensure_image(IMAGE, true).await {
        Err(RuntimeError::ImageUnavailable { reason, .. }) => {
            assert!(reason.contains("pulling docker.io/marina-test/busybox:latest failed"), "{reason}")
        }
        other => panic!("expected a failed pull, got {other:?}"),
    }
    match env.runtime.ensure_image("marina-test/busybox:other-tag", false).await {
        Err(RuntimeError::ImageUnavailable { image, reason }) => {
            assert_eq!(image, "marina-test/busybox:other-tag");
            assert!(
                reason.contains("docker.io/marina-test/busybox:other-tag") && reason.contains("import"),
                "{reason}"
            );
        }
        other => panic!("expected ImageUnavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_keeps_imports_and_reimport_after_collection_works() {
    let ns = "marina-test-gc".to_owned();
    let env = TestEnv::in_namespace("gc", &ns, true).await;
    let snapshotter = env.runtime.config().snapshotter.clone();
    let client = client(&env.runtime).await;

    // Once the import's lease is gone, only the labels keep what it stored.
    collect_garbage(&client, &ns).await;
    assert_eq!(stored(&client, &ns, &snapshotter).await, (3, 1), "manifest, config, layer; one snapshot");
    run_once(&env, "gc-before", IMAGE).await;

    // Deleting the image lets the collector take everything: nothing else pins it.
    let delete = DeleteImageRequest { name: format!("docker.io/{IMAGE}"), sync: true, target: None };
    client.images().delete(with_namespace!(delete, ns.as_str())).await.expect("image delete");
    eventually(Duration::from_secs(30), "the collector removes the image's blobs and snapshots", || async {
        collect_garbage(&client, &ns).await;
        (stored(&client, &ns, &snapshotter).await == (0, 0)).then_some(())
    })
    .await;
    assert!(matches!(env.runtime.ensure_image(IMAGE, false).await, Err(RuntimeError::ImageUnavailable { .. })));

    let archive = tokio::task::spawn_blocking(common::test_image_archive).await.unwrap();
    env.runtime.import_image(&archive).await.expect("re-import");
    collect_garbage(&client, &ns).await;
    assert_eq!(stored(&client, &ns, &snapshotter).await, (3, 1));
    run_once(&env, "gc-after", IMAGE).await;
}

/// Rewrites the `docker save` archive as an OCI image layout whose `index.json` names a
/// nested index with one linux/<arch> manifest.
fn oci_layout_archive(docker_archive: &Path, out: &Path, name: &str) {
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(docker_archive).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config = files[manifest[0]["Config"].as_str().unwrap()].clone();
    let layer = files[manifest[0]["Layers"][0].as_str().unwrap()].clone();
    let digest = |data: &[u8]| format!("sha256:{:x}", Sha256::digest(data));
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let image_manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(&layer), "size": layer.len()}],
    }))
    .unwrap();
    let nested_index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&image_manifest),
                       "size": image_manifest.len(), "platform": {"os": "linux", "architecture": arch}}],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest(&nested_index),
                       "size": nested_index.len(), "annotations": {"io.containerd.image.name": name}}],
    }))
    .unwrap();

    let mut builder = tar::Builder::new(std::fs::File::create(out).unwrap());
    let mut add = |path: String, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, data).unwrap();
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), &index);
    for blob in [&config, &layer, &image_manifest, &nested_index] {
        add(format!("blobs/sha256/{}", digest(blob).trim_start_matches("sha256:")), blob);
    }
    builder.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_layout_archive_imports_and_runs() {
    let ns = "marina-test-oci".to_owned();
    let env = TestEnv::in_namespace("oci", &ns, true).await;
    let docker_archive = tokio::task::spawn_blocking(common::test_image_archive).await.unwrap();
    let out = env.sandbox_root.path().join("oci.tar");
    oci_layout_archive(&docker_archive, &out, "docker.io/marina-test/oci:v1");
    for _ in 0..2 {
        let names = env.runtime.import_image(&out).await.expect("import the OCI layout");
        assert_eq!(names, ["docker.io/marina-test/oci:v1"]);
    }
    run_once(&env, "oci", "marina-test/oci:v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_that_are_not_images_are_refused_clearly() {
    let env = TestEnv::new("bad-archive").await;
    let dir = env.sandbox_root.path();
    let cases: [(&str, &[u8], &str); 3] = [
        ("garbage.tar", b"this is not a tar archive at all", "garbage.tar"),
        ("compressed.tar.gz", &[0x1f, 0x8b, 0x08, 0x00, 0x00], "compressed"),
        ("missing.tar", b"", "missing.tar"),
    ];
    for (file, content, needle) in cases {
        let path = dir.join(file);
        if !content.is_empty() {
            std::fs::write(&path, content).unwrap();
        }
        match env.runtime.import_image(&path).await {
            Err(RuntimeError::InvalidSpec(message)) => assert!(message.contains(needle), "{file}: {message}"),
            other => panic!("{file}: expected InvalidSpec, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_no_containerd_names_the_sockets_tried() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("containerd.sock");
    // A socket file nobody listens on.
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    for socket in [&missing, &dead] {
        let config = ContainerdConfig { socket: Some(socket.clone()), discover: false, ..ContainerdConfig::default() };
        let started = Instant::now();
        match ContainerdRuntime::connect(&config).await {
            Err(RuntimeError::Backend { message, .. }) => {
                assert!(message.contains(&socket.display().to_string()), "{message}")
            }
            Err(other) => panic!("expected a backend error, got {other}"),
            Ok(_) => panic!("connected to {}", socket.display()),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }
}

/// A registry on the loopback serving the test image (`registry.py`), stopped on drop.
struct Registry {
    process: std::process::Child,
    port: u16,
}

impl Registry {
    fn start(archive: &Path) -> Registry {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/registry.py");
        let mut process = std::process::Command::new("python3")
            .arg(script)
            .arg(archive)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the test registry");
        let mut line = String::new();
        std::io::BufReader::new(process.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the registry's port, not {line:?}"));
        Registry { process, port }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// With a registry answering, a missing image is pulled, unpacked and runs; with none
/// answering, the failure names the image and what went wrong, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_pulled_when_a_registry_answers() {
    let env = TestEnv::new("pull").await;
    let archive = tokio::task::spawn_blocking(common::test_image_archive).await.unwrap();
    let registry = Registry::start(&archive);
    let tag = unique("pulled");
    let reference = format!("127.0.0.1:{}/marina-test/pulled:{tag}", registry.port);
    env.runtime.ensure_image(&reference, false).await.expect("pulled from the registry");
    run_once(&env, "pulled", &reference).await;
    // The pulled name is the test's own: delete it, so runs do not pile images up.
    let client = client(&env.runtime).await;
    let delete = DeleteImageRequest { name: reference.clone(), sync: false, target: None };
    client.images().delete(with_namespace!(delete, "marina")).await.expect("image delete");
    drop(registry);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let nowhere = format!("{closed}/marina-test/nowhere:1");
    let started = Instant::now();
    match env.runtime.ensure_image(&nowhere, false).await {
        Err(RuntimeError::ImageUnavailable { image, reason }) => {
            assert_eq!(image, nowhere);
            assert!(reason.contains(&format!("pulling {nowhere} failed")), "{reason}");
        }
        other => panic!("expected ImageUnavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(30), "no registry: a quick failure, not a hang");
}
