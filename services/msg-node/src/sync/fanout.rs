//! Delivery of object changes to the observers connected to this replica.
//!
//! One dispatcher task per [`Syncher`](super::Syncher) listens on [`SYNC_CHANNEL`] and hands
//! each change to the local [`ChangeStream`]s of that object through bounded channels. Pub/sub
//! may reorder changes published by different replicas and may lose some (a full stream
//! channel, a Redis reconnect, a replica dying between commit and publish), so each stream
//! restores order itself: it holds early versions back until the gap closes, and when a gap
//! stays open for `gap_timeout` or its channel overflowed it reads the object from the store and
//! jumps to the current version. Values are whole (not deltas), so an observer that skips
//! versions still ends up with the right state; versions it sees only ever increase.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use futures::stream::BoxStream;
use rethink_common::bus::Subscription;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::record::{BusChange, SYNC_CHANNEL, observers_key};
use super::{ChangeKind, ObjectChange, Shared, SyncError};

/// Early versions a stream holds back before it gives up waiting and reads the store.
const MAX_PENDING: usize = 256;

/// One local observer stream, as the dispatcher sees it.
#[derive(Debug)]
pub(super) struct LocalSub {
    pub(super) id: u64,
    pub(super) observer: String,
    tx: mpsc::Sender<ObjectChange>,
    lagged: Arc<AtomicBool>,
}

impl LocalSub {
    /// Queues `change`; returns false when the stream is gone. A full queue marks the stream
    /// lagged (it will catch up from the store) instead of growing memory or blocking others.
    fn offer(&self, change: ObjectChange) -> bool {
        match self.tx.try_send(change) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// Local streams by object URL.
pub(super) type Registry = Mutex<HashMap<String, Vec<LocalSub>>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked mid-way: every update is one call.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Applies one change from the bus to the local streams.
pub(super) fn dispatch(registry: &Registry, change: BusChange) {
    let mut subs = lock(registry);
    match change {
        BusChange::Update {
            url,
            version,
            value,
        } => {
            if let Some(list) = subs.get_mut(&url) {
                let change = ObjectChange {
                    url: url.clone(),
                    version,
                    kind: ChangeKind::Update(value),
                };
                list.retain(|s| s.offer(change.clone()));
                if list.is_empty() {
                    subs.remove(&url);
                }
            }
        }
        BusChange::Delete { url, version } => {
            // Dropping the senders after the Delete ends every stream once it is read.
            for sub in subs.remove(&url).unwrap_or_default() {
                sub.offer(ObjectChange {
                    url: url.clone(),
                    version,
                    kind: ChangeKind::Delete,
                });
            }
        }
        BusChange::Unsubscribe { url, observer } => {
            close(&mut subs, &url, |s| s.observer == observer)
        }
    }
}

/// Ends the local streams of `url` that `which` selects.
pub(super) fn close(
    subs: &mut HashMap<String, Vec<LocalSub>>,
    url: &str,
    which: impl Fn(&LocalSub) -> bool,
) {
    if let Some(list) = subs.get_mut(url) {
        for sub in list.iter().filter(|s| which(s)) {
            // A stream that lagged must not resurrect itself from the store after this.
            sub.lagged.store(false, Ordering::Release);
        }
        list.retain(|s| !which(s));
        if list.is_empty() {
            subs.remove(url);
        }
    }
}

/// Registers a new local stream for `url`; replaces any earlier one of the same observer (a
/// second subscribe restarts delivery rather than duplicating it). Refuses more than
/// `max_observers_per_object` live streams per object on this replica.
pub(super) fn register(
    shared: &Arc<Shared>,
    url: &str,
    observer: &str,
) -> Result<(u64, mpsc::Receiver<ObjectChange>, Arc<AtomicBool>), SyncError> {
    let max = shared.config.max_observers_per_object;
    let mut subs = lock(&shared.registry);
    let others = subs
        .get(url)
        .map_or(0, |l| l.iter().filter(|s| s.observer != observer).count());
    if others >= max {
        return Err(SyncError::LimitReached(format!(
            "an object may have at most {max} observers"
        )));
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(shared.config.stream_capacity.max(1));
    let lagged = Arc::new(AtomicBool::new(false));
    close(&mut subs, url, |s| s.observer == observer);
    subs.entry(url.to_owned()).or_default().push(LocalSub {
        id,
        observer: observer.to_owned(),
        tx,
        lagged: Arc::clone(&lagged),
    });
    Ok((id, rx, lagged))
}

/// Runs the dispatcher until the Syncher is dropped (`stop`) or the bus ends the subscription.
pub(super) async fn run_dispatcher(
    shared: Weak<Shared>,
    mut subscription: Subscription,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            m = subscription.recv() => m,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(message) = message else {
            tracing::error!(
                channel = SYNC_CHANNEL,
                "sync change subscription ended; observers on this replica are disconnected"
            );
            // Streams end; the next subscribe starts a new dispatcher.
            lock(&shared.registry).clear();
            shared.dispatcher_running.store(false, Ordering::Release);
            return;
        };
        match serde_json::from_slice::<BusChange>(&message.payload) {
            Ok(change) => dispatch(&shared.registry, change),
            Err(error) => {
                tracing::warn!(%error, channel = SYNC_CHANNEL, "ignoring malformed sync change");
            }
        }
    }
}

/// The changes of one object for one observer, in version order, ending after a delete or an
/// unsubscribe. Dropping it stops delivery.
pub struct ChangeStream {
    pub(super) url: String,
    pub(super) observer: String,
    /// Whether the observer was added to the stored observer list (so dropping removes it).
    pub(super) listed: bool,
    pub(super) id: u64,
    pub(super) rx: mpsc::Receiver<ObjectChange>,
    pub(super) lagged: Arc<AtomicBool>,
    /// The version the observer needs next (one past the last one it saw).
    pub(super) next: u64,
    pub(super) pending: BTreeMap<u64, ObjectChange>,
    pub(super) done: bool,
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("url", &self.url)
            .field("next", &self.next)
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ChangeStream {
    /// Returns the object this stream follows.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns the next change, or `None` once the object was deleted (after yielding the
    /// [`ChangeKind::Delete`]), the observer unsubscribed, or the replica lost the bus.
    pub async fn recv(&mut self) -> Option<ObjectChange> {
        let gap_timeout = self.shared.config.gap_timeout;
        loop {
            if self.done {
                return None;
            }
            if let Some(change) = self.pending.remove(&self.next) {
                return Some(self.deliver(change));
            }
            if self.lagged.swap(false, Ordering::AcqRel) {
                while self.rx.try_recv().is_ok() {}
                self.pending.clear();
                match self.catch_up().await {
                    Some(change) => return Some(change),
                    None => continue,
                }
            }
            let incoming = if self.pending.is_empty() {
                self.rx.recv().await
            } else {
                match tokio::time::timeout(gap_timeout, self.rx.recv()).await {
                    Ok(incoming) => incoming,
                    Err(_elapsed) => {
                        if let Some(change) = self.catch_up().await {
                            return Some(change);
                        }
                        // The store has nothing newer than what is held back (it lost data,
                        // e.g. Redis restarted without persistence): skip the gap.
                        if let Some((&first, _)) = self.pending.first_key_value() {
                            self.next = self.next.max(first);
                        }
                        continue;
                    }
                }
            };
            match incoming {
                // Closed: unsubscribed, deleted or the dispatcher stopped. A lagged stream still
                // catches up (it may have missed the delete).
                None if self.lagged.load(Ordering::Acquire) => continue,
                None => {
                    self.done = true;
                    return None;
                }
                Some(change) if change.version < self.next => {}
                Some(change) if self.pending.len() >= MAX_PENDING => {
                    drop(change);
                    self.lagged.store(true, Ordering::Release);
                }
                Some(change) => {
                    self.pending.insert(change.version, change);
                }
            }
        }
    }

    /// Turns the stream into a `futures` stream (for `select!`/`StreamExt` users).
    pub fn into_stream(self) -> BoxStream<'static, ObjectChange> {
        Box::pin(futures::stream::unfold(self, |mut s| async move {
            s.recv().await.map(|c| (c, s))
        }))
    }

    fn deliver(&mut self, change: ObjectChange) -> ObjectChange {
        self.next = change.version + 1;
        if change.kind == ChangeKind::Delete {
            self.done = true;
        }
        let next = self.next;
        self.pending.retain(|&v, _| v >= next);
        change
    }

    /// Reads the object from the store and returns its state as a change if it is newer than
    /// what the observer has seen.
    async fn catch_up(&mut self) -> Option<ObjectChange> {
        let record = match self.shared.load(&self.url).await {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "cannot read object to catch up; retrying");
                tokio::time::sleep(self.shared.config.gap_timeout).await;
                self.lagged.store(true, Ordering::Release);
                return None;
            }
        };
        let change = match record {
            Some(r) if r.deleted => ObjectChange {
                url: r.url,
                version: r.version.max(self.next),
                kind: ChangeKind::Delete,
            },
            Some(r) if r.version >= self.next => ObjectChange {
                url: r.url,
                version: r.version,
                kind: ChangeKind::Update(r.value),
            },
            Some(_) => return None,
            None => ObjectChange {
                url: self.url.clone(),
                version: self.next,
                kind: ChangeKind::Delete,
            },
        };
        Some(self.deliver(change))
    }
}

impl Drop for ChangeStream {
    fn drop(&mut self) {
        let id = self.id;
        let mut subs = lock(&self.shared.registry);
        close(&mut subs, &self.url, |s| s.id == id);
        let replaced = subs
            .get(&self.url)
            .is_some_and(|l| l.iter().any(|s| s.observer == self.observer));
        drop(subs);
        // The observer went away (connection closed, task ended): take it off the stored list
        // so departed observers do not pile up. Not when a newer stream of the same observer
        // replaced this one.
        if !self.listed || replaced {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let (url, observer) = (self.url.clone(), self.observer.clone());
        runtime.spawn(async move {
            let result = shared
                .edit_list(&observers_key(&url), |list| {
                    let before = list.len();
                    list.retain(|o| *o != observer);
                    Ok(list.len() != before)
                })
                .await;
            if let Err(error) = result {
                tracing::debug!(%url, %observer, %error, "cannot remove a departed observer");
            }
        });
    }
}
