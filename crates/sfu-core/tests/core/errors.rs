//! Bad input gets a `CoreError`, never a panic; random input is survived.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use crate::sim::{SERVER, Sim, SourceSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rethink_sfu_core::{CoreConfig, CoreError, SfuCore};

#[test]
fn refused_calls_name_the_problem() {
    let mut sim = Sim::with_config(1, |c| c.max_participants_per_room = 2);
    let core = &mut sim.core;
    core.create_room("r").unwrap();
    assert_eq!(
        core.create_room("r"),
        Err(CoreError::RoomExists("r".into()))
    );
    assert!(matches!(core.create_room(""), Err(CoreError::InvalidId(_))));
    assert!(matches!(
        core.create_room("a\nb"),
        Err(CoreError::InvalidId(_))
    ));
    assert!(matches!(
        core.create_room(&"x".repeat(300)),
        Err(CoreError::InvalidId(_))
    ));

    let alice = sim.add_peer("alice", &[SourceSpec::vp8(500)]);
    let offer = sim.peers[alice].offer.clone().unwrap();
    let now = sim.now;
    let core = &mut sim.core;
    assert_eq!(
        core.join("nope", "alice", &offer, now),
        Err(CoreError::RoomNotFound("nope".into()))
    );
    assert!(matches!(
        core.join("r", "alice", "garbage", now),
        Err(CoreError::BadSdp(_))
    ));
    // Parses, but has no fingerprint: refused by the WebRTC stack.
    let no_fingerprint: String = offer
        .lines()
        .filter(|l| !l.starts_with("a=fingerprint"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    assert!(matches!(
        core.join("r", "alice", &no_fingerprint, now),
        Err(CoreError::BadSdp(_))
    ));
    assert!(matches!(
        core.join("r", "alice", &"v=0\r\n".repeat(20_000), now),
        Err(CoreError::LimitExceeded(_))
    ));
    // Failed joins leave nothing behind: the same id joins fine afterwards.
    assert_eq!(core.load().participants, 0);
    sim.join(alice, "r").unwrap();
    let dup = sim.add_peer("alice", &[]);
    assert_eq!(
        sim.join(dup, "r"),
        Err(CoreError::ParticipantExists("alice".into()))
    );
    sim.peers.pop();
    let bob = sim.add_peer("bob", &[]);
    sim.join(bob, "r").unwrap();
    let carol = sim.add_peer("carol", &[]);
    assert!(matches!(
        sim.join(carol, "r"),
        Err(CoreError::LimitExceeded(_))
    ));

    let now = sim.now;
    let core = &mut sim.core;
    assert_eq!(
        core.accept_answer("nobody", "v=0", now),
        Err(CoreError::ParticipantNotFound("nobody".into()))
    );
    assert!(matches!(
        core.accept_answer("alice", "garbage", now),
        Err(CoreError::BadSdp(_))
    ));
    assert!(matches!(
        core.accept_offer("alice", "garbage", now),
        Err(CoreError::BadSdp(_))
    ));
    assert!(matches!(
        core.add_remote_candidate("alice", "candidate:nonsense"),
        Err(CoreError::BadCandidate(_))
    ));
    assert_eq!(core.add_remote_candidate("alice", ""), Ok(()));
    core.add_remote_candidate(
        "alice",
        "a=candidate:1 1 udp 2113929471 10.0.1.1 5000 typ host",
    )
    .unwrap();
    assert!(core.room_stats("nope").is_none());
    assert!(core.participant_stats("nobody").is_none());
}

#[test]
fn answer_without_an_offer_is_refused() {
    let mut sim = Sim::new(2);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::vp8(500)]);
    sim.join(alice, "r").unwrap();
    sim.connect_all();
    // Alice alone: nothing to subscribe to, so no server offer is outstanding.
    let answer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";
    assert_eq!(
        sim.core.accept_answer("alice", answer, sim.now),
        Err(CoreError::NoPendingOffer("alice".into()))
    );
}

#[test]
fn unusable_configuration_is_refused() {
    assert!(matches!(
        SfuCore::new(CoreConfig::default()),
        Err(CoreError::Config(_))
    ));
    let unspecified = CoreConfig {
        candidates: vec!["0.0.0.0:3478".parse().unwrap()],
        ..CoreConfig::default()
    };
    assert!(matches!(
        SfuCore::new(unspecified),
        Err(CoreError::Config(_))
    ));
}

/// Byte strings that look like each protocol the socket demultiplexes, so the fuzzing reaches
/// the STUN, DTLS, RTP and RTCP parsers and not only the first-byte check.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let first = prop_oneof![
        Just(0u8),
        Just(1),
        Just(20),
        Just(22),
        Just(23),
        Just(128),
        Just(129),
        Just(144),
        Just(200),
        any::<u8>()
    ];
    (first, prop::collection::vec(any::<u8>(), 0..1500)).prop_map(|(f, mut rest)| {
        rest.insert(0, f);
        rest
    })
}

#[test]
fn random_datagrams_and_sdp_never_panic() {
    // A live call, so datagrams from a known address reach a real session.
    let mut sim = Sim::new(9);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::vp8(800)]);
    let bob = sim.add_peer("bob", &[]);
    sim.join(alice, "r").unwrap();
    sim.join(bob, "r").unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_millis(300));
    let known: Vec<SocketAddr> = sim.peers.iter().map(|p| p.addr).collect();
    let sim = RefCell::new(sim);

    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(datagram(), any::<bool>(), any::<u16>()),
            |(data, from_known, port)| {
                let mut s = sim.borrow_mut();
                let source = if from_known {
                    known[port as usize % known.len()]
                } else {
                    SocketAddr::from(([10, 9, 9, 9], port))
                };
                let now = s.now + Duration::from_millis(1);
                s.now = now;
                s.core.handle_datagram(now, source, SERVER, &data);
                s.core.handle_timeout(now);
                while !matches!(s.core.poll_output(), rethink_sfu_core::Output::Timeout(_)) {}
                Ok(())
            },
        )
        .unwrap();

    let mut runner = TestRunner::new(Config {
        cases: 200,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(
                ".{0,400}",
                "(v=0\r\n)?[a-z]=[ -~]{0,60}(\r\n[a-z]=[ -~]{0,60}){0,12}",
            ),
            |(junk, sdp_like)| {
                let mut s = sim.borrow_mut();
                let now = s.now;
                for text in [&junk, &sdp_like] {
                    let _ = s.core.join("r", "fuzz", text, now);
                    let _ = s.core.accept_answer("alice", text, now);
                    let _ = s.core.accept_offer("fuzz", text, now);
                    let _ = s.core.add_remote_candidate("alice", text);
                    let _ = s
                        .core
                        .set_subscribed("bob", &text.as_str().into(), false, now);
                }
                prop_assert!(
                    s.core.participant_stats("fuzz").is_none() || s.core.leave("fuzz", now).is_ok()
                );
                Ok(())
            },
        )
        .unwrap();

    // The call survived all of it.
    let mut s = sim.into_inner();
    s.run_for(Duration::from_millis(500));
    let track = s.tracks_of("alice")[0].clone();
    let mid = s.peer("bob").mid_of(&track).unwrap();
    let before = s.peer("bob").frames_from(mid).len();
    s.run_for(Duration::from_millis(500));
    assert!(s.peer("bob").frames_from(mid).len() > before + 10);
}
