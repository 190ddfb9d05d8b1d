//! Simulcast: the forwarded layer follows the subscriber's bandwidth estimate and switches only
//! on a keyframe of the new layer.

use std::time::Duration;

use crate::sim::{Sim, SourceSpec, frame_intact};
use str0m::media::MediaKind;

/// Frame sizes per layer at 30 fps: q ≈ 72 kbit/s, h ≈ 240 kbit/s, f ≈ 720 kbit/s.
const LAYERS: [(&str, usize); 3] = [("q", 300), ("h", 1000), ("f", 3000)];
const SIZES: [usize; 3] = [300, 1000, 3000];

fn layer_of_last_frame(sim: &Sim, peer: &str, track: &str) -> Option<u8> {
    let p = sim.peer(peer);
    let mid = p.mid_of(track)?;
    p.frames_from(mid).last().map(|f| f.layer())
}

#[test]
fn layer_follows_the_estimate_and_switches_on_keyframes() {
    layer_follows_the_estimate(Sim::new(3));
}

#[test]
fn without_send_side_estimation_remb_alone_drives_the_layer() {
    layer_follows_the_estimate(Sim::with_config(3, |c| c.bwe = false));
}

fn layer_follows_the_estimate(mut sim: Sim) {
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::simulcast(&LAYERS)]);
    let bob = sim.add_peer("bob", &[]);
    sim.join(alice, "r").unwrap();
    sim.join(bob, "r").unwrap();
    sim.connect_all();
    let track = sim.tracks_of("alice")[0].clone();
    let published_rids = sim.events.iter().find_map(|(_, e)| match e {
        rethink_sfu_core::CoreEvent::TrackPublished { rids, .. } => Some(rids.clone()),
        _ => None,
    });
    assert_eq!(
        published_rids,
        Some(vec!["q".into(), "h".into(), "f".into()])
    );

    // Plenty of bandwidth: the top layer.
    sim.run_for(Duration::from_secs(2));
    assert_eq!(layer_of_last_frame(&sim, "bob", &track), Some(2));
    let mid = sim.peer("bob").mid_of(&track).unwrap();

    // Bob's estimate drops to 150 kbit/s: only the lowest layer fits.
    let drop_at = sim.peer("bob").frames_from(mid).len();
    sim.send_remb("bob", mid, 150_000);
    let end = sim.now + Duration::from_secs(2);
    assert!(sim.run_until(end, |s| layer_of_last_frame(s, "bob", &track) == Some(0)));
    sim.run_for(Duration::from_millis(500));

    // It rises to 5 Mbit/s: back to the top layer.
    let rise_at = sim.peer("bob").frames_from(mid).len();
    for _ in 0..4 {
        sim.send_remb("bob", mid, 5_000_000);
        sim.run_for(Duration::from_millis(250));
    }
    let end = sim.now + Duration::from_secs(2);
    assert!(sim.run_until(end, |s| layer_of_last_frame(s, "bob", &track) == Some(2)));
    sim.run_for(Duration::from_millis(300));

    let frames = sim.peer("bob").frames_from(mid);
    let layers: Vec<u8> = frames.iter().map(|f| f.layer()).collect();
    // Exactly two switches, each landing on a keyframe, with no frame missing around them.
    let switches: Vec<usize> = (1..frames.len())
        .filter(|&i| layers[i] != layers[i - 1])
        .collect();
    assert_eq!(switches.len(), 2, "layers: {layers:?}");
    assert!(switches[0] >= drop_at && switches[1] >= rise_at);
    assert_eq!((layers[switches[0]], layers[switches[1]]), (0, 2));
    for &i in &switches {
        assert!(
            frames[i].keyframe,
            "switch at frame {i} is not on a keyframe"
        );
    }
    for (i, f) in frames.iter().enumerate() {
        assert!(frame_intact(MediaKind::Video, f, &SIZES));
        if i > 0 {
            let step = f.frame_no() - frames[i - 1].frame_no();
            // At a switch the new layer's keyframe may carry the same picture the old layer
            // just delivered; never is a picture skipped.
            let allowed = if switches.contains(&i) { 0..=1 } else { 1..=1 };
            assert!(allowed.contains(&step), "step {step} at frame {i}");
            assert!(
                f.rtp_time > frames[i - 1].rtp_time,
                "timestamp went back at {i}"
            );
        }
    }
    let stats = sim.core.participant_stats("bob").unwrap();
    assert_eq!(
        stats.subscribed,
        vec![(track.as_str().into(), "f".to_string())]
    );
    let room = sim.core.room_stats("r").unwrap();
    let rates: Vec<u64> = room.tracks[0]
        .layers
        .iter()
        .map(|l| l.bitrate_bps)
        .collect();
    assert!(
        rates[0] < rates[1] && rates[1] < rates[2],
        "layer rates {rates:?}"
    );
}

/// Alice publishes three layers, Bob subscribes; after 2 s Bob gets the top one. Returns
/// Alice's track.
fn bob_watches_alice_on_the_top_layer(sim: &mut Sim) -> String {
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::simulcast(&LAYERS)]);
    let bob = sim.add_peer("bob", &[]);
    sim.join(alice, "r").unwrap();
    sim.join(bob, "r").unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_secs(2));
    let track = sim.tracks_of("alice")[0].clone();
    assert_eq!(layer_of_last_frame(sim, "bob", &track), Some(2));
    track
}

#[test]
fn a_paused_layer_is_left_for_the_next_one() {
    let mut sim = Sim::new(4);
    let track = bob_watches_alice_on_the_top_layer(&mut sim);
    // The publisher's encoder drops its top layer.
    sim.peer_mut("alice").sources[0].paused.insert(2);
    let end = sim.now + Duration::from_secs(3);
    assert!(sim.run_until(end, |s| layer_of_last_frame(s, "bob", &track) == Some(1)));
    let mid = sim.peer("bob").mid_of(&track).unwrap();
    let frames = sim.peer("bob").frames_from(mid);
    let first_h = frames.iter().position(|f| f.layer() == 1).unwrap();
    assert!(frames[first_h].keyframe);
}

#[test]
fn downlink_loss_lowers_the_layer_and_a_clean_link_brings_it_back() {
    // Loss reports five times a second so the test needs seconds, not tens of seconds, of
    // virtual time; no delay-based estimator and no REMB, so loss alone drives the layer.
    let mut sim = Sim::with_config(6, |c| {
        c.bwe = false;
        c.stats_interval = Duration::from_millis(200);
    });
    let track = bob_watches_alice_on_the_top_layer(&mut sim);
    let clean_estimate = sim.core.participant_stats("bob").unwrap().estimate_bps;

    // A third of what we send to Bob is lost: the layer steps down.
    let bob_addr = sim.peer("bob").addr;
    sim.net.loss_to.insert(bob_addr, 0.3);
    let end = sim.now + Duration::from_secs(3);
    assert!(
        sim.run_until(end, |s| layer_of_last_frame(s, "bob", &track) == Some(0)),
        "layer stayed at {:?}",
        layer_of_last_frame(&sim, "bob", &track)
    );
    let lossy_estimate = sim.core.participant_stats("bob").unwrap().estimate_bps;
    assert!(
        lossy_estimate < clean_estimate,
        "{lossy_estimate:?} vs {clean_estimate:?}"
    );

    // The link heals: the estimate grows back and the top layer returns, on a keyframe.
    sim.net.loss_to.insert(bob_addr, 0.0);
    let end = sim.now + Duration::from_secs(8);
    assert!(
        sim.run_until(end, |s| layer_of_last_frame(s, "bob", &track) == Some(2)),
        "layer stayed at {:?}",
        layer_of_last_frame(&sim, "bob", &track)
    );
    let mid = sim.peer("bob").mid_of(&track).unwrap();
    let frames = sim.peer("bob").frames_from(mid);
    let back = frames.iter().rposition(|f| f.layer() != 2).unwrap() + 1;
    assert!(frames[back].keyframe);
}
