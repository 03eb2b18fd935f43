//! The fetch cache: one file per URI (named by the URI's SHA-256), least recently used
//! evicted past a size bound, kept across agent restarts (its index is rebuilt from the
//! directory, oldest modification first).
//!
//! Tasks that fetch the same cached URI at once download it once: a per-key lock is held
//! from the lookup until the file is open. An open file outlives its eviction, so a task
//! reading a cached copy is never cut short by another's download.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// What a download in progress is called until it completes.
const PARTIAL: &str = "partial";

pub struct FetchCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// One lock per key being fetched, so one task downloads and the others wait for it.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Cached>,
    total: u64,
    /// A logical clock for recency.
    clock: u64,
}

struct Cached {
    size: u64,
    used: u64,
}

/// Holds a key's fetch lock; released on drop.
pub struct KeyGuard<'a> {
    cache: &'a FetchCache,
    key: String,
    held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut fetching = self.cache.fetching.lock().expect("fetch locks");
        // The map's and this guard's: nobody else waits for this key (a waiter clones it
        // under the map's lock, held here).
        if Arc::strong_count(tokio::sync::OwnedMutexGuard::mutex(&self.held)) <= 2 {
            fetching.remove(&self.key);
        }
    }
}

impl FetchCache {
    /// Opens (making it if needed) the cache at `dir`; unfinished downloads are removed.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let metadata = entry.metadata()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !metadata.is_file() || path.extension().is_some_and(|ext| ext == PARTIAL) || !is_key(&name) {
                tracing::debug!(path = %path.display(), "removing a stray file from the fetch cache");
                let _ = if metadata.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                continue;
            }
            found.push((metadata.modified().ok(), name, metadata.len()));
        }
        found.sort();
        let mut index = Index::default();
        for (_, key, size) in found {
            index.clock += 1;
            index.total += size;
            index.entries.insert(key, Cached { size, used: index.clock });
        }
        let cache = FetchCache { dir: dir.to_owned(), max_bytes, index: Mutex::new(index), fetching: Mutex::default() };
        cache.evict(None);
        Ok(cache)
    }

    /// The cache key of `uri`.
    pub fn key(uri: &str) -> String {
        Sha256::digest(uri.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Waits until no other task fetches `key`, and keeps others from doing so until the
    /// guard drops.
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = self.fetching.lock().expect("fetch locks").entry(key.to_owned()).or_default().clone();
        let held = lock.lock_owned().await;
        KeyGuard { cache: self, key: key.to_owned(), held }
    }

    /// The cached copy of `key`, opened, if there is one (it becomes the most recently used).
    pub fn get(&self, key: &str) -> Option<File> {
        let mut index = self.index.lock().expect("cache index");
        index.clock += 1;
        let clock = index.clock;
        let entry = index.entries.get_mut(key)?;
        entry.used = clock;
        match File::open(self.dir.join(key)) {
            Ok(file) => Some(file),
            Err(error) => {
                // Removed behind the agent's back: forget it, fetch again.
                tracing::warn!(key, %error, "a cached download is gone");
                let size = entry.size;
                index.entries.remove(key);
                index.total -= size;
                None
            }
        }
    }

    /// Where a download of `key` is written before [`FetchCache::insert`].
    pub fn partial_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{PARTIAL}"))
    }

    /// Where downloads that are not cached are written while they are placed.
    pub fn scratch_path(&self) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(format!("scratch-{}-{n}.{PARTIAL}", std::process::id()))
    }

    /// Makes the download at [`FetchCache::partial_path`] the cached copy of `key`, opens it,
    /// and evicts the least recently used others past the bound (this one too, once open,
    /// when it alone is past it).
    pub fn insert(&self, key: &str) -> io::Result<File> {
        let path = self.dir.join(key);
        fs::rename(self.partial_path(key), &path)?;
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        {
            let mut index = self.index.lock().expect("cache index");
            index.clock += 1;
            let used = index.clock;
            if let Some(old) = index.entries.insert(key.to_owned(), Cached { size, used }) {
                index.total -= old.size;
            }
            index.total += size;
        }
        self.evict(Some(key));
        Ok(file)
    }

    /// The bytes the cache holds.
    pub fn size(&self) -> u64 {
        self.index.lock().expect("cache index").total
    }

    /// Removes least recently used entries until the cache fits; `newest` goes last.
    fn evict(&self, newest: Option<&str>) {
        let mut index = self.index.lock().expect("cache index");
        while index.total > self.max_bytes {
            let victim = index
                .entries
                .iter()
                .filter(|(key, _)| Some(key.as_str()) != newest)
                .min_by_key(|(_, entry)| entry.used)
                .map(|(key, _)| key.clone())
                .or_else(|| newest.map(str::to_owned));
            let Some(victim) = victim else { break };
            let Some(entry) = index.entries.remove(&victim) else { break };
            index.total -= entry.size;
            if let Err(error) = fs::remove_file(self.dir.join(&victim)) {
                tracing::warn!(key = %victim, %error, "cannot evict a cached download");
            }
        }
    }
}

fn is_key(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|byte| byte.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use futures::FutureExt;

    use super::*;

    fn put(cache: &FetchCache, uri: &str, bytes: usize) -> String {
        let key = FetchCache::key(uri);
        fs::write(cache.partial_path(&key), vec![b'x'; bytes]).unwrap();
        cache.insert(&key).unwrap();
        key
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_bound_holds() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FetchCache::open(dir.path(), 300).unwrap();
        let a = put(&cache, "http://a", 100);
        let b = put(&cache, "http://b", 100);
        let c = put(&cache, "http://c", 100);
        assert!(cache.get(&a).is_some(), "a is used again");
        let d = put(&cache, "http://d", 100);
        assert!(cache.get(&b).is_none(), "b was the least recently used");
        for key in [&a, &c, &d] {
            assert!(cache.get(key).is_some());
        }
        assert_eq!(cache.size(), 300);

        // One larger than the bound is served once, then not kept.
        let key = FetchCache::key("http://huge");
        fs::write(cache.partial_path(&key), vec![b'y'; 1000]).unwrap();
        let mut file = cache.insert(&key).unwrap();
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        assert_eq!(content.len(), 1000, "the open copy outlives its eviction");
        assert!(cache.get(&key).is_none());
        assert!(cache.size() <= 300);
    }

    #[test]
    fn the_cache_survives_a_restart_without_partial_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let key = {
            let cache = FetchCache::open(dir.path(), 1000).unwrap();
            let key = put(&cache, "http://kept", 10);
            fs::write(cache.partial_path(&FetchCache::key("http://cut")), b"half").unwrap();
            key
        };
        let cache = FetchCache::open(dir.path(), 1000).unwrap();
        assert!(cache.get(&key).is_some());
        assert_eq!(cache.size(), 10);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "the partial download is gone");
    }

    #[tokio::test]
    async fn one_fetch_per_key_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FetchCache::open(dir.path(), 1000).unwrap();
        let guard = cache.lock("k").await;
        assert!(cache.lock("k").now_or_never().is_none(), "a second fetch of the key waits");
        assert!(cache.lock("other").now_or_never().is_some(), "another key does not");
        drop(guard);
        drop(cache.lock("k").await);
        assert!(cache.fetching.lock().unwrap().get("k").is_none(), "no lock left behind");
    }
}
