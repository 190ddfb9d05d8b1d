//! Two replicas sharing one Redis: registration, discovery and messages across them, and the
//! routing errors (403 spoofed `from`, 404 unknown address, 408 unconfirmed delivery).

mod common;

use anyhow::Result;
use common::{REGISTRY, TestBed, code};
use serde_json::json;

#[tokio::test]
async fn clients_on_two_replicas_exchange_messages() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let b = bed.default_replica("node-b").await?;
    let (mut alice, alice_h) = bed.user(&a, "alice").await?;
    let (mut bob, bob_h) = bed.user(&b, "bob").await?;
    assert_eq!(alice.session["node"], "node-a");
    assert_eq!(bob.session["node"], "node-b");

    // Discovery through the other replica.
    let found = alice.lookup(&alice_h, "user://localhost/bob").await?;
    assert_eq!(code(&found), 200, "{found}");
    assert_eq!(
        found["body"]["value"]["hyperties"][0]["address"],
        bob_h.as_str()
    );
    assert_eq!(
        found["body"]["value"]["hyperties"][0]["descriptor"]["name"],
        "test"
    );

    // alice -> bob arrives unchanged; bob's response comes back to alice.
    let hello = json!({
        "id": "m1", "type": "execute", "from": alice_h, "to": bob_h,
        "body": {"method": "hello", "params": [1, "two", {"three": 3.5}]},
        "trace": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    });
    alice.send(&hello).await?;
    let got = bob.recv().await?;
    assert_eq!(got, hello);
    bob.send(&json!({
        "id": "m1", "type": "response", "from": bob_h, "to": alice_h,
        "body": {"code": 200, "value": "hi alice"}
    }))
    .await?;
    let reply = alice.response_to(&json!("m1")).await?;
    assert_eq!(reply["from"], bob_h.as_str());
    assert_eq!(reply["body"]["value"], "hi alice");

    // Order is kept across replicas.
    for n in 0..50 {
        bob.send(
            &json!({"id": n, "type": "forward", "from": bob_h, "to": alice_h, "body": {"n": n}}),
        )
        .await?;
    }
    for n in 0..50 {
        let m = alice.recv().await?;
        assert_eq!(m["body"]["n"], n, "{m}");
    }

    // A user's hyperties disappear from discovery when they unregister.
    let deleted = bob
        .request("delete", &bob_h, REGISTRY, json!({"resource": bob_h}))
        .await?;
    assert_eq!(code(&deleted), 200, "{deleted}");
    let found = alice.lookup(&alice_h, "user://localhost/bob").await?;
    assert_eq!(found["body"]["value"]["hyperties"], json!([]));
    let gone = alice
        .request("execute", &alice_h, &bob_h, json!({}))
        .await?;
    assert_eq!(code(&gone), 404, "{gone}");
    Ok(())
}

#[tokio::test]
async fn spoofed_unknown_and_unreachable_addresses_are_refused() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let b = bed.default_replica("node-b").await?;
    let (mut alice, alice_h) = bed.user(&a, "alice").await?;
    let (mut bob, bob_h) = bed.user(&b, "bob").await?;

    // alice pretends to be bob: 403, and bob gets nothing.
    let spoofed = alice
        .request("execute", &bob_h, &alice_h, json!({}))
        .await?;
    assert_eq!(code(&spoofed), 403, "{spoofed}");
    assert!(
        spoofed["body"]["description"]
            .as_str()
            .unwrap()
            .contains("not an address of this connection")
    );
    // ... also when the target is on the other replica.
    let spoofed = alice
        .request("execute", "hyperty://localhost/someone", &bob_h, json!({}))
        .await?;
    assert_eq!(code(&spoofed), 403);

    // Unknown hyperty and unknown scheme: 404.
    let unknown = alice
        .request(
            "execute",
            &alice_h,
            "hyperty://localhost/00000000-0000-4000-8000-000000000000",
            json!({}),
        )
        .await?;
    assert_eq!(code(&unknown), 404, "{unknown}");
    let unknown = alice
        .request(
            "execute",
            &alice_h,
            "hyperty://elsewhere.org/bob",
            json!({}),
        )
        .await?;
    assert_eq!(code(&unknown), 404);

    // An address whose replica died (its map entry not yet expired): nobody confirms -> 408.
    let ghost = "hyperty://localhost/ghost";
    let record = json!({
        "address": ghost, "node": "crashed-node", "runtime": "runtime://localhost/x",
        "identity": "user:ghost", "descriptor": {}
    });
    bed.backends
        .kv
        .set(
            &rethink_msg_node::address::address_key(ghost),
            bytes::Bytes::from(record.to_string()),
            Some(std::time::Duration::from_secs(30)),
        )
        .await?;
    let timed_out = alice.request("execute", &alice_h, ghost, json!({})).await?;
    assert_eq!(code(&timed_out), 408, "{timed_out}");

    // The connection is still fine afterwards, and bob never saw the spoofed messages.
    alice
        .send(&json!({"id": 99, "type": "execute", "from": alice_h, "to": bob_h, "body": {"x": 1}}))
        .await?;
    let first = bob.recv().await?;
    assert_eq!(first["body"]["x"], 1, "bob's first message: {first}");
    Ok(())
}
