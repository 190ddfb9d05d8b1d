//! In-process store on a sorted map; expiry is checked on access (and swept on writes).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{KvError, KvStore, check_ttl};

/// An in-process [`KvStore`]; clones share the same data.
///
/// Time comes from `tokio::time`, so tests may pause and advance it.
#[derive(Clone, Debug, Default)]
pub struct MemoryKv {
    entries: Arc<Mutex<Entries>>,
}

#[derive(Debug, Default)]
struct Entries {
    map: BTreeMap<String, Entry>,
    writes: u64,
}

#[derive(Debug)]
struct Entry {
    value: Bytes,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// Every this many writes the map is swept of expired entries, bounding memory held by keys
/// nobody reads again.
const SWEEP_EVERY: u64 = 1024;

impl MemoryKv {
    /// Returns an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts and
        // removes), so a poisoned lock is still consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Entries {
    fn live(&self, key: &str, now: Instant) -> Option<&Entry> {
        self.map.get(key).filter(|e| e.live(now))
    }

    fn put(&mut self, key: &str, value: Bytes, ttl: Option<Duration>, now: Instant) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            self.map.retain(|_, e| e.live(now));
        }
        let expires = ttl.map(|ttl| now + ttl);
        self.map.insert(key.to_owned(), Entry { value, expires });
    }

    fn remove(&mut self, key: &str, now: Instant) -> bool {
        self.map.remove(key).is_some_and(|e| e.live(now))
    }
}

#[async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        let now = Instant::now();
        Ok(self.lock().live(key, now).map(|e| e.value.clone()))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), KvError> {
        let ttl = check_ttl(ttl)?;
        self.lock().put(key, value, ttl, Instant::now());
        Ok(())
    }

    async fn set_nx(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        let ttl = check_ttl(ttl)?;
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.live(key, now).is_some() {
            return Ok(false);
        }
        entries.put(key, value, ttl, now);
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.lock().remove(key, Instant::now()))
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, KvError> {
        let now = Instant::now();
        let entries = self.lock();
        Ok(entries
            .map
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| e.live(now))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect())
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        let ttl = check_ttl(ttl)?;
        let now = Instant::now();
        let mut entries = self.lock();
        let current = entries.live(key, now).map(|e| e.value.as_ref());
        if current != expected {
            return Ok(false);
        }
        match new {
            Some(value) => entries.put(key, value, ttl, now),
            None => {
                entries.remove(key, now);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_on_the_tokio_clock() {
        let kv = MemoryKv::new();
        let value = Bytes::from_static(b"v");
        kv.set("k", value.clone(), Some(Duration::from_secs(10)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(kv.get("k").await.unwrap(), Some(value.clone()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(kv.get("k").await.unwrap(), None);
        // Deleting an expired key reports that nothing live was there.
        assert!(!kv.delete("k").await.unwrap());
        // CAS treats an expired key as absent.
        kv.set("c", value.clone(), Some(Duration::from_secs(1)))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            kv.compare_and_swap("c", None, Some(value), None)
                .await
                .unwrap()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn writes_sweep_expired_entries() {
        let kv = MemoryKv::new();
        for i in 0..10 {
            kv.set(
                &format!("old:{i}"),
                Bytes::new(),
                Some(Duration::from_secs(1)),
            )
            .await
            .unwrap();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        for i in 0..SWEEP_EVERY {
            kv.set(&format!("new:{i}"), Bytes::new(), None)
                .await
                .unwrap();
        }
        let entries = kv.lock();
        assert!(entries.map.keys().all(|k| !k.starts_with("old:")));
    }
}
