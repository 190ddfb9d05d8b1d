//! WHIP ingest over real HTTP and UDP: a str0m publisher POSTs its offer, connects, and DELETEs
//! its session; bad tokens, content types and SDP get the WHIP statuses.

mod common;

use common::{TestSfu, WAIT, peer::TestPeer};
use rethink_proto::v1::SfuGetRoomStatsRequest;

#[tokio::test]
async fn whip_publisher_connects_and_deletes_its_session() {
    let sfu = TestSfu::start().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/whip/stage", sfu.http);
    let publisher = sfu
        .keys
        .mint(serde_json::json!({"rooms": {"publish": true, "names": ["stage"]}}));
    let viewer = sfu
        .keys
        .mint(serde_json::json!({"rooms": {"subscribe": true}}));
    let mut peer = TestPeer::new().await;

    let post = |token: Option<&str>, content_type: &str, body: String| {
        let mut request = http
            .post(&url)
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let response = post(None, "application/sdp", peer.offer.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = post(Some(&viewer), "application/sdp", peer.offer.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = post(Some(&publisher), "text/plain", peer.offer.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let response = post(Some(&publisher), "application/sdp", "v=0 nonsense".into())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("sdp"));

    let response = post(Some(&publisher), "application/sdp", peer.offer.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/sdp"
    );
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/whip/stage/whip-"), "{location}");
    let answer = response.text().await.unwrap();
    peer.accept_answer(&answer);
    assert!(
        peer.run_until(WAIT, |p| p.ice_connected && p.connected)
            .await,
        "whip publisher connects over udp"
    );

    let mut client = sfu.client().await;
    let stats = client
        .get_room_stats(sfu.authed(SfuGetRoomStatsRequest {
            room: "stage".into(),
        }))
        .await
        .expect("the room was created by the POST")
        .into_inner();
    assert_eq!(stats.participants, 1);
    let name = location.rsplit('/').next().unwrap();
    assert_eq!(stats.participant_stats[0].participant, name);
    assert!(stats.participant_stats[0].connected);

    let location_url = format!("http://{}{location}", sfu.http);
    let response = http.delete(&location_url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = http
        .delete(&location_url)
        .bearer_auth(&publisher)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = http
        .delete(&location_url)
        .bearer_auth(&publisher)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let stats = sfu.room_stats(&mut client, "stage").await;
    assert_eq!(stats.participants, 0);
    sfu.stop().await;
}

#[tokio::test]
async fn whip_delete_cannot_remove_conference_participants() {
    let sfu = TestSfu::start().await;
    let mut client = sfu.client().await;
    sfu.create_room(&mut client, "r").await;
    let peer = TestPeer::new().await;
    sfu.join(&mut client, "r", "alice", &peer.offer).await;
    let response = reqwest::Client::new()
        .delete(format!("http://{}/whip/r/alice", sfu.http))
        .bearer_auth(&sfu.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let stats = sfu.room_stats(&mut client, "r").await;
    assert_eq!(stats.participants, 1);
    sfu.stop().await;
}
