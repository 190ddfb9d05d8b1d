//! Data-object sync through two replicas: create, subscribe, ordered updates, delete, and the
//! reporter-only and version rules.

use std::time::Duration;

use anyhow::{Context, Result};
use rethink_msg_client::{Address, ClientError, Message, MessageType};
use rethink_testbed::TestBed;
use serde_json::json;

/// Returns the URL of a created object (from the create response).
fn url_of(created: &Message) -> Result<Address> {
    Ok(created.value()["url"]
        .as_str()
        .context("no url in the create response")?
        .parse()?)
}

#[tokio::test]
async fn observers_on_both_replicas_see_every_change_in_order() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let (bob, bob_h) = bed.user(&b, "bob").await?;
    let (carol, carol_h) = bed.user(&a, "carol").await?;

    let created = alice.ask(MessageType::Create,
        &alice_h,
        &alice.sync_service(),
        json!({"resource": "object", "schema": "room", "value": {"participants": []}, "observers": ["user:*"]}),
    )
    .await?;
    assert_eq!(created.code(), 200, "{created}");
    let url = url_of(&created)?;
    assert!(url.as_str().starts_with("object://localhost/"), "{url}");
    assert_eq!(created.value()["version"], 1);
    assert_eq!(created.value()["reporter"], alice_h.as_str());

    for (client, me) in [(&bob, &bob_h), (&carol, &carol_h)] {
        let snap = client
            .ask(MessageType::Subscribe, me, &url, json!({}))
            .await?;
        assert_eq!(snap.code(), 200, "{snap}");
        assert_eq!(snap.value()["version"], 1);
        assert_eq!(snap.value()["value"], json!({"participants": []}));
    }

    // Five updates, each based on the previous version.
    for v in 1..=5u64 {
        let r = alice
            .ask(
                MessageType::Update,
                &alice_h,
                &url,
                json!({"version": v, "value": {"n": v}}),
            )
            .await?;
        assert_eq!(r.value()["version"], v + 1, "{r}");
    }
    // A stale version is refused; so is anyone but the reporter.
    let stale = alice
        .ask(
            MessageType::Update,
            &alice_h,
            &url,
            json!({"version": 2, "value": {}}),
        )
        .await?;
    assert_eq!(stale.code(), 409, "{stale}");
    let not_reporter = bob
        .ask(
            MessageType::Update,
            &bob_h,
            &url,
            json!({"version": 6, "value": {}}),
        )
        .await?;
    assert_eq!(not_reporter.code(), 403, "{not_reporter}");
    let not_reporter = bob
        .ask(MessageType::Delete, &bob_h, &url, json!({}))
        .await?;
    assert_eq!(not_reporter.code(), 403);

    let deleted = alice
        .ask(MessageType::Delete, &alice_h, &url, json!({}))
        .await?;
    assert_eq!(deleted.code(), 200, "{deleted}");

    for (client, me) in [(&bob, &bob_h), (&carol, &carol_h)] {
        for v in 2..=6u64 {
            let m = client.recv().await?;
            assert_eq!(m.kind, MessageType::Update, "{m}");
            assert_eq!(m.from, url);
            assert_eq!(&m.to, me);
            assert_eq!(m.body["version"], v);
            assert_eq!(m.body["value"], json!({"n": v - 1}));
        }
        let m = client.recv().await?;
        assert_eq!(m.kind, MessageType::Delete, "{m}");
        assert_eq!(m.body["version"], 7);
    }
    let gone = bob.ask(MessageType::Read, &bob_h, &url, json!({})).await?;
    assert_eq!(gone.code(), 404);
    Ok(())
}

#[tokio::test]
async fn unsubscribe_stops_changes_and_objects_need_a_hyperty() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let (bob, bob_h) = bed.user(&b, "bob").await?;
    let sync = alice.sync_service();

    let refused = alice
        .ask(
            MessageType::Create,
            &alice.runtime(),
            &sync,
            json!({"resource": "object", "schema": "s"}),
        )
        .await?;
    assert_eq!(refused.code(), 400, "{refused}");
    let bad = alice
        .ask(
            MessageType::Create,
            &alice_h,
            &sync,
            json!({"resource": "thing"}),
        )
        .await?;
    assert_eq!(bad.code(), 400);

    let created = alice.ask(MessageType::Create,
        &alice_h,
        &sync,
        json!({"resource": "object", "schema": "s", "value": {"a": 1}, "observers": ["user:bob"]}),
    )
    .await?;
    let url = url_of(&created)?;
    // Subscribing through the sync address with body.resource works too.
    let snap = bob
        .ask(
            MessageType::Subscribe,
            &bob_h,
            &sync,
            json!({"resource": url}),
        )
        .await?;
    assert_eq!(snap.value()["value"], json!({"a": 1}));
    alice
        .ask(
            MessageType::Update,
            &alice_h,
            &url,
            json!({"version": 1, "value": {"a": 2}}),
        )
        .await?;
    assert_eq!(bob.recv().await?.body["version"], 2);
    let un = bob
        .ask(MessageType::Unsubscribe, &bob_h, &url, json!({}))
        .await?;
    assert_eq!(un.code(), 200, "{un}");
    alice
        .ask(
            MessageType::Update,
            &alice_h,
            &url,
            json!({"version": 2, "value": {"a": 3}}),
        )
        .await?;
    // Prove nothing more arrives: a round trip after the update sees no update first.
    let read = bob.ask(MessageType::Read, &bob_h, &url, json!({})).await?;
    assert_eq!(read.value()["version"], 3);
    assert!(
        matches!(
            bob.recv_within(Duration::from_millis(300)).await,
            Err(ClientError::Timeout(_))
        ),
        "an unsubscribed observer got a change"
    );
    Ok(())
}
