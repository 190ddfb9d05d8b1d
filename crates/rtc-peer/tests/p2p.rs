//! Two peers connected directly over loopback UDP: the publisher's test pattern must arrive
//! and decode on the other side. Proves the peer without any server in between.

use std::sync::Arc;
use std::time::Duration;

use rethink_rtc_peer::{Peer, PeerConfig};

const WAIT: Duration = Duration::from_secs(20);

/// Forwards every local candidate of `from` to `to` (trickle ICE) until `from` closes.
fn trickle(from: &Arc<Peer>, to: &Arc<Peer>) {
    let mut candidates = from.take_local_candidates().expect("candidates taken once");
    let to = Arc::clone(to);
    tokio::spawn(async move {
        while let Some(candidate) = candidates.recv().await {
            if let Err(error) = to.add_remote_candidate(&candidate).await {
                panic!("remote candidate {candidate} refused: {error}");
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_decodes_the_publishers_video() -> anyhow::Result<()> {
    let publisher = Arc::new(Peer::new(PeerConfig::publisher("alice")).await?);
    let receiver = Arc::new(Peer::new(PeerConfig::receiver("bob")).await?);
    trickle(&publisher, &receiver);
    trickle(&receiver, &publisher);

    let offer = publisher.create_offer().await?;
    assert!(offer.contains("H264"), "offer lacks H264:\n{offer}");
    let answer = receiver.apply_offer(&offer).await?;
    publisher.apply_answer(&answer).await?;

    publisher.wait_connected(WAIT).await?;
    receiver.wait_connected(WAIT).await?;
    let tracks = receiver.wait_decoded(1, 30, WAIT).await?;

    let (key, counters) = tracks
        .iter()
        .find(|(_, c)| c.frames_decoded >= 30)
        .expect("a decoded track");
    assert_eq!(Some(key), publisher.local_track());
    assert_eq!(counters.last_size, Some((320, 240)));
    assert!(publisher.frames_sent() >= 30);

    receiver.close().await?;
    publisher.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_publish_and_the_answerer_decodes_too() -> anyhow::Result<()> {
    let alice = Arc::new(Peer::new(PeerConfig::publisher("alice")).await?);
    let bob = Arc::new(Peer::new(PeerConfig::publisher("bob")).await?);
    trickle(&alice, &bob);
    trickle(&bob, &alice);

    // Candidates of the offerer can reach bob before the offer does; they are held back.
    let offer = alice.create_offer().await?;
    let answer = bob.apply_offer(&offer).await?;
    alice.apply_answer(&answer).await?;

    alice.wait_connected(WAIT).await?;
    bob.wait_connected(WAIT).await?;
    let at_alice = alice.wait_decoded(1, 30, WAIT).await?;
    let at_bob = bob.wait_decoded(1, 30, WAIT).await?;
    assert!(at_alice.iter().any(|(k, _)| Some(k) == bob.local_track()));
    assert!(at_bob.iter().any(|(k, _)| Some(k) == alice.local_track()));

    alice.close().await?;
    bob.wait_state(WAIT, |s| {
        !matches!(s, rethink_rtc_peer::RTCPeerConnectionState::Connected)
    })
    .await?;
    bob.close().await?;
    Ok(())
}

#[tokio::test]
async fn bad_sdp_is_an_error_not_a_panic() -> anyhow::Result<()> {
    let peer = Peer::new(PeerConfig::receiver("carol")).await?;
    assert!(peer.apply_offer("v=0\r\nthis is not sdp").await.is_err());
    assert!(peer.apply_answer("garbage").await.is_err());
    peer.close().await?;
    Ok(())
}
