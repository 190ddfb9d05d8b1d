//! One behaviour suite, run against both key-value store implementations (memory and a real
//! redis-server per test).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::eventually;
use rethink_common::kv::{KvError, KvStore, MemoryKv, RedisKv};
use rethink_common::testing::RedisServer;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn get_set_delete(kv: &dyn KvStore) {
    assert_eq!(kv.get("k").await.unwrap(), None);
    kv.set("k", b("one"), None).await.unwrap();
    assert_eq!(kv.get("k").await.unwrap(), Some(b("one")));
    kv.set("k", b("two"), None).await.unwrap();
    assert_eq!(kv.get("k").await.unwrap(), Some(b("two")));
    assert!(kv.delete("k").await.unwrap());
    assert!(!kv.delete("k").await.unwrap());
    assert_eq!(kv.get("k").await.unwrap(), None);
    // Binary values survive unchanged.
    let binary = Bytes::from_static(&[0, 255, 1, 254, b'\n', 0]);
    kv.set("bin", binary.clone(), None).await.unwrap();
    assert_eq!(kv.get("bin").await.unwrap(), Some(binary));
}

async fn ttl_expiry(kv: &dyn KvStore) {
    // Long enough that the presence check right after the set holds on a loaded machine.
    let ttl = Some(Duration::from_millis(1500));
    kv.set("t:reset", b("x"), ttl).await.unwrap();
    // A plain set replaces the previous TTL.
    kv.set("t:reset", b("kept"), None).await.unwrap();
    kv.set("t:forever", b("kept"), None).await.unwrap();
    kv.set("t:short", b("gone soon"), ttl).await.unwrap();
    assert_eq!(kv.get("t:short").await.unwrap(), Some(b("gone soon")));
    assert!(kv.set_nx("t:nx", b("lease"), ttl).await.unwrap());

    eventually("t:short to expire", || async {
        kv.get("t:short").await.unwrap().is_none()
    })
    .await;
    eventually("t:nx to expire", || async {
        kv.get("t:nx").await.unwrap().is_none()
    })
    .await;
    // An expired lease can be taken again.
    assert!(kv.set_nx("t:nx", b("again"), None).await.unwrap());
    assert_eq!(kv.get("t:reset").await.unwrap(), Some(b("kept")));
    assert_eq!(kv.get("t:forever").await.unwrap(), Some(b("kept")));
    assert!(kv.scan_prefix("t:short").await.unwrap().is_empty());

    assert!(matches!(
        kv.set("t:zero", b("x"), Some(Duration::ZERO)).await,
        Err(KvError::ZeroTtl)
    ));
}

async fn set_nx(kv: &dyn KvStore) {
    assert!(kv.set_nx("n", b("first"), None).await.unwrap());
    assert!(!kv.set_nx("n", b("second"), None).await.unwrap());
    assert_eq!(kv.get("n").await.unwrap(), Some(b("first")));
    kv.delete("n").await.unwrap();
    assert!(kv.set_nx("n", b("third"), None).await.unwrap());
    assert_eq!(kv.get("n").await.unwrap(), Some(b("third")));
}

async fn compare_and_swap(kv: &dyn KvStore) {
    // Absent expected: creates only when absent.
    assert!(
        kv.compare_and_swap("c", None, Some(b("v1")), None)
            .await
            .unwrap()
    );
    assert!(
        !kv.compare_and_swap("c", None, Some(b("other")), None)
            .await
            .unwrap()
    );
    assert_eq!(kv.get("c").await.unwrap(), Some(b("v1")));
    // Mismatch changes nothing.
    assert!(
        !kv.compare_and_swap("c", Some(b"wrong"), Some(b("v2")), None)
            .await
            .unwrap()
    );
    assert_eq!(kv.get("c").await.unwrap(), Some(b("v1")));
    // Match swaps.
    assert!(
        kv.compare_and_swap("c", Some(b"v1"), Some(b("v2")), None)
            .await
            .unwrap()
    );
    assert_eq!(kv.get("c").await.unwrap(), Some(b("v2")));
    // Expecting a value on an absent key fails.
    assert!(
        !kv.compare_and_swap("absent", Some(b"v"), Some(b("x")), None)
            .await
            .unwrap()
    );
    assert_eq!(kv.get("absent").await.unwrap(), None);
    // None as new deletes, on match only.
    assert!(
        !kv.compare_and_swap("c", Some(b"v1"), None, None)
            .await
            .unwrap()
    );
    assert!(
        kv.compare_and_swap("c", Some(b"v2"), None, None)
            .await
            .unwrap()
    );
    assert_eq!(kv.get("c").await.unwrap(), None);
    // The new value may carry a TTL.
    assert!(
        kv.compare_and_swap(
            "c",
            None,
            Some(b("lease")),
            Some(Duration::from_millis(300))
        )
        .await
        .unwrap()
    );
    eventually("the CAS-set lease to expire", || async {
        kv.get("c").await.unwrap().is_none()
    })
    .await;
}

async fn scan_prefix(kv: &dyn KvStore) {
    for key in [
        "room:1",
        "room:2",
        "room:10",
        "roomx",
        "other:room:3",
        "ro*m:glob",
        "ro[o]m",
    ] {
        kv.set(key, b(key), None).await.unwrap();
    }
    let found = kv.scan_prefix("room:").await.unwrap();
    let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["room:1", "room:10", "room:2"]);
    assert!(found.iter().all(|(k, v)| v == &b(k)));
    // Glob characters in the prefix are literal.
    let found = kv.scan_prefix("ro*").await.unwrap();
    assert_eq!(found, vec![("ro*m:glob".to_owned(), b("ro*m:glob"))]);
    let found = kv.scan_prefix("ro[").await.unwrap();
    assert_eq!(found, vec![("ro[o]m".to_owned(), b("ro[o]m"))]);
    assert!(kv.scan_prefix("none:").await.unwrap().is_empty());
    // More keys than one SCAN step returns.
    for i in 0..1200 {
        kv.set(&format!("many:{i:04}"), b("x"), None).await.unwrap();
    }
    let found = kv.scan_prefix("many:").await.unwrap();
    assert_eq!(found.len(), 1200);
    assert_eq!(found[0].0, "many:0000");
    assert_eq!(found[1199].0, "many:1199");
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&rethink_common::kv::MemoryKv::new()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let server = super::RedisServer::start().await.unwrap();
                    let kv = super::RedisKv::connect(&server.url()).await.unwrap();
                    super::$name(&kv).await;
                }
            )*
        }
    };
}

both_backends!(
    get_set_delete,
    ttl_expiry,
    set_nx,
    compare_and_swap,
    scan_prefix
);

#[tokio::test]
async fn redis_kv_works_again_after_a_restart() {
    let mut server = RedisServer::start().await.unwrap();
    let kv = RedisKv::connect(&server.url()).await.unwrap();
    kv.set("before", b("x"), None).await.unwrap();
    server.restart().await.unwrap();
    // Calls during the reconnect may fail; the store must recover without a new connect.
    eventually("the store to reconnect", || async {
        kv.set("after", b("y"), None).await.is_ok()
    })
    .await;
    assert_eq!(kv.get("after").await.unwrap(), Some(b("y")));
    // The restarted server has no persistence.
    assert_eq!(kv.get("before").await.unwrap(), None);
}

#[tokio::test]
async fn memory_kv_clones_share_data() {
    let a = MemoryKv::new();
    let b2 = a.clone();
    a.set("shared", b("1"), None).await.unwrap();
    assert_eq!(b2.get("shared").await.unwrap(), Some(b("1")));
}
