//! gRPC `rethink.v1.MsgNode.Attach` for server hyperties.
//!
//! The stream carries the same envelopes as the WebSocket (the body as JSON text) and every
//! inbound message goes through the same parser and [`Node::handle`], so the rules are the
//! same. The caller needs a token with the `services.attach` grant (`authorization: Bearer`
//! metadata); `resume-token` metadata resumes a session within its grace period. The node
//! ends the response stream with a status when it closes the session (revocation, slow
//! consumer, shutdown).

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use rethink_common::token::Credential;
use rethink_proto::v1::{self as pb, msg_node_server::MsgNode as MsgNodeApi};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    envelope::{Envelope, FrameError, MessageId, parse_frame},
    node::Node,
    session::CloseReason,
};

/// Metadata key of the resume token.
pub const RESUME_METADATA: &str = "resume-token";

/// How long one message may wait for the client before it counts as a slow consumer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The `rethink.v1.MsgNode` service.
#[derive(Debug, Clone)]
pub struct MsgNodeGrpc {
    node: Arc<Node>,
}

impl MsgNodeGrpc {
    /// Serves `node`.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<pb::Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl MsgNodeApi for MsgNodeGrpc {
    type AttachStream = EnvelopeStream;

    async fn attach(
        &self,
        request: Request<Streaming<pb::Envelope>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let node = self.node.clone();
        let claims = node.verifier.verify_grpc(&request).await?;
        if !claims.grants.services.attach {
            return Err(Status::permission_denied(
                "the token lacks the services.attach grant",
            ));
        }
        let resume = request
            .metadata()
            .get(RESUME_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (session, resumed) = node.open_session(&claims, true, resume.as_deref()).await?;
        let mut attachment = session
            .attach(Credential::new(&node.verifier, claims.clone()))
            .await
            .ok_or_else(|| Status::not_found("the session has ended"))?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<pb::Envelope, Status>>(64);
        let welcome = to_proto(&node.welcome(&session, resumed));
        tokio::spawn(async move {
            metrics::gauge!("msgnode_connections", "transport" => "grpc").increment(1.0);
            let closer = attachment.closer.clone();
            let max = node.config.limits.max_message_bytes;
            let stop = node.shutdown.clone();
            let mut open = tx.send(Ok(welcome)).await.is_ok();
            // Follows renewals (token messages) by itself; resolves on revocation or expiry.
            let credential = session.credential();
            let lapsed = credential.lapsed();
            tokio::pin!(lapsed);
            while open {
                // Checked first: once closed, nothing more is taken from the queue, so it is
                // all there for a resume.
                if closer.is_closed() {
                    break;
                }
                tokio::select! {
                    () = closer.closed() => break,
                    () = stop.wait() => closer.close(CloseReason::Shutdown),
                    lapse = &mut lapsed => closer.close(CloseReason::lapsed(&lapse)),
                    () = tx.closed() => open = false,
                    out = attachment.queue.recv() => {
                        let Some(envelope) = out else { break };
                        match tokio::time::timeout(SEND_TIMEOUT, tx.send(Ok(to_proto(&envelope)))).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => open = false,
                            Err(_) => closer.close(CloseReason::SlowConsumer(node.config.limits.queue_len)),
                        }
                    }
                    incoming = inbound.message() => match incoming {
                        Ok(Some(message)) => {
                            let parsed = from_proto(&message)
                                .and_then(|text| parse_frame(&text, max).map(|e| (e, text.len())));
                            match parsed {
                                Ok((envelope, size)) => node.handle(&session, envelope, size).await,
                                Err(error) => node.refuse_frame(&session, error),
                            }
                        }
                        Ok(None) | Err(_) => open = false,
                    },
                }
            }
            if let Some(reason) = closer.reason() {
                let status = match reason {
                    CloseReason::Revoked | CloseReason::Expired => {
                        Status::unauthenticated(reason.text())
                    }
                    CloseReason::SlowConsumer(_) | CloseReason::TooBig(_) => {
                        Status::resource_exhausted(reason.text())
                    }
                    CloseReason::Replaced => Status::aborted(reason.text()),
                    CloseReason::Shutdown => Status::unavailable(reason.text()),
                };
                let _ = tx.try_send(Err(status));
            }
            metrics::gauge!("msgnode_connections", "transport" => "grpc").decrement(1.0);
            let generation = attachment.generation;
            drop(attachment);
            if session.detach(generation, closer.reason()) {
                node.after_detach(&session, generation, closer.reason())
                    .await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Converts a protocol envelope to its protobuf form.
pub fn to_proto(envelope: &Envelope) -> pb::Envelope {
    let id = match &envelope.id {
        MessageId::Int(n) => Some(pb::envelope::Id::IdInt(*n)),
        MessageId::Str(s) => Some(pb::envelope::Id::IdStr(s.clone())),
        MessageId::Null => None,
    };
    pb::Envelope {
        id,
        r#type: envelope.kind.as_str().to_owned(),
        from: envelope.from.clone(),
        to: envelope.to.clone(),
        body: if envelope.body.is_null() {
            String::new()
        } else {
            envelope.body.to_string()
        },
        trace: envelope
            .trace
            .as_ref()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    }
}

/// Renders a protobuf envelope as the JSON text of a frame, so it goes through the same parser
/// (and limits) as WebSocket frames. A body that is not JSON is refused with 400 here.
pub fn from_proto(message: &pb::Envelope) -> Result<String, FrameError> {
    let id = match &message.id {
        Some(pb::envelope::Id::IdInt(n)) => MessageId::Int(*n),
        Some(pb::envelope::Id::IdStr(s)) => MessageId::Str(s.clone()),
        None => MessageId::Null,
    };
    let mut map = Map::new();
    if id != MessageId::Null {
        map.insert("id".into(), serde_json::to_value(&id).unwrap_or_default());
    }
    for (key, value) in [
        ("type", &message.r#type),
        ("from", &message.from),
        ("to", &message.to),
    ] {
        if !value.is_empty() {
            map.insert(key.into(), Value::from(value.clone()));
        }
    }
    if !message.body.is_empty() {
        let body = serde_json::from_str::<Value>(&message.body).map_err(|e| FrameError {
            id,
            from: Some(message.from.clone()).filter(|s| !s.is_empty()),
            to: Some(message.to.clone()).filter(|s| !s.is_empty()),
            code: 400,
            description: format!("body is not valid JSON: {e}"),
        })?;
        map.insert("body".into(), body);
    }
    if !message.trace.is_empty() {
        let trace: Map<String, Value> = message
            .trace
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        map.insert("trace".into(), Value::Object(trace));
    }
    Ok(Value::Object(map).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::MessageType;
    use serde_json::json;

    #[test]
    fn proto_round_trip_keeps_id_types() {
        for id in [MessageId::Int(5), MessageId::Str("x".into())] {
            let mut e = Envelope::new(id, MessageType::Execute, "a", "b", json!({"k": 1}));
            e.trace = Some([("traceparent".to_owned(), "00-x-y-01".to_owned())].into());
            let back = parse_frame(&from_proto(&to_proto(&e)).unwrap(), 1 << 16).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn bad_proto_bodies_are_400() {
        let m = pb::Envelope {
            id: Some(pb::envelope::Id::IdInt(1)),
            r#type: "forward".into(),
            from: "a".into(),
            to: "b".into(),
            body: "{oops".into(),
            ..pb::Envelope::default()
        };
        let e = from_proto(&m).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.description.contains("body is not valid JSON"));
    }
}
