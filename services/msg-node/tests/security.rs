//! Who may do what, as a client sees it: reserved well-known addresses, who observes a data
//! object, objects of ended sessions, the per-identity object limit, transport bounds, and
//! tokens that lapse or are renewed during a session.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::{Client, Ended, REGISTRY, RawWs, TestBed, code, service::attach, token_for};
use rethink_common::token::{Grants, ServiceGrants};
use serde_json::{Value, json};

const SYNC: &str = "domain://sync.localhost";
const NODE: &str = "domain://msg-node.localhost";

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

#[tokio::test]
async fn reserved_addresses_are_claimed_only_by_the_identities_configured() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let b = bed.default_replica("node-b").await?;

    // Over Attach: only service:conference gets the conference address.
    let mut impostor = attach(a.grpc, &bed.service_token("service:impostor"))
        .await?
        .unwrap();
    let refused = impostor
        .claim(1, "hyperty://localhost/conference", None)
        .await?;
    assert_eq!(code(&refused), 403, "{refused}");
    assert!(
        refused["body"]["description"]
            .as_str()
            .unwrap_or_default()
            .contains("service:conference"),
        "{refused}"
    );
    assert_eq!(
        code(
            &impostor
                .claim(2, "hyperty://localhost/camera/front", None)
                .await?
        ),
        403
    );
    // A path nobody reserved is open to attached services.
    assert_eq!(
        code(
            &impostor
                .claim(3, "hyperty://localhost/weather", None)
                .await?
        ),
        200
    );
    let mut conference = attach(b.grpc, &bed.service_token("service:conference"))
        .await?
        .unwrap();
    assert_eq!(
        code(
            &conference
                .claim(1, "hyperty://localhost/conference", None)
                .await?
        ),
        200
    );
    // Two allowed identities still cannot share one address.
    let mut publisher = attach(a.grpc, &bed.service_token("service:publisher-1"))
        .await?
        .unwrap();
    assert_eq!(
        code(
            &publisher
                .claim(1, "hyperty://localhost/camera/front", None)
                .await?
        ),
        200
    );
    let mut publisher2 = attach(b.grpc, &bed.service_token("service:publisher-2"))
        .await?
        .unwrap();
    assert_eq!(
        code(
            &publisher2
                .claim(1, "hyperty://localhost/camera/front", None)
                .await?
        ),
        409
    );

    // Over the WebSocket: a user may claim none of them; a camera identity its camera address.
    let (mut alice, me) = bed.user(&a, "alice").await?;
    for address in [
        "hyperty://localhost/conference",
        "hyperty://localhost/camera/back",
        "hyperty://localhost/other",
    ] {
        let r = alice
            .request("create", &me, REGISTRY, claim_body(address))
            .await?;
        assert_eq!(code(&r), 403, "{address}: {r}");
    }
    let (camera_token, _) = token_for(&bed, "camera:back", Grants::user(), None);
    let mut camera = Client::connect(&b, &camera_token).await?;
    let runtime = camera.runtime.clone();
    let r = camera
        .request(
            "create",
            &runtime,
            REGISTRY,
            claim_body("hyperty://localhost/camera/back"),
        )
        .await?;
    assert_eq!(code(&r), 200, "{r}");
    // The camera pattern covers one segment only.
    let r = camera
        .request(
            "create",
            &runtime,
            REGISTRY,
            claim_body("hyperty://localhost/camera/back/extra"),
        )
        .await?;
    assert_eq!(code(&r), 403, "{r}");
    Ok(())
}

#[tokio::test]
async fn a_configured_reserved_table_replaces_the_defaults() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.config("node-a");
    config.registry.reserved = vec![rethink_msg_node::config::ReservedAddress {
        address: "hyperty://{domain}/camera/**".into(),
        subjects: vec!["service:camera-*".into()],
    }];
    let a = bed.replica(config).await?;
    let mut cam = attach(a.grpc, &bed.service_token("service:camera-9"))
        .await?
        .unwrap();
    assert_eq!(
        code(
            &cam.claim(1, "hyperty://localhost/camera/yard/9", None)
                .await?
        ),
        200
    );
    let mut publisher = attach(a.grpc, &bed.service_token("service:publisher-1"))
        .await?
        .unwrap();
    assert_eq!(
        code(
            &publisher
                .claim(1, "hyperty://localhost/camera/x", None)
                .await?
        ),
        403
    );
    Ok(())
}

/// Creates an object as `from` with `extra` body fields; returns its URL.
async fn create_object(client: &mut Client, from: &str, extra: Value) -> Result<String> {
    let mut body = json!({"resource": "object", "schema": "s", "value": {"secret": 1}});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let r = client.request("create", from, SYNC, body).await?;
    anyhow::ensure!(code(&r) == 200, "create failed: {r}");
    Ok(r["body"]["value"]["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test]
async fn only_the_observers_a_reporter_names_may_read_or_subscribe() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let b = bed.default_replica("node-b").await?;
    let (mut alice, alice_h) = bed.user(&a, "alice").await?;
    let (mut bob, bob_h) = bed.user(&b, "bob").await?;
    let (mut carol, carol_h) = bed.user(&a, "carol").await?;

    // Without observers, nobody but alice's own identity.
    let private = create_object(&mut alice, &alice_h, json!({})).await?;
    for kind in ["read", "subscribe"] {
        let r = bob.request(kind, &bob_h, &private, json!({})).await?;
        assert_eq!(code(&r), 403, "{kind}: {r}");
        assert!(r["body"]["value"].is_null(), "{r}");
    }
    let (mut tab, tab_h) = bed.user(&b, "alice").await?;
    let r = tab.request("read", &tab_h, &private, json!({})).await?;
    assert_eq!(code(&r), 200, "{r}");

    // Named observers work across replicas; others stay out.
    let shared = create_object(&mut alice, &alice_h, json!({"observers": ["user:bob"]})).await?;
    let snap = bob.request("subscribe", &bob_h, &shared, json!({})).await?;
    assert_eq!(code(&snap), 200, "{snap}");
    assert_eq!(snap["body"]["value"]["value"]["secret"], 1);
    for kind in ["read", "subscribe"] {
        let r = carol.request(kind, &carol_h, &shared, json!({})).await?;
        assert_eq!(code(&r), 403, "{kind}: {r}");
    }
    alice
        .request(
            "update",
            &alice_h,
            &shared,
            json!({"version": 1, "value": {"secret": 2}}),
        )
        .await?;
    let update = bob.recv().await?;
    assert_eq!(update["body"]["version"], 2, "{update}");

    // A pattern admits every matching identity; a malformed list is refused.
    let everyone = create_object(&mut alice, &alice_h, json!({"observers": ["user:*"]})).await?;
    let r = carol
        .request("read", &carol_h, &everyone, json!({}))
        .await?;
    assert_eq!(code(&r), 200, "{r}");
    let bad = alice
        .request(
            "create",
            &alice_h,
            SYNC,
            json!({"resource": "object", "schema": "s", "observers": "user:bob"}),
        )
        .await?;
    assert_eq!(code(&bad), 400, "{bad}");
    Ok(())
}

#[tokio::test]
async fn objects_of_an_ended_session_are_deleted() -> Result<()> {
    let bed = TestBed::start().await?;
    let mut config = bed.config("node-a");
    config.timing.grace_secs = 1;
    let a = bed.replica(config).await?;
    let b = bed.default_replica("node-b").await?;
    let (mut alice, alice_h) = bed.user(&a, "alice").await?;
    let (mut bob, bob_h) = bed.user(&b, "bob").await?;
    let url = create_object(&mut alice, &alice_h, json!({"observers": ["user:bob"]})).await?;
    let snap = bob.request("subscribe", &bob_h, &url, json!({})).await?;
    assert_eq!(code(&snap), 200, "{snap}");

    // alice's network drops; after the grace period her session ends and its object goes.
    alice.drop_connection();
    let deleted = bob.recv().await?;
    assert_eq!(deleted["type"], "delete", "{deleted}");
    assert_eq!(deleted["from"], url.as_str());
    let gone = bob.request("read", &bob_h, &url, json!({})).await?;
    assert_eq!(code(&gone), 404, "{gone}");

    // A revoked session's objects go at once, without a grace period.
    let (token, claims) = bed.user_token("alice");
    let mut alice = Client::connect(&a, &token).await?;
    let h = alice.register().await?;
    let url = create_object(&mut alice, &h, json!({"observers": ["user:bob"]})).await?;
    bed.auth
        .revoke(&claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let r = bob.request("read", &bob_h, &url, json!({})).await?;
        if code(&r) == 404 {
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
    let mut config = bed.config("node-a");
    config.limits.max_objects_per_identity = 2;
    let a = bed.replica(config.clone()).await?;
    config.node_id = Some("node-b".into());
    let b = bed.replica(config).await?;
    let (mut alice, first) = bed.user(&a, "alice").await?;
    create_object(&mut alice, &first, json!({})).await?;
    create_object(&mut alice, &first, json!({})).await?;
    let full = |r: &Value| code(r) == 403;
    // A new hyperty of the same connection, and a new connection on another replica, do not
    // start a new count.
    let second = alice.register().await?;
    let r = alice
        .request(
            "create",
            &second,
            SYNC,
            json!({"resource": "object", "schema": "s"}),
        )
        .await?;
    assert!(full(&r), "{r}");
    let (mut tab, tab_h) = bed.user(&b, "alice").await?;
    let r = tab
        .request(
            "create",
            &tab_h,
            SYNC,
            json!({"resource": "object", "schema": "s"}),
        )
        .await?;
    assert!(full(&r), "{r}");
    // Another identity has its own allowance.
    let (mut bob, bob_h) = bed.user(&b, "bob").await?;
    create_object(&mut bob, &bob_h, json!({})).await?;
    Ok(())
}

#[tokio::test]
async fn an_oversized_message_is_refused_from_its_frame_header() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let (token, _) = bed.user_token("alice");
    // A frame that announces 100 MB and sends 1 KiB: the node closes at once (1009) instead
    // of waiting for (and buffering) the rest.
    let mut raw = RawWs::connect(&a, &token).await?;
    raw.send_partial_text(100_000_000, 1024).await?;
    assert_eq!(raw.close_code().await?, Some(1009));

    // Through the protocol library: one byte over the limit closes with 1009, and the session
    // survives for a resume.
    let mut alice = Client::connect(&a, &token).await?;
    let me = alice.register().await?;
    let at_limit = 65536;
    let frame = json!({"id": 1, "type": "forward", "from": me, "to": me, "body": ""}).to_string();
    let fill = "x".repeat(at_limit - frame.len());
    let exact = json!({"id": 1, "type": "forward", "from": me, "to": me, "body": fill}).to_string();
    assert_eq!(exact.len(), at_limit);
    alice.send_text(exact).await?;
    assert_eq!(alice.recv().await?["id"], 1);
    let over =
        json!({"id": 2, "type": "forward", "from": me, "to": me, "body": format!("{fill}x")});
    alice.send(&over).await?;
    let ended = alice.ended().await?;
    assert_eq!(
        ended,
        Ended::Closed(
            1009,
            "message larger than 65536 bytes; reconnect and resume".into()
        )
    );
    let back = Client::resume(&a, &token, &alice.resume_token.clone()).await?;
    assert_eq!(back.session["addresses"], json!([me]));
    assert_eq!(back.session["previous_close"]["code"], 1009);
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
    let mut config = bed.config("node-a");
    config.policy_file = Some(path);
    let a = bed.replica(config).await?;
    let (token, _) = bed.user_token("mallory");
    let mut mallory = Client::connect(&a, &token).await?;
    let started = Instant::now();
    for _ in 0..800 {
        mallory.send_text("{oops").await?;
    }
    let (mut diagnosed, mut limited) = (0u32, 0u32);
    for _ in 0..800 {
        let r = mallory.recv().await?;
        match code(&r) {
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
    let a = bed.default_replica("node-a").await?;

    let (token, claims) = bed.user_token("alice");
    let mut alice = Client::connect(&a, &token).await?;
    alice.register().await?;
    let revoked = Instant::now();
    bed.auth
        .revoke(&claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        alice.ended().await?,
        Ended::Closed(4001, "token revoked".into())
    );
    let took = revoked.elapsed();
    eprintln!("websocket closed {took:?} after the revocation");
    assert!(
        took < REVOCATION_CLOSES_WITHIN,
        "websocket closed {took:?} after revocation"
    );

    let (service, claims) = token_for(&bed, "service:publisher-7", attach_grants(), None);
    let mut stream = attach(a.grpc, &service).await?.unwrap();
    let revoked = Instant::now();
    bed.auth
        .revoke(&claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let end = tokio::time::timeout(common::WAIT, stream.rx.message()).await?;
    let status = end.expect_err("the stream should end with a status");
    let took = revoked.elapsed();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    eprintln!("attach stream ended {took:?} after the revocation");
    assert!(
        took < REVOCATION_CLOSES_WITHIN,
        "attach stream ended {took:?} after revocation"
    );
    Ok(())
}

/// Sends `{"type":"update","to":"domain://msg-node.<domain>","body":{"resource":"token",..}}`.
async fn renew(client: &mut Client, token: &str) -> Result<Value> {
    let runtime = client.runtime.clone();
    client
        .request(
            "update",
            &runtime,
            NODE,
            json!({"resource": "token", "token": token}),
        )
        .await
}

#[tokio::test]
async fn a_renewed_session_outlives_its_first_token() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let (short, short_claims) = token_for(
        &bed,
        "user:alice",
        Grants::user(),
        Some(Duration::from_secs(2)),
    );
    let mut alice = Client::connect(&a, &short).await?;
    let me = alice.register().await?;

    // Another identity's token, or garbage, does not renew.
    let (bobs, _) = bed.user_token("bob");
    assert_eq!(code(&renew(&mut alice, &bobs).await?), 403);
    assert_eq!(code(&renew(&mut alice, "garbage").await?), 401);
    let (fresh, fresh_claims) = bed.user_token("alice");
    let renewed = renew(&mut alice, &fresh).await?;
    assert_eq!(code(&renewed), 200, "{renewed}");
    assert_eq!(renewed["body"]["value"]["exp"], fresh_claims.exp);

    // Well past the first token's expiry the connection still works.
    while rethink_common::token::unix_now() <= short_claims.exp + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let echo = alice
        .request("read", &me, NODE, json!({"resource": "session"}))
        .await?;
    assert_eq!(code(&echo), 200, "{echo}");
    // Revoking the replaced token changes nothing; revoking the current one closes.
    bed.auth
        .revoke(&short_claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let still = alice
        .request("read", &me, NODE, json!({"resource": "session"}))
        .await?;
    assert_eq!(code(&still), 200, "{still}");
    bed.auth
        .revoke(&fresh_claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        alice.ended().await?,
        Ended::Closed(4001, "token revoked".into())
    );
    Ok(())
}

#[tokio::test]
async fn the_access_token_query_parameter_is_taken_on_the_upgrade_only() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let (token, _) = bed.user_token("alice");
    // The upgrade takes it from the query (browsers) and from the header (everything else).
    Client::connect(&a, &token).await?;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/msg",
            a.http
        ))?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    drop(ws);
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
    let a = bed.default_replica("node-a").await?;
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
