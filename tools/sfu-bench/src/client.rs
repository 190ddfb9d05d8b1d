//! Lightweight str0m clients: one tokio task per client owns its `Rtc` and its UDP socket.
//! Renegotiation offers come in through the shared relay's channel (`rethink-sfu-client`) and
//! are answered through it, so the media loop never waits on gRPC.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rethink_sfu_client::RenegotiationOffer;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;

use crate::signal::Signal;

use crate::media::{self, VideoLoop};
use crate::pacing::{self, Pacer, SendLog};

/// A client before its first answer: the offer to send with `Join`.
pub struct Pending {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    pending: SdpPendingOffer,
    mid: Mid,
    /// SDP offer for `Join`.
    pub offer: String,
}

/// What one subscriber saw.
#[derive(Default)]
pub struct Received {
    /// One record per frame whose stamped packet arrived: (frame number, latency of the
    /// stamped first packet in µs, latency of the frame's last packet from the moment the
    /// publisher's pacer sent it, in µs, or `u32::MAX` when the marker packet never came).
    pub frames: Mutex<Vec<(u64, u32, u32)>>,
    /// Set once the first media packet arrived.
    pub first_packet: AtomicBool,
    /// RTP media packets received (retransmissions included).
    pub packets: AtomicU64,
    /// Highest extended RTP sequence number seen.
    pub max_seq: AtomicU64,
    /// UDP datagrams received (RTP, RTX, padding, RTCP, STUN).
    pub datagrams: AtomicU64,
}

/// What the publisher did.
#[derive(Default)]
pub struct Sent {
    /// Number of the next frame to send.
    pub next_frame: AtomicU64,
    /// Set once ICE and DTLS are up.
    pub connected: AtomicBool,
    /// Keyframe requests received.
    pub keyframe_requests: AtomicU64,
    /// When each recent frame's first packet left the publisher.
    pub first_packets: SendLog,
    /// When each recent frame's last packet left the publisher.
    pub last_packets: SendLog,
}

/// Builds a client with one video m-line in `direction`, bound on loopback. In RTP mode the
/// client sees every RTP packet instead of reassembled frames (subscribers use it to count
/// packets and time the first packet of each frame).
pub async fn new_client(direction: Direction, rtp_mode: bool) -> anyhow::Result<Pending> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let local = socket.local_addr()?;
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .set_rtp_mode(rtp_mode)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let mut api = rtc.sdp_api();
    let mid = api.add_media(MediaKind::Video, direction, None, None, None);
    let (offer, pending) = api
        .apply()
        .ok_or_else(|| anyhow::anyhow!("no offer to make"))?;
    Ok(Pending {
        rtc,
        socket,
        local,
        pending,
        mid,
        offer: offer.to_sdp_string(),
    })
}

/// A running client's session.
struct Session {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    signal: Signal,
}

impl Pending {
    fn accept(mut self, answer: &str, signal: Signal) -> anyhow::Result<(Session, Mid)> {
        let answer = SdpAnswer::from_sdp_string(answer)?;
        self.rtc.sdp_api().accept_answer(self.pending, answer)?;
        Ok((
            Session {
                rtc: self.rtc,
                socket: self.socket,
                local: self.local,
                signal,
            },
            self.mid,
        ))
    }
}

impl Session {
    /// Drains output; returns the next timeout.
    async fn flush(&mut self, mut on_event: impl FnMut(Event)) -> anyhow::Result<Instant> {
        loop {
            match self.rtc.poll_output()? {
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(event) => on_event(event),
                Output::Timeout(t) => return Ok(t),
            }
        }
    }

    /// Like `flush`, but RTP goes through the pacer; STUN, DTLS and RTCP leave at once.
    async fn flush_paced(
        &mut self,
        pacer: &mut Pacer,
        mut on_event: impl FnMut(Event),
    ) -> anyhow::Result<Instant> {
        loop {
            match self.rtc.poll_output()? {
                Output::Transmit(t) if pacing::is_rtp(&t.contents) => {
                    pacer.push(t.destination, t.contents.into());
                }
                Output::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(event) => on_event(event),
                Output::Timeout(t) => return Ok(t),
            }
        }
    }

    fn receive(&mut self, buf: &[u8], source: SocketAddr) {
        if let Ok(receive) = Receive::new(Protocol::Udp, source, self.local, buf) {
            let _ = self
                .rtc
                .handle_input(Input::Receive(Instant::now(), receive));
        }
    }

    fn renegotiate(&mut self, offer: RenegotiationOffer) {
        let answer = SdpOffer::from_sdp_string(&offer.sdp)
            .map_err(anyhow::Error::from)
            .and_then(|o| Ok(self.rtc.sdp_api().accept_offer(o)?));
        match answer {
            Ok(answer) => offer.answer(answer.to_sdp_string()),
            Err(error) => {
                eprintln!("renegotiation offer refused: {error}");
                offer.refuse(error.to_string());
            }
        }
    }
}

/// Runs a subscriber until `stop` is set: records every frame it receives.
pub async fn run_subscriber(
    pending: Pending,
    answer: String,
    signal: Signal,
    received: Arc<Received>,
    sent_log: Arc<Sent>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (mut session, _mid) = pending.accept(&answer, signal)?;
    let mut buf = vec![0u8; 2048];
    // RTP timestamp of a frame whose stamped packet arrived → (frame number, sent, first latency).
    let mut open_frames: std::collections::VecDeque<(u32, u64, u64, u32)> = Default::default();
    while !stop.load(Ordering::Relaxed) {
        let timeout = session
            .flush(|event| {
                let Event::RtpPacket(packet) = event else {
                    return;
                };
                let arrived = media::now_nanos();
                received.first_packet.store(true, Ordering::Relaxed);
                received.packets.fetch_add(1, Ordering::Relaxed);
                received
                    .max_seq
                    .fetch_max(*packet.seq_no, Ordering::Relaxed);
                let rtp_time = packet.header.timestamp;
                if let Some((seq, sent)) = media::read_stamp(&packet.payload) {
                    // From when the packet left the publisher's pacer, not when the frame was
                    // made: a frame queued behind a large keyframe is not the SFU's delay.
                    let left = sent_log.first_packets.sent_at(rtp_time).unwrap_or(sent);
                    let first_us = (arrived.saturating_sub(left) / 1_000) as u32;
                    open_frames.push_back((rtp_time, seq, sent, first_us));
                    // A frame whose marker packet never came is recorded without its end.
                    if open_frames.len() > 8
                        && let Some((_, seq, _, first_us)) = open_frames.pop_front()
                        && let Ok(mut frames) = received.frames.lock()
                    {
                        frames.push((seq, first_us, u32::MAX));
                    }
                }
                if packet.header.marker
                    && let Some(at) = open_frames.iter().position(|f| f.0 == rtp_time)
                    && let Some((_, seq, sent, first_us)) = open_frames.remove(at)
                    && let Ok(mut frames) = received.frames.lock()
                {
                    // Measured from when the last packet itself left the publisher, so the
                    // publisher's pacing is not counted as the SFU's.
                    let left = sent_log.last_packets.sent_at(rtp_time).unwrap_or(sent);
                    let last_us = (arrived.saturating_sub(left) / 1_000) as u32;
                    frames.push((seq, first_us, last_us));
                }
            })
            .await?;
        let wake = tokio::time::Instant::from_std(timeout)
            .min(tokio::time::Instant::now() + Duration::from_millis(100));
        tokio::select! {
            got = session.socket.recv_from(&mut buf) => {
                if let Ok((len, source)) = got {
                    received.datagrams.fetch_add(1, Ordering::Relaxed);
                    session.receive(&buf[..len], source);
                }
            }
            offer = session.signal.offers.recv() => {
                if let Some(offer) = offer {
                    session.renegotiate(offer);
                }
            }
            () = tokio::time::sleep_until(wake) => {
                let _ = session.rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
    Ok(())
}

/// Runs the publisher until `stop` is set: one stamped access unit per frame interval.
#[allow(clippy::too_many_arguments)]
pub async fn run_publisher(
    pending: Pending,
    answer: String,
    signal: Signal,
    video: Arc<VideoLoop>,
    fps: u32,
    pacing_bps: u64,
    sent: Arc<Sent>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (mut session, mid) = pending.accept(&answer, signal)?;
    let mut pacer = Pacer::new(pacing_bps);
    let mut last_rtp_time = None;
    let mut buf = vec![0u8; 2048];
    let frame_interval = Duration::from_secs(1) / fps;
    let mut ticker = tokio::time::interval(frame_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut loop_index = 0usize;
    let mut keyframe_wanted = false;
    let mut connected = false;
    while !stop.load(Ordering::Relaxed) {
        let timeout = session
            .flush_paced(&mut pacer, |event| match event {
                Event::Connected => connected = true,
                Event::KeyframeRequest(_) => {
                    sent.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    keyframe_wanted = true;
                }
                _ => {}
            })
            .await?;
        while let Some((destination, datagram)) = pacer.pop_due(Instant::now()) {
            if let Some((rtp_time, marker)) = pacing::rtp_time_and_marker(&datagram) {
                let now = media::now_nanos();
                if last_rtp_time != Some(rtp_time) {
                    last_rtp_time = Some(rtp_time);
                    sent.first_packets.record(rtp_time, now);
                }
                if marker {
                    sent.last_packets.record(rtp_time, now);
                }
            }
            let _ = session.socket.send_to(&datagram, destination).await;
        }
        if connected {
            sent.connected.store(true, Ordering::Relaxed);
        }
        let mut wake = tokio::time::Instant::from_std(timeout);
        if let Some(due) = pacer.deadline() {
            wake = wake.min(tokio::time::Instant::from_std(due));
        }
        tokio::select! {
            got = session.socket.recv_from(&mut buf) => {
                if let Ok((len, source)) = got {
                    session.receive(&buf[..len], source);
                }
            }
            offer = session.signal.offers.recv() => {
                if let Some(offer) = offer {
                    session.renegotiate(offer);
                }
            }
            _ = ticker.tick() => {
                if !connected {
                    continue;
                }
                if std::mem::take(&mut keyframe_wanted) {
                    loop_index = 0;
                }
                let Some(writer) = session.rtc.writer(mid) else { continue };
                let Some(pt) = writer
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::H264)
                    .map(|p| p.pt())
                else {
                    continue;
                };
                let seq = sent.next_frame.fetch_add(1, Ordering::Relaxed);
                let au = video.access_unit(loop_index, seq);
                loop_index = (loop_index + 1) % video.len();
                let rtp_time = MediaTime::from_90khz(seq * 90_000 / u64::from(fps));
                if let Err(error) = writer.write(pt, Instant::now(), rtp_time, au) {
                    eprintln!("publisher write failed: {error}");
                }
            }
            () = tokio::time::sleep_until(wake) => {
                let _ = session.rtc.handle_input(Input::Timeout(Instant::now()));
            }
        }
    }
    Ok(())
}
