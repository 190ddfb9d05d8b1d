//! Two replicas sharing one Redis: registration, discovery and messages across them, and the
//! routing errors (403 spoofed `from`, 404 unknown address, 408 unconfirmed delivery).

use anyhow::Result;
use rethink_msg_client::{Address, Message, MessageType};
use rethink_testbed::TestBed;
use serde_json::json;

#[tokio::test]
async fn clients_on_two_replicas_exchange_messages() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let (bob, bob_h) = bed.user(&b, "bob").await?;
    assert_eq!(alice.welcome().node, "node-a");
    assert_eq!(bob.welcome().node, "node-b");

    // Discovery through the other replica.
    let found = alice.lookup(&alice_h, "user://localhost/bob").await?;
    assert_eq!(found["hyperties"][0]["address"], bob_h.as_str(), "{found}");
    assert_eq!(found["hyperties"][0]["descriptor"]["name"], "test");

    // alice -> bob arrives unchanged; bob's response comes back to alice.
    let hello = json!({
        "id": "m1", "type": "execute", "from": alice_h, "to": bob_h,
        "body": {"method": "hello", "params": [1, "two", {"three": 3.5}]},
        "trace": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    });
    let asking = tokio::spawn({
        let alice = alice.clone();
        let hello: Message = serde_json::from_value(hello.clone())?;
        async move { alice.request(hello).await }
    });
    let got = bob.recv().await?;
    assert_eq!(got.to_value(), hello);
    bob.send(got.reply(json!("hi alice"))).await?;
    let reply = asking.await??;
    assert_eq!(reply.from, bob_h);
    assert_eq!(reply.value(), "hi alice");

    // Order is kept across replicas.
    for n in 0..50 {
        bob.send(Message::new(MessageType::Forward, &bob_h, &alice_h, json!({"n": n})).with_id(n))
            .await?;
    }
    for n in 0..50 {
        let m = alice.recv().await?;
        assert_eq!(m.body["n"], n, "{m}");
    }

    // A user's hyperties disappear from discovery when they unregister.
    let deleted = bob
        .request(Message::new(
            MessageType::Delete,
            &bob_h,
            &bob.registry(),
            json!({"resource": bob_h}),
        ))
        .await?;
    assert_eq!(deleted.code(), 200, "{deleted}");
    let found = alice.lookup(&alice_h, "user://localhost/bob").await?;
    assert_eq!(found["hyperties"], json!([]));
    let gone = alice
        .request(Message::new(
            MessageType::Execute,
            &alice_h,
            &bob_h,
            json!({}),
        ))
        .await?;
    assert_eq!(gone.code(), 404, "{gone}");
    Ok(())
}

#[tokio::test]
async fn spoofed_unknown_and_unreachable_addresses_are_refused() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let (bob, bob_h) = bed.user(&b, "bob").await?;
    let execute =
        |from: &Address, to: &Address| Message::new(MessageType::Execute, from, to, json!({}));

    // alice pretends to be bob: 403, and bob gets nothing.
    let spoofed = alice.request(execute(&bob_h, &alice_h)).await?;
    assert_eq!(spoofed.code(), 403, "{spoofed}");
    assert!(
        spoofed
            .description()
            .contains("not an address of this connection")
    );
    // ... also when the target is on the other replica.
    let someone = Address::parse("hyperty://localhost/someone")?;
    let spoofed = alice.request(execute(&someone, &bob_h)).await?;
    assert_eq!(spoofed.code(), 403);

    // Unknown hyperty and unknown scheme: 404.
    let nobody = Address::parse("hyperty://localhost/00000000-0000-4000-8000-000000000000")?;
    let unknown = alice.request(execute(&alice_h, &nobody)).await?;
    assert_eq!(unknown.code(), 404, "{unknown}");
    let elsewhere = Address::parse("hyperty://elsewhere.org/bob")?;
    let unknown = alice.request(execute(&alice_h, &elsewhere)).await?;
    assert_eq!(unknown.code(), 404);

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
    let timed_out = alice
        .request(execute(&alice_h, &Address::parse(ghost)?))
        .await?;
    assert_eq!(timed_out.code(), 408, "{timed_out}");

    // The connection is still fine afterwards, and bob never saw the spoofed messages.
    alice
        .send(Message::new(MessageType::Execute, &alice_h, &bob_h, json!({"x": 1})).with_id(99))
        .await?;
    let first = bob.recv().await?;
    assert_eq!(first.body["x"], 1, "bob's first message: {first}");
    Ok(())
}
