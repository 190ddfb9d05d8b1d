//! Engine tests: rule order, matching, limits on a virtual clock, reloads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use rethink_common::bus::MemoryBus;
use serde_json::{Value, json};

use super::*;
use crate::envelope::{MessageId, MessageType};

fn env(kind: MessageType, from: &str, to: &str, body: Value) -> Envelope {
    Envelope::new(MessageId::Int(1), kind, from, to, body)
}

fn fwd(to: &str) -> Envelope {
    env(
        MessageType::Forward,
        "hyperty://localhost/me",
        to,
        Value::Null,
    )
}

/// Evaluates as a user sending a small message at `now`.
fn check(engine: &PolicyEngine, identity: &str, e: &Envelope, now: Instant) -> Decision {
    engine.evaluate(&PolicyContext {
        identity,
        is_service: false,
        envelope: e,
        size: 100,
        now,
    })
}

fn code(d: &Decision) -> u16 {
    match d {
        Decision::Allow => 200,
        Decision::Deny { code, .. } => *code,
    }
}

const UNLIMITED: &str = "[limits]\nrate = 0.0\n";

fn policy(rules: &str) -> PolicyEngine {
    PolicyEngine::from_toml(&format!("default_action = \"deny\"\n{UNLIMITED}{rules}")).unwrap()
}

#[test]
fn default_policy_allows_hyperties_objects_and_node_services_only() {
    let p = PolicyEngine::default_policy();
    let now = Instant::now();
    for to in [
        "hyperty://localhost/3f1c",
        "hyperty://localhost/camera/front",
        "object://localhost/9a9a",
        "domain://registry.localhost",
        "domain://sync.localhost",
    ] {
        assert_eq!(check(&p, "alice", &fwd(to), now), Decision::Allow, "{to}");
    }
    let denied = check(&p, "alice", &fwd("user://localhost/bob"), now);
    assert_eq!(
        denied,
        Decision::Deny {
            code: 403,
            reason: "no policy rule allows this message".into()
        }
    );
    assert_eq!(p.limits_for("alice", false), Limits::DEFAULT);
    let service = p.limits_for("conference", true);
    assert_eq!((service.rate, service.burst), (2000.0, 4000));
    assert_eq!(service.max_message_bytes, 64 * 1024);
}

#[test]
fn example_file_is_valid_and_documents_the_defaults() {
    let example = include_str!("../../policy.example.toml");
    let p = PolicyEngine::from_toml(example).unwrap();
    let d = PolicyEngine::default_policy();
    assert_eq!(p.limits_for("alice", false), d.limits_for("alice", false));
    let now = Instant::now();
    for to in [
        "hyperty://localhost/3f1c",
        "object://localhost/9a9a",
        "domain://registry.localhost",
    ] {
        assert_eq!(check(&p, "alice", &fwd(to), now), Decision::Allow, "{to}");
    }
}

#[test]
fn first_matching_rule_wins() {
    let deny_first = policy(
        r#"
        [[rules]]
        name = "ban-mallory"
        identity = "mallory"
        action = "deny"
        reason = "account suspended"
        [[rules]]
        name = "all"
        action = "allow"
        "#,
    );
    let now = Instant::now();
    let m = fwd("hyperty://localhost/x");
    assert_eq!(
        check(&deny_first, "mallory", &m, now),
        Decision::Deny {
            code: 403,
            reason: "account suspended".into()
        }
    );
    assert_eq!(check(&deny_first, "alice", &m, now), Decision::Allow);

    let allow_first = policy(
        r#"
        [[rules]]
        action = "allow"
        [[rules]]
        identity = "mallory"
        action = "deny"
        "#,
    );
    assert_eq!(check(&allow_first, "mallory", &m, now), Decision::Allow);
}

#[test]
fn default_action_allow_and_default_reason() {
    let open = PolicyEngine::from_toml("default_action = \"allow\"").unwrap();
    let now = Instant::now();
    assert_eq!(
        check(&open, "x", &fwd("anything://at/all"), now),
        Decision::Allow
    );
    let closed =
        PolicyEngine::from_toml("default_action = \"deny\"\ndefault_reason = \"closed today\"")
            .unwrap();
    assert_eq!(
        check(&closed, "x", &fwd("hyperty://a/b"), now),
        Decision::Deny {
            code: 403,
            reason: "closed today".into()
        }
    );
}

#[test]
fn rules_match_on_every_field() {
    let p = policy(
        r#"
        [[rules]]
        name = "cameras-for-services-only"
        to = "hyperty://*/camera/*"
        type = ["create", "update", "delete"]
        service = false
        action = "deny"
        reason = "only camera services manage cameras"

        [[rules]]
        name = "no-admin-objects"
        resource = ["object://*/admin/**", "user://*/root"]
        action = "deny"

        [[rules]]
        name = "staff-sender"
        identity = ["staff-*", "ops"]
        from = "hyperty://localhost/**"
        action = "allow"

        [[rules]]
        name = "everyone-to-hyperties"
        to = "hyperty://**"
        action = "allow"
        "#,
    );
    let now = Instant::now();
    let cam = "hyperty://localhost/camera/front";
    let user = |kind| env(kind, "hyperty://localhost/me", cam, Value::Null);
    // type + to + service all hold → denied.
    assert_eq!(
        code(&check(&p, "alice", &user(MessageType::Update), now)),
        403
    );
    // Another type → the rule does not apply; the catch-all allows.
    assert_eq!(
        check(&p, "alice", &user(MessageType::Execute), now),
        Decision::Allow
    );
    // A service is not matched by `service = false`.
    let as_service = p.evaluate(&PolicyContext {
        identity: "camera-1",
        is_service: true,
        envelope: &user(MessageType::Update),
        size: 10,
        now,
    });
    assert_eq!(as_service, Decision::Allow);
    // `*` stays in one segment: a deeper path is not a camera address.
    let deep = env(
        MessageType::Update,
        "hyperty://localhost/me",
        "hyperty://localhost/camera/a/b",
        Value::Null,
    );
    assert_eq!(check(&p, "alice", &deep, now), Decision::Allow);

    // Resource globs look at body.resource; a body without one does not match.
    let read = |body| {
        env(
            MessageType::Read,
            "hyperty://localhost/me",
            "hyperty://localhost/x",
            body,
        )
    };
    let denied = check(
        &p,
        "alice",
        &read(json!({"resource": "object://h/admin/a/b"})),
        now,
    );
    assert_eq!(
        denied,
        Decision::Deny {
            code: 403,
            reason: "denied by policy rule no-admin-objects".into()
        }
    );
    assert_eq!(
        code(&check(
            &p,
            "alice",
            &read(json!({"resource": "user://h/root"})),
            now
        )),
        403
    );
    assert_eq!(
        check(&p, "alice", &read(json!({"resource": 5})), now),
        Decision::Allow
    );
    assert_eq!(
        check(&p, "alice", &read(json!({"other": 1})), now),
        Decision::Allow
    );

    // identity + from: staff may send anywhere from a local hyperty, others only to hyperties.
    let to_user = |from: &str| {
        env(
            MessageType::Forward,
            from,
            "user://localhost/bob",
            Value::Null,
        )
    };
    assert_eq!(
        check(&p, "staff-7", &to_user("hyperty://localhost/a"), now),
        Decision::Allow
    );
    assert_eq!(
        check(&p, "ops", &to_user("hyperty://localhost/a/b"), now),
        Decision::Allow
    );
    assert_eq!(
        code(&check(&p, "staff-7", &to_user("hyperty://other/a"), now)),
        403
    );
    assert_eq!(
        code(&check(&p, "alice", &to_user("hyperty://localhost/a"), now)),
        403
    );
}

#[test]
fn size_limits_per_kind_of_identity() {
    let p = PolicyEngine::from_toml(
        r#"
        default_action = "allow"
        [limits]
        max_message_bytes = 1000
        rate = 0.0
        [service_limits]
        max_message_bytes = 5000
        [[identity_limits]]
        identity = "uploader-*"
        service = false
        max_message_bytes = 2000
        "#,
    )
    .unwrap();
    let m = fwd("hyperty://localhost/x");
    let now = Instant::now();
    let at = |identity, is_service, size| {
        code(&p.evaluate(&PolicyContext {
            identity,
            is_service,
            envelope: &m,
            size,
            now,
        }))
    };
    assert_eq!(at("alice", false, 1000), 200);
    assert_eq!(at("alice", false, 1001), 413);
    assert_eq!(at("uploader-1", false, 2000), 200);
    assert_eq!(at("uploader-1", false, 2001), 413);
    // `service = false` keeps the override away from a service of the same name.
    assert_eq!(at("uploader-1", true, 5000), 200);
    assert_eq!(at("conference", true, 5001), 413);
    let Decision::Deny { reason, .. } = p.evaluate(&PolicyContext {
        identity: "alice",
        is_service: false,
        envelope: &m,
        size: 70_000,
        now,
    }) else {
        panic!("oversized message allowed")
    };
    assert_eq!(
        reason,
        "message of 70000 bytes is larger than the limit of 1000 bytes"
    );
    // Service limits inherit the user rate when unset.
    assert_eq!(p.limits_for("conference", true).rate, 0.0);
}

#[test]
fn rate_limits_on_a_virtual_clock() {
    let p = PolicyEngine::from_toml(
        r#"
        default_action = "allow"
        [limits]
        rate = 10.0
        burst = 3
        [service_limits]
        rate = 100.0
        burst = 20
        [[identity_limits]]
        identity = "vip"
        burst = 6
        "#,
    )
    .unwrap();
    let m = fwd("hyperty://localhost/x");
    let t0 = Instant::now();
    let send = |identity: &str, is_service: bool, t: Instant| {
        code(&p.evaluate(&PolicyContext {
            identity,
            is_service,
            envelope: &m,
            size: 10,
            now: t,
        }))
    };
    let burst = |identity: &str, is_service: bool, t: Instant| {
        (0..100)
            .take_while(|_| send(identity, is_service, t) == 200)
            .count()
    };
    assert_eq!(burst("alice", false, t0), 3);
    assert_eq!(send("alice", false, t0), 429);
    // 10 msg/s → one more token after 100 ms, three after 300 ms (never more than the burst).
    assert_eq!(burst("alice", false, t0 + Duration::from_millis(100)), 1);
    assert_eq!(burst("alice", false, t0 + Duration::from_secs(100)), 3);
    // Overrides and service limits get their own buckets and sizes.
    assert_eq!(burst("vip", false, t0), 6);
    assert_eq!(burst("alice", true, t0), 20);
    let Decision::Deny { code, reason } = p.evaluate(&PolicyContext {
        identity: "alice",
        is_service: false,
        envelope: &m,
        size: 10,
        now: t0 + Duration::from_secs(100),
    }) else {
        panic!("rate limit not applied")
    };
    assert_eq!(code, 429);
    assert!(
        reason.contains("rate limit of 10 messages per second"),
        "{reason}"
    );
}

#[test]
fn denied_messages_also_spend_tokens() {
    let p = PolicyEngine::from_toml("default_action = \"deny\"\n[limits]\nrate = 1.0\nburst = 2\n")
        .unwrap();
    let now = Instant::now();
    let m = fwd("hyperty://localhost/x");
    assert_eq!(code(&check(&p, "a", &m, now)), 403);
    assert_eq!(code(&check(&p, "a", &m, now)), 403);
    assert_eq!(code(&check(&p, "a", &m, now)), 429);
}

#[test]
fn bad_policies_are_refused_with_a_precise_message() {
    for (text, needle) in [
        ("default_action = \"maybe\"", "default_action"),
        ("default_action = \"deny\"\nbogus = 1", "bogus"),
        ("[limits]\nrate = 1.0", "default_action"),
        (
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ntype = \"shout\"",
            "unknown message type \"shout\"",
        ),
        (
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\nto = \"a\\\\\"",
            "lone",
        ),
        (
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\nto = []",
            "empty list",
        ),
        (
            "default_action = \"deny\"\n[[rules]]\nname = \"x\"\naction = \"allow\"\n[[rules]]\nname = \"x\"\naction = \"deny\"",
            "two rules",
        ),
        ("default_action = \"deny\"\n[limits]\nburst = 0", "burst"),
        ("default_action = \"deny\"\n[limits]\nrate = -1.0", "rate"),
        (
            "default_action = \"deny\"\n[limits]\nmax_message_bytes = 0",
            "max_message_bytes",
        ),
        (
            "version = 2\ndefault_action = \"deny\"",
            "unsupported version 2",
        ),
        (
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ncolour = \"red\"",
            "colour",
        ),
    ] {
        let err = PolicyEngine::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?} gave {err:?}");
    }
}

const ALLOW_ALL: &str = "default_action = \"allow\"\n[limits]\nrate = 0.0\n";
const DENY_ALL: &str =
    "default_action = \"deny\"\ndefault_reason = \"locked down\"\n[limits]\nrate = 0.0\n";

#[test]
fn reloads_when_the_file_changes_and_keeps_the_old_policy_on_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, ALLOW_ALL).unwrap();
    let p = PolicyEngine::from_file(&path).unwrap();
    let m = fwd("hyperty://localhost/x");
    let now = Instant::now();
    assert_eq!(check(&p, "a", &m, now), Decision::Allow);
    assert!(!p.reload_if_changed().unwrap(), "unchanged file reloaded");
    assert_eq!(p.generation(), 0);

    std::fs::write(&path, DENY_ALL).unwrap();
    assert!(p.reload_if_changed().unwrap());
    assert_eq!(p.generation(), 1);
    assert_eq!(code(&check(&p, "a", &m, now)), 403);

    // A broken file is refused once and the deny-all policy stays.
    std::fs::write(&path, "default_action = [").unwrap();
    assert!(matches!(p.reload_if_changed(), Err(PolicyError::Parse(_))));
    assert!(
        !p.reload_if_changed().unwrap(),
        "same broken file reported twice"
    );
    assert!(p.reload_from_file().is_err());
    assert_eq!(code(&check(&p, "a", &m, now)), 403);
    assert_eq!(p.generation(), 1);

    // A file that vanishes is an error, not a crash, and changes nothing.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(p.reload_from_file(), Err(PolicyError::Io { .. })));
    assert_eq!(code(&check(&p, "a", &m, now)), 403);

    std::fs::write(&path, ALLOW_ALL).unwrap();
    assert!(p.reload_if_changed().unwrap());
    assert_eq!(check(&p, "a", &m, now), Decision::Allow);
    // Clones share the policy.
    assert_eq!(check(&p.clone(), "a", &m, now), Decision::Allow);

    assert!(matches!(
        PolicyEngine::default_policy().reload_from_file(),
        Err(PolicyError::NoFile)
    ));
}

#[test]
fn oversized_policy_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    let mut text = String::from(ALLOW_ALL);
    text.push_str(&format!("# {}\n", "x".repeat(MAX_FILE_BYTES as usize)));
    std::fs::write(&path, text).unwrap();
    assert!(matches!(
        PolicyEngine::from_file(&path),
        Err(PolicyError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn reloader_follows_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, ALLOW_ALL).unwrap();
    let p = PolicyEngine::from_file(&path).unwrap();
    let shutdown = Shutdown::new();
    let mut reloads = p.watch_reloads();
    let task = p.spawn_reloader_every(
        Arc::new(MemoryBus::new()),
        shutdown.clone(),
        Duration::from_millis(20),
    );

    std::fs::write(&path, DENY_ALL).unwrap();
    tokio::time::timeout(Duration::from_secs(10), reloads.changed())
        .await
        .expect("file change not picked up")
        .unwrap();
    let m = fwd("hyperty://localhost/x");
    assert_eq!(
        check(&p, "a", &m, Instant::now()),
        Decision::Deny {
            code: 403,
            reason: "locked down".into()
        }
    );

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("reloader did not stop")
        .unwrap();
}

#[tokio::test]
async fn reloader_reloads_on_a_policy_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, ALLOW_ALL).unwrap();
    let p = PolicyEngine::from_file(&path).unwrap();
    let bus = Arc::new(MemoryBus::new());
    let shutdown = Shutdown::new();
    let mut reloads = p.watch_reloads();
    // The file is never polled after the first tick, so only the event can trigger a reload.
    let task = p.spawn_reloader_every(bus.clone(), shutdown.clone(), Duration::from_secs(3600));
    std::fs::write(&path, DENY_ALL).unwrap();
    let event = rethink_proto::v1::Event {
        id: "e1".into(),
        r#type: "msg_node.policy.changed".into(),
        source: "test/1".into(),
        ..Default::default()
    };
    let payload = Bytes::from(prost::Message::encode_to_vec(&event));
    publish_until_reloaded(&*bus, payload, &mut reloads).await;
    assert_eq!(
        code(&check(&p, "a", &fwd("hyperty://l/x"), Instant::now())),
        403
    );
    shutdown.trigger();
    task.await.unwrap();
}

/// Publishes `payload` on the policy topic until the engine reloads (pub/sub drops messages sent
/// before the reloader subscribed).
async fn publish_until_reloaded(
    bus: &dyn EventBus,
    payload: Bytes,
    reloads: &mut watch::Receiver<u64>,
) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            bus.publish(topics::MSG_NODE_POLICY, payload.clone())
                .await
                .unwrap();
            if tokio::time::timeout(Duration::from_millis(50), reloads.changed())
                .await
                .is_ok()
            {
                break;
            }
        }
    })
    .await
    .expect("policy event did not reload");
}

/// Replicas share Redis: an event published there (here a bare `PUBLISH`, as `redis-cli` would
/// send) reaches the reloader.
#[tokio::test]
async fn policy_events_arrive_through_real_redis() {
    let server = rethink_common::testing::RedisServer::start().await.unwrap();
    let bus = Arc::new(
        rethink_common::bus::RedisBus::connect(&server.url())
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, ALLOW_ALL).unwrap();
    let p = PolicyEngine::from_file(&path).unwrap();
    let shutdown = Shutdown::new();
    let mut reloads = p.watch_reloads();
    let task = p.spawn_reloader_every(bus.clone(), shutdown.clone(), Duration::from_secs(3600));
    let m = fwd("hyperty://localhost/x");

    std::fs::write(&path, DENY_ALL).unwrap();
    publish_until_reloaded(&*bus, Bytes::from_static(b"reload"), &mut reloads).await;
    assert_eq!(code(&check(&p, "a", &m, Instant::now())), 403);
    shutdown.trigger();
    task.await.unwrap();
}

/// A recorder that only counts counters, to check what the engine reports.
#[derive(Default)]
struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Counters {
    fn get(&self, key: &str) -> u64 {
        lock(&self.0)
            .get(key)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let counter = Arc::clone(lock(&self.0).entry(name).or_default());
        metrics::Counter::from_arc(counter)
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn denies_are_counted_by_reason() {
    let recorder = Counters::default();
    let p = PolicyEngine::from_toml(
        r#"
        default_action = "deny"
        [limits]
        max_message_bytes = 500
        rate = 0.0
        [[rules]]
        name = "ban"
        identity = "mallory"
        action = "deny"
        [[rules]]
        to = "hyperty://**"
        action = "allow"
        "#,
    )
    .unwrap();
    let now = Instant::now();
    metrics::with_local_recorder(&recorder, || {
        let m = fwd("hyperty://localhost/x");
        check(&p, "mallory", &m, now);
        check(&p, "mallory", &m, now);
        check(&p, "alice", &m, now);
        check(&p, "alice", &fwd("user://localhost/x"), now);
        p.evaluate(&PolicyContext {
            identity: "alice",
            is_service: false,
            envelope: &m,
            size: 501,
            now,
        });
    });
    assert_eq!(
        recorder.get(&format!("{DENIED_METRIC}{{code=403,reason=ban}}")),
        2
    );
    assert_eq!(
        recorder.get(&format!("{DENIED_METRIC}{{code=403,reason=default}}")),
        1
    );
    assert_eq!(
        recorder.get(&format!(
            "{DENIED_METRIC}{{code=413,reason=message_too_large}}"
        )),
        1
    );
}

proptest::proptest! {
    /// Whatever an operator writes, loading it gives a policy or an error, never a panic.
    #[test]
    fn arbitrary_policy_text_never_panics(text in "(default_action = \"(allow|deny)\"\n)?((\\[\\[rules\\]\\]|\\[limits\\]|(name|action|reason|identity|service|from|to|type|resource|rate|burst|max_message_bytes) = (\"(allow|deny|read|[a-z*/?\\\\]{0,6})\"|-?[0-9]{1,3}(\\.[0-9])?|\\[\"[a-z]{0,4}\"\\]|true))\n){0,8}") {
        if let Ok(p) = PolicyEngine::from_toml(&text) {
            let m = fwd("hyperty://localhost/x");
            let _ = check(&p, "a", &m, Instant::now());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(text in ".{0,200}") {
        let _ = PolicyEngine::from_toml(&text);
    }
}
