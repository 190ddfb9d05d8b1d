//! Picks the bus and store implementations for a service: Redis when configured, else memory.

use std::sync::Arc;

use crate::bus::{BusError, EventBus, MemoryBus, RedisBus};
use crate::kv::{KvError, KvStore, MemoryKv, RedisKv};

/// The event bus and key-value store a service runs on.
#[derive(Clone)]
pub struct Backends {
    /// The event bus.
    pub bus: Arc<dyn EventBus>,
    /// The key-value store.
    pub kv: Arc<dyn KvStore>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends").finish_non_exhaustive()
    }
}

impl Backends {
    /// Returns fresh in-memory backends (one process only).
    pub fn memory() -> Self {
        Self {
            bus: Arc::new(MemoryBus::new()),
            kv: Arc::new(MemoryKv::new()),
        }
    }
}

/// Why the backends could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The Redis event bus could not connect.
    #[error("event bus: {0}")]
    Bus(#[from] BusError),
    /// The Redis store could not connect.
    #[error("key-value store: {0}")]
    Kv(#[from] KvError),
}

/// Returns Redis backends when `redis_url` is `Some`, fresh in-memory ones otherwise.
///
/// Services in one process that must see each other's events and keys (the all-in-one stack)
/// share one [`Backends`] value instead of calling this once each with `None`.
pub async fn backends(redis_url: Option<&str>) -> Result<Backends, BackendError> {
    match redis_url {
        Some(url) => Ok(Backends {
            bus: Arc::new(RedisBus::connect(url).await?),
            kv: Arc::new(RedisKv::connect(url).await?),
        }),
        None => Ok(Backends::memory()),
    }
}
