//! Who may reach media, over real HTTP, gRPC and UDP with real tokens: WHEP needs
//! `rooms.subscribe` naming the room (a login token is refused), and a WHIP/WHEP session
//! belongs to the identity that opened it (another identity's PATCH or DELETE is refused,
//! a room admin's is not).

mod common;

use std::time::Duration;

use common::{TestSfu, WAIT, login_grants};
use rethink_rtc_peer::{Peer, PeerConfig};

const ROOM: &str = "stage";
const HOUR: Duration = Duration::from_secs(3600);

async fn whep_post(sfu: &TestSfu, room: &str, token: &str, offer: &str) -> reqwest::Response {
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
async fn whep_session(sfu: &TestSfu, token: &str, viewer: &Peer) -> String {
    let offer = viewer.create_offer_gathered(WAIT).await.unwrap();
    let response = whep_post(sfu, ROOM, token, &offer).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let answer = response.text().await.unwrap();
    viewer.apply_answer(&answer).await.unwrap();
    format!("http://{}{location}", sfu.http)
}

fn session_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

async fn members(sfu: &TestSfu, room: &str) -> Vec<String> {
    let mut client = sfu.client().await;
    let stats = sfu.room_stats(&mut client, room).await;
    stats
        .participant_stats
        .into_iter()
        .map(|p| p.participant)
        .collect()
}

#[tokio::test]
async fn whep_needs_a_subscribe_grant_naming_the_room() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;
    sfu.create_room(&mut client, ROOM).await;
    let alice = common::publish_pattern(&sfu, &mut client, ROOM, "alice").await;
    let viewer = Peer::new(PeerConfig::viewer("carol")).await.unwrap();
    let offer = viewer.create_offer_gathered(WAIT).await.unwrap();

    // A plain login token: rooms.join and cameras.view, no media right.
    let login = sfu.keys.mint_as("user:carol", login_grants(), HOUR);
    let response = whep_post(&sfu, ROOM, &login, &offer).await;
    assert_eq!(response.status(), 403);
    let text = response.text().await.unwrap();
    assert!(text.contains("rooms.subscribe"), "{text}");
    // rooms.subscribe for another room.
    let elsewhere = sfu.keys.mint_as(
        "user:carol",
        serde_json::json!({"rooms": {"subscribe": true, "names": ["backstage"]}}),
        HOUR,
    );
    assert_eq!(
        whep_post(&sfu, ROOM, &elsewhere, &offer).await.status(),
        403
    );
    assert_eq!(members(&sfu, ROOM).await, vec!["alice"]);

    // rooms.subscribe naming the room: in.
    let granted = sfu.keys.mint_as(
        "user:carol",
        serde_json::json!({"rooms": {"subscribe": true, "names": [ROOM]}}),
        HOUR,
    );
    let response = whep_post(&sfu, ROOM, &granted, &offer).await;
    assert_eq!(response.status(), 201);
    assert_eq!(members(&sfu, ROOM).await.len(), 2);
    viewer.close().await.unwrap();
    alice.close().await.unwrap();
    sfu.stop().await;
}

#[tokio::test]
async fn whip_needs_a_publish_grant_naming_the_room() {
    let sfu = TestSfu::start().await;
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
    let login = sfu.keys.mint_as("user:carol", login_grants(), HOUR);
    assert_eq!(post(login).await, 403);
    let subscriber = sfu.keys.mint_as(
        "user:carol",
        serde_json::json!({"rooms": {"subscribe": true, "names": [ROOM]}}),
        HOUR,
    );
    assert_eq!(post(subscriber).await, 403);
    let mut client = sfu.client().await;
    let missing = client
        .get_room_stats(sfu.authed(rethink_proto::v1::SfuGetRoomStatsRequest { room: ROOM.into() }))
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        tonic::Code::NotFound,
        "a refused WHIP creates no room"
    );
    let granted = sfu.keys.mint_as(
        "user:carol",
        serde_json::json!({"rooms": {"publish": true, "names": [ROOM]}}),
        HOUR,
    );
    assert_eq!(post(granted).await, 201);
    publisher.close().await.unwrap();
    sfu.stop().await;
}

#[tokio::test]
async fn only_the_opener_or_a_room_admin_may_end_a_whep_session() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;
    sfu.create_room(&mut client, ROOM).await;
    let viewing = serde_json::json!({"rooms": {"subscribe": true, "names": [ROOM]}});
    let alice = sfu.keys.mint_as("user:alice", viewing.clone(), HOUR);
    // Bob holds the same grants as alice, for the same room.
    let bob = sfu.keys.mint_as("user:bob", viewing.clone(), HOUR);
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
        members(&sfu, ROOM).await,
        vec![name.clone()],
        "alice's session lives"
    );

    // The opener may; a new token of hers too (same subject).
    let alice_again = sfu.keys.mint_as("user:alice", viewing.clone(), HOUR);
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
    assert!(members(&sfu, ROOM).await.is_empty());

    // A room admin may end anybody's session; an admin of another room may not.
    let bob_viewer = Peer::new(PeerConfig::viewer("bob")).await.unwrap();
    let bob_url = whep_session(&sfu, &bob, &bob_viewer).await;
    let other_admin = sfu.keys.mint_as(
        "service:other",
        serde_json::json!({"rooms": {"admin": true, "names": ["backstage"]}}),
        HOUR,
    );
    let response = http
        .delete(&bob_url)
        .bearer_auth(&other_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let room_admin = sfu.keys.mint_as(
        "service:conference",
        serde_json::json!({"rooms": {"admin": true, "names": [ROOM]}}),
        HOUR,
    );
    let response = http
        .delete(&bob_url)
        .bearer_auth(&room_admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(members(&sfu, ROOM).await.is_empty());
    alice_viewer.close().await.unwrap();
    bob_viewer.close().await.unwrap();
    sfu.stop().await;
}
