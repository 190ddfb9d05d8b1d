//! The node registry and the event bus on a real Redis: the heartbeat key appears with a TTL
//! and the node's addresses, `nodes::least_loaded` finds it, it is gone after shutdown; joins and
//! departures are published as `rethink.v1.Event`s.

mod common;

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use rethink_common::bus::{EventBus, RedisBus, decode_event, topics};
use rethink_common::kv::KvStore;
use rethink_proto::v1::{SfuParticipantJoined, SfuParticipantLeft};
use rethink_sfu::keys;
use rethink_sfu_client::nodes;
use rethink_testbed::{TestBed, WAIT};

use common::peer::TestPeer;

/// Polls the store until `key` holds a value (the heartbeat task writes on its own schedule).
async fn wait_for_key(kv: &dyn KvStore, key: &str) -> Bytes {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(value) = kv.get(key).await.expect("get") {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("heartbeat written")
}

#[tokio::test]
async fn heartbeat_lives_in_redis_with_a_ttl_and_goes_away_on_shutdown() {
    let bed = TestBed::start().await.unwrap();
    let kv = bed.kv();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let key = nodes::node_key("sfu-test");

    let value = wait_for_key(kv.as_ref(), &key).await;
    let node = nodes::decode_heartbeat(&value).expect("heartbeat decodes");
    assert_eq!(node.node_id, "sfu-test");
    assert_eq!(node.grpc_addr, sfu.grpc.to_string());
    assert_eq!(node.udp_candidates, vec![sfu.udp.to_string()]);
    assert_eq!(node.http_addr, format!("http://{}", sfu.http));
    assert!(!node.draining);
    assert!(node.load.is_some() && node.updated_at.is_some());

    // The key carries the configured TTL (1 s), as Redis itself reports it.
    let client = redis::Client::open(bed.redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl_ms > 0 && ttl_ms <= 1_000, "pttl {ttl_ms}");

    // The registry helper sees the node and its load.
    let listed = nodes::list(kv.as_ref()).await.unwrap();
    assert_eq!(listed.len(), 1);
    let best = nodes::least_loaded(kv.as_ref())
        .await
        .unwrap()
        .expect("a node");
    assert_eq!(best.node_id, "sfu-test");

    // The load follows rooms created on the node.
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room("r").await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let node = nodes::decode_heartbeat(&wait_for_key(kv.as_ref(), &key).await).unwrap();
            if node.load.unwrap_or_default().rooms == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("load reports the room");

    sfu.stop().await.unwrap();
    assert_eq!(kv.get(&key).await.unwrap(), None, "deleted on shutdown");
    assert!(
        nodes::least_loaded(kv.as_ref()).await.unwrap().is_none(),
        "no node left to place rooms on"
    );
}

#[tokio::test]
async fn joins_and_departures_are_published_on_the_bus() {
    let bed = TestBed::start().await.unwrap();
    // A separate connection listens, as another service would.
    let listener = RedisBus::connect(&bed.redis.url()).await.unwrap();
    let mut subscription = listener
        .subscribe(&[topics::SFU_EVENTS.to_string()])
        .await
        .unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room("r").await.unwrap();
    let peer = TestPeer::new().await;
    control.join("r", "alice", &peer.offer).await.unwrap();
    control.leave("r", "alice").await.unwrap();

    let mut next = async || {
        let message = tokio::time::timeout(WAIT, subscription.recv())
            .await
            .expect("an event in time")
            .expect("bus open");
        assert_eq!(message.channel, topics::SFU_EVENTS);
        decode_event(&message.payload).expect("an Event envelope")
    };
    let joined = next().await;
    assert_eq!(joined.r#type, keys::EVENT_PARTICIPANT_JOINED);
    assert_eq!(joined.source, "sfu/sfu-test");
    assert_eq!(joined.payload_type, "rethink.v1.SfuParticipantJoined");
    let payload = SfuParticipantJoined::decode(joined.payload.as_slice()).unwrap();
    assert_eq!(
        (
            payload.node_id.as_str(),
            payload.room.as_str(),
            payload.participant.as_str()
        ),
        ("sfu-test", "r", "alice")
    );
    let left = next().await;
    assert_eq!(left.r#type, keys::EVENT_PARTICIPANT_LEFT);
    assert_eq!(left.payload_type, "rethink.v1.SfuParticipantLeft");
    let payload = SfuParticipantLeft::decode(left.payload.as_slice()).unwrap();
    assert_eq!(payload.participant, "alice");
    assert_eq!(payload.reason, "left");
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn heartbeat_comes_back_after_a_redis_restart() {
    let mut bed = TestBed::start().await.unwrap();
    let kv = bed.kv();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let key = nodes::node_key("sfu-test");
    wait_for_key(kv.as_ref(), &key).await;

    // A restart without persistence loses every key; the next beats write it again.
    bed.redis.restart().await.expect("redis restarts");
    let value = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Some(value)) = kv.get(&key).await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("heartbeat rewritten after the restart");
    assert_eq!(nodes::decode_heartbeat(&value).unwrap().node_id, "sfu-test");
    sfu.stop().await.unwrap();
}
