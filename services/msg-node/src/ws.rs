//! The browser gateway: WebSocket `/msg?access_token=<JWT>[&resume=<token>]`.
//!
//! The token is checked before the upgrade (401 without a valid one, 410 for an unknown resume
//! token), so a refused client never gets a socket. `?access_token=` is accepted here only:
//! browsers cannot set headers on a WebSocket upgrade; every other route takes the
//! `Authorization` header alone. After the upgrade the connection attaches to its session,
//! sends the welcome, and then one task both reads frames (each parsed and handed to
//! [`Node::handle`], errors answered in-band) and writes the session's queue.
//!
//! Contracts: no message larger than `limits.max_message_bytes` is ever buffered: the
//! WebSocket layer refuses it from its header and the node closes with 1009. Malformed frames
//! cost a rate token like messages (429 once the bucket is empty). The node closes the socket
//! with an application close code when the token is revoked (4001) or expires (4002), the
//! client is a slow consumer (4008), or the session is resumed elsewhere (4009); a `token`
//! update (docs/protocol.md) moves the expiry.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{
        Query, State,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
        },
    },
    http::request::Parts,
    response::{IntoResponse, Response},
};
use futures::SinkExt;
use rethink_common::token::{Credential, bearer_from_upgrade};
use serde::Deserialize;
use tungstenite::error::CapacityError;

use crate::{
    envelope::parse_frame,
    error::MsgNodeError,
    node::Node,
    session::{CloseReason, Session},
};

/// How long one write (a batch of frames) may take before the client counts as a slow consumer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most queued frames written before one flush.
const WRITE_BATCH: usize = 64;
/// Read buffer per WebSocket connection; a frame larger than this still arrives whole.
const WS_READ_BUFFER_BYTES: usize = 8 * 1024;

/// Query parameters of `/msg`.
#[derive(Debug, Deserialize)]
pub struct MsgQuery {
    /// The resume token from a previous welcome.
    resume: Option<String>,
}

/// Answers `GET /msg`.
pub async fn upgrade(
    State(node): State<Arc<Node>>,
    Query(query): Query<MsgQuery>,
    parts: Parts,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // The one route where `?access_token=` counts: browsers cannot set headers on an upgrade.
    let Some(token) = bearer_from_upgrade(&parts) else {
        return MsgNodeError::Unauthorized(
            "missing access token: connect to /msg?access_token=<JWT>".into(),
        )
        .into_response();
    };
    let claims = match node.verifier.verify(token).await {
        Ok(claims) => claims,
        Err(e) => return MsgNodeError::Token(e).into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let (session, resumed) = match node
        .open_session(&claims, false, query.resume.as_deref())
        .await
    {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    // The protocol's size limit is the transport's: a frame header announcing more is refused
    // before its payload is read, so an oversized message is never buffered or parsed.
    let limit = node.config.limits.max_message_bytes;
    // Signaling frames are small: axum's 128 KiB default read buffer is zero-filled before every
    // read and, at a thousand connections, dominated both CPU and memory in the relay benchmark.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .on_upgrade(move |socket| async move {
            let credential = Credential::new(&node.verifier, claims);
            connection(node, session, resumed, credential, socket).await;
        })
}

async fn connection(
    node: Arc<Node>,
    session: Arc<Session>,
    resumed: bool,
    credential: Credential,
    mut socket: WebSocket,
) {
    let Some(mut attachment) = session.attach(credential.clone()).await else {
        close(&mut socket, &CloseReason::Revoked).await;
        return;
    };
    metrics::gauge!("msgnode_connections", "transport" => "ws").increment(1.0);
    tracing::debug!(session = %session.id, identity = %session.identity.name, resumed, "connected");
    let closer = attachment.closer.clone();
    // Follows renewals (token messages) by itself; resolves on revocation or expiry.
    let lapsed = credential.lapsed();
    tokio::pin!(lapsed);
    let welcome = node.welcome(&session, resumed).to_json();
    let mut open = socket.send(Message::Text(welcome.into())).await.is_ok();
    let max = node.config.limits.max_message_bytes;
    let stop = node.shutdown.clone();
    // Pings find connections whose peer vanished without closing (no FIN ever arrives), so
    // their sessions enter the grace period instead of staying attached forever.
    let ping_every = node.config.timing.ping();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_seen = tokio::time::Instant::now();
    while open {
        // Checked first: once closed, nothing more is taken from the queue, so it is all
        // there for a resume.
        if closer.is_closed() {
            break;
        }
        tokio::select! {
            () = closer.closed() => break,
            _ = ping.tick() => {
                if last_seen.elapsed() > ping_every * 2 {
                    tracing::info!(session = %session.id, "no frame for two ping intervals; dropping the connection");
                    break;
                }
                let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Ping(Default::default()))).await;
                open = matches!(sent, Ok(Ok(())));
            }
            () = stop.wait() => closer.close(CloseReason::Shutdown),
            lapse = &mut lapsed => closer.close(CloseReason::lapsed(&lapse)),
            out = attachment.queue.recv() => {
                let Some(envelope) = out else { break };
                // Write what is already queued in one go and flush once: one syscall for a
                // burst instead of one per message.
                let mut batch = vec![envelope];
                while batch.len() < WRITE_BATCH {
                    match attachment.queue.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let write = async {
                    for envelope in batch {
                        socket.feed(Message::Text(envelope.to_json().into())).await?;
                    }
                    socket.flush().await
                };
                tokio::select! {
                    sent = tokio::time::timeout(SEND_TIMEOUT, write) => match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => open = false,
                        Err(_) => closer.close(CloseReason::SlowConsumer(node.config.limits.queue_len)),
                    },
                    () = closer.closed() => {}
                }
            }
            incoming = socket.recv() => {
                last_seen = tokio::time::Instant::now();
                match incoming {
                Some(Err(error)) if is_too_big(&error) => {
                    metrics::counter!("msgnode_errors_total", "code" => "1009").increment(1);
                    closer.close(CloseReason::TooBig(max));
                }
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => open = false,
                Some(Ok(Message::Text(text))) => match parse_frame(text.as_str(), max) {
                    Ok(envelope) => node.handle(&session, envelope, text.len()).await,
                    Err(error) => node.refuse_frame(&session, error),
                },
                Some(Ok(Message::Binary(_))) => {
                    let error = crate::envelope::FrameError {
                        id: crate::envelope::MessageId::Null,
                        from: None,
                        to: None,
                        code: 400,
                        description: "binary frames are not part of the protocol; send JSON text frames".into(),
                    };
                    node.refuse_frame(&session, error);
                }
                Some(Ok(_)) => {}
                }
            }
        }
    }
    if let Some(reason) = closer.reason() {
        tracing::info!(session = %session.id, reason = %reason.text(), "closing connection");
        close(&mut socket, &reason).await;
    }
    metrics::gauge!("msgnode_connections", "transport" => "ws").decrement(1.0);
    let generation = attachment.generation;
    drop(attachment);
    if session.detach(generation, closer.reason()) {
        node.after_detach(&session, generation, closer.reason())
            .await;
    }
}

/// Returns true for the read error of a message or frame over the size limit.
fn is_too_big(error: &axum::Error) -> bool {
    let inner = std::error::Error::source(error);
    matches!(
        inner.and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(
            CapacityError::MessageTooLong { .. }
        ))
    )
}

async fn close(socket: &mut WebSocket, reason: &CloseReason) {
    let frame = CloseFrame {
        code: reason.ws_code(),
        reason: reason.text().into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.send(Message::Close(Some(frame))),
    )
    .await;
}
