//! Resume on another replica: the session moves to where its client reconnected.
//!
//! Every session is listed in the session directory ([`address::session_key`], keyed by the
//! hash of its resume token, TTL-refreshed like addresses) with the replica that holds it. A
//! resume that lands on a replica without the session asks the holder over its bus channel;
//! the holder checks the identity, closes the old connection, drains the queue and replies with
//! the session's state; the new replica rebinds the addresses to itself, re-subscribes the
//! observed objects (sending the current snapshot as an `update`, since changes may have passed
//! during the move) and queues what was waiting. Messages that reach the old replica during the
//! move are answered 404 — the same as a message in flight when a connection breaks.

use std::sync::{Arc, PoisonError, atomic::Ordering};

use bytes::Bytes;
use rethink_common::token::{Claims, Credential};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use crate::{
    address,
    envelope::{Envelope, MessageId, MessageType},
    error::MsgNodeError,
    node::{Node, NodeMessage, encode},
    objects::forward_changes,
    registry::{AddressRecord, Binding},
    session::{CloseReason, Identity, Session},
};

/// Asks the holder of a session to hand it over.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandoverRequest {
    seq: u64,
    reply_to: String,
    resume_token: String,
    subject: String,
    is_service: bool,
}

/// The answer: the session's state, or an error code and why.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandoverReply {
    seq: u64,
    code: u16,
    #[serde(default)]
    description: String,
    #[serde(default)]
    state: Option<HandedOver>,
}

/// Everything a session is, in transit.
#[derive(Debug, Serialize, Deserialize)]
pub struct HandedOver {
    id: String,
    runtime: String,
    resume_token: String,
    identity: Identity,
    addresses: Vec<AddressRecord>,
    queued: Vec<Envelope>,
    subscriptions: Vec<String>,
    last_close: Option<CloseReason>,
}

impl Node {
    /// Lists a session in the directory as held here.
    pub(crate) async fn publish_session(&self, session: &Session) -> Result<(), MsgNodeError> {
        self.kv
            .set(
                &address::session_key(&session.resume_token),
                Bytes::from(self.node_id.clone()),
                Some(self.config.timing.address_ttl()),
            )
            .await?;
        Ok(())
    }

    /// Removes a session from the directory if it is still listed as held here.
    pub(crate) async fn unpublish_session(&self, session: &Session) {
        let key = address::session_key(&session.resume_token);
        let _ = self
            .kv
            .compare_and_swap(&key, Some(self.node_id.as_bytes()), None, None)
            .await;
    }

    /// Refreshes the directory entries of every session held here.
    pub(crate) async fn refresh_sessions(&self) {
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        for session in sessions {
            if let Err(error) = self.publish_session(&session).await {
                tracing::warn!(%error, "session directory refresh failed; retrying next round");
                return;
            }
        }
    }

    /// Takes over a session held by another replica.
    pub(crate) async fn take_over(
        self: &Arc<Self>,
        resume_token: &str,
        claims: &Claims,
        is_service: bool,
    ) -> Result<Arc<Session>, MsgNodeError> {
        let gone = || {
            MsgNodeError::Gone(
                "resume token unknown or expired; connect without it for a new session".into(),
            )
        };
        let holder = self
            .kv
            .get(&address::session_key(resume_token))
            .await?
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
            .filter(|holder| *holder != self.node_id)
            .ok_or_else(gone)?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.handovers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(seq, tx);
        let request = NodeMessage::Handover(HandoverRequest {
            seq,
            reply_to: self.node_id.clone(),
            resume_token: resume_token.to_owned(),
            subject: claims.sub.clone(),
            is_service,
        });
        self.bus
            .publish(&address::node_channel(&holder), encode(&request))
            .await?;
        let reply = tokio::time::timeout(self.config.timing.delivery_timeout(), rx).await;
        self.handovers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&seq);
        let reply = match reply {
            Ok(Ok(reply)) => reply,
            _ => {
                return Err(MsgNodeError::Gone(format!(
                    "the replica holding this session ({holder}) did not hand it over in time; \
                     connect without resume"
                )));
            }
        };
        match (reply.code, reply.state) {
            (200, Some(state)) => Ok(self.adopt(state, claims).await),
            (403, _) => Err(MsgNodeError::Forbidden(reply.description)),
            _ => Err(gone()),
        }
    }

    pub(crate) fn on_handover_reply(&self, reply: HandoverReply) {
        let waiting = self
            .handovers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&reply.seq);
        if let Some(tx) = waiting {
            let _ = tx.send(reply);
        }
    }

    /// Answers a handover request for a session held here.
    pub(crate) async fn hand_over(self: Arc<Self>, request: HandoverRequest) {
        let session = self.sessions().get(&request.resume_token).cloned();
        let (code, description, state) = match session {
            None => (404, "no such session".to_owned(), None),
            Some(s)
                if s.identity.subject != request.subject
                    || s.identity.is_service != request.is_service =>
            {
                (
                    403,
                    "the resume token belongs to another identity".to_owned(),
                    None,
                )
            }
            Some(session) => {
                if self.sessions().remove(&session.resume_token).is_some() {
                    metrics::gauge!("msgnode_sessions").decrement(1.0);
                }
                let (queued, addresses, subscriptions, last_close) = session.hand_over().await;
                let records = {
                    let mut local = self.local.write().unwrap_or_else(PoisonError::into_inner);
                    addresses
                        .iter()
                        .filter_map(|a| match local.get(a) {
                            Some(b) if b.session.id == session.id => local.remove(a),
                            _ => None,
                        })
                        .filter_map(|b| serde_json::from_slice::<AddressRecord>(&b.record).ok())
                        .collect()
                };
                tracing::info!(session = %session.id, to = %request.reply_to, "session handed over");
                metrics::counter!("msgnode_handovers_total").increment(1);
                let state = HandedOver {
                    id: session.id.clone(),
                    runtime: session.runtime.clone(),
                    resume_token: session.resume_token.clone(),
                    identity: session.identity.clone(),
                    addresses: records,
                    queued,
                    subscriptions,
                    last_close,
                };
                (200, String::new(), Some(state))
            }
        };
        let reply = NodeMessage::HandoverReply(HandoverReply {
            seq: request.seq,
            code,
            description,
            state,
        });
        if let Err(error) = self
            .bus
            .publish(&address::node_channel(&request.reply_to), encode(&reply))
            .await
        {
            tracing::warn!(%error, "could not answer a handover request");
        }
    }

    /// Makes a handed-over session live here.
    async fn adopt(self: &Arc<Self>, state: HandedOver, claims: &Claims) -> Arc<Session> {
        let session = Session::restore(
            state.id,
            state.runtime,
            state.resume_token,
            state.identity,
            Credential::new(&self.verifier, claims.clone()),
            self.config.limits.queue_len,
        );
        session.set_last_close(state.last_close);
        let ttl = Some(self.config.timing.address_ttl());
        for mut record in state.addresses {
            record.node = self.node_id.clone();
            let bytes = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
            let key = address::address_key(&record.address);
            if let Err(error) = self.kv.set(&key, bytes.clone(), ttl).await {
                tracing::warn!(%error, address = %record.address, "could not rebind an address");
            }
            let user_key = record
                .user
                .as_ref()
                .map(|u| address::user_key(u, &record.address));
            if let Some(user_key) = &user_key {
                let _ = self.kv.set(user_key, bytes.clone(), ttl).await;
            }
            session.add_address(&record.address);
            self.local
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    record.address.clone(),
                    Binding {
                        session: session.clone(),
                        record: bytes,
                        user_key,
                    },
                );
        }
        for envelope in state.queued {
            let _ = session.enqueue(envelope);
        }
        for key in state.subscriptions {
            let Some((object, observer)) = key.split_once('|') else {
                continue;
            };
            if let Ok((snapshot, stream)) = self
                .sync
                .subscribe(
                    object,
                    crate::sync::Party {
                        address: observer,
                        identity: &session.identity.subject,
                    },
                )
                .await
            {
                let catch_up = Envelope::new(
                    MessageId::Int(i64::try_from(snapshot.version).unwrap_or(i64::MAX)),
                    MessageType::Update,
                    snapshot.url,
                    observer,
                    json!({ "version": snapshot.version, "value": snapshot.value }),
                );
                let _ = session.enqueue(catch_up);
                forward_changes(&session, object, observer, stream);
            }
        }
        self.sessions()
            .insert(session.resume_token.clone(), session.clone());
        metrics::gauge!("msgnode_sessions").increment(1.0);
        if let Err(error) = self.publish_session(&session).await {
            tracing::warn!(%error, "could not list a handed-over session");
        }
        self.start_grace(&session, 0);
        session
    }
}
