//! The gRPC contract of `rethink.v1.Sfu` against a real service on loopback: statuses for
//! duplicates, unknown names, bad SDP, missing or bad tokens.

mod common;

use std::time::Duration;

use common::peer::TestPeer;
use rethink_proto::v1::{
    SfuAddIceCandidateRequest, SfuAnswerRenegotiationRequest, SfuCloseRoomRequest,
    SfuCreateRoomRequest, SfuEventsRequest, SfuGetParticipantStatsRequest, SfuGetRoomStatsRequest,
    SfuJoinRequest, SfuLeaveRequest, SfuSubscribeRequest, sfu_client::SfuClient,
};
use rethink_testbed::{SfuReplica, TestBed, WAIT};
use tonic::Code;

const HOUR: Duration = Duration::from_secs(3600);

/// Creates room `room` with `token` on the call; returns the status of a refusal.
async fn create_as(
    bed: &TestBed,
    sfu: &SfuReplica,
    token: &str,
    room: &str,
) -> Result<(), tonic::Status> {
    let mut client = bed.sfu_control_as(sfu, token).await.unwrap().raw();
    client
        .create_room(SfuCreateRoomRequest { room: room.into() })
        .await
        .map(drop)
}

#[tokio::test]
async fn create_room_then_duplicate_is_already_exists() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    let created = client
        .create_room(SfuCreateRoomRequest { room: "r1".into() })
        .await
        .unwrap();
    assert_eq!(created.into_inner().node_id, "sfu-test");
    let error = client
        .create_room(SfuCreateRoomRequest { room: "r1".into() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists, "{error:?}");
    assert!(error.message().contains("r1"), "{}", error.message());
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn join_with_garbage_sdp_is_invalid_argument() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    control.create_room("r").await.unwrap();
    for garbage in ["hello", "v=0\r\nm=nonsense\r\n", "\u{0}\u{1}\u{2}"] {
        let error = client
            .join(SfuJoinRequest {
                room: "r".into(),
                participant: "alice".into(),
                offer_sdp: garbage.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            error.code(),
            Code::InvalidArgument,
            "{garbage:?}: {error:?}"
        );
    }
    let oversized = "a".repeat(70 * 1024);
    let error = client
        .join(SfuJoinRequest {
            room: "r".into(),
            participant: "alice".into(),
            offer_sdp: oversized.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    // Nothing was half-created: a valid join of the same participant still works.
    let peer = TestPeer::new().await;
    client
        .join(SfuJoinRequest {
            room: "r".into(),
            participant: "alice".into(),
            offer_sdp: peer.offer.clone(),
        })
        .await
        .expect("join after bad attempts");
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_room_or_participant_is_not_found() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    let peer = TestPeer::new().await;
    let error = client
        .join(SfuJoinRequest {
            room: "nowhere".into(),
            participant: "alice".into(),
            offer_sdp: peer.offer.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    let error = client
        .close_room(SfuCloseRoomRequest {
            room: "nowhere".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = client
        .get_room_stats(SfuGetRoomStatsRequest {
            room: "nowhere".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);

    control.create_room("r").await.unwrap();
    let error = client
        .leave(SfuLeaveRequest {
            room: "r".into(),
            participant: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = client
        .get_participant_stats(SfuGetParticipantStatsRequest {
            room: "r".into(),
            participant: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = client
        .events(SfuEventsRequest {
            room: "r".into(),
            participant: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);

    // A participant exists, but the track does not.
    control.join("r", "alice", &peer.offer).await.unwrap();
    let error = client
        .subscribe(SfuSubscribeRequest {
            room: "r".into(),
            participant: "alice".into(),
            track_id: "no-such-track".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");

    // An answer while the server has no offer outstanding.
    let error = client
        .answer_renegotiation(SfuAnswerRenegotiationRequest {
            room: "r".into(),
            participant: "alice".into(),
            answer_sdp: peer.offer.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn duplicate_participant_is_already_exists() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    control.create_room("r").await.unwrap();
    let first = TestPeer::new().await;
    let second = TestPeer::new().await;
    control.join("r", "alice", &first.offer).await.unwrap();
    let error = client
        .join(SfuJoinRequest {
            room: "r".into(),
            participant: "alice".into(),
            offer_sdp: second.offer.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists, "{error:?}");
    // The same name in another room is someone else.
    control.create_room("r2").await.unwrap();
    client
        .join(SfuJoinRequest {
            room: "r2".into(),
            participant: "alice".into(),
            offer_sdp: second.offer.clone(),
        })
        .await
        .expect("same name, other room");
    let stats = control.room_stats("r").await.unwrap();
    assert_eq!(stats.participants, 1);
    assert_eq!(stats.participant_stats[0].participant, "alice");
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn missing_or_bad_tokens_are_unauthenticated() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();

    let mut anonymous = SfuClient::new(sfu.channel().await.unwrap());
    let error = anonymous
        .create_room(SfuCreateRoomRequest { room: "r".into() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");

    let error = create_as(&bed, &sfu, "not-a-jwt", "r").await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");

    // Signed by a key the auth service does not publish (another auth service's).
    let forged = TestBed::start().await.unwrap().sfu_token();
    let error = create_as(&bed, &sfu, &forged, "r").await.unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");

    // A user token verifies but may not drive the SFU.
    let user = bed
        .token_for(
            "service:conference",
            serde_json::json!({"rooms": {"join": true, "publish": true, "subscribe": true}}),
            HOUR,
        )
        .unwrap()
        .token;
    let error = create_as(&bed, &sfu, &user, "r").await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");

    // A service token limited to room "a" manages "a" only.
    let limited = bed
        .token_for(
            "service:conference",
            serde_json::json!({"rooms": {"admin": true, "names": ["a"]}}),
            HOUR,
        )
        .unwrap()
        .token;
    create_as(&bed, &sfu, &limited, "a").await.unwrap();
    let error = create_as(&bed, &sfu, &limited, "b").await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");

    // Nothing was created by the refused calls.
    let error = client
        .get_room_stats(SfuGetRoomStatsRequest { room: "r".into() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn trickled_candidates_are_parsed() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    control.create_room("r").await.unwrap();
    let peer = TestPeer::new().await;
    control.join("r", "alice", &peer.offer).await.unwrap();
    let candidate = |line: &str| SfuAddIceCandidateRequest {
        room: "r".into(),
        participant: "alice".into(),
        candidate: line.into(),
    };
    for good in [
        "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
        "a=candidate:2 1 udp 2130706431 127.0.0.1 50001 typ host",
        // End of candidates.
        "",
    ] {
        client
            .add_ice_candidate(candidate(good))
            .await
            .unwrap_or_else(|e| panic!("{good:?}: {e:?}"));
    }
    for bad in ["candidate:garbage", &"x".repeat(2000)] {
        let error = client.add_ice_candidate(candidate(bad)).await.unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{bad:?}: {error:?}");
    }
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn bad_ids_are_invalid_argument() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    for room in ["", "has space", &"x".repeat(200)] {
        let error = client
            .create_room(SfuCreateRoomRequest { room: room.into() })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{room:?}");
    }
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn close_room_ends_its_participants_event_streams() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    control.create_room("r").await.unwrap();
    let peer = TestPeer::new().await;
    control.join("r", "alice", &peer.offer).await.unwrap();
    let mut events = control.events("r", "alice").await.unwrap();
    client
        .close_room(SfuCloseRoomRequest { room: "r".into() })
        .await
        .unwrap();
    let end = tokio::time::timeout(WAIT, async {
        while let Some(item) = events.message().await.transpose() {
            item.expect("event");
        }
    })
    .await;
    assert!(end.is_ok(), "stream ends when the room closes");
    let error = client
        .get_room_stats(SfuGetRoomStatsRequest { room: "r".into() })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    // The name is free again.
    control.create_room("r").await.unwrap();
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn public_ips_are_the_advertised_candidates() {
    let bed = TestBed::start().await.unwrap();
    let config = rethink_sfu::SfuConfig {
        public_ips: vec![
            "198.51.100.9".parse().unwrap(),
            "2001:db8::9".parse().unwrap(),
        ],
        ..bed.sfu_config("sfu-test")
    };
    let sfu = bed.sfu_with(config, memory_backends()).await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room("r").await.unwrap();
    let peer = TestPeer::new().await;
    let answer = control.join("r", "alice", &peer.offer).await.unwrap();
    let port = sfu.udp.port();
    assert!(
        answer.contains(&format!("198.51.100.9 {port} typ host")),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("2001:db8::9 {port} typ host")),
        "{answer}"
    );
    assert!(!answer.contains("127.0.0.1"), "{answer}");
    sfu.stop().await.unwrap();
}

/// In-memory store and bus: this node shares no registry with anyone.
fn memory_backends() -> rethink_common::Backends {
    rethink_common::Backends {
        kv: std::sync::Arc::new(rethink_common::kv::MemoryKv::new()),
        bus: std::sync::Arc::new(rethink_common::bus::MemoryBus::new()),
    }
}
