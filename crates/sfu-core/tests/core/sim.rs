//! Simulation harness: the core plus str0m client peers on a virtual network and clock.
//!
//! Time is an `Instant` advanced by hand to the next thing that happens (a packet arriving,
//! a session timer, a media frame due), so seconds of call run in milliseconds, the same way
//! every run. Loss is drawn from a seeded PRNG. No sockets, no threads.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rethink_sfu_core::{CoreConfig, CoreError, CoreEvent, Output, SfuCore};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::SimulcastLayer;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, MediaTime, Mid, Rid, Simulcast};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc};

pub const SERVER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)),
    3478,
);

/// Small deterministic PRNG (xorshift64*), enough for loss decisions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

/// A media source a peer publishes.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub kind: MediaKind,
    pub codec: Codec,
    /// Simulcast rids with their frame size in bytes; one entry with `None` without simulcast.
    pub layers: Vec<(Option<&'static str>, usize)>,
}

impl SourceSpec {
    pub fn vp8(size: usize) -> Self {
        SourceSpec {
            kind: MediaKind::Video,
            codec: Codec::Vp8,
            layers: vec![(None, size)],
        }
    }

    pub fn h264(size: usize) -> Self {
        SourceSpec {
            kind: MediaKind::Video,
            codec: Codec::H264,
            layers: vec![(None, size)],
        }
    }

    pub fn opus() -> Self {
        SourceSpec {
            kind: MediaKind::Audio,
            codec: Codec::Opus,
            layers: vec![(None, 80)],
        }
    }

    pub fn simulcast(layers: &[(&'static str, usize)]) -> Self {
        SourceSpec {
            kind: MediaKind::Video,
            codec: Codec::Vp8,
            layers: layers.iter().map(|(r, s)| (Some(*r), *s)).collect(),
        }
    }
}

#[derive(Debug)]
pub struct Source {
    pub mid: Mid,
    pub spec: SourceSpec,
    pub tag: u8,
    pub next_at: Instant,
    pub interval: Duration,
    pub frame_no: u32,
    /// Layers that must send a keyframe next.
    pub keyframe_due: HashSet<Option<Rid>>,
    pub keyframes_sent: u32,
    /// Layer indexes the publisher stopped sending.
    pub paused: HashSet<usize>,
}

/// A frame a peer received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub mid: Mid,
    pub data: Vec<u8>,
    pub keyframe: bool,
    pub contiguous: bool,
    /// RTP time as the receiver sees it.
    pub rtp_time: u64,
}

impl Received {
    pub fn source_tag(&self) -> u8 {
        self.data[2]
    }
    pub fn layer(&self) -> u8 {
        self.data[1]
    }
    pub fn frame_no(&self) -> u32 {
        u32::from_be_bytes([self.data[3], self.data[4], self.data[5], self.data[6]])
    }
}

/// Frame payload: VP8 frame tag byte (bit 0 clear on keyframes), layer index, source tag,
/// frame number, then a pattern derived from all of them so corruption is detectable.
pub fn make_frame(kind: MediaKind, key: bool, layer: u8, tag: u8, no: u32, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(8));
    v.push(if kind.is_video() {
        u8::from(!key)
    } else {
        0xfc
    });
    v.push(layer);
    v.push(tag);
    v.extend_from_slice(&no.to_be_bytes());
    let mut i = 0u32;
    while v.len() < size.max(8) {
        v.push((no.wrapping_mul(31) ^ i.wrapping_mul(7) ^ u32::from(tag) ^ u32::from(layer)) as u8);
        i += 1;
    }
    v
}

/// An H264 access unit in Annex B: SPS, PPS and an IDR slice for keyframes, one non-IDR slice
/// otherwise. The slice carries the source tag and frame number; no byte is zero, so no start
/// code can appear inside a NAL unit.
pub fn make_h264_frame(key: bool, tag: u8, no: u32, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size + 32);
    if key {
        v.extend_from_slice(&[
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8,
        ]);
        v.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        v.extend_from_slice(&[0, 0, 0, 1, 0x65]);
    } else {
        v.extend_from_slice(&[0, 0, 0, 1, 0x41]);
    }
    let nz = |b: u8| if b == 0 { 1 } else { b };
    v.push(tag | 0x80);
    v.extend(no.to_be_bytes().map(|b| b | 0x80));
    let mut i = 0u32;
    while v.len() < size {
        v.push(nz(
            (no.wrapping_mul(31) ^ i.wrapping_mul(7) ^ u32::from(tag)) as u8,
        ));
        i += 1;
    }
    v
}

/// Finds the slice NAL unit of an H264 access unit made by `make_h264_frame` and returns
/// (tag, frame number) if the access unit is byte-identical to what was sent.
pub fn h264_intact(data: &[u8], size: usize) -> Option<(u8, u32)> {
    let pos = data
        .windows(4)
        .rposition(|w| w == [0, 0, 0, 1] || w[1..] == [0, 0, 1])?;
    let start = if data[pos..].starts_with(&[0, 0, 0, 1]) {
        pos + 4
    } else {
        pos + 3
    };
    let slice = &data[start..];
    let key = slice[0] == 0x65;
    let tag = slice[1] & 0x7f;
    let no = u32::from_be_bytes([slice[2], slice[3], slice[4], slice[5]].map(|b| b & 0x7f));
    let expect = make_h264_frame(key, tag, no, size);
    let expect_slice_at = expect.windows(4).rposition(|w| w == [0, 0, 0, 1])? + 4;
    (expect[expect_slice_at..] == *slice).then_some((tag, no))
}

/// Checks that a received frame is exactly what `make_frame` produced.
pub fn frame_intact(kind: MediaKind, r: &Received, sizes: &[usize]) -> bool {
    if r.data.len() < 8 {
        return false;
    }
    let layer = r.layer();
    let Some(&size) = sizes.get(layer as usize) else {
        return false;
    };
    let key = kind.is_video() && r.data[0] & 1 == 0;
    let mut expect = make_frame(kind, key, layer, r.source_tag(), r.frame_no(), size);
    if key {
        // Keyframes are sent larger; see `Peer::tick_sources`.
        expect = make_frame(kind, key, layer, r.source_tag(), r.frame_no(), size * 3);
    }
    expect == r.data
}

pub struct Peer {
    pub name: String,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    pub timeout: Instant,
    pub pending: Option<SdpPendingOffer>,
    /// Our initial offer until `join` sends it.
    pub offer: Option<String>,
    pub sources: Vec<Source>,
    pub received: Vec<Received>,
    /// Keyframe requests this peer got as a publisher.
    pub keyframe_requests: Vec<(Instant, Mid, Option<Rid>)>,
    /// m-lines the server added towards this peer: mid → msid track id.
    pub media_added: HashMap<Mid, String>,
    pub connected: bool,
    pub alive: bool,
    pub publishing: bool,
}

impl Peer {
    fn poll(&mut self, now: Instant, net: &mut Net) {
        loop {
            if !self.rtc.is_alive() {
                self.alive = false;
                self.timeout = now + Duration::from_secs(3600);
                return;
            }
            match self.rtc.poll_output() {
                Ok(RtcOutput::Timeout(t)) => {
                    self.timeout = t;
                    return;
                }
                Ok(RtcOutput::Transmit(t)) => {
                    net.send(now, t.source, t.destination, t.contents.into());
                }
                Ok(RtcOutput::Event(e)) => self.on_event(now, e),
                Err(e) => panic!("peer {} failed: {e}", self.name),
            }
        }
    }

    fn on_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::Connected => self.connected = true,
            Event::MediaData(d) => self.received.push(Received {
                at: now,
                mid: d.mid,
                keyframe: d.is_keyframe(),
                contiguous: d.contiguous,
                rtp_time: d.time.numer(),
                data: d.data.to_vec(),
            }),
            Event::KeyframeRequest(r) => {
                self.keyframe_requests.push((now, r.mid, r.rid));
                if let Some(s) = self.sources.iter_mut().find(|s| s.mid == r.mid) {
                    s.keyframe_due.insert(r.rid);
                }
            }
            Event::MediaAdded(m) => {
                let track_id = self
                    .rtc
                    .media(m.mid)
                    .map(|media| media.track_id().to_string())
                    .unwrap_or_default();
                self.media_added.insert(m.mid, track_id);
            }
            _ => {}
        }
    }

    /// Writes every media frame that is due.
    fn tick_sources(&mut self, now: Instant) {
        if !self.connected || !self.publishing {
            return;
        }
        for s in &mut self.sources {
            while s.next_at <= now {
                let no = s.frame_no;
                s.frame_no += 1;
                let at = s.next_at;
                s.next_at += s.interval;
                let clock = if s.spec.kind.is_audio() {
                    48_000
                } else {
                    90_000
                };
                let ticks = u64::from(no) * clock * s.interval.as_micros() as u64 / 1_000_000;
                let time = MediaTime::new(
                    ticks + 10_000,
                    str0m::media::Frequency::new(clock as u32).unwrap(),
                );
                for (li, (rid, size)) in s.spec.layers.iter().enumerate() {
                    if s.paused.contains(&li) {
                        continue;
                    }
                    let rid: Option<Rid> = rid.map(Rid::from);
                    let key = s.spec.kind.is_video() && (no == 0 || s.keyframe_due.remove(&rid));
                    if key {
                        s.keyframes_sent += 1;
                    }
                    let size = if key { size * 3 } else { *size };
                    let codec = s.spec.codec;
                    let data = if codec == Codec::H264 {
                        make_h264_frame(key, s.tag, no, size)
                    } else {
                        make_frame(s.spec.kind, key, li as u8, s.tag, no, size)
                    };
                    let Some(pt) = self
                        .rtc
                        .codec_config()
                        .find(|p| p.spec().codec == codec)
                        .map(|p| p.pt())
                    else {
                        continue;
                    };
                    let Some(mut writer) = self.rtc.writer(s.mid) else {
                        continue;
                    };
                    if let Some(rid) = rid {
                        writer = writer.rid(rid);
                    }
                    writer.write(pt, at, time, data).expect("write media");
                }
            }
        }
    }

    pub fn frames_from(&self, mid: Mid) -> Vec<&Received> {
        self.received.iter().filter(|r| r.mid == mid).collect()
    }

    /// The mid of the m-line carrying `track` (an id from the core) towards this peer.
    pub fn mid_of(&self, track: &str) -> Option<Mid> {
        self.media_added
            .iter()
            .find(|(_, t)| t.as_str() == track)
            .map(|(m, _)| *m)
    }
}

/// RTP, not RTCP (RFC 5761 demultiplexing by payload type).
pub fn is_rtp(d: &[u8]) -> bool {
    d.len() >= 12 && (128..192).contains(&d[0]) && !(192..=223).contains(&d[1])
}

/// Packets in flight. Every link has the same latency, so the queue stays in time order.
pub struct Net {
    pub queue: VecDeque<(Instant, SocketAddr, SocketAddr, Vec<u8>)>,
    pub latency: Duration,
    /// Loss probability per destination address (applies to packets sent to it).
    pub loss_to: HashMap<SocketAddr, f64>,
    pub rng: Rng,
    pub dropped: u64,
    pub sent: u64,
}

impl Net {
    fn send(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        self.sent += 1;
        let p = self.loss_to.get(&dst).copied().unwrap_or(0.0);
        if p > 0.0 && self.rng.chance(p) {
            self.dropped += 1;
            return;
        }
        self.queue.push_back((now + self.latency, src, dst, data));
    }
}

pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub core: SfuCore,
    pub core_timeout: Instant,
    pub peers: Vec<Peer>,
    pub net: Net,
    pub events: Vec<(Instant, CoreEvent)>,
    /// Relay server offers to the peer and its answer back, instantly.
    pub auto_answer: bool,
    /// Wall-clock time spent inside the core's calls (for the fan-out benchmark).
    pub core_busy: Duration,
    /// RTP datagrams the core sent (media and retransmissions, not RTCP/STUN/DTLS).
    pub core_rtp_out: u64,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, |_| {})
    }

    pub fn with_config(seed: u64, f: impl FnOnce(&mut CoreConfig)) -> Self {
        let start = Instant::now();
        let mut config = CoreConfig {
            candidates: vec![SERVER],
            ..CoreConfig::default()
        };
        f(&mut config);
        let core = SfuCore::new(config).expect("core config");
        Sim {
            start,
            now: start,
            core,
            core_timeout: start,
            peers: Vec::new(),
            net: Net {
                queue: VecDeque::new(),
                latency: Duration::from_millis(10),
                loss_to: HashMap::new(),
                rng: Rng::new(seed),
                dropped: 0,
                sent: 0,
            },
            events: Vec::new(),
            auto_answer: true,
            core_busy: Duration::ZERO,
            core_rtp_out: 0,
        }
    }

    /// A client session for the next peer, with its own address on the test network.
    pub fn new_client_rtc(&self) -> (Rtc, SocketAddr) {
        let addr: SocketAddr = format!("10.0.1.{}:5000", self.peers.len() + 1)
            .parse()
            .unwrap();
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        (rtc, addr)
    }

    /// Adds a client peer that will publish `sources` once connected.
    pub fn add_peer(&mut self, name: &str, sources: &[SourceSpec]) -> usize {
        let idx = self.peers.len();
        let (mut rtc, addr) = self.new_client_rtc();
        let mut api = rtc.sdp_api();
        let mut srcs = Vec::new();
        for (i, spec) in sources.iter().enumerate() {
            let simulcast = if spec.layers.len() > 1 {
                let mut s = Simulcast::new();
                for (rid, _) in &spec.layers {
                    s.add_send_layer(SimulcastLayer::new(rid.unwrap_or("x")));
                }
                Some(s)
            } else {
                None
            };
            let mid = api.add_media(
                spec.kind,
                Direction::SendOnly,
                Some(name.into()),
                Some(format!("{name}-src{i}")),
                simulcast,
            );
            srcs.push(Source {
                mid,
                spec: spec.clone(),
                tag: (idx * 16 + i) as u8,
                next_at: self.now,
                interval: if spec.kind.is_audio() {
                    Duration::from_millis(20)
                } else {
                    Duration::from_millis(33)
                },
                frame_no: 0,
                keyframe_due: HashSet::new(),
                keyframes_sent: 0,
                paused: HashSet::new(),
            });
        }
        // A peer without sources still needs something to offer.
        if sources.is_empty() {
            api.add_channel("control".into());
        }
        let (offer, pending) = api.apply().expect("an offer");
        let peer = Peer {
            name: name.into(),
            addr,
            rtc,
            timeout: self.now,
            pending: Some(pending),
            offer: Some(offer.to_sdp_string()),
            sources: srcs,
            received: Vec::new(),
            keyframe_requests: Vec::new(),
            media_added: HashMap::new(),
            connected: false,
            alive: true,
            publishing: true,
        };
        self.peers.push(peer);
        idx
    }

    /// Sends the peer's offer to the core's `join` and applies the answer.
    pub fn join(&mut self, idx: usize, room: &str) -> Result<(), CoreError> {
        let offer = self.peers[idx].offer.clone().expect("peer offer");
        let name = self.peers[idx].name.clone();
        let answer = self.core.join(room, &name, &offer, self.now)?;
        let peer = &mut self.peers[idx];
        let pending = peer.pending.take().expect("pending offer");
        let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
        peer.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("peer accepts answer");
        peer.offer = None;
        self.drain();
        Ok(())
    }

    /// The core's offer for a peer, answered by the peer and accepted by the core.
    pub fn renegotiate(&mut self, participant: &str, offer_sdp: &str) {
        let Some(idx) = self.peers.iter().position(|p| p.name == participant) else {
            return;
        };
        let offer = SdpOffer::from_sdp_string(offer_sdp).expect("server offer parses");
        let answer = self.peers[idx]
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .expect("peer accepts server offer");
        self.core
            .accept_answer(participant, &answer.to_sdp_string(), self.now)
            .expect("core accepts answer");
    }

    /// Drains the core and every peer until nothing is left but timeouts.
    pub fn drain(&mut self) {
        loop {
            let mut progressed = false;
            loop {
                let t0 = Instant::now();
                let out = self.core.poll_output();
                self.core_busy += t0.elapsed();
                match out {
                    Output::Timeout(t) => {
                        self.core_timeout = t;
                        break;
                    }
                    Output::Transmit(t) => {
                        progressed = true;
                        if is_rtp(&t.contents) {
                            self.core_rtp_out += 1;
                        }
                        self.net.send(self.now, t.source, t.destination, t.contents);
                    }
                    Output::Event(e) => {
                        progressed = true;
                        if let CoreEvent::Renegotiate {
                            participant,
                            offer_sdp,
                        } = &e
                            && self.auto_answer
                        {
                            let (p, o) = (participant.clone(), offer_sdp.clone());
                            self.events.push((self.now, e));
                            self.renegotiate(&p, &o);
                            continue;
                        }
                        self.events.push((self.now, e));
                    }
                }
            }
            for p in &mut self.peers {
                if p.alive {
                    p.poll(self.now, &mut self.net);
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Runs the simulation for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end, |_| false);
    }

    /// Runs until `done` holds (checked after every step) or virtual time reaches `end`.
    /// Returns whether `done` held.
    pub fn run_until(&mut self, end: Instant, mut done: impl FnMut(&Sim) -> bool) -> bool {
        self.drain();
        loop {
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            let mut next = end.min(self.core_timeout);
            if let Some((at, ..)) = self.net.queue.front() {
                next = next.min(*at);
            }
            for p in &self.peers {
                if !p.alive {
                    continue;
                }
                next = next.min(p.timeout);
                if p.connected && p.publishing {
                    for s in &p.sources {
                        next = next.min(s.next_at);
                    }
                }
            }
            self.now = next.max(self.now);
            self.step();
        }
    }

    /// Everything due at `now`: packets, media frames, timers.
    fn step(&mut self) {
        let now = self.now;
        while self.net.queue.front().is_some_and(|(at, ..)| *at <= now) {
            let (_, src, dst, data) = self.net.queue.pop_front().unwrap();
            if dst == SERVER {
                let t0 = Instant::now();
                self.core.handle_datagram(now, src, dst, &data);
                self.core_busy += t0.elapsed();
            } else if let Some(p) = self.peers.iter_mut().find(|p| p.addr == dst && p.alive) {
                let Ok(receive) = Receive::new(Protocol::Udp, src, dst, &data) else {
                    continue;
                };
                p.rtc
                    .handle_input(Input::Receive(now, receive))
                    .expect("peer handles input");
            }
        }
        for p in &mut self.peers {
            if !p.alive {
                continue;
            }
            p.tick_sources(now);
            if p.timeout <= now {
                p.rtc
                    .handle_input(Input::Timeout(now))
                    .expect("peer timeout");
            }
        }
        if self.core_timeout <= now {
            let t0 = Instant::now();
            self.core.handle_timeout(now);
            self.core_busy += t0.elapsed();
        }
        self.drain();
    }

    pub fn peer(&self, name: &str) -> &Peer {
        self.peers.iter().find(|p| p.name == name).expect("peer")
    }

    pub fn peer_mut(&mut self, name: &str) -> &mut Peer {
        self.peers
            .iter_mut()
            .find(|p| p.name == name)
            .expect("peer")
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Runs until every listed peer is connected. Panics after 5 virtual seconds.
    pub fn connect_all(&mut self) {
        let end = self.now + Duration::from_secs(5);
        let ok = self.run_until(end, |s| s.peers.iter().all(|p| p.connected));
        assert!(ok, "peers did not connect");
    }

    /// Ids of the tracks published by `participant`, in publish order.
    pub fn tracks_of(&self, participant: &str) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                CoreEvent::TrackPublished {
                    participant: p,
                    track,
                    ..
                } if p == participant => Some(track.to_string()),
                _ => None,
            })
            .collect()
    }
}

/// Keyframe request kinds are not needed by tests beyond this marker.
pub const _PLI: KeyframeRequestKind = KeyframeRequestKind::Pli;

impl Sim {
    /// The peer asks for a keyframe on one of its receiving m-lines (as a decoder would).
    pub fn send_pli(&mut self, peer: &str, mid: Mid) {
        let p = self.peer_mut(peer);
        let mut w = p.rtc.writer(mid).expect("receiving m-line");
        w.request_keyframe(None, KeyframeRequestKind::Pli)
            .expect("pli negotiated");
        self.drain();
    }

    /// The peer reports a receiver bandwidth cap (REMB) for one of its receiving m-lines.
    pub fn send_remb(&mut self, peer: &str, mid: Mid, bps: u64) {
        let p = self.peer_mut(peer);
        let mut api = p.rtc.direct_api();
        let stream = api.stream_rx_by_mid(mid, None).expect("receiving stream");
        stream.request_remb(str0m::bwe::Bitrate::bps(bps));
        self.drain();
    }

    /// Loss probability on every link from now on.
    pub fn set_loss(&mut self, p: f64) {
        self.net.loss_to.insert(SERVER, p);
        for peer in &self.peers {
            self.net.loss_to.insert(peer.addr, p);
        }
    }
}

impl Sim {
    /// The peer starts publishing another source after joining: its own offer goes to the
    /// core's `accept_offer`.
    pub fn add_source(&mut self, peer: &str, spec: SourceSpec) -> Result<Mid, CoreError> {
        let idx = self
            .peers
            .iter()
            .position(|p| p.name == peer)
            .expect("peer");
        let p = &mut self.peers[idx];
        let i = p.sources.len();
        let mut api = p.rtc.sdp_api();
        let mid = api.add_media(
            spec.kind,
            Direction::SendOnly,
            Some(peer.into()),
            Some(format!("{peer}-src{i}")),
            None,
        );
        let (offer, pending) = api.apply().expect("an offer");
        let answer = self
            .core
            .accept_offer(peer, &offer.to_sdp_string(), self.now)?;
        let p = &mut self.peers[idx];
        p.rtc
            .sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(&answer).expect("answer"),
            )
            .expect("peer accepts answer");
        p.sources.push(Source {
            mid,
            tag: (idx * 16 + i) as u8,
            next_at: self.now,
            interval: if spec.kind.is_audio() {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(33)
            },
            spec,
            frame_no: 0,
            keyframe_due: HashSet::new(),
            keyframes_sent: 0,
            paused: HashSet::new(),
        });
        self.drain();
        Ok(mid)
    }

    /// Events of one kind that concern `participant`, in order.
    pub fn left_events(&self) -> Vec<(String, rethink_sfu_core::LeaveReason)> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                CoreEvent::ParticipantLeft {
                    participant,
                    reason,
                    ..
                } => Some((participant.clone(), *reason)),
                _ => None,
            })
            .collect()
    }

    pub fn unpublished(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                CoreEvent::TrackUnpublished { track, .. } => Some(track.to_string()),
                _ => None,
            })
            .collect()
    }
}

impl Peer {
    /// True when the server stopped (or disabled) the m-line towards this peer.
    pub fn media_stopped(&self, mid: Mid) -> bool {
        self.rtc
            .media(mid)
            .is_none_or(|m| m.stopped() || m.direction() == Direction::Inactive)
    }
}

impl Sim {
    /// The peer stops sending one of its sources: a re-offer with the m-line inactive.
    pub fn stop_source(&mut self, peer: &str, mid: Mid) -> Result<(), CoreError> {
        let idx = self
            .peers
            .iter()
            .position(|p| p.name == peer)
            .expect("peer");
        let p = &mut self.peers[idx];
        p.sources.retain(|s| s.mid != mid);
        let mut api = p.rtc.sdp_api();
        api.set_direction(mid, Direction::Inactive);
        let (offer, pending) = api.apply().expect("an offer");
        let answer = self
            .core
            .accept_offer(peer, &offer.to_sdp_string(), self.now)?;
        self.peers[idx]
            .rtc
            .sdp_api()
            .accept_answer(
                pending,
                SdpAnswer::from_sdp_string(&answer).expect("answer"),
            )
            .expect("peer accepts answer");
        self.drain();
        Ok(())
    }

    /// Server offers made to `participant` so far.
    pub fn offers_to(&self, participant: &str) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|(_, e)| match e {
                CoreEvent::Renegotiate {
                    participant: p,
                    offer_sdp,
                } if p == participant => Some(offer_sdp.clone()),
                _ => None,
            })
            .collect()
    }
}
