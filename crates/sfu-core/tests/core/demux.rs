//! Datagrams from sources no session knows: dropped and counted before any session sees them.

use std::net::SocketAddr;
use std::time::Duration;

use crate::sim::{SERVER, Sim, SourceSpec, is_rtp};

/// A STUN binding request naming `username`, with a priority and a (wrong) message integrity:
/// it parses, but no session could verify it.
fn stun_request(username: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (kind, value) in [
        (0x0006u16, username.as_bytes()),
        (0x0024, &[0, 0, 0, 1][..]),
        (0x0008, &[0; 20][..]),
    ] {
        body.extend_from_slice(&kind.to_be_bytes());
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut out = vec![0x00, 0x01];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    out.extend_from_slice(&[9; 12]);
    out.extend_from_slice(&body);
    out
}

/// A DTLS handshake record header and some bytes.
fn dtls_looking() -> Vec<u8> {
    let mut out = vec![0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 27];
    out.extend_from_slice(&[0; 27]);
    out
}

#[test]
fn datagrams_from_unknown_sources_are_dropped_and_reach_no_participant() {
    let mut sim = Sim::new(21);
    sim.core.create_room("r").unwrap();
    let alice = sim.add_peer("alice", &[SourceSpec::vp8(1200)]);
    let bob = sim.add_peer("bob", &[]);
    sim.join(alice, "r").unwrap();
    sim.join(bob, "r").unwrap();
    sim.connect_all();
    sim.run_for(Duration::from_millis(500));
    let alice_addr = sim.peer("alice").addr;

    // A real media datagram of alice's, in flight towards the server.
    let alice_media = |sim: &Sim| {
        sim.net
            .queue
            .iter()
            .any(|(_, src, dst, data)| *src == alice_addr && *dst == SERVER && is_rtp(data))
    };
    let end = sim.now + Duration::from_secs(1);
    assert!(sim.run_until(end, alice_media));
    let rtp = sim
        .net
        .queue
        .iter()
        .find(|(_, src, dst, data)| *src == alice_addr && *dst == SERVER && is_rtp(data))
        .map(|(.., data)| data.clone())
        .expect("alice's media in flight");
    let before_unknown = sim.core.datagrams_from_unknown_sources();
    let before_dropped = sim.core.load().datagrams_dropped;
    let packets_in = |sim: &Sim, who: &str| sim.core.participant_stats(who).unwrap().packets_in;
    let (alice_in, bob_in) = (packets_in(&sim, "alice"), packets_in(&sim, "bob"));

    let stranger: SocketAddr = "10.9.9.9:4000".parse().unwrap();
    let garbage: Vec<Vec<u8>> = vec![
        rtp.clone(),    // alice's own packet, replayed from elsewhere
        vec![0x80; 60], // RTP-looking
        dtls_looking(),
        stun_request("nobody:x"),        // STUN for a ufrag no session has
        b"hello, media server".to_vec(), // nothing at all
    ];
    let now = sim.now;
    for data in &garbage {
        sim.core.handle_datagram(now, stranger, SERVER, data);
    }
    sim.drain();
    assert_eq!(
        sim.core.datagrams_from_unknown_sources() - before_unknown,
        // The last one is not STUN/DTLS/RTP at all: dropped before routing.
        4,
        "every routable datagram of the stranger is counted as from an unknown source"
    );
    assert_eq!(sim.core.load().datagrams_dropped - before_dropped, 5);
    assert_eq!(
        sim.core.load().datagrams_unknown_source,
        sim.core.datagrams_from_unknown_sources()
    );
    assert_eq!(packets_in(&sim, "alice"), alice_in, "nothing reached alice");
    assert_eq!(packets_in(&sim, "bob"), bob_in, "nothing reached bob");

    // The same packet from alice's own address is hers.
    sim.core.handle_datagram(now, alice_addr, SERVER, &rtp);
    sim.drain();
    assert_eq!(packets_in(&sim, "alice"), alice_in + 1);
    assert_eq!(
        sim.core.datagrams_from_unknown_sources() - before_unknown,
        4
    );

    // The call goes on.
    let track = sim.tracks_of("alice")[0].clone();
    let mid = sim.peer("bob").mid_of(&track).unwrap();
    let frames = sim.peer("bob").frames_from(mid).len();
    sim.run_for(Duration::from_millis(500));
    assert!(sim.peer("bob").frames_from(mid).len() > frames);
}
