//! Syncher tests on the in-memory backends and on a real `redis-server`.

use std::time::Duration;

use rethink_common::bus::{MemoryBus, RedisBus};
use rethink_common::kv::{MemoryKv, RedisKv};
use rethink_common::testing::RedisServer;
use serde_json::json;

use super::*;

const WAIT: Duration = Duration::from_secs(10);
const ALICE: Party<'static> = Party {
    address: "hyperty://localhost/alice-1",
    identity: "user:alice",
};
const BOB: Party<'static> = Party {
    address: "hyperty://localhost/bob-1",
    identity: "user:bob",
};

/// Observers that admit every identity, for tests about delivery rather than access.
fn everyone() -> Observers {
    Observers::new(vec!["*".into()]).unwrap()
}

/// A hyperty of user `name`.
fn party(address: &'static str) -> Party<'static> {
    Party {
        address,
        identity: "user:someone",
    }
}
const SCHEMA: &str = "hyperty-catalogue://localhost/.well-known/dataschema/Room";

fn memory_pair(config: SyncConfig) -> (Syncher, Syncher) {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new());
    let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
    (
        Syncher::new(kv.clone(), bus.clone(), config.clone()),
        Syncher::new(kv, bus, config),
    )
}

/// Waits for missing versions far longer than any test takes.
fn patient() -> SyncConfig {
    SyncConfig {
        gap_timeout: Duration::from_secs(60),
        ..SyncConfig::default()
    }
}

fn memory() -> Syncher {
    memory_pair(SyncConfig::default()).0
}

async fn redis_syncher(server: &RedisServer) -> Syncher {
    let kv = RedisKv::connect(&server.url()).await.unwrap();
    let bus = RedisBus::connect(&server.url()).await.unwrap();
    Syncher::new(Arc::new(kv), Arc::new(bus), SyncConfig::default())
}

async fn next(stream: &mut ChangeStream) -> Option<ObjectChange> {
    tokio::time::timeout(WAIT, stream.recv())
        .await
        .expect("no change arrived in time")
}

#[tokio::test]
async fn create_read_subscribe_update_delete() {
    let s = memory();
    let info = s
        .create_for(ALICE, SCHEMA, json!({"n": 0}), everyone())
        .await
        .unwrap();
    assert!(info.url.starts_with("object://localhost/"), "{}", info.url);
    assert_eq!((info.version, info.reporter.as_str()), (1, ALICE.address));
    assert_eq!(s.address(), "domain://sync.localhost");

    let (snap, mut changes) = s.subscribe(&info.url, BOB).await.unwrap();
    assert_eq!(snap.version, 1);
    assert_eq!(snap.value, json!({"n": 0}));
    assert_eq!(snap.schema, SCHEMA);
    assert_eq!(
        s.observers(&info.url).await.unwrap(),
        vec![BOB.address.to_owned()]
    );

    assert_eq!(
        s.update(&info.url, ALICE, 1, json!({"n": 1}))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.update(&info.url, ALICE, 2, json!({"n": 2}))
            .await
            .unwrap(),
        3
    );
    s.delete(&info.url, ALICE).await.unwrap();

    let got: Vec<_> = [
        next(&mut changes).await.unwrap(),
        next(&mut changes).await.unwrap(),
        next(&mut changes).await.unwrap(),
    ]
    .into_iter()
    .map(|c| (c.version, c.kind))
    .collect();
    assert_eq!(
        got,
        vec![
            (2, ChangeKind::Update(json!({"n": 1}))),
            (3, ChangeKind::Update(json!({"n": 2}))),
            (4, ChangeKind::Delete)
        ]
    );
    assert_eq!(next(&mut changes).await, None);
    assert!(matches!(
        s.read(&info.url, BOB).await,
        Err(SyncError::NotFound)
    ));
    assert!(matches!(
        s.subscribe(&info.url, BOB).await,
        Err(SyncError::NotFound)
    ));
}

#[tokio::test]
async fn only_the_reporter_writes_and_stale_versions_conflict() {
    let s = memory();
    let url = s
        .create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap()
        .url;
    let err = s.update(&url, BOB, 1, json!(2)).await.unwrap_err();
    assert!(matches!(err, SyncError::Forbidden));
    assert_eq!(err.code(), 403);
    assert!(matches!(
        s.delete(&url, BOB).await,
        Err(SyncError::Forbidden)
    ));

    s.update(&url, ALICE, 1, json!(2)).await.unwrap();
    let err = s.update(&url, ALICE, 1, json!(3)).await.unwrap_err();
    assert!(matches!(err, SyncError::Conflict { current: 2 }), "{err}");
    assert_eq!(err.code(), 409);
    assert_eq!(s.read(&url, BOB).await.unwrap().value, json!(2));

    let missing = "object://localhost/nope";
    for err in [
        s.update(missing, ALICE, 1, json!(0)).await.unwrap_err(),
        s.delete(missing, ALICE).await.unwrap_err(),
        s.read(missing, BOB).await.unwrap_err(),
        s.unsubscribe(missing, BOB).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), 404, "{err}");
    }
    assert_eq!(
        s.create_for(party(""), SCHEMA, json!(0), everyone())
            .await
            .unwrap_err()
            .code(),
        400
    );
    assert_eq!(
        s.create_for(ALICE, "", json!(0), everyone())
            .await
            .unwrap_err()
            .code(),
        400
    );
}

#[tokio::test]
async fn sizes_and_counts_are_bounded() {
    let config = SyncConfig {
        max_value_bytes: 100,
        max_objects_per_reporter: 2,
        max_observers_per_object: 1,
        ..SyncConfig::default()
    };
    let (s, _) = memory_pair(config);
    let big = json!("x".repeat(200));
    let err = s
        .create_for(ALICE, SCHEMA, big.clone(), everyone())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SyncError::TooLarge { limit: 100, .. }),
        "{err}"
    );
    assert_eq!(err.code(), 413);

    let a = s
        .create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap()
        .url;
    assert_eq!(s.update(&a, ALICE, 1, big).await.unwrap_err().code(), 413);
    let _b = s
        .create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap()
        .url;
    let err = s
        .create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::LimitReached(_)), "{err}");
    // Another reporter has its own allowance; deleting frees a slot.
    s.create_for(BOB, SCHEMA, json!(1), everyone())
        .await
        .unwrap();
    s.delete(&a, ALICE).await.unwrap();
    s.create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap();

    let c = s
        .create_for(BOB, SCHEMA, json!(1), everyone())
        .await
        .unwrap()
        .url;
    let (_snap, _stream) = s.subscribe(&c, ALICE).await.unwrap();
    // The same observer again is fine; a second one is over the limit.
    let (_snap, _stream2) = s.subscribe(&c, ALICE).await.unwrap();
    let err = s
        .subscribe(&c, party("hyperty://localhost/carol"))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::LimitReached(_)), "{err}");
}

/// Observers that go away leave the stored list; a full list makes room instead of refusing.
#[tokio::test]
async fn departed_observers_leave_the_list_and_the_list_stays_bounded() {
    let config = SyncConfig {
        max_observers_per_object: 2,
        ..SyncConfig::default()
    };
    let (a, b) = memory_pair(config);
    let url = a
        .create_for(ALICE, SCHEMA, json!(0), everyone())
        .await
        .unwrap()
        .url;
    let (_, stream) = a.subscribe(&url, BOB).await.unwrap();
    assert_eq!(
        a.observers(&url).await.unwrap(),
        vec![BOB.address.to_owned()]
    );
    drop(stream);
    tokio::time::timeout(WAIT, async {
        while !a.observers(&url).await.unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a dropped stream's observer stayed listed");

    // A stream replaced by a resubscribe does not take the observer off the list.
    let (_, first) = a.subscribe(&url, BOB).await.unwrap();
    let (_, _second) = a.subscribe(&url, BOB).await.unwrap();
    drop(first);
    tokio::task::yield_now().await;
    assert_eq!(
        a.observers(&url).await.unwrap(),
        vec![BOB.address.to_owned()]
    );

    // Two more observers on the other replica: the list keeps the newest two.
    let carol = "hyperty://localhost/carol-1";
    let dave = "hyperty://localhost/dave-1";
    let (_, _c) = b.subscribe(&url, party(carol)).await.unwrap();
    let (_, _d) = b.subscribe(&url, party(dave)).await.unwrap();
    assert_eq!(
        a.observers(&url).await.unwrap(),
        vec![carol.to_owned(), dave.to_owned()]
    );
    // Live streams per replica are limited.
    let err = b
        .subscribe(&url, party("hyperty://localhost/erin-1"))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::LimitReached(_)), "{err}");
}

#[tokio::test]
async fn delete_all_of_a_reporter_notifies_observers() {
    let (a, b) = memory_pair(SyncConfig::default());
    let one = a
        .create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap()
        .url;
    let two = a
        .create_for(ALICE, SCHEMA, json!(2), everyone())
        .await
        .unwrap()
        .url;
    let bobs = b
        .create_for(BOB, SCHEMA, json!(3), everyone())
        .await
        .unwrap()
        .url;
    let (_, mut on_one) = b.subscribe(&one, BOB).await.unwrap();
    assert_eq!(b.delete_all_of(ALICE).await.unwrap(), 2);
    let change = next(&mut on_one).await.unwrap();
    assert_eq!((change.version, change.kind), (2, ChangeKind::Delete));
    assert!(matches!(a.read(&two, BOB).await, Err(SyncError::NotFound)));
    assert_eq!(a.read(&bobs, BOB).await.unwrap().value, json!(3));
    assert_eq!(a.delete_all_of(ALICE).await.unwrap(), 0);
}

#[tokio::test]
async fn objects_can_expire_when_a_ttl_is_set() {
    let server = RedisServer::start().await.unwrap();
    let kv = Arc::new(RedisKv::connect(&server.url()).await.unwrap());
    let bus = Arc::new(RedisBus::connect(&server.url()).await.unwrap());
    let s = Syncher::new(
        kv,
        bus,
        SyncConfig {
            object_ttl: Some(Duration::from_secs(100)),
            ..SyncConfig::default()
        },
    );
    let url = s
        .create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap()
        .url;
    s.update(&url, ALICE, 1, json!(2)).await.unwrap();
    // Ask Redis itself which TTL it holds (-1 would mean none); an update keeps one in place.
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "TTL", &object_key(&url)])
        .output()
        .expect("redis-cli runs");
    let ttl: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!((1..=100).contains(&ttl), "ttl {ttl}");
}

/// Many writers racing on two replicas: every increment lands exactly once, and the observer
/// sees every version in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_never_lose_data() {
    const WRITERS: u64 = 8;
    const EACH: u64 = 10;
    // Publishes from racing writers may arrive out of order; a long gap timeout makes the
    // stream wait for every version instead of skipping to the store's state on a slow machine.
    let (a, b) = memory_pair(patient());
    let url = a
        .create_for(ALICE, SCHEMA, json!({"count": 0}), everyone())
        .await
        .unwrap()
        .url;
    let (_, mut changes) = b.subscribe(&url, BOB).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let s = if w % 2 == 0 { a.clone() } else { b.clone() };
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < EACH {
                let snap = s.read(&url, BOB).await.unwrap();
                let count = snap.value["count"].as_u64().unwrap();
                match s
                    .update(&url, ALICE, snap.version, json!({"count": count + 1}))
                    .await
                {
                    Ok(_) => done += 1,
                    Err(SyncError::Conflict { .. }) => tokio::task::yield_now().await,
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = WRITERS * EACH;
    let snap = a.read(&url, BOB).await.unwrap();
    assert_eq!(snap.value, json!({"count": total}));
    assert_eq!(snap.version, total + 1);
    for version in 2..=total + 1 {
        let change = next(&mut changes).await.unwrap();
        assert_eq!(change.version, version);
        assert_eq!(
            change.kind,
            ChangeKind::Update(json!({"count": version - 1}))
        );
    }
}

#[tokio::test]
async fn changes_cross_replicas_and_unsubscribe_ends_streams_everywhere() {
    let (a, b) = memory_pair(SyncConfig::default());
    let url = a
        .create_for(ALICE, SCHEMA, json!("v1"), everyone())
        .await
        .unwrap()
        .url;
    let (snap, mut on_b) = b.subscribe(&url, BOB).await.unwrap();
    assert_eq!(snap.value, json!("v1"));
    a.update(&url, ALICE, 1, json!("v2")).await.unwrap();
    let change = next(&mut on_b).await.unwrap();
    assert_eq!(
        (change.version, change.kind),
        (2, ChangeKind::Update(json!("v2")))
    );

    // Unsubscribing through the other replica ends the stream here too.
    a.unsubscribe(&url, BOB).await.unwrap();
    assert_eq!(next(&mut on_b).await, None);
    assert!(a.observers(&url).await.unwrap().is_empty());
    a.unsubscribe(&url, BOB).await.unwrap();
}

#[tokio::test]
async fn resubscribing_replaces_the_old_stream() {
    let s = memory();
    let url = s
        .create_for(ALICE, SCHEMA, json!(0), everyone())
        .await
        .unwrap()
        .url;
    let (_, mut first) = s.subscribe(&url, BOB).await.unwrap();
    let (_, mut second) = s.subscribe(&url, BOB).await.unwrap();
    assert_eq!(next(&mut first).await, None);
    s.update(&url, ALICE, 1, json!(1)).await.unwrap();
    assert_eq!(next(&mut second).await.unwrap().version, 2);
}

/// Pub/sub may deliver changes from different replicas out of order; the stream restores it.
#[tokio::test]
async fn out_of_order_changes_are_reordered() {
    let (s, _) = memory_pair(patient());
    let url = s
        .create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap()
        .url;
    let (_, mut changes) = s.subscribe(&url, BOB).await.unwrap();
    // Store version 3 (as two real updates would), then publish their changes swapped.
    let store = |version, value| {
        let record = ObjectRecord {
            url: url.clone(),
            schema: SCHEMA.into(),
            reporter: ALICE.address.into(),
            owner: ALICE.identity.into(),
            observers: everyone(),
            version,
            value,
            deleted: false,
        };
        Bytes::from(serde_json::to_vec(&record).unwrap())
    };
    s.shared
        .kv
        .set(&object_key(&url), store(3, json!(3)), None)
        .await
        .unwrap();
    for (version, value) in [(3, json!(3)), (2, json!(2))] {
        s.shared
            .publish(&BusChange::Update {
                url: url.clone(),
                version,
                value,
            })
            .await;
    }
    assert_eq!(next(&mut changes).await.unwrap().version, 2);
    assert_eq!(next(&mut changes).await.unwrap().version, 3);
}

/// A change that never arrives (lost publish) is bridged by reading the store.
#[tokio::test]
async fn a_lost_change_is_bridged_from_the_store() {
    let config = SyncConfig {
        gap_timeout: Duration::from_millis(50),
        ..SyncConfig::default()
    };
    let (s, _) = memory_pair(config);
    let url = s
        .create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap()
        .url;
    let (_, mut changes) = s.subscribe(&url, BOB).await.unwrap();
    // Version 2 is committed but its publish is lost; version 3 is committed and published.
    let record = |version, value| ObjectRecord {
        url: url.clone(),
        schema: SCHEMA.into(),
        reporter: ALICE.address.into(),
        owner: ALICE.identity.into(),
        observers: everyone(),
        version,
        value,
        deleted: false,
    };
    let bytes = Bytes::from(serde_json::to_vec(&record(3, json!(3))).unwrap());
    s.shared
        .kv
        .set(&object_key(&url), bytes, None)
        .await
        .unwrap();
    s.shared
        .publish(&BusChange::Update {
            url: url.clone(),
            version: 3,
            value: json!(3),
        })
        .await;
    let change = next(&mut changes).await.unwrap();
    assert_eq!(
        (change.version, change.kind),
        (3, ChangeKind::Update(json!(3)))
    );
    // The stream keeps working afterwards.
    s.update(&url, ALICE, 3, json!(4)).await.unwrap();
    assert_eq!(next(&mut changes).await.unwrap().version, 4);
}

/// An observer that does not read is never a memory problem: it skips to the latest state.
#[tokio::test]
async fn a_slow_observer_catches_up_without_unbounded_queues() {
    let config = SyncConfig {
        stream_capacity: 2,
        ..SyncConfig::default()
    };
    let (s, _) = memory_pair(config);
    let url = s
        .create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap()
        .url;
    let (_, mut changes) = s.subscribe(&url, BOB).await.unwrap();
    let mut version = 1;
    for i in 0..50 {
        version = s.update(&url, ALICE, version, json!(i)).await.unwrap();
    }
    let mut last = 0;
    let mut seen = Vec::new();
    while last < version {
        let change = next(&mut changes).await.unwrap();
        assert!(change.version > last, "versions went backwards");
        last = change.version;
        seen.push(change);
    }
    assert_eq!(seen.last().unwrap().kind, ChangeKind::Update(json!(49)));
    assert!(
        seen.len() < 50,
        "nothing was skipped; the queue was not bounded"
    );
}

#[tokio::test]
async fn malformed_bus_messages_are_ignored() {
    let s = memory();
    let url = s
        .create_for(ALICE, SCHEMA, json!(1), everyone())
        .await
        .unwrap()
        .url;
    let (_, mut changes) = s.subscribe(&url, BOB).await.unwrap();
    s.shared
        .bus
        .publish(SYNC_CHANNEL, Bytes::from_static(b"{not json"))
        .await
        .unwrap();
    s.update(&url, ALICE, 1, json!(2)).await.unwrap();
    assert_eq!(next(&mut changes).await.unwrap().version, 2);
}

#[tokio::test]
async fn two_replicas_on_real_redis_deliver_in_order() {
    let server = RedisServer::start().await.unwrap();
    let a = redis_syncher(&server).await;
    let b = redis_syncher(&server).await;
    let url = a
        .create_for(ALICE, SCHEMA, json!({"step": 0}), everyone())
        .await
        .unwrap()
        .url;
    let (snap, mut on_b) = b.subscribe(&url, BOB).await.unwrap();
    assert_eq!((snap.version, snap.value.clone()), (1, json!({"step": 0})));
    let mut version = 1;
    for step in 1..=20 {
        version = a
            .update(&url, ALICE, version, json!({"step": step}))
            .await
            .unwrap();
    }
    for step in 1..=20u64 {
        let change = next(&mut on_b).await.unwrap();
        assert_eq!(change.version, step + 1);
        assert_eq!(change.kind, ChangeKind::Update(json!({"step": step})));
    }
    // Stale writes through the other replica conflict.
    assert!(matches!(
        b.update(&url, ALICE, 3, json!(0)).await,
        Err(SyncError::Conflict { current: 21 })
    ));
    a.delete(&url, ALICE).await.unwrap();
    let change = next(&mut on_b).await.unwrap();
    assert_eq!((change.version, change.kind), (22, ChangeKind::Delete));
    assert_eq!(next(&mut on_b).await, None);
    assert!(matches!(b.read(&url, BOB).await, Err(SyncError::NotFound)));
}

#[tokio::test]
async fn objects_survive_a_msg_node_restart_on_redis() {
    let server = RedisServer::start().await.unwrap();
    let url = {
        let first = redis_syncher(&server).await;
        let url = first
            .create_for(ALICE, SCHEMA, json!({"title": "standup"}), everyone())
            .await
            .unwrap()
            .url;
        first
            .update(&url, ALICE, 1, json!({"title": "retro"}))
            .await
            .unwrap();
        url
    };
    // A new node process: fresh connections, no shared memory with the first.
    let second = redis_syncher(&server).await;
    let snap = second.read(&url, BOB).await.unwrap();
    assert_eq!(snap.version, 2);
    assert_eq!(snap.value, json!({"title": "retro"}));
    assert_eq!(snap.reporter, ALICE.address);
    let (_, mut changes) = second.subscribe(&url, BOB).await.unwrap();
    second
        .update(&url, ALICE, 2, json!({"title": "done"}))
        .await
        .unwrap();
    assert_eq!(next(&mut changes).await.unwrap().version, 3);
}

#[tokio::test]
async fn only_the_observers_the_reporter_names_may_read_and_subscribe() {
    let s = memory();
    let carol = Party {
        address: "hyperty://localhost/carol-1",
        identity: "user:carol",
    };
    let camera = Party {
        address: "hyperty://localhost/cam-1",
        identity: "service:camera-7",
    };
    // By default only the reporter's own identity (any of its hyperties).
    let private = s.create(ALICE, SCHEMA, json!(1)).await.unwrap().url;
    assert!(matches!(
        s.read(&private, BOB).await,
        Err(SyncError::NotObserver)
    ));
    assert_eq!(s.subscribe(&private, BOB).await.unwrap_err().code(), 403);
    let other_tab = Party {
        address: "hyperty://localhost/alice-2",
        identity: "user:alice",
    };
    assert_eq!(s.read(&private, other_tab).await.unwrap().value, json!(1));
    assert_eq!(s.read(&private, ALICE).await.unwrap().value, json!(1));

    // Exact identities and prefixes.
    let shared = s
        .create_for(
            ALICE,
            SCHEMA,
            json!(2),
            Observers::new(vec!["user:bob".into(), "service:camera-*".into()]).unwrap(),
        )
        .await
        .unwrap()
        .url;
    s.subscribe(&shared, BOB).await.unwrap();
    s.subscribe(&shared, camera).await.unwrap();
    assert!(matches!(
        s.read(&shared, carol).await,
        Err(SyncError::NotObserver)
    ));
    // Nobody is added to the observer list by a refused subscribe.
    assert_eq!(
        s.observers(&shared).await.unwrap(),
        vec![BOB.address.to_owned(), camera.address.to_owned()]
    );
}

#[test]
fn observer_lists_are_checked() {
    for bad in ["", "us*er:*", "**", "a*b"] {
        assert!(Observers::new(vec![bad.into()]).is_err(), "{bad:?}");
    }
    assert!(Observers::new(vec!["x".into(); MAX_OBSERVER_PATTERNS + 1]).is_err());
    let o = Observers::new(vec!["user:*".into(), "service:conference".into()]).unwrap();
    assert!(o.admits("user:bob"));
    assert!(o.admits("service:conference"));
    assert!(!o.admits("service:conference-2"));
    assert!(!o.admits(""));
    assert!(Observers::new(vec!["*".into()]).unwrap().admits("anyone"));
}

#[tokio::test]
async fn the_object_limit_holds_per_identity_across_its_hyperties() {
    let (s, _) = memory_pair(SyncConfig {
        max_objects_per_reporter: 2,
        ..SyncConfig::default()
    });
    let tab = |address| Party {
        address,
        identity: "user:alice",
    };
    s.create(tab("hyperty://localhost/a1"), SCHEMA, json!(1))
        .await
        .unwrap();
    s.create(tab("hyperty://localhost/a2"), SCHEMA, json!(1))
        .await
        .unwrap();
    let err = s
        .create(tab("hyperty://localhost/a3"), SCHEMA, json!(1))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::LimitReached(_)), "{err}");
    // Deleting what one hyperty reported frees its slots, and only its objects go.
    assert_eq!(
        s.delete_all_of(tab("hyperty://localhost/a1"))
            .await
            .unwrap(),
        1
    );
    s.create(tab("hyperty://localhost/a3"), SCHEMA, json!(1))
        .await
        .unwrap();
    assert_eq!(
        s.delete_all_of(tab("hyperty://localhost/a2"))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn refreshing_keeps_a_reporters_objects_past_their_ttl() {
    let server = RedisServer::start().await.unwrap();
    let kv = Arc::new(RedisKv::connect(&server.url()).await.unwrap());
    let bus = Arc::new(RedisBus::connect(&server.url()).await.unwrap());
    let s = Syncher::new(
        kv,
        bus,
        SyncConfig {
            object_ttl: Some(Duration::from_secs(3)),
            ..SyncConfig::default()
        },
    );
    let kept = s.create(ALICE, SCHEMA, json!(1)).await.unwrap().url;
    let lost = s.create(BOB, SCHEMA, json!(1)).await.unwrap().url;
    // Refresh ALICE's objects well within the TTL until BOB's, never refreshed, has expired.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert_eq!(s.refresh_all_of(ALICE).await.unwrap(), 1);
        if matches!(s.read(&lost, BOB).await, Err(SyncError::NotFound)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an object nobody refreshed did not expire"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.read(&kept, ALICE).await.unwrap().value, json!(1));
}
