//! The client against real msg-node replicas (Redis, auth and nodes from `rethink-testbed`):
//! a WebSocket and an Attach client exchanging requests with (sender, id) matching, resume
//! after a dropped connection, and reporter/observer sync of one object.

use std::time::Duration;

use anyhow::Result;
use rethink_msg_client::{
    Address, Change, Client, ClientError, ClientOptions, Closed, Message, MessageType, Observer,
    Reporter, Target,
};
use rethink_testbed::TestBed;
use serde_json::json;

#[tokio::test]
async fn a_websocket_and_an_attach_client_exchange_requests_matched_by_sender_and_id() -> Result<()>
{
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;

    // A service attached over gRPC on one replica holds a well-known address.
    // (The conference address is reserved for the `service:conference` identity.)
    let service = bed.attach(&a, "service:conference").await?;
    let conference = Address::hyperty("localhost", "conference")?;
    let claimed = service
        .register_well_known(&conference, Some(json!({"kind": "conference"})))
        .await?;
    assert_eq!(claimed, conference);

    // A browser on the other replica, token in the Authorization header, with two hyperties
    // on one connection.
    let (token, _) = bed.user_token("alice");
    let alice = Client::connect(Target::ws_with_header(b.ws_base()), &token).await?;
    let h1 = alice.register(json!({"name": "one"})).await?;
    let h2 = alice.register(json!({"name": "two"})).await?;

    // Both hyperties ask with the same id; each gets the answer meant for it.
    let ask = |from: &Address| {
        Message::new(
            MessageType::Execute,
            from,
            &conference,
            json!({"method": "who"}),
        )
        .with_id(7)
    };
    let answering = tokio::spawn({
        let service = service.clone();
        async move {
            for _ in 0..2 {
                let request = service.recv().await?;
                assert_eq!(request.kind, MessageType::Execute);
                service
                    .send(request.reply(json!({"you": request.from})))
                    .await?;
            }
            anyhow::Ok(())
        }
    });
    let (r1, r2) = tokio::join!(alice.request(ask(&h1)), alice.request(ask(&h2)));
    answering.await??;
    let (r1, r2) = (r1?, r2?);
    assert_eq!(
        (r1.code(), r1.value()["you"].as_str()),
        (200, Some(h1.as_str())),
        "{r1}"
    );
    assert_eq!(
        (r2.code(), r2.value()["you"].as_str()),
        (200, Some(h2.as_str())),
        "{r2}"
    );

    // The node's own refusals come back as protocol errors: a `from` not owned is 403.
    let stranger = Address::hyperty("localhost", "not-mine")?;
    let refused = alice
        .call(MessageType::Execute, &stranger, &conference, json!({}))
        .await;
    assert!(
        matches!(refused, Err(ClientError::Protocol { code: 403, .. })),
        "{refused:?}"
    );

    // A request nobody answers times out instead of hanging.
    let impatient = Client::connect_with(
        b.ws(),
        &bed.user_token("bob").0,
        None,
        ClientOptions {
            request_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        },
    )
    .await?;
    let bob = impatient.register(json!({})).await?;
    let unanswered = impatient
        .request(Message::new(
            MessageType::Execute,
            &bob,
            &conference,
            json!({}),
        ))
        .await;
    assert!(
        matches!(unanswered, Err(ClientError::Timeout(_))),
        "{unanswered:?}"
    );
    // The service did get it, as an inbound message.
    assert_eq!(service.recv().await?.from, bob);

    // Registry helpers: lookup of the service, 404 for an unknown address.
    let found = alice.lookup(&h1, conference.as_str()).await?;
    assert_eq!(found["descriptor"]["kind"], "conference", "{found}");
    let missing = alice.lookup(&h1, "hyperty://localhost/nobody").await;
    assert_eq!(missing.err().and_then(|e| e.code()), Some(404));

    // A malformed frame is answered; the answer, addressed to what the frame named, comes
    // through the unparsed queue and the connection stays usable.
    alice.send_text(r#"{"id":1,"from":"a","to":"b"}"#).await?;
    let answer: serde_json::Value = serde_json::from_str(&alice.recv_unparsed().await?)?;
    assert_eq!(answer["body"]["code"], 400, "{answer}");
    assert_eq!(
        alice.lookup(&h1, h1.as_str()).await?["address"],
        h1.as_str()
    );

    // A clean close is reported with its code.
    let closed = service.close().await?;
    assert_eq!(closed.code, Closed::NORMAL, "{closed}");
    Ok(())
}

#[tokio::test]
async fn a_resume_after_a_dropped_connection_keeps_the_address() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let (alice, me) = bed.user(&a, "alice").await?;
    let (bob, bob_h) = bed.user(&a, "bob").await?;
    let first_runtime = alice.runtime();

    alice.drop_connection();
    assert_eq!(alice.closed().await?.code, Closed::ABNORMAL);
    let gone = alice
        .request(Message::new(
            MessageType::Read,
            &me,
            &alice.registry(),
            json!({}),
        ))
        .await;
    assert!(matches!(gone, Err(ClientError::Closed(_))), "{gone:?}");

    // A fresh token of the same identity resumes the session: same runtime, same hyperty.
    let (fresh, _) = bed.user_token("alice");
    let welcome = alice.resume(&fresh).await?;
    assert!(welcome.resumed, "{welcome:?}");
    assert_eq!(welcome.runtime, first_runtime);
    assert_eq!(welcome.addresses, vec![me.clone()]);

    // Messages to the kept address reach the resumed connection.
    bob.send(Message::new(MessageType::Forward, &bob_h, &me, json!({"n": 1})).with_id(1))
        .await?;
    let got = alice.recv().await?;
    assert_eq!(
        (got.from.clone(), got.body["n"].clone()),
        (bob_h.clone(), json!(1)),
        "{got}"
    );
    // And the resumed client's requests work again.
    assert_eq!(
        alice.lookup(&me, me.as_str()).await?["address"],
        me.as_str()
    );

    // The session moves to another replica the same way, still with its address.
    let b = bed.default_msg_node("node-b").await?;
    alice.drop_connection();
    let moved = alice.resume_at(b.ws(), &fresh).await?;
    assert!(moved.resumed, "{moved:?}");
    assert_eq!(
        (moved.node.as_str(), moved.addresses.clone()),
        ("node-b", vec![me.clone()])
    );
    assert_eq!(
        alice.lookup(&me, me.as_str()).await?["address"],
        me.as_str()
    );

    // A resume token of another identity is refused before the upgrade.
    let (mallory, _) = bed.user_token("mallory");
    let status =
        rethink_testbed::refused_status(&a.resume_url(&mallory, &alice.resume_token())).await?;
    assert_eq!(status, 403);
    Ok(())
}

#[tokio::test]
async fn a_reporter_and_an_observer_on_two_replicas_sync_one_object() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let (bob, bob_h) = bed.user(&b, "bob").await?;

    // Objects are private by default: the reporter names bob as an observer.
    let mut reporter =
        Reporter::create_with(&alice, &alice_h, "note", json!({"text": ""}), &["user:bob"]).await?;
    assert_eq!(reporter.state().version, 1);
    // An object that names nobody stays private to alice's identity.
    let private = Reporter::create(&alice, &alice_h, "note", json!({})).await?;
    let refused = Observer::subscribe(&bob, &bob_h, private.url()).await;
    assert_eq!(refused.err().and_then(|e| e.code()), Some(403));
    let mut observer = Observer::subscribe(&bob, &bob_h, reporter.url()).await?;
    assert_eq!(
        (observer.version(), observer.value().clone()),
        (1, json!({"text": ""}))
    );
    assert_eq!(observer.state().reporter, alice_h);

    assert_eq!(reporter.update(json!({"text": "hello"})).await?, 2);
    assert_eq!(reporter.update(json!({"text": "hello bob"})).await?, 3);
    assert_eq!(
        observer.next_change().await?,
        Change::Updated {
            version: 2,
            value: json!({"text": "hello"})
        }
    );
    assert_eq!(
        observer.next_change().await?,
        Change::Updated {
            version: 3,
            value: json!({"text": "hello bob"})
        }
    );
    assert_eq!(observer.read().await?.value, json!({"text": "hello bob"}));

    // Only the reporter writes.
    let body = json!({"version": 3, "value": {"text": "mine now"}});
    let refused = bob
        .call(MessageType::Update, &bob_h, reporter.url(), body)
        .await;
    assert_eq!(refused.err().and_then(|e| e.code()), Some(403));

    reporter.delete().await?;
    assert!(matches!(
        observer.next_change().await?,
        Change::Deleted { .. }
    ));
    // Changes never reached the general inbound queue.
    assert!(matches!(
        bob.recv_within(Duration::from_millis(200)).await,
        Err(ClientError::Timeout(_))
    ));
    Ok(())
}

#[tokio::test]
async fn a_renewed_token_keeps_the_connection_past_the_first_tokens_revocation() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    // A renewal takes only a token that lives longer than the current one.
    let (first, first_claims) = bed.short_user_token("alice", Duration::from_secs(60));
    let alice = bed.connect(&a, &first).await?;
    let me = alice.register(json!({})).await?;

    // Only a valid token of the same identity renews.
    let refused = alice.renew_token(&bed.user_token("bob").0).await;
    assert_eq!(refused.err().and_then(|e| e.code()), Some(403));
    let refused = alice.renew_token("garbage").await;
    assert_eq!(refused.err().and_then(|e| e.code()), Some(401));
    let (fresh, fresh_claims) = bed.user_token("alice");
    let renewed = alice.renew_token(&fresh).await?;
    assert_eq!(renewed["exp"], fresh_claims.exp, "{renewed}");

    // The replaced token no longer holds the connection: revoking it changes nothing.
    bed.auth
        .revoke(&first_claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        alice.lookup(&me, me.as_str()).await?["address"],
        me.as_str()
    );
    bed.auth
        .revoke(&fresh_claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(alice.closed().await?, Closed::new(4001, "token revoked"));
    Ok(())
}
