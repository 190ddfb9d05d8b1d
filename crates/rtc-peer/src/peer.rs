//! [`Peer`]: one WebRTC peer connection with an optional synthetic video track and decoders
//! for every remote video track.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, register_default_interceptors,
};

use crate::pattern::VideoConfig;
use crate::publish::{self, PublishCounters};
use crate::receive::{self, RemoteTrackKey, TrackCounters, TrackStats};
use crate::{H264_FMTP, PeerError};

/// How a [`Peer`] is set up.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Local UDP address; the bound address is the only host candidate (no mDNS, no STUN).
    pub bind: SocketAddr,
    /// The media stream id of the local track (use the participant name).
    pub stream_id: String,
    /// Publish a synthetic video track with these settings; `None` receives only.
    pub publish: Option<VideoConfig>,
    /// Add a receive-only video transceiver to the first offer, for peers that publish nothing
    /// but must still offer video.
    pub recv_only_video: bool,
    /// Bind new UDP sockets (on `bind`, so a new port for port 0) at an ICE restart, as a
    /// device whose network changed would: the old address goes silent.
    pub rebind_on_ice_restart: bool,
}

impl PeerConfig {
    /// A loopback peer named `stream_id` that publishes the default test pattern.
    pub fn publisher(stream_id: &str) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            stream_id: stream_id.to_owned(),
            publish: Some(VideoConfig::default()),
            recv_only_video: false,
            rebind_on_ice_restart: false,
        }
    }

    /// A loopback peer named `stream_id` that only receives.
    pub fn receiver(stream_id: &str) -> Self {
        Self {
            publish: None,
            ..Self::publisher(stream_id)
        }
    }

    /// A loopback peer that only receives and offers one receive-only video m-line, as a
    /// WHEP player does.
    pub fn viewer(stream_id: &str) -> Self {
        Self {
            recv_only_video: true,
            ..Self::receiver(stream_id)
        }
    }
}

/// Events the connection reports; the handler only forwards them into channels so that no
/// work runs on the connection's driver.
struct Handler {
    state: watch::Sender<RTCPeerConnectionState>,
    gathering_complete: watch::Sender<bool>,
    candidates: mpsc::UnboundedSender<String>,
    stats: watch::Sender<TrackStats>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(init) => {
                let _ = self.candidates.send(init.candidate);
            }
            Err(error) => tracing::warn!(%error, "cannot serialise local candidate"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering_complete
            .send_replace(state == RTCIceGatheringState::Complete);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(%state, "connection state");
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        tokio::spawn(receive::run_remote_track(track, self.stats.clone()));
    }
}

/// A WebRTC peer for tests and tools. Signalling is left to the caller: it moves SDP and
/// candidate strings to the other side (another `Peer`, or an SFU over gRPC).
pub struct Peer {
    pc: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    gathering_complete: watch::Receiver<bool>,
    stats: watch::Receiver<TrackStats>,
    candidates: std::sync::Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Remote candidates that arrived before the remote description; applied right after it.
    pending_candidates: Mutex<Vec<String>>,
    counters: Arc<PublishCounters>,
    local_track: Option<RemoteTrackKey>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("state", &*self.state.borrow())
            .field("local_track", &self.local_track)
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// Creates the connection, binds its UDP socket and, if configured, adds the video track.
    /// Must be called inside a tokio runtime.
    pub async fn new(config: PeerConfig) -> Result<Self, PeerError> {
        let mut media_engine = MediaEngine::default();
        register_h264(&mut media_engine)?;
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(true)
            .with_discard_local_candidates_during_ice_restart(config.rebind_on_ice_restart)
            .build();

        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let (gathering_tx, gathering_complete) = watch::channel(false);
        let (candidates_tx, candidates) = mpsc::unbounded_channel();
        let (stats_tx, stats) = watch::channel(TrackStats::new());
        let handler = Arc::new(Handler {
            state: state_tx,
            gathering_complete: gathering_tx,
            candidates: candidates_tx,
            stats: stats_tx,
        });
        let pc: Arc<dyn PeerConnection> = Arc::new(
            PeerConnectionBuilder::new()
                .with_media_engine(media_engine)
                .with_interceptor_registry(registry)
                .with_setting_engine(settings)
                .with_handler(handler)
                .with_udp_addrs(vec![config.bind])
                .build()
                .await?,
        );

        let counters = Arc::new(PublishCounters::default());
        let mut tasks = Vec::new();
        let mut local_track = None;
        if let Some(video) = config.publish.clone() {
            let track_id = format!("{}-video", config.stream_id);
            let ssrc = rand_ssrc();
            let track = publish::new_track(&config.stream_id, &track_id, ssrc)?;
            let sender = pc
                .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
                .await?;
            tasks.push(tokio::spawn(publish::watch_feedback(
                Arc::clone(&track),
                Arc::clone(&counters),
            )));
            tasks.push(tokio::spawn(publish::run_publisher(
                track,
                sender,
                ssrc,
                video,
                state.clone(),
                Arc::clone(&counters),
            )));
            local_track = Some(RemoteTrackKey {
                stream_id: config.stream_id.clone(),
                track_id,
            });
        }
        if config.recv_only_video {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Video,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    ..Default::default()
                }),
            )
            .await?;
        }

        Ok(Self {
            pc,
            state,
            gathering_complete,
            stats,
            candidates: std::sync::Mutex::new(Some(candidates)),
            pending_candidates: Mutex::new(Vec::new()),
            counters,
            local_track,
            tasks,
        })
    }

    /// Creates an offer and applies it locally; returns its SDP. Candidates follow through
    /// [`Peer::take_local_candidates`] (trickle).
    pub async fn create_offer(&self) -> Result<String, PeerError> {
        let offer = self.pc.create_offer(None).await?;
        let sdp = offer.sdp.clone();
        self.pc.set_local_description(offer).await?;
        Ok(sdp)
    }

    /// Creates an offer, applies it and waits (bounded) until candidate gathering completes;
    /// returns the SDP with every candidate in it (for signalling without trickle).
    pub async fn create_offer_gathered(&self, wait: Duration) -> Result<String, PeerError> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer).await?;
        self.wait_gathering_complete(wait).await?;
        self.local_sdp().await
    }

    /// Restarts ICE and returns the offer carrying the new credentials, applied locally (the
    /// W3C `restartIce()` then `createOffer()`). New local candidates follow through
    /// [`Peer::take_local_candidates`]; with [`PeerConfig::rebind_on_ice_restart`] they name
    /// new sockets. The answer goes to [`Peer::apply_answer`].
    pub async fn restart_ice_offer(&self) -> Result<String, PeerError> {
        self.pc.restart_ice().await?;
        self.create_offer().await
    }

    /// Applies the remote answer to our last offer.
    pub async fn apply_answer(&self, sdp: &str) -> Result<(), PeerError> {
        self.pc
            .set_remote_description(RTCSessionDescription::answer(sdp.to_owned())?)
            .await?;
        self.flush_pending_candidates().await
    }

    /// Applies a remote offer (first negotiation or a renegotiation) and returns our answer,
    /// already applied locally.
    pub async fn apply_offer(&self, sdp: &str) -> Result<String, PeerError> {
        self.pc
            .set_remote_description(RTCSessionDescription::offer(sdp.to_owned())?)
            .await?;
        self.flush_pending_candidates().await?;
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer).await?;
        self.local_sdp().await
    }

    /// Adds a remote candidate (`candidate:...` line, with or without the `a=` prefix). Held
    /// back until the remote description is set, as browsers do.
    pub async fn add_remote_candidate(&self, candidate: &str) -> Result<(), PeerError> {
        let candidate = candidate.trim().trim_start_matches("a=").to_owned();
        if candidate.is_empty() {
            // End-of-candidates marker; nothing to do for ICE-lite or host-only peers.
            return Ok(());
        }
        let mut pending = self.pending_candidates.lock().await;
        if self.pc.remote_description().await.is_none() {
            pending.push(candidate);
            return Ok(());
        }
        drop(pending);
        self.pc.add_ice_candidate(candidate_init(candidate)).await?;
        Ok(())
    }

    async fn flush_pending_candidates(&self) -> Result<(), PeerError> {
        let pending = std::mem::take(&mut *self.pending_candidates.lock().await);
        for candidate in pending {
            self.pc.add_ice_candidate(candidate_init(candidate)).await?;
        }
        Ok(())
    }

    /// Returns the stream of local candidates (`candidate:...` strings) as they are gathered.
    /// Only the first call gets it; later calls get `None`.
    pub fn take_local_candidates(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.candidates.lock().ok().and_then(|mut c| c.take())
    }

    /// Waits until candidate gathering completes.
    pub async fn wait_gathering_complete(&self, wait: Duration) -> Result<(), PeerError> {
        let mut rx = self.gathering_complete.clone();
        match tokio::time::timeout(wait, rx.wait_for(|complete| *complete)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(PeerError::Timeout {
                after: wait,
                what: "ICE gathering to complete".into(),
            }),
        }
    }

    async fn local_sdp(&self) -> Result<String, PeerError> {
        self.pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| PeerError::Config("no local description".into()))
    }

    /// Returns the current connection state.
    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// Waits until the connection is `connected`; fails early on `failed`/`closed`.
    pub async fn wait_connected(&self, wait: Duration) -> Result<(), PeerError> {
        let mut rx = self.state.clone();
        let reached = tokio::time::timeout(
            wait,
            rx.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            }),
        )
        .await;
        match reached {
            Ok(Ok(state)) if *state == RTCPeerConnectionState::Connected => Ok(()),
            Ok(Ok(state)) => Err(PeerError::ConnectionEnded(state.to_string())),
            Ok(Err(_)) => Err(PeerError::ConnectionEnded("dropped".into())),
            Err(_) => Err(PeerError::Timeout {
                after: wait,
                what: format!("connected (state is {})", self.state()),
            }),
        }
    }

    /// Waits until the connection state satisfies `done`.
    pub async fn wait_state(
        &self,
        wait: Duration,
        done: impl FnMut(&RTCPeerConnectionState) -> bool,
    ) -> Result<RTCPeerConnectionState, PeerError> {
        let mut rx = self.state.clone();
        match tokio::time::timeout(wait, rx.wait_for(done)).await {
            Ok(Ok(state)) => Ok(*state),
            Ok(Err(_)) => Err(PeerError::ConnectionEnded("dropped".into())),
            Err(_) => Err(PeerError::Timeout {
                after: wait,
                what: format!("a connection state (state is {})", self.state()),
            }),
        }
    }

    /// Returns a snapshot of the counters of every remote track seen so far.
    pub fn remote_tracks(&self) -> Vec<(RemoteTrackKey, TrackCounters)> {
        self.stats
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Waits until `done` holds for the remote track counters; returns the snapshot that
    /// satisfied it, or a timeout error that shows the last snapshot.
    pub async fn wait_tracks(
        &self,
        wait: Duration,
        what: &str,
        mut done: impl FnMut(&[(RemoteTrackKey, TrackCounters)]) -> bool,
    ) -> Result<Vec<(RemoteTrackKey, TrackCounters)>, PeerError> {
        let mut rx = self.stats.clone();
        let snapshot = |s: &TrackStats| -> Vec<(RemoteTrackKey, TrackCounters)> {
            s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let result = tokio::time::timeout(
            wait,
            rx.wait_for(|s| {
                let snap = snapshot(s);
                done(&snap)
            }),
        )
        .await;
        match result {
            Ok(Ok(s)) => Ok(snapshot(&s)),
            Ok(Err(_)) => Err(PeerError::ConnectionEnded("dropped".into())),
            Err(_) => Err(PeerError::Timeout {
                after: wait,
                what: format!("{what}; tracks: {:?}", self.remote_tracks()),
            }),
        }
    }

    /// Waits until frames from at least `streams` distinct remote video tracks were each
    /// decoded at least `frames` times.
    pub async fn wait_decoded(
        &self,
        streams: usize,
        frames: u64,
        wait: Duration,
    ) -> Result<Vec<(RemoteTrackKey, TrackCounters)>, PeerError> {
        self.wait_tracks(
            wait,
            &format!("{frames} decoded frames on each of {streams} tracks"),
            |tracks| {
                tracks
                    .iter()
                    .filter(|(_, c)| c.video && c.frames_decoded >= frames)
                    .count()
                    >= streams
            },
        )
        .await
    }

    /// Returns the id of the local video track, if this peer publishes.
    pub fn local_track(&self) -> Option<&RemoteTrackKey> {
        self.local_track.as_ref()
    }

    /// Returns the number of frames sent on the local track.
    pub fn frames_sent(&self) -> u64 {
        self.counters.frames_sent.load(Ordering::Relaxed)
    }

    /// Returns the number of PLI/FIR keyframe requests received for the local track.
    pub fn keyframe_requests(&self) -> u64 {
        self.counters.keyframe_requests.load(Ordering::Relaxed)
    }

    /// Returns the connection for anything this wrapper does not cover.
    pub fn connection(&self) -> &Arc<dyn PeerConnection> {
        &self.pc
    }

    /// Closes the connection and stops the publishing task.
    pub async fn close(&self) -> Result<(), PeerError> {
        for task in &self.tasks {
            task.abort();
        }
        self.pc.close().await?;
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn candidate_init(candidate: String) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate,
        sdp_mid: None,
        sdp_mline_index: Some(0),
        ..Default::default()
    }
}

/// Registers H264 constrained baseline, packetization mode 1 — the only codec this peer sends
/// or decodes — under the two profile ids browsers and str0m use.
fn register_h264(media_engine: &mut MediaEngine) -> Result<(), PeerError> {
    let feedback = || {
        vec![
            RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            },
            RTCPFeedback {
                typ: "nack".into(),
                parameter: "pli".into(),
            },
            RTCPFeedback {
                typ: "ccm".into(),
                parameter: "fir".into(),
            },
        ]
    };
    let fmtps = [
        (102, H264_FMTP),
        (
            127,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        ),
    ];
    for (payload_type, fmtp) in fmtps {
        media_engine.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: MIME_TYPE_H264.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: fmtp.to_owned(),
                    rtcp_feedback: feedback(),
                },
                payload_type,
            },
            RtpCodecKind::Video,
        )?;
    }
    Ok(())
}

fn rand_ssrc() -> u32 {
    // Uniqueness per process is enough here; the SFU rewrites SSRCs anyway.
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (hasher.finish() as u32) | 1
}
