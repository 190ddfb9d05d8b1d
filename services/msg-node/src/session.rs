//! Sessions: one per client runtime, surviving short disconnects.
//!
//! A session owns a runtime address, the hyperty addresses it registered and one bounded
//! outbound queue. A connection (WebSocket or gRPC stream) *attaches* to the session and drains
//! the queue; when it goes away the session lives on for the grace period, still receiving
//! into the queue, so a reconnect with the resume token keeps the addresses and gets what was
//! queued. Invariants: at most one attachment at a time (a resume closes the previous one); the
//! queue never grows past `queue_len` (a full queue closes the attachment as a slow consumer).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use rethink_common::token::{Claims, Credential, TokenError};
use tokio::{sync::mpsc, task::AbortHandle};
use tokio_util::sync::CancellationToken;

use crate::envelope::Envelope;

/// Who is on the other end of a session.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// The token's `sub` (`user:alice`, `conference`, ...).
    pub subject: String,
    /// The name policies see: the subject without its `user:` / `service:` prefix.
    pub name: String,
    /// Display name from the token.
    pub display_name: String,
    /// `user://<domain>/<username>` for people; services have none.
    pub user: Option<String>,
    /// Attached over gRPC with the `services.attach` grant.
    pub is_service: bool,
}

/// Why a connection was closed by the node. Each reason has a WebSocket close code (4000-4999
/// are the application range) documented in docs/protocol.md.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CloseReason {
    /// The token was revoked; the session is gone.
    Revoked,
    /// The token expired; resume with a fresh token within the grace period.
    Expired,
    /// The outbound queue filled up; resume to get what was queued.
    SlowConsumer(usize),
    /// Another connection resumed this session.
    Replaced,
    /// The node is shutting down.
    Shutdown,
    /// The client sent a WebSocket message larger than this many bytes
    /// (`limits.max_message_bytes`); it was refused before being read whole.
    TooBig(usize),
}

impl CloseReason {
    /// Returns the reason for a credential that lapsed with `error`.
    pub fn lapsed(error: &TokenError) -> CloseReason {
        match error {
            TokenError::Revoked => CloseReason::Revoked,
            _ => CloseReason::Expired,
        }
    }

    /// Returns the WebSocket close code.
    pub fn ws_code(&self) -> u16 {
        match self {
            CloseReason::Revoked => 4001,
            CloseReason::Expired => 4002,
            CloseReason::SlowConsumer(_) => 4008,
            CloseReason::Replaced => 4009,
            CloseReason::Shutdown => 1001,
            CloseReason::TooBig(_) => 1009,
        }
    }

    /// Returns the human-readable reason (also the gRPC status message).
    pub fn text(&self) -> String {
        match self {
            CloseReason::Revoked => "token revoked".into(),
            CloseReason::Expired => "token expired; reconnect with a fresh token and resume".into(),
            CloseReason::SlowConsumer(n) => {
                format!("slow consumer: {n} messages queued; reconnect and resume")
            }
            CloseReason::Replaced => "session resumed by another connection".into(),
            CloseReason::Shutdown => "node shutting down; reconnect and resume".into(),
            CloseReason::TooBig(n) => {
                format!("message larger than {n} bytes; reconnect and resume")
            }
        }
    }
}

/// Why a message could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueError {
    /// The queue is full; the attachment (if any) is being closed as a slow consumer.
    Full,
    /// The session has ended.
    Gone,
}

/// The node's handle to close one attachment, with the reason it did.
#[derive(Debug, Clone, Default)]
pub struct Closer {
    token: CancellationToken,
    reason: Arc<OnceLock<CloseReason>>,
}

impl Closer {
    /// Closes with `reason`; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Resolves once closed.
    pub async fn closed(&self) {
        self.token.cancelled().await;
    }

    /// Returns true once closed.
    pub fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Returns why it was closed.
    pub fn reason(&self) -> Option<CloseReason> {
        self.reason.get().cloned()
    }
}

/// What a connection gets when it attaches.
#[derive(Debug)]
pub struct Attachment {
    /// Identifies this attachment for [`Session::detach`].
    pub generation: u64,
    /// Closed by the node (revocation, slow consumer, resume elsewhere, shutdown).
    pub closer: Closer,
    /// The outbound queue, held exclusively while attached.
    pub queue: tokio::sync::OwnedMutexGuard<mpsc::Receiver<Envelope>>,
}

#[derive(Debug)]
struct State {
    addresses: BTreeSet<String>,
    generation: u64,
    attached: Option<(u64, Closer)>,
    last_close: Option<CloseReason>,
    terminated: bool,
    /// The token of the current (or last) connection, renewable in-band.
    credential: Credential,
}

/// One client runtime's session.
#[derive(Debug)]
pub struct Session {
    /// Random id, the last segment of the runtime address.
    pub id: String,
    /// `runtime://<domain>/<id>`.
    pub runtime: String,
    /// Secret that lets a reconnect of the same identity take this session over.
    pub resume_token: String,
    /// Who this is.
    pub identity: Identity,
    queue_len: usize,
    tx: mpsc::Sender<Envelope>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Envelope>>>,
    state: Mutex<State>,
    subscriptions: Mutex<HashMap<String, AbortHandle>>,
}

impl Session {
    /// Creates a detached session.
    pub fn new(
        runtime_of: impl Fn(&str) -> String,
        identity: Identity,
        credential: Credential,
        queue_len: usize,
    ) -> Arc<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let runtime = runtime_of(&id);
        Self::restore(id, runtime, random_token(), identity, credential, queue_len)
    }

    /// Recreates a detached session handed over by another replica (same id, runtime address
    /// and resume token).
    pub fn restore(
        id: String,
        runtime: String,
        resume_token: String,
        identity: Identity,
        credential: Credential,
        queue_len: usize,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(queue_len);
        Arc::new(Self {
            runtime,
            id,
            resume_token,
            identity,
            queue_len,
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            state: Mutex::new(State {
                addresses: BTreeSet::new(),
                generation: 0,
                attached: None,
                last_close: None,
                terminated: false,
                credential,
            }),
            subscriptions: Mutex::new(HashMap::new()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message for the client without waiting. A full queue closes the attachment as
    /// a slow consumer and refuses the message.
    pub fn enqueue(&self, envelope: Envelope) -> Result<(), EnqueueError> {
        match self.tx.try_send(envelope) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("msgnode_queue_full_total").increment(1);
                self.close(CloseReason::SlowConsumer(self.queue_len));
                Err(EnqueueError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(EnqueueError::Gone),
        }
    }

    /// Attaches a connection holding `credential`, closing the previous attachment if there is
    /// one, and waits until the queue is free. `None` if the session ended meanwhile.
    pub async fn attach(&self, credential: Credential) -> Option<Attachment> {
        let closer = Closer::default();
        let generation = {
            let mut state = self.state();
            if state.terminated {
                return None;
            }
            if let Some((_, previous)) = state.attached.take() {
                previous.close(CloseReason::Replaced);
            }
            state.generation += 1;
            state.attached = Some((state.generation, closer.clone()));
            state.credential = credential;
            state.generation
        };
        // The previous connection's writer releases the queue once it sees its cancellation.
        let queue = self.rx.clone().lock_owned().await;
        let state = self.state();
        if state.terminated || state.generation != generation {
            return None;
        }
        Some(Attachment {
            generation,
            closer,
            queue,
        })
    }

    /// Ends the session here for a handover to another replica: closes the attachment, waits
    /// for its queue and returns the queued messages, the addresses, the subscription keys and
    /// why the last connection was closed. Nothing is unregistered: the new holder takes over.
    pub async fn hand_over(
        &self,
    ) -> (Vec<Envelope>, Vec<String>, Vec<String>, Option<CloseReason>) {
        let (addresses, last_close) = {
            let mut state = self.state();
            state.terminated = true;
            if let Some((_, closer)) = state.attached.take() {
                closer.close(CloseReason::Replaced);
            }
            (
                std::mem::take(&mut state.addresses),
                state.last_close.clone(),
            )
        };
        let subscriptions = std::mem::take(
            &mut *self
                .subscriptions
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let keys = subscriptions
            .into_iter()
            .map(|(key, handle)| {
                handle.abort();
                key
            })
            .collect();
        let mut queue = self.rx.clone().lock_owned().await;
        let mut queued = Vec::new();
        while let Ok(envelope) = queue.try_recv() {
            queued.push(envelope);
        }
        (queued, addresses.into_iter().collect(), keys, last_close)
    }

    /// Restores the last close reason of a handed-over session.
    pub fn set_last_close(&self, reason: Option<CloseReason>) {
        self.state().last_close = reason;
    }

    /// Detaches attachment `generation`, remembering why the node closed it (if it did);
    /// returns true when it was the current one (the grace period starts).
    pub fn detach(&self, generation: u64, reason: Option<CloseReason>) -> bool {
        let mut state = self.state();
        match &state.attached {
            Some((g, _)) if *g == generation => {
                state.attached = None;
                state.last_close = reason;
                !state.terminated
            }
            _ => false,
        }
    }

    /// Returns why the node closed the previous connection, if it did.
    pub fn last_close(&self) -> Option<CloseReason> {
        self.state().last_close.clone()
    }

    /// Returns true when nothing has attached since attachment `generation` ended and the
    /// session is still alive (so the grace period may end it).
    pub fn expired_since(&self, generation: u64) -> bool {
        let state = self.state();
        !state.terminated && state.attached.is_none() && state.generation == generation
    }

    /// Closes the current attachment (if any) for `reason`.
    pub fn close(&self, reason: CloseReason) {
        if let Some((_, closer)) = &self.state().attached {
            closer.close(reason);
        }
    }

    /// Ends the session: closes the attachment and returns the addresses to unregister.
    pub fn terminate(&self, reason: CloseReason) -> Vec<String> {
        let addresses = {
            let mut state = self.state();
            state.terminated = true;
            if let Some((_, closer)) = state.attached.take() {
                closer.close(reason);
            }
            std::mem::take(&mut state.addresses)
        };
        let subscriptions = std::mem::take(
            &mut *self
                .subscriptions
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for handle in subscriptions.into_values() {
            handle.abort();
        }
        addresses.into_iter().collect()
    }

    /// Returns true once the session has ended.
    pub fn is_terminated(&self) -> bool {
        self.state().terminated
    }

    /// Returns the current token id.
    pub fn jti(&self) -> String {
        self.state().credential.claims().jti
    }

    /// Returns the credential of the current connection; [`Credential::lapsed`] resolves when
    /// its token (as renewed) is revoked or expires.
    pub fn credential(&self) -> Credential {
        self.state().credential.clone()
    }

    /// Replaces the session's token by a fresh, verified one of the same subject: revoking the
    /// old token no longer ends the session, and it expires with the new one.
    pub fn renew(&self, fresh: Claims) -> Result<(), TokenError> {
        self.credential().renew(fresh)
    }

    /// Returns true when `from` is an address of this session.
    pub fn owns(&self, address: &str) -> bool {
        address == self.runtime || self.state().addresses.contains(address)
    }

    /// Returns the hyperty addresses of this session.
    pub fn addresses(&self) -> Vec<String> {
        self.state().addresses.iter().cloned().collect()
    }

    /// Returns the number of hyperty addresses.
    pub fn address_count(&self) -> usize {
        self.state().addresses.len()
    }

    /// Records an address; false if the session has ended.
    pub fn add_address(&self, address: &str) -> bool {
        let mut state = self.state();
        if state.terminated {
            return false;
        }
        state.addresses.insert(address.to_owned());
        true
    }

    /// Forgets an address; returns whether it was there.
    pub fn remove_address(&self, address: &str) -> bool {
        self.state().addresses.remove(address)
    }

    /// Remembers the task that forwards changes of `key` (object and observer) to this session,
    /// replacing (and stopping) a previous one.
    pub fn add_subscription(&self, key: String, handle: AbortHandle) {
        let mut subs = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = subs.insert(key, handle) {
            old.abort();
        }
        if self.state().terminated {
            for (_, h) in subs.drain() {
                h.abort();
            }
        }
    }

    /// Returns the keys (`<object>|<observer>`) of the active subscriptions.
    pub fn subscription_keys(&self) -> Vec<String> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Stops forwarding changes of `key`; returns whether it was subscribed.
    pub fn remove_subscription(&self, key: &str) -> bool {
        let handle = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        handle.map(|h| h.abort()).is_some()
    }

    /// Stops forwarding changes to `observer` (a hyperty that went away).
    pub fn remove_subscriptions_of(&self, observer: &str) {
        let suffix = format!("|{observer}");
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, handle| {
                let keep = !key.ends_with(&suffix);
                if !keep {
                    handle.abort();
                }
                keep
            });
    }
}

/// Returns a 256-bit random token, URL-safe base64.
fn random_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{MessageId, MessageType};

    fn credential(jti: &str) -> Credential {
        let verifier = rethink_common::token::TokenVerifier::from_auth_url("http://127.0.0.1:9");
        let claims = Claims {
            sub: "user:alice".into(),
            name: "Alice".into(),
            iat: 0,
            nbf: 0,
            exp: i64::MAX / 2,
            jti: jti.into(),
            aud: "rethink".into(),
            grants: Default::default(),
        };
        Credential::new(&verifier, claims)
    }

    fn session(queue: usize) -> Arc<Session> {
        Session::new(
            |id| format!("runtime://localhost/{id}"),
            Identity {
                subject: "user:alice".into(),
                name: "alice".into(),
                display_name: "Alice".into(),
                user: Some("user://localhost/alice".into()),
                is_service: false,
            },
            credential("jti-1"),
            queue,
        )
    }

    fn msg(n: i64) -> Envelope {
        Envelope::new(
            MessageId::Int(n),
            MessageType::Forward,
            "a",
            "b",
            serde_json::Value::Null,
        )
    }

    #[tokio::test]
    async fn queue_survives_detach_and_resume() {
        let s = session(4);
        let a = s.attach(credential("j")).await.unwrap();
        s.enqueue(msg(1)).unwrap();
        let generation = a.generation;
        drop(a);
        assert!(s.detach(generation, None));
        s.enqueue(msg(2)).unwrap();
        let mut b = s.attach(credential("j2")).await.unwrap();
        assert_eq!(b.queue.recv().await.unwrap().id, MessageId::Int(1));
        assert_eq!(b.queue.recv().await.unwrap().id, MessageId::Int(2));
        assert!(!s.expired_since(generation));
        assert_eq!(s.jti(), "j2");
    }

    #[tokio::test]
    async fn full_queue_closes_as_slow_consumer() {
        let s = session(2);
        let a = s.attach(credential("j")).await.unwrap();
        s.enqueue(msg(1)).unwrap();
        s.enqueue(msg(2)).unwrap();
        assert_eq!(s.enqueue(msg(3)), Err(EnqueueError::Full));
        assert!(a.closer.is_closed());
        assert_eq!(a.closer.reason(), Some(CloseReason::SlowConsumer(2)));
    }

    #[tokio::test]
    async fn resume_replaces_the_previous_attachment() {
        let s = session(2);
        let a = s.attach(credential("j")).await.unwrap();
        let closer = a.closer.clone();
        let s2 = s.clone();
        let second = tokio::spawn(async move { s2.attach(credential("k")).await.is_some() });
        closer.closed().await;
        assert_eq!(closer.reason(), Some(CloseReason::Replaced));
        assert!(!s.detach(a.generation, None));
        drop(a);
        assert!(second.await.unwrap());
    }

    #[tokio::test]
    async fn terminate_returns_addresses_and_refuses_attach() {
        let s = session(2);
        assert!(s.add_address("hyperty://localhost/x"));
        assert!(s.owns("hyperty://localhost/x"));
        assert!(s.owns(&s.runtime.clone()));
        assert_eq!(
            s.terminate(CloseReason::Revoked),
            vec!["hyperty://localhost/x"]
        );
        assert!(!s.add_address("hyperty://localhost/y"));
        assert!(s.attach(credential("j")).await.is_none());
    }
}
