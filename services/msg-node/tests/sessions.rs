//! Authentication at the door, revocation of live connections, resume after a reconnect, and
//! the slow-consumer cut-off.

mod common;

use anyhow::Result;
use common::{Client, Ended, REGISTRY, TestBed, code};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn missing_invalid_and_revoked_tokens_are_refused_before_upgrade() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let base = format!("ws://{}/msg", a.http);
    assert_eq!(Client::refused_status(&base).await?, 401);
    assert_eq!(
        Client::refused_status(&format!("{base}?access_token=garbage")).await?,
        401
    );
    let (token, claims) = bed.user_token("alice");
    // Tampered signature.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(Client::refused_status(&a.ws_url(&forged)).await?, 401);

    // A valid token connects; once revoked, the live connection is cut and a new one refused.
    let mut alice = Client::connect(&a, &token).await?;
    let h = alice.register().await?;
    bed.auth
        .revoke(&claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        alice.ended().await?,
        Ended::Closed(4001, "token revoked".into())
    );
    assert_eq!(Client::refused_status(&a.ws_url(&token)).await?, 401);

    // Its hyperty is gone at once (no grace period for a revoked token).
    let (mut bob, bob_h) = bed.user(&a, "bob").await?;
    let gone = bob.request("execute", &bob_h, &h, json!({})).await?;
    assert_eq!(code(&gone), 404, "{gone}");
    Ok(())
}

#[tokio::test]
async fn resume_keeps_addresses_and_delivers_what_was_queued() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let b = bed.default_replica("node-b").await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let resume_token = alice.resume_token.clone();
    let runtime = alice.runtime.clone();
    let (bob_token, _) = bed.user_token("bob");
    let mut bob = Client::connect(&b, &bob_token).await?;
    let bob_h = bob.register().await?;

    // alice's network drops; bob keeps sending (across replicas) during the grace period.
    alice.drop_connection();
    for n in 0..5 {
        let m = json!({"id": n, "type": "forward", "from": bob_h, "to": alice_h, "body": {"n": n}});
        bob.send(&m).await?;
    }
    // Delivery is confirmed (queued), so bob gets no error: prove it with a round trip that
    // comes after the five messages on the same path.
    let probe = bob.lookup(&bob_h, &alice_h).await?;
    assert_eq!(
        code(&probe),
        200,
        "alice's hyperty must survive the disconnect: {probe}"
    );

    // A fresh token of the same user resumes the session.
    let (alice_token2, _) = bed.user_token("alice");
    let mut alice = Client::resume(&a, &alice_token2, &resume_token).await?;
    assert_eq!(alice.session["resumed"], true);
    assert_eq!(alice.runtime, runtime);
    assert_eq!(alice.session["addresses"], json!([alice_h]));
    for n in 0..5 {
        let m = alice.recv().await?;
        assert_eq!(m["body"]["n"], n, "{m}");
        assert_eq!(m["from"], bob_h.as_str());
    }
    // And the address still routes to the new connection.
    bob.send(&json!({"id": "after", "type": "forward", "from": bob_h, "to": alice_h}))
        .await?;
    assert_eq!(alice.recv().await?["id"], "after");
    // No error reached bob for any of them.
    let ping = bob
        .request(
            "read",
            &bob_h,
            "domain://msg-node.localhost",
            json!({"resource": "session"}),
        )
        .await?;
    assert_eq!(code(&ping), 200);

    // Someone else cannot take the session over; an unknown resume token is 410.
    assert_eq!(
        Client::refused_status(&a.resume_url(&bob_token, &resume_token)).await?,
        403
    );
    assert_eq!(
        Client::refused_status(&a.resume_url(&alice_token2, "nope")).await?,
        410
    );

    // A second resume replaces the first connection, which is told why.
    let mut again = Client::resume(&a, &alice_token2, &resume_token).await?;
    assert_eq!(again.session["addresses"], json!([alice_h]));
    assert_eq!(
        alice.ended().await?,
        Ended::Closed(4009, "session resumed by another connection".into())
    );
    let bye = again
        .request("delete", &alice_h, REGISTRY, json!({"resource": alice_h}))
        .await?;
    assert_eq!(code(&bye), 200);
    Ok(())
}

#[tokio::test]
async fn sessions_end_after_the_grace_period() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.config("node-a");
    config.timing.grace_secs = 1;
    let a = bed.replica(config).await?;
    let (alice_token, _) = bed.user_token("alice");
    let mut alice = Client::connect(&a, &alice_token).await?;
    let alice_h = alice.register().await?;
    let resume_token = alice.resume_token.clone();
    let (mut bob, bob_h) = bed.user(&a, "bob").await?;
    alice.close().await;
    // Bounded wait for the grace period to end: the address disappears.
    bob.wait_until_gone(
        &bob_h,
        &alice_h,
        Duration::from_millis(200),
        "address outlived the grace period",
    )
    .await?;
    assert_eq!(
        Client::refused_status(&a.resume_url(&alice_token, &resume_token)).await?,
        410
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_with_a_reason() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.config("node-a");
    config.limits.queue_len = 8;
    let a = bed.replica(config).await?;
    let (alice_token, _) = bed.user_token("alice");
    let mut alice = Client::connect(&a, &alice_token).await?;
    let alice_h = alice.register().await?;
    let resume_token = alice.resume_token.clone();
    let (mut bob, bob_h) = bed.user(&a, "bob").await?;

    // alice stops reading; bob floods her with large messages until the node gives up on her.
    let filler = "x".repeat(60 * 1024);
    let mut refused = None;
    for n in 0..300 {
        bob.send(
            &json!({"id": n, "type": "forward", "from": bob_h, "to": alice_h, "body": filler}),
        )
        .await?;
        // Errors come back to bob as responses; check without blocking on them.
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(5), bob.recv()).await {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("the node never refused a delivery to the stalled client");
    assert_eq!(code(&refused), 408, "{refused}");
    assert!(
        refused["body"]["description"]
            .as_str()
            .unwrap()
            .contains("not reading")
    );

    // alice's connection was closed; resuming tells her why and hands over the queue.
    drop(alice);
    let mut alice = Client::resume(&a, &alice_token, &resume_token).await?;
    assert_eq!(
        alice.session["previous_close"]["code"], 4008,
        "{}",
        alice.session
    );
    assert!(
        alice.session["previous_close"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("slow consumer")
    );
    let first_queued = alice.recv().await?;
    assert_eq!(first_queued["from"], bob_h.as_str());
    Ok(())
}

#[tokio::test]
async fn resume_on_another_replica_moves_the_session() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let b = bed.default_replica("node-b").await?;
    let (mut alice, alice_h) = bed.user(&a, "alice").await?;
    let runtime = alice.runtime.clone();
    let resume_token = alice.resume_token.clone();
    let (bob_token, _) = bed.user_token("bob");
    let mut bob = Client::connect(&b, &bob_token).await?;
    let bob_h = bob.register().await?;

    // bob reports an object alice observes.
    let created = bob
        .request(
            "create",
            &bob_h,
            "domain://sync.localhost",
            json!({"resource": "object", "schema": "s", "value": {"v": 1}, "observers": ["user:alice"]}),
        )
        .await?;
    let url = created["body"]["value"]["url"].as_str().unwrap().to_owned();
    let snap = alice
        .request("subscribe", &alice_h, &url, json!({}))
        .await?;
    assert_eq!(code(&snap), 200);

    // alice drops off replica a; bob's messages queue there.
    alice.drop_connection();
    for n in 0..3 {
        bob.send(
            &json!({"id": n, "type": "forward", "from": bob_h, "to": alice_h, "body": {"n": n}}),
        )
        .await?;
    }
    let probe = bob.lookup(&bob_h, &alice_h).await?;
    assert_eq!(code(&probe), 200);

    // She comes back through replica b: same session, same addresses, the queue follows.
    let (alice_token2, _) = bed.user_token("alice");
    let mut alice = Client::resume(&b, &alice_token2, &resume_token).await?;
    assert_eq!(alice.session["resumed"], true, "{}", alice.session);
    assert_eq!(alice.session["node"], "node-b");
    assert_eq!(alice.runtime, runtime);
    assert_eq!(alice.session["addresses"], json!([alice_h]));
    for n in 0..3 {
        let m = alice.recv().await?;
        assert_eq!(m["body"]["n"], n, "{m}");
    }
    // The observed object is re-subscribed, with the current state as a catch-up update.
    let catch_up = alice.recv().await?;
    assert_eq!(
        (catch_up["type"].as_str(), catch_up["from"].as_str()),
        (Some("update"), Some(url.as_str()))
    );
    assert_eq!(catch_up["body"]["version"], 1);

    // Routing and sync now reach her on b.
    bob.send(&json!({"id": "later", "type": "forward", "from": bob_h, "to": alice_h}))
        .await?;
    assert_eq!(alice.recv().await?["id"], "later");
    let updated = bob
        .request(
            "update",
            &bob_h,
            &url,
            json!({"version": 1, "value": {"v": 2}}),
        )
        .await?;
    assert_eq!(code(&updated), 200, "{updated}");
    let change = alice.recv().await?;
    assert_eq!(change["body"], json!({"version": 2, "value": {"v": 2}}));

    // The token must match the session's identity on every replica.
    assert_eq!(
        Client::refused_status(&a.resume_url(&bob_token, &resume_token)).await?,
        403
    );
    // And it can move back.
    let again = Client::resume(&a, &alice_token2, &resume_token).await?;
    assert_eq!(again.session["node"], "node-a");
    assert_eq!(again.session["addresses"], json!([alice_h]));
    Ok(())
}

#[tokio::test]
async fn sessions_per_identity_are_limited() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.config("node-a");
    config.limits.max_sessions_per_identity = 2;
    let a = bed.replica(config).await?;
    let (token, _) = bed.user_token("alice");
    let _one = Client::connect(&a, &token).await?;
    let two = Client::connect(&a, &token).await?;
    assert_eq!(Client::refused_status(&a.ws_url(&token)).await?, 429);
    // Others are not affected, and a resume is not a new session.
    let (bob_token, _) = bed.user_token("bob");
    Client::connect(&a, &bob_token).await?;
    let resume_token = two.resume_token.clone();
    two.drop_connection();
    Client::resume(&a, &token, &resume_token).await?;
    Ok(())
}

#[tokio::test]
async fn a_silent_connection_is_dropped_and_its_session_expires() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.config("node-a");
    config.timing.ping_secs = 1;
    config.timing.grace_secs = 1;
    let a = bed.replica(config).await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let (mut bob, bob_h) = bed.user(&a, "bob").await?;
    // alice's client stops reading (so it never answers pings); bob keeps talking, and his
    // reads answer the node's pings.
    bob.wait_until_gone(
        &bob_h,
        &alice_h,
        Duration::from_millis(250),
        "the silent connection was never dropped",
    )
    .await?;
    let me = bob.lookup(&bob_h, &bob_h).await?;
    assert_eq!(code(&me), 200, "the active connection must survive: {me}");
    drop(alice);
    Ok(())
}

#[tokio::test]
async fn an_expiring_token_closes_the_connection_and_the_session_can_resume() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let short = bed
        .auth
        .issue(
            "user:alice",
            "alice",
            rethink_common::token::Grants::user(),
            Some(Duration::from_secs(1)),
        )
        .unwrap();
    let mut alice = Client::connect(&a, &short.token).await?;
    let h = alice.register().await?;
    let resume_token = alice.resume_token.clone();
    let ended = alice.ended().await?;
    assert_eq!(
        ended,
        Ended::Closed(
            4002,
            "token expired; reconnect with a fresh token and resume".into()
        )
    );
    let (fresh, _) = bed.user_token("alice");
    let back = Client::resume(&a, &fresh, &resume_token).await?;
    assert_eq!(back.session["addresses"], json!([h]));
    assert_eq!(back.session["previous_close"]["code"], 4002);
    Ok(())
}
