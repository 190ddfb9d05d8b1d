//! Integration tests of the auth service over real loopback HTTP and gRPC, on real Redis.

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{PASSWORD, TestAuth, error_code, test_config, with_token};
use jwt_compact::{AlgorithmExt, TimeOptions, UntrustedToken, alg::Ed25519};
use rethink_common::{
    bus::RedisBus,
    testing::RedisServer,
    token::{Grants, TokenError, TokenVerifier},
};
use rethink_proto::v1::{self as pb, auth_client::AuthClient};
use serde::Deserialize;
use serde_json::Value;

/// The claims as an independent JWT library sees them.
#[derive(Debug, Deserialize)]
struct ForeignClaims {
    sub: String,
    name: String,
    jti: String,
    aud: String,
    grants: Value,
}

/// Verifies `token` against the served JWKS with jwt-compact (not the library that signed it).
async fn verify_independently(auth: &TestAuth, token: &str) -> ForeignClaims {
    let (status, jwks) = auth.get("/auth/.well-known/jwks.json", None).await;
    assert_eq!(status, 200);
    let untrusted = UntrustedToken::new(token).expect("parse token");
    assert_eq!(untrusted.algorithm(), "EdDSA");
    let kid = untrusted.header().key_id.clone().expect("kid");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let token = Ed25519
        .validator::<ForeignClaims>(&key)
        .validate(&untrusted)
        .expect("signature verifies");
    let options = TimeOptions::default();
    token
        .claims()
        .validate_expiration(&options)
        .expect("not expired");
    token.claims().validate_maturity(&options).expect("mature");
    token.claims().custom.clone_claims()
}

impl ForeignClaims {
    fn clone_claims(&self) -> ForeignClaims {
        ForeignClaims {
            sub: self.sub.clone(),
            name: self.name.clone(),
            jti: self.jti.clone(),
            aud: self.aud.clone(),
            grants: self.grants.clone(),
        }
    }
}

async fn redis() -> RedisServer {
    RedisServer::start().await.expect("redis-server")
}

#[tokio::test]
async fn login_token_verifies_with_an_independent_library() {
    let redis = redis().await;
    let auth = TestAuth::start(test_config(Some(&redis.url()))).await;
    let (status, body) = auth.login("alice", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let token = body["token"].as_str().unwrap();
    let expires_at = body["expires_at"].as_i64().unwrap();
    assert!(expires_at > rethink_common::token::unix_now());

    let claims = verify_independently(&auth, token).await;
    assert_eq!(claims.sub, "user:alice");
    assert_eq!(claims.name, "alice");
    assert_eq!(claims.aud, "rethink");
    assert!(!claims.jti.is_empty());
    assert_eq!(claims.grants["rooms"]["join"], true);
    assert_eq!(claims.grants["admin"], false);

    // And the shared verifier, fetching the JWKS over HTTP, agrees.
    let verifier = TokenVerifier::from_auth_url(&auth.base_url());
    let ours = verifier.verify(token).await.unwrap();
    assert_eq!(ours.exp, expires_at);
    assert_eq!(ours.grants, Grants::user());

    // A tampered token fails both.
    let mut forged = token.to_string();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(verifier.verify(&forged).await.is_err());
    auth.stop().await;
}

#[tokio::test]
async fn wrong_credentials_are_401_with_json_error() {
    let auth = TestAuth::start(test_config(None)).await;
    for (user, password) in [("alice", "wrong password"), ("nobody", PASSWORD)] {
        let (status, body) = auth.login(user, password).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(error_code(&body), "invalid_credentials");
    }
    auth.stop().await;
}

#[tokio::test]
async fn bad_requests_get_the_json_error_shape() {
    let auth = TestAuth::start(test_config(None)).await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/auth/login", b"{not json".to_vec(), 400, "bad_request"),
        ("/auth/login", b"".to_vec(), 400, "bad_request"),
        (
            "/auth/login",
            br#"{"username":"alice"}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/auth/login",
            br#"{"username":1,"password":2}"#.to_vec(),
            400,
            "bad_request",
        ),
        ("/auth/login", br#"[]"#.to_vec(), 400, "bad_request"),
        (
            "/auth/token",
            br#"{"key_id":"x"}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/auth/token",
            br#"{"key_id":"x","secret":"y","grants":"fly"}"#.to_vec(),
            400,
            "bad_request",
        ),
        (
            "/auth/login",
            vec![b'x'; 64 * 1024],
            413,
            "payload_too_large",
        ),
        (
            "/auth/token",
            vec![b' '; 64 * 1024],
            413,
            "payload_too_large",
        ),
    ];
    for (path, body, want_status, want_code) in cases {
        let (status, _, json) = auth.post_raw(path, body.clone()).await;
        assert_eq!(
            status,
            want_status,
            "{path} {:?}: {json}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
        assert_eq!(error_code(&json), want_code, "{json}");
    }

    // Oversized body without a Content-Length (chunked): still 413 in the JSON shape.
    let (status, json) = chunked_post(&auth, "/auth/login", 64, 1024).await;
    assert_eq!(status, 413, "{json}");
    assert_eq!(error_code(&json), "payload_too_large");

    // axum's own rejections: unknown route and wrong method.
    let (status, json) = auth.get("/auth/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&json), "not_found");
    let (status, json) = auth.get("/elsewhere", None).await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&json), "not_found");
    let (status, json) = auth.get("/auth/login", None).await;
    assert_eq!(status, 405);
    assert_eq!(error_code(&json), "method_not_allowed");
    auth.stop().await;
}

/// Sends a chunked body (no Content-Length) over a raw connection; returns status and JSON.
async fn chunked_post(auth: &TestAuth, path: &str, chunks: usize, size: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(auth.http).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..chunks {
        let chunk = format!("{size:x}\r\n{}\r\n", "a".repeat(size));
        // The server may answer and close before reading everything.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn repeated_failures_are_throttled_with_retry_after() {
    let mut config = test_config(None);
    config.throttle.max_failures_per_user = 3;
    let auth = TestAuth::start(config).await;
    for _ in 0..3 {
        assert_eq!(auth.login("alice", "wrong password").await.0, 401);
    }
    // Locked: even the right password is refused now.
    let body = serde_json::json!({"username": "alice", "password": PASSWORD});
    let (status, headers, json) = auth.post_raw("/auth/login", body.to_string()).await;
    assert_eq!(status, 429, "{json}");
    assert_eq!(error_code(&json), "too_many_attempts");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    // Another user from the same address is not locked yet (address limit is higher).
    assert_eq!(auth.login("root", PASSWORD).await.0, 200);

    // The per-address limit: many users failing from one address lock the address.
    let mut config = test_config(None);
    config.throttle.max_failures_per_addr = 4;
    let auth = TestAuth::start(config).await;
    for user in ["u1", "u2", "u3", "u4"] {
        assert_eq!(auth.login(user, "wrong password").await.0, 401);
    }
    let (status, json) = auth.login("alice", PASSWORD).await;
    assert_eq!(status, 429, "{json}");
}

#[tokio::test]
async fn slow_requests_time_out_with_json_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config(None);
    config.listener.request_timeout_ms = 200;
    let auth = TestAuth::start(config).await;
    let mut stream = tokio::net::TcpStream::connect(auth.http).await.unwrap();
    // Promise 100 bytes, send 10, then wait for the server's answer.
    let head = "POST /auth/login HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
                content-length: 100\r\nconnection: close\r\n\r\n{\"username";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .expect("server answers within the bound")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(error_code(&body), "timeout");
    auth.stop().await;
}

#[tokio::test]
async fn me_returns_identity_and_grants() {
    let auth = TestAuth::start(test_config(None)).await;
    let token = auth.token("alice").await;
    let (status, me) = auth.get("/auth/me", Some(&token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["sub"], "user:alice");
    assert_eq!(me["name"], "alice");
    // A login token asks to join rooms; media rights need grants that name rooms.
    assert_eq!(me["grants"], serde_json::to_value(Grants::user()).unwrap());
    assert_eq!(me["grants"]["rooms"]["join"], true);
    assert_eq!(me["grants"]["rooms"]["publish"], false);
    assert_eq!(me["grants"]["cameras"]["manage"], false);

    let (status, json) = auth.get("/auth/me", None).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&json), "missing_token");
    let (status, json) = auth.get("/auth/me", Some("garbage")).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&json), "malformed_token");
    // ?access_token= is for WebSocket upgrades only; HTTP routes read the header.
    let (status, json) = auth
        .get(&format!("/auth/me?access_token={token}"), None)
        .await;
    assert_eq!(status, 401, "{json}");
    assert_eq!(error_code(&json), "missing_token");
    auth.stop().await;
}

#[tokio::test]
async fn revoked_token_is_refused_by_a_verifier_in_another_task() {
    let redis = redis().await;
    let auth = TestAuth::start(test_config(Some(&redis.url()))).await;
    let token = auth.token("alice").await;

    // A verifier as another service would run it: JWKS over HTTP, revocations from Redis.
    let bus = RedisBus::connect(&redis.url()).await.unwrap();
    let verifier = TokenVerifier::from_auth_url(&auth.base_url());
    verifier.follow_revocations(&bus).await.unwrap();
    assert!(verifier.verify(&token).await.is_ok());

    let (status, _, json) = {
        let response = auth
            .client
            .post(auth.url("/auth/revoke"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        common::split(response).await
    };
    assert_eq!(status, 200, "{json}");

    let watcher = tokio::spawn({
        let token = token.clone();
        async move {
            // Bounded wait for the revocation event to reach this verifier.
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match verifier.verify(&token).await {
                        Err(e) => return e,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            })
            .await
        }
    });
    assert_eq!(
        watcher.await.unwrap().expect("revocation seen"),
        TokenError::Revoked
    );

    // The service itself refuses it at once.
    let (status, json) = auth.get("/auth/me", Some(&token)).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&json), "token_revoked");

    // A verifier started later learns it from the store.
    let late = TokenVerifier::from_auth_url(&auth.base_url());
    let kv = rethink_common::kv::RedisKv::connect(&redis.url())
        .await
        .unwrap();
    assert_eq!(late.load_revocations(&kv).await.unwrap(), 1);
    assert_eq!(late.verify(&token).await.unwrap_err(), TokenError::Revoked);
    auth.stop().await;
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid() {
    let redis = redis().await;
    let auth = TestAuth::start(test_config(Some(&redis.url()))).await;
    let old = auth.token("alice").await;
    let verifier = TokenVerifier::from_auth_url(&auth.base_url());
    verifier.verify(&old).await.unwrap();

    let old_kid = auth.service.keys().current_kid();
    let new_kid = auth.service.keys().rotate().await.unwrap();
    assert_ne!(old_kid, new_kid);
    let new = auth.token("alice").await;

    let (_, jwks) = auth.get("/auth/.well-known/jwks.json", None).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );

    // Both tokens verify: independently, at the service, and in a verifier that cached the old
    // key set (it refetches on the unknown kid).
    for token in [&old, &new] {
        verify_independently(&auth, token).await;
        assert_eq!(auth.get("/auth/me", Some(token)).await.0, 200);
        verifier.verify(token).await.unwrap();
    }
    auth.stop().await;
}

#[tokio::test]
async fn api_key_minting_cannot_widen_grants() {
    let auth = TestAuth::start(test_config(None)).await;
    let key_grants: Grants = "rooms.join,rooms.subscribe,room=lobby".parse().unwrap();
    let (key, secret) = auth
        .service
        .create_api_key("service:conference", &[], key_grants.clone())
        .await
        .unwrap();
    let verifier = auth.service.verifier();

    let mint = |grants: Value| {
        let body = serde_json::json!({"key_id": key.key_id, "secret": secret, "grants": grants});
        let auth = &auth;
        async move { auth.post_raw("/auth/token", body.to_string()).await }
    };
    // Asking for everything yields the key's grants, no more.
    let (status, _, json) = mint(Value::from("all")).await;
    assert_eq!(status, 200, "{json}");
    let claims = verifier
        .verify(json["token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims.sub, "service:conference");
    assert_eq!(claims.grants, key_grants);
    assert!(!claims.grants.admin && !claims.grants.rooms.publish);

    // Asking for less yields less; grants in object form work too.
    let (status, _, json) =
        mint(serde_json::json!({"rooms": {"join": true, "publish": true}})).await;
    assert_eq!(status, 200, "{json}");
    let claims = verifier
        .verify(json["token"].as_str().unwrap())
        .await
        .unwrap();
    assert!(
        claims.grants.rooms.join && !claims.grants.rooms.publish && !claims.grants.rooms.subscribe
    );
    assert!(claims.grants.is_subset_of(&key_grants));
    assert_eq!(claims.grants.rooms.names, Some(vec!["lobby".to_string()]));

    // Without grants: the key's.
    let (status, _, json) = mint(Value::Null).await;
    assert_eq!(status, 200, "{json}");

    // Wrong secret, unknown key.
    for (id, secret) in [
        (key.key_id.as_str(), "wrong"),
        ("ak_unknown", secret.as_str()),
    ] {
        let body = serde_json::json!({"key_id": id, "secret": secret});
        let (status, _, json) = auth.post_raw("/auth/token", body.to_string()).await;
        assert_eq!(status, 401);
        assert_eq!(error_code(&json), "invalid_api_key");
    }

    // Same rule over gRPC.
    let mut client = AuthClient::connect(format!("http://{}", auth.grpc))
        .await
        .unwrap();
    let reply = client
        .mint_token(pb::MintTokenRequest {
            key_id: key.key_id.clone(),
            secret: secret.clone(),
            grants: Some((&Grants::all()).into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let claims = verifier.verify(&reply.token).await.unwrap();
    assert_eq!(claims.grants, key_grants);
    auth.stop().await;
}

#[tokio::test]
async fn grpc_admin_operations_need_the_admin_grant() {
    let auth = TestAuth::start(test_config(None)).await;
    let mut client = AuthClient::connect(format!("http://{}", auth.grpc))
        .await
        .unwrap();
    let alice = auth.token("alice").await;
    let root = auth.token("root").await;
    let create = || pb::CreateUserRequest {
        username: "dave".into(),
        password: "dave-password".into(),
        display_name: "Dave".into(),
        grants: None,
    };

    let status = client.create_user(create()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let status = client
        .create_user(with_token(create(), &alice))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = client
        .list_users(with_token(pb::ListUsersRequest {}, &alice))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = client
        .delete_user(with_token(
            pb::DeleteUserRequest {
                username: "alice".into(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = client
        .create_user(with_token(create(), "not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // The admin can.
    let user = client
        .create_user(with_token(create(), &root))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.username, "dave");
    assert_eq!(user.display_name, "Dave");
    let status = client
        .create_user(with_token(create(), &root))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    client
        .set_password(with_token(
            pb::SetPasswordRequest {
                username: "dave".into(),
                password: "new-password".into(),
            },
            &root,
        ))
        .await
        .unwrap();
    assert_eq!(auth.login("dave", "new-password").await.0, 200);
    let users = client
        .list_users(with_token(pb::ListUsersRequest {}, &root))
        .await
        .unwrap()
        .into_inner()
        .users;
    let names: Vec<_> = users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["alice", "dave", "root"]);
    let deleted = client
        .delete_user(with_token(
            pb::DeleteUserRequest {
                username: "dave".into(),
            },
            &root,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    assert_eq!(auth.login("dave", "new-password").await.0, 401);

    // Revoke over gRPC: alice may not revoke root's token, the admin may revoke alice's.
    let status = client
        .revoke(with_token(
            pb::RevokeRequest {
                token: root.clone(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let revoked = client
        .revoke(with_token(
            pb::RevokeRequest {
                token: alice.clone(),
            },
            &root,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!revoked.jti.is_empty());
    let status = client
        .verify(pb::VerifyRequest {
            token: alice.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{status:?}");

    // Login, Verify and GetJwks over gRPC; the health service answers.
    let token = client
        .login(pb::LoginRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let claims = client
        .verify(pb::VerifyRequest { token })
        .await
        .unwrap()
        .into_inner()
        .claims
        .unwrap();
    assert_eq!(claims.sub, "user:alice");
    let jwks = client
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(jwks.jwks_json.contains("Ed25519"));
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", auth.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    auth.stop().await;
}

#[tokio::test]
async fn users_and_keys_persist_in_redis_across_instances() {
    let redis = redis().await;
    let first = TestAuth::start(test_config(Some(&redis.url()))).await;
    first
        .service
        .create_user("erin", "erin-password", Some("Erin"), None)
        .await
        .unwrap();
    first.stop().await;

    let second = TestAuth::start(test_config(Some(&redis.url()))).await;
    let (status, body) = second.login("erin", "erin-password").await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    let (_, me) = second.get("/auth/me", Some(&token)).await;
    assert_eq!(me["name"], "Erin");

    // A third instance running beside the second shares its signing keys.
    let third = TestAuth::start(test_config(Some(&redis.url()))).await;
    assert_eq!(third.get("/auth/me", Some(&token)).await.0, 200);
    // And sees a rotation made by the second.
    second.service.keys().rotate().await.unwrap();
    let (status, body) = second.login("erin", "erin-password").await;
    assert_eq!(status, 200);
    let fresh = body["token"].as_str().unwrap();
    assert_eq!(third.get("/auth/me", Some(fresh)).await.0, 200);
    second.stop().await;
    third.stop().await;
}

#[tokio::test]
async fn ops_endpoints_answer() {
    let auth = TestAuth::start(test_config(None)).await;
    let text = |path: &'static str| {
        let auth = &auth;
        async move {
            let response = auth.client.get(auth.url(path)).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(text("/healthz").await.0, 200);
    assert_eq!(text("/readyz").await.0, 200);
    auth.token("alice").await;
    let (status, metrics) = text("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("rethink_auth_tokens_issued_total"),
        "{metrics}"
    );
    auth.stop().await;
}

#[test]
fn verifier_is_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<TokenVerifier>();
}

#[tokio::test]
async fn survives_a_redis_restart() {
    let mut redis = redis().await;
    let auth = TestAuth::start(test_config(Some(&redis.url()))).await;
    let token = auth.token("alice").await;

    redis.stop();
    // While Redis is down: a clear JSON error, not a panic or a hang.
    let (status, json) =
        tokio::time::timeout(Duration::from_secs(30), auth.login("alice", PASSWORD))
            .await
            .expect("login answers while redis is down");
    assert_eq!(status, 503, "{json}");
    assert_eq!(error_code(&json), "storage_unavailable");

    // Redis comes back empty (no persistence): the signing keys are restored from memory, so
    // tokens minted before still verify, and new users can log in.
    redis.restart().await.unwrap();
    let jwks = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (status, jwks) = auth.get("/auth/.well-known/jwks.json", None).await;
            if status == 200 {
                return jwks;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("jwks served again after redis restart");
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    verify_independently(&auth, &token).await;
    auth.service
        .create_user("zoe", "zoe-password", None, None)
        .await
        .unwrap();
    assert_eq!(auth.login("zoe", "zoe-password").await.0, 200);
    auth.stop().await;
}
