//! The web client at `/client/` in headless Chromium (driven over the DevTools protocol):
//! log in, connect, register, discover a user connected from Rust, call them, and share a data
//! object with them.

mod common;

use std::{process::Stdio, time::Duration};

use anyhow::{Context, Result, anyhow, bail};
use common::{TestBed, code};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// Returns the browser to run: `$CHROMIUM`, else the first of chromium, chromium-browser,
/// google-chrome on `PATH`.
fn chromium() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return path.into();
    }
    let dirs: Vec<std::path::PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

/// Headless Chromium with the DevTools protocol on a free port, killed on drop.
struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    session: Option<String>,
    events: Vec<Value>,
}

impl Browser {
    async fn launch() -> Result<Self> {
        let profile = tempfile::tempdir()?;
        let browser = chromium();
        let mut child = tokio::process::Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (install chromium or set CHROMIUM)",
                    browser.display()
                )
            })?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let url = tokio::time::timeout(common::WAIT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Ok::<_, anyhow::Error>(url.trim().to_owned());
                }
            }
            bail!("chromium exited before listening")
        })
        .await
        .context("chromium did not start")??;
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
        Ok(Self {
            _child: child,
            _profile: profile,
            ws,
            next_id: 1,
            session: None,
            events: Vec::new(),
        })
    }

    async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::Text(message.to_string().into()))
            .await?;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .context("no answer from chromium")?
                .ok_or_else(|| anyhow!("devtools connection ended"))??;
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(text.as_str())?;
            if reply.get("method").is_some() {
                self.events.push(reply);
                continue;
            }
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    bail!("{method}: {error}");
                }
                return Ok(reply["result"].clone());
            }
        }
    }

    async fn open(&mut self, url: &str) -> Result<()> {
        let target = self
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await?;
        self.session = attached["sessionId"].as_str().map(str::to_owned);
        self.call("Page.enable", json!({})).await?;
        self.events.clear();
        self.call("Page.navigate", json!({"url": url})).await?;
        self.wait_event("Page.loadEventFired").await
    }

    async fn wait_event(&mut self, method: &str) -> Result<()> {
        loop {
            if let Some(pos) = self.events.iter().position(|e| e["method"] == method) {
                self.events.remove(pos);
                return Ok(());
            }
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .with_context(|| format!("no {method} from chromium"))?
                .ok_or_else(|| anyhow!("devtools connection ended"))??;
            if let Message::Text(text) = frame {
                self.events.push(serde_json::from_str(text.as_str())?);
            }
        }
    }

    /// Evaluates an async expression in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(exception) = result.get("exceptionDetails") {
            bail!("page script failed: {exception}");
        }
        Ok(result["result"]["value"].clone())
    }
}

/// Page helpers: `$` and a bounded `until` that polls the DOM.
const HELPERS: &str = r#"
const $ = (id) => document.getElementById(id);
const until = async (f, what) => {
  for (let i = 0; i < 150; i++) { if (f()) return; await new Promise((r) => setTimeout(r, 100)); }
  throw new Error('timed out waiting for ' + what + '; status: ' + $('status')?.textContent);
};
"#;

#[tokio::test]
async fn the_web_client_logs_in_messages_and_syncs_with_another_user() -> Result<()> {
    let bed = TestBed::start().await?;
    bed.auth
        .create_user("alice", "alice-password", Some("Alice"), None)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    // One origin for the page, /auth and /msg, as in the stack and behind Traefik.
    let replica = bed.default_replica("node-a").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = listener.local_addr()?;
    let app = rethink_auth::http::router(bed.auth.clone()).merge(replica.node.router());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (mut bob, bob_h) = bed.user(&replica, "bob").await?;

    let mut browser = Browser::launch().await?;
    browser.open(&format!("http://{origin}/client/")).await?;
    let page = tokio::spawn(async move {
        let script = format!(
            r#"(async () => {{ {HELPERS}
              await until(() => document.readyState === 'complete' && $('login'), 'the page');
              $('username').value = 'alice'; $('password').value = 'alice-password';
              $('login').click();
              await until(() => $('status').className.includes('ok'), 'the connection');
              $('register').click();
              await until(() => $('my-address').textContent.startsWith('hyperty://'), 'registration');
              $('discover-user').value = 'bob'; $('discover').click();
              await until(() => $('send-to').value.startsWith('hyperty://'), 'discovery');
              $('send-type').value = 'execute'; $('send-body').value = '{{"text": "hi bob"}}';
              $('send').click();
              await until(() => $('inbox').textContent.includes('response 200'), "bob's answer");
              return {{ me: $('my-address').textContent, to: $('send-to').value, inbox: $('inbox').textContent }};
            }})()"#
        );
        let result = browser.eval(&script).await;
        (browser, result)
    });

    // Bob (a Rust client) gets the browser's call and answers it.
    let mut page = page;
    let call = tokio::select! {
        call = bob.recv() => call?,
        finished = &mut page => {
            let (_, result) = finished?;
            bail!("the page stopped before calling bob: {result:?}");
        }
    };
    assert_eq!(call["type"], "execute", "{call}");
    assert_eq!(call["body"]["text"], "hi bob");
    let alice_h = call["from"].as_str().unwrap().to_owned();
    bob.send(
        &json!({"id": call["id"], "type": "response", "from": bob_h, "to": alice_h,
                     "body": {"code": 200, "value": "hello alice"}}),
    )
    .await?;
    let (mut browser, result) = page.await?;
    let result = result?;
    assert_eq!(result["me"], alice_h.as_str());
    assert_eq!(result["to"], bob_h.as_str());
    assert!(
        result["inbox"].as_str().unwrap().contains("hello alice"),
        "{result}"
    );

    // The page creates an object; bob observes it; the page updates it.
    let script = format!(
        r#"(async () => {{ {HELPERS}
          $('object-value').value = '{{"text": "first"}}';
          $('create-object').click();
          await until(() => $('object-url').value.startsWith('object://'), 'the object');
          return $('object-url').value;
        }})()"#
    );
    let url = browser.eval(&script).await?;
    let url = url.as_str().context("no object url")?.to_owned();
    let snapshot = bob.request("subscribe", &bob_h, &url, json!({})).await?;
    assert_eq!(code(&snapshot), 200, "{snapshot}");
    assert_eq!(snapshot["body"]["value"]["value"]["text"], "first");
    let script = format!(
        r#"(async () => {{ {HELPERS}
          $('object-value').value = '{{"text": "second"}}';
          $('update').click();
          await until(() => $('object-version').textContent === '2', 'the update');
          return true;
        }})()"#
    );
    browser.eval(&script).await?;
    let update = bob.recv().await?;
    assert_eq!(update["type"], "update", "{update}");
    assert_eq!(update["from"], url.as_str());
    assert_eq!(
        update["body"],
        json!({"version": 2, "value": {"text": "second"}})
    );
    Ok(())
}
