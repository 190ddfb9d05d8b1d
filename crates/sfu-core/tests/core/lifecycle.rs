//! Leaving, narrowing, closing, timeouts, late publishing: what comes must also go cleanly.

use std::time::Duration;

use crate::sim::{Sim, SourceSpec};
use rethink_sfu_core::{CoreError, LeaveReason, TrackId};

fn three_in_a_call() -> (Sim, Vec<String>) {
    let mut sim = Sim::new(11);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::vp8(1200), SourceSpec::opus()]);
    let bob = sim.add_peer("bob", &[]);
    let carol = sim.add_peer("carol", &[]);
    for p in [alice, bob, carol] {
        sim.join(p, "r").unwrap();
    }
    sim.connect_all();
    sim.run_for(Duration::from_secs(1));
    let tracks = sim.tracks_of("alice");
    (sim, tracks)
}

#[test]
fn leave_unpublishes_and_cleans_up_everywhere() {
    let (mut sim, tracks) = three_in_a_call();
    let bob_mid = sim.peer("bob").mid_of(&tracks[0]).unwrap();
    assert!(!sim.peer("bob").frames_from(bob_mid).is_empty());

    sim.core.leave("alice", sim.now).unwrap();
    sim.peer_mut("alice").publishing = false;
    sim.run_for(Duration::from_millis(500));

    let mut unpublished = sim.unpublished();
    unpublished.sort();
    let mut expected = tracks.clone();
    expected.sort();
    assert_eq!(unpublished, expected);
    assert_eq!(
        sim.left_events(),
        vec![("alice".to_string(), LeaveReason::Left)]
    );
    // The subscribers' m-lines for alice's tracks were stopped by renegotiation.
    for sub in ["bob", "carol"] {
        let p = sim.peer(sub);
        for t in &tracks {
            let mid = p.mid_of(t).unwrap();
            assert!(p.media_stopped(mid), "{sub}'s m-line for {t} still active");
        }
    }
    // Alice was told goodbye (DTLS close) and her session ended.
    assert!(!sim.peer("alice").alive || !sim.peer("alice").rtc.is_connected());

    let room = sim.core.room_stats("r").unwrap();
    assert_eq!(room.participants, vec!["bob", "carol"]);
    assert!(room.tracks.is_empty());
    let load = sim.core.load();
    assert_eq!(
        (load.participants, load.tracks, load.subscriptions),
        (2, 0, 0)
    );
    assert!(sim.core.participant_stats("alice").is_none());
    assert!(
        sim.core
            .participant_stats("bob")
            .unwrap()
            .subscribed
            .is_empty()
    );
    assert_eq!(
        sim.core.leave("alice", sim.now),
        Err(CoreError::ParticipantNotFound("alice".into()))
    );
}

#[test]
fn narrowing_stops_one_track_and_restoring_brings_it_back() {
    let (mut sim, tracks) = three_in_a_call();
    let video = TrackId::from(tracks[0].as_str());
    let old_mid = sim.peer("bob").mid_of(&tracks[0]).unwrap();

    sim.core
        .set_subscribed("bob", &video, false, sim.now)
        .unwrap();
    sim.run_for(Duration::from_millis(100));
    assert!(sim.peer("bob").media_stopped(old_mid));
    let video_before = sim.peer("bob").frames_from(old_mid).len();
    let audio_mid = sim.peer("bob").mid_of(&tracks[1]).unwrap();
    let audio_before = sim.peer("bob").frames_from(audio_mid).len();
    let carol_mid = sim.peer("carol").mid_of(&tracks[0]).unwrap();
    let carol_before = sim.peer("carol").frames_from(carol_mid).len();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.peer("bob").frames_from(old_mid).len(), video_before);
    assert!(sim.peer("bob").frames_from(audio_mid).len() > audio_before + 40);
    assert!(sim.peer("carol").frames_from(carol_mid).len() > carol_before + 25);
    let subscribed = sim.core.participant_stats("bob").unwrap().subscribed;
    assert_eq!(subscribed.len(), 1);

    // Back on: a fresh m-line, starting at a keyframe.
    sim.peer_mut("bob").media_added.remove(&old_mid);
    sim.core
        .set_subscribed("bob", &video, true, sim.now)
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    let new_mid = sim
        .peer("bob")
        .mid_of(&tracks[0])
        .expect("renegotiated again");
    let frames = sim.peer("bob").frames_from(new_mid);
    assert!(
        frames.len() > 20,
        "only {} frames after restoring",
        frames.len()
    );
    assert!(frames[0].keyframe);

    let err = sim
        .core
        .set_subscribed("bob", &TrackId::from("nobody-0"), false, sim.now);
    assert_eq!(err, Err(CoreError::TrackNotFound("nobody-0".into())));
}

#[test]
fn a_track_published_later_reaches_everyone() {
    let (mut sim, _) = three_in_a_call();
    sim.add_source("bob", SourceSpec::vp8(800)).unwrap();
    sim.run_for(Duration::from_secs(1));
    let bob_tracks = sim.tracks_of("bob");
    assert_eq!(bob_tracks.len(), 1);
    for sub in ["alice", "carol"] {
        let p = sim.peer(sub);
        let mid = p.mid_of(&bob_tracks[0]).expect("bob's track negotiated");
        assert!(p.frames_from(mid).len() > 20, "{sub} lacks bob's video");
    }
}

#[test]
fn close_room_removes_everyone() {
    let (mut sim, _) = three_in_a_call();
    sim.core.close_room("r", sim.now).unwrap();
    sim.run_for(Duration::from_millis(100));
    let mut left = sim.left_events();
    left.sort_by(|a, b| a.0.cmp(&b.0));
    let reasons: Vec<LeaveReason> = left.iter().map(|l| l.1).collect();
    assert_eq!(reasons, vec![LeaveReason::RoomClosed; 3]);
    assert_eq!(sim.core.load().participants, 0);
    assert_eq!(sim.core.load().tracks, 0);
    assert!(!sim.core.has_room("r"));
    assert_eq!(
        sim.core.close_room("r", sim.now),
        Err(CoreError::RoomNotFound("r".into()))
    );
}

#[test]
fn peers_that_never_connect_or_vanish_are_removed() {
    let mut sim = Sim::with_config(5, |c| {
        c.connect_timeout = Duration::from_secs(2);
        c.disconnect_grace = Duration::from_secs(1);
    });
    sim.core.create_room("r").unwrap();
    let ghost = sim.add_peer("ghost", &[]);
    let alice = sim.add_peer("alice", &[SourceSpec::vp8(500)]);
    // The ghost's offer arrives but the peer never sends a packet.
    sim.peers[ghost].alive = false;
    sim.join(ghost, "r").unwrap();
    sim.join(alice, "r").unwrap();
    sim.run_for(Duration::from_secs(3));
    assert_eq!(
        sim.left_events(),
        vec![("ghost".to_string(), LeaveReason::ConnectTimeout)]
    );

    // Alice connected, then her network goes away.
    assert!(sim.peer("alice").connected);
    sim.peer_mut("alice").alive = false;
    let end = sim.now + Duration::from_secs(30);
    assert!(sim.run_until(end, |s| s.left_events().len() == 2));
    assert_eq!(
        sim.left_events()[1],
        ("alice".to_string(), LeaveReason::Disconnected)
    );
    assert_eq!(sim.unpublished().len(), 1);
    assert_eq!(sim.core.load().participants, 0);
}

#[test]
fn a_publisher_stopping_a_track_unpublishes_it() {
    let (mut sim, tracks) = three_in_a_call();
    let video_mid = sim.peer("alice").sources[0].mid;
    sim.stop_source("alice", video_mid).unwrap();
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.unpublished(), vec![tracks[0].clone()]);
    for sub in ["bob", "carol"] {
        let p = sim.peer(sub);
        assert!(p.media_stopped(p.mid_of(&tracks[0]).unwrap()));
        assert!(!p.media_stopped(p.mid_of(&tracks[1]).unwrap()));
    }
    assert_eq!(sim.core.load().tracks, 1);
}

#[test]
fn an_unanswered_offer_is_made_again() {
    let mut sim = Sim::with_config(13, |c| c.answer_timeout = Duration::from_secs(1));
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::vp8(700)]);
    let bob = sim.add_peer("bob", &[]);
    sim.join(alice, "r").unwrap();
    sim.auto_answer = false;
    sim.join(bob, "r").unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_millis(500));
    assert_eq!(
        sim.offers_to("bob").len(),
        1,
        "one offer while the first is outstanding"
    );
    // The first offer is lost; after the answer timeout the same change is offered again.
    sim.run_for(Duration::from_millis(800));
    let offers = sim.offers_to("bob");
    assert_eq!(offers.len(), 2);
    sim.renegotiate("bob", &offers[1]);
    sim.run_for(Duration::from_secs(1));
    let track = sim.tracks_of("alice")[0].clone();
    let mid = sim
        .peer("bob")
        .mid_of(&track)
        .expect("negotiated by the second offer");
    assert!(sim.peer("bob").frames_from(mid).len() > 20);
}

#[test]
fn a_peer_offer_during_a_server_offer_withdraws_and_repeats_it() {
    let mut sim = Sim::new(17);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::vp8(700)]);
    let bob = sim.add_peer("bob", &[]);
    sim.join(alice, "r").unwrap();
    sim.join(bob, "r").unwrap();
    sim.auto_answer = false;
    sim.connect_all();
    sim.run_for(Duration::from_millis(200));
    // Bob holds an unanswered server offer (alice's track).
    assert_eq!(sim.offers_to("bob").len(), 1);
    // Bob starts publishing before answering (glare): his offer wins, ours is made again.
    sim.add_source("bob", SourceSpec::vp8(600)).unwrap();
    let offers = sim.offers_to("bob");
    assert_eq!(offers.len(), 2, "the withdrawn offer is repeated");
    // Answering the stale first offer is refused; the new one works.
    let stale = offers[0].clone();
    let peer_answer = {
        let p = sim.peer_mut("bob");
        let offer = str0m::change::SdpOffer::from_sdp_string(&stale).unwrap();
        p.rtc
            .sdp_api()
            .accept_offer(offer)
            .map(|a| a.to_sdp_string())
    };
    if let Ok(answer) = peer_answer {
        assert!(sim.core.accept_answer("bob", &answer, sim.now).is_err());
    }
    let offers = sim.offers_to("bob");
    let latest = offers.last().unwrap().clone();
    sim.renegotiate("bob", &latest);
    // Alice gets bob's new track through her own offer.
    for o in sim.offers_to("alice") {
        sim.renegotiate("alice", &o);
    }
    sim.run_for(Duration::from_secs(1));
    let a_track = sim.tracks_of("alice")[0].clone();
    let b_track = sim.tracks_of("bob")[0].clone();
    let bob_mid = sim
        .peer("bob")
        .mid_of(&a_track)
        .expect("bob receives alice");
    assert!(sim.peer("bob").frames_from(bob_mid).len() > 20);
    let alice_mid = sim
        .peer("alice")
        .mid_of(&b_track)
        .expect("alice receives bob");
    assert!(sim.peer("alice").frames_from(alice_mid).len() > 20);
}
