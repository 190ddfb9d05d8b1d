//! WHEP playback and ICE restarts over real HTTP, gRPC and UDP on loopback, with real tokens:
//! an H264 publisher (webrtc-rs, `rethink-rtc-peer`) joins over gRPC, a WHEP viewer (webrtc-rs,
//! receive-only) POSTs its offer and decodes the video; viewers and conference participants
//! restart ICE from new sockets mid-call (PATCH with an SDP fragment, gRPC `Offer`) and keep
//! decoding; DELETE ends a viewer; bad requests get the WHEP statuses; WHIP sessions take the
//! same PATCH.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::error_body;
use rethink_proto::v1::{SfuOfferRequest, SfuRoomStats};
use rethink_rtc_peer::{Peer, PeerConfig, RTCPeerConnectionState};
use rethink_sfu_core::{apply_ice_fragment, ice_credentials};
use rethink_testbed::sfu::{Relay, SfuControl};
use rethink_testbed::{SfuReplica, TestBed, WAIT, publish_pattern};
use tokio::sync::mpsc;

const ROOM: &str = "stage";
/// Frames the viewer must decode (before and after an ICE restart).
const FRAMES: u64 = 30;
/// Upper bound of media waits; debug builds encode and decode in software.
const MEDIA_WAIT: Duration = Duration::from_secs(30);

const HOUR: Duration = Duration::from_secs(3600);

/// A publisher of the H264 test pattern, joined over gRPC.
async fn publish(control: &SfuControl, name: &str) -> Peer {
    publish_pattern(control, ROOM, name).await.unwrap()
}

fn viewer_token(bed: &TestBed) -> String {
    bed.token_for(
        "service:conference",
        serde_json::json!({"rooms": {"subscribe": true, "names": [ROOM]}}),
        HOUR,
    )
    .unwrap()
    .token
}

/// A WHEP session as the client sees it.
struct Whep {
    location: String,
    etag: String,
    answer: String,
}

async fn whep_post(
    http: &reqwest::Client,
    sfu: &SfuReplica,
    token: &str,
    offer: &str,
) -> reqwest::Response {
    http.post(format!("http://{}/whep/{ROOM}", sfu.http))
        .header("content-type", "application/sdp")
        .bearer_auth(token)
        .body(offer.to_owned())
        .send()
        .await
        .unwrap()
}

async fn whep_start(http: &reqwest::Client, sfu: &SfuReplica, token: &str, offer: &str) -> Whep {
    let response = whep_post(http, sfu, token, offer).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let header = |name: &str| {
        response.headers()[name]
            .to_str()
            .expect("ascii header")
            .to_string()
    };
    assert_eq!(header("content-type"), "application/sdp");
    assert_eq!(header("accept-patch"), "application/trickle-ice-sdpfrag");
    let location = header("location");
    let etag = header("etag");
    let answer = response.text().await.unwrap();
    Whep {
        location,
        etag,
        answer,
    }
}

/// The port of a `candidate:` line.
fn candidate_port(candidate: &str) -> u16 {
    candidate
        .trim_start_matches("a=")
        .split_whitespace()
        .nth(5)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {candidate:?}"))
}

/// Waits for a local candidate on a port other than `old`.
async fn candidate_on_new_port(
    candidates: &mut mpsc::UnboundedReceiver<String>,
    old: u16,
) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let c = candidates.recv().await.expect("candidate stream open");
            if !c.is_empty() && candidate_port(&c) != old {
                return c;
            }
        }
    })
    .await
    .expect("a candidate on a new socket")
}

fn decoded(peer: &Peer) -> u64 {
    peer.remote_tracks()
        .iter()
        .filter(|(_, c)| c.video)
        .map(|(_, c)| c.frames_decoded)
        .max()
        .unwrap_or(0)
}

fn participant<'a>(
    stats: &'a SfuRoomStats,
    name: &str,
) -> &'a rethink_proto::v1::SfuParticipantStats {
    stats
        .participant_stats
        .iter()
        .find(|p| p.participant == name)
        .unwrap_or_else(|| panic!("{name} in {stats:?}"))
}

#[tokio::test]
async fn whep_viewer_decodes_the_room_and_delete_ends_it() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room(ROOM).await.unwrap();
    let alice = publish(&control, "alice").await;
    let http = reqwest::Client::new();
    let token = viewer_token(&bed);

    let viewer = Peer::new(PeerConfig::viewer("viewer")).await.unwrap();
    let offer = viewer.create_offer_gathered(WAIT).await.unwrap();
    let session = whep_start(&http, &sfu, &token, &offer).await;
    assert!(
        session.location.starts_with("/whep/stage/whep-"),
        "{}",
        session.location
    );
    let (ufrag, _) = ice_credentials(&session.answer).expect("ice credentials");
    assert_eq!(session.etag, format!("\"{ufrag}\""));
    viewer.apply_answer(&session.answer).await.unwrap();
    viewer.wait_connected(WAIT).await.unwrap();
    let tracks = viewer.wait_decoded(1, FRAMES, MEDIA_WAIT).await.unwrap();
    let (_, counters) = tracks.iter().find(|(_, c)| c.video).unwrap();
    let pattern = rethink_rtc_peer::VideoConfig::default();
    assert_eq!(
        counters.last_size,
        Some((pattern.width, pattern.height)),
        "alice's test pattern"
    );

    let name = session.location.rsplit('/').next().unwrap().to_string();
    let stats = control.room_stats(ROOM).await.unwrap();
    let alice_track = participant(&stats, "alice").published_tracks.clone();
    let seen = participant(&stats, &name);
    assert!(seen.connected);
    assert_eq!(seen.subscribed_tracks, alice_track);
    assert!(seen.unsent_tracks.is_empty());
    assert!(seen.published_tracks.is_empty());
    assert!(alice.frames_sent() > 0);

    // A second video track finds no free m-line: not sent, listed in the viewer's stats.
    let bob = publish(&control, "bob").await;
    let stats = control.room_stats(ROOM).await.unwrap();
    let bob_track = participant(&stats, "bob").published_tracks.clone();
    assert_eq!(bob_track.len(), 1);
    let seen = participant(&stats, &name);
    assert_eq!(seen.subscribed_tracks, alice_track);
    assert_eq!(seen.unsent_tracks, bob_track);

    // DELETE needs the token; then the session is gone, and only once.
    let url = format!("http://{}{}", sfu.http, session.location);
    assert_eq!(http.delete(&url).send().await.unwrap().status(), 401);
    let response = http.delete(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let stats = control.room_stats(ROOM).await.unwrap();
    assert_eq!(stats.participants, 2, "alice and bob stay");
    assert!(
        stats
            .participant_stats
            .iter()
            .all(|p| p.participant != name)
    );
    let response = http.delete(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 404);
    // The server said goodbye (DTLS close_notify): the viewer's connection ends.
    let state = viewer
        .wait_state(WAIT, |s| *s != RTCPeerConnectionState::Connected)
        .await
        .unwrap();
    assert_ne!(state, RTCPeerConnectionState::Connected);
    viewer.close().await.unwrap();
    alice.close().await.unwrap();
    bob.close().await.unwrap();
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn whep_requests_get_clear_statuses() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room(ROOM).await.unwrap();
    let http = reqwest::Client::new();
    let token = viewer_token(&bed);
    let viewer = Peer::new(PeerConfig::viewer("viewer")).await.unwrap();
    let offer = viewer.create_offer_gathered(WAIT).await.unwrap();
    let post = |path: &str, token: Option<&str>, content_type: &str, body: String| {
        let mut request = http
            .post(format!("http://{}{path}", sfu.http))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    // Error bodies are `{"error":{"code","message"}}`; read as "<code>: <message>".
    let status_and_text = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if status < 400 {
            return (status, text);
        }
        let (code, message) = error_body(&text);
        (status, format!("{code}: {message}"))
    };

    let (status, text) = status_and_text(
        post(
            "/whep/nowhere",
            Some(&token),
            "application/sdp",
            offer.clone(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "the token covers {ROOM} only: {text}");
    assert!(text.starts_with("forbidden: "), "{text}");
    let admin = bed.sfu_token();
    let (status, text) = status_and_text(
        post(
            "/whep/nowhere",
            Some(&admin),
            "application/sdp",
            offer.clone(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "{text}");
    assert!(
        text.starts_with("not_found: ") && text.contains("\"nowhere\" not found"),
        "{text}"
    );
    let (status, text) = status_and_text(
        post("/whep/stage", None, "application/sdp", offer.clone())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(text.starts_with("missing_token: "), "{text}");
    let (status, text) = status_and_text(
        post(
            "/whep/stage",
            Some("not-a-token"),
            "application/sdp",
            offer.clone(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(text.starts_with("malformed_token: "), "{text}");
    let publisher_only = bed
        .token_for(
            "service:conference",
            serde_json::json!({"rooms": {"publish": true, "names": [ROOM]}}),
            HOUR,
        )
        .unwrap()
        .token;
    let (status, text) = status_and_text(
        post(
            "/whep/stage",
            Some(&publisher_only),
            "application/sdp",
            offer.clone(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("rooms.subscribe"), "{text}");
    let (status, text) = status_and_text(
        post("/whep/stage", Some(&token), "text/plain", offer.clone())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 415);
    assert!(text.starts_with("unsupported_media_type: "), "{text}");
    let (status, text) = status_and_text(
        post(
            "/whep/stage",
            Some(&token),
            "application/sdp",
            "v=0 nonsense".into(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.starts_with("bad_sdp: "), "{text}");
    let (status, text) = status_and_text(
        post(
            "/whep/stage",
            Some(&token),
            "application/sdp",
            "v=0\r\n".repeat(20_000),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert!(text.starts_with("payload_too_large: "), "{text}");
    // A viewer that offers to send is refused: WHEP only receives.
    let sender = Peer::new(PeerConfig::publisher("sender")).await.unwrap();
    let send_offer = sender.create_offer_gathered(WAIT).await.unwrap();
    let (status, text) = status_and_text(
        post("/whep/stage", Some(&token), "application/sdp", send_offer)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("recvonly"), "{text}");

    // PATCH and DELETE only reach WHEP sessions that exist.
    let session = whep_start(&http, &sfu, &token, &offer).await;
    let url = format!("http://{}{}", sfu.http, session.location);
    let patch = |url: &str, content_type: &str, body: &str| {
        http.patch(url)
            .header("content-type", content_type)
            .bearer_auth(&token)
            .body(body.to_owned())
            .send()
    };
    let gone = format!("http://{}/whep/stage/whep-000000000000", sfu.http);
    const FRAGMENT: &str = "application/trickle-ice-sdpfrag";
    for (target, content_type, body, expected) in [
        (&url, "application/sdp", "a=end-of-candidates", 415),
        (&url, FRAGMENT, "v=0\r\n", 400),
        (&url, FRAGMENT, "a=candidate:garbage\r\n", 400),
        // A trickle without candidates is fine.
        (&url, FRAGMENT, "a=end-of-candidates\r\n", 204),
        (&gone, FRAGMENT, "a=end-of-candidates\r\n", 404),
    ] {
        let response = patch(target, content_type, body).await.unwrap();
        let (status, text) = status_and_text(response).await;
        assert_eq!(status, expected, "{content_type} {body:?}: {text}");
    }
    let (status, _) = status_and_text(
        http.delete(format!("http://{}/whep/stage/alice", sfu.http))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "conference participants are not WHEP sessions");
    let stats = control.room_stats(ROOM).await.unwrap();
    assert_eq!(stats.participants, 1, "only the one good POST joined");
    viewer.close().await.unwrap();
    sender.close().await.unwrap();
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn whep_viewer_restarts_ice_from_a_new_socket_and_keeps_decoding() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room(ROOM).await.unwrap();
    let alice = publish(&control, "alice").await;
    let http = reqwest::Client::new();
    let token = viewer_token(&bed);

    let viewer = Peer::new(PeerConfig {
        rebind_on_ice_restart: true,
        ..PeerConfig::viewer("viewer")
    })
    .await
    .unwrap();
    let mut candidates = viewer.take_local_candidates().unwrap();
    let offer = viewer.create_offer_gathered(WAIT).await.unwrap();
    let old_port = offer
        .lines()
        .find(|l| l.starts_with("a=candidate:"))
        .map(candidate_port)
        .expect("a candidate in the offer");
    let session = whep_start(&http, &sfu, &token, &offer).await;
    viewer.apply_answer(&session.answer).await.unwrap();
    viewer.wait_decoded(1, FRAMES, MEDIA_WAIT).await.unwrap();

    // The network changed: new socket, new credentials, sent as a fragment (RFC 9725 §4.3.2).
    let restart = viewer.restart_ice_offer().await.unwrap();
    let (ufrag, pwd) = ice_credentials(&restart).expect("ice credentials");
    let candidate = candidate_on_new_port(&mut candidates, old_port).await;
    let fragment = format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
         a={candidate}\r\na=end-of-candidates\r\n"
    );
    let url = format!("http://{}{}", sfu.http, session.location);
    let response = http
        .patch(&url)
        .header("content-type", "application/trickle-ice-sdpfrag")
        .header("if-match", "*")
        .bearer_auth(&token)
        .body(fragment)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/trickle-ice-sdpfrag"
    );
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(etag, session.etag, "a new ice session");
    let ours = response.text().await.unwrap();
    let (server_ufrag, _) = ice_credentials(&ours).expect("ice credentials");
    assert_eq!(etag, format!("\"{server_ufrag}\""));
    assert!(ours.contains("a=candidate:"), "{ours}");

    let before = decoded(&viewer);
    viewer
        .apply_answer(
            &apply_ice_fragment(&session.answer, &ours).expect("fragment with credentials"),
        )
        .await
        .unwrap();
    viewer
        .wait_decoded(1, before + FRAMES, MEDIA_WAIT)
        .await
        .unwrap();
    let stats = control.room_stats(ROOM).await.unwrap();
    assert_eq!(stats.participants, 2, "nobody was dropped");
    viewer.close().await.unwrap();
    alice.close().await.unwrap();
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn grpc_participant_restarts_ice_from_a_new_socket_and_keeps_decoding() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    control.create_room(ROOM).await.unwrap();
    let alice = publish(&control, "alice").await;

    // A conference participant that only receives: alice's video arrives in an m-line the
    // server adds by renegotiation.
    let bob = Arc::new(
        Peer::new(PeerConfig {
            rebind_on_ice_restart: true,
            ..PeerConfig::viewer("bob")
        })
        .await
        .unwrap(),
    );
    let mut candidates = bob.take_local_candidates().unwrap();
    let offer = bob.create_offer_gathered(WAIT).await.unwrap();
    let old_port = offer
        .lines()
        .find(|l| l.starts_with("a=candidate:"))
        .map(candidate_port)
        .expect("a candidate in the offer");
    let join_answer = control.join(ROOM, "bob", &offer).await.unwrap();
    bob.apply_answer(&join_answer).await.unwrap();
    // Answer the server's renegotiation offers (alice's track) as they come.
    let relay = {
        let bob = Arc::clone(&bob);
        Relay::start(&control, ROOM, "bob", move |offer| {
            let bob = Arc::clone(&bob);
            async move { bob.apply_offer(&offer).await.map_err(|e| e.to_string()) }
        })
        .await
        .unwrap()
    };
    relay
        .wait_answered(1, WAIT)
        .await
        .expect("a renegotiation offer answered");
    bob.wait_decoded(1, FRAMES, MEDIA_WAIT).await.unwrap();

    // Bob's network changed: a new socket and a re-offer with new credentials over gRPC.
    let restart = bob.restart_ice_offer().await.unwrap();
    let answer = client
        .offer(SfuOfferRequest {
            room: ROOM.into(),
            participant: "bob".into(),
            offer_sdp: restart.clone(),
        })
        .await
        .expect("the server takes the restart offer")
        .into_inner()
        .answer_sdp;
    assert_ne!(
        ice_credentials(&answer).expect("ice credentials").0,
        ice_credentials(&join_answer).expect("ice credentials").0,
        "the server answers with new credentials"
    );
    let before = decoded(&bob);
    bob.apply_answer(&answer).await.unwrap();
    let candidate = candidate_on_new_port(&mut candidates, old_port).await;
    assert_ne!(candidate_port(&candidate), old_port);
    bob.wait_decoded(1, before + FRAMES, MEDIA_WAIT)
        .await
        .unwrap();
    let stats = control.room_stats(ROOM).await.unwrap();
    assert_eq!(stats.participants, 2, "nobody was dropped");
    assert!(participant(&stats, "bob").connected);
    drop(relay);
    bob.close().await.unwrap();
    alice.close().await.unwrap();
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn whip_sessions_take_the_same_patch() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let http = reqwest::Client::new();
    let token = bed
        .token_for(
            "service:conference",
            serde_json::json!({"rooms": {"publish": true, "names": [ROOM]}}),
            HOUR,
        )
        .unwrap()
        .token;
    let mut peer = common::peer::TestPeer::new().await;
    let response = http
        .post(format!("http://{}/whip/{ROOM}", sfu.http))
        .header("content-type", "application/sdp")
        .bearer_auth(&token)
        .body(peer.offer.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    let answer = response.text().await.unwrap();
    peer.accept_answer(&answer);
    assert!(
        peer.run_until(WAIT, |p| p.connected).await,
        "publisher connects"
    );

    let url = format!("http://{}{location}", sfu.http);
    let patch = |body: String| {
        http.patch(&url)
            .header("content-type", "application/trickle-ice-sdpfrag")
            .header("if-match", "*")
            .bearer_auth(&token)
            .body(body)
            .send()
    };
    let (ufrag, pwd) = ice_credentials(&peer.offer).expect("ice credentials");
    let trickle = format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
         a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\na=end-of-candidates\r\n"
    );
    assert_eq!(patch(trickle).await.unwrap().status(), 204);
    let restart = "a=ice-ufrag:Rstr\r\na=ice-pwd:restartrestartrestart12\r\n".to_string();
    let response = patch(restart).await.unwrap();
    assert_eq!(response.status(), 200);
    let new_etag = response.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(new_etag, etag);
    let fragment = response.text().await.unwrap();
    assert_eq!(
        format!(
            "\"{}\"",
            ice_credentials(&fragment).expect("ice credentials").0
        ),
        new_etag
    );
    // A viewer's token does not reach a publisher's session.
    let viewer = viewer_token(&bed);
    let response = http.delete(&url).bearer_auth(&viewer).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response = http.delete(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn browsers_on_other_origins_may_call_the_endpoints() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room(ROOM).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/whep/{ROOM}", sfu.http);
    const ORIGIN: &str = "http://player.example";
    let header = |response: &reqwest::Response, name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .unwrap_or_default()
    };

    // The preflight a page's fetch() with a bearer token and an SDP body makes first.
    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(header(&preflight, "access-control-allow-origin"), "*");
    assert!(header(&preflight, "access-control-allow-headers").contains("authorization"));
    assert!(header(&preflight, "access-control-allow-methods").contains("patch"));

    // The real request: its script may read the headers it needs to go on.
    let viewer = Peer::new(PeerConfig::viewer("viewer")).await.unwrap();
    let offer = viewer.create_offer_gathered(WAIT).await.unwrap();
    let response = http
        .post(&url)
        .header("origin", ORIGIN)
        .header("content-type", "application/sdp")
        .bearer_auth(viewer_token(&bed))
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    let exposed = header(&response, "access-control-expose-headers");
    for name in ["location", "etag", "accept-patch"] {
        assert!(exposed.contains(name), "{name} not in {exposed:?}");
    }
    // CORS opens no door: without a token the same request is still refused.
    let refused = http
        .post(&url)
        .header("origin", ORIGIN)
        .header("content-type", "application/sdp")
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    viewer.close().await.unwrap();
    sfu.stop().await.unwrap();
}
