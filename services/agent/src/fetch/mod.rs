//! Mesos' fetcher: a task's `fetch` URIs are downloaded into its sandbox before it starts.
//!
//! `http`, `https` (the host's CA bundle and `fetcher.ca_file`) and `file` (only under
//! `fetcher.file_roots`) URIs; each download bounded in time and size. An archive (by its
//! name: tar, tar.gz/tgz, tar.bz2/tbz2, tar.xz/txz, zip) asked to be extracted is unpacked
//! into the sandbox (never outside it: see [`extract`]); anything else is copied under its
//! name (`outputFile`, or the URI's last segment), executable if asked. A `cache` URI is kept
//! in the agent's cache and served from it next time. The first URI that fails fails the
//! task, with a message naming it.

mod cache;
mod extract;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use marina_daemon::error_chain;
use marina_proto::agent::v1::FetchUri;
use tokio::io::AsyncWriteExt;

pub use cache::FetchCache;
pub use extract::{ArchiveKind, ExtractError, Sandbox};

use crate::config::FetcherConfig;

/// Where hosts keep their CA bundle (Debian's and Alpine's; Red Hat's), read for `https`.
const SYSTEM_CA_BUNDLES: [&str; 2] = ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

/// The fetcher could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum FetcherSetupError {
    #[error("fetcher.cache_dir {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fetcher.ca_file {path}: {why}")]
    CaFile { path: PathBuf, why: String },
    #[error("the fetcher's HTTP client: {0}")]
    Client(String),
}

/// Why one URI could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("only http, https and file URIs are fetched")]
    Scheme,
    #[error("the URI names no file; give it an outputFile")]
    NoName,
    #[error("{0}")]
    Request(String),
    #[error("the server answered {0}")]
    Status(reqwest::StatusCode),
    #[error("took longer than {0} s (fetcher.timeout_seconds)")]
    Timeout(u64),
    #[error("larger than {limit} bytes (fetcher.max_download_mb)")]
    TooLarge { limit: u64 },
    #[error("file URIs may only name files under fetcher.file_roots ({roots})")]
    FileNotAllowed { roots: String },
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Place(#[from] ExtractError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A task's fetch failed at `uri`.
#[derive(Debug, thiserror::Error)]
#[error("fetching {uri}: {error}")]
pub struct UriFailed {
    pub uri: String,
    #[source]
    pub error: FetchError,
}

pub struct Fetcher {
    /// Built at the first `http`/`https` fetch: the CA bundles it parses take about 90 KB
    /// that an agent which never downloads anything (most, and every hollow agent of the
    /// placement benchmark) would hold for nothing.
    client: tokio::sync::OnceCell<reqwest::Client>,
    connect_timeout: Duration,
    ca_file: Option<PathBuf>,
    cache: FetchCache,
    timeout: Duration,
    max_download: u64,
    max_extracted: u64,
    /// A `file` URI's canonical path must be under one's canonical path, resolved at each
    /// fetch (a root may be made, or moved behind a link, after the agent starts).
    file_roots: Vec<PathBuf>,
    downloads: AtomicU64,
    cache_hits: AtomicU64,
}

impl Fetcher {
    /// `work_dir`: the default cache's parent.
    pub fn new(config: &FetcherConfig, work_dir: &Path) -> Result<Fetcher, FetcherSetupError> {
        let cache_dir = config.cache_dir.clone().unwrap_or_else(|| work_dir.join("fetch-cache"));
        let megabytes = |mb: u64| mb.saturating_mul(1024 * 1024);
        let cache = FetchCache::open(&cache_dir, megabytes(config.cache_max_mb))
            .map_err(|source| FetcherSetupError::Cache { path: cache_dir.clone(), source })?;
        // A bad `ca_file` is a configuration error, said at startup, though the client that
        // uses it is built later.
        if let Some(path) = &config.ca_file {
            read_certificates(path).map_err(|why| FetcherSetupError::CaFile { path: path.clone(), why })?;
        }
        Ok(Fetcher {
            client: tokio::sync::OnceCell::new(),
            connect_timeout: Duration::from_secs(config.timeout_seconds.min(30)),
            ca_file: config.ca_file.clone(),
            cache,
            timeout: Duration::from_secs(config.timeout_seconds),
            max_download: megabytes(config.max_download_mb),
            max_extracted: megabytes(config.max_extracted_mb),
            file_roots: config.file_roots.clone(),
            downloads: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
        })
    }

    /// Downloads started (cache misses and uncached URIs).
    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    /// The bytes the cache holds.
    pub fn cache_size(&self) -> u64 {
        self.cache.size()
    }

    /// URIs served from the cache.
    pub fn cache_hits(&self) -> u64 {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// Fetches every URI into `sandbox`, in order, then hands what was placed there to
    /// `owner` (uid, gid) if given.
    pub async fn fetch_all(
        &self,
        uris: &[FetchUri],
        sandbox: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<(), UriFailed> {
        for fetch in uris {
            self.fetch(fetch, sandbox).await.map_err(|error| UriFailed { uri: fetch.uri.clone(), error })?;
            tracing::info!(uri = %fetch.uri, sandbox = %sandbox.display(), "fetched");
        }
        if let Some((uid, gid)) = owner {
            let sandbox = sandbox.to_owned();
            let handed = tokio::task::spawn_blocking(move || hand_over(&sandbox, uid, gid)).await;
            if let Err(error) = handed.unwrap_or_else(|join| Err(std::io::Error::other(join.to_string()))) {
                let uri = uris.last().map(|fetch| fetch.uri.clone()).unwrap_or_default();
                return Err(UriFailed { uri, error: FetchError::Io(error) });
            }
        }
        Ok(())
    }

    async fn fetch(&self, fetch: &FetchUri, sandbox: &Path) -> Result<(), FetchError> {
        let name = output_name(fetch)?;
        let source = if fetch.cache {
            let key = FetchCache::key(&fetch.uri);
            let _fetching = self.cache.lock(&key).await;
            match self.cache.get(&key) {
                Some(file) => {
                    self.cache_hits.fetch_add(1, Ordering::Relaxed);
                    file
                }
                None => {
                    self.download(&fetch.uri, &self.cache.partial_path(&key)).await?;
                    self.cache.insert(&key)?
                }
            }
        } else {
            let scratch = self.cache.scratch_path();
            let downloaded = self.download(&fetch.uri, &scratch).await;
            let opened = downloaded.and_then(|()| File::open(&scratch).map_err(FetchError::from));
            let _ = std::fs::remove_file(&scratch);
            opened?
        };
        let sandbox = sandbox.to_owned();
        let archive = fetch.extract.then(|| ArchiveKind::of(&name)).flatten();
        let (executable, limit) = (fetch.executable, self.max_extracted);
        let placed = tokio::task::spawn_blocking(move || {
            let mut target = Sandbox::new(&sandbox, limit);
            match archive {
                Some(kind) => target.unpack(source, kind),
                None => target.write_file(&name, &mut std::io::BufReader::new(source), executable),
            }
        });
        placed.await.map_err(|join| FetchError::Io(std::io::Error::other(join.to_string())))??;
        Ok(())
    }

    /// Downloads `uri` to `destination`, within the time and size bounds; nothing is left
    /// at `destination` when it fails.
    async fn download(&self, uri: &str, destination: &Path) -> Result<(), FetchError> {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        let scheme = uri.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase()).unwrap_or_default();
        let download = async {
            match scheme.as_str() {
                "http" | "https" => self.download_http(uri, destination).await,
                "file" => self.copy_file(uri, destination).await,
                _ => Err(FetchError::Scheme),
            }
        };
        let result = match tokio::time::timeout(self.timeout, download).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(self.timeout.as_secs())),
        };
        if result.is_err() {
            let _ = tokio::fs::remove_file(destination).await;
        }
        result
    }

    /// The HTTP client, built by the first download (and tried again by the next if that
    /// failed).
    async fn client(&self) -> Result<&reqwest::Client, FetchError> {
        self.client
            .get_or_try_init(|| async { self.build_client() })
            .await
            .map_err(|error| FetchError::Request(error.to_string()))
    }

    fn build_client(&self) -> Result<reqwest::Client, FetcherSetupError> {
        let mut client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .redirect(reqwest::redirect::Policy::limited(10))
            .user_agent(concat!("marina-agent/", env!("CARGO_PKG_VERSION")));
        let bundles = SYSTEM_CA_BUNDLES.iter().map(PathBuf::from).filter(|path| path.exists());
        for (path, required) in bundles.map(|path| (path, false)).chain(self.ca_file.clone().map(|path| (path, true))) {
            match read_certificates(&path) {
                Ok(certificates) => {
                    for certificate in certificates {
                        client = client.add_root_certificate(certificate);
                    }
                }
                Err(why) if required => return Err(FetcherSetupError::CaFile { path, why }),
                Err(why) => tracing::warn!(path = %path.display(), %why, "cannot read the host's CA bundle"),
            }
        }
        client.build().map_err(|error| FetcherSetupError::Client(error_chain(&error)))
    }

    async fn download_http(&self, uri: &str, destination: &Path) -> Result<(), FetchError> {
        let request = |error: reqwest::Error| FetchError::Request(error_chain(&error));
        let mut response = self.client().await?.get(uri).send().await.map_err(request)?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let limit = self.max_download;
        if response.content_length().is_some_and(|length| length > limit) {
            return Err(FetchError::TooLarge { limit });
        }
        let mut file = tokio::fs::File::create(destination).await?;
        let mut written: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(request)? {
            written += chunk.len() as u64;
            if written > limit {
                return Err(FetchError::TooLarge { limit });
            }
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(())
    }

    async fn copy_file(&self, uri: &str, destination: &Path) -> Result<(), FetchError> {
        let path = file_uri_path(uri).ok_or(FetchError::Scheme)?;
        let shown = path.display().to_string();
        let file_error = |source| FetchError::File { path: shown.clone(), source };
        let resolved = tokio::fs::canonicalize(&path).await.map_err(file_error)?;
        let roots: Vec<PathBuf> =
            self.file_roots.iter().map(|root| std::fs::canonicalize(root).unwrap_or_else(|_| root.clone())).collect();
        if !roots.iter().any(|root| resolved.starts_with(root)) {
            let shown: Vec<String> = roots.iter().map(|root| root.display().to_string()).collect();
            let roots = if shown.is_empty() { "none configured".to_owned() } else { shown.join(", ") };
            return Err(FetchError::FileNotAllowed { roots });
        }
        let metadata = tokio::fs::metadata(&resolved).await.map_err(file_error)?;
        if !metadata.is_file() {
            return Err(file_error(std::io::Error::other("not a regular file")));
        }
        if metadata.len() > self.max_download {
            return Err(FetchError::TooLarge { limit: self.max_download });
        }
        tokio::fs::copy(&resolved, destination).await.map_err(file_error)?;
        Ok(())
    }
}

/// The name a fetched file gets in the sandbox: its `outputFile`, else the URI's last path
/// segment (percent-decoded, without query or fragment).
fn output_name(fetch: &FetchUri) -> Result<String, FetchError> {
    if !fetch.output_file.is_empty() {
        return Ok(fetch.output_file.clone());
    }
    let rest = fetch.uri.split_once("://").map_or(fetch.uri.as_str(), |(_, rest)| rest);
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    // `host/dir/file`: no segment after the host names no file.
    let segment = path.split_once('/').map(|(_, path)| path.rsplit('/').next().unwrap_or_default()).unwrap_or("");
    let name = percent_decode(segment);
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(FetchError::NoName);
    }
    Ok(name)
}

/// The local path a `file://` URI names (`file:///p` or `file://localhost/p`).
fn file_uri_path(uri: &str) -> Option<PathBuf> {
    let (scheme, rest) = uri.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("file") {
        return None;
    }
    let path = match rest.strip_prefix("localhost") {
        Some(path) if path.starts_with('/') => path,
        _ if rest.starts_with('/') => rest,
        _ => return None,
    };
    Some(PathBuf::from(percent_decode(path)))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|byte| char::from(*byte).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                decoded.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn read_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|error| error.to_string())?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| error_chain(&error))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certificates)
}

/// Gives everything in `sandbox` (not following links) to `uid`:`gid`, so a task running as
/// them can change what was fetched for it.
fn hand_over(sandbox: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let owner = (Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
    let mut pending = vec![sandbox.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &path,
                owner.0,
                owner.1,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(std::io::Error::from)?;
            if entry.file_type()?.is_dir() {
                pending.push(path);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(uri: &str) -> FetchUri {
        FetchUri { uri: uri.into(), ..Default::default() }
    }

    #[test]
    fn fetched_files_are_named_by_their_uri_or_output_file() {
        assert_eq!(output_name(&uri("https://example.com/a/b/app.tar.gz?sig=1#x")).unwrap(), "app.tar.gz");
        assert_eq!(output_name(&uri("http://example.com/my%20tool")).unwrap(), "my tool");
        assert_eq!(output_name(&uri("file:///srv/artifacts/run.sh")).unwrap(), "run.sh");
        assert!(matches!(output_name(&uri("http://example.com/")), Err(FetchError::NoName)));
        assert!(matches!(output_name(&uri("http://example.com")), Err(FetchError::NoName)));
        assert!(matches!(output_name(&uri("http://example.com/%2E%2E")), Err(FetchError::NoName)));
        assert!(matches!(output_name(&uri("http://example.com/a%2Fb")), Err(FetchError::NoName)));
        let named = FetchUri { output_file: "bin/tool".into(), ..uri("http://example.com/") };
        assert_eq!(output_name(&named).unwrap(), "bin/tool");
    }

    #[test]
    fn a_bad_ca_file_is_refused_at_startup_though_the_client_is_built_later() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "no certificate here").unwrap();
        for path in [dir.path().join("missing.pem"), not_pem] {
            let config = FetcherConfig { ca_file: Some(path.clone()), ..FetcherConfig::default() };
            match Fetcher::new(&config, dir.path()) {
                Err(FetcherSetupError::CaFile { path: named, .. }) => assert_eq!(named, path),
                Err(other) => panic!("{}: {other}", path.display()),
                Ok(_) => panic!("{}: accepted", path.display()),
            }
        }
        let fetcher = Fetcher::new(&FetcherConfig::default(), dir.path()).unwrap();
        assert!(fetcher.client.get().is_none(), "no HTTP client before the first download");
    }

    #[test]
    fn file_uris_name_local_paths() {
        assert_eq!(file_uri_path("file:///srv/a%20b"), Some(PathBuf::from("/srv/a b")));
        assert_eq!(file_uri_path("FILE://localhost/srv/x"), Some(PathBuf::from("/srv/x")));
        assert_eq!(file_uri_path("file://otherhost/srv/x"), None);
        assert_eq!(file_uri_path("http://example.com/x"), None);
    }

    #[tokio::test]
    async fn file_uris_are_confined_to_the_file_roots() {
        let work = tempfile::tempdir().unwrap();
        let artifacts = tempfile::tempdir().unwrap();
        std::fs::write(artifacts.path().join("run.sh"), "#!/bin/sh\necho ok\n").unwrap();
        let sandbox = tempfile::tempdir().unwrap();
        let config = FetcherConfig { file_roots: vec![artifacts.path().to_owned()], ..FetcherConfig::default() };
        let fetcher = Fetcher::new(&config, work.path()).unwrap();
        let inside =
            FetchUri { executable: true, ..uri(&format!("file://{}", artifacts.path().join("run.sh").display())) };
        fetcher.fetch_all(&[inside], sandbox.path(), None).await.unwrap();
        let copy = std::fs::metadata(sandbox.path().join("run.sh")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&copy.permissions()) & 0o111, 0o111);

        for outside in ["file:///etc/passwd", &format!("file://{}/../../etc/passwd", artifacts.path().display())] {
            let error = fetcher.fetch_all(&[uri(outside)], sandbox.path(), None).await.unwrap_err();
            assert!(matches!(error.error, FetchError::FileNotAllowed { .. }), "{outside}: {error}");
            assert!(error.to_string().starts_with(&format!("fetching {outside}: ")), "{error}");
        }
        assert!(!sandbox.path().join("passwd").exists());
        let scratch: Vec<_> = std::fs::read_dir(work.path().join("fetch-cache")).unwrap().collect();
        assert!(scratch.is_empty(), "no download is left behind: {scratch:?}");
    }
}
