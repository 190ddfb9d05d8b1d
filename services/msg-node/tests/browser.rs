//! The web client at `/client/` in headless Chromium (driven over the DevTools protocol):
//! log in, connect, register, discover a user connected from Rust, call them, and share a data
//! object with them.

use anyhow::{Context, Result, anyhow, bail};
use rethink_common::testing::chromium::Chromium;
use rethink_msg_client::{Address, MessageType};
use rethink_testbed::TestBed;
use serde_json::json;

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
    let replica = bed.default_msg_node("node-a").await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = listener.local_addr()?;
    let app = rethink_auth::http::router(bed.auth.clone()).merge(replica.node.router());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (bob, bob_h) = bed.user(&replica, "bob").await?;

    let browser = Chromium::launch().await?;
    let page = browser.open(&format!("http://{origin}/client/")).await?;
    let script_page = page.clone();
    let run = tokio::spawn(async move {
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
        script_page.eval(&script).await
    });

    // Bob (a Rust client) gets the browser's call and answers it.
    let mut run = run;
    let call = tokio::select! {
        call = bob.recv() => call?,
        finished = &mut run => {
            bail!("the page stopped before calling bob: {:?}", finished?);
        }
    };
    assert_eq!(call.kind, MessageType::Execute, "{call}");
    assert_eq!(call.body["text"], "hi bob");
    let alice_h = call.from.clone();
    bob.send(call.reply(json!("hello alice"))).await?;
    let result = run.await??;
    assert_eq!(result["me"], alice_h.as_str());
    assert_eq!(result["to"], bob_h.as_str());
    assert!(
        result["inbox"].as_str().unwrap().contains("hello alice"),
        "{result}"
    );

    // The page creates an object; another connection of alice observes it (the page names no
    // observers, so only its own identity may); bob may not; the page updates it.
    let script = format!(
        r#"(async () => {{ {HELPERS}
          $('object-value').value = '{{"text": "first"}}';
          $('create-object').click();
          await until(() => $('object-url').value.startsWith('object://'), 'the object');
          return $('object-url').value;
        }})()"#
    );
    let url = page.eval(&script).await?;
    let url: Address = url.as_str().context("no object url")?.parse()?;
    let refused = bob
        .ask(MessageType::Subscribe, &bob_h, &url, json!({}))
        .await?;
    assert_eq!(refused.code(), 403, "{refused}");
    let (tab, tab_h) = bed.user(&replica, "alice").await?;
    let snapshot = tab
        .ask(MessageType::Subscribe, &tab_h, &url, json!({}))
        .await?;
    assert_eq!(snapshot.code(), 200, "{snapshot}");
    assert_eq!(snapshot.value()["value"]["text"], "first");
    let script = format!(
        r#"(async () => {{ {HELPERS}
          $('object-value').value = '{{"text": "second"}}';
          $('update').click();
          await until(() => $('object-version').textContent === '2', 'the update');
          return true;
        }})()"#
    );
    page.eval(&script).await?;
    let update = tab.recv().await?;
    assert_eq!(update.kind, MessageType::Update, "{update}");
    assert_eq!(update.from, url);
    assert_eq!(
        update.body,
        json!({"version": 2, "value": {"text": "second"}})
    );
    browser.close().await;
    Ok(())
}
