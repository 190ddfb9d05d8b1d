//! WHIP ingest over real HTTP and UDP: a str0m publisher POSTs its offer, connects, and DELETEs
//! its session; bad tokens, content types and SDP get the WHIP statuses.

mod common;

use std::time::Duration;

use common::peer::TestPeer;
use rethink_proto::v1::{SfuCreateRoomRequest, SfuGetRoomStatsRequest};
use rethink_testbed::{TestBed, WAIT, sfu::SfuControl};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn whip_publisher_connects_and_deletes_its_session() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/whip/stage", sfu.http);
    let publisher = bed
        .token_for(
            "service:conference",
            serde_json::json!({"rooms": {"publish": true, "names": ["stage"]}}),
            HOUR,
        )
        .unwrap()
        .token;
    let viewer = bed
        .token_for(
            "service:conference",
            serde_json::json!({"rooms": {"subscribe": true}}),
            HOUR,
        )
        .unwrap()
        .token;
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
    let (status, code, message) = common::http_error(response).await;
    assert_eq!((status, code.as_str()), (400, "bad_sdp"), "{message}");
    assert!(message.contains("sdp"), "{message}");

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

    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    let stats = client
        .get_room_stats(SfuGetRoomStatsRequest {
            room: "stage".into(),
        })
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
    let stats = control.room_stats("stage").await.unwrap();
    assert_eq!(stats.participants, 0);
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn whip_delete_cannot_remove_conference_participants() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room("r").await.unwrap();
    let peer = TestPeer::new().await;
    control.join("r", "alice", &peer.offer).await.unwrap();
    let response = reqwest::Client::new()
        .delete(format!("http://{}/whip/r/alice", sfu.http))
        .bearer_auth(bed.sfu_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let stats = control.room_stats("r").await.unwrap();
    assert_eq!(stats.participants, 1);
    sfu.stop().await.unwrap();
}

/// Polls `GetRoomStats` until `room` is gone (NOT_FOUND); false after [`WAIT`].
async fn room_closes(control: &SfuControl, room: &str) -> bool {
    let mut client = control.raw();
    tokio::time::timeout(WAIT, async {
        loop {
            let result = client
                .get_room_stats(SfuGetRoomStatsRequest { room: room.into() })
                .await;
            match result {
                Err(status) if status.code() == tonic::Code::NotFound => return,
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn garbage_whip_leaves_no_room_and_empty_rooms_close() {
    const MAX_ROOMS: usize = 5;
    let bed = TestBed::start().await.unwrap();
    let config = rethink_sfu::SfuConfig {
        max_rooms: MAX_ROOMS,
        empty_room_timeout_ms: 300,
        ..bed.sfu_config("sfu-test")
    };
    let sfu = bed.sfu(config).await.unwrap();
    let http = reqwest::Client::new();
    let publisher = bed
        .token_for(
            "service:conference",
            serde_json::json!({"rooms": {"publish": true}}),
            HOUR,
        )
        .unwrap()
        .token;
    let post = |room: String, body: String| {
        http.post(format!("http://{}/whip/{room}", sfu.http))
            .header("content-type", "application/sdp")
            .bearer_auth(&publisher)
            .body(body)
            .send()
    };

    // Four times the room limit of garbage, each into its own room.
    for i in 0..4 * MAX_ROOMS {
        let response = post(format!("junk-{i}"), format!("v=0\r\ngarbage {i}\r\n"))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{:?}", response.text().await);
    }
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    for i in 0..4 * MAX_ROOMS {
        let status = client
            .get_room_stats(SfuGetRoomStatsRequest {
                room: format!("junk-{i}"),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "junk-{i} left behind");
    }
    // Every room is still available.
    for i in 0..MAX_ROOMS {
        control.create_room(&format!("real-{i}")).await.unwrap();
    }
    let full = client
        .create_room(SfuCreateRoomRequest {
            room: "one-too-many".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(full.code(), tonic::Code::ResourceExhausted);
    // Rooms nobody joined close after the timeout and give their places back.
    for i in 0..MAX_ROOMS {
        assert!(
            room_closes(&control, &format!("real-{i}")).await,
            "real-{i}"
        );
    }

    // A room WHIP created closes once its publisher is gone and the timeout passed.
    let mut peer = TestPeer::new().await;
    let response = post("stage".into(), peer.offer.clone()).await.unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    peer.accept_answer(&response.text().await.unwrap());
    assert!(peer.run_until(WAIT, |p| p.connected).await);
    // Twice the timeout, with the publisher's session kept alive meanwhile.
    peer.run_until(std::time::Duration::from_millis(600), |_| false)
        .await;
    let stats = control.room_stats("stage").await.unwrap();
    assert_eq!(stats.participants, 1, "an occupied room stays open");
    let response = http
        .delete(format!("http://{}{location}", sfu.http))
        .bearer_auth(&publisher)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        room_closes(&control, "stage").await,
        "the empty room closes"
    );
    sfu.stop().await.unwrap();
}
