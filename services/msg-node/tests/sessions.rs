//! Authentication at the door, revocation of live connections, resume after a reconnect, and
//! the slow-consumer cut-off.

use std::time::Duration;

use anyhow::{Context, Result};
use rethink_msg_client::{
    Address, Client, ClientOptions, Closed, Message, MessageId, MessageType, WsLink, WsTarget,
};
use rethink_testbed::{MsgReplica, TestBed, WAIT, refused_status};
use serde_json::json;

/// Opens a second connection that resumes the session of `resume_token` with `token`.
async fn resume(replica: &MsgReplica, token: &str, resume_token: &str) -> Result<Client> {
    Ok(Client::connect_with(
        replica.ws(),
        token,
        Some(resume_token),
        ClientOptions::default(),
    )
    .await?)
}

/// Connects with `token` and registers a hyperty without ever reading afterwards (a client
/// that stalls): a bare link, not a [`Client`], whose task would keep reading.
async fn stalled(replica: &MsgReplica, token: &str) -> Result<(WsLink, Address)> {
    let mut link = WsLink::connect(&WsTarget::new(replica.ws_base()), token, None, WAIT).await?;
    let welcome = link.welcome().clone();
    let register = Message::new(
        MessageType::Create,
        &welcome.runtime,
        &welcome.registry(),
        json!({"resource": "hyperty", "descriptor": {"name": "test"}}),
    )
    .with_id(1);
    let registered = link.request(&register, WAIT).await?.into_result()?;
    let address = registered["address"]
        .as_str()
        .context("no address in the registration")?
        .parse()?;
    Ok((link, address))
}

fn forward(from: &Address, to: &Address, id: impl Into<MessageId>) -> Message {
    Message::new(MessageType::Forward, from, to, serde_json::Value::Null).with_id(id)
}

#[tokio::test]
async fn missing_invalid_and_revoked_tokens_are_refused_before_upgrade() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let base = a.ws_base();
    assert_eq!(refused_status(&base).await?, 401);
    assert_eq!(
        refused_status(&format!("{base}?access_token=garbage")).await?,
        401
    );
    let (token, claims) = bed.user_token("alice");
    // Tampered signature.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(refused_status(&a.ws_url(&forged)).await?, 401);

    // A valid token connects; once revoked, the live connection is cut and a new one refused.
    let alice = bed.connect(&a, &token).await?;
    let h = alice.register(json!({"name": "test"})).await?;
    bed.auth
        .revoke(&claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(alice.closed().await?, Closed::new(4001, "token revoked"));
    assert_eq!(refused_status(&a.ws_url(&token)).await?, 401);

    // Its hyperty is gone at once (no grace period for a revoked token).
    let (bob, bob_h) = bed.user(&a, "bob").await?;
    let gone = bob
        .request(Message::new(MessageType::Execute, &bob_h, &h, json!({})))
        .await?;
    assert_eq!(gone.code(), 404, "{gone}");
    Ok(())
}

#[tokio::test]
async fn resume_keeps_addresses_and_delivers_what_was_queued() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let resume_token = alice.resume_token();
    let runtime = alice.runtime();
    let (bob_token, _) = bed.user_token("bob");
    let bob = bed.connect(&b, &bob_token).await?;
    let bob_h = bob.register(json!({"name": "test"})).await?;

    // alice's network drops; bob keeps sending (across replicas) during the grace period.
    alice.drop_connection();
    drop(alice);
    for n in 0..5 {
        bob.send(Message::new(MessageType::Forward, &bob_h, &alice_h, json!({"n": n})).with_id(n))
            .await?;
    }
    // Delivery is confirmed (queued), so bob gets no error: prove it with a round trip that
    // comes after the five messages on the same path.
    bob.lookup(&bob_h, alice_h.as_str())
        .await
        .context("alice's hyperty must survive the disconnect")?;

    // A fresh token of the same user resumes the session.
    let (alice_token2, _) = bed.user_token("alice");
    let alice = resume(&a, &alice_token2, &resume_token).await?;
    let welcome = alice.welcome();
    assert!(welcome.resumed, "{welcome:?}");
    assert_eq!(welcome.runtime, runtime);
    assert_eq!(welcome.addresses, vec![alice_h.clone()]);
    for n in 0..5 {
        let m = alice.recv().await?;
        assert_eq!(m.body["n"], n, "{m}");
        assert_eq!(m.from, bob_h);
    }
    // And the address still routes to the new connection.
    bob.send(forward(&bob_h, &alice_h, "after")).await?;
    assert_eq!(alice.recv().await?.id, MessageId::from("after"));
    // No error reached bob for any of them.
    let ping = bob
        .request(Message::new(
            MessageType::Read,
            &bob_h,
            &Address::node("localhost")?,
            json!({"resource": "session"}),
        ))
        .await?;
    assert_eq!(ping.code(), 200);

    // Someone else cannot take the session over; an unknown resume token is 410.
    assert_eq!(
        refused_status(&a.resume_url(&bob_token, &resume_token)).await?,
        403
    );
    assert_eq!(
        refused_status(&a.resume_url(&alice_token2, "nope")).await?,
        410
    );

    // A second resume replaces the first connection, which is told why.
    let again = resume(&a, &alice_token2, &resume_token).await?;
    assert_eq!(again.welcome().addresses, vec![alice_h.clone()]);
    assert_eq!(
        alice.closed().await?,
        Closed::new(4009, "session resumed by another connection")
    );
    let bye = again
        .request(Message::new(
            MessageType::Delete,
            &alice_h,
            &again.registry(),
            json!({"resource": alice_h}),
        ))
        .await?;
    assert_eq!(bye.code(), 200);
    Ok(())
}

#[tokio::test]
async fn sessions_end_after_the_grace_period() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.msg_config("node-a");
    config.timing.grace_secs = 1;
    let a = bed.msg_node(config).await?;
    let (alice_token, _) = bed.user_token("alice");
    let alice = bed.connect(&a, &alice_token).await?;
    let alice_h = alice.register(json!({"name": "test"})).await?;
    let resume_token = alice.resume_token();
    let (bob, bob_h) = bed.user(&a, "bob").await?;
    alice.close().await?;
    // Bounded wait for the grace period to end: the address disappears.
    bob.wait_until_gone(&bob_h, &alice_h, Duration::from_millis(200), WAIT)
        .await
        .context("address outlived the grace period")?;
    assert_eq!(
        refused_status(&a.resume_url(&alice_token, &resume_token)).await?,
        410
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_with_a_reason() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.msg_config("node-a");
    config.limits.queue_len = 8;
    let a = bed.msg_node(config).await?;
    let (alice_token, _) = bed.user_token("alice");
    let (alice, alice_h) = stalled(&a, &alice_token).await?;
    let resume_token = alice.welcome().resume_token.clone();
    let (bob, bob_h) = bed.user(&a, "bob").await?;

    // alice stops reading; bob floods her with large messages until the node gives up on her.
    let filler = "x".repeat(60 * 1024);
    let mut refused = None;
    for n in 0..300 {
        bob.send(Message::new(MessageType::Forward, &bob_h, &alice_h, json!(filler)).with_id(n))
            .await?;
        // Errors come back to bob as responses; check without blocking on them.
        if let Ok(reply) = bob.recv_within(Duration::from_millis(5)).await {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("the node never refused a delivery to the stalled client");
    assert_eq!(refused.code(), 408, "{refused}");
    assert!(refused.description().contains("not reading"));

    // alice's connection was closed; resuming tells her why and hands over the queue.
    drop(alice);
    let alice = resume(&a, &alice_token, &resume_token).await?;
    let previous = alice
        .welcome()
        .previous_close
        .context("no previous close in the welcome")?;
    assert_eq!(previous.code, 4008, "{previous:?}");
    assert!(previous.reason.starts_with("slow consumer"));
    let first_queued = alice.recv().await?;
    assert_eq!(first_queued.from, bob_h);
    Ok(())
}

#[tokio::test]
async fn resume_on_another_replica_moves_the_session() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let runtime = alice.runtime();
    let resume_token = alice.resume_token();
    let (bob_token, _) = bed.user_token("bob");
    let bob = bed.connect(&b, &bob_token).await?;
    let bob_h = bob.register(json!({"name": "test"})).await?;

    // bob reports an object alice observes.
    let created = bob
        .call(
            MessageType::Create,
            &bob_h,
            &bob.sync_service(),
            json!({"resource": "object", "schema": "s", "value": {"v": 1}, "observers": ["user:alice"]}),
        )
        .await?;
    let url: Address = created["url"].as_str().context("no url")?.parse()?;
    let snap = alice
        .request(Message::new(
            MessageType::Subscribe,
            &alice_h,
            &url,
            json!({}),
        ))
        .await?;
    assert_eq!(snap.code(), 200);

    // alice drops off replica a; bob's messages queue there.
    alice.drop_connection();
    drop(alice);
    for n in 0..3 {
        bob.send(Message::new(MessageType::Forward, &bob_h, &alice_h, json!({"n": n})).with_id(n))
            .await?;
    }
    bob.lookup(&bob_h, alice_h.as_str()).await?;

    // She comes back through replica b: same session, same addresses, the queue follows.
    let (alice_token2, _) = bed.user_token("alice");
    let alice = resume(&b, &alice_token2, &resume_token).await?;
    let welcome = alice.welcome();
    assert!(welcome.resumed, "{welcome:?}");
    assert_eq!(welcome.node, "node-b");
    assert_eq!(welcome.runtime, runtime);
    assert_eq!(welcome.addresses, vec![alice_h.clone()]);
    for n in 0..3 {
        let m = alice.recv().await?;
        assert_eq!(m.body["n"], n, "{m}");
    }
    // The observed object is re-subscribed, with the current state as a catch-up update.
    let catch_up = alice.recv().await?;
    assert_eq!(
        (catch_up.kind, &catch_up.from),
        (MessageType::Update, &url),
        "{catch_up}"
    );
    assert_eq!(catch_up.body["version"], 1);

    // Routing and sync now reach her on b.
    bob.send(forward(&bob_h, &alice_h, "later")).await?;
    assert_eq!(alice.recv().await?.id, MessageId::from("later"));
    let updated = bob
        .request(Message::new(
            MessageType::Update,
            &bob_h,
            &url,
            json!({"version": 1, "value": {"v": 2}}),
        ))
        .await?;
    assert_eq!(updated.code(), 200, "{updated}");
    let change = alice.recv().await?;
    assert_eq!(change.body, json!({"version": 2, "value": {"v": 2}}));

    // The token must match the session's identity on every replica.
    assert_eq!(
        refused_status(&a.resume_url(&bob_token, &resume_token)).await?,
        403
    );
    // And it can move back.
    let again = resume(&a, &alice_token2, &resume_token).await?;
    assert_eq!(again.welcome().node, "node-a");
    assert_eq!(again.welcome().addresses, vec![alice_h.clone()]);
    Ok(())
}

#[tokio::test]
async fn sessions_per_identity_are_limited() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.msg_config("node-a");
    config.limits.max_sessions_per_identity = 2;
    let a = bed.msg_node(config).await?;
    let (token, _) = bed.user_token("alice");
    let _one = bed.connect(&a, &token).await?;
    let two = bed.connect(&a, &token).await?;
    assert_eq!(refused_status(&a.ws_url(&token)).await?, 429);
    // Others are not affected, and a resume is not a new session.
    let (bob_token, _) = bed.user_token("bob");
    bed.connect(&a, &bob_token).await?;
    two.drop_connection();
    two.resume(&token).await?;
    Ok(())
}

#[tokio::test]
async fn a_silent_connection_is_dropped_and_its_session_expires() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.msg_config("node-a");
    config.timing.ping_secs = 1;
    config.timing.grace_secs = 1;
    let a = bed.msg_node(config).await?;
    let (alice_token, _) = bed.user_token("alice");
    let (alice, alice_h) = stalled(&a, &alice_token).await?;
    let (bob, bob_h) = bed.user(&a, "bob").await?;
    // alice's link is never read (so it never answers pings); bob's client keeps reading,
    // which answers the node's pings.
    bob.wait_until_gone(&bob_h, &alice_h, Duration::from_millis(250), WAIT)
        .await
        .context("the silent connection was never dropped")?;
    let me = bob.lookup(&bob_h, bob_h.as_str()).await;
    assert!(me.is_ok(), "the active connection must survive: {me:?}");
    drop(alice);
    Ok(())
}

#[tokio::test]
async fn an_expiring_token_closes_the_connection_and_the_session_can_resume() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let (short, _) = bed.short_user_token("alice", Duration::from_secs(1));
    let alice = bed.connect(&a, &short).await?;
    let h = alice.register(json!({"name": "test"})).await?;
    let resume_token = alice.resume_token();
    let ended = alice.closed().await?;
    assert_eq!(
        ended,
        Closed::new(
            4002,
            "token expired; reconnect with a fresh token and resume"
        )
    );
    let (fresh, _) = bed.user_token("alice");
    let back = resume(&a, &fresh, &resume_token).await?;
    let welcome = back.welcome();
    assert_eq!(welcome.addresses, vec![h]);
    assert_eq!(welcome.previous_close.map(|c| c.code), Some(4002));
    Ok(())
}
