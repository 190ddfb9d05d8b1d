//! One bench client: a WebSocket connection with one registered hyperty.
//!
//! Setup speaks the protocol in full (welcome, registry `create`). Under load the client
//! writes `forward` messages to its group's other hyperties when the pacer tells it to and
//! reads whatever arrives: a forward carries its send time in `body.t` (nanoseconds since the
//! bench started; sender and receiver share this process's monotonic clock), anything else is
//! an error response or an unexpected frame and is counted as such.

use std::{
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

use crate::stats::Stats;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Read buffer per connection; frames larger than this still arrive (the buffer grows).
const READ_BUFFER_BYTES: usize = 8 * 1024;

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

/// Connects to `ws_url` with `token`, reads the welcome and registers one hyperty.
pub async fn connect(ws_url: &str, token: &str) -> anyhow::Result<Connected> {
    let url = format!("{ws_url}?access_token={token}");
    // A small read buffer: tungstenite zero-fills the free part of it before every read, which
    // with the default 128 KiB costs more than the messages. Nagle off: every forward is a small
    // frame that should leave at once.
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .context("WebSocket connect")?;
    let welcome = next_json(&mut ws).await?;
    let runtime = welcome["body"]["value"]["runtime"]
        .as_str()
        .context("welcome without body.value.runtime")?
        .to_owned();
    let registry = format!(
        "domain://registry.{}",
        welcome["body"]["value"]["domain"]
            .as_str()
            .context("welcome without body.value.domain")?
    );
    let create = serde_json::json!({
        "id": 1, "type": "create", "from": runtime, "to": registry,
        "body": { "resource": "hyperty", "descriptor": { "name": "msg-bench" } }
    });
    ws.send(Message::text(create.to_string())).await?;
    let reply = next_json(&mut ws).await?;
    if reply["body"]["code"] != 200 {
        bail!("hyperty registration refused: {reply}");
    }
    let hyperty = reply["body"]["value"]["address"]
        .as_str()
        .context("registration reply without body.value.address")?
        .to_owned();
    Ok(Connected { ws, hyperty })
}

async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .context("no frame within 10 s")?
        .context("connection closed")??;
    match frame {
        Message::Text(text) => Ok(serde_json::from_str(text.as_str())?),
        other => bail!("unexpected frame {other:?}"),
    }
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
                    if ws.feed(Message::text(frame)).await.is_err() {
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
                    Some(Ok(Message::Text(text))) => {
                        let text = text.as_str();
                        match forward_time(text) {
                            Some(t) => lock(&stats).on_received(now.saturating_sub(t)),
                            None => lock(&stats).on_other_frame(text),
                        }
                    }
                    Some(Ok(Message::Close(close))) => {
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
