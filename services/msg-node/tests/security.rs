//! Who may do what, as a client sees it: reserved well-known addresses, who observes a data
//! object, objects of ended sessions, the per-identity object limit, transport bounds, and
//! tokens that lapse or are renewed during a session.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rethink_common::token::{Claims, Grants, ServiceGrants};
use rethink_msg_client::{
    Address, Client, ClientError, ClientOptions, Closed, Message, MessageId, MessageType, Target,
};
use rethink_testbed::{RawWs, TestBed, WAIT};
use serde_json::{Value, json};

/// How long after a revocation the connection must be closed.
const REVOCATION_CLOSES_WITHIN: Duration = Duration::from_secs(1);

fn claim_body(address: &str) -> Value {
    json!({"resource": "hyperty", "address": address})
}

fn attach_grants() -> Grants {
    Grants {
        services: ServiceGrants { attach: true },
        ..Grants::default()
    }
}

/// Mints a token for any subject with `grants`, valid for `ttl` (None: the maximum).
fn token_for(bed: &TestBed, sub: &str, grants: Grants, ttl: Option<Duration>) -> (String, Claims) {
    let issued = bed
        .auth
        .issue(sub, sub, grants, ttl)
        .expect("the auth service issues tokens");
    (issued.token, issued.claims)
}

/// Asks the registry, as `client`'s runtime, for the well-known `address`; returns the
/// response whatever its code (works on both transports).
async fn claim(client: &Client, address: &str) -> Result<Message> {
    Ok(client
        .request(Message::new(
            MessageType::Create,
            &client.runtime(),
            &client.registry(),
            claim_body(address),
        ))
        .await?)
}

#[tokio::test]
async fn reserved_addresses_are_claimed_only_by_the_identities_configured() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;

    // Over Attach: only service:conference gets the conference address.
    let impostor = bed.attach(&a, "service:impostor").await?;
    let refused = claim(&impostor, "hyperty://localhost/conference").await?;
    assert_eq!(refused.code(), 403, "{refused}");
    assert!(
        refused.description().contains("service:conference"),
        "{refused}"
    );
    assert_eq!(
        claim(&impostor, "hyperty://localhost/camera/front")
            .await?
            .code(),
        403
    );
    // A path nobody reserved is open to attached services.
    assert_eq!(
        claim(&impostor, "hyperty://localhost/weather")
            .await?
            .code(),
        200
    );
    let conference = bed.attach(&b, "service:conference").await?;
    assert_eq!(
        claim(&conference, "hyperty://localhost/conference")
            .await?
            .code(),
        200
    );
    // Two allowed identities still cannot share one address.
    let publisher = bed.attach(&a, "service:publisher-1").await?;
    assert_eq!(
        claim(&publisher, "hyperty://localhost/camera/front")
            .await?
            .code(),
        200
    );
    let publisher2 = bed.attach(&b, "service:publisher-2").await?;
    assert_eq!(
        claim(&publisher2, "hyperty://localhost/camera/front")
            .await?
            .code(),
        409
    );

    // Over the WebSocket: a user may claim none of them; a camera identity its camera address.
    let (alice, me) = bed.user(&a, "alice").await?;
    for address in [
        "hyperty://localhost/conference",
        "hyperty://localhost/camera/back",
        "hyperty://localhost/other",
    ] {
        let r = alice
            .ask(
                MessageType::Create,
                &me,
                &alice.registry(),
                claim_body(address),
            )
            .await?;
        assert_eq!(r.code(), 403, "{address}: {r}");
    }
    let (camera_token, _) = token_for(&bed, "camera:back", Grants::user(), None);
    let camera = bed.connect(&b, &camera_token).await?;
    let r = claim(&camera, "hyperty://localhost/camera/back").await?;
    assert_eq!(r.code(), 200, "{r}");
    // The camera pattern covers one segment only.
    let r = claim(&camera, "hyperty://localhost/camera/back/extra").await?;
    assert_eq!(r.code(), 403, "{r}");
    Ok(())
}

#[tokio::test]
async fn a_configured_reserved_table_replaces_the_defaults() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.msg_config("node-a");
    config.registry.reserved = vec![rethink_msg_node::config::ReservedAddress {
        address: "hyperty://{domain}/camera/**".into(),
        subjects: vec!["service:camera-*".into()],
    }];
    let a = bed.msg_node(config).await?;
    let cam = bed.attach(&a, "service:camera-9").await?;
    assert_eq!(
        claim(&cam, "hyperty://localhost/camera/yard/9")
            .await?
            .code(),
        200
    );
    let publisher = bed.attach(&a, "service:publisher-1").await?;
    assert_eq!(
        claim(&publisher, "hyperty://localhost/camera/x")
            .await?
            .code(),
        403
    );
    Ok(())
}

/// Creates an object as `from` with `extra` body fields; returns its URL.
async fn create_object(client: &Client, from: &Address, extra: Value) -> Result<Address> {
    let mut body = json!({"resource": "object", "schema": "s", "value": {"secret": 1}});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let r = client
        .ask(MessageType::Create, from, &client.sync_service(), body)
        .await?;
    anyhow::ensure!(r.code() == 200, "create failed: {r}");
    Ok(r.value()["url"].as_str().context("no url")?.parse()?)
}

#[tokio::test]
async fn only_the_observers_a_reporter_names_may_read_or_subscribe() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let (bob, bob_h) = bed.user(&b, "bob").await?;
    let (carol, carol_h) = bed.user(&a, "carol").await?;

    // Without observers, nobody but alice's own identity.
    let private = create_object(&alice, &alice_h, json!({})).await?;
    for kind in [MessageType::Read, MessageType::Subscribe] {
        let r = bob.ask(kind, &bob_h, &private, json!({})).await?;
        assert_eq!(r.code(), 403, "{kind}: {r}");
        assert!(r.value().is_null(), "{r}");
    }
    let (tab, tab_h) = bed.user(&b, "alice").await?;
    let r = tab
        .ask(MessageType::Read, &tab_h, &private, json!({}))
        .await?;
    assert_eq!(r.code(), 200, "{r}");

    // Named observers work across replicas; others stay out.
    let shared = create_object(&alice, &alice_h, json!({"observers": ["user:bob"]})).await?;
    let snap = bob
        .ask(MessageType::Subscribe, &bob_h, &shared, json!({}))
        .await?;
    assert_eq!(snap.code(), 200, "{snap}");
    assert_eq!(snap.value()["value"]["secret"], 1);
    for kind in [MessageType::Read, MessageType::Subscribe] {
        let r = carol.ask(kind, &carol_h, &shared, json!({})).await?;
        assert_eq!(r.code(), 403, "{kind}: {r}");
    }
    alice
        .ask(
            MessageType::Update,
            &alice_h,
            &shared,
            json!({"version": 1, "value": {"secret": 2}}),
        )
        .await?;
    let update = bob.recv().await?;
    assert_eq!(update.body["version"], 2, "{update}");

    // A pattern admits every matching identity; a malformed list is refused.
    let everyone = create_object(&alice, &alice_h, json!({"observers": ["user:*"]})).await?;
    let r = carol
        .ask(MessageType::Read, &carol_h, &everyone, json!({}))
        .await?;
    assert_eq!(r.code(), 200, "{r}");
    let bad = alice
        .ask(
            MessageType::Create,
            &alice_h,
            &alice.sync_service(),
            json!({"resource": "object", "schema": "s", "observers": "user:bob"}),
        )
        .await?;
    assert_eq!(bad.code(), 400, "{bad}");
    Ok(())
}

#[tokio::test]
async fn objects_of_an_ended_session_are_deleted() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.msg_config("node-a");
    config.timing.grace_secs = 1;
    let a = bed.msg_node(config).await?;
    let b = bed.default_msg_node("node-b").await?;
    let (alice, alice_h) = bed.user(&a, "alice").await?;
    let (bob, bob_h) = bed.user(&b, "bob").await?;
    let url = create_object(&alice, &alice_h, json!({"observers": ["user:bob"]})).await?;
    let snap = bob
        .ask(MessageType::Subscribe, &bob_h, &url, json!({}))
        .await?;
    assert_eq!(snap.code(), 200, "{snap}");

    // alice's network drops; after the grace period her session ends and its object goes.
    alice.drop_connection();
    let deleted = bob.recv().await?;
    assert_eq!(deleted.kind, MessageType::Delete, "{deleted}");
    assert_eq!(deleted.from, url);
    let gone = bob.ask(MessageType::Read, &bob_h, &url, json!({})).await?;
    assert_eq!(gone.code(), 404, "{gone}");

    // A revoked session's objects go at once, without a grace period.
    let (token, claims) = bed.user_token("alice");
    let alice = bed.connect(&a, &token).await?;
    let h = alice.register(json!({"name": "test"})).await?;
    let url = create_object(&alice, &h, json!({"observers": ["user:bob"]})).await?;
    bed.auth
        .revoke(&claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = bob.ask(MessageType::Read, &bob_h, &url, json!({})).await?;
        if r.code() == 404 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a revoked session's object stayed: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn the_object_limit_holds_per_identity_across_new_addresses() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.msg_config("node-a");
    config.limits.max_objects_per_identity = 2;
    let a = bed.msg_node(config.clone()).await?;
    config.node_id = Some("node-b".into());
    let b = bed.msg_node(config).await?;
    let (alice, first) = bed.user(&a, "alice").await?;
    create_object(&alice, &first, json!({})).await?;
    create_object(&alice, &first, json!({})).await?;
    let full = |r: &Message| r.code() == 403;
    // A new hyperty of the same connection, and a new connection on another replica, do not
    // start a new count.
    let second = alice.register(json!({"name": "test"})).await?;
    let r = alice
        .ask(
            MessageType::Create,
            &second,
            &alice.sync_service(),
            json!({"resource": "object", "schema": "s"}),
        )
        .await?;
    assert!(full(&r), "{r}");
    let (tab, tab_h) = bed.user(&b, "alice").await?;
    let r = tab
        .ask(
            MessageType::Create,
            &tab_h,
            &tab.sync_service(),
            json!({"resource": "object", "schema": "s"}),
        )
        .await?;
    assert!(full(&r), "{r}");
    // Another identity has its own allowance.
    let (bob, bob_h) = bed.user(&b, "bob").await?;
    create_object(&bob, &bob_h, json!({})).await?;
    Ok(())
}

#[tokio::test]
async fn an_oversized_message_is_refused_from_its_frame_header() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let (token, _) = bed.user_token("alice");
    // A frame that announces 100 MB and sends 1 KiB: the node closes at once (1009) instead
    // of waiting for (and buffering) the rest.
    let mut raw = RawWs::connect(&a, &token).await?;
    raw.send_partial_text(100_000_000, 1024).await?;
    assert_eq!(raw.close_code().await?, Some(1009));

    // Through the protocol client: one byte over the limit closes with 1009, and the session
    // survives for a resume.
    let alice = bed.connect(&a, &token).await?;
    let me = alice.register(json!({"name": "test"})).await?;
    let at_limit = 65536;
    let frame = json!({"id": 1, "type": "forward", "from": me, "to": me, "body": ""}).to_string();
    let fill = "x".repeat(at_limit - frame.len());
    let exact = json!({"id": 1, "type": "forward", "from": me, "to": me, "body": fill}).to_string();
    assert_eq!(exact.len(), at_limit);
    alice.send_text(exact).await?;
    assert_eq!(alice.recv().await?.id, MessageId::Int(1));
    let over = Message::new(MessageType::Forward, &me, &me, json!(format!("{fill}x"))).with_id(2);
    alice.send(over).await?;
    let ended = alice.closed().await?;
    assert_eq!(
        ended,
        Closed::new(
            1009,
            "message larger than 65536 bytes; reconnect and resume"
        )
    );
    let back = Client::connect_with(
        a.ws(),
        &token,
        Some(&alice.resume_token()),
        ClientOptions::default(),
    )
    .await?;
    let welcome = back.welcome();
    assert_eq!(welcome.addresses, vec![me]);
    assert_eq!(welcome.previous_close.map(|c| c.code), Some(1009));
    Ok(())
}

const SLOW: &str = r#"
version = 1
default_action = "allow"

[limits]
rate = 20.0
burst = 40
"#;

#[tokio::test]
async fn malformed_frames_count_against_the_rate_limit() -> Result<()> {
    let bed = TestBed::start().await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, SLOW)?;
    let mut config = bed.msg_config("node-a");
    config.policy_file = Some(path);
    let a = bed.msg_node(config).await?;
    let (token, _) = bed.user_token("mallory");
    let mallory = bed.connect(&a, &token).await?;
    let started = Instant::now();
    for _ in 0..800 {
        mallory.send_text("{oops").await?;
    }
    let (mut diagnosed, mut limited) = (0u32, 0u32);
    for _ in 0..800 {
        // The answers come from the node to the runtime: messages, not unparsed frames.
        let r = mallory.recv().await?;
        match r.code() {
            400 => diagnosed += 1,
            429 => limited += 1,
            other => panic!("unexpected answer {other}: {r}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("800 malformed frames in {elapsed:.2} s: {diagnosed} answered 400, {limited} 429");
    // The bucket holds 40 and refills 20 per second: that many diagnoses at most.
    let allowed = 40.0 + 20.0 * elapsed + 1.0;
    assert!(
        f64::from(diagnosed) <= allowed,
        "{diagnosed} malformed frames answered 400 in {elapsed:.1} s (bucket allows {allowed:.0})"
    );
    assert!(limited > 0, "no 429 among 800 malformed frames");
    Ok(())
}

#[tokio::test]
async fn revocation_closes_a_websocket_and_an_attach_stream_within_a_second() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;

    let (token, claims) = bed.user_token("alice");
    let alice = bed.connect(&a, &token).await?;
    alice.register(json!({"name": "test"})).await?;
    let revoked = Instant::now();
    bed.auth
        .revoke(&claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(alice.closed().await?, Closed::new(4001, "token revoked"));
    let took = revoked.elapsed();
    eprintln!("websocket closed {took:?} after the revocation");
    assert!(
        took < REVOCATION_CLOSES_WITHIN,
        "websocket closed {took:?} after revocation"
    );

    let (service, claims) = token_for(&bed, "service:publisher-7", attach_grants(), None);
    let stream = Client::connect(a.attach_target(), &service).await?;
    let revoked = Instant::now();
    bed.auth
        .revoke(&claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The stream ends with UNAUTHENTICATED "token revoked": 4001 in close-code terms.
    let end = stream.closed().await?;
    let took = revoked.elapsed();
    assert_eq!(end.code, 4001, "{end}");
    eprintln!("attach stream ended {took:?} after the revocation");
    assert!(
        took < REVOCATION_CLOSES_WITHIN,
        "attach stream ended {took:?} after revocation"
    );
    Ok(())
}

#[tokio::test]
async fn a_renewed_session_outlives_its_first_token() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let (short, short_claims) = token_for(
        &bed,
        "user:alice",
        Grants::user(),
        Some(Duration::from_secs(2)),
    );
    let alice = bed.connect(&a, &short).await?;
    let me = alice.register(json!({"name": "test"})).await?;
    let node = Address::node("localhost")?;

    // Another identity's token, or garbage, does not renew.
    let (bobs, _) = bed.user_token("bob");
    let code = |r: Result<Value, ClientError>| r.err().and_then(|e| e.code());
    assert_eq!(code(alice.renew_token(&bobs).await), Some(403));
    assert_eq!(code(alice.renew_token("garbage").await), Some(401));
    let (fresh, fresh_claims) = bed.user_token("alice");
    let renewed = alice.renew_token(&fresh).await?;
    assert_eq!(renewed["exp"], fresh_claims.exp, "{renewed}");

    // Well past the first token's expiry the connection still works.
    while rethink_common::token::unix_now() <= short_claims.exp + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let echo = alice
        .ask(
            MessageType::Read,
            &me,
            &node,
            json!({"resource": "session"}),
        )
        .await?;
    assert_eq!(echo.code(), 200, "{echo}");
    // Revoking the replaced token changes nothing; revoking the current one closes.
    bed.auth
        .revoke(&short_claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let still = alice
        .ask(
            MessageType::Read,
            &me,
            &node,
            json!({"resource": "session"}),
        )
        .await?;
    assert_eq!(still.code(), 200, "{still}");
    bed.auth
        .revoke(&fresh_claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(alice.closed().await?, Closed::new(4001, "token revoked"));
    Ok(())
}

#[tokio::test]
async fn the_access_token_query_parameter_is_taken_on_the_upgrade_only() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let (token, _) = bed.user_token("alice");
    // The upgrade takes it from the query (browsers) and from the header (everything else).
    bed.connect(&a, &token).await?;
    let header = Client::connect(Target::ws_with_header(a.ws_base()), &token).await?;
    drop(header);
    // A plain GET of /msg with the token is no upgrade and gets no session.
    let sessions = a.node.node().session_count();
    let http = reqwest::Client::new();
    let plain = http
        .get(format!("http://{}/msg?access_token={token}", a.http))
        .send()
        .await?;
    assert!(plain.status().is_client_error(), "{}", plain.status());
    assert_eq!(a.node.node().session_count(), sessions);
    Ok(())
}

#[tokio::test]
async fn refused_upgrades_answer_with_the_shared_error_shape() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let (token, claims) = bed.user_token("alice");
    bed.auth
        .revoke(&claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let http = reqwest::Client::new();
    for (query, status, code) in [
        (String::new(), 401, "missing_token"),
        ("?access_token=garbage".to_owned(), 401, "malformed_token"),
        (format!("?access_token={token}"), 401, "token_revoked"),
    ] {
        let r = http
            .get(format!("http://{}/msg{query}", a.http))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), status, "{query}");
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
        let body: Value = r.json().await?;
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    Ok(())
}
