//! NACK/RTX on both legs: under seeded loss every video frame still arrives complete.

use std::time::Duration;

use crate::sim::{Sim, SourceSpec, frame_intact};
use str0m::media::MediaKind;

#[test]
fn every_frame_arrives_complete_under_five_percent_loss() {
    let mut sim = Sim::new(42);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::vp8(3000)]);
    let bob = sim.add_peer("bob", &[]);
    let carol = sim.add_peer("carol", &[]);
    for p in [alice, bob, carol] {
        sim.join(p, "r").unwrap();
    }
    sim.connect_all();
    // Subscriptions open and the first keyframe flows before the loss starts.
    sim.run_for(Duration::from_millis(500));
    sim.set_loss(0.05);
    sim.run_for(Duration::from_secs(4));
    // Stop the source, lift the loss and let retransmissions settle.
    sim.peer_mut("alice").publishing = false;
    sim.set_loss(0.0);
    sim.run_for(Duration::from_secs(1));

    let sent = sim.peer("alice").sources[0].frame_no;
    let track = sim.tracks_of("alice")[0].clone();
    assert!(
        sim.net.dropped > 50,
        "only {} packets were lost",
        sim.net.dropped
    );
    for sub in ["bob", "carol"] {
        let p = sim.peer(sub);
        let frames = p.frames_from(p.mid_of(&track).unwrap());
        let first = frames[0].frame_no();
        assert!(first < 20, "{sub} started late, at frame {first}");
        let numbers: Vec<u32> = frames.iter().map(|f| f.frame_no()).collect();
        let expected: Vec<u32> = (first..sent).collect();
        assert_eq!(numbers, expected, "{sub} is missing frames");
        for f in &frames {
            assert!(
                frame_intact(MediaKind::Video, f, &[3000]),
                "{sub} frame {} corrupt",
                f.frame_no()
            );
            assert!(f.contiguous);
        }
        let stats = sim.core.participant_stats(sub).unwrap();
        assert!(
            stats.nacks_received > 0,
            "{sub} never sent a NACK to the server"
        );
    }
    let alice_stats = sim.core.participant_stats("alice").unwrap();
    assert!(
        alice_stats.nacks_sent > 0,
        "the server never NACKed the publisher"
    );
}
