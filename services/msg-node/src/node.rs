//! The node: sessions, message dispatch and routing, local and across replicas.
//!
//! Every envelope, whatever transport it came on, goes through [`Node::handle`]: policy, then
//! ownership of `from`, then the destination: the registry ([`crate::registry`]), the Syncher
//! ([`crate::objects`]), the node itself, or a hyperty address. Hyperty addresses are looked up
//! in this replica's table first, then in the shared address map (the [`KvStore`]); a remote one
//! is published on its replica's bus channel, which confirms delivery with an ack, so an
//! unreachable replica turns into a 408 after the delivery timeout instead of silence.
//!
//! Invariants: the node never answers a `response` (no error loops); messages from one
//! connection are handled in order and reach a given destination in that order (one bus
//! channel per replica, published from one connection).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use rethink_common::{
    bus::{EventBus, topics},
    kv::KvStore,
    lifecycle::Shutdown,
    telemetry::propagation,
    token::{Claims, Credential, TokenVerifier, decode_revocation},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::{
    address::{self, Domain},
    config::MsgNodeConfig,
    envelope::{Envelope, FrameError, MessageId, MessageType},
    error::MsgNodeError,
    handover::{HandoverReply, HandoverRequest},
    policy::{Decision, PolicyContext, PolicyEngine},
    registry::{Binding, ReservedTable},
    session::{CloseReason, EnqueueError, Identity, Session},
    sync::{Party, Syncher},
};

/// What replicas say to each other on their bus channels (JSON).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum NodeMessage {
    /// Deliver `envelope` to a local address; answer with an ack on `reply_to` unless `seq` is 0.
    Deliver {
        seq: u64,
        reply_to: String,
        envelope: Envelope,
    },
    /// The outcome of delivery `seq`: 200, or an error code and why.
    Ack {
        seq: u64,
        code: u16,
        #[serde(default)]
        description: String,
    },
    /// Hand a session over to the replica where its client reconnected.
    Handover(HandoverRequest),
    /// The handed-over session, or why not.
    HandoverReply(HandoverReply),
}

/// The outcome of one remote delivery.
type Ack = (u16, String);

/// The Message Node of one replica. Shared as `Arc<Node>` by every connection and task.
pub struct Node {
    pub(crate) config: MsgNodeConfig,
    pub(crate) domain: Domain,
    pub(crate) node_id: String,
    channel: String,
    pub(crate) kv: Arc<dyn KvStore>,
    pub(crate) bus: Arc<dyn EventBus>,
    pub(crate) verifier: TokenVerifier,
    pub(crate) policy: PolicyEngine,
    pub(crate) sync: Syncher,
    pub(crate) reserved: ReservedTable,
    pub(crate) shutdown: Shutdown,
    /// Live sessions by resume token.
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Addresses bound on this replica.
    pub(crate) local: RwLock<HashMap<String, Binding>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Ack>>>,
    pub(crate) handovers: Mutex<HashMap<u64, oneshot::Sender<HandoverReply>>>,
    pub(crate) next_seq: AtomicU64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.node_id)
            .field("domain", &self.domain.name())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Builds a node; call [`Node::start`] to run its background tasks. Fails on a config
    /// [`MsgNodeConfig::validate`] would refuse (a bad reserved-address table).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: MsgNodeConfig,
        kv: Arc<dyn KvStore>,
        bus: Arc<dyn EventBus>,
        verifier: TokenVerifier,
        policy: PolicyEngine,
        sync: Syncher,
        shutdown: Shutdown,
    ) -> Result<Arc<Self>, MsgNodeError> {
        let reserved = ReservedTable::new(&config.registry, &config.domain)
            .map_err(|e| MsgNodeError::Internal(format!("config: {e}")))?;
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
        Ok(Arc::new(Self {
            domain: Domain::new(&config.domain),
            channel: address::node_channel(&node_id),
            node_id,
            config,
            kv,
            bus,
            verifier,
            policy,
            sync,
            reserved,
            shutdown,
            sessions: Mutex::new(HashMap::new()),
            local: RwLock::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            handovers: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
        }))
    }

    /// Returns this replica's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Returns the policy enforcement point (to watch reloads).
    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    /// Subscribes to this replica's channel and to revocations, and starts the address refresher.
    /// Returns once the subscriptions are in place.
    pub async fn start(self: &Arc<Self>) -> Result<(), MsgNodeError> {
        let mut deliveries = self
            .bus
            .subscribe(std::slice::from_ref(&self.channel))
            .await?;
        let mut revocations = self
            .bus
            .subscribe(&[topics::AUTH_REVOCATIONS.to_owned()])
            .await?;
        let node = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stop.wait() => return,
                    m = deliveries.recv() => m,
                };
                let (Some(message), Some(node)) = (message, node.upgrade()) else {
                    return;
                };
                node.on_node_message(&message.payload).await;
            }
        });
        let node = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stop.wait() => return,
                    m = revocations.recv() => m,
                };
                let (Some(message), Some(node)) = (message, node.upgrade()) else {
                    return;
                };
                if let Some(revoked) = decode_revocation(&message.payload) {
                    node.revoke(&revoked.jti).await;
                }
            }
        });
        self.spawn_refresher();
        Ok(())
    }

    pub(crate) fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the number of live sessions on this replica.
    pub fn session_count(&self) -> usize {
        self.sessions().len()
    }

    /// Opens a session for a verified token, or takes over the one named by `resume`.
    /// Returns the session and whether it was resumed.
    pub async fn open_session(
        self: &Arc<Self>,
        claims: &Claims,
        is_service: bool,
        resume: Option<&str>,
    ) -> Result<(Arc<Session>, bool), MsgNodeError> {
        if self.shutdown.is_triggered() {
            return Err(MsgNodeError::Unavailable("node is shutting down".into()));
        }
        if let Some(token) = resume.filter(|t| !t.is_empty()) {
            let local = self.sessions().get(token).cloned();
            let session = match local {
                Some(session) => session,
                // Held by another replica (a reconnect landed elsewhere): take it over.
                None => self.take_over(token, claims, is_service).await?,
            };
            if session.identity.subject != claims.sub || session.identity.is_service != is_service {
                return Err(MsgNodeError::Forbidden(
                    "the resume token belongs to another identity".into(),
                ));
            }
            return Ok((session, true));
        }
        if self.session_count() >= self.config.limits.max_sessions {
            return Err(MsgNodeError::Unavailable(format!(
                "this node holds its limit of {} sessions; try another replica later",
                self.config.limits.max_sessions
            )));
        }
        let per_identity = self.config.limits.max_sessions_per_identity;
        let mine = self
            .sessions()
            .values()
            .filter(|s| s.identity.subject == claims.sub)
            .count();
        if mine >= per_identity {
            return Err(MsgNodeError::RateLimited(format!(
                "this identity already has {per_identity} sessions on this replica; close one \
                 or resume it instead of opening another"
            )));
        }
        // Policies and discovery speak of plain names: `user:alice` is `alice`,
        // `service:conference` is `conference`.
        let username = claims.sub.strip_prefix("user:");
        let name = username
            .or_else(|| claims.sub.strip_prefix("service:"))
            .unwrap_or(&claims.sub);
        let identity = Identity {
            subject: claims.sub.clone(),
            name: name.to_owned(),
            display_name: claims.name.clone(),
            user: username
                .filter(|_| !is_service)
                .map(|u| self.domain.user(u)),
            is_service,
        };
        let session = Session::new(
            |id| self.domain.runtime(id),
            identity,
            Credential::new(&self.verifier, claims.clone()),
            self.config.limits.queue_len,
        );
        self.sessions()
            .insert(session.resume_token.clone(), session.clone());
        metrics::gauge!("msgnode_sessions").increment(1.0);
        self.publish_session(&session).await?;
        // A session nobody attaches to (failed upgrade) ends like a disconnected one.
        self.start_grace(&session, 0);
        Ok((session, false))
    }

    /// Returns the first frame of every connection: who the client is and how to resume.
    pub fn welcome(&self, session: &Session, resumed: bool) -> Envelope {
        Envelope::new(
            MessageId::Str("session".into()),
            MessageType::Response,
            self.domain.node(),
            session.runtime.clone(),
            json!({ "code": 200, "value": self.session_info(session, resumed) }),
        )
    }

    fn session_info(&self, session: &Session, resumed: bool) -> Value {
        json!({
            "runtime": session.runtime,
            "identity": session.identity.name,
            "user": session.identity.user,
            "resume_token": session.resume_token,
            "resumed": resumed,
            "previous_close": session.last_close().filter(|_| resumed).map(|r| json!({
                "code": r.ws_code(), "reason": r.text(),
            })),
            "addresses": session.addresses(),
            "node": self.node_id,
            "domain": self.domain.name(),
            "max_message_bytes": self.config.limits.max_message_bytes,
            "grace_secs": self.config.timing.grace_secs,
        })
    }

    /// Handles the end of the current attachment `generation`, closed for `reason` (if the node
    /// closed it): a revoked token ends the session at once, anything else starts the grace
    /// period.
    pub async fn after_detach(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        reason: Option<CloseReason>,
    ) {
        if reason == Some(CloseReason::Revoked) {
            self.end_session(session, CloseReason::Revoked).await;
        } else {
            self.start_grace(session, generation);
        }
    }

    /// Starts the grace period after attachment `generation` ended.
    pub fn start_grace(self: &Arc<Self>, session: &Arc<Session>, generation: u64) {
        let node = Arc::downgrade(self);
        let session = session.clone();
        let grace = self.config.timing.grace();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if let Some(node) = node.upgrade()
                && session.expired_since(generation)
            {
                tracing::debug!(session = %session.id, "grace period over");
                node.end_session(&session, CloseReason::Shutdown).await;
            }
        });
    }

    /// Ends a session: closes its connection, unregisters its addresses everywhere and deletes
    /// the objects its hyperties reported (their observers get a delete).
    pub async fn end_session(&self, session: &Arc<Session>, reason: CloseReason) {
        let subscriptions = session.subscription_keys();
        let addresses = session.terminate(reason);
        if self.sessions().remove(&session.resume_token).is_some() {
            metrics::gauge!("msgnode_sessions").decrement(1.0);
            self.unpublish_session(session).await;
        }
        for address in addresses {
            self.unbind(session, &address).await;
            self.delete_objects_of(session, &address).await;
        }
        for key in subscriptions {
            if let Some((object, observer)) = key.split_once('|') {
                let _ = self
                    .sync
                    .unsubscribe(
                        object,
                        Party {
                            address: observer,
                            identity: &session.identity.subject,
                        },
                    )
                    .await;
            }
        }
    }

    /// Deletes the objects `address` (a hyperty of `session` that is gone) reported.
    pub(crate) async fn delete_objects_of(&self, session: &Session, address: &str) {
        let reporter = Party {
            address,
            identity: &session.identity.subject,
        };
        match self.sync.delete_all_of(reporter).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(%address, objects = n, "objects of a departed hyperty deleted")
            }
            // They expire with their TTL instead.
            Err(error) => {
                tracing::warn!(%error, %address, "could not delete a departed hyperty's objects")
            }
        }
    }

    /// Cuts off every session whose current token is `jti`.
    pub async fn revoke(&self, jti: &str) {
        let victims: Vec<Arc<Session>> = self
            .sessions()
            .values()
            .filter(|s| s.jti() == jti)
            .cloned()
            .collect();
        for session in victims {
            tracing::info!(session = %session.id, identity = %session.identity.name, "token revoked; closing");
            self.end_session(&session, CloseReason::Revoked).await;
        }
    }

    /// Closes every connection and ends every session (shutdown).
    pub async fn close_all(&self) {
        let all: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        for session in all {
            self.end_session(&session, CloseReason::Shutdown).await;
        }
    }

    /// Handles one envelope from `session`; `size` is its size on the wire. Answers (errors
    /// included) are queued to the session.
    pub async fn handle(self: &Arc<Self>, session: &Arc<Session>, envelope: Envelope, size: usize) {
        metrics::counter!("msgnode_messages_total", "type" => envelope.kind.as_str()).increment(1);
        // A message that carries trace context is recorded as a span of that trace; others
        // only at debug level, so untraced traffic costs next to nothing.
        let span = match &envelope.trace {
            Some(trace) => {
                let span = tracing::info_span!("msgnode.message", r#type = %envelope.kind, to = %envelope.to, identity = %session.identity.name);
                let map: HashMap<String, String> =
                    trace.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                propagation::set_parent(&span, propagation::extract_map(&map));
                span
            }
            None => {
                tracing::debug_span!("msgnode.message", r#type = %envelope.kind, to = %envelope.to)
            }
        };
        self.handle_in_span(session, envelope, size)
            .instrument(span)
            .await;
    }

    async fn handle_in_span(
        self: &Arc<Self>,
        session: &Arc<Session>,
        envelope: Envelope,
        size: usize,
    ) {
        let is_response = envelope.kind == MessageType::Response;
        let reply = match self.dispatch(session, &envelope, size).await {
            Ok(Some(reply)) => reply,
            Ok(None) => return,
            Err(e) if is_response => {
                tracing::debug!(error = %e, to = %envelope.to, "dropped a response");
                return;
            }
            Err(e) => {
                metrics::counter!("msgnode_errors_total", "code" => e.code().to_string())
                    .increment(1);
                envelope.reply_err(e.code(), e.to_string())
            }
        };
        let _ = session.enqueue(reply);
    }

    async fn dispatch(
        self: &Arc<Self>,
        session: &Arc<Session>,
        envelope: &Envelope,
        size: usize,
    ) -> Result<Option<Envelope>, MsgNodeError> {
        let decision = self.policy.evaluate(&PolicyContext {
            identity: &session.identity.name,
            is_service: session.identity.is_service,
            envelope,
            size,
            now: Instant::now(),
        });
        if let Decision::Deny { code, reason } = decision {
            return Err(MsgNodeError::from_code(code, reason));
        }
        if !session.owns(&envelope.from) {
            return Err(MsgNodeError::Forbidden(format!(
                "'from' {} is not an address of this connection",
                envelope.from
            )));
        }
        let to = envelope.to.as_str();
        if to == self.domain.registry() {
            self.registry(session, envelope).await.map(Some)
        } else if to == self.domain.sync() || to.starts_with("object://") {
            self.objects(session, envelope).await
        } else if to == self.domain.node() {
            self.node_request(session, envelope).await.map(Some)
        } else {
            self.route(session, envelope.clone()).await.map(|()| None)
        }
    }

    async fn node_request(
        &self,
        session: &Session,
        envelope: &Envelope,
    ) -> Result<Envelope, MsgNodeError> {
        match (envelope.kind, envelope.body_str("resource")) {
            (MessageType::Read, Some("session")) => {
                Ok(envelope.reply_ok(self.session_info(session, false)))
            }
            (MessageType::Update, Some("token")) => self.renew_token(session, envelope).await,
            _ => Err(MsgNodeError::BadRequest(format!(
                "{} understands read with body {{\"resource\":\"session\"}} and update with \
                 body {{\"resource\":\"token\",\"token\":\"<JWT>\"}}",
                self.domain.node()
            ))),
        }
    }

    /// Renews the session's token with the one in `body.token`: it must be valid and of the
    /// same subject (403 otherwise). From then on the session expires and is revoked with the
    /// new token, so a long session outlives its first token.
    async fn renew_token(
        &self,
        session: &Session,
        envelope: &Envelope,
    ) -> Result<Envelope, MsgNodeError> {
        let token = envelope.body_str("token").ok_or_else(|| {
            MsgNodeError::BadRequest("a token update needs body.token: the fresh JWT".into())
        })?;
        let claims = self.verifier.verify(token).await?;
        if claims.sub != session.identity.subject {
            return Err(MsgNodeError::Forbidden(
                "the token belongs to another identity; open a new connection for it".into(),
            ));
        }
        if session.identity.is_service && !claims.grants.services.attach {
            return Err(MsgNodeError::Forbidden(
                "the token lacks the services.attach grant".into(),
            ));
        }
        session.renew(claims)?;
        let exp = session.credential().claims().exp;
        tracing::debug!(session = %session.id, exp, "token renewed");
        Ok(envelope.reply_ok(json!({ "exp": exp })))
    }

    /// Answers a frame that did not parse (or binary data). It costs a token of the sender's
    /// rate bucket like a message does, so once the bucket is empty the answer is 429 instead
    /// of a diagnosis: garbage cannot be sent faster than messages.
    pub fn refuse_frame(&self, session: &Session, mut error: FrameError) {
        let decision = self.policy.charge_malformed(
            &session.identity.name,
            session.identity.is_service,
            Instant::now(),
        );
        if let Decision::Deny { code, reason } = decision {
            error.code = code;
            error.description = reason;
        }
        metrics::counter!("msgnode_errors_total", "code" => error.code.to_string()).increment(1);
        let _ = session.enqueue(error.response(self.domain.node(), &session.runtime));
    }

    /// Delivers a message to a hyperty address, wherever it is bound.
    async fn route(
        self: &Arc<Self>,
        session: &Arc<Session>,
        envelope: Envelope,
    ) -> Result<(), MsgNodeError> {
        let local = self.local_session(&envelope.to);
        if let Some(target) = local {
            metrics::counter!("msgnode_routed_total", "path" => "local").increment(1);
            return deliver_local(&target, envelope);
        }
        if !self.domain.is_hyperty(&envelope.to) {
            return Err(MsgNodeError::NotFound(format!(
                "no such address: {}",
                envelope.to
            )));
        }
        let record = self
            .lookup(&envelope.to)
            .await?
            .filter(|r| r.node != self.node_id)
            .ok_or_else(|| MsgNodeError::NotFound(format!("no such address: {}", envelope.to)))?;
        metrics::counter!("msgnode_routed_total", "path" => "remote").increment(1);
        let channel = address::node_channel(&record.node);
        if envelope.kind == MessageType::Response {
            let message = NodeMessage::Deliver {
                seq: 0,
                reply_to: String::new(),
                envelope,
            };
            self.bus.publish(&channel, encode(&message)).await?;
            return Ok(());
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(seq, tx);
        let id = envelope.id.clone();
        let (from, to) = (envelope.from.clone(), envelope.to.clone());
        let message = NodeMessage::Deliver {
            seq,
            reply_to: self.node_id.clone(),
            envelope,
        };
        if let Err(e) = self.bus.publish(&channel, encode(&message)).await {
            self.pending().remove(&seq);
            return Err(e.into());
        }
        let node = Arc::downgrade(self);
        let session = session.clone();
        let timeout = self.config.timing.delivery_timeout();
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(timeout, rx).await;
            let error = match outcome {
                Ok(Ok((200, _))) => return,
                Ok(Ok((code, description))) => MsgNodeError::from_code(code, description),
                Ok(Err(_)) | Err(_) => {
                    if let Some(node) = node.upgrade() {
                        node.pending().remove(&seq);
                    }
                    metrics::counter!("msgnode_delivery_timeouts_total").increment(1);
                    MsgNodeError::Timeout(format!(
                        "delivery to {to} was not confirmed within {} ms",
                        timeout.as_millis()
                    ))
                }
            };
            let request = Envelope::new(id, MessageType::Forward, from, to, Value::Null);
            let _ = session.enqueue(request.reply_err(error.code(), error.to_string()));
        });
        Ok(())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Ack>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the local session an address is bound to.
    pub(crate) fn local_session(&self, address: &str) -> Option<Arc<Session>> {
        self.local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(address)
            .map(|b| b.session.clone())
    }

    async fn on_node_message(self: &Arc<Self>, payload: &[u8]) {
        let message: NodeMessage = match serde_json::from_slice(payload) {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, "undecodable message on the node channel");
                return;
            }
        };
        match message {
            NodeMessage::Deliver {
                seq,
                reply_to,
                envelope,
            } => {
                let outcome = match self.local_session(&envelope.to) {
                    Some(target) => deliver_local(&target, envelope),
                    None => Err(MsgNodeError::NotFound(format!(
                        "no such address: {}",
                        envelope.to
                    ))),
                };
                if seq == 0 || reply_to.is_empty() {
                    return;
                }
                let (code, description) = match outcome {
                    Ok(()) => (200, String::new()),
                    Err(e) => (e.code(), e.to_string()),
                };
                let ack = NodeMessage::Ack {
                    seq,
                    code,
                    description,
                };
                // Acks need no order; publishing them off this loop lets them pipeline instead
                // of costing one Redis round trip per delivery.
                let bus = self.bus.clone();
                tokio::spawn(async move {
                    if let Err(error) = bus
                        .publish(&address::node_channel(&reply_to), encode(&ack))
                        .await
                    {
                        tracing::warn!(%error, "could not acknowledge a delivery");
                    }
                });
            }
            NodeMessage::Ack {
                seq,
                code,
                description,
            } => {
                if let Some(tx) = self.pending().remove(&seq) {
                    let _ = tx.send((code, description));
                }
            }
            NodeMessage::Handover(request) => {
                // Waiting for the queue must not hold up deliveries on this channel.
                let node = self.clone();
                tokio::spawn(async move { node.hand_over(request).await });
            }
            NodeMessage::HandoverReply(reply) => self.on_handover_reply(reply),
        }
    }
}

/// Queues a message for a local session, mapping queue failures to protocol errors.
fn deliver_local(target: &Session, envelope: Envelope) -> Result<(), MsgNodeError> {
    let to = envelope.to.clone();
    match target.enqueue(envelope) {
        Ok(()) => Ok(()),
        Err(EnqueueError::Full) => Err(MsgNodeError::Timeout(format!(
            "delivery to {to} failed: its connection is not reading its messages"
        ))),
        Err(EnqueueError::Gone) => Err(MsgNodeError::NotFound(format!("no such address: {to}"))),
    }
}

pub(crate) fn encode(message: &NodeMessage) -> Bytes {
    Bytes::from(serde_json::to_vec(message).unwrap_or_default())
}
