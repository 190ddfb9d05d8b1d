//! The key-value store: byte values with optional TTL, prefix scans and compare-and-swap.
//!
//! Layout: [`KvStore`] is the trait services code against; [`MemoryKv`] (one process) and
//! [`RedisKv`] implement it with the same semantics, checked by one shared test suite.
//! Keys are plain strings; services prefix them with their own name (`auth:user:alice`).

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use self::memory::MemoryKv;
pub use self::redis::RedisKv;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// Redis refused or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A TTL of zero would delete the key at once; use `delete` for that.
    #[error("ttl must be at least one millisecond")]
    ZeroTtl,
}

/// A key-value store with TTLs and atomic compare-and-swap.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Returns the value of `key`, or `None` when absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError>;

    /// Sets `key` to `value`, expiring after `ttl` (never when `None`); replaces any previous TTL.
    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), KvError>;

    /// Sets `key` only if it is absent; returns whether it was set.
    async fn set_nx(&self, key: &str, value: Bytes, ttl: Option<Duration>)
    -> Result<bool, KvError>;

    /// Deletes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, KvError>;

    /// Returns every live key starting with `prefix` and its value, sorted by key.
    ///
    /// On Redis this walks the whole keyspace with `SCAN`: fine for small sets such as node and
    /// registry listings, not for hot paths. Not a snapshot: keys written during the scan may or
    /// may not be included.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Bytes)>, KvError>;

    /// Atomically replaces `expected` (None = absent) with `new` (None = delete), with `ttl` for
    /// the new value. Returns false, changing nothing, when the current value differs.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError>;
}

/// Rejects zero TTLs so that both backends agree (Redis refuses `PX 0`).
fn check_ttl(ttl: Option<Duration>) -> Result<Option<Duration>, KvError> {
    match ttl {
        Some(ttl) if ttl.as_millis() == 0 => Err(KvError::ZeroTtl),
        other => Ok(other),
    }
}
