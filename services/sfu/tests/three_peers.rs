//! Three independent WebRTC peers (webrtc-rs, `rethink-rtc-peer`) hold a call through a real
//! SFU on loopback: each joins over real gRPC, publishes an H264 test pattern over real UDP,
//! applies the server's renegotiation offers from its `Events` stream, and decodes the video of
//! the other two. Then one leaves and the other two see it gone (events and room stats) while
//! their own call goes on; the bus carries the departure too.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestSfu;
use prost::Message;
use rethink_common::bus::{Subscription, topics};
use rethink_proto::v1::sfu_client::SfuClient;
use rethink_proto::v1::sfu_participant_event::Event;
use rethink_proto::v1::{
    SfuAddIceCandidateRequest, SfuAnswerRenegotiationRequest, SfuEventsRequest,
    SfuGetRoomStatsRequest, SfuLeaveRequest, SfuParticipantLeft, SfuRoomStats, SfuTrackEvent,
};
use rethink_rtc_peer::{Peer, PeerConfig, RemoteTrackKey};
use rethink_sfu::keys;
use tokio::sync::watch;
use tonic::transport::Channel;

const ROOM: &str = "three-peers";
/// Frames each peer must decode from each other publisher.
const FRAMES: u64 = 30;
/// Upper bound of media waits; debug builds encode and decode in software.
const MEDIA_WAIT: Duration = Duration::from_secs(30);

/// One participant: its peer, and what its `Events` stream delivered so far.
struct Participant {
    name: String,
    peer: Arc<Peer>,
    events: watch::Receiver<Vec<Event>>,
    /// Renegotiation offers answered, or the first error met while answering one.
    renegotiations: Arc<Mutex<Result<u32, String>>>,
}

async fn join(sfu: &TestSfu, name: &str) -> anyhow::Result<Participant> {
    let mut client = sfu.client().await;
    let peer = Arc::new(Peer::new(PeerConfig::publisher(name)).await?);
    let offer = peer.create_offer().await?;
    let answer = client
        .join(sfu.authed(common::join(ROOM, name, &offer)))
        .await?
        .into_inner()
        .answer_sdp;
    peer.apply_answer(&answer).await?;

    // Trickle our candidates now that the server knows the participant.
    let mut candidates = peer.take_local_candidates().expect("first take");
    let mut trickle_client = client.clone();
    let token = sfu.token.clone();
    let participant = name.to_owned();
    tokio::spawn(async move {
        while let Some(candidate) = candidates.recv().await {
            let request = common::authed(
                SfuAddIceCandidateRequest {
                    room: ROOM.into(),
                    participant: participant.clone(),
                    candidate,
                },
                &token,
            );
            if trickle_client.add_ice_candidate(request).await.is_err() {
                break;
            }
        }
    });

    let stream = client
        .events(sfu.authed(SfuEventsRequest {
            room: ROOM.into(),
            participant: name.into(),
        }))
        .await?
        .into_inner();
    let (events_tx, events) = watch::channel(Vec::new());
    let renegotiations = Arc::new(Mutex::new(Ok(0)));
    tokio::spawn(follow_events(
        stream,
        Arc::clone(&peer),
        client,
        sfu.token.clone(),
        name.to_owned(),
        events_tx,
        Arc::clone(&renegotiations),
    ));
    Ok(Participant {
        name: name.to_owned(),
        peer,
        events,
        renegotiations,
    })
}

/// Applies every renegotiation offer and answers it; records every event.
async fn follow_events(
    mut stream: tonic::Streaming<rethink_proto::v1::SfuParticipantEvent>,
    peer: Arc<Peer>,
    mut client: SfuClient<Channel>,
    token: String,
    name: String,
    events: watch::Sender<Vec<Event>>,
    renegotiations: Arc<Mutex<Result<u32, String>>>,
) {
    while let Ok(Some(message)) = stream.message().await {
        let Some(event) = message.event else { continue };
        if let Event::Renegotiation(offer) = &event {
            let outcome = match peer.apply_offer(&offer.offer_sdp).await {
                Ok(answer) => client
                    .answer_renegotiation(common::authed(
                        SfuAnswerRenegotiationRequest {
                            room: ROOM.into(),
                            participant: name.clone(),
                            answer_sdp: answer,
                        },
                        &token,
                    ))
                    .await
                    .map(|_| ())
                    .map_err(|status| format!("AnswerRenegotiation: {status}")),
                Err(error) => Err(format!("applying the offer: {error}")),
            };
            let mut count = renegotiations.lock().unwrap();
            match outcome {
                Ok(()) => {
                    if let Ok(n) = count.as_mut() {
                        *n += 1;
                    }
                }
                Err(error) => {
                    if count.is_ok() {
                        *count = Err(error);
                    }
                }
            }
        }
        events.send_modify(|all| all.push(event));
    }
}

impl Participant {
    /// Waits until an event matching `want` arrived.
    async fn wait_event(&self, what: &str, mut want: impl FnMut(&Event) -> bool) -> Event {
        let mut rx = self.events.clone();
        let found = tokio::time::timeout(MEDIA_WAIT, rx.wait_for(|all| all.iter().any(&mut want)))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: no {what} event; events: {:?}",
                    self.name,
                    self.events.borrow()
                )
            })
            .expect("events sender alive");
        found.iter().find(|e| want(e)).cloned().expect("matched")
    }

    fn renegotiation_outcome(&self) -> Result<u32, String> {
        self.renegotiations.lock().unwrap().clone()
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

async fn room_stats(sfu: &TestSfu) -> anyhow::Result<SfuRoomStats> {
    Ok(sfu
        .client()
        .await
        .get_room_stats(sfu.authed(SfuGetRoomStatsRequest { room: ROOM.into() }))
        .await?
        .into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_decode_each_other_and_a_leaver_is_cleaned_up() -> anyhow::Result<()> {
    let sfu = TestSfu::start().await;
    let mut bus = sfu.bus.subscribe(&[topics::SFU_EVENTS.to_owned()]).await?;
    sfu.client()
        .await
        .create_room(sfu.authed(common::create(ROOM)))
        .await?;

    let mut participants = Vec::new();
    for name in ["alice", "bob", "carol"] {
        participants.push(join(&sfu, name).await?);
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
            matches!(p.renegotiation_outcome(), Ok(n) if n >= 1),
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

    let stats = room_stats(&sfu).await?;
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
    sfu.client()
        .await
        .leave(sfu.authed(SfuLeaveRequest {
            room: ROOM.into(),
            participant: carol.name.clone(),
        }))
        .await?;
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
    let stats = room_stats(&sfu).await?;
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
    sfu.stop().await;
    Ok(())
}
