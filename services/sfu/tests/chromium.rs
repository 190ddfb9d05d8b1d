//! Real browsers hold a call through a real SFU on loopback. Two headless Chromium tabs and
//! one Rust peer (`rethink-rtc-peer`) join one room over real gRPC with real tokens; media
//! flows over real UDP. The test is the signalling server: it takes each tab's offer with the
//! DevTools protocol, calls `Join`, sets the answer in the tab, and relays the SFU's
//! renegotiation offers from the participant's `Events` stream (answers go back through
//! `AnswerRenegotiation`).
//!
//! - `chrome-a` publishes the fake camera as VP8 with three simulcast layers (q, h, f) and the
//!   fake microphone;
//! - `chrome-b` publishes the fake camera as one H264 layer;
//! - `rust` publishes its H264 test pattern and decodes H264 only.
//!
//! Each tab must decode 30 frames from each of the other two video publishers (inbound
//! streams are mapped to publishers through their `a=msid`, whose track id is the SFU's track
//! id), B must get one of A's layers and A's audio, and the Rust peer must decode B. Then A
//! leaves and the others see it gone (events and room stats) while B and the Rust peer go on.
//!
//! The H264-only Rust peer rejects A's Opus m-line the JSEP way (port 0 and only `a=mid`); the
//! SFU must accept such an answer as it is.
//!
//! A second test checks the layer choice with a real browser's feedback: Chromium sends the
//! SFU transport-wide congestion control (TWCC) reports and no REMB, so once B decodes A's top
//! layer, an nftables rule drops 30 % of the datagrams arriving at B's port and B must fall to
//! a lower layer of A. It needs root and `nft` (package nftables); the rule lives in a table of
//! its own for that one port and is removed when the test ends.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rethink_common::testing::chromium::{Chromium, FAKE_MEDIA_FLAGS, Page};
use rethink_proto::v1::SfuParticipantStats;
use rethink_proto::v1::sfu_participant_event::Event;
use rethink_rtc_peer::{Peer, PeerConfig};
use rethink_testbed::sfu::{Relay, RelayOutcome, SfuControl};
use rethink_testbed::{SfuReplica, TestBed};
use serde_json::{Value, json};

const ROOM: &str = "chromium";
/// Frames each receiver must decode from each video publisher.
const FRAMES: u64 = 30;
/// Upper bound of every media wait; reached only when something is broken.
const MEDIA_WAIT: Duration = Duration::from_secs(20);
/// How often a tab's statistics are read while waiting for a condition on them.
const POLL: Duration = Duration::from_millis(200);
/// The participant page, served from 127.0.0.1 so that getUserMedia has a secure context.
const PAGE: &str = include_str!("assets/chromium-peer.html");

/// The side of a participant that takes the SFU's offers.
#[derive(Clone)]
enum Endpoint {
    Tab(Page),
    Rust(Arc<Peer>),
}

impl Endpoint {
    /// Applies a server offer; returns the answer.
    async fn answer_offer(&self, offer: &str) -> Result<String> {
        match self {
            Endpoint::Tab(page) => {
                let answer = page.eval(&format!("renegotiate({})", json!(offer))).await?;
                answer
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("renegotiate returned {answer}"))
            }
            Endpoint::Rust(peer) => Ok(peer.apply_offer(offer).await?),
        }
    }
}

/// One participant: how to reach it, and the relay answering its renegotiation offers and
/// recording what its `Events` stream delivered.
struct Participant {
    name: String,
    endpoint: Endpoint,
    relay: Relay,
}

impl Participant {
    /// Opens the `Events` stream and relays its renegotiation offers to `endpoint`.
    async fn follow(control: &SfuControl, name: &str, endpoint: Endpoint) -> Result<Self> {
        let answerer = endpoint.clone();
        let relay = Relay::start(control, ROOM, name, move |offer| {
            let endpoint = answerer.clone();
            async move {
                endpoint
                    .answer_offer(&offer)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await?;
        Ok(Self {
            name: name.to_owned(),
            endpoint,
            relay,
        })
    }

    fn page(&self) -> &Page {
        match &self.endpoint {
            Endpoint::Tab(page) => page,
            Endpoint::Rust(_) => panic!("{} is not a tab", self.name),
        }
    }

    fn peer(&self) -> &Arc<Peer> {
        match &self.endpoint {
            Endpoint::Rust(peer) => peer,
            Endpoint::Tab(_) => panic!("{} is not a Rust peer", self.name),
        }
    }

    /// Renegotiation offers answered, and the first error met while answering one.
    fn renegotiation_outcome(&self) -> RelayOutcome {
        self.relay.outcome()
    }

    /// Waits until an event matching `want` arrived; returns it.
    async fn wait_event(&self, what: &str, want: impl Fn(&Event) -> bool) -> Result<Event> {
        self.relay
            .wait_event(MEDIA_WAIT, want)
            .await
            .ok_or_else(|| {
                anyhow!(
                    "{}: no {what} event; events: {:?}",
                    self.name,
                    self.relay.events()
                )
            })
    }

    /// Waits until `count` events matching `want` arrived.
    async fn wait_events(
        &self,
        what: &str,
        mut want: impl FnMut(&Event) -> bool,
        count: usize,
    ) -> Result<()> {
        let mut rx = self.relay.watch_events();
        tokio::time::timeout(
            MEDIA_WAIT,
            rx.wait_for(|all| all.iter().filter(|e| want(e)).count() >= count),
        )
        .await
        .map_err(|_| {
            anyhow!(
                "{}: no {what}; events: {:?}",
                self.name,
                self.relay.events()
            )
        })??;
        Ok(())
    }

    /// Returns the ids of the tracks `publisher` published, as announced to this participant.
    fn tracks_of(&self, publisher: &str) -> HashSet<String> {
        self.relay
            .events()
            .iter()
            .filter_map(|e| match e {
                Event::TrackPublished(t) if t.participant == publisher => Some(t.track_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Reads the tab's statistics until `done` holds for them; returns them. On timeout the
    /// error shows the last statistics and the renegotiation outcome.
    async fn wait_stats(&self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + MEDIA_WAIT;
        loop {
            let stats = self.page().eval("stats()").await?;
            if done(&stats) {
                return Ok(stats);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: {what} not reached in {MEDIA_WAIT:?}; renegotiations: {:?}; stats: {stats:#}",
                    self.name,
                    self.renegotiation_outcome()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// What both tests start from: an SFU with the room, the participant page served on its own
/// origin, and a browser with fake camera and microphone.
struct Stage {
    // Kept for the services it runs (Redis, auth).
    _bed: TestBed,
    sfu: SfuReplica,
    control: SfuControl,
    origin: SocketAddr,
    browser: Chromium,
}

impl Stage {
    async fn open() -> Result<Self> {
        let bed = TestBed::start().await?;
        let sfu = bed.default_sfu("sfu-test").await?;
        let control = bed.sfu_control(&sfu).await?;
        let origin = common::serve_page(PAGE).await?;
        control.create_room(ROOM).await?;
        let browser = Chromium::launch_with_args(FAKE_MEDIA_FLAGS).await?;
        Ok(Stage {
            _bed: bed,
            sfu,
            control,
            origin,
            browser,
        })
    }

    /// Opens a tab that publishes as `options` say and joins it as `name`; returns it with
    /// its offer.
    async fn join_tab(&self, name: &str, options: Value) -> Result<(Participant, String)> {
        let page = self
            .browser
            .open(&format!("http://{}/", self.origin))
            .await?;
        let offer = page.eval(&format!("start({options})")).await?;
        let offer = offer
            .as_str()
            .context("start() returned no offer")?
            .to_owned();
        let answer = self.control.join(ROOM, name, &offer).await?;
        page.eval(&format!("answer({})", json!(answer))).await?;
        let tab = Participant::follow(&self.control, name, Endpoint::Tab(page)).await?;
        Ok((tab, offer))
    }

    async fn close(self) -> Result<()> {
        self.browser.close().await;
        self.sfu.stop().await
    }
}

/// Joins a Rust peer that publishes the H264 test pattern.
async fn join_rust(control: &SfuControl, name: &str) -> Result<Participant> {
    let peer = Arc::new(Peer::new(PeerConfig::publisher(name)).await?);
    let offer = peer.create_offer_gathered(MEDIA_WAIT).await?;
    let answer = control.join(ROOM, name, &offer).await?;
    peer.apply_answer(&answer).await?;
    Participant::follow(control, name, Endpoint::Rust(peer)).await
}

/// Returns the inbound streams of `kind` in a tab's statistics whose msid track is one of
/// `tracks`.
fn inbound_from<'a>(stats: &'a Value, kind: &str, tracks: &HashSet<String>) -> Vec<&'a Value> {
    stats["inbound"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == kind)
        .filter(|s| {
            s["msid"]["track"]
                .as_str()
                .is_some_and(|t| tracks.contains(t))
        })
        .collect()
}

/// Returns the most frames decoded on one video stream from `tracks`.
fn frames_from(stats: &Value, tracks: &HashSet<String>) -> u64 {
    inbound_from(stats, "video", tracks)
        .iter()
        .filter_map(|s| s["framesDecoded"].as_u64())
        .max()
        .unwrap_or(0)
}

async fn participant_stats(control: &SfuControl, name: &str) -> Result<SfuParticipantStats> {
    Ok(control.participant_stats(ROOM, name).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chromium_tabs_and_a_rust_peer_hold_a_call() -> Result<()> {
    let started = Instant::now();
    // `RUST_LOG=str0m=trace` shows the RTCP feedback each session handles, for diagnosis.
    let _logs = std::env::var_os("RUST_LOG")
        .map(|_| rethink_common::telemetry::init("sfu-chromium-test", false))
        .transpose()?;
    let stage = Stage::open().await?;
    let control = &stage.control;
    let (a, _) = stage
        .join_tab(
            "chrome-a",
            json!({"simulcast": true, "codec": "VP8", "audio": true}),
        )
        .await?;
    let (b, _) = stage
        .join_tab(
        "chrome-b",
        json!({"simulcast": false, "codec": "H264", "fmtp": "packetization-mode=1;profile-level-id=42e01f", "audio": false}),
    )
    .await?;
    let rust = join_rust(control, "rust").await?;
    let tabs = [&a, &b];
    let everyone = [&a, &b, &rust];

    // Each publisher hears of its own tracks (A: video and audio); together these events map
    // the SFU's track ids, which subscribers see as msid track ids, to publishers. (Tracks
    // published before a participant joined are not announced to it on `Events`; it learns of
    // them only from the renegotiation offer.)
    let mut tracks_of: HashMap<&str, HashSet<String>> = HashMap::new();
    for (p, count) in [(&a, 2), (&b, 1), (&rust, 1)] {
        p.wait_events(
            &format!("{count} own tracks published"),
            |e| matches!(e, Event::TrackPublished(t) if t.participant == p.name),
            count,
        )
        .await?;
        tracks_of.insert(&p.name, p.tracks_of(&p.name));
    }

    // Each tab decodes both other video publishers.
    for tab in tabs {
        for publisher in ["chrome-a", "chrome-b", "rust"]
            .into_iter()
            .filter(|n| *n != tab.name)
        {
            let tracks = &tracks_of[publisher];
            tab.wait_stats(&format!("{FRAMES} frames from {publisher}"), |s| {
                frames_from(s, tracks) >= FRAMES
            })
            .await?;
        }
    }

    // B gets one of A's simulcast layers (A sends all three) and A's audio.
    let a_tracks = &tracks_of["chrome-a"];
    let b_stats = b
        .wait_stats("audio from chrome-a", |s| {
            inbound_from(s, "audio", a_tracks)
                .iter()
                .any(|s| s["packetsReceived"].as_u64() > Some(0))
        })
        .await?;
    let a_video = inbound_from(&b_stats, "video", a_tracks);
    let width = a_video
        .first()
        .and_then(|s| s["frameWidth"].as_u64())
        .unwrap_or(0);
    assert!(
        [320, 640, 1280].contains(&width),
        "B decodes A at {width} px wide: {b_stats:#}"
    );
    // A sends all three layers once its send-side estimate allows it (the SFU's transport-wide
    // feedback feeds that estimate).
    let a_stats = a
        .wait_stats("three simulcast layers sent", |s| {
            s["outbound"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["kind"] == "video" && s["framesEncoded"].as_u64() > Some(0))
                .count()
                == 3
        })
        .await?;

    // The msid stream id groups a publisher's tracks: A's audio and video share one.
    let a_streams: HashSet<&str> = inbound_from(&b_stats, "audio", a_tracks)
        .into_iter()
        .chain(a_video.iter().copied())
        .filter_map(|s| s["msid"]["stream"].as_str())
        .collect();
    assert_eq!(
        a_streams.len(),
        1,
        "A's tracks arrive in streams {a_streams:?}"
    );

    // The Rust peer decodes B's H264.
    let b_track = &tracks_of["chrome-b"];
    rust.peer()
        .wait_tracks(MEDIA_WAIT, "frames from chrome-b", |tracks| {
            tracks
                .iter()
                .any(|(k, c)| b_track.contains(&k.track_id) && c.frames_decoded >= FRAMES)
        })
        .await
        .map_err(|e| anyhow!("{e}; renegotiations: {:?}", rust.renegotiation_outcome()))?;

    for p in everyone {
        let outcome = p.renegotiation_outcome();
        assert!(
            outcome.answered >= 1 && outcome.error.is_none(),
            "{}: renegotiations {:?}",
            p.name,
            p.renegotiation_outcome()
        );
    }
    let stats = control.room_stats(ROOM).await?;
    assert_eq!(stats.participants, 3, "{stats:?}");
    assert_eq!(stats.tracks, 4, "{stats:?}");
    for name in ["chrome-a", "chrome-b"] {
        let ps = participant_stats(control, name).await?;
        eprintln!(
            "{name}: estimated {} bps, rtt {} ms, in {} bps, out {} bps",
            ps.estimated_bps, ps.rtt_ms, ps.bitrate_in_bps, ps.bitrate_out_bps
        );
    }
    let layers: Vec<String> = a_stats["outbound"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] == "video")
        .map(|s| format!("{}={}px", s["rid"], s["frameWidth"]))
        .collect();
    eprintln!(
        "A sends {layers:?}, B decodes A at {width}px; call checked after {:?}",
        started.elapsed()
    );

    // A leaves.
    control.leave(ROOM, "chrome-a").await?;
    a.page().eval("leave()").await?;
    for p in [&b, &rust] {
        p.wait_event(
            "participant_left chrome-a",
            |e| matches!(e, Event::ParticipantLeft(l) if l.participant == "chrome-a"),
        )
        .await?;
        p.wait_events(
            "A's two tracks unpublished",
            |e| matches!(e, Event::TrackUnpublished(t) if t.participant == "chrome-a"),
            2,
        )
        .await?;
    }
    let stats = control.room_stats(ROOM).await?;
    assert_eq!(stats.participants, 2, "{stats:?}");
    assert_eq!(stats.tracks, 2, "{stats:?}");
    for ps in &stats.participant_stats {
        assert_ne!(ps.participant, "chrome-a");
        assert_eq!(ps.subscribed_tracks.len(), 1, "{ps:?}");
    }
    // B's call with the Rust peer goes on.
    let rust_tracks = &tracks_of["rust"];
    let before = frames_from(&b.page().eval("stats()").await?, rust_tracks);
    b.wait_stats("30 more frames from rust after A left", |s| {
        frames_from(s, rust_tracks) >= before + FRAMES
    })
    .await?;
    eprintln!("done after {:?}", started.elapsed());

    rust.peer().close().await?;
    stage.close().await?;
    Ok(())
}

/// Width of the video a tab decodes from `tracks` (0 before the first frame).
fn width_from(stats: &Value, tracks: &HashSet<String>) -> u64 {
    inbound_from(stats, "video", tracks)
        .first()
        .and_then(|s| s["frameWidth"].as_u64())
        .unwrap_or(0)
}

/// The UDP port of the first IPv4 host candidate in an offer: where the SFU (on 127.0.0.1)
/// sends the tab's media.
fn udp_host_port(offer: &str) -> Option<u16> {
    offer.lines().find_map(|line| {
        let fields: Vec<&str> = line.strip_prefix("a=candidate:")?.split(' ').collect();
        let ipv4 = fields.get(4)?.parse::<std::net::Ipv4Addr>().is_ok();
        (ipv4 && fields.get(2)?.eq_ignore_ascii_case("udp") && fields.get(7) == Some(&"host"))
            .then(|| fields.get(5)?.parse().ok())
            .flatten()
    })
}

/// Drops a share of the UDP datagrams that arrive for one local port, with an nftables rule
/// on the input hook in a table of its own; removed on drop. Nothing else on the machine is
/// touched.
struct PortLoss {
    table: String,
}

impl PortLoss {
    fn add(port: u16, percent: u8) -> Result<Self> {
        let table = format!("rethink_test_{}_{port}", std::process::id());
        let nft = |args: &[&str]| -> Result<()> {
            let out = std::process::Command::new("nft")
                .args(args)
                .output()
                .context("running nft (package nftables; needs root)")?;
            if !out.status.success() {
                bail!("nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        nft(&["add", "table", "inet", &table])?;
        let loss = PortLoss { table };
        nft(&[
            "add",
            "chain",
            "inet",
            &loss.table,
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        ])?;
        nft(&[
            "add",
            "rule",
            "inet",
            &loss.table,
            "input",
            "udp",
            "dport",
            &port.to_string(),
            "numgen",
            "random",
            "mod",
            "100",
            "<",
            &percent.to_string(),
            "drop",
        ])?;
        Ok(loss)
    }
}

impl Drop for PortLoss {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_towards_a_chromium_subscriber_moves_it_to_a_lower_layer() -> Result<()> {
    let stage = Stage::open().await?;
    let control = &stage.control;
    let (a, _) = stage
        .join_tab(
            "chrome-a",
            json!({"simulcast": true, "codec": "VP8", "audio": false}),
        )
        .await?;
    let (b, b_offer) = stage
        .join_tab(
            "chrome-b",
            json!({"simulcast": false, "codec": "VP8", "audio": false}),
        )
        .await?;
    let b_port = udp_host_port(&b_offer)
        .with_context(|| format!("no IPv4 host candidate in B's offer: {b_offer}"))?;
    a.wait_events(
        "own track published",
        |e| matches!(e, Event::TrackPublished(t) if t.participant == a.name),
        1,
    )
    .await?;
    let a_tracks = a.tracks_of(&a.name);

    // A clean link: B gets A's top layer (1280 px wide) once A sends it.
    b.wait_stats("A's top layer", |s| width_from(s, &a_tracks) == 1280)
        .await?;
    let before = participant_stats(control, "chrome-b").await?;

    // A third of what reaches B's socket is lost. B's transport-wide feedback reports it, the
    // SFU's budget for B falls and it forwards a lower layer, from a keyframe on.
    let _loss = PortLoss::add(b_port, 30)?;
    let lower = b
        .wait_stats("a lower layer of A", |s| {
            (1..1280).contains(&width_from(s, &a_tracks))
        })
        .await?;
    let after = participant_stats(control, "chrome-b").await?;
    eprintln!(
        "B's budget {} -> {} bit/s, B decodes A at {} px under loss",
        before.estimated_bps,
        after.estimated_bps,
        width_from(&lower, &a_tracks)
    );
    assert!(
        after.estimated_bps < before.estimated_bps,
        "budget {} -> {}",
        before.estimated_bps,
        after.estimated_bps
    );
    stage.close().await?;
    Ok(())
}
