//! A minimal WebRTC client peer on str0m over a real UDP socket, for ICE/DTLS checks against the
//! service. It offers one video m-line (send/receive) and drives its session until a condition
//! holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;

pub struct TestPeer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: Option<SdpPendingOffer>,
    /// The SDP offer to hand to `Join`.
    pub offer: String,
    /// ICE reached connected.
    pub ice_connected: bool,
    /// ICE and DTLS are up.
    pub connected: bool,
}

impl TestPeer {
    /// Binds a socket on loopback and makes the offer.
    pub async fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder()
            .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        Self {
            rtc,
            socket,
            local,
            pending: Some(pending),
            offer: offer.to_sdp_string(),
            ice_connected: false,
            connected: false,
        }
    }

    /// Applies the server's answer to our offer.
    pub fn accept_answer(&mut self, answer: &str) {
        let answer = SdpAnswer::from_sdp_string(answer).expect("answer parses");
        let pending = self.pending.take().expect("an offer is pending");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("answer accepted");
    }

    /// Makes a new offer that adds a send-only track of `kind`; the answer goes to
    /// [`Self::accept_answer`].
    pub fn offer_track(&mut self, kind: MediaKind) -> String {
        let mut api = self.rtc.sdp_api();
        api.add_media(kind, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        self.pending = Some(pending);
        offer.to_sdp_string()
    }

    /// Applies a server offer (renegotiation); returns our answer.
    pub fn accept_offer(&mut self, offer: &str) -> String {
        let offer = SdpOffer::from_sdp_string(offer).expect("offer parses");
        self.rtc
            .sdp_api()
            .accept_offer(offer)
            .expect("offer accepted")
            .to_sdp_string()
    }

    /// Runs the session until `done` holds or `limit` passes; returns whether it held.
    pub async fn run_until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let end = tokio::time::Instant::now() + limit;
        let mut buf = vec![0u8; 2048];
        loop {
            let timeout = loop {
                match self.rtc.poll_output().expect("poll") {
                    Output::Transmit(t) => {
                        let _ = self.socket.send_to(&t.contents, t.destination).await;
                    }
                    Output::Event(event) => match event {
                        Event::IceConnectionStateChange(IceConnectionState::Connected)
                        | Event::IceConnectionStateChange(IceConnectionState::Completed) => {
                            self.ice_connected = true
                        }
                        Event::Connected => self.connected = true,
                        _ => {}
                    },
                    Output::Timeout(t) => break t,
                }
            };
            if done(self) {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            let wake = tokio::time::Instant::from_std(timeout).min(end);
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((len, source)) = received {
                        let receive = Receive::new(Protocol::Udp, source, self.local, &buf[..len]);
                        if let Ok(receive) = receive {
                            let _ = self.rtc.handle_input(Input::Receive(Instant::now(), receive));
                        }
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
                }
            }
        }
    }
}
