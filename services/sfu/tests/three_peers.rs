//! Three independent WebRTC peers (webrtc-rs, `rethink-rtc-peer`) hold a call through a real
//! SFU on loopback: each joins over real gRPC, publishes an H264 test pattern over real UDP,
//! applies the server's renegotiation offers from its `Events` stream, and decodes the video of
//! the other two. Then one leaves and the other two see it gone (events and room stats) while
//! their own call goes on; the bus carries the departure too.

mod common;

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rethink_common::bus::{Subscription, topics};
use rethink_proto::v1::sfu_participant_event::Event;
use rethink_proto::v1::{SfuParticipantLeft, SfuRoomStats, SfuTrackEvent};
use rethink_rtc_peer::{Peer, PeerConfig, RemoteTrackKey};
use rethink_sfu::keys;
use rethink_testbed::TestBed;
use rethink_testbed::sfu::{Relay, RelayOutcome, SfuControl};

const ROOM: &str = "three-peers";
/// Frames each peer must decode from each other publisher.
const FRAMES: u64 = 30;
/// Upper bound of media waits; debug builds encode and decode in software.
const MEDIA_WAIT: Duration = Duration::from_secs(30);

/// One participant: its peer, and the relay answering its renegotiation offers and recording
/// what its `Events` stream delivered.
struct Participant {
    name: String,
    peer: Arc<Peer>,
    relay: Relay,
}

async fn join(control: &SfuControl, name: &str) -> anyhow::Result<Participant> {
    let peer = Arc::new(Peer::new(PeerConfig::publisher(name)).await?);
    let offer = peer.create_offer().await?;
    let answer = control.join(ROOM, name, &offer).await?;
    peer.apply_answer(&answer).await?;

    // Trickle our candidates now that the server knows the participant.
    let mut candidates = peer.take_local_candidates().expect("first take");
    let trickle = control.clone();
    let participant = name.to_owned();
    tokio::spawn(async move {
        while let Some(candidate) = candidates.recv().await {
            if trickle
                .trickle(ROOM, &participant, &candidate)
                .await
                .is_err()
            {
                break;
            }
        }
    });

    // Apply every renegotiation offer and answer it.
    let answerer = Arc::clone(&peer);
    let relay = Relay::start(control, ROOM, name, move |offer| {
        let peer = Arc::clone(&answerer);
        async move { peer.apply_offer(&offer).await.map_err(|e| e.to_string()) }
    })
    .await?;
    Ok(Participant {
        name: name.to_owned(),
        peer,
        relay,
    })
}

impl Participant {
    /// Waits until an event matching `want` arrived.
    async fn wait_event(&self, what: &str, want: impl Fn(&Event) -> bool) -> Event {
        self.relay
            .wait_event(MEDIA_WAIT, want)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{}: no {what} event; events: {:?}",
                    self.name,
                    self.relay.events()
                )
            })
    }

    /// Renegotiation offers answered, and the first error met while answering one.
    fn renegotiation_outcome(&self) -> RelayOutcome {
        self.relay.outcome()
    }

    /// The remote tracks that decoded frames, excluding this peer's own.
    fn decoded_tracks(&self) -> Vec<(RemoteTrackKey, u64)> {
        self.peer
            .remote_tracks()
            .into_iter()
            .filter(|(_, c)| c.video && c.frames_decoded > 0)
            .map(|(k, c)| (k, c.frames_decoded))
            .collect()
    }
}

/// Reads the bus until it carried both `participant`'s departure and the end of its track, in
/// either order; returns them.
async fn wait_bus_departure(
    bus: &mut Subscription,
    participant: &str,
) -> (SfuParticipantLeft, SfuTrackEvent) {
    let (mut left, mut unpublished) = (None, None);
    let read = tokio::time::timeout(MEDIA_WAIT, async {
        while left.is_none() || unpublished.is_none() {
            let Some(message) = bus.recv().await else {
                return;
            };
            let Ok(event) = rethink_proto::v1::Event::decode(message.payload) else {
                continue;
            };
            if event.r#type == keys::EVENT_PARTICIPANT_LEFT
                && let Ok(l) = SfuParticipantLeft::decode(event.payload.as_slice())
                && l.participant == participant
            {
                left = Some(l);
            } else if event.r#type == keys::EVENT_TRACK_UNPUBLISHED
                && let Ok(t) = SfuTrackEvent::decode(event.payload.as_slice())
                && t.participant == participant
            {
                unpublished = Some(t);
            }
        }
    })
    .await;
    match (read, left, unpublished) {
        (Ok(()), Some(left), Some(unpublished)) => (left, unpublished),
        (_, left, unpublished) => {
            panic!("bus: {participant} left: {left:?}, track unpublished: {unpublished:?}")
        }
    }
}

async fn room_stats(control: &SfuControl) -> anyhow::Result<SfuRoomStats> {
    Ok(control.room_stats(ROOM).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_decode_each_other_and_a_leaver_is_cleaned_up() -> anyhow::Result<()> {
    let bed = TestBed::start().await?;
    let sfu = bed.default_sfu("sfu-test").await?;
    let control = bed.sfu_control(&sfu).await?;
    let mut bus = bed
        .backends
        .bus
        .subscribe(&[topics::SFU_EVENTS.to_owned()])
        .await?;
    control.create_room(ROOM).await?;

    let mut participants = Vec::new();
    for name in ["alice", "bob", "carol"] {
        participants.push(join(&control, name).await?);
    }
    for p in &participants {
        p.peer.wait_connected(MEDIA_WAIT).await?;
    }

    // Everybody decodes both others' video.
    for p in &participants {
        let tracks = p
            .peer
            .wait_decoded(2, FRAMES, MEDIA_WAIT)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; renegotiations: {:?}",
                    p.name,
                    p.renegotiation_outcome()
                )
            })?;
        let decoding: Vec<_> = tracks
            .iter()
            .filter(|(_, c)| c.frames_decoded >= FRAMES)
            .collect();
        assert!(decoding.len() >= 2, "{} decodes only {decoding:?}", p.name);
        for (_, counters) in &decoding {
            assert_eq!(counters.last_size, Some((320, 240)), "{}", p.name);
        }
        assert!(
            matches!(p.renegotiation_outcome(), RelayOutcome { answered, error: None, .. } if answered >= 1),
            "{}: renegotiations {:?}",
            p.name,
            p.renegotiation_outcome()
        );
    }

    // Each saw the other two publish, and what it decodes are exactly those two tracks.
    let mut track_of = std::collections::HashMap::new();
    for p in &participants {
        let mut expected = Vec::new();
        for other in participants.iter().filter(|o| o.name != p.name) {
            let event = p
                .wait_event(
                    &format!("track_published by {}", other.name),
                    |e| matches!(e, Event::TrackPublished(t) if t.participant == other.name),
                )
                .await;
            let Event::TrackPublished(track) = event else {
                unreachable!("matched above")
            };
            track_of.insert(other.name.clone(), track.track_id.clone());
            expected.push(track.track_id);
        }
        let mut decoded: Vec<String> = p
            .decoded_tracks()
            .into_iter()
            .map(|(k, _)| k.track_id)
            .collect();
        decoded.sort();
        expected.sort();
        assert_eq!(decoded, expected, "{} decodes the wrong tracks", p.name);
    }

    let stats = room_stats(&control).await?;
    assert_eq!(stats.participants, 3, "{stats:?}");
    assert_eq!(stats.tracks, 3, "{stats:?}");
    for ps in &stats.participant_stats {
        assert!(ps.connected, "{ps:?}");
        assert_eq!(ps.published_tracks.len(), 1, "{ps:?}");
        assert_eq!(ps.subscribed_tracks.len(), 2, "{ps:?}");
        // Packet counters are not filled by the service yet; bytes are.
        assert!(ps.bytes_in > 0 && ps.bytes_out > 0, "{ps:?}");
    }

    // Carol leaves.
    let carol = participants.pop().expect("carol");
    control.leave(ROOM, &carol.name).await?;
    carol.peer.close().await?;

    for p in &participants {
        p.wait_event(
            "participant_left carol",
            |e| matches!(e, Event::ParticipantLeft(l) if l.participant == "carol"),
        )
        .await;
        p.wait_event(
            "track_unpublished carol",
            |e| matches!(e, Event::TrackUnpublished(t) if t.participant == "carol"),
        )
        .await;
    }
    let (left, unpublished) = wait_bus_departure(&mut bus, "carol").await;
    assert_eq!(left.room, ROOM);
    assert_eq!(
        &unpublished.track_id,
        track_of.get("carol").expect("carol published")
    );
    let stats = room_stats(&control).await?;
    assert_eq!(stats.participants, 2, "{stats:?}");
    assert_eq!(stats.tracks, 2, "{stats:?}");
    for ps in &stats.participant_stats {
        assert_ne!(ps.participant, "carol");
        assert_eq!(ps.subscribed_tracks.len(), 1, "{ps:?}");
    }

    // The remaining two keep decoding each other: 30 more frames on a track that was
    // already decoding, while carol's track stays silent.
    let carol_track = track_of.get("carol").expect("carol published").clone();
    let carol_packets = |p: &Participant| {
        p.peer
            .remote_tracks()
            .into_iter()
            .find(|(k, _)| k.track_id == carol_track)
            .map(|(_, c)| c.packets)
            .unwrap_or(0)
    };
    for p in &participants {
        let carol_before = carol_packets(p);
        let before = p.decoded_tracks();
        p.peer
            .wait_tracks(MEDIA_WAIT, "30 more frames on a live track", |tracks| {
                tracks.iter().any(|(k, c)| {
                    before
                        .iter()
                        .any(|(bk, bn)| bk == k && c.frames_decoded >= bn + FRAMES)
                })
            })
            .await?;
        // A few packets may have been in flight when carol left; a live track delivers about
        // a hundred in the time the other track takes for 30 frames.
        let carol_after = carol_packets(p);
        assert!(
            carol_after - carol_before <= 10,
            "{}: carol's track still delivers ({carol_before} -> {carol_after} packets)",
            p.name
        );
    }

    for p in &participants {
        p.peer.close().await?;
    }
    sfu.stop().await?;
    Ok(())
}
