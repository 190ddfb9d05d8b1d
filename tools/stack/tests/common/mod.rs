//! The stack with both browser origins, for the runtime's browser tests: the app origin (the
//! stack's HTTP address, pages under `/client/`) and the runtime origin, which serves a copy of
//! `web/runtime` in a temporary directory so a test can change the runtime's policy or add a
//! hyperty to its catalogue.

#![allow(dead_code)]

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use rethink_common::testing::chromium::Page;
use rethink_stack::{StackConfig, StackListeners};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(15);

/// A running stack and its runtime files.
pub struct Stack {
    pub http: SocketAddr,
    pub runtime: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Stack {
    /// Starts the stack on free ports with a copy of web/runtime.
    pub async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/runtime");
        copy_dir(&source, dir.path())?;
        let listeners = StackListeners::local().await?;
        let http = listeners.http.local_addr()?;
        let runtime = listeners.runtime.local_addr()?;
        let config = StackConfig {
            runtime_dir: Some(dir.path().to_path_buf()),
            ..StackConfig::default()
        };
        let stop = CancellationToken::new();
        tokio::spawn(rethink_stack::run(
            config,
            listeners,
            stop.clone().cancelled_owned(),
        ));
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !client
            .get(format!("http://{http}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            if tokio::time::Instant::now() > deadline {
                bail!("stack not ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            http,
            runtime,
            dir,
            stop,
        })
    }

    /// The example app page on the app origin, pointed at the runtime origin.
    pub fn app_url(&self, page: &str) -> String {
        format!(
            "http://{}/client/app/{page}?runtime=http://{}",
            self.http, self.runtime
        )
    }

    /// Writes a file into the served runtime directory.
    pub fn write(&self, name: &str, text: &str) -> Result<()> {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().context("no parent")?)?;
        Ok(std::fs::write(path, text)?)
    }

    /// Adds hyperty `name` with `source` and `manifest` to the served catalogue, with the
    /// source's true sha256 (or `sha256` when given, to test a mismatch).
    pub fn add_hyperty(
        &self,
        name: &str,
        source: &str,
        manifest: Value,
        sha256: Option<&str>,
    ) -> Result<()> {
        let file = format!("hyperties/{name}.js");
        self.write(&file, source)?;
        let path = self.dir.path().join("catalogue.json");
        let mut catalogue: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let digest = hex(&Sha256::digest(source.as_bytes()));
        catalogue["hyperties"][name] = json!({
            "file": file,
            "sha256": sha256.map_or(digest, str::to_owned),
            "descriptor": {"name": name},
            "manifest": manifest,
        });
        Ok(std::fs::write(
            path,
            serde_json::to_string_pretty(&catalogue)?,
        )?)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Evaluates `expression` inside the child frame of `page` whose URL starts with `prefix`, in
/// an isolated world (the frame's DOM and storage, none of its script's variables): what a
/// user typing into that frame, or a test reading its storage, can do.
pub async fn eval_in_frame(page: &Page, prefix: &str, expression: &str) -> Result<Value> {
    let tree = page.call("Page.getFrameTree", json!({})).await?;
    let frame = tree["frameTree"]["childFrames"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| {
            f["frame"]["url"]
                .as_str()
                .is_some_and(|u| u.starts_with(prefix))
        })
        .with_context(|| format!("no frame at {prefix} in {tree}"))?;
    let world = page
        .call(
            "Page.createIsolatedWorld",
            json!({"frameId": frame["frame"]["id"], "worldName": "test"}),
        )
        .await?;
    let result = page
        .call(
            "Runtime.evaluate",
            json!({"expression": expression, "contextId": world["executionContextId"],
                   "awaitPromise": true, "returnByValue": true}),
        )
        .await?;
    if let Some(e) = result.get("exceptionDetails") {
        bail!("frame script failed: {e}");
    }
    Ok(result["result"]["value"].clone())
}

/// Opens the app page, waits for its runtime frame's login form and logs `user` in there.
pub async fn login(page: &Page, stack: &Stack, user: &str) -> Result<()> {
    let prefix = format!("http://{}/", stack.runtime);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let shown = eval_in_frame(page, &prefix, "!document.getElementById('login').hidden").await;
        if shown.is_ok_and(|v| v == json!(true)) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the runtime never showed its login form");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fill = format!(
        "document.getElementById('username').value = {};
         document.getElementById('password').value = {};
         document.getElementById('submit').click(); true",
        json!(user),
        json!(rethink_stack::DEMO_PASSWORD)
    );
    eval_in_frame(page, &prefix, &fill).await?;
    Ok(())
}

/// Polls `expression` in the page until it is truthy.
pub async fn wait_for(page: &Page, expression: &str) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = page.eval(expression).await?;
        if !(value.is_null() || value == json!(false)) {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{expression} stayed false");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Serves `html` to every request on a free port of 127.0.0.1 (a third origin); returns it.
pub async fn serve_page(html: &'static str) -> Result<SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n",
                    html.len()
                );
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(html.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}
