//! Sessions without renegotiation (WHEP viewers, WHIP publishers) and ICE restarts: a viewer's
//! offered m-lines carry the room's tracks, and a peer that moves to a new address restarts
//! ICE and keeps receiving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rethink_sfu_core::{CoreError, IceUpdate, JoinMode, apply_ice_fragment, ice_credentials};
use str0m::Candidate;
use str0m::change::SdpAnswer;
use str0m::media::{Direction, MediaKind, Mid};

use crate::sim::{Peer, Sim, SourceSpec, h264_intact};

/// Adds a viewer peer whose offer receives on one m-line per entry of `kinds`; returns its
/// index and the mids of those m-lines.
fn add_viewer(sim: &mut Sim, name: &str, kinds: &[MediaKind]) -> (usize, Vec<Mid>) {
    let idx = sim.peers.len();
    let (mut rtc, addr) = sim.new_client_rtc();
    let mut api = rtc.sdp_api();
    let mids = kinds
        .iter()
        .map(|k| api.add_media(*k, Direction::RecvOnly, None, None, None))
        .collect();
    let (offer, pending) = api.apply().expect("an offer");
    sim.peers.push(Peer {
        name: name.into(),
        addr,
        rtc,
        timeout: sim.now,
        pending: Some(pending),
        offer: Some(offer.to_sdp_string()),
        sources: Vec::new(),
        received: Vec::new(),
        keyframe_requests: Vec::new(),
        media_added: HashMap::new(),
        connected: false,
        alive: true,
        publishing: false,
    });
    (idx, mids)
}

/// Joins peer `idx` with `mode`; returns the core's answer.
fn join_with(sim: &mut Sim, idx: usize, room: &str, mode: JoinMode) -> Result<String, CoreError> {
    let offer = sim.peers[idx].offer.clone().expect("peer offer");
    let name = sim.peers[idx].name.clone();
    let answer = sim.core.join_with(room, &name, &offer, mode, sim.now)?;
    let peer = &mut sim.peers[idx];
    let pending = peer.pending.take().expect("pending offer");
    peer.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .expect("peer accepts answer");
    peer.offer = None;
    sim.drain();
    Ok(answer)
}

/// Intact H264 frames of source `tag` the peer received on `mid`.
fn h264_frames(sim: &Sim, peer: &str, mid: Mid, tag: u8) -> usize {
    sim.peer(peer)
        .frames_from(mid)
        .iter()
        .filter(|f| {
            let size = if f.keyframe { 3000 } else { 1000 };
            h264_intact(&f.data, size).is_some_and(|(t, _)| t == tag)
        })
        .count()
}

fn renegotiations_of(sim: &Sim, participant: &str) -> usize {
    sim.offers_to(participant).len()
}

#[test]
fn viewer_receives_the_rooms_tracks_in_its_offered_m_lines() {
    let mut sim = Sim::new(11);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::h264(1000), SourceSpec::opus()]);
    sim.join(alice, "r").unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_millis(300));

    let (viewer, mids) = add_viewer(&mut sim, "viewer", &[MediaKind::Audio, MediaKind::Video]);
    join_with(&mut sim, viewer, "r", JoinMode::View).unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_secs(2));

    let tag = sim.peer("alice").sources[0].tag;
    let video = sim.peer("viewer").frames_from(mids[1]);
    assert!(video.len() >= 40, "viewer got {} video frames", video.len());
    assert!(video[0].keyframe, "the viewer's video starts at a keyframe");
    assert_eq!(h264_frames(&sim, "viewer", mids[1], tag), video.len());
    let audio = sim.peer("viewer").frames_from(mids[0]);
    assert!(
        audio.len() >= 80,
        "viewer got {} audio samples",
        audio.len()
    );
    assert_eq!(
        renegotiations_of(&sim, "viewer"),
        0,
        "a viewer never gets an offer"
    );

    let stats = sim.core.participant_stats("viewer").unwrap();
    assert_eq!(stats.subscribed.len(), 2);
    assert!(stats.unsent.is_empty());
    assert!(stats.published.is_empty());
    let room = sim.core.room_stats("r").unwrap();
    assert!(room.tracks.iter().all(|t| t.subscribers == 1));
}

#[test]
fn later_tracks_fill_free_m_lines_and_the_rest_wait_in_stats() {
    let mut sim = Sim::new(12);
    sim.core.create_room("r").unwrap();
    let (viewer, mids) = add_viewer(&mut sim, "viewer", &[MediaKind::Video]);
    join_with(&mut sim, viewer, "r", JoinMode::View).unwrap();
    sim.connect_all();

    // Published after the viewer joined: the free video m-line takes it.
    let alice = sim.add_peer("alice", &[SourceSpec::h264(1000)]);
    sim.join(alice, "r").unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_secs(1));
    let alice_tag = sim.peer("alice").sources[0].tag;
    let from_alice = h264_frames(&sim, "viewer", mids[0], alice_tag);
    assert!(from_alice >= 20, "viewer got {from_alice} frames of alice");

    // A second video track does not fit: not sent, listed as unsent.
    let bob = sim.add_peer("bob", &[SourceSpec::h264(1000)]);
    sim.join(bob, "r").unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_secs(1));
    let bob_tag = sim.peer("bob").sources[0].tag;
    assert_eq!(h264_frames(&sim, "viewer", mids[0], bob_tag), 0);
    let bob_track = sim.tracks_of("bob")[0].clone();
    let stats = sim.core.participant_stats("viewer").unwrap();
    assert_eq!(stats.unsent.len(), 1);
    assert_eq!(stats.unsent[0].as_str(), bob_track);
    assert_eq!(stats.subscribed.len(), 1);

    // Alice leaves: her m-line is free again and bob's track takes it.
    sim.core.leave("alice", sim.now).unwrap();
    sim.peer_mut("alice").alive = false;
    sim.run_for(Duration::from_secs(1));
    let from_bob = h264_frames(&sim, "viewer", mids[0], bob_tag);
    assert!(from_bob >= 20, "viewer got {from_bob} frames of bob");
    let stats = sim.core.participant_stats("viewer").unwrap();
    assert!(stats.unsent.is_empty());
    assert_eq!(stats.subscribed.len(), 1);
    assert_eq!(stats.subscribed[0].0.as_str(), bob_track);
    assert_eq!(renegotiations_of(&sim, "viewer"), 0);
}

#[test]
fn viewer_offers_that_send_are_refused_and_publishers_receive_nothing() {
    let mut sim = Sim::new(13);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::h264(1000)]);
    let err = join_with(&mut sim, alice, "r", JoinMode::View).unwrap_err();
    assert!(
        matches!(&err, CoreError::BadSdp(m) if m.contains("sendonly")),
        "{err}"
    );
    assert!(sim.core.participant_stats("alice").is_none());

    // Ingest only: bob publishes, receives nothing and is never offered anything.
    let mut sim = Sim::new(14);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::h264(1000)]);
    sim.join(alice, "r").unwrap();
    let bob = sim.add_peer("bob", &[SourceSpec::h264(1000)]);
    join_with(&mut sim, bob, "r", JoinMode::Publish).unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_secs(1));
    assert!(sim.peer("bob").received.is_empty());
    assert_eq!(renegotiations_of(&sim, "bob"), 0);
    let bob_track = sim.tracks_of("bob")[0].clone();
    let mid = sim
        .peer("alice")
        .mid_of(&bob_track)
        .expect("alice receives bob");
    assert!(sim.peer("alice").frames_from(mid).len() >= 20);
}

/// Moves a peer to a new address: its old one stops receiving, the new candidate replaces
/// the old. Returns the old address.
fn move_peer(sim: &mut Sim, name: &str, new: SocketAddr) -> SocketAddr {
    let p = sim.peer_mut(name);
    let old = p.addr;
    p.addr = new;
    p.rtc
        .add_local_candidate(Candidate::host(new, "udp").unwrap());
    p.rtc
        .direct_api()
        .invalidate_candidate(&Candidate::host(old, "udp").unwrap());
    old
}

#[test]
fn a_peer_restarts_ice_from_a_new_address_with_an_offer_and_keeps_receiving() {
    let mut sim = Sim::new(15);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::h264(1000)]);
    let bob = sim.add_peer("bob", &[]);
    sim.join(alice, "r").unwrap();
    sim.join(bob, "r").unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_secs(1));
    let track = sim.tracks_of("alice")[0].clone();
    let mid = sim.peer("bob").mid_of(&track).expect("bob receives alice");
    let tag = sim.peer("alice").sources[0].tag;
    let before = h264_frames(&sim, "bob", mid, tag);
    assert!(before >= 20, "bob got {before} frames before the move");

    let new: SocketAddr = "10.0.9.9:7000".parse().unwrap();
    move_peer(&mut sim, "bob", new);
    // Bob's network changed: nothing reaches him until ICE found the new path.
    sim.run_for(Duration::from_millis(500));
    let stalled = h264_frames(&sim, "bob", mid, tag);
    let (offer, pending) = {
        let mut api = sim.peer_mut("bob").rtc.sdp_api();
        api.ice_restart(true);
        api.apply().expect("a restart offer")
    };
    let answer = sim
        .core
        .accept_offer("bob", &offer.to_sdp_string(), sim.now)
        .unwrap();
    sim.peer_mut("bob")
        .rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
        .expect("bob accepts the restart answer");
    sim.drain();
    sim.run_for(Duration::from_secs(2));

    let after = h264_frames(&sim, "bob", mid, tag) - stalled;
    assert!(after >= 40, "bob got {after} frames after the restart");
    let stats = sim.core.participant_stats("bob").unwrap();
    assert!(stats.connected);
    assert!(sim.left_events().is_empty(), "nobody left");
    assert!(
        sim.peer("bob").received.last().unwrap().at > sim.now - Duration::from_millis(100),
        "frames still flow at the end"
    );
}

#[test]
fn a_viewer_restarts_ice_with_an_sdp_fragment_and_keeps_receiving() {
    let mut sim = Sim::new(16);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::h264(1000)]);
    sim.join(alice, "r").unwrap();
    let (viewer, mids) = add_viewer(&mut sim, "viewer", &[MediaKind::Video]);
    let answer = join_with(&mut sim, viewer, "r", JoinMode::View).unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_secs(1));
    let tag = sim.peer("alice").sources[0].tag;
    assert!(h264_frames(&sim, "viewer", mids[0], tag) >= 20);

    // A trickled candidate with the current credentials is just added.
    let creds = sim
        .peer_mut("viewer")
        .rtc
        .direct_api()
        .local_ice_credentials();
    let (ufrag, pwd) = (creds.ufrag, creds.pass);
    let trickle = format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
         a=candidate:1 1 udp 2130706431 10.0.1.1 5000 typ host\r\na=end-of-candidates\r\n"
    );
    assert_eq!(
        sim.core.patch_ice("viewer", &trickle, sim.now).unwrap(),
        IceUpdate::Trickled
    );
    assert!(
        sim.core
            .patch_ice("viewer", "a=ice-ufrag:zzzz\r\n", sim.now)
            .is_err()
    );
    assert!(
        sim.core
            .patch_ice("viewer", "a=candidate:nonsense\r\n", sim.now)
            .is_err()
    );

    let new: SocketAddr = "10.0.9.8:7000".parse().unwrap();
    move_peer(&mut sim, "viewer", new);
    sim.run_for(Duration::from_millis(300));
    let stalled = h264_frames(&sim, "viewer", mids[0], tag);
    let (offer, pending) = {
        let mut api = sim.peer_mut("viewer").rtc.sdp_api();
        api.ice_restart(true);
        api.apply().expect("a restart offer")
    };
    let offer = offer.to_sdp_string();
    let (new_ufrag, new_pwd) = ice_credentials(&offer).expect("ice credentials");
    let candidates: String = offer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    assert!(candidates.contains("10.0.9.8 7000"), "{candidates}");
    let fragment = format!(
        "a=ice-ufrag:{new_ufrag}\r\na=ice-pwd:{new_pwd}\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\n\
         a=mid:0\r\n{candidates}a=end-of-candidates\r\n"
    );
    let IceUpdate::Restarted {
        fragment: ours,
        ufrag: our_ufrag,
    } = sim.core.patch_ice("viewer", &fragment, sim.now).unwrap()
    else {
        panic!("new credentials restart ice");
    };
    let (old_server_ufrag, _) = ice_credentials(&answer).expect("ice credentials");
    let (server_ufrag, _) = ice_credentials(&ours).expect("ice credentials");
    assert_eq!(server_ufrag, our_ufrag);
    assert_ne!(
        server_ufrag, old_server_ufrag,
        "the server has new credentials"
    );
    assert!(ours.contains("a=candidate:") && ours.ends_with("a=end-of-candidates\r\n"));
    // The client completes its restart with its first answer under the new credentials.
    let restart_answer = apply_ice_fragment(&answer, &ours).expect("fragment with credentials");
    sim.peer_mut("viewer")
        .rtc
        .sdp_api()
        .accept_answer(
            pending,
            SdpAnswer::from_sdp_string(&restart_answer).unwrap(),
        )
        .expect("viewer accepts the restart answer");
    sim.drain();
    sim.run_for(Duration::from_secs(2));

    let after = h264_frames(&sim, "viewer", mids[0], tag) - stalled;
    assert!(after >= 40, "viewer got {after} frames after the restart");
    assert!(sim.left_events().is_empty());
    assert_eq!(renegotiations_of(&sim, "viewer"), 0);
    // The same fragment again changes nothing: the credentials are current now.
    assert_eq!(
        sim.core.patch_ice("viewer", &fragment, sim.now).unwrap(),
        IceUpdate::Trickled
    );
}

#[test]
fn renegotiating_sessions_restart_ice_with_an_offer_not_a_fragment() {
    let mut sim = Sim::new(17);
    sim.core.create_room("r").unwrap();
    let bob = sim.add_peer("bob", &[]);
    sim.join(bob, "r").unwrap();
    let frag = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n";
    let err = sim.core.patch_ice("bob", frag, sim.now).unwrap_err();
    assert!(
        matches!(&err, CoreError::BadSdp(m) if m.contains("new offer")),
        "{err}"
    );
    assert!(matches!(
        sim.core.patch_ice("nobody", frag, sim.now),
        Err(CoreError::ParticipantNotFound(_))
    ));
}
