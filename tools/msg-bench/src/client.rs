//! One bench client: a WebSocket connection with one registered hyperty.
//!
//! Setup goes through the shared client (`rethink-msg-client`: welcome, registry `create`). Under load the client
//! writes `forward` messages to its group's other hyperties when the pacer tells it to and
//! reads whatever arrives: a forward carries its send time in `body.t` (nanoseconds since the
//! bench started; sender and receiver share this process's monotonic clock), anything else is
//! an error response or an unexpected frame and is counted as such.

use std::{
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use rethink_msg_client::{Message, MessageType, TokenIn, WsLink, WsTarget, transport::WsStream};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message as Frame, protocol::WebSocketConfig};

use crate::stats::Stats;

type Ws = WsStream;

/// Read buffer per connection; frames larger than this still arrive (the buffer grows).
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Longest wait of one setup step (connect, welcome, registration).
const SETUP_WAIT: Duration = Duration::from_secs(10);

/// Returns nanoseconds since the bench's clock started.
pub fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A connected client with its addresses, before the load starts.
pub struct Connected {
    ws: Ws,
    /// The hyperty address the registry allocated.
    pub hyperty: String,
}

/// Connects to `ws_url` with `token` through the shared client's WebSocket transport (welcome
/// included) and registers one hyperty; the load loop then writes frames on the raw stream.
pub async fn connect(ws_url: &str, token: &str) -> anyhow::Result<Connected> {
    // A small read buffer: tungstenite zero-fills the free part of it before every read, which
    // with the default 128 KiB costs more than the messages. (The transport turns Nagle off:
    // every forward is a small frame that should leave at once.)
    let target = WsTarget {
        url: ws_url.to_owned(),
        token_in: TokenIn::Query,
        config: Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES)),
    };
    let mut link = WsLink::connect(&target, token, None, SETUP_WAIT)
        .await
        .context("WebSocket connect")?;
    let welcome = link.welcome().clone();
    let create = Message::new(
        MessageType::Create,
        &welcome.runtime,
        &welcome.registry(),
        json!({ "resource": "hyperty", "descriptor": { "name": "msg-bench" } }),
    )
    .with_id(1);
    let reply = link.request(&create, SETUP_WAIT).await?;
    let registered = reply
        .into_result()
        .context("hyperty registration refused")?;
    let hyperty = registered["address"]
        .as_str()
        .context("registration reply without body.value.address")?
        .to_owned();
    let (ws, _) = link.into_stream();
    Ok(Connected { ws, hyperty })
}

/// The running client: its task and the channel the pacer uses to make it send.
pub struct Handle {
    /// Each unit is one message to send now.
    pub send: mpsc::Sender<()>,
}

/// Starts the client task that sends to `peers` in turn and records what it receives.
pub fn spawn(
    connected: Connected,
    peers: Vec<String>,
    payload: Arc<str>,
    stats: Arc<Mutex<Stats>>,
) -> Handle {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(run(connected, peers, payload, stats, rx));
    Handle { send: tx }
}

async fn run(
    connected: Connected,
    peers: Vec<String>,
    payload: Arc<str>,
    stats: Arc<Mutex<Stats>>,
    mut orders: mpsc::Receiver<()>,
) {
    let Connected { mut ws, hyperty } = connected;
    let mut seq: u64 = 1;
    let mut next_peer = 0;
    loop {
        tokio::select! {
            order = orders.recv() => {
                if order.is_none() {
                    // The bench is over.
                    let _ = ws.close(None).await;
                    return;
                }
                // Coalesce whatever else is already due into one write.
                let mut due = 1;
                while orders.try_recv().is_ok() {
                    due += 1;
                }
                let mut failed = false;
                for _ in 0..due {
                    seq += 1;
                    let to = &peers[next_peer];
                    next_peer = (next_peer + 1) % peers.len();
                    let frame = format!(
                        r#"{{"id":{seq},"type":"forward","from":"{hyperty}","to":"{to}","body":{{"t":{t},"pad":"{payload}"}}}}"#,
                        t = now_nanos(),
                    );
                    if ws.feed(Frame::text(frame)).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || ws.flush().await.is_err() {
                    lock(&stats).on_closed("send failed");
                    return;
                }
                lock(&stats).on_sent(due);
            }
            frame = ws.next() => {
                let now = now_nanos();
                match frame {
                    Some(Ok(Frame::Text(text))) => {
                        let text = text.as_str();
                        match forward_time(text) {
                            Some(t) => lock(&stats).on_received(now.saturating_sub(t)),
                            None => lock(&stats).on_other_frame(text),
                        }
                    }
                    Some(Ok(Frame::Close(close))) => {
                        let reason = close.map_or_else(
                            || "closed without a reason".to_owned(),
                            |c| format!("closed {}: {}", u16::from(c.code), c.reason),
                        );
                        lock(&stats).on_closed(&reason);
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        lock(&stats).on_closed(&format!("read error: {e}"));
                        return;
                    }
                    None => {
                        lock(&stats).on_closed("connection ended");
                        return;
                    }
                }
            }
        }
    }
}

fn lock(stats: &Mutex<Stats>) -> std::sync::MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Returns the send time of a relayed forward, without parsing the whole frame (the
/// generator's core must stay cheaper per message than the node's).
fn forward_time(text: &str) -> Option<u64> {
    if !text.contains(r#""type":"forward""#) {
        return None;
    }
    let start = text.find(r#""t":"#)? + 4;
    let digits = &text[start..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_send_time_of_a_relayed_forward() {
        let frame = r#"{"id":7,"type":"forward","from":"hyperty://localhost/a","to":"hyperty://localhost/b","body":{"pad":"xx","t":123456}}"#;
        assert_eq!(forward_time(frame), Some(123_456));
        let response = r#"{"id":7,"type":"response","from":"a","to":"b","body":{"code":429,"description":"rate"}}"#;
        assert_eq!(forward_time(response), None);
        let truncated = r#"{"type":"forward","body":{"t":}}"#;
        assert_eq!(forward_time(truncated), None);
    }
}
