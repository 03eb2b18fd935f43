//! Reading image archives — what `docker save` writes (a `manifest.json` naming each image's
//! config and layer tars, with or without an OCI layout beside it) or a plain OCI image
//! layout (`index.json` + `blobs/`) — into a plan of blobs to store and images to name.
//!
//! The archive is indexed once (entry name → offset and size) and blobs are then streamed
//! from their offsets, so a large image is never held in memory. The archive must be an
//! uncompressed tar, which is what `docker save` and `ctr images export` write.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use marina_runtime::RuntimeError;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::images::{
    Descriptor, GC_REF_CONFIG, ImageIndex, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX, MEDIA_OCI_LAYER, MEDIA_OCI_LAYER_GZIP, MEDIA_OCI_LAYER_ZSTD, MEDIA_OCI_MANIFEST, Manifest,
    gc_ref_layer, gc_ref_manifest, normalize_reference,
};

/// Where a blob's bytes come from.
pub(crate) enum BlobSource {
    /// An entry of the archive.
    Entry(String),
    /// Bytes made during planning (the manifests of `docker save`'s legacy format).
    Bytes(Vec<u8>),
}

/// One blob to put in the content store.
pub(crate) struct PlannedBlob {
    pub digest: String,
    pub size: i64,
    pub source: BlobSource,
    /// The garbage-collection references from this blob to the blobs it names.
    pub labels: HashMap<String, String>,
}

/// What importing an archive does: store `blobs` (children before the blobs naming them),
/// then point each image name at its target.
pub(crate) struct ImportPlan {
    pub blobs: Vec<PlannedBlob>,
    pub images: Vec<(String, Descriptor)>,
}

/// An indexed image archive.
pub(crate) struct Archive {
    path: PathBuf,
    /// Regular files: normalized entry name → (data offset, size).
    files: HashMap<String, (u64, u64)>,
    /// Symbolic and hard links: normalized entry name → normalized target name.
    links: HashMap<String, String>,
}

fn invalid(path: &Path, message: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::InvalidSpec(format!("image archive {}: {message}", path.display()))
}

/// `a/./b/../c` → `a/c`, without a leading `/` or `./`.
fn normalize_name(name: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    parts.join("/")
}

impl Archive {
    /// Indexes the archive's entries (blocking: call from `spawn_blocking`).
    pub fn open(path: &Path) -> Result<Archive, RuntimeError> {
        let mut file = File::open(path).map_err(|e| invalid(path, format!("cannot open: {e}")))?;
        let mut magic = [0u8; 4];
        let read = file.read(&mut magic).map_err(|e| invalid(path, e))?;
        if read >= 2 && magic[..2] == [0x1f, 0x8b] || read == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            return Err(invalid(path, "is compressed; import the uncompressed tar `docker save` writes"));
        }
        file.seek(SeekFrom::Start(0)).map_err(|e| invalid(path, e))?;
        let mut archive = tar::Archive::new(file);
        let mut files = HashMap::new();
        let mut links = HashMap::new();
        for entry in archive.entries_with_seek().map_err(|e| invalid(path, format!("not a tar archive: {e}")))? {
            let entry = entry.map_err(|e| invalid(path, format!("reading an entry: {e}")))?;
            let name_path = entry.path().map_err(|e| invalid(path, e))?.into_owned();
            let name = normalize_name(&name_path);
            let kind = entry.header().entry_type();
            if kind.is_file() {
                files.insert(name, (entry.raw_file_position(), entry.size()));
            } else if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry.link_name().map_err(|e| invalid(path, e))? else { continue };
                // Symbolic links are relative to the link's folder, hard links to the root.
                let target = if kind.is_symlink() {
                    normalize_name(&name_path.parent().unwrap_or(Path::new("")).join(target))
                } else {
                    normalize_name(&target)
                };
                links.insert(name, target);
            }
        }
        Ok(Archive { path: path.to_path_buf(), files, links })
    }

    /// The offset and size of a regular file, following links.
    fn locate(&self, name: &str) -> Result<(u64, u64), RuntimeError> {
        let mut name = normalize_name(Path::new(name));
        for _ in 0..16 {
            if let Some(found) = self.files.get(&name) {
                return Ok(*found);
            }
            match self.links.get(&name) {
                Some(target) => name = target.clone(),
                None => break,
            }
        }
        Err(invalid(&self.path, format!("has no file {name}")))
    }

    fn contains(&self, name: &str) -> bool {
        self.locate(name).is_ok()
    }

    /// A blocking reader of one file of the archive.
    fn open_entry(&self, name: &str) -> Result<(std::io::Take<File>, u64), RuntimeError> {
        let (offset, size) = self.locate(name)?;
        let mut file = File::open(&self.path).map_err(|e| invalid(&self.path, e))?;
        file.seek(SeekFrom::Start(offset)).map_err(|e| invalid(&self.path, e))?;
        Ok((file.take(size), size))
    }

    /// A small file of the archive, whole (JSON documents).
    fn read_small(&self, name: &str) -> Result<Vec<u8>, RuntimeError> {
        let (mut reader, size) = self.open_entry(name)?;
        if size > crate::content::MAX_METADATA_BLOB as u64 {
            return Err(invalid(&self.path, format!("{name} is implausibly large ({size} bytes)")));
        }
        let mut data = Vec::with_capacity(size as usize);
        reader.read_to_end(&mut data).map_err(|e| invalid(&self.path, e))?;
        Ok(data)
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, RuntimeError> {
        serde_json::from_slice(&self.read_small(name)?).map_err(|e| invalid(&self.path, format!("{name}: {e}")))
    }

    /// The sha256 digest and size of a file, and the media type its first bytes show.
    fn digest_layer(&self, name: &str) -> Result<(String, i64, &'static str), RuntimeError> {
        let (mut reader, size) = self.open_entry(name)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 16];
        let mut head = Vec::new();
        loop {
            let read = reader.read(&mut buffer).map_err(|e| invalid(&self.path, e))?;
            if read == 0 {
                break;
            }
            if head.len() < 4 {
                head.extend_from_slice(&buffer[..read.min(4 - head.len())]);
            }
            hasher.update(&buffer[..read]);
        }
        let media_type = if head.starts_with(&[0x1f, 0x8b]) {
            MEDIA_OCI_LAYER_GZIP
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            MEDIA_OCI_LAYER_ZSTD
        } else {
            MEDIA_OCI_LAYER
        };
        Ok((format!("sha256:{:x}", hasher.finalize()), size as i64, media_type))
    }

    /// An async reader of one file, for streaming it into containerd.
    pub async fn reader(&self, name: &str) -> Result<tokio::io::Take<tokio::fs::File>, RuntimeError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let (offset, size) = self.locate(name)?;
        let mut file = tokio::fs::File::open(&self.path).await.map_err(|e| invalid(&self.path, e))?;
        file.seek(SeekFrom::Start(offset)).await.map_err(|e| invalid(&self.path, e))?;
        Ok(file.take(size))
    }

    /// Works out what to store and name (blocking: call from `spawn_blocking`).
    pub fn plan(&self) -> Result<ImportPlan, RuntimeError> {
        if self.contains("manifest.json") {
            self.plan_docker()
        } else if self.contains("index.json") {
            self.plan_oci()
        } else {
            Err(invalid(&self.path, "has neither manifest.json (docker save) nor index.json (OCI layout)"))
        }
    }

    /// `docker save`'s format: each image as a config file and layer tars. Manifests are made
    /// here (OCI, deterministic, so re-importing yields the same digests).
    fn plan_docker(&self) -> Result<ImportPlan, RuntimeError> {
        let entries: Vec<DockerSaveEntry> = self.read_json("manifest.json")?;
        let mut plan = ImportPlan { blobs: Vec::new(), images: Vec::new() };
        for entry in entries {
            let config = self.read_small(&entry.config)?;
            let config_digest = format!("sha256:{:x}", Sha256::digest(&config));
            let parsed: crate::images::ImageConfigFile =
                serde_json::from_slice(&config).map_err(|e| invalid(&self.path, format!("{}: {e}", entry.config)))?;
            if parsed.rootfs.diff_ids.len() != entry.layers.len() {
                return Err(invalid(
                    &self.path,
                    format!(
                        "{} lists {} layers but its config {} diff ids",
                        entry.config,
                        entry.layers.len(),
                        parsed.rootfs.diff_ids.len()
                    ),
                ));
            }
            let mut layers = Vec::new();
            for layer in &entry.layers {
                let (digest, size, media_type) = self.digest_layer(layer)?;
                layers.push(Descriptor::new(media_type, &digest, size));
                plan.blobs.push(PlannedBlob {
                    digest,
                    size,
                    source: BlobSource::Entry(layer.clone()),
                    labels: HashMap::new(),
                });
            }
            let config_descriptor = Descriptor::new(MEDIA_OCI_CONFIG, &config_digest, config.len() as i64);
            plan.blobs.push(PlannedBlob {
                digest: config_digest,
                size: config.len() as i64,
                source: BlobSource::Bytes(config),
                labels: HashMap::new(),
            });
            let manifest = Manifest {
                schema_version: 2,
                media_type: Some(MEDIA_OCI_MANIFEST.to_owned()),
                config: config_descriptor,
                layers,
            };
            let labels = manifest_gc_labels(&manifest);
            let bytes = serde_json::to_vec(&manifest).map_err(|e| invalid(&self.path, e))?;
            let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
            let target = Descriptor::new(MEDIA_OCI_MANIFEST, &digest, bytes.len() as i64);
            plan.blobs.push(PlannedBlob { digest, size: bytes.len() as i64, source: BlobSource::Bytes(bytes), labels });
            for tag in entry.repo_tags.unwrap_or_default() {
                plan.images.push((normalize_reference(&tag), target.clone()));
            }
        }
        if plan.images.is_empty() {
            return Err(invalid(&self.path, "names no image (RepoTags are empty); save the image by name"));
        }
        Ok(plan)
    }

    /// An OCI image layout: blobs stored as they are, named from `index.json`'s annotations.
    fn plan_oci(&self) -> Result<ImportPlan, RuntimeError> {
        let index: ImageIndex = self.read_json("index.json")?;
        let mut plan = ImportPlan { blobs: Vec::new(), images: Vec::new() };
        let mut planned = BTreeMap::new();
        for descriptor in &index.manifests {
            self.plan_oci_tree(descriptor, &mut plan.blobs, &mut planned)?;
            let annotations = descriptor.annotations.as_ref();
            let name = annotations
                .and_then(|a| a.get("io.containerd.image.name"))
                .or_else(|| annotations.and_then(|a| a.get("org.opencontainers.image.ref.name")))
                // A bare tag (`latest`) names no repository.
                .filter(|name| name.contains('/') || name.contains(':'));
            if let Some(name) = name {
                plan.images.push((normalize_reference(name), descriptor.clone()));
            }
        }
        if plan.images.is_empty() {
            return Err(invalid(
                &self.path,
                "names no image: annotate index.json's manifests with io.containerd.image.name \
                 or a full org.opencontainers.image.ref.name",
            ));
        }
        Ok(plan)
    }

    /// Plans `descriptor`'s blob and, for indexes and manifests, everything they refer to.
    fn plan_oci_tree(
        &self,
        descriptor: &Descriptor,
        blobs: &mut Vec<PlannedBlob>,
        planned: &mut BTreeMap<String, ()>,
    ) -> Result<(), RuntimeError> {
        if planned.contains_key(&descriptor.digest) {
            return Ok(());
        }
        let entry = blob_path(&descriptor.digest)
            .ok_or_else(|| invalid(&self.path, format!("bad digest {}", descriptor.digest)))?;
        let mut labels = HashMap::new();
        match descriptor.media_type.as_str() {
            MEDIA_OCI_INDEX | MEDIA_DOCKER_MANIFEST_LIST => {
                let index: ImageIndex = self.read_json(&entry)?;
                for (i, child) in index.manifests.iter().enumerate() {
                    // Manifests of other platforms are often left out of an archive.
                    if self.contains(&blob_path(&child.digest).unwrap_or_default()) {
                        self.plan_oci_tree(child, blobs, planned)?;
                        labels.insert(gc_ref_manifest(i), child.digest.clone());
                    }
                }
            }
            MEDIA_OCI_MANIFEST | MEDIA_DOCKER_MANIFEST => {
                let manifest: Manifest = self.read_json(&entry)?;
                for child in std::iter::once(&manifest.config).chain(&manifest.layers) {
                    self.plan_oci_tree(child, blobs, planned)?;
                }
                labels = manifest_gc_labels(&manifest);
            }
            _ => {}
        }
        blobs.push(PlannedBlob {
            digest: descriptor.digest.clone(),
            size: descriptor.size,
            source: BlobSource::Entry(entry),
            labels,
        });
        planned.insert(descriptor.digest.clone(), ());
        Ok(())
    }
}

/// Where an OCI layout keeps the blob `algorithm:hex`.
fn blob_path(digest: &str) -> Option<String> {
    let (algorithm, hex) = digest.split_once(':')?;
    let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c));
    (valid(algorithm) && valid(hex)).then(|| format!("blobs/{algorithm}/{hex}"))
}

/// The labels that make a manifest keep its config and layers alive.
fn manifest_gc_labels(manifest: &Manifest) -> HashMap<String, String> {
    let mut labels = HashMap::from([(GC_REF_CONFIG.to_owned(), manifest.config.digest.clone())]);
    for (i, layer) in manifest.layers.iter().enumerate() {
        labels.insert(gc_ref_layer(i), layer.digest.clone());
    }
    labels
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_cannot_climb_out() {
        assert_eq!(normalize_name(Path::new("./manifest.json")), "manifest.json");
        assert_eq!(normalize_name(Path::new("abc/../blobs/sha256/x")), "blobs/sha256/x");
        assert_eq!(normalize_name(Path::new("/../../etc/passwd")), "etc/passwd");
    }

    #[test]
    fn blob_paths_refuse_odd_digests() {
        assert_eq!(blob_path("sha256:abc").as_deref(), Some("blobs/sha256/abc"));
        assert_eq!(blob_path("sha256:../../x"), None);
        assert_eq!(blob_path("nodigest"), None);
    }
}
