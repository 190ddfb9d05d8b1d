//! The SFU client against real SFU nodes (Redis, auth and nodes from `rethink-testbed`):
//! placement from real heartbeats, and a join whose renegotiation the relay answers when a
//! second participant publishes (real WebRTC peers from `rethink-rtc-peer`, real UDP).

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use rethink_proto::v1::sfu_participant_event::Event;
use rethink_rtc_peer::{Peer, PeerConfig};
use rethink_sfu_client::{SfuClientError, nodes, place};
use rethink_testbed::{TestBed, WAIT, publish_pattern};

/// Upper bound of media waits; debug builds encode and decode in software.
const MEDIA_WAIT: Duration = Duration::from_secs(30);

/// Participants per room of the busy node (below the per-room limit).
const PER_ROOM: u32 = 400;

/// Participants that load the busy node: 0.5 score points each, more than the CPU term can
/// differ between the two nodes. Both nodes sample the same test process, whose CPU use over a
/// short heartbeat window can be anything from 0 to 100 % per core, so only a participant term
/// above that whole range makes the busy node lose whatever the two samples were.
fn load() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores).unwrap_or(u32::MAX / 400) * 200 + 40
}

/// Returns a str0m SDP offer with one video m-line (a participant that never connects).
fn idle_offer() -> Result<String> {
    use str0m::{
        Candidate, RtcConfig,
        media::{Direction, MediaKind},
    };
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .build(std::time::Instant::now());
    rtc.add_local_candidate(Candidate::host("127.0.0.1:9".parse()?, "udp")?);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, _pending) = api.apply().ok_or_else(|| anyhow::anyhow!("no offer"))?;
    Ok(offer.to_sdp_string())
}

#[tokio::test]
async fn placement_picks_the_least_loaded_of_two_heartbeating_nodes() -> Result<()> {
    let bed = TestBed::start().await?;
    // The busy node has the lower id, so a tie or a "first node" placement would pick it.
    let busy = bed.default_sfu("sfu-a").await?;
    let _idle = bed.default_sfu("sfu-b").await?;
    let control = bed.sfu_control(&busy).await?;
    let load = load();
    for n in 0..load {
        let room = format!("crowded-{}", n / PER_ROOM);
        if n % PER_ROOM == 0 {
            assert_eq!(control.create_room(&room).await?, "sfu-a");
        }
        control
            .join(&room, &format!("p{n}"), &idle_offer()?)
            .await?;
    }

    // Both heartbeats are in the store, the busy one with its participants.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = nodes::list(bed.kv().as_ref()).await?;
        let participants = |id: &str| {
            listed
                .iter()
                .find(|n| n.node_id == id)
                .and_then(|n| n.load)
                .map(|l| l.participants)
        };
        if participants("sfu-a") == Some(load) && participants("sfu-b") == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "heartbeats: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (node, placed) = place(bed.kv().as_ref(), bed.sfu_bearer(), WAIT).await?;
    assert_eq!(node.node_id, "sfu-b", "{node:?}");
    // The control client is connected to the node it picked.
    assert_eq!(placed.create_room("fresh").await?, "sfu-b");

    // Errors keep their gRPC code.
    let again = placed.create_room("fresh").await.unwrap_err();
    assert_eq!(again.code(), Some(tonic::Code::AlreadyExists), "{again}");
    // A bad token is refused by the node.
    placed.bearer().set("not-a-token")?;
    let refused = placed.room_stats("fresh").await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(tonic::Code::Unauthenticated),
        "{refused}"
    );
    assert!(matches!(
        rethink_sfu_client::Bearer::new("line\nbreak"),
        Err(SfuClientError::BadToken)
    ));
    Ok(())
}

#[tokio::test]
async fn a_join_gets_an_answer_and_the_relay_answers_the_renegotiation_of_a_new_publisher()
-> Result<()> {
    let bed = TestBed::start().await?;
    // In-memory registry and bus: this test needs only the node and the auth service.
    let memory = rethink_common::backends(None).await?;
    let sfu = bed.sfu_with(bed.sfu_config("sfu-a"), memory).await?;
    let control = bed.sfu_control(&sfu).await?;
    control.create_room("call").await?;

    let first = Arc::new(Peer::new(PeerConfig::publisher("first")).await?);
    let offer = first.create_offer_gathered(WAIT).await?;
    let answer = control.join("call", "first", &offer).await?;
    assert!(answer.starts_with("v="), "{answer}");
    first.apply_answer(&answer).await?;
    let peer = first.clone();
    let relay = rethink_sfu_client::Relay::start(&control, "call", "first", move |offer| {
        let peer = peer.clone();
        async move { peer.apply_offer(&offer).await.map_err(|e| e.to_string()) }
    })
    .await?;
    first.wait_connected(WAIT).await?;

    // A second participant publishes: the SFU offers its track to the first one, the relay
    // applies the offer to the peer and sends the answer back.
    let _second = publish_pattern(&control, "call", "second").await?;
    let outcome = relay.wait_answered(1, MEDIA_WAIT).await;
    let outcome = outcome.unwrap_or_else(|o| panic!("no renegotiation answered: {o:?}"));
    assert_eq!(outcome.error, None);
    let published = relay
        .wait_event(
            MEDIA_WAIT,
            |e| matches!(e, Event::TrackPublished(t) if t.participant == "second"),
        )
        .await;
    assert!(published.is_some(), "events: {:?}", relay.events());
    // The accepted answer shows in the SFU's view of the first participant.
    let stats = control.participant_stats("call", "first").await?;
    assert!(stats.connected, "{stats:?}");

    control.leave("call", "first").await?;
    let mut ended = relay.outcome();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ended.ended && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        ended = relay.outcome();
    }
    assert!(
        ended.ended,
        "the events stream ends when the participant leaves: {ended:?}"
    );
    Ok(())
}
