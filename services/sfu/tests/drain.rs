//! The first SIGTERM drains: readiness goes NOT_SERVING, the heartbeat says draining, new rooms
//! are refused with UNAVAILABLE, existing rooms live on until empty, or until the deadline.

mod common;

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rethink_common::bus::MemoryBus;
use rethink_common::kv::{KvStore, MemoryKv};
use rethink_proto::v1::SfuNode;
use rethink_sfu::keys;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use common::{TestSfu, WAIT, create, http_status, join, peer::TestPeer, stream_ends, test_config};

async fn serving(sfu: &TestSfu) -> ServingStatus {
    let mut health = HealthClient::new(sfu.channel().await);
    let response = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

/// Waits until the gRPC health status is `status` (it follows readiness through a task).
async fn wait_serving(sfu: &TestSfu, status: ServingStatus) {
    let mut health = HealthClient::new(sfu.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(WAIT, async {
        while let Some(update) = watch.message().await.unwrap() {
            if update.status == status as i32 {
                return;
            }
        }
        panic!("health stream ended");
    })
    .await
    .expect("health status in time");
}

async fn start_with_member(drain_timeout_ms: u64) -> (TestSfu, Arc<dyn KvStore>) {
    let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new());
    let config = rethink_sfu::SfuConfig {
        drain_timeout_ms,
        ..test_config()
    };
    let sfu = TestSfu::start_with(config, kv.clone(), Arc::new(MemoryBus::new())).await;
    let mut client = sfu.client().await;
    sfu.create_room(&mut client, "r").await;
    let peer = TestPeer::new().await;
    sfu.join(&mut client, "r", "alice", &peer.offer).await;
    wait_serving(&sfu, ServingStatus::Serving).await;
    assert_eq!(http_status(sfu.http, "/readyz").await, 200);
    (sfu, kv)
}

#[tokio::test]
async fn drain_refuses_new_rooms_and_ends_when_the_last_participant_leaves() {
    let (mut sfu, kv) = start_with_member(30_000).await;
    let mut client = sfu.client().await;

    sfu.begin_drain();
    wait_serving(&sfu, ServingStatus::NotServing).await;
    assert_eq!(serving(&sfu).await, ServingStatus::NotServing);
    assert_eq!(http_status(sfu.http, "/readyz").await, 503);
    assert_eq!(http_status(sfu.http, "/healthz").await, 200);

    let error = client
        .create_room(sfu.authed(create("new")))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("draining"), "{}", error.message());
    let peer = TestPeer::new().await;
    let error = client
        .join(sfu.authed(join("new", "bob", &peer.offer)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");

    // The heartbeat tells the registry at once.
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(value) = kv.get(&keys::node_key("sfu-test")).await.unwrap()
                && SfuNode::decode(value).unwrap().draining
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("heartbeat says draining");

    // WHIP publishers may still join the existing room, not open a new one.
    let http = reqwest::Client::new();
    let whip = |room: &str| {
        http.post(format!("http://{}/whip/{room}", sfu.http))
            .bearer_auth(&sfu.token)
            .header("content-type", "application/sdp")
            .body(peer.offer.clone())
            .send()
    };
    assert_eq!(whip("new").await.unwrap().status(), 503);
    let response = whip("r").await.unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let response = http
        .delete(format!("http://{}{location}", sfu.http))
        .bearer_auth(&sfu.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The existing room still works.
    let stats = sfu.room_stats(&mut client, "r").await;
    assert_eq!(stats.participants, 1);

    sfu.leave(&mut client, "r", "alice").await;
    sfu.stopped().await.expect("stops once empty");
    assert_eq!(kv.get(&keys::node_key("sfu-test")).await.unwrap(), None);
}

#[tokio::test]
async fn drain_deadline_closes_rooms_that_stay_busy() {
    let (mut sfu, _kv) = start_with_member(300).await;
    let mut client = sfu.client().await;
    let mut events = sfu.events(&mut client, "r", "alice").await;
    sfu.begin_drain();
    sfu.stopped().await.expect("stops at the deadline");
    // The participant's stream ended with the room.
    assert!(stream_ends(&mut events).await);
}
