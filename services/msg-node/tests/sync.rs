//! Data-object sync through two replicas: create, subscribe, ordered updates, delete, and the
//! reporter-only and version rules.

mod common;

use anyhow::Result;
use common::{TestBed, code};
use serde_json::json;

#[tokio::test]
async fn observers_on_both_replicas_see_every_change_in_order() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let b = bed.default_replica("node-b").await?;
    let (mut alice, alice_h) = bed.user(&a, "alice").await?;
    let (mut bob, bob_h) = bed.user(&b, "bob").await?;
    let (mut carol, carol_h) = bed.user(&a, "carol").await?;

    let created = alice
        .request(
            "create",
            &alice_h,
            "domain://sync.localhost",
            json!({"resource": "object", "schema": "room", "value": {"participants": []}, "observers": ["user:*"]}),
        )
        .await?;
    assert_eq!(code(&created), 200, "{created}");
    let url = created["body"]["value"]["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("object://localhost/"), "{url}");
    assert_eq!(created["body"]["value"]["version"], 1);
    assert_eq!(created["body"]["value"]["reporter"], alice_h.as_str());

    for (client, me) in [(&mut bob, &bob_h), (&mut carol, &carol_h)] {
        let snap = client.request("subscribe", me, &url, json!({})).await?;
        assert_eq!(code(&snap), 200, "{snap}");
        assert_eq!(snap["body"]["value"]["version"], 1);
        assert_eq!(snap["body"]["value"]["value"], json!({"participants": []}));
    }

    // Five updates, each based on the previous version.
    for v in 1..=5u64 {
        let r = alice
            .request(
                "update",
                &alice_h,
                &url,
                json!({"version": v, "value": {"n": v}}),
            )
            .await?;
        assert_eq!(r["body"]["value"]["version"], v + 1, "{r}");
    }
    // A stale version is refused; so is anyone but the reporter.
    let stale = alice
        .request("update", &alice_h, &url, json!({"version": 2, "value": {}}))
        .await?;
    assert_eq!(code(&stale), 409, "{stale}");
    let not_reporter = bob
        .request("update", &bob_h, &url, json!({"version": 6, "value": {}}))
        .await?;
    assert_eq!(code(&not_reporter), 403, "{not_reporter}");
    let not_reporter = bob.request("delete", &bob_h, &url, json!({})).await?;
    assert_eq!(code(&not_reporter), 403);

    let deleted = alice.request("delete", &alice_h, &url, json!({})).await?;
    assert_eq!(code(&deleted), 200, "{deleted}");

    for (client, me) in [(&mut bob, &bob_h), (&mut carol, &carol_h)] {
        for v in 2..=6u64 {
            let m = client.recv().await?;
            assert_eq!(m["type"], "update", "{m}");
            assert_eq!(m["from"], url.as_str());
            assert_eq!(m["to"], me.as_str());
            assert_eq!(m["body"]["version"], v);
            assert_eq!(m["body"]["value"], json!({"n": v - 1}));
        }
        let m = client.recv().await?;
        assert_eq!(m["type"], "delete", "{m}");
        assert_eq!(m["body"]["version"], 7);
    }
    let gone = bob.request("read", &bob_h, &url, json!({})).await?;
    assert_eq!(code(&gone), 404);
    Ok(())
}

#[tokio::test]
async fn unsubscribe_stops_changes_and_objects_need_a_hyperty() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let b = bed.default_replica("node-b").await?;
    let (mut alice, alice_h) = bed.user(&a, "alice").await?;
    let (mut bob, bob_h) = bed.user(&b, "bob").await?;

    let runtime = alice.runtime.clone();
    let refused = alice
        .request(
            "create",
            &runtime,
            "domain://sync.localhost",
            json!({"resource": "object", "schema": "s"}),
        )
        .await?;
    assert_eq!(code(&refused), 400, "{refused}");
    let bad = alice
        .request(
            "create",
            &alice_h,
            "domain://sync.localhost",
            json!({"resource": "thing"}),
        )
        .await?;
    assert_eq!(code(&bad), 400);

    let created = alice
        .request(
            "create",
            &alice_h,
            "domain://sync.localhost",
            json!({"resource": "object", "schema": "s", "value": {"a": 1}, "observers": ["user:bob"]}),
        )
        .await?;
    let url = created["body"]["value"]["url"].as_str().unwrap().to_owned();
    // Subscribing through the sync address with body.resource works too.
    let snap = bob
        .request(
            "subscribe",
            &bob_h,
            "domain://sync.localhost",
            json!({"resource": url}),
        )
        .await?;
    assert_eq!(snap["body"]["value"]["value"], json!({"a": 1}));
    alice
        .request(
            "update",
            &alice_h,
            &url,
            json!({"version": 1, "value": {"a": 2}}),
        )
        .await?;
    assert_eq!(bob.recv().await?["body"]["version"], 2);
    let un = bob.request("unsubscribe", &bob_h, &url, json!({})).await?;
    assert_eq!(code(&un), 200, "{un}");
    alice
        .request(
            "update",
            &alice_h,
            &url,
            json!({"version": 2, "value": {"a": 3}}),
        )
        .await?;
    // Prove nothing more arrives: a round trip after the update sees no update first.
    let read = bob.request("read", &bob_h, &url, json!({})).await?;
    assert_eq!(read["body"]["value"]["version"], 3);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), bob.recv())
            .await
            .is_err(),
        "an unsubscribed observer got a change"
    );
    Ok(())
}
