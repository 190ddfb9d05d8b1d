//! Forwarding: a publisher's media reaches every other participant intact.

use std::time::Duration;

use crate::sim::{Sim, SourceSpec, frame_intact};
use str0m::media::MediaKind;

#[test]
fn video_and_audio_reach_two_subscribers_intact() {
    let mut sim = Sim::new(1);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::vp8(2500), SourceSpec::opus()]);
    let bob = sim.add_peer("bob", &[]);
    let carol = sim.add_peer("carol", &[]);
    for p in [alice, bob, carol] {
        sim.join(p, "r").unwrap();
    }
    sim.connect_all();
    sim.run_for(Duration::from_secs(2));

    let tracks = sim.tracks_of("alice");
    assert_eq!(tracks.len(), 2, "alice publishes video and audio");
    let tags: Vec<u8> = sim.peer("alice").sources.iter().map(|s| s.tag).collect();
    for sub in ["bob", "carol"] {
        let p = sim.peer(sub);
        let vmid = p.mid_of(&tracks[0]).expect("video m-line negotiated");
        let video = p.frames_from(vmid);
        assert!(video.len() >= 40, "{sub} got {} video frames", video.len());
        assert!(video[0].keyframe, "{sub}'s video starts at a keyframe");
        for (i, f) in video.iter().enumerate() {
            assert!(
                frame_intact(MediaKind::Video, f, &[2500]),
                "{sub} frame {i} corrupt"
            );
            assert_eq!(f.source_tag(), tags[0]);
            if i > 0 {
                assert_eq!(
                    f.frame_no(),
                    video[i - 1].frame_no() + 1,
                    "{sub} missed a frame"
                );
            }
        }
        let amid = p.mid_of(&tracks[1]).expect("audio m-line negotiated");
        let audio = p.frames_from(amid);
        assert!(audio.len() >= 80, "{sub} got {} audio samples", audio.len());
        assert!(
            audio
                .iter()
                .all(|f| frame_intact(MediaKind::Audio, f, &[80]))
        );
    }
    // Nothing is echoed back to the publisher.
    assert!(sim.peer("alice").received.is_empty());
    let stats = sim.core.room_stats("r").unwrap();
    assert_eq!(stats.participants, vec!["alice", "bob", "carol"]);
    assert_eq!(stats.tracks.len(), 2);
    assert!(stats.tracks.iter().all(|t| t.subscribers == 2));
    let load = sim.core.load();
    assert_eq!(
        (
            load.rooms,
            load.participants,
            load.tracks,
            load.subscriptions
        ),
        (1, 3, 2, 4)
    );
    // Per-participant datagram counters add up to the node's, and each leg carried at least
    // the media it delivered.
    let per: Vec<_> = ["alice", "bob", "carol"]
        .iter()
        .map(|p| sim.core.participant_stats(p).unwrap())
        .collect();
    let packets_in: u64 = per.iter().map(|s| s.packets_in).sum();
    let packets_out: u64 = per.iter().map(|s| s.packets_out).sum();
    assert_eq!(packets_in, load.datagrams_in - load.datagrams_dropped);
    assert_eq!(packets_out, load.datagrams_out);
    for (s, name) in per.iter().zip(["alice", "bob", "carol"]) {
        assert!(s.packets_in > 0 && s.packets_out > 0, "{name}: {s:?}");
    }
    // alice sends one packet per 2500-byte video frame at least; bob and carol get as many.
    let video_frames = sim.peer("bob").received.len() as u64;
    assert!(per[0].packets_in >= video_frames, "{:?}", per[0]);
    assert!(per[1].packets_out >= video_frames, "{:?}", per[1]);
}

#[test]
fn everyone_publishes_and_receives_everyone_else() {
    let mut sim = Sim::new(2);
    sim.core.create_room("r").unwrap();
    let names = ["ann", "ben", "cat"];
    for n in names {
        let p = sim.add_peer(n, &[SourceSpec::h264(1800), SourceSpec::opus()]);
        sim.join(p, "r").unwrap();
    }
    sim.connect_all();
    sim.run_for(Duration::from_millis(1500));
    for receiver in names {
        for publisher in names.iter().filter(|p| **p != receiver) {
            let tracks = sim.tracks_of(publisher);
            let r = sim.peer(receiver);
            let mid = r.mid_of(&tracks[0]).expect("video negotiated");
            let frames = r.frames_from(mid);
            assert!(
                frames.len() >= 40,
                "{receiver} got {} frames of {publisher}",
                frames.len()
            );
            assert!(frames[0].keyframe);
            let tag = sim.peer(publisher).sources[0].tag;
            let mut last = None;
            for f in &frames {
                let size = if f.keyframe { 1800 * 3 } else { 1800 };
                let Some((t, no)) = crate::sim::h264_intact(&f.data, size) else {
                    panic!(
                        "corrupt h264 key={} len={} head={:?}",
                        f.keyframe,
                        f.data.len(),
                        &f.data[..40.min(f.data.len())]
                    );
                };
                assert_eq!(t, tag);
                if let Some(prev) = last {
                    assert_eq!(no, prev + 1);
                }
                last = Some(no);
            }
            let amid = r.mid_of(&tracks[1]).expect("audio negotiated");
            assert!(r.frames_from(amid).len() >= 60);
        }
    }
    assert_eq!(sim.core.load().subscriptions, 12);
}
