//! The browser runtime in headless Chromium with the stack's two origins: the example app page
//! on the app origin loads the runtime frame from the runtime origin (docs/runtime.md).

mod common;

use anyhow::Result;
use common::{Stack, login, wait_for};
use rethink_common::testing::chromium::Chromium;
use serde_json::json;

/// The app logs in through the runtime frame and never holds the token or the password: not
/// in its DOM, storage, cookies or any message it received, and the frame's storage is closed
/// to it.
#[tokio::test]
async fn runtime_keeps_credentials_from_the_app_chromium() -> Result<()> {
    let stack = Stack::start().await?;
    let browser = Chromium::launch().await?;
    let page = browser.open("about:blank").await?;
    // Record every message the app window receives, before the app's own script runs.
    page.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({"source": "window.__seen = []; addEventListener('message', (e) => \
            window.__seen.push(JSON.stringify(e.data)));"}),
    )
    .await?;
    page.navigate(&stack.app_url("hello.html")).await?;
    login(&page, &stack, "alice").await?;
    let me = wait_for(&page, "window.hello && hello.whoami()").await?;
    assert_eq!(me["identity"], "alice");
    let prefix = format!("http://{}/", stack.runtime);
    let token =
        common::eval_in_frame(&page, &prefix, "sessionStorage.getItem('rethink.token')").await?;
    let token = token.as_str().unwrap_or_default().to_owned();
    assert!(
        token.starts_with("eyJ"),
        "the runtime holds the token: {token}"
    );
    let seen = page
        .eval(
            "(() => { const f = document.querySelector('iframe'); let storage = 'readable';
               try { f.contentWindow.sessionStorage; } catch (e) { storage = e.name; }
               return { all: document.documentElement.outerHTML + JSON.stringify(localStorage)
                 + JSON.stringify(sessionStorage) + document.cookie + window.__seen.join(''),
                 storage, doc: f.contentDocument === null }; })()",
        )
        .await?;
    let all = seen["all"].as_str().unwrap_or_default();
    assert!(!all.contains(&token), "the app saw the token");
    assert!(
        !all.contains(rethink_stack::DEMO_PASSWORD),
        "the app saw the password"
    );
    assert_eq!(seen["storage"], "SecurityError");
    assert_eq!(seen["doc"], true);
    // A hyperty worker has no DOM, cookies or network of its own.
    let probe = page
        .eval("hello.send('read', 'domain://sync.localhost', {resource: String(typeof document) \
               + typeof fetch + typeof WebSocket}).catch((e) => ({code: e.code, message: e.message}))")
        .await?;
    assert_eq!(probe["code"], 403, "{probe}");
    let stats = page.eval("rt.stats()").await?;
    let denial = &stats["denials"][0];
    assert_eq!(denial["rule"], "default-deny", "{stats}");
    assert_eq!(
        denial["peer"], "domain://sync.localhost",
        "the denial names the refused address: {stats}"
    );
    browser.close().await;
    Ok(())
}

/// A message outside the hyperty's manifest is refused and logged with its rule, and allowed
/// once the runtime's policy grants it, without reloading anything; a frame of a third origin
/// posting to the runtime gets nothing.
#[tokio::test]
async fn policy_change_allows_a_denied_message_without_reload_chromium() -> Result<()> {
    let stack = Stack::start().await?;
    let browser = Chromium::launch().await?;
    let page = browser.open(&stack.app_url("hello.html")).await?;
    login(&page, &stack, "alice").await?;
    wait_for(&page, "window.hello && hello.whoami()").await?;
    let send =
        "hello.send('read', 'domain://registry.localhost/x', {resource: 'user://localhost/bob'})
                .then((b) => ({ok: b})).catch((e) => ({code: e.code, message: e.message}))";
    let refused = page.eval(send).await?;
    assert_eq!(refused["code"], 403, "{refused}");
    stack.write(
        "policy.json",
        &json!({"version": 2, "rules": [{"id": "registry-paths", "hyperty": "hello",
            "direction": "send", "peers": ["domain://registry.localhost/*"], "types": ["read"],
            "decision": "allow"}]})
        .to_string(),
    )?;
    wait_for(&page, "rt.stats().then((s) => s.policyVersion === 2)").await?;
    let allowed = page.eval(send).await?;
    assert!(allowed.get("ok").is_some(), "still refused: {allowed}");
    let stats = page.eval("rt.stats()").await?;
    assert!(stats["allowed"].as_u64().unwrap_or(0) >= 1, "{stats}");
    assert_eq!(stats["denied"], 1, "{stats}");

    // A third origin (another port) frames a page and posts to the runtime.
    let dropped_before = stats["dropped"].as_u64().unwrap_or(0);
    let third = format!(
        "http://{}/",
        common::serve_page("<!doctype html><p>third</p>").await?
    );
    page.eval(&format!(
        "new Promise((ok) => {{ const f = document.createElement('iframe'); f.src = {};
           f.onload = ok; document.body.append(f); }})",
        json!(third)
    ))
    .await?;
    common::eval_in_frame(
        &page,
        &third,
        "window.__got = []; addEventListener('message', (e) => window.__got.push(e.data));
         parent.frames[0].postMessage({rethink: 'call', id: 1, op: 'stats', args: []}, '*'); true",
    )
    .await?;
    wait_for(
        &page,
        &format!("rt.stats().then((s) => s.dropped > {dropped_before})"),
    )
    .await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got = common::eval_in_frame(&page, &third, "window.__got.length").await?;
    assert_eq!(got, 0, "the third origin got an answer");
    browser.close().await;
    Ok(())
}

/// Two users' hello hyperties, in two runtimes, greet each other through the Message Node.
#[tokio::test]
async fn two_users_hyperties_exchange_messages_chromium() -> Result<()> {
    let stack = Stack::start().await?;
    let browser = Chromium::launch().await?;
    let alice = browser.open(&stack.app_url("hello.html")).await?;
    let bob = browser.open(&stack.app_url("hello.html")).await?;
    login(&alice, &stack, "alice").await?;
    login(&bob, &stack, "bob").await?;
    wait_for(&alice, "window.hello && hello.whoami()").await?;
    wait_for(&bob, "window.hello && hello.whoami()").await?;
    bob.eval("window.greetings = []; hello.on('greeted', (g) => greetings.push(g)); true")
        .await?;
    let answer = alice.eval("hello.greet('bob', 'hi bob')").await?;
    assert_eq!(answer, "hi alice, bob here");
    let greeted = wait_for(&bob, "greetings[0]").await?;
    assert_eq!(greeted, json!({"from": "alice", "text": "hi bob"}));
    let missing = alice
        .eval("hello.greet('carol', 'hi').catch((e) => ({code: e.code, message: e.message}))")
        .await?;
    assert_eq!(missing["code"], 404, "errors keep their code: {missing}");
    browser.close().await;
    Ok(())
}

/// A hyperty worker that hangs is terminated and restarted by the watchdog; its pending call
/// fails with 503, and another hyperty keeps answering meanwhile.
#[tokio::test]
async fn hung_hyperty_is_restarted_while_others_work_chromium() -> Result<()> {
    let stack = Stack::start().await?;
    stack.add_hyperty(
        "spin",
        "defineHyperty(() => ({ spin() { for (;;) {} }, ping() { return 'pong'; } }));",
        json!({}),
        None,
    )?;
    let browser = Chromium::launch().await?;
    let page = browser.open(&stack.app_url("hello.html")).await?;
    login(&page, &stack, "alice").await?;
    wait_for(&page, "window.hello && hello.whoami()").await?;
    page.eval(
        "rt.hyperty('spin').then((s) => { window.spin = s; window.hung = s.spin()
        .catch((e) => ({code: e.code, message: e.message})); return true; })",
    )
    .await?;
    let me = page.eval("hello.whoami()").await?;
    assert_eq!(me["identity"], "alice", "hello answers while spin hangs");
    let hung = wait_for(&page, "hung").await?;
    assert_eq!(hung["code"], 503, "{hung}");
    assert_eq!(page.eval("spin.ping()").await?, "pong");
    let stats = page.eval("rt.stats()").await?;
    assert_eq!(stats["restarts"]["spin"], 1, "{stats}");
    assert_eq!(stats["restarts"]["hello"], 0, "{stats}");
    browser.close().await;
    Ok(())
}
