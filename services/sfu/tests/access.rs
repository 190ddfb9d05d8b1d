//! Who may reach media, over real HTTP, gRPC and UDP with real tokens: WHEP needs
//! `rooms.subscribe` naming the room (a login token is refused), and a WHIP/WHEP session
//! belongs to the identity that opened it (another identity's PATCH or DELETE is refused,
//! a room admin's is not). A session lives only as long as its token: revoked (on the bus, as
//! the auth service does it) or expired, the participant is removed, its media stops and its
//! event stream ends; a fresh token of the same identity keeps it.

mod common;

use std::time::{Duration, Instant};

use common::{http_error, peer::TestPeer};
use rethink_proto::v1::{SfuEventsRequest, SfuGetParticipantStatsRequest, SfuJoinRequest};
use rethink_rtc_peer::{Peer, PeerConfig};
use rethink_testbed::{SfuReplica, TestBed, WAIT, publish_pattern, sfu::SfuControl};

const ROOM: &str = "stage";
const HOUR: Duration = Duration::from_secs(3600);

async fn whep_post(sfu: &SfuReplica, room: &str, token: &str, offer: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("http://{}/whep/{room}", sfu.http))
        .header("content-type", "application/sdp")
        .bearer_auth(token)
        .body(offer.to_owned())
        .send()
        .await
        .unwrap()
}

/// Starts a WHEP session; returns its URL.
async fn whep_session(sfu: &SfuReplica, token: &str, viewer: &Peer) -> String {
    let offer = viewer.create_offer_gathered(WAIT).await.unwrap();
    let response = whep_post(sfu, ROOM, token, &offer).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let answer = response.text().await.unwrap();
    viewer.apply_answer(&answer).await.unwrap();
    format!("http://{}{location}", sfu.http)
}

fn join_request(participant: &str, offer: &str) -> SfuJoinRequest {
    SfuJoinRequest {
        room: ROOM.into(),
        participant: participant.into(),
        offer_sdp: offer.into(),
    }
}

fn session_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

/// What a login token carries: join rooms, view cameras, no media right.
fn login_grants() -> serde_json::Value {
    serde_json::json!({"rooms": {"join": true}, "cameras": {"view": true}})
}

async fn members(control: &SfuControl, room: &str) -> Vec<String> {
    let stats = control.room_stats(room).await.unwrap();
    stats
        .participant_stats
        .into_iter()
        .map(|p| p.participant)
        .collect()
}

#[tokio::test]
async fn whep_needs_a_subscribe_grant_naming_the_room() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room(ROOM).await.unwrap();
    let alice = publish_pattern(&control, ROOM, "alice").await.unwrap();
    let viewer = Peer::new(PeerConfig::viewer("carol")).await.unwrap();
    let offer = viewer.create_offer_gathered(WAIT).await.unwrap();

    // A plain login token: rooms.join and cameras.view, no media right.
    let login = bed
        .token_for("user:carol", login_grants(), HOUR)
        .unwrap()
        .token;
    let response = whep_post(&sfu, ROOM, &login, &offer).await;
    assert_eq!(response.status(), 403);
    let text = response.text().await.unwrap();
    assert!(text.contains("rooms.subscribe"), "{text}");
    // rooms.subscribe for another room.
    let elsewhere = bed
        .token_for(
            "user:carol",
            serde_json::json!({"rooms": {"subscribe": true, "names": ["backstage"]}}),
            HOUR,
        )
        .unwrap()
        .token;
    assert_eq!(
        whep_post(&sfu, ROOM, &elsewhere, &offer).await.status(),
        403
    );
    assert_eq!(members(&control, ROOM).await, vec!["alice"]);

    // rooms.subscribe naming the room: in.
    let granted = bed
        .token_for(
            "user:carol",
            serde_json::json!({"rooms": {"subscribe": true, "names": [ROOM]}}),
            HOUR,
        )
        .unwrap()
        .token;
    let response = whep_post(&sfu, ROOM, &granted, &offer).await;
    assert_eq!(response.status(), 201);
    assert_eq!(members(&control, ROOM).await.len(), 2);
    // A prefix pattern covering the room: in; one that does not: out.
    let second = Peer::new(PeerConfig::viewer("carol-2")).await.unwrap();
    let offer = second.create_offer_gathered(WAIT).await.unwrap();
    let pattern = |names: &str| {
        bed.token_for(
            "user:carol",
            serde_json::json!({"rooms": {"subscribe": true, "names": [names]}}),
            HOUR,
        )
        .unwrap()
        .token
    };
    assert_eq!(
        whep_post(&sfu, ROOM, &pattern("back*"), &offer)
            .await
            .status(),
        403
    );
    assert_eq!(
        whep_post(&sfu, ROOM, &pattern("sta*"), &offer)
            .await
            .status(),
        201
    );
    assert_eq!(members(&control, ROOM).await.len(), 3);
    second.close().await.unwrap();
    viewer.close().await.unwrap();
    alice.close().await.unwrap();
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn whip_needs_a_publish_grant_naming_the_room() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let publisher = Peer::new(PeerConfig::publisher("carol")).await.unwrap();
    let offer = publisher.create_offer_gathered(WAIT).await.unwrap();
    let post = |token: String| {
        let offer = offer.clone();
        let url = format!("http://{}/whip/{ROOM}", sfu.http);
        async move {
            reqwest::Client::new()
                .post(url)
                .header("content-type", "application/sdp")
                .bearer_auth(token)
                .body(offer)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let login = bed
        .token_for("user:carol", login_grants(), HOUR)
        .unwrap()
        .token;
    assert_eq!(post(login).await, 403);
    let subscriber = bed
        .token_for(
            "user:carol",
            serde_json::json!({"rooms": {"subscribe": true, "names": [ROOM]}}),
            HOUR,
        )
        .unwrap()
        .token;
    assert_eq!(post(subscriber).await, 403);
    let control = bed.sfu_control(&sfu).await.unwrap();
    let missing = control
        .raw()
        .get_room_stats(rethink_proto::v1::SfuGetRoomStatsRequest { room: ROOM.into() })
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        tonic::Code::NotFound,
        "a refused WHIP creates no room"
    );
    let granted = bed
        .token_for(
            "user:carol",
            serde_json::json!({"rooms": {"publish": true, "names": [ROOM]}}),
            HOUR,
        )
        .unwrap()
        .token;
    assert_eq!(post(granted).await, 201);
    publisher.close().await.unwrap();
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn only_the_opener_or_a_room_admin_may_end_a_whep_session() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room(ROOM).await.unwrap();
    let viewing = serde_json::json!({"rooms": {"subscribe": true, "names": [ROOM]}});
    let alice = bed
        .token_for("user:alice", viewing.clone(), HOUR)
        .unwrap()
        .token;
    // Bob holds the same grants as alice, for the same room.
    let bob = bed
        .token_for("user:bob", viewing.clone(), HOUR)
        .unwrap()
        .token;
    let http = reqwest::Client::new();

    let alice_viewer = Peer::new(PeerConfig::viewer("alice")).await.unwrap();
    let url = whep_session(&sfu, &alice, &alice_viewer).await;
    alice_viewer.wait_connected(WAIT).await.unwrap();
    let name = session_name(&url);

    let response = http.delete(&url).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let text = response.text().await.unwrap();
    assert!(text.contains("another identity"), "{text}");
    let response = http
        .patch(&url)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .bearer_auth(&bob)
        .body("a=end-of-candidates\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        members(&control, ROOM).await,
        vec![name.clone()],
        "alice's session lives"
    );

    // The opener may; a new token of hers too (same subject).
    let alice_again = bed
        .token_for("user:alice", viewing.clone(), HOUR)
        .unwrap()
        .token;
    let response = http
        .patch(&url)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .bearer_auth(&alice_again)
        .body("a=end-of-candidates\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = http.delete(&url).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(members(&control, ROOM).await.is_empty());

    // A room admin may end anybody's session; an admin of another room may not.
    let bob_viewer = Peer::new(PeerConfig::viewer("bob")).await.unwrap();
    let bob_url = whep_session(&sfu, &bob, &bob_viewer).await;
    let other_admin = bed
        .token_for(
            "service:other",
            serde_json::json!({"rooms": {"admin": true, "names": ["backstage"]}}),
            HOUR,
        )
        .unwrap()
        .token;
    let response = http
        .delete(&bob_url)
        .bearer_auth(&other_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let room_admin = bed
        .token_for(
            "service:conference",
            serde_json::json!({"rooms": {"admin": true, "names": [ROOM]}}),
            HOUR,
        )
        .unwrap()
        .token;
    let response = http
        .delete(&bob_url)
        .bearer_auth(&room_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(members(&control, ROOM).await.is_empty());
    alice_viewer.close().await.unwrap();
    bob_viewer.close().await.unwrap();
    sfu.stop().await.unwrap();
}

/// Upper bound of media waits; debug builds encode and decode in software.
const MEDIA_WAIT: Duration = Duration::from_secs(30);

/// RTP packets the peer received on every remote track.
fn packets(peer: &Peer) -> u64 {
    peer.remote_tracks().iter().map(|(_, c)| c.packets).sum()
}

/// Polls the room's members until `name` is gone; false after [`WAIT`].
async fn leaves(control: &SfuControl, room: &str, name: &str) -> bool {
    tokio::time::timeout(WAIT, async {
        while members(control, room).await.iter().any(|m| m == name) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok()
}

fn viewing() -> serde_json::Value {
    serde_json::json!({"rooms": {"subscribe": true, "names": [ROOM]}})
}

fn managing() -> serde_json::Value {
    serde_json::json!({"rooms": {"admin": true, "names": [ROOM]}})
}

#[tokio::test]
async fn a_revoked_token_stops_its_whep_viewer_within_a_second() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room(ROOM).await.unwrap();
    let alice = publish_pattern(&control, ROOM, "alice").await.unwrap();
    let issued = bed.token_for("user:carol", viewing(), HOUR).unwrap();
    let carol = issued.token.clone();
    let viewer = Peer::new(PeerConfig::viewer("carol")).await.unwrap();
    let url = whep_session(&sfu, &carol, &viewer).await;
    viewer.wait_decoded(1, 10, MEDIA_WAIT).await.unwrap();
    let name = session_name(&url);

    // Revoked at the auth service: the SFU hears of it over the bus.
    bed.auth.revoke(&issued.claims).await.unwrap();
    let revoked = Instant::now();
    assert!(
        leaves(&control, ROOM, &name).await,
        "the session leaves the room"
    );
    let removed_after = revoked.elapsed();
    // Media stops: nothing arrives after the first second.
    tokio::time::sleep_until((revoked + Duration::from_secs(1)).into()).await;
    let at_one_second = packets(&viewer);
    let frames_sent = alice.frames_sent();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(alice.frames_sent() > frames_sent, "alice still publishes");
    assert_eq!(
        packets(&viewer),
        at_one_second,
        "packets reached the viewer more than a second after the revocation"
    );
    eprintln!("whep session removed {removed_after:?} after the revocation");

    // The revoked token opens nothing any more.
    let offer = viewer.create_offer_gathered(WAIT).await.unwrap();
    let (status, code, _) = http_error(whep_post(&sfu, ROOM, &carol, &offer).await).await;
    assert_eq!((status, code.as_str()), (401, "token_revoked"));
    assert_eq!(members(&control, ROOM).await, vec!["alice"]);
    viewer.close().await.unwrap();
    alice.close().await.unwrap();
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn a_revoked_token_ends_the_participant_and_its_events_stream() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room(ROOM).await.unwrap();
    let conference = bed
        .token_for("service:conference-a", managing(), HOUR)
        .unwrap();
    let mut as_conference = bed
        .sfu_control_as(&sfu, &conference.token)
        .await
        .unwrap()
        .raw();
    let peer = TestPeer::new().await;
    as_conference
        .join(join_request("bob", &peer.offer))
        .await
        .expect("join");
    let mut events = as_conference
        .events(SfuEventsRequest {
            room: ROOM.into(),
            participant: "bob".into(),
        })
        .await
        .expect("events")
        .into_inner();

    bed.auth.revoke(&conference.claims).await.unwrap();
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match events.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the events stream ends");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated);
    assert!(ended.message().contains("revoked"), "{}", ended.message());
    assert!(members(&control, ROOM).await.is_empty(), "bob was removed");
    let refused = as_conference
        .get_participant_stats(SfuGetParticipantStatsRequest {
            room: ROOM.into(),
            participant: "bob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_renewed_with_a_fresh_token_outlive_the_first_one() {
    const SHORT: Duration = Duration::from_secs(3);
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room(ROOM).await.unwrap();
    let alice = publish_pattern(&control, ROOM, "alice").await.unwrap();

    // Two viewers on short tokens; carol renews hers, dave does not.
    let carol_issued = bed.token_for("user:carol", viewing(), SHORT).unwrap();
    let carol_short = carol_issued.token.clone();
    let dave_short = bed.token_for("user:dave", viewing(), SHORT).unwrap().token;
    let carol = Peer::new(PeerConfig::viewer("carol")).await.unwrap();
    let dave = Peer::new(PeerConfig::viewer("dave")).await.unwrap();
    let carol_url = whep_session(&sfu, &carol_short, &carol).await;
    let dave_url = whep_session(&sfu, &dave_short, &dave).await;
    // A conference participant on a short service token, renewed by a later call.
    let conference_short = bed
        .token_for("service:conference-a", managing(), SHORT)
        .unwrap();
    let mut as_conference = bed
        .sfu_control_as(&sfu, &conference_short.token)
        .await
        .unwrap()
        .raw();
    let peer = TestPeer::new().await;
    as_conference
        .join(join_request("bob", &peer.offer))
        .await
        .expect("join");
    let mut events = as_conference
        .events(SfuEventsRequest {
            room: ROOM.into(),
            participant: "bob".into(),
        })
        .await
        .expect("events")
        .into_inner();

    // An empty PATCH with only the new token renews the WHEP session.
    let carol_fresh = bed.token_for("user:carol", viewing(), HOUR).unwrap().token;
    let response = reqwest::Client::new()
        .patch(&carol_url)
        .bearer_auth(&carol_fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    // Any call about the participant with a newer token of its subject renews it.
    let conference_fresh = bed
        .token_for("service:conference-a", managing(), HOUR)
        .unwrap()
        .token;
    bed.sfu_control_as(&sfu, &conference_fresh)
        .await
        .unwrap()
        .raw()
        .get_participant_stats(SfuGetParticipantStatsRequest {
            room: ROOM.into(),
            participant: "bob".into(),
        })
        .await
        .expect("stats with the fresh token");

    // Dave's token expires: his session goes.
    let dave_name = session_name(&dave_url);
    assert!(
        leaves(&control, ROOM, &dave_name).await,
        "dave's session expires"
    );
    let carol_exp = carol_issued.claims.exp;
    while rethink_common::token::unix_now() <= carol_exp {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let conference_exp = conference_short.claims.exp;
    while rethink_common::token::unix_now() <= conference_exp {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past both first tokens' expiry (and a sweep of the lapse timers), the renewed live on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let carol_name = session_name(&carol_url);
    let present = members(&control, ROOM).await;
    assert!(present.contains(&carol_name), "{present:?}");
    assert!(present.contains(&"bob".to_string()), "{present:?}");
    assert!(!present.contains(&dave_name), "{present:?}");
    let before = packets(&carol);
    carol
        .wait_decoded(1, 10, MEDIA_WAIT)
        .await
        .expect("carol still decodes");
    tokio::time::timeout(WAIT, async {
        while packets(&carol) <= before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("carol still receives media");
    // Bob's stream is still open: nothing ended it.
    match tokio::time::timeout(Duration::from_millis(200), events.message()).await {
        Err(_) | Ok(Ok(Some(_))) => {}
        Ok(other) => panic!("bob's events stream ended: {other:?}"),
    }
    carol.close().await.unwrap();
    dave.close().await.unwrap();
    alice.close().await.unwrap();
    sfu.stop().await.unwrap();
}
