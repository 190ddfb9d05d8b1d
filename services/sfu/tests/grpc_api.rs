//! The gRPC contract of `rethink.v1.Sfu` against a real service on loopback: statuses for
//! duplicates, unknown names, bad SDP, missing or bad tokens.

mod common;

use common::{TestSfu, authed, create, join, peer::TestPeer};
use rethink_proto::v1::{
    SfuAddIceCandidateRequest, SfuAnswerRenegotiationRequest, SfuCloseRoomRequest,
    SfuEventsRequest, SfuGetParticipantStatsRequest, SfuGetRoomStatsRequest, SfuLeaveRequest,
    SfuSubscribeRequest,
};
use tonic::Code;

#[tokio::test]
async fn create_room_then_duplicate_is_already_exists() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;
    let created = client.create_room(sfu.authed(create("r1"))).await.unwrap();
    assert_eq!(created.into_inner().node_id, "sfu-test");
    let error = client
        .create_room(sfu.authed(create("r1")))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists, "{error:?}");
    assert!(error.message().contains("r1"), "{}", error.message());
    sfu.stop().await;
}

#[tokio::test]
async fn join_with_garbage_sdp_is_invalid_argument() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;
    sfu.create_room(&mut client, "r").await;
    for garbage in ["hello", "v=0\r\nm=nonsense\r\n", "\u{0}\u{1}\u{2}"] {
        let error = client
            .join(sfu.authed(join("r", "alice", garbage)))
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
        .join(sfu.authed(join("r", "alice", &oversized)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    // Nothing was half-created: a valid join of the same participant still works.
    let peer = TestPeer::new().await;
    client
        .join(sfu.authed(join("r", "alice", &peer.offer)))
        .await
        .expect("join after bad attempts");
    sfu.stop().await;
}

#[tokio::test]
async fn unknown_room_or_participant_is_not_found() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;
    let peer = TestPeer::new().await;
    let error = client
        .join(sfu.authed(join("nowhere", "alice", &peer.offer)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    let error = client
        .close_room(sfu.authed(SfuCloseRoomRequest {
            room: "nowhere".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = client
        .get_room_stats(sfu.authed(SfuGetRoomStatsRequest {
            room: "nowhere".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);

    sfu.create_room(&mut client, "r").await;
    let error = client
        .leave(sfu.authed(SfuLeaveRequest {
            room: "r".into(),
            participant: "ghost".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = client
        .get_participant_stats(sfu.authed(SfuGetParticipantStatsRequest {
            room: "r".into(),
            participant: "ghost".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    let error = client
        .events(sfu.authed(SfuEventsRequest {
            room: "r".into(),
            participant: "ghost".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);

    // A participant exists, but the track does not.
    sfu.join(&mut client, "r", "alice", &peer.offer).await;
    let error = client
        .subscribe(sfu.authed(SfuSubscribeRequest {
            room: "r".into(),
            participant: "alice".into(),
            track_id: "no-such-track".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");

    // An answer while the server has no offer outstanding.
    let error = client
        .answer_renegotiation(sfu.authed(SfuAnswerRenegotiationRequest {
            room: "r".into(),
            participant: "alice".into(),
            answer_sdp: peer.offer.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    sfu.stop().await;
}

#[tokio::test]
async fn duplicate_participant_is_already_exists() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;
    sfu.create_room(&mut client, "r").await;
    let first = TestPeer::new().await;
    let second = TestPeer::new().await;
    sfu.join(&mut client, "r", "alice", &first.offer).await;
    let error = client
        .join(sfu.authed(join("r", "alice", &second.offer)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::AlreadyExists, "{error:?}");
    // The same name in another room is someone else.
    sfu.create_room(&mut client, "r2").await;
    client
        .join(sfu.authed(join("r2", "alice", &second.offer)))
        .await
        .expect("same name, other room");
    let stats = sfu.room_stats(&mut client, "r").await;
    assert_eq!(stats.participants, 1);
    assert_eq!(stats.participant_stats[0].participant, "alice");
    sfu.stop().await;
}

#[tokio::test]
async fn missing_or_bad_tokens_are_unauthenticated() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;

    let error = client
        .create_room(tonic::Request::new(create("r")))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");

    let error = client
        .create_room(authed(create("r"), "not-a-jwt"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");

    // Signed by a key the auth service does not publish.
    let forged = common::Keys::new(99).service_token();
    let error = client
        .create_room(authed(create("r"), &forged))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unauthenticated, "{error:?}");

    // A user token verifies but may not drive the SFU.
    let user = sfu
        .keys
        .mint(serde_json::json!({"rooms": {"join": true, "publish": true, "subscribe": true}}));
    let error = client
        .create_room(authed(create("r"), &user))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");

    // A service token limited to room "a" manages "a" only.
    let limited = sfu
        .keys
        .mint(serde_json::json!({"rooms": {"admin": true, "names": ["a"]}}));
    client
        .create_room(authed(create("a"), &limited))
        .await
        .unwrap();
    let error = client
        .create_room(authed(create("b"), &limited))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");

    // Nothing was created by the refused calls.
    let error = client
        .get_room_stats(sfu.authed(SfuGetRoomStatsRequest { room: "r".into() }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    sfu.stop().await;
}

#[tokio::test]
async fn trickled_candidates_are_parsed() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;
    sfu.create_room(&mut client, "r").await;
    let peer = TestPeer::new().await;
    sfu.join(&mut client, "r", "alice", &peer.offer).await;
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
            .add_ice_candidate(sfu.authed(candidate(good)))
            .await
            .unwrap_or_else(|e| panic!("{good:?}: {e:?}"));
    }
    for bad in ["candidate:garbage", &"x".repeat(2000)] {
        let error = client
            .add_ice_candidate(sfu.authed(candidate(bad)))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{bad:?}: {error:?}");
    }
    sfu.stop().await;
}

#[tokio::test]
async fn bad_ids_are_invalid_argument() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;
    for room in ["", "has space", &"x".repeat(200)] {
        let error = client
            .create_room(sfu.authed(create(room)))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{room:?}");
    }
    sfu.stop().await;
}

#[tokio::test]
async fn close_room_ends_its_participants_event_streams() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;
    sfu.create_room(&mut client, "r").await;
    let peer = TestPeer::new().await;
    sfu.join(&mut client, "r", "alice", &peer.offer).await;
    let mut events = sfu.events(&mut client, "r", "alice").await;
    client
        .close_room(sfu.authed(SfuCloseRoomRequest { room: "r".into() }))
        .await
        .unwrap();
    let end = tokio::time::timeout(common::WAIT, async {
        while let Some(item) = events.message().await.transpose() {
            item.expect("event");
        }
    })
    .await;
    assert!(end.is_ok(), "stream ends when the room closes");
    let error = client
        .get_room_stats(sfu.authed(SfuGetRoomStatsRequest { room: "r".into() }))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound);
    // The name is free again.
    sfu.create_room(&mut client, "r").await;
    sfu.stop().await;
}

#[tokio::test]
async fn public_ips_are_the_advertised_candidates() {
    let config = rethink_sfu::SfuConfig {
        public_ips: vec![
            "198.51.100.9".parse().unwrap(),
            "2001:db8::9".parse().unwrap(),
        ],
        ..common::test_config()
    };
    let sfu = TestSfu::start_with(
        config,
        std::sync::Arc::new(rethink_common::kv::MemoryKv::new()),
        std::sync::Arc::new(rethink_common::bus::MemoryBus::new()),
    )
    .await;
    let mut client = sfu.client().await;
    sfu.create_room(&mut client, "r").await;
    let peer = TestPeer::new().await;
    let answer = sfu.join(&mut client, "r", "alice", &peer.offer).await;
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
    sfu.stop().await;
}
