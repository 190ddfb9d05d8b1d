//! Who may do what: explicit user grants, API-key subjects, revocation of a user's tokens,
//! revocation publishes that survive a failing bus, and a login throttle that holds under
//! concurrency and across replicas. Real HTTP and gRPC on loopback, real redis-server.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use common::{PASSWORD, TestAuth, error_code, refused, test_config, with_token};
use rethink_common::{
    Backends,
    bus::{BusError, EventBus, RedisBus, Subscription, topics},
    kv::{KvStore, RedisKv},
    testing::RedisServer,
    token::{Grants, TokenError, TokenVerifier},
};
use rethink_proto::v1 as pb;
use serde_json::Value;

async fn redis() -> RedisServer {
    RedisServer::start().await.expect("redis-server")
}

/// A verifier as another service runs it: keys over HTTP, revocations from the Redis bus.
async fn remote_verifier(auth: &TestAuth, redis: &RedisServer) -> TokenVerifier {
    let bus = RedisBus::connect(&redis.url()).await.unwrap();
    let verifier = TokenVerifier::from_auth_url(&auth.base_url());
    verifier.follow_revocations(&bus).await.unwrap();
    verifier
}

fn grants(scopes: &str) -> Grants {
    scopes.parse().unwrap()
}

#[tokio::test]
async fn login_tokens_carry_the_users_stored_grants() {
    let redis = redis().await;
    let auth = TestAuth::start(test_config(Some(&redis.url()))).await;
    let mut client = auth.grpc_client().await;
    let root = auth.token("root").await;
    let before = auth.token("alice").await;
    let verifier = remote_verifier(&auth, &redis).await;

    // A default user carries exactly the default user grants.
    assert_eq!(
        verifier.verify(&before).await.unwrap().grants,
        Grants::user()
    );

    // Only an admin sets grants.
    let demo = grants("rooms.join,rooms.publish,rooms.subscribe,room=demo*");
    let set = |token: &str| {
        with_token(
            pb::SetUserGrantsRequest {
                username: "alice".into(),
                grants: Some((&demo).into()),
            },
            token,
        )
    };
    let status = client.set_user_grants(set(&before)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = client
        .set_user_grants(pb::SetUserGrantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let user = client
        .set_user_grants(set(&root))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Grants::from(&user.grants.unwrap()), demo);
    let status = client
        .set_user_grants(with_token(
            pb::SetUserGrantsRequest {
                username: "nobody".into(),
                grants: None,
            },
            &root,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // The token with the old grants is revoked; a new login carries the stored grants.
    assert_eq!(refused(&verifier, &before).await, TokenError::Revoked);
    let after = auth.token("alice").await;
    let claims = verifier.verify(&after).await.unwrap();
    assert_eq!(claims.grants, demo);
    assert!(claims.grants.may_publish("demo-1") && !claims.grants.may_publish("other"));
    assert!(!Grants::user().rooms.publish && !Grants::user().rooms.subscribe);
    // gRPC login too.
    let token = client
        .login(pb::LoginRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(verifier.verify(&token).await.unwrap().grants, demo);

    // ListUsers shows them.
    let users = client
        .list_users(with_token(pb::ListUsersRequest {}, &root))
        .await
        .unwrap()
        .into_inner()
        .users;
    let alice = users.iter().find(|u| u.username == "alice").unwrap();
    assert_eq!(Grants::from(alice.grants.as_ref().unwrap()), demo);

    // A user record stored before grants were stored loads with the default user grants.
    let kv = RedisKv::connect(&redis.url()).await.unwrap();
    let hash =
        serde_json::from_slice::<Value>(&kv.get("rethink:auth:user:alice").await.unwrap().unwrap())
            .unwrap()["password_hash"]
            .clone();
    let old = serde_json::json!({
        "username": "olduser", "display_name": "Old", "password_hash": hash, "created_at": 1
    });
    kv.set(
        "rethink:auth:user:olduser",
        Bytes::from(old.to_string()),
        None,
    )
    .await
    .unwrap();
    let token = auth.token("olduser").await;
    assert_eq!(
        verifier.verify(&token).await.unwrap().grants,
        Grants::user()
    );
    auth.stop().await;
}

#[tokio::test]
async fn api_keys_mint_only_for_their_subjects() {
    let redis = redis().await;
    let auth = TestAuth::start(test_config(Some(&redis.url()))).await;
    let mut client = auth.grpc_client().await;
    let root = auth.token("root").await;
    let alice = auth.token("alice").await;
    let verifier = remote_verifier(&auth, &redis).await;
    let key_grants = grants("cameras.view,rooms.join,room=lobby");

    let create = |subject: &str, subjects: &[&str]| pb::CreateApiKeyRequest {
        subject: subject.into(),
        grants: Some((&key_grants).into()),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
    };
    let status = client
        .create_api_key(with_token(create("camera:default", &["camera:*"]), &alice))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = client
        .create_api_key(with_token(create("camera:x", &["a*b"]), &root))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let cameras = client
        .create_api_key(with_token(create("camera:default", &["camera:*"]), &root))
        .await
        .unwrap()
        .into_inner();
    let anything = client
        .create_api_key(with_token(create("app:x", &["*", "user:guest-*"]), &root))
        .await
        .unwrap()
        .into_inner();

    let mint = |key: &pb::CreateApiKeyResponse, subject: &str| {
        let body = serde_json::json!({
            "key_id": key.key_id, "secret": key.secret, "subject": subject, "grants": "all"
        });
        let auth = &auth;
        async move {
            let (status, _, json) = auth.post_raw("/auth/token", body.to_string()).await;
            (status, json)
        }
    };
    // Allowed subjects mint, with grants never wider than the key's.
    for (key, subject) in [
        (&cameras, "camera:lobby"),
        (&cameras, ""),
        (&anything, "bot:7"),
        (&anything, "user:guest-1"),
    ] {
        let (status, json) = mint(key, subject).await;
        assert_eq!(status, 200, "{subject}: {json}");
        let claims = verifier
            .verify(json["token"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(claims.grants, key_grants);
        if !subject.is_empty() {
            assert_eq!(claims.sub, subject);
        }
    }
    // Outside the patterns, services and existing users: 403 over HTTP and gRPC.
    for (key, subject) in [
        (&cameras, "bot:7"),
        (&cameras, "service:sfu"),
        (&cameras, "user:alice"),
        (&anything, "service:conference"),
        (&anything, "user:alice"),
        (&anything, "USER:root"),
        (&anything, "user:guest"),
    ] {
        let (status, json) = mint(key, subject).await;
        assert_eq!(status, 403, "{subject}: {json}");
        assert_eq!(error_code(&json), "forbidden");
        let status = client
            .mint_token(pb::MintTokenRequest {
                key_id: key.key_id.clone(),
                secret: key.secret.clone(),
                subject: subject.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{subject}");
    }

    // Listing shows keys and patterns, never secrets; only to admins.
    let status = client
        .list_api_keys(with_token(pb::ListApiKeysRequest {}, &alice))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let keys = client
        .list_api_keys(with_token(pb::ListApiKeysRequest {}, &root))
        .await
        .unwrap()
        .into_inner()
        .keys;
    let listed = keys.iter().find(|k| k.key_id == cameras.key_id).unwrap();
    assert_eq!(listed.subject, "camera:default");
    assert_eq!(listed.subjects, ["camera:*"]);
    assert!(!format!("{keys:?}").contains(&cameras.secret));

    // Revoking: the key mints nothing, and what it minted is refused.
    let (_, json) = mint(&cameras, "camera:door").await;
    let minted = json["token"].as_str().unwrap().to_string();
    let revoke = |key_id: &str, token: &str| {
        with_token(
            pb::RevokeApiKeyRequest {
                key_id: key_id.into(),
            },
            token,
        )
    };
    let status = client
        .revoke_api_key(revoke(&cameras.key_id, &alice))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let reply = client
        .revoke_api_key(revoke(&cameras.key_id, &root))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.revoked);
    let (status, json) = mint(&cameras, "camera:lobby").await;
    assert_eq!(status, 401, "{json}");
    assert_eq!(error_code(&json), "invalid_api_key");
    assert_eq!(refused(&verifier, &minted).await, TokenError::Revoked);
    // Tokens of the other key are untouched.
    let (status, json) = mint(&anything, "bot:8").await;
    assert_eq!(status, 200);
    verifier
        .verify(json["token"].as_str().unwrap())
        .await
        .unwrap();
    let reply = client
        .revoke_api_key(revoke(&cameras.key_id, &root))
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.revoked);
    auth.stop().await;
}

#[tokio::test]
async fn deleting_or_repassing_a_user_revokes_their_tokens() {
    let redis = redis().await;
    let auth = TestAuth::start(test_config(Some(&redis.url()))).await;
    let mut client = auth.grpc_client().await;
    let root = auth.token("root").await;
    auth.service
        .create_user("bob", "bob-password", None, None)
        .await
        .unwrap();
    let verifier = remote_verifier(&auth, &redis).await;
    let mut bobs = Vec::new();
    for _ in 0..2 {
        let (status, json) = auth.login("bob", "bob-password").await;
        assert_eq!(status, 200, "{json}");
        bobs.push(json["token"].as_str().unwrap().to_string());
    }
    bobs.push(auth.service.mint_for_user("bob", None).await.unwrap().token);
    let alice = auth.token("alice").await;
    for token in &bobs {
        verifier.verify(token).await.unwrap();
    }

    client
        .set_password(with_token(
            pb::SetPasswordRequest {
                username: "bob".into(),
                password: "bob-new-password".into(),
            },
            &root,
        ))
        .await
        .unwrap();
    for token in &bobs {
        assert_eq!(refused(&verifier, token).await, TokenError::Revoked);
    }
    // Another user's token is untouched; the old password fails, the new one works.
    verifier.verify(&alice).await.unwrap();
    assert_eq!(auth.login("bob", "bob-password").await.0, 401);
    let (status, json) = auth.login("bob", "bob-new-password").await;
    assert_eq!(status, 200, "{json}");
    let fresh = json["token"].as_str().unwrap().to_string();
    assert_eq!(verifier.verify(&fresh).await.unwrap().sub, "user:bob");

    client
        .delete_user(with_token(
            pb::DeleteUserRequest {
                username: "bob".into(),
            },
            &root,
        ))
        .await
        .unwrap();
    assert_eq!(refused(&verifier, &fresh).await, TokenError::Revoked);
    assert_eq!(auth.login("bob", "bob-new-password").await.0, 401);
    // A verifier started afterwards learns it from the store.
    let late = TokenVerifier::from_auth_url(&auth.base_url());
    let kv = RedisKv::connect(&redis.url()).await.unwrap();
    late.load_revocations(&kv).await.unwrap();
    assert_eq!(late.verify(&fresh).await.unwrap_err(), TokenError::Revoked);
    verifier.verify(&alice).await.unwrap();
    auth.stop().await;
}

/// The fault injector: a bus whose first `failures` revocation publishes fail.
struct FlakyBus {
    inner: RedisBus,
    failures: usize,
    failed: AtomicUsize,
    published: AtomicUsize,
}

#[async_trait]
impl EventBus for FlakyBus {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError> {
        if channel == topics::AUTH_REVOCATIONS {
            if self.failed.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(BusError::Closed);
            }
            self.failed.fetch_sub(1, Ordering::SeqCst);
            self.published.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.publish(channel, payload).await
    }

    async fn subscribe(&self, channels: &[String]) -> Result<Subscription, BusError> {
        self.inner.subscribe(channels).await
    }
}

#[tokio::test]
async fn failed_revocation_publishes_are_retried() {
    let redis = redis().await;
    let flaky = Arc::new(FlakyBus {
        inner: RedisBus::connect(&redis.url()).await.unwrap(),
        failures: 3,
        failed: AtomicUsize::new(0),
        published: AtomicUsize::new(0),
    });
    let backends = Backends {
        bus: flaky.clone(),
        kv: Arc::new(RedisKv::connect(&redis.url()).await.unwrap()),
    };
    let auth = TestAuth::start_with(test_config(Some(&redis.url())), backends).await;
    let token = auth.token("alice").await;
    // Follows the bus only: it learns of the revocation from a publish or not at all.
    let verifier = remote_verifier(&auth, &redis).await;
    verifier.verify(&token).await.unwrap();

    let response = auth
        .client
        .post(auth.url("/auth/revoke"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the revocation is stored: success");
    assert_eq!(refused(&verifier, &token).await, TokenError::Revoked);
    assert_eq!(flaky.failed.load(Ordering::SeqCst), 3);
    assert_eq!(flaky.published.load(Ordering::SeqCst), 1);
    auth.stop().await;
}

/// Sends `n` concurrent logins; returns (status, Retry-After seconds) of each.
async fn concurrent_logins(
    auth: &TestAuth,
    n: usize,
    forwarded_for: &str,
    password: &str,
) -> Vec<(u16, Option<u64>)> {
    let attempts = (0..n).map(|_| async {
        let (status, headers, json) = auth.login_via(forwarded_for, "alice", password).await;
        if status == 429 {
            assert_eq!(error_code(&json), "too_many_attempts");
        }
        let retry = headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        (status, retry)
    });
    futures::future::join_all(attempts).await
}

fn count(results: &[(u16, Option<u64>)], status: u16) -> usize {
    results.iter().filter(|(s, _)| *s == status).count()
}

#[tokio::test]
async fn concurrent_wrong_passwords_get_at_most_the_limit_of_401s() {
    let redis = redis().await;
    let mut config = test_config(Some(&redis.url()));
    config.throttle.max_failures_per_user_addr = 5;
    let auth = TestAuth::start(config).await;
    let results = concurrent_logins(&auth, 60, "198.51.100.1", "wrong password").await;
    let unauthorized = count(&results, 401);
    let throttled = count(&results, 429);
    eprintln!("60 concurrent wrong passwords: {unauthorized} x 401, {throttled} x 429");
    assert!((1..=5).contains(&unauthorized), "{results:?}");
    assert_eq!(unauthorized + throttled, 60, "{results:?}");
    for (status, retry) in &results {
        if *status == 429 {
            assert!(retry.is_some_and(|r| (1..=60).contains(&r)), "{results:?}");
        }
    }
    // Locked: the right password waits too.
    let (status, headers, _) = auth.login_via("198.51.100.1", "alice", PASSWORD).await;
    assert_eq!(status, 429);
    assert!(headers.contains_key("retry-after"));
    auth.stop().await;
}

#[tokio::test]
async fn replicas_share_the_throttle() {
    let redis = redis().await;
    let mut config = test_config(Some(&redis.url()));
    config.throttle.max_failures_per_user_addr = 4;
    let first = TestAuth::start(config.clone()).await;
    let second = TestAuth::start(config).await;
    for auth in [&first, &second, &first, &second] {
        assert_eq!(auth.login("alice", "wrong password").await.0, 401);
    }
    for auth in [&first, &second] {
        let (status, json) = auth.login("alice", PASSWORD).await;
        assert_eq!(status, 429, "{json}");
    }
    // Over gRPC as well (the peer address is the same loopback client).
    let status = second
        .grpc_client()
        .await
        .login(pb::LoginRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_locked_address_does_not_lock_the_user_elsewhere() {
    let redis = redis().await;
    let mut config = test_config(Some(&redis.url()));
    config.throttle.max_failures_per_user_addr = 3;
    config.throttle.trusted_proxies = vec!["127.0.0.0/8".into()];
    let auth = TestAuth::start(config.clone()).await;
    let flood = concurrent_logins(&auth, 30, "203.0.113.9, 198.51.100.1", "wrong password").await;
    assert!(count(&flood, 401) <= 3, "{flood:?}");
    assert!(count(&flood, 429) >= 27, "{flood:?}");
    let (status, _, _) = auth.login_via("198.51.100.1", "alice", PASSWORD).await;
    assert_eq!(status, 429, "the flooding address stays locked out");
    // Alice from another address: the client is the last hop before the trusted proxy, so a
    // forged left hop does not matter.
    let (status, _, json) = auth
        .login_via("198.51.100.1, 198.51.100.2", "alice", PASSWORD)
        .await;
    assert_eq!(status, 200, "{json}");
    auth.stop().await;

    // Without trusted proxies the header is ignored: every request is the loopback peer.
    let redis = self::redis().await;
    let mut config = test_config(Some(&redis.url()));
    config.throttle.max_failures_per_user_addr = 3;
    let auth = TestAuth::start(config).await;
    for n in 1..=3 {
        let (status, _, _) = auth
            .login_via(&format!("198.51.100.{n}"), "alice", "wrong password")
            .await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = auth.login_via("198.51.100.4", "alice", PASSWORD).await;
    assert_eq!(status, 429);
    auth.stop().await;
}

/// Runs the `rethink-auth` binary against `redis`; returns its stdout, panicking on failure.
async fn cli(redis: &RedisServer, args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_rethink-auth"))
        .arg("--redis-url")
        .arg(redis.url())
        .args(args)
        .output()
        .await
        .expect("run rethink-auth");
    assert!(
        output.status.success(),
        "rethink-auth {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn the_command_line_sets_grants_and_manages_api_keys() {
    let redis = redis().await;
    let auth = TestAuth::start(test_config(Some(&redis.url()))).await;
    let verifier = remote_verifier(&auth, &redis).await;
    let before = auth.token("alice").await;

    let out = cli(
        &redis,
        &[
            "user",
            "grants",
            "alice",
            "rooms.join,rooms.publish,rooms.subscribe,room=demo*",
        ],
    )
    .await;
    assert!(out.contains("grants of alice"), "{out}");
    assert_eq!(refused(&verifier, &before).await, TokenError::Revoked);
    let claims = verifier.verify(&auth.token("alice").await).await.unwrap();
    assert_eq!(
        claims.grants,
        grants("rooms.join,rooms.publish,rooms.subscribe,room=demo*")
    );
    let out = cli(&redis, &["user", "list"]).await;
    assert!(out.contains("room=demo*"), "{out}");

    let out = cli(
        &redis,
        &[
            "key",
            "add",
            "--subject",
            "camera:default",
            "--grants",
            "cameras.view",
            "--subjects",
            "camera:*,bot:1",
        ],
    )
    .await;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .to_string()
    };
    let (key_id, secret) = (field("key_id="), field("secret="));
    let (_, token) = auth
        .service
        .mint_with_api_key(&key_id, &secret, None, Some("camera:lobby"), None, None)
        .await
        .map(|t| ((), t.token))
        .unwrap();
    let refused_subject = auth
        .service
        .mint_with_api_key(&key_id, &secret, None, Some("service:sfu"), None, None)
        .await
        .unwrap_err();
    assert_eq!(refused_subject.status(), 403);
    let listed = cli(&redis, &["key", "list"]).await;
    assert!(
        listed.contains(&key_id) && listed.contains("camera:*,bot:1"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "{listed}");
    cli(&redis, &["key", "revoke", &key_id]).await;
    assert_eq!(refused(&verifier, &token).await, TokenError::Revoked);
    let err = auth
        .service
        .mint_with_api_key(&key_id, &secret, None, None, None, None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), 401);
    let listed = cli(&redis, &["key", "list"]).await;
    assert!(!listed.contains(&key_id), "{listed}");

    // Deleting through the command line revokes too.
    let alice = auth.token("alice").await;
    cli(&redis, &["user", "delete", "alice"]).await;
    assert_eq!(refused(&verifier, &alice).await, TokenError::Revoked);
    auth.stop().await;
}

#[tokio::test]
async fn a_user_deleted_while_logging_in_gets_no_valid_token() {
    // Many logins racing one delete: every token handed out is refused afterwards.
    let redis = redis().await;
    let mut config = test_config(Some(&redis.url()));
    config.throttle.max_failures_per_user_addr = u32::MAX;
    let auth = TestAuth::start(config).await;
    auth.service
        .create_user("carol", "carol-password", None, None)
        .await
        .unwrap();
    let verifier = remote_verifier(&auth, &redis).await;
    let logins = futures::future::join_all((0..8).map(|_| auth.login("carol", "carol-password")));
    let delete = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        auth.service.delete_user("carol").await.unwrap()
    };
    let (results, deleted) = tokio::join!(logins, delete);
    assert!(deleted);
    for (status, json) in results {
        if status == 200 {
            let token = json["token"].as_str().unwrap();
            assert_eq!(refused(&verifier, token).await, TokenError::Revoked);
        } else {
            assert_eq!(status, 401, "{json}");
        }
    }
    auth.stop().await;
}
