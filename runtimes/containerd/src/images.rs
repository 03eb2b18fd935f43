//! Images in containerd without a registry: importing archives (content store → image
//! records → unpacked snapshots), normalizing references the way Docker and containerd do,
//! and resolving a name to what a container needs (its config and top snapshot).
//!
//! Garbage collection: containerd collects any blob or snapshot nothing refers to. While an
//! import runs, a lease holds everything it creates; afterwards the chain
//! image record → manifest → config and layers → snapshot keeps it alive, through the
//! labels `containerd.io/gc.ref.content.*` on manifests and indexes and
//! `containerd.io/gc.ref.snapshot.<snapshotter>` on configs (what containerd's own unpacker
//! writes). Committed snapshots keep their parents.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, Kind, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{ApplyRequest, CreateImageRequest, GetImageRequest, Image, UpdateImageRequest};
use containerd_client::types;
use marina_runtime::RuntimeError;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::archive::{Archive, BlobSource, ImportPlan};
use crate::content;
use crate::rpc::{Containerd, backend_error, is_already_exists, is_not_found, rpc_error, unique_id};

pub(crate) const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub(crate) const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub(crate) const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub(crate) const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const MEDIA_DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// On a manifest: the config it needs.
pub(crate) const GC_REF_CONFIG: &str = "containerd.io/gc.ref.content.config";

/// On a manifest: its `i`th layer.
pub(crate) fn gc_ref_layer(i: usize) -> String {
    format!("containerd.io/gc.ref.content.l.{i}")
}

/// On an index: its `i`th manifest.
pub(crate) fn gc_ref_manifest(i: usize) -> String {
    format!("containerd.io/gc.ref.content.m.{i}")
}

/// On an image config: the snapshot its layers were unpacked into.
fn gc_ref_snapshot(snapshotter: &str) -> String {
    format!("containerd.io/gc.ref.snapshot.{snapshotter}")
}

/// An OCI content descriptor, as manifests and indexes spell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: &str, size: i64) -> Self {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size,
            annotations: None,
            platform: None,
        }
    }

    fn to_proto(&self) -> types::Descriptor {
        types::Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone().unwrap_or_default().into_iter().collect(),
        }
    }

    fn from_proto(descriptor: &types::Descriptor) -> Self {
        Descriptor::new(&descriptor.media_type, &descriptor.digest, descriptor.size)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest (OCI or Docker schema 2: the same fields).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An OCI index or Docker manifest list.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ImageIndex {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config a container needs.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ImageConfigFile {
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// What the image says to run, and how.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

/// An image ready to run: present in the namespace and unpacked.
pub(crate) struct ReadyImage {
    /// The name containerd stores it under.
    pub name: String,
    pub config: ContainerConfig,
    /// The snapshot of its top layer, the parent of a container's root filesystem
    /// (empty for an image without layers).
    pub chain_id: String,
}

/// Docker's normalization: `busybox` → `docker.io/library/busybox:latest`,
/// `marina-test/busybox` → `docker.io/marina-test/busybox:latest`, `host:5000/x` →
/// `host:5000/x:latest`; a digest reference gets no tag.
pub fn normalize_reference(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => (first, rest),
        _ => ("docker.io", name),
    };
    let domain = if domain == "index.docker.io" { "docker.io" } else { domain };
    let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path.to_owned() };
    let last = path.rsplit('/').next().unwrap_or_default();
    match digest {
        Some(digest) => format!("{domain}/{path}@{digest}"),
        None if last.contains(':') => format!("{domain}/{path}"),
        None => format!("{domain}/{path}:latest"),
    }
}

/// The chain ids of a stack of layers, which name their committed snapshots:
/// `chain(0) = diff(0)`, `chain(i) = sha256(chain(i-1) + " " + diff(i))`.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => format!("sha256:{:x}", Sha256::digest(format!("{parent} {diff_id}").as_bytes())),
        };
        chain.push(next);
    }
    chain
}

/// The `GOARCH` spelling of this machine's architecture, which image platforms use.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Image store operations in one namespace and snapshotter.
pub(crate) struct Images<'a> {
    pub cd: &'a Containerd,
    pub snapshotter: &'a str,
}

impl Images<'_> {
    /// Imports an archive and returns the names its images were stored under.
    pub async fn import(&self, archive: &Path) -> Result<Vec<String>, RuntimeError> {
        let path = archive.to_path_buf();
        let (archive, plan) = tokio::task::spawn_blocking(move || {
            let archive = Archive::open(&path)?;
            let plan = archive.plan()?;
            Ok::<_, RuntimeError>((archive, plan))
        })
        .await
        .map_err(|e| backend_error(format!("import: the archive reader panicked: {e}")))??;
        let lease = self.cd.lease("import").await?;
        let leased = Images { cd: lease.client(), snapshotter: self.snapshotter };
        let result = leased.import_planned(&archive, plan).await;
        lease.release().await;
        result
    }

    async fn import_planned(&self, archive: &Archive, plan: ImportPlan) -> Result<Vec<String>, RuntimeError> {
        for blob in plan.blobs {
            match blob.source {
                BlobSource::Entry(name) => {
                    let reader = archive.reader(&name).await?;
                    content::ensure(self.cd, &blob.digest, blob.size, blob.labels, reader).await?;
                }
                BlobSource::Bytes(bytes) => {
                    content::ensure(self.cd, &blob.digest, blob.size, blob.labels, bytes.as_slice()).await?;
                }
            }
        }
        // Unpack before naming, so that a name that resolves is an image ready to run.
        let mut unpacked: Vec<&Descriptor> = Vec::new();
        for (name, target) in &plan.images {
            if unpacked.contains(&target) {
                continue;
            }
            match self.manifest(target).await {
                Ok(manifest) => {
                    self.unpack(&manifest).await?;
                }
                // An archive of another platform imports, but cannot run here.
                Err(error) => tracing::warn!(image = %name, %error, "imported an image that cannot be unpacked here"),
            }
            unpacked.push(target);
        }
        let mut names = Vec::new();
        for (name, target) in &plan.images {
            self.name_image(name, target).await?;
            names.push(name.clone());
        }
        Ok(names)
    }

    /// Points `name` at `target`, creating the image record or moving it.
    async fn name_image(&self, name: &str, target: &Descriptor) -> Result<(), RuntimeError> {
        let image = Image {
            name: name.to_owned(),
            target: Some(target.to_proto()),
            labels: HashMap::new(),
            created_at: None,
            updated_at: None,
        };
        let create = CreateImageRequest { image: Some(image.clone()), source_date_epoch: None };
        match self.cd.images().create(self.cd.request(create)).await {
            Ok(_) => Ok(()),
            Err(status) if is_already_exists(&status) => {
                let update = UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["target".to_owned()] }),
                    source_date_epoch: None,
                };
                self.cd
                    .images()
                    .update(self.cd.request(update))
                    .await
                    .map_err(|s| rpc_error("image update", name, &s))?;
                Ok(())
            }
            Err(status) => Err(rpc_error("image create", name, &status)),
        }
    }

    /// The stored name and target of `reference`, trying Docker's normalization first and
    /// the reference as written second (`ctr` keeps what it is given).
    async fn lookup(&self, reference: &str) -> Result<Option<(String, Descriptor)>, RuntimeError> {
        let normalized = normalize_reference(reference);
        let mut candidates = vec![normalized.as_str()];
        if normalized != reference {
            candidates.push(reference);
        }
        for name in candidates {
            match self.cd.images().get(self.cd.request(GetImageRequest { name: name.to_owned() })).await {
                Ok(answer) => {
                    if let Some(target) = answer.into_inner().image.and_then(|image| image.target) {
                        return Ok(Some((name.to_owned(), Descriptor::from_proto(&target))));
                    }
                }
                Err(status) if is_not_found(&status) => {}
                Err(status) => return Err(rpc_error("image get", name, &status)),
            }
        }
        Ok(None)
    }

    /// The manifest for this machine's platform that `target` leads to.
    async fn manifest(&self, target: &Descriptor) -> Result<Manifest, RuntimeError> {
        let mut target = target.clone();
        // An index may name another index; a few levels are plenty.
        for _ in 0..4 {
            let bytes = content::read(self.cd, &target.digest).await?;
            match target.media_type.as_str() {
                MEDIA_OCI_INDEX | MEDIA_DOCKER_MANIFEST_LIST => {
                    let index: ImageIndex = serde_json::from_slice(&bytes)
                        .map_err(|e| backend_error(format!("index {}: {e}", target.digest)))?;
                    target = pick_platform(&index)
                        .ok_or_else(|| {
                            backend_error(format!(
                                "index {} has no manifest for linux/{}",
                                target.digest,
                                host_architecture()
                            ))
                        })?
                        .clone();
                }
                _ => {
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| backend_error(format!("manifest {}: {e}", target.digest)));
                }
            }
        }
        Err(backend_error(format!("image index nesting too deep at {}", target.digest)))
    }

    async fn config(&self, manifest: &Manifest) -> Result<ImageConfigFile, RuntimeError> {
        let bytes = content::read(self.cd, &manifest.config.digest).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| backend_error(format!("image config {}: {e}", manifest.config.digest)))
    }

    /// Whether `reference` is in the namespace (unpacked or not).
    pub async fn present(&self, reference: &str) -> Result<bool, RuntimeError> {
        Ok(self.lookup(reference).await?.is_some())
    }

    /// Makes `reference` ready to run: present in the namespace, unpacked into the
    /// snapshotter (unpacking now what was imported without it, e.g. `ctr import --no-unpack`).
    pub async fn ready(&self, reference: &str) -> Result<ReadyImage, RuntimeError> {
        let Some((name, target)) = self.lookup(reference).await? else {
            return Err(RuntimeError::ImageUnavailable {
                image: reference.to_owned(),
                reason: format!(
                    "{} is not in containerd namespace `{ns}`. Pull it from a registry, or import it: \
                     `docker save {reference} -o image.tar` then ContainerdRuntime::import_image(\"image.tar\") \
                     or `ctr -n {ns} images import image.tar`",
                    normalize_reference(reference),
                    ns = self.cd.namespace(),
                ),
            });
        };
        let unavailable = |error: RuntimeError| RuntimeError::ImageUnavailable {
            image: reference.to_owned(),
            reason: format!("{name} is in namespace `{}` but cannot be used: {error}", self.cd.namespace()),
        };
        let manifest = self.manifest(&target).await.map_err(unavailable)?;
        let (config, chain_id) = self.unpack(&manifest).await.map_err(unavailable)?;
        Ok(ReadyImage { name, config: config.config.unwrap_or_default(), chain_id })
    }

    /// Unpacks the manifest's layers into the snapshotter, layer by layer (prepare → apply
    /// the diff → commit under the chain id), skipping what is already committed. Returns
    /// the image config and the top chain id.
    async fn unpack(&self, manifest: &Manifest) -> Result<(ImageConfigFile, String), RuntimeError> {
        let config = self.config(manifest).await?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(backend_error(format!(
                "image config {} has {} diff ids for {} layers",
                manifest.config.digest,
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let chain = chain_ids(diff_ids);
        let Some(top) = chain.last().cloned() else {
            return Ok((config, String::new()));
        };
        if self.committed(&top).await? {
            // The snapshots may be another image's (shared layers, or another unpacker's):
            // make this image's config hold them too, so they outlive that image.
            self.hold_snapshot(manifest, &top).await?;
            return Ok((config, top));
        }
        let lease = self.cd.lease("unpack").await?;
        let leased = Images { cd: lease.client(), snapshotter: self.snapshotter };
        let result = leased.unpack_layers(manifest, &chain).await;
        // Keep the snapshots alive for as long as the config is (i.e. the image), before the
        // lease that holds them now goes.
        let result = match result {
            Ok(()) => self.hold_snapshot(manifest, &top).await,
            Err(error) => Err(error),
        };
        lease.release().await;
        result.map(|()| (config, top))
    }

    /// Labels the config with the snapshot it was unpacked into, unless it already is.
    async fn hold_snapshot(&self, manifest: &Manifest, top: &str) -> Result<(), RuntimeError> {
        let key = gc_ref_snapshot(self.snapshotter);
        let info = content::info(self.cd, &manifest.config.digest).await?;
        if info.is_some_and(|info| info.labels.get(&key).map(String::as_str) == Some(top)) {
            return Ok(());
        }
        content::set_labels(self.cd, &manifest.config.digest, HashMap::from([(key, top.to_owned())])).await
    }

    async fn unpack_layers(&self, manifest: &Manifest, chain: &[String]) -> Result<(), RuntimeError> {
        let mut parent = String::new();
        for (layer, chain_id) in manifest.layers.iter().zip(chain) {
            if !self.committed(chain_id).await? {
                self.unpack_layer(layer, &parent, chain_id).await?;
            }
            parent = chain_id.clone();
        }
        Ok(())
    }

    async fn unpack_layer(&self, layer: &Descriptor, parent: &str, chain_id: &str) -> Result<(), RuntimeError> {
        let key = unique_id("marina-extract");
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.to_owned(),
            key: key.clone(),
            parent: parent.to_owned(),
            labels: HashMap::new(),
        };
        let mounts = self
            .cd
            .snapshots()
            .prepare(self.cd.request(prepare))
            .await
            .map_err(|s| rpc_error("snapshot prepare", chain_id, &s))?
            .into_inner()
            .mounts;
        let result = self.apply_and_commit(layer, mounts, &key, chain_id).await;
        if result.is_err() {
            self.remove_snapshot(&key).await;
        }
        result
    }

    async fn apply_and_commit(
        &self,
        layer: &Descriptor,
        mounts: Vec<types::Mount>,
        key: &str,
        chain_id: &str,
    ) -> Result<(), RuntimeError> {
        let apply = ApplyRequest { diff: Some(layer.to_proto()), mounts, payloads: HashMap::new(), sync_fs: false };
        self.cd.diff().apply(self.cd.request(apply)).await.map_err(|s| rpc_error("diff apply", &layer.digest, &s))?;
        let commit = CommitSnapshotRequest {
            snapshotter: self.snapshotter.to_owned(),
            name: chain_id.to_owned(),
            key: key.to_owned(),
            labels: HashMap::new(),
        };
        match self.cd.snapshots().commit(self.cd.request(commit)).await {
            Ok(_) => Ok(()),
            // A concurrent unpack of the same layer won: its snapshot is as good as ours.
            Err(status) if is_already_exists(&status) => {
                self.remove_snapshot(key).await;
                Ok(())
            }
            Err(status) => Err(rpc_error("snapshot commit", chain_id, &status)),
        }
    }

    /// Whether a committed snapshot named `name` exists.
    pub async fn committed(&self, name: &str) -> Result<bool, RuntimeError> {
        let stat = StatSnapshotRequest { snapshotter: self.snapshotter.to_owned(), key: name.to_owned() };
        match self.cd.snapshots().stat(self.cd.request(stat)).await {
            Ok(answer) => Ok(answer.into_inner().info.is_some_and(|info| info.kind == Kind::Committed as i32)),
            Err(status) if is_not_found(&status) => Ok(false),
            Err(status) => Err(rpc_error("snapshot stat", name, &status)),
        }
    }

    /// Removes a snapshot; a missing one is fine, other failures are only logged (this is
    /// cleanup after another error, which is the one worth reporting).
    async fn remove_snapshot(&self, key: &str) {
        let remove = RemoveSnapshotRequest { snapshotter: self.snapshotter.to_owned(), key: key.to_owned() };
        if let Err(status) = self.cd.snapshots().remove(self.cd.request(remove)).await
            && !is_not_found(&status)
        {
            tracing::warn!(%key, error = %status.message(), "could not remove a snapshot");
        }
    }
}

/// This machine's manifest in an index; the only manifest when none says its platform.
fn pick_platform(index: &ImageIndex) -> Option<&Descriptor> {
    let arch = host_architecture();
    index
        .manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
        .or_else(|| match index.manifests.as_slice() {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("marina-test/busybox:latest", "docker.io/marina-test/busybox:latest"),
            ("marina-test/busybox", "docker.io/marina-test/busybox:latest"),
            ("docker.io/marina-test/busybox:latest", "docker.io/marina-test/busybox:latest"),
            ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost/app:v1", "localhost/app:v1"),
            ("registry.example.com/team/app:v2", "registry.example.com/team/app:v2"),
            ("busybox@sha256:abc", "docker.io/library/busybox@sha256:abc"),
        ];
        for (given, expected) in cases {
            assert_eq!(normalize_reference(given), expected, "{given}");
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = "sha256:aaaa".to_owned();
        let b = "sha256:bbbb".to_owned();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        let expected = format!("sha256:{:x}", Sha256::digest(b"sha256:aaaa sha256:bbbb"));
        assert_eq!(chain[1], expected);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn the_host_platform_is_picked_from_an_index() {
        let arch = host_architecture();
        let index: ImageIndex = serde_json::from_value(serde_json::json!({
            "manifests": [
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": "sha256:other", "size": 1,
                 "platform": {"os": "linux", "architecture": "s390x"}},
                {"mediaType": MEDIA_OCI_MANIFEST, "digest": "sha256:mine", "size": 1,
                 "platform": {"os": "linux", "architecture": arch}},
            ]
        }))
        .expect("index");
        assert_eq!(pick_platform(&index).map(|d| d.digest.as_str()), Some("sha256:mine"));
    }
}
