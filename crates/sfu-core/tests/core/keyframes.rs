//! Keyframe requests: a new subscriber gets a keyframe at once; request storms are throttled.

use std::time::Duration;

use crate::sim::{Sim, SourceSpec};
use rethink_sfu_core::CoreEvent;

/// Alice publishes video, Bob watches; Carol joins later.
fn call_with_late_joiner() -> (Sim, String) {
    let mut sim = Sim::new(7);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::vp8(1500)]);
    let bob = sim.add_peer("bob", &[]);
    sim.join(alice, "r").unwrap();
    sim.join(bob, "r").unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_secs(2));
    let track = sim.tracks_of("alice")[0].clone();
    (sim, track)
}

#[test]
fn new_subscriber_triggers_keyframe_within_one_round_trip() {
    let (mut sim, track) = call_with_late_joiner();
    let before = sim.peer("alice").keyframe_requests.len();
    let carol = sim.add_peer("carol", &[]);
    sim.join(carol, "r").unwrap();
    sim.connect_all();
    // The subscription opens when Carol answers the server's offer (instantly here).
    let end = sim.now + Duration::from_secs(2);
    assert!(sim.run_until(end, |s| s.peer("carol").mid_of(&track).is_some()));
    let opened_at = sim
        .events
        .iter()
        .rev()
        .find_map(|(t, e)| match e {
            CoreEvent::Renegotiate { participant, .. } if participant == "carol" => Some(*t),
            _ => None,
        })
        .expect("carol got an offer");

    let rtt = 2 * sim.net.latency;
    let end = opened_at + Duration::from_secs(1);
    assert!(sim.run_until(end, |s| s.peer("alice").keyframe_requests.len() > before));
    let (at, ..) = sim.peer("alice").keyframe_requests[before];
    assert!(
        at - opened_at <= rtt,
        "keyframe request reached the publisher after {:?} (round trip {rtt:?})",
        at - opened_at
    );

    // Carol's first frame is that keyframe: it needs the request, one frame interval and the
    // path through the server.
    let mid = sim.peer("carol").mid_of(&track).unwrap();
    let end = sim.now + Duration::from_secs(1);
    assert!(sim.run_until(end, |s| !s.peer("carol").frames_from(mid).is_empty()));
    let first = sim.peer("carol").frames_from(mid)[0].clone();
    assert!(first.keyframe);
    assert!(first.at - opened_at <= rtt + Duration::from_millis(33) + rtt);
}

#[test]
fn keyframe_request_storm_is_throttled() {
    let (mut sim, track) = call_with_late_joiner();
    let mid = sim.peer("bob").mid_of(&track).unwrap();
    let before = sim.peer("alice").keyframe_requests.len();
    // Bob's decoder asks for a keyframe every 20 ms for one second.
    for _ in 0..50 {
        sim.send_pli("bob", mid);
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_millis(100));
    let received = sim
        .core
        .participant_stats("bob")
        .unwrap()
        .keyframe_requests_received;
    let forwarded = sim.peer("alice").keyframe_requests.len() - before;
    assert!(received >= 40, "the core saw {received} requests from bob");
    // 500 ms minimum interval over ~1.1 s: at most three requests reach the publisher.
    assert!(
        (1..=3).contains(&forwarded),
        "{forwarded} requests reached alice"
    );
    let stats = sim.core.room_stats("r").unwrap();
    let counted = stats.tracks[0].keyframe_requests as usize;
    let got = sim.peer("alice").keyframe_requests.len();
    // Requests made before the publisher's first packet cannot leave; all others arrive.
    assert!(
        counted >= got && counted <= got + 1,
        "counted {counted}, alice got {got}"
    );
}
