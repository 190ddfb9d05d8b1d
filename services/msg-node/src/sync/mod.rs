//! The Syncher's server side: data objects at `domain://sync.<domain>`.
//!
//! A hyperty (the *reporter*) creates an object and is the only one that may update or delete
//! it; other hyperties (*observers*) subscribe and receive every change in version order. The
//! reporter decides who may observe: the object's [`Observers`] list names identities (token
//! subjects) or `prefix*` patterns; everyone else gets [`SyncError::NotObserver`] on read and
//! subscribe. Every call names its caller as a [`Party`]: the hyperty address and the identity
//! behind it.
//!
//! Layout: [`record`] holds the stored record, key and channel names and the change messages;
//! [`fanout`] delivers changes to this replica's observers in order. [`Syncher`] is the API the
//! router calls.
//!
//! Contracts:
//! - Objects live in the [`KvStore`] (Redis in production, so they survive a restart; memory
//!   otherwise). Every write is a compare-and-swap on the whole record, so concurrent writers on
//!   any number of replicas never lose an update: exactly one of two updates at the same version
//!   wins, the other gets [`SyncError::Conflict`] with the current version.
//! - Versions start at 1 and grow by one per update; a delete takes one more version.
//! - A change is published on the bus after it is stored; every replica's dispatcher hands it to
//!   its local streams, which deliver versions in increasing order (see [`fanout`] for how gaps
//!   and reordering are handled).
//! - Sizes are bounded: value bytes, objects per owner identity (over all its hyperties, so a
//!   fresh address does not reset the count), observers per object.
//! - Objects do not outlive their reporter: the router calls [`Syncher::delete_all_of`] when a
//!   reporter's session ends, and with [`SyncConfig::object_ttl`] set an object whose replica
//!   died expires unless [`Syncher::refresh_all_of`] keeps it.

mod fanout;
mod record;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rethink_common::bus::{BusError, EventBus};
use rethink_common::kv::{KvError, KvStore};
use serde_json::Value;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use self::fanout::ChangeStream;
use self::fanout::{Registry, lock};
use self::record::{BusChange, ObjectRecord, decode_list, object_key, observers_key, owner_key};
pub use self::record::{MAX_OBSERVER_PATTERNS, Observers, SYNC_CHANNEL};

/// Longest accepted address (reporter, observer) or schema, in bytes.
pub const MAX_NAME_LEN: usize = 512;

/// How long a tombstone outlives a delete that crashed half-way.
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// Compare-and-swap attempts before giving up on a key that keeps changing under us.
const CAS_ATTEMPTS: usize = 32;

/// Limits and names of the Syncher.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Domain of object URLs (`object://<domain>/<uuid>`) and of `domain://sync.<domain>`.
    pub domain: String,
    /// Largest object value, in bytes of JSON.
    pub max_value_bytes: usize,
    /// How many live objects one identity may own, over all its hyperties.
    pub max_objects_per_reporter: usize,
    /// How many observers one object may have: live streams per replica, and entries in the
    /// stored observer list (the oldest entry is dropped to make room).
    pub max_observers_per_object: usize,
    /// How long a stream waits for a missing version before reading the store instead.
    pub gap_timeout: Duration,
    /// Changes queued per local stream before it is marked lagged and catches up from the store.
    pub stream_capacity: usize,
    /// When set, an object not updated or refreshed ([`Syncher::refresh_all_of`]) for this long
    /// expires from the store (silently: its observers get no delete). A safety net against
    /// objects whose replica died before [`Syncher::delete_all_of`] ran; `None` keeps objects
    /// until deleted.
    pub object_ttl: Option<Duration>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            domain: "localhost".to_owned(),
            max_value_bytes: 32 * 1024,
            max_objects_per_reporter: 100,
            max_observers_per_object: 1000,
            gap_timeout: Duration::from_millis(500),
            stream_capacity: 256,
            object_ttl: None,
        }
    }
}

/// Why a sync operation failed; [`code`](SyncError::code) gives the response code.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The object does not exist (or was deleted).
    #[error("no such object")]
    NotFound,
    /// The caller is not the object's reporter.
    #[error("only the reporter of an object may update or delete it")]
    Forbidden,
    /// The caller's identity is not among the object's observers.
    #[error("this object's reporter does not allow this identity to observe it")]
    NotObserver,
    /// The update was based on an old version.
    #[error("version conflict: the object is at version {current}; read it and retry")]
    Conflict {
        /// The object's current version.
        current: u64,
    },
    /// The request itself is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// The value is larger than [`SyncConfig::max_value_bytes`].
    #[error("object value of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The value's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A per-reporter or per-object limit is reached.
    #[error("{0}")]
    LimitReached(String),
    /// The store failed.
    #[error("object store: {0}")]
    Store(#[from] KvError),
    /// The bus failed.
    #[error("event bus: {0}")]
    Bus(#[from] BusError),
    /// The store holds something that is not a valid record, or a key kept changing.
    #[error("object store: {0}")]
    Corrupt(String),
}

impl SyncError {
    /// Returns the protocol response code for this error.
    pub fn code(&self) -> u16 {
        match self {
            SyncError::NotFound => 404,
            SyncError::Forbidden | SyncError::NotObserver | SyncError::LimitReached(_) => 403,
            SyncError::Conflict { .. } => 409,
            SyncError::BadRequest(_) => 400,
            SyncError::TooLarge { .. } => 413,
            SyncError::Store(_) | SyncError::Bus(_) | SyncError::Corrupt(_) => 500,
        }
    }
}

/// Who calls: a hyperty address and the identity (token subject) behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Party<'a> {
    /// The hyperty (or runtime) address.
    pub address: &'a str,
    /// The token subject (`user:alice`, `service:conference`).
    pub identity: &'a str,
}

/// What `create` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The object URL, `object://<domain>/<uuid>`.
    pub url: String,
    /// The schema given at creation.
    pub schema: String,
    /// The reporter's address.
    pub reporter: String,
    /// The current version.
    pub version: u64,
}

/// An object's state at one version.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectSnapshot {
    /// The object URL.
    pub url: String,
    /// The schema given at creation.
    pub schema: String,
    /// The reporter's address.
    pub reporter: String,
    /// The version of `value`.
    pub version: u64,
    /// The value.
    pub value: Value,
}

/// What happened to an object.
#[derive(Clone, Debug, PartialEq)]
pub enum ChangeKind {
    /// The object's value is now this.
    Update(Value),
    /// The object is gone; nothing follows.
    Delete,
}

/// One change pushed to an observer.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectChange {
    /// The object URL.
    pub url: String,
    /// The version this change produced.
    pub version: u64,
    /// The change.
    pub kind: ChangeKind,
}

/// The Syncher. Cheap to clone; clones share the store, the bus and the local observers.
#[derive(Clone, Debug)]
pub struct Syncher {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    kv: Arc<dyn KvStore>,
    bus: Arc<dyn EventBus>,
    config: SyncConfig,
    registry: Registry,
    next_id: AtomicU64,
    dispatcher_running: AtomicBool,
    /// Serializes starting the dispatcher.
    dispatcher_start: tokio::sync::Mutex<()>,
    stop: CancellationToken,
    /// Stops the dispatcher when the last handle goes.
    _stop_on_drop: DropGuard,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Reads the record of `url` (tombstones included).
    async fn load(&self, url: &str) -> Result<Option<ObjectRecord>, SyncError> {
        Ok(self.load_raw(url).await?.map(|(r, _)| r))
    }

    async fn load_raw(&self, url: &str) -> Result<Option<(ObjectRecord, Bytes)>, SyncError> {
        match self.kv.get(&object_key(url)).await? {
            None => Ok(None),
            Some(bytes) => {
                let record = serde_json::from_slice(&bytes)
                    .map_err(|e| SyncError::Corrupt(format!("record of {url}: {e}")))?;
                Ok(Some((record, bytes)))
            }
        }
    }

    /// Reads a live (not deleted) record.
    async fn live(&self, url: &str) -> Result<(ObjectRecord, Bytes), SyncError> {
        match self.load_raw(url).await? {
            Some((record, bytes)) if !record.deleted => Ok((record, bytes)),
            _ => Err(SyncError::NotFound),
        }
    }

    async fn publish(&self, change: &BusChange) {
        // Serializing a record of strings, numbers and a `Value` cannot fail.
        let payload = Bytes::from(serde_json::to_vec(change).unwrap_or_default());
        if let Err(error) = self.bus.publish(SYNC_CHANNEL, payload).await {
            // The change is stored; observers catch up at their next change or gap timeout.
            tracing::warn!(url = change.url(), %error, "sync change stored but not published");
        }
    }

    /// Applies `edit` to the JSON string list at `key` with compare-and-swap, retrying while
    /// other writers change it. `edit` returns false to leave the list unchanged.
    async fn edit_list(
        &self,
        key: &str,
        mut edit: impl FnMut(&mut Vec<String>) -> Result<bool, SyncError>,
    ) -> Result<(), SyncError> {
        for _ in 0..CAS_ATTEMPTS {
            let current = self.kv.get(key).await?;
            let mut list = decode_list(current.as_deref())
                .map_err(|e| SyncError::Corrupt(format!("list {key}: {e}")))?;
            if !edit(&mut list)? {
                return Ok(());
            }
            let new = (!list.is_empty())
                .then(|| Bytes::from(serde_json::to_vec(&list).unwrap_or_default()));
            if self
                .kv
                .compare_and_swap(key, current.as_deref(), new, self.config.object_ttl)
                .await?
            {
                return Ok(());
            }
        }
        Err(SyncError::Corrupt(format!(
            "{key} kept changing; try again"
        )))
    }
}

fn check_name(what: &str, name: &str) -> Result<(), SyncError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(SyncError::BadRequest(format!(
            "{what} must have 1 to {MAX_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

impl Syncher {
    /// Returns a Syncher over these backends. Observers on any Syncher sharing the same store
    /// and bus (other replicas) see each other's changes.
    pub fn new(kv: Arc<dyn KvStore>, bus: Arc<dyn EventBus>, config: SyncConfig) -> Self {
        let stop = CancellationToken::new();
        Syncher {
            shared: Arc::new(Shared {
                kv,
                bus,
                config,
                registry: Registry::default(),
                next_id: AtomicU64::new(1),
                dispatcher_running: AtomicBool::new(false),
                dispatcher_start: tokio::sync::Mutex::new(()),
                _stop_on_drop: stop.clone().drop_guard(),
                stop,
            }),
        }
    }

    /// Returns the address of the sync service, `domain://sync.<domain>`.
    pub fn address(&self) -> String {
        format!("domain://sync.{}", self.shared.config.domain)
    }

    /// Returns the configuration.
    pub fn config(&self) -> &SyncConfig {
        &self.shared.config
    }

    fn check_value(&self, value: &Value) -> Result<(), SyncError> {
        let size = serde_json::to_vec(value)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        let limit = self.shared.config.max_value_bytes;
        if size > limit {
            return Err(SyncError::TooLarge { size, limit });
        }
        Ok(())
    }

    /// Creates an object reported by `reporter` at version 1 that only the reporter's own
    /// identity may observe.
    pub async fn create(
        &self,
        reporter: Party<'_>,
        schema: &str,
        value: Value,
    ) -> Result<ObjectInfo, SyncError> {
        let own =
            Observers::new(vec![reporter.identity.to_owned()]).map_err(SyncError::BadRequest)?;
        self.create_for(reporter, schema, value, own).await
    }

    /// Creates an object reported by `reporter` at version 1 that `observers` (and the
    /// reporter's identity) may read and subscribe to.
    pub async fn create_for(
        &self,
        reporter: Party<'_>,
        schema: &str,
        value: Value,
        observers: Observers,
    ) -> Result<ObjectInfo, SyncError> {
        check_name("reporter", reporter.address)?;
        check_name("reporter identity", reporter.identity)?;
        check_name("schema", schema)?;
        self.check_value(&value)?;
        let shared = &self.shared;
        let url = format!("object://{}/{}", shared.config.domain, uuid::Uuid::new_v4());
        let max = shared.config.max_objects_per_reporter;
        let owner = reporter.identity;
        // Reserve the slot first, so concurrent creates cannot exceed the limit together.
        let owned_key = owner_key(owner);
        let mut pruned = false;
        loop {
            let mut full = false;
            shared
                .edit_list(&owned_key, |list| {
                    if list.len() >= max {
                        full = true;
                        return Ok(false);
                    }
                    list.push(url.clone());
                    Ok(true)
                })
                .await?;
            if !full {
                break;
            }
            if pruned {
                return Err(SyncError::LimitReached(format!(
                    "an identity may own at most {max} objects; delete one first"
                )));
            }
            // Entries may outlive objects after a crash mid-delete; drop those and retry once.
            self.prune_owned(owner).await?;
            pruned = true;
        }
        let record = ObjectRecord {
            url: url.clone(),
            schema: schema.to_owned(),
            reporter: reporter.address.to_owned(),
            owner: owner.to_owned(),
            observers,
            version: 1,
            value,
            deleted: false,
        };
        let bytes = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let stored = shared
            .kv
            .set_nx(&object_key(&url), bytes, shared.config.object_ttl)
            .await;
        if !matches!(stored, Ok(true)) {
            self.release_owned(owner, &url).await;
            stored?;
            return Err(SyncError::Corrupt(format!("object {url} already exists")));
        }
        tracing::debug!(%url, reporter = reporter.address, owner, schema, "object created");
        Ok(ObjectInfo {
            url,
            schema: record.schema,
            reporter: record.reporter,
            version: 1,
        })
    }

    async fn prune_owned(&self, owner: &str) -> Result<(), SyncError> {
        let key = owner_key(owner);
        let listed = decode_list(self.shared.kv.get(&key).await?.as_deref())
            .map_err(|e| SyncError::Corrupt(format!("list {key}: {e}")))?;
        let mut gone = Vec::new();
        for url in listed {
            if self.shared.load(&url).await?.is_none() {
                gone.push(url);
            }
        }
        if !gone.is_empty() {
            self.shared
                .edit_list(&key, |list| {
                    list.retain(|u| !gone.contains(u));
                    Ok(true)
                })
                .await?;
        }
        Ok(())
    }

    async fn release_owned(&self, owner: &str, url: &str) {
        let result = self
            .shared
            .edit_list(&owner_key(owner), |list| {
                let before = list.len();
                list.retain(|u| u != url);
                Ok(list.len() != before)
            })
            .await;
        if let Err(error) = result {
            // Harmless: `create` prunes entries whose object is gone when the limit is hit.
            tracing::warn!(owner, url, %error, "cannot release object slot");
        }
    }

    /// Returns the object's current value and version, if `by` may observe it.
    pub async fn read(&self, object: &str, by: Party<'_>) -> Result<ObjectSnapshot, SyncError> {
        let (r, _) = self.shared.live(object).await?;
        if !r.may_observe(by) {
            return Err(SyncError::NotObserver);
        }
        Ok(ObjectSnapshot {
            url: r.url,
            schema: r.schema,
            reporter: r.reporter,
            version: r.version,
            value: r.value,
        })
    }

    /// Returns the object's observers, as stored.
    pub async fn observers(&self, object: &str) -> Result<Vec<String>, SyncError> {
        self.shared.live(object).await?;
        let key = observers_key(object);
        decode_list(self.shared.kv.get(&key).await?.as_deref())
            .map_err(|e| SyncError::Corrupt(format!("list {key}: {e}")))
    }

    /// Subscribes `observer` to `object`: returns the current value and version, and the stream
    /// of every later change in version order. A second subscribe by the same observer on this
    /// replica replaces the first stream (which ends).
    pub async fn subscribe(
        &self,
        object: &str,
        by: Party<'_>,
    ) -> Result<(ObjectSnapshot, ChangeStream), SyncError> {
        let observer = by.address;
        check_name("observer", observer)?;
        // Checked before a stream is registered, so a refused observer costs nothing.
        self.read(object, by).await?;
        self.ensure_dispatcher().await?;
        // Listen before reading: every change committed after the read below is then delivered,
        // and the ones before it are filtered out by version.
        let (id, rx, lagged) = fanout::register(&self.shared, object, observer)?;
        let mut stream = ChangeStream {
            url: object.to_owned(),
            observer: observer.to_owned(),
            listed: false,
            id,
            rx,
            lagged,
            next: 0,
            pending: BTreeMap::new(),
            done: false,
            shared: Arc::clone(&self.shared),
        };
        let snapshot = self.read(object, by).await?;
        let max = self.shared.config.max_observers_per_object.max(1);
        self.shared
            .edit_list(&observers_key(object), |list| {
                if list.iter().any(|o| o == observer) {
                    return Ok(false);
                }
                // The list is bounded but never blocks a subscribe: entries of observers whose
                // replica died without cleaning up would otherwise fill it for good. Live
                // streams are limited per replica in `register`.
                if list.len() >= max {
                    list.drain(..=list.len() - max);
                }
                list.push(observer.to_owned());
                Ok(true)
            })
            .await?;
        stream.listed = true;
        stream.next = snapshot.version + 1;
        Ok((snapshot, stream))
    }

    /// Removes `observer` from `object`; its streams end on every replica. Unsubscribing an
    /// observer that is not subscribed is not an error.
    pub async fn unsubscribe(&self, object: &str, by: Party<'_>) -> Result<(), SyncError> {
        let observer = by.address;
        check_name("observer", observer)?;
        self.shared.live(object).await?;
        self.shared
            .edit_list(&observers_key(object), |list| {
                let before = list.len();
                list.retain(|o| o != observer);
                Ok(list.len() != before)
            })
            .await?;
        fanout::close(&mut lock(&self.shared.registry), object, |s| {
            s.observer == observer
        });
        self.shared
            .publish(&BusChange::Unsubscribe {
                url: object.to_owned(),
                observer: observer.to_owned(),
            })
            .await;
        Ok(())
    }

    /// Replaces the value of `object`. Only its reporter may (`by`); `expected_version` must be
    /// the current version. Returns the new version.
    pub async fn update(
        &self,
        object: &str,
        by: Party<'_>,
        expected_version: u64,
        value: Value,
    ) -> Result<u64, SyncError> {
        self.check_value(&value)?;
        for _ in 0..CAS_ATTEMPTS {
            let (mut record, old) = self.shared.live(object).await?;
            if record.reporter != by.address {
                return Err(SyncError::Forbidden);
            }
            if record.version != expected_version {
                return Err(SyncError::Conflict {
                    current: record.version,
                });
            }
            record.version += 1;
            record.value = value.clone();
            let new = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
            if self
                .shared
                .kv
                .compare_and_swap(
                    &object_key(object),
                    Some(&old),
                    Some(new),
                    self.shared.config.object_ttl,
                )
                .await?
            {
                self.shared
                    .publish(&BusChange::Update {
                        url: record.url,
                        version: record.version,
                        value: record.value,
                    })
                    .await;
                return Ok(record.version);
            }
            // Someone else changed the record first; the next read reports why.
        }
        Err(SyncError::Corrupt(format!(
            "{object} kept changing; try again"
        )))
    }

    /// Deletes `object`. Only its reporter may (`by`). Observers receive a delete (at one past
    /// the last version) and their streams end.
    pub async fn delete(&self, object: &str, by: Party<'_>) -> Result<(), SyncError> {
        let key = object_key(object);
        for _ in 0..CAS_ATTEMPTS {
            let (record, old) = self.shared.live(object).await?;
            if record.reporter != by.address {
                return Err(SyncError::Forbidden);
            }
            let tombstone = ObjectRecord {
                version: record.version + 1,
                value: Value::Null,
                deleted: true,
                ..record
            };
            let tomb = Bytes::from(serde_json::to_vec(&tombstone).unwrap_or_default());
            if !self
                .shared
                .kv
                .compare_and_swap(&key, Some(&old), Some(tomb.clone()), Some(TOMBSTONE_TTL))
                .await?
            {
                continue;
            }
            self.shared
                .publish(&BusChange::Delete {
                    url: tombstone.url.clone(),
                    version: tombstone.version,
                })
                .await;
            // Only this call can move the tombstone; if it expired already, nothing is left.
            self.shared
                .kv
                .compare_and_swap(&key, Some(&tomb), None, None)
                .await?;
            self.shared.kv.delete(&observers_key(object)).await?;
            self.release_owned(tombstone.owner_or_reporter(), object)
                .await;
            tracing::debug!(url = object, "object deleted");
            return Ok(());
        }
        Err(SyncError::Corrupt(format!(
            "{object} kept changing; try again"
        )))
    }

    /// Deletes every object that `reporter` (the hyperty address, of identity
    /// `reporter.identity`) reports, notifying their observers; returns how many were deleted.
    /// For when a reporter hyperty is gone for good (its session ended). Objects of the same
    /// identity reported by its other hyperties stay.
    pub async fn delete_all_of(&self, reporter: Party<'_>) -> Result<usize, SyncError> {
        let mut deleted = 0;
        for url in self.reported_by(reporter).await? {
            match self.delete(&url, reporter).await {
                Ok(()) => deleted += 1,
                // Gone meanwhile.
                Err(SyncError::NotFound | SyncError::Forbidden) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Renews the TTL ([`SyncConfig::object_ttl`]) of every object `reporter` reports, of their
    /// observer lists and of its owner's list, so they live as long as the reporter does.
    /// Returns how many objects were refreshed; without a TTL it does nothing.
    pub async fn refresh_all_of(&self, reporter: Party<'_>) -> Result<usize, SyncError> {
        let Some(ttl) = self.shared.config.object_ttl else {
            return Ok(0);
        };
        let kv = &self.shared.kv;
        let owned = owner_key(reporter.identity);
        if let Some(list) = kv.get(&owned).await? {
            // Lost to a concurrent edit: that edit set the TTL anyway.
            let _ = kv
                .compare_and_swap(&owned, Some(&list), Some(list.clone()), Some(ttl))
                .await?;
        }
        let mut refreshed = 0;
        for url in self.reported_by(reporter).await? {
            for key in [object_key(&url), observers_key(&url)] {
                if let Some(bytes) = kv.get(&key).await? {
                    let _ = kv
                        .compare_and_swap(&key, Some(&bytes), Some(bytes.clone()), Some(ttl))
                        .await?;
                }
            }
            refreshed += 1;
        }
        Ok(refreshed)
    }

    /// Returns the URLs of the live objects `reporter` reports, dropping list entries whose
    /// object is gone.
    async fn reported_by(&self, reporter: Party<'_>) -> Result<Vec<String>, SyncError> {
        let key = owner_key(reporter.identity);
        let owned = decode_list(self.shared.kv.get(&key).await?.as_deref())
            .map_err(|e| SyncError::Corrupt(format!("list {key}: {e}")))?;
        let mut mine = Vec::new();
        for url in owned {
            match self.shared.load(&url).await? {
                Some(r) if !r.deleted && r.reporter == reporter.address => mine.push(url),
                Some(_) => {}
                None => self.release_owned(reporter.identity, &url).await,
            }
        }
        Ok(mine)
    }

    /// Starts the dispatcher that feeds local streams, once.
    async fn ensure_dispatcher(&self) -> Result<(), SyncError> {
        if self.shared.dispatcher_running.load(Ordering::Acquire) {
            return Ok(());
        }
        let _starting = self.shared.dispatcher_start.lock().await;
        if self.shared.dispatcher_running.load(Ordering::Acquire) {
            return Ok(());
        }
        // Once `subscribe` returns, every later publish reaches us (the bus contract).
        let subscription = self
            .shared
            .bus
            .subscribe(&[SYNC_CHANNEL.to_owned()])
            .await?;
        self.shared
            .dispatcher_running
            .store(true, Ordering::Release);
        tokio::spawn(fanout::run_dispatcher(
            Arc::downgrade(&self.shared),
            subscription,
            self.shared.stop.clone(),
        ));
        Ok(())
    }
}
