//! str0m client peers join over real UDP on loopback: ICE and DTLS come up, the event stream
//! reports it, the second peer is offered the first one's track by renegotiation, and per-track
//! subscriptions and departures work end to end.

mod common;

use common::peer::TestPeer;
use rethink_proto::v1::sfu_participant_event::Event;
use rethink_proto::v1::{
    SfuAnswerRenegotiationRequest, SfuGetParticipantStatsRequest, SfuMediaKind, SfuOfferRequest,
    SfuParticipantEvent, SfuSubscribeRequest,
};
use rethink_testbed::{TestBed, WAIT, stream_ends};
use tonic::Streaming;

/// Returns the first event `pick` accepts, driving `peer` meanwhile so its session stays alive.
async fn wait_event<T>(
    events: &mut Streaming<SfuParticipantEvent>,
    peer: &mut TestPeer,
    pick: impl Fn(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "event did not come");
        tokio::select! {
            item = events.message() => {
                let item = item.expect("stream ok").expect("stream open");
                if let Some(found) = item.event.as_ref().and_then(&pick) {
                    return found;
                }
            }
            _ = peer.run_until(std::time::Duration::from_millis(50), |_| false) => {}
        }
    }
}

#[tokio::test]
async fn peers_connect_over_udp_and_get_each_others_tracks() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    let mut client = control.raw();
    control.create_room("r").await.unwrap();

    // Alice joins and connects.
    let mut alice = TestPeer::new().await;
    let answer = control.join("r", "alice", &alice.offer).await.unwrap();
    assert!(
        answer.contains(&format!("{} typ host", sfu.udp.port())),
        "the answer advertises the service's udp port: {answer}"
    );
    alice.accept_answer(&answer);
    let mut alice_events = control.events("r", "alice").await.unwrap();
    assert!(
        alice
            .run_until(WAIT, |p| p.ice_connected && p.connected)
            .await,
        "ice and dtls connect"
    );
    wait_event(&mut alice_events, &mut alice, |e| {
        matches!(e, Event::Connected(_)).then_some(())
    })
    .await;
    let alice_track = wait_event(&mut alice_events, &mut alice, |e| match e {
        Event::TrackPublished(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!(alice_track.participant, "alice");
    assert_eq!(alice_track.kind, SfuMediaKind::Video as i32);

    let stats = client
        .get_participant_stats(SfuGetParticipantStatsRequest {
            room: "r".into(),
            participant: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.connected);
    assert!(stats.bytes_in > 0 && stats.bytes_out > 0, "{stats:?}");
    // Every datagram is at least a few bytes, and the counters move together with the bytes.
    assert!(stats.packets_in > 0 && stats.packets_out > 0, "{stats:?}");
    assert!(stats.bytes_in >= 20 * stats.packets_in, "{stats:?}");
    assert!(stats.bytes_out >= 20 * stats.packets_out, "{stats:?}");
    assert_eq!(stats.published_tracks, vec![alice_track.track_id.clone()]);

    // The forwarding counters are exported.
    let metrics = reqwest::get(format!("http://{}/metrics", sfu.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let received = metrics
        .lines()
        .find(|line| line.starts_with("sfu_udp_datagrams_received_total"))
        .unwrap_or_else(|| panic!("no datagram counter in {metrics}"));
    let count: f64 = received.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count > 0.0, "{received}");

    // Alice adds an audio track with an offer of her own.
    let offer = alice.offer_track(str0m::media::MediaKind::Audio);
    let answer = client
        .offer(SfuOfferRequest {
            room: "r".into(),
            participant: "alice".into(),
            offer_sdp: offer,
        })
        .await
        .expect("participant offer")
        .into_inner()
        .answer_sdp;
    alice.accept_answer(&answer);
    let alice_audio = wait_event(&mut alice_events, &mut alice, |e| match e {
        Event::TrackPublished(t) if t.kind == SfuMediaKind::Audio as i32 => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_ne!(alice_audio.track_id, alice_track.track_id);

    // Bob joins: Alice hears of it; Bob is offered Alice's tracks.
    let mut bob = TestPeer::new().await;
    let answer = control.join("r", "bob", &bob.offer).await.unwrap();
    bob.accept_answer(&answer);
    let mut bob_events = control.events("r", "bob").await.unwrap();
    let joined = wait_event(&mut alice_events, &mut alice, |e| match e {
        Event::ParticipantJoined(j) => Some(j.participant.clone()),
        _ => None,
    })
    .await;
    assert_eq!(joined, "bob");
    assert!(bob.run_until(WAIT, |p| p.connected).await, "bob connects");
    let offer = wait_event(&mut bob_events, &mut bob, |e| match e {
        Event::Renegotiation(r) => Some(r.offer_sdp.clone()),
        _ => None,
    })
    .await;
    let bob_answer = bob.accept_offer(&offer);
    client
        .answer_renegotiation(SfuAnswerRenegotiationRequest {
            room: "r".into(),
            participant: "bob".into(),
            answer_sdp: bob_answer,
        })
        .await
        .expect("answer accepted");
    bob.run_until(std::time::Duration::from_millis(200), |_| false)
        .await;

    let bob_stats = client
        .get_participant_stats(SfuGetParticipantStatsRequest {
            room: "r".into(),
            participant: "bob".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        bob_stats.subscribed_tracks.contains(&alice_track.track_id)
            && bob_stats.subscribed_tracks.contains(&alice_audio.track_id),
        "bob receives alice's tracks: {bob_stats:?}"
    );

    // Narrowing and restoring one track are accepted.
    let subscription = SfuSubscribeRequest {
        room: "r".into(),
        participant: "bob".into(),
        track_id: alice_track.track_id.clone(),
    };
    client.unsubscribe(subscription.clone()).await.unwrap();
    client.subscribe(subscription.clone()).await.unwrap();

    // Alice leaves: Bob hears it, and the room shrinks.
    control.leave("r", "alice").await.unwrap();
    let mut gone = Vec::new();
    for _ in 0..2 {
        gone.push(
            wait_event(&mut bob_events, &mut bob, |e| match e {
                Event::TrackUnpublished(t) => Some(t.track_id.clone()),
                _ => None,
            })
            .await,
        );
    }
    gone.sort();
    let mut expected = vec![alice_track.track_id.clone(), alice_audio.track_id.clone()];
    expected.sort();
    assert_eq!(gone, expected);
    let left = wait_event(&mut bob_events, &mut bob, |e| match e {
        Event::ParticipantLeft(l) => Some((l.participant.clone(), l.reason.clone())),
        _ => None,
    })
    .await;
    assert_eq!(left, ("alice".to_string(), "left".to_string()));
    // Alice's own stream ends.
    assert!(stream_ends(&mut alice_events).await, "alice's stream ends");
    let room = control.room_stats("r").await.unwrap();
    assert_eq!(room.participants, 1);
    assert_eq!(room.participant_stats[0].participant, "bob");
    sfu.stop().await.unwrap();
}

#[tokio::test]
async fn a_late_joiner_hears_of_everyone_already_there() {
    let bed = TestBed::start().await.unwrap();
    let sfu = bed.default_sfu("sfu-test").await.unwrap();
    let control = bed.sfu_control(&sfu).await.unwrap();
    control.create_room("r").await.unwrap();
    // Alice connects and publishes a video track before Bob arrives.
    let mut alice = TestPeer::new().await;
    let answer = control.join("r", "alice", &alice.offer).await.unwrap();
    alice.accept_answer(&answer);
    let mut alice_events = control.events("r", "alice").await.unwrap();
    let published = wait_event(&mut alice_events, &mut alice, |e| match e {
        Event::TrackPublished(t) => Some(t.track_id.clone()),
        _ => None,
    })
    .await;

    let mut bob = TestPeer::new().await;
    control.join("r", "bob", &bob.offer).await.unwrap();
    let mut bob_events = control.events("r", "bob").await.unwrap();
    let joined = wait_event(&mut bob_events, &mut bob, |e| match e {
        Event::ParticipantJoined(j) => Some(j.participant.clone()),
        _ => None,
    })
    .await;
    assert_eq!(joined, "alice");
    let track = wait_event(&mut bob_events, &mut bob, |e| match e {
        Event::TrackPublished(t) => Some(t.clone()),
        _ => None,
    })
    .await;
    assert_eq!(track.participant, "alice");
    assert_eq!(track.track_id, published);
    assert_eq!(track.kind, SfuMediaKind::Video as i32);
    assert_eq!(track.room, "r");
}
