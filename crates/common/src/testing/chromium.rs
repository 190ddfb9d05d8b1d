//! Headless Chromium driven over the DevTools protocol (CDP), for browser tests.
//!
//! [`Chromium::launch`] starts the browser with a fresh profile and the DevTools server on a
//! free port, then keeps one WebSocket to it. A reader task routes each reply to the call that
//! waits for it (by `id`) and fans events out to every waiter, so several [`Page`]s (one CDP
//! session each, `flatten` mode) can be driven at the same time from different tasks.
//!
//! [`Chromium::close`] asks the browser to exit and waits for it, which also ends its renderer
//! and GPU processes; dropping a [`Chromium`] without closing it kills only the main process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long Chromium may take to open its DevTools server.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound of one DevTools call (a page script awaiting a promise included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Chromium::close`] waits for the browser to exit before killing it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of every launch: headless, no sandbox (containers), nothing that phones home or
/// competes for the CPU, DevTools on a free port.
const BASE_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
];

/// Extra flags for WebRTC tests: a fake camera and microphone granted without a prompt, media
/// that plays without a gesture, and pages that are not throttled when they are not in front.
pub const FAKE_MEDIA_FLAGS: &[&str] = &[
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
];

/// Why the browser could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum ChromiumError {
    /// The executable could not be started.
    #[error("cannot start {path} (install chromium or set CHROMIUM): {source}")]
    Spawn {
        /// The executable tried.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A temporary profile directory could not be made.
    #[error("cannot make a profile directory: {0}")]
    Profile(std::io::Error),
    /// The browser exited or stayed silent before announcing its DevTools address.
    #[error("chromium did not open its DevTools server: {0}")]
    NotListening(String),
    /// The DevTools WebSocket failed.
    #[error("devtools connection: {0}")]
    Connection(String),
    /// A DevTools method returned an error.
    #[error("{method}: {error}")]
    Protocol {
        /// The method called.
        method: String,
        /// The error object as Chromium sent it.
        error: Value,
    },
    /// Nothing came back in time.
    #[error("no answer to {0} within the time limit")]
    Timeout(String),
    /// A page script threw or its promise rejected.
    #[error("page script failed: {0}")]
    Script(String),
}

/// Returns the browser to run: `$CHROMIUM`, else the first of chromium, chromium-browser,
/// google-chrome on `PATH`, else `/usr/bin/chromium`.
pub fn executable() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return path.into();
    }
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;

/// The shared DevTools connection: a sender into the writer task, the replies awaited, and the
/// event fan-out.
#[derive(Clone)]
struct Connection {
    outgoing: mpsc::UnboundedSender<String>,
    pending: Pending,
    events: broadcast::Sender<Value>,
    next_id: Arc<AtomicU64>,
}

impl Connection {
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        limit: Duration,
    ) -> Result<Value, ChromiumError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        if self.outgoing.send(message.to_string()).is_err() {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(ChromiumError::Connection("closed".into()));
        }
        let reply = tokio::time::timeout(limit, rx).await;
        self.pending.lock().expect("pending lock").remove(&id);
        match reply {
            Err(_) => Err(ChromiumError::Timeout(method.to_owned())),
            Ok(Err(_)) => Err(ChromiumError::Connection(format!(
                "ended while waiting for {method}"
            ))),
            Ok(Ok(Err(error))) => Err(ChromiumError::Protocol {
                method: method.to_owned(),
                error,
            }),
            Ok(Ok(Ok(result))) => Ok(result),
        }
    }
}

/// A headless Chromium process and the DevTools connection to it. Dropping it kills the
/// browser; prefer [`Chromium::close`].
pub struct Chromium {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
    connection: Connection,
}

impl std::fmt::Debug for Chromium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chromium")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Chromium {
    /// Starts headless Chromium with the base flags and a fresh profile.
    pub async fn launch() -> Result<Self, ChromiumError> {
        Self::launch_with_args(&[]).await
    }

    /// Starts headless Chromium with the base flags, `extra` (e.g. [`FAKE_MEDIA_FLAGS`]) and a
    /// fresh profile, and connects to its DevTools server.
    pub async fn launch_with_args(extra: &[&str]) -> Result<Self, ChromiumError> {
        let profile = tempfile::tempdir().map_err(ChromiumError::Profile)?;
        let path = executable();
        let mut child = tokio::process::Command::new(&path)
            .args(BASE_FLAGS)
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ChromiumError::Spawn {
                path: path.clone(),
                source,
            })?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| ChromiumError::NotListening("no stderr".into()))?;
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Ok(url.trim().to_owned());
                }
            }
            Err(ChromiumError::NotListening("it exited".into()))
        })
        .await
        .map_err(|_| ChromiumError::NotListening(format!("silent for {START_TIMEOUT:?}")))??;
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| ChromiumError::Connection(e.to_string()))?;
        let (mut sink, mut stream) = ws.split();
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = to_send.recv().await {
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(4096);
        let reader_pending = Arc::clone(&pending);
        let reader_events = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                let Message::Text(text) = frame else { continue };
                let Ok(message) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                if let Some(id) = message.get("id").and_then(Value::as_u64) {
                    let waiter = reader_pending.lock().expect("pending lock").remove(&id);
                    if let Some(waiter) = waiter {
                        let reply = match message.get("error") {
                            Some(error) => Err(error.clone()),
                            None => Ok(message["result"].clone()),
                        };
                        let _ = waiter.send(reply);
                    }
                } else {
                    // Nobody listening is fine: events matter only to explicit waiters.
                    let _ = reader_events.send(message);
                }
            }
            // Dropping the waiters tells every pending call that the connection ended.
            reader_pending.lock().expect("pending lock").clear();
        });
        Ok(Self {
            child,
            _profile: profile,
            connection: Connection {
                outgoing,
                pending,
                events,
                next_id: Arc::new(AtomicU64::new(1)),
            },
        })
    }

    /// Opens a new tab on `url`, attaches a session to it and waits until the page loaded.
    pub async fn open(&self, url: &str) -> Result<Page, ChromiumError> {
        let target = self
            .connection
            .call(
                None,
                "Target.createTarget",
                json!({"url": "about:blank"}),
                CALL_TIMEOUT,
            )
            .await?;
        let target_id = target["targetId"].as_str().unwrap_or_default().to_owned();
        let attached = self
            .connection
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                CALL_TIMEOUT,
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| ChromiumError::Connection(format!("no session id in {attached}")))?
            .to_owned();
        let page = Page {
            connection: self.connection.clone(),
            session,
            target_id,
        };
        page.call("Page.enable", json!({})).await?;
        page.navigate(url).await?;
        Ok(page)
    }

    /// Asks the browser to exit, waits for it (killing it after a few seconds) and removes the
    /// profile.
    pub async fn close(mut self) {
        let _ = self
            .connection
            .call(None, "Browser.close", json!({}), CLOSE_TIMEOUT)
            .await;
        if tokio::time::timeout(CLOSE_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// One tab of a [`Chromium`], with its own DevTools session. Cheap to clone; clones drive the
/// same tab.
#[derive(Clone)]
pub struct Page {
    connection: Connection,
    session: String,
    target_id: String,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("target_id", &self.target_id)
            .finish_non_exhaustive()
    }
}

impl Page {
    /// Calls a DevTools `method` in this tab's session; returns its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ChromiumError> {
        self.connection
            .call(Some(&self.session), method, params, CALL_TIMEOUT)
            .await
    }

    /// Navigates to `url` and waits for its load event.
    pub async fn navigate(&self, url: &str) -> Result<(), ChromiumError> {
        let mut events = self.connection.events.subscribe();
        self.call("Page.navigate", json!({"url": url})).await?;
        tokio::time::timeout(CALL_TIMEOUT, async {
            loop {
                match events.recv().await {
                    Ok(event)
                        if event["method"] == "Page.loadEventFired"
                            && event["sessionId"] == self.session.as_str() =>
                    {
                        return Ok(());
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(ChromiumError::Connection("closed".into()));
                    }
                }
            }
        })
        .await
        .map_err(|_| ChromiumError::Timeout(format!("the load of {url}")))?
    }

    /// Evaluates `expression` in the page, awaiting it if it is a promise; returns its value
    /// as JSON. A thrown error or a rejected promise is a [`ChromiumError::Script`].
    pub async fn eval(&self, expression: &str) -> Result<Value, ChromiumError> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            let text = exception["exception"]["description"]
                .as_str()
                .or_else(|| exception["text"].as_str())
                .unwrap_or("unknown error");
            return Err(ChromiumError::Script(text.to_owned()));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Closes the tab.
    pub async fn close(&self) -> Result<(), ChromiumError> {
        self.connection
            .call(
                None,
                "Target.closeTarget",
                json!({"targetId": self.target_id}),
                CALL_TIMEOUT,
            )
            .await
            .map(|_| ())
    }
}
