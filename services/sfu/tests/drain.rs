//! The first SIGTERM drains: readiness goes NOT_SERVING, the heartbeat says draining, new rooms
//! are refused with UNAVAILABLE, existing rooms live on until empty, or until the deadline.

mod common;

use std::sync::Arc;
use std::time::Duration;

use rethink_common::Backends;
use rethink_common::bus::MemoryBus;
use rethink_common::kv::{KvStore, MemoryKv};
use rethink_proto::v1::{SfuCreateRoomRequest, SfuJoinRequest};
use rethink_sfu_client::nodes;
use rethink_testbed::{SfuReplica, TestBed, WAIT, http_status, stream_ends};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use common::peer::TestPeer;

async fn serving(sfu: &SfuReplica) -> ServingStatus {
    let mut health = HealthClient::new(sfu.channel().await.unwrap());
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
async fn wait_serving(sfu: &SfuReplica, status: ServingStatus) {
    let mut health = HealthClient::new(sfu.channel().await.unwrap());
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

/// A node on its own in-memory store (its heartbeat is read back from it) with one room and
/// one member, serving.
async fn start_with_member(drain_timeout_ms: u64) -> (TestBed, SfuReplica, Arc<dyn KvStore>) {
    let bed = TestBed::start().await.unwrap();
    let kv: Arc<dyn KvStore> = Arc::new(MemoryKv::new());
    let config = rethink_sfu::SfuConfig {
        drain_timeout_ms,
        ..bed.sfu_config("sfu-test")
    };
    let backends = Backends {
        kv: kv.clone(),
        bus: Arc::new(MemoryBus::new()),
    };
    let sfu = bed.sfu_with(config, backends).await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room("r").await.unwrap();
    let peer = TestPeer::new().await;
    control.join("r", "alice", &peer.offer).await.unwrap();
    wait_serving(&sfu, ServingStatus::Serving).await;
    assert_eq!(http_status(sfu.http, "/readyz").await.unwrap(), 200);
    (bed, sfu, kv)
}

#[tokio::test]
async fn drain_refuses_new_rooms_and_ends_when_the_last_participant_leaves() {
    let (bed, mut sfu, kv) = start_with_member(30_000).await;
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();

    sfu.begin_drain();
    wait_serving(&sfu, ServingStatus::NotServing).await;
    assert_eq!(serving(&sfu).await, ServingStatus::NotServing);
    assert_eq!(http_status(sfu.http, "/readyz").await.unwrap(), 503);
    assert_eq!(http_status(sfu.http, "/healthz").await.unwrap(), 200);

    let error = client
        .create_room(SfuCreateRoomRequest { room: "new".into() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("draining"), "{}", error.message());
    let peer = TestPeer::new().await;
    let error = client
        .join(SfuJoinRequest {
            room: "new".into(),
            participant: "bob".into(),
            offer_sdp: peer.offer.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");

    // The heartbeat tells the registry at once.
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(value) = kv.get(&nodes::node_key("sfu-test")).await.unwrap()
                && nodes::decode_heartbeat(&value).unwrap().draining
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
            .bearer_auth(bed.sfu_token())
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
        .bearer_auth(bed.sfu_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // The existing room still works.
    let stats = control.room_stats("r").await.unwrap();
    assert_eq!(stats.participants, 1);

    control.leave("r", "alice").await.unwrap();
    sfu.stopped().await.expect("stops once empty");
    assert_eq!(kv.get(&nodes::node_key("sfu-test")).await.unwrap(), None);
}

#[tokio::test]
async fn drain_deadline_closes_rooms_that_stay_busy() {
    let (bed, mut sfu, _kv) = start_with_member(300).await;
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut events = control.events("r", "alice").await.unwrap();
    sfu.begin_drain();
    sfu.stopped().await.expect("stops at the deadline");
    // The participant's stream ended with the room.
    assert!(stream_ends(&mut events).await);
}
