//! Glue between the protocol and the Syncher ([`crate::sync`]): data objects at
//! `domain://sync.<domain>` and at their own `object://<domain>/<uuid>` URLs.
//!
//! `create` goes to `domain://sync.<domain>`, with an optional `body.observers`: the identities
//! (token subjects, or `prefix*` patterns) that may read and subscribe; without it only the
//! reporter's own identity may. `read`, `subscribe`, `unsubscribe`, `update` and
//! `delete` go to the object URL (or to `domain://sync.<domain>` with `body.resource` = the
//! URL). A subscription forwards every change to the observing hyperty as an `update` or
//! `delete` message from the object URL with the version as id. The snapshot answer is queued
//! before the forwarder starts, so an observer always sees the snapshot first and then versions
//! in increasing order.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::{
    envelope::{Envelope, MessageId, MessageType},
    error::MsgNodeError,
    node::Node,
    session::Session,
    sync::{ChangeKind, ChangeStream, Observers, Party, SyncError},
};

impl From<SyncError> for MsgNodeError {
    fn from(e: SyncError) -> Self {
        MsgNodeError::from_code(e.code(), e.to_string())
    }
}

impl Node {
    /// Handles a message to the sync service or to an object. Returns the answer, or `None`
    /// when it was already queued (subscribe).
    pub(crate) async fn objects(
        &self,
        session: &Arc<Session>,
        envelope: &Envelope,
    ) -> Result<Option<Envelope>, MsgNodeError> {
        let from = envelope.from.as_str();
        let by = Party {
            address: from,
            identity: &session.identity.subject,
        };
        if envelope.to == self.domain.sync() && envelope.kind == MessageType::Create {
            if envelope.body_str("resource") != Some("object") {
                return Err(MsgNodeError::BadRequest(
                    "sync create needs body {\"resource\":\"object\",\"schema\":\"...\",\"value\":{...}}"
                        .into(),
                ));
            }
            self.require_hyperty(from, "create objects")?;
            let schema = envelope
                .body_str("schema")
                .ok_or_else(|| MsgNodeError::BadRequest("body.schema must be a string".into()))?;
            let value = envelope.body.get("value").cloned().unwrap_or(json!({}));
            let info = match envelope.body.get("observers") {
                None | Some(Value::Null) => self.sync.create(by, schema, value).await?,
                Some(list) => {
                    let patterns: Vec<String> =
                        serde_json::from_value(list.clone()).map_err(|_| {
                            MsgNodeError::BadRequest(
                                "body.observers must be a list of identities or patterns, such as \
                             [\"user:bob\", \"user:*\"]"
                                    .into(),
                            )
                        })?;
                    let observers = Observers::new(patterns).map_err(MsgNodeError::BadRequest)?;
                    self.sync.create_for(by, schema, value, observers).await?
                }
            };
            return Ok(Some(envelope.reply_ok(json!({
                "url": info.url,
                "schema": info.schema,
                "reporter": info.reporter,
                "version": info.version,
            }))));
        }
        let object = if envelope.to == self.domain.sync() {
            envelope.body_str("resource").ok_or_else(|| {
                MsgNodeError::BadRequest("body.resource must be the object URL".into())
            })?
        } else {
            envelope.to.as_str()
        };
        match envelope.kind {
            MessageType::Read => {
                let s = self.sync.read(object, by).await?;
                Ok(Some(envelope.reply_ok(json!({
                    "url": s.url, "schema": s.schema, "reporter": s.reporter,
                    "version": s.version, "value": s.value,
                }))))
            }
            MessageType::Subscribe => {
                self.require_hyperty(from, "subscribe")?;
                let (s, stream) = self.sync.subscribe(object, by).await?;
                let reply = envelope.reply_ok(json!({
                    "url": s.url, "schema": s.schema, "reporter": s.reporter,
                    "version": s.version, "value": s.value,
                }));
                let _ = session.enqueue(reply);
                forward_changes(session, object, from, stream);
                Ok(None)
            }
            MessageType::Unsubscribe => {
                self.sync.unsubscribe(object, by).await?;
                session.remove_subscription(&format!("{object}|{from}"));
                Ok(Some(envelope.reply_ok(Value::Null)))
            }
            MessageType::Update => {
                let version = envelope
                    .body
                    .get("version")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| {
                        MsgNodeError::BadRequest(
                            "body.version must be the version the update is based on".into(),
                        )
                    })?;
                let value = envelope.body.get("value").cloned().ok_or_else(|| {
                    MsgNodeError::BadRequest("body.value must be the new value".into())
                })?;
                let version = self.sync.update(object, by, version, value).await?;
                Ok(Some(envelope.reply_ok(json!({ "version": version }))))
            }
            MessageType::Delete => {
                self.sync.delete(object, by).await?;
                Ok(Some(envelope.reply_ok(Value::Null)))
            }
            other => Err(MsgNodeError::BadRequest(format!(
                "objects understand read, subscribe, unsubscribe, update and delete, not {other}"
            ))),
        }
    }

    fn require_hyperty(&self, from: &str, what: &str) -> Result<(), MsgNodeError> {
        if self.domain.is_hyperty(from) {
            Ok(())
        } else {
            Err(MsgNodeError::BadRequest(format!(
                "only hyperties may {what}; send from a registered hyperty address"
            )))
        }
    }
}

/// Forwards every change of `stream` to `observer` (a hyperty of `session`) as `update` /
/// `delete` messages from the object, until a delete, the session's end or an unsubscribe.
pub(crate) fn forward_changes(
    session: &Arc<Session>,
    object: &str,
    observer: &str,
    mut stream: ChangeStream,
) {
    let target = Arc::downgrade(session);
    let to = observer.to_owned();
    let task = tokio::spawn(async move {
        while let Some(change) = stream.recv().await {
            let Some(target) = target.upgrade() else {
                return;
            };
            let (kind, body) = match change.kind {
                ChangeKind::Update(value) => (
                    MessageType::Update,
                    json!({ "version": change.version, "value": value }),
                ),
                ChangeKind::Delete => (MessageType::Delete, json!({ "version": change.version })),
            };
            let message = Envelope::new(
                MessageId::Int(i64::try_from(change.version).unwrap_or(i64::MAX)),
                kind,
                change.url,
                to.clone(),
                body,
            );
            if target.enqueue(message).is_err() || kind == MessageType::Delete {
                return;
            }
        }
    });
    session.add_subscription(format!("{object}|{observer}"), task.abort_handle());
}
