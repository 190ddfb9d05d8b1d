//! Revocations reach sessions: credentials lapse on revocation and expiry and move with renewal;
//! the feed re-reads the store after a pub/sub reconnect and periodically, and holds the service
//! not ready while Redis is away. Real redis-server where Redis is involved.

mod common;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use common::{eventually, within};
use jsonwebtoken::jwk::JwkSet;
use rethink_common::{
    Backends,
    lifecycle::{Health, Shutdown},
    testing::RedisServer,
    token::{
        Claims, Credential, FEED_CONDITION, FeedOptions, Grants, REVOKED_KEY_PREFIX, TokenError,
        TokenVerifier, VerifierOptions, unix_now,
    },
};

fn verifier() -> TokenVerifier {
    TokenVerifier::new(
        Arc::new(JwkSet { keys: vec![] }),
        VerifierOptions {
            leeway: Duration::ZERO,
            ..VerifierOptions::default()
        },
    )
}

fn claims(sub: &str, jti: &str, lifetime_secs: i64) -> Claims {
    let now = unix_now();
    Claims {
        sub: sub.into(),
        name: sub.into(),
        iat: now,
        nbf: now,
        exp: now + lifetime_secs,
        jti: jti.into(),
        aud: "rethink".into(),
        grants: Grants::user(),
    }
}

#[tokio::test]
async fn a_credential_lapses_when_its_token_is_revoked() {
    let verifier = verifier();
    let credential = Credential::new(&verifier, claims("user:alice", "j1", 600));
    let waiting = tokio::spawn({
        let credential = credential.clone();
        async move { credential.lapsed().await }
    });
    // Another token's revocation does not end this session.
    verifier.revoke_local("other", unix_now() + 600);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    verifier.revoke_local("j1", unix_now() + 600);
    let reason = within("lapse", waiting).await.unwrap();
    assert_eq!(reason, TokenError::Revoked);
}

#[tokio::test]
async fn a_renewed_credential_outlives_its_first_token() {
    let verifier = verifier();
    let credential = Credential::new(&verifier, claims("user:alice", "short", 1));
    let waiting = tokio::spawn({
        let credential = credential.clone();
        async move { credential.lapsed().await }
    });
    credential
        .renew(claims("user:alice", "long", 6))
        .expect("same subject renews");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!waiting.is_finished(), "lapsed at the first token's expiry");
    assert_eq!(
        within("expiry", waiting).await.unwrap(),
        TokenError::Expired
    );
    assert!(credential.claims().exp >= unix_now());
    assert_eq!(credential.claims().jti, "long");
}

#[tokio::test]
async fn a_credential_refuses_another_identity_and_dead_tokens() {
    let verifier = verifier();
    let credential = Credential::new(&verifier, claims("user:alice", "a", 600));
    assert!(matches!(
        credential.renew(claims("user:bob", "b", 900)),
        Err(TokenError::WrongSubject { .. })
    ));
    verifier.revoke_local("r", unix_now() + 600);
    assert_eq!(
        credential.renew(claims("user:alice", "r", 900)),
        Err(TokenError::Revoked)
    );
    assert_eq!(
        credential.renew(claims("user:alice", "old", -5)),
        Err(TokenError::Expired)
    );
    assert_eq!(credential.claims().jti, "a");
    // A token of the same second replaces the current one.
    let same_second = Claims {
        jti: "b".into(),
        ..credential.claims()
    };
    credential.renew(same_second).unwrap();
    assert_eq!(credential.claims().jti, "b");
}

async fn store_revocation(backends: &Backends, jti: &str) {
    backends
        .kv
        .set(
            &format!("{REVOKED_KEY_PREFIX}{jti}"),
            Bytes::from((unix_now() + 600).to_string()),
            Some(Duration::from_secs(600)),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_feed_rereads_the_store_after_a_pubsub_reconnect() {
    let redis = RedisServer::start().await.unwrap();
    let backends = rethink_common::backends(Some(&redis.url())).await.unwrap();
    let (verifier, health, shutdown) = (verifier(), Health::new(), Shutdown::new());
    let options = FeedOptions {
        reload_interval: Duration::from_secs(3600),
        ..FeedOptions::default()
    };
    verifier
        .follow_with(&backends, &health, &shutdown, options)
        .await;
    assert!(health.unmet_conditions().is_empty());
    // Stored, never published: as if the publish had been lost while pub/sub was away.
    store_revocation(&backends, "lost").await;
    assert!(!verifier.is_revoked("lost"));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    let v = verifier.clone();
    eventually("revocation read back after the reconnect", || {
        let v = v.clone();
        async move { v.is_revoked("lost") }
    })
    .await;
    shutdown.trigger();
}

#[tokio::test]
async fn the_feed_reloads_periodically_and_fails_closed_while_redis_is_away() {
    let mut redis = RedisServer::start().await.unwrap();
    let backends = rethink_common::backends(Some(&redis.url())).await.unwrap();
    let (verifier, health, shutdown) = (verifier(), Health::new(), Shutdown::new());
    health.set_ready(true);
    let options = FeedOptions {
        reload_interval: Duration::from_millis(200),
        retry_interval: Duration::from_millis(100),
    };
    verifier
        .follow_with(&backends, &health, &shutdown, options)
        .await;
    assert!(health.is_ready());
    store_revocation(&backends, "quiet").await;
    let v = verifier.clone();
    eventually("periodic reload", || {
        let v = v.clone();
        async move { v.is_revoked("quiet") }
    })
    .await;

    redis.stop();
    let h = health.clone();
    eventually("not ready without redis", || {
        let h = h.clone();
        async move { !h.is_ready() }
    })
    .await;
    assert_eq!(health.unmet_conditions(), vec![FEED_CONDITION]);
    redis.restart().await.unwrap();
    let h = health.clone();
    eventually("ready again", || {
        let h = h.clone();
        async move { h.is_ready() }
    })
    .await;
    shutdown.trigger();
}

#[tokio::test]
async fn a_feed_that_cannot_start_holds_the_service_not_ready_until_redis_comes() {
    let mut redis = RedisServer::start().await.unwrap();
    let backends = rethink_common::backends(Some(&redis.url())).await.unwrap();
    redis.stop();
    let (verifier, health, shutdown) = (verifier(), Health::new(), Shutdown::new());
    health.set_ready(true);
    let options = FeedOptions {
        reload_interval: Duration::from_millis(200),
        retry_interval: Duration::from_millis(100),
    };
    within(
        "first attempt returns",
        verifier.follow_with(&backends, &health, &shutdown, options),
    )
    .await;
    assert!(!health.is_ready());
    redis.restart().await.unwrap();
    store_revocation(&backends, "early").await;
    let (h, v) = (health.clone(), verifier.clone());
    eventually("ready and caught up", || {
        let (h, v) = (h.clone(), v.clone());
        async move { h.is_ready() && v.is_revoked("early") }
    })
    .await;
    shutdown.trigger();
}
