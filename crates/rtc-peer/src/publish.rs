//! Sending side: the synthetic video track and the task that paces encoded frames into it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::watch;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::RTCPeerConnectionState;
use webrtc::rtp_transceiver::RtpSender;

use crate::pattern::{PatternEncoder, VideoConfig};
use crate::{H264_FMTP, PeerError};

/// Counters of the local video track.
#[derive(Debug, Default)]
pub(crate) struct PublishCounters {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub keyframe_requests: AtomicU64,
    keyframe_wanted: AtomicBool,
}

/// Builds the local H264 track with a fixed SSRC.
pub(crate) fn new_track(
    stream_id: &str,
    track_id: &str,
    ssrc: u32,
) -> Result<Arc<TrackLocalStaticSample>, PeerError> {
    let track = MediaStreamTrack::new(
        stream_id.to_owned(),
        track_id.to_owned(),
        format!("{stream_id} test pattern"),
        RtpCodecKind::Video,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec: RTCRtpCodec {
                mime_type: MIME_TYPE_H264.to_owned(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: H264_FMTP.to_owned(),
                rtcp_feedback: vec![],
            },
            ..Default::default()
        }],
    );
    Ok(Arc::new(TrackLocalStaticSample::new(
        Instant::now(),
        track,
    )?))
}

/// Watches RTCP arriving for the local track and flags a keyframe on PLI or FIR.
pub(crate) async fn watch_feedback(
    track: Arc<TrackLocalStaticSample>,
    counters: Arc<PublishCounters>,
) {
    while let Some(event) = track.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        for packet in packets {
            let any = packet.as_any();
            if any.downcast_ref::<PictureLossIndication>().is_some()
                || any.downcast_ref::<FullIntraRequest>().is_some()
            {
                counters.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                counters.keyframe_wanted.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Encodes and sends one access unit per frame interval while the connection is up. Waits for
/// the first `connected`, stops at `closed`/`failed`.
pub(crate) async fn run_publisher(
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    config: VideoConfig,
    mut state: watch::Receiver<RTCPeerConnectionState>,
    counters: Arc<PublishCounters>,
) {
    let connected = state
        .wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Closed
                    | RTCPeerConnectionState::Failed
            )
        })
        .await
        .map(|s| *s == RTCPeerConnectionState::Connected)
        .unwrap_or(false);
    if !connected {
        return;
    }
    // The payload type is whatever the negotiation settled on; the track itself does not know.
    let payload_type = match sender.get_parameters().await {
        Ok(params) => match params.rtp_parameters.codecs.first() {
            Some(codec) => codec.payload_type,
            None => {
                tracing::error!("no negotiated codec for the local video track");
                return;
            }
        },
        Err(error) => {
            tracing::error!(%error, "cannot read sender parameters");
            return;
        }
    };
    let mut encoder = match PatternEncoder::new(&config) {
        Ok(encoder) => encoder,
        Err(error) => {
            tracing::error!(%error, "cannot create encoder");
            return;
        }
    };
    let frame_duration = Duration::from_secs(1) / config.fps;
    let mut ticker = tokio::time::interval(frame_duration);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if matches!(
            *state.borrow(),
            RTCPeerConnectionState::Closed | RTCPeerConnectionState::Failed
        ) {
            return;
        }
        if counters.keyframe_wanted.swap(false, Ordering::Relaxed) {
            encoder.force_keyframe();
        }
        let access_unit = match encoder.next_access_unit() {
            Ok(au) if au.is_empty() => continue,
            Ok(au) => au,
            Err(error) => {
                tracing::error!(%error, "encoding failed");
                return;
            }
        };
        let len = access_unit.len() as u64;
        let sample = Sample {
            data: Bytes::from(access_unit),
            duration: frame_duration,
            ..Sample::new(Instant::now())
        };
        match track.write_sample(ssrc, payload_type, &sample, &[]).await {
            Ok(()) => {
                counters.frames_sent.fetch_add(1, Ordering::Relaxed);
                counters.bytes_sent.fetch_add(len, Ordering::Relaxed);
            }
            // A send can fail while a renegotiation is in flight; the next frame retries.
            Err(error) => tracing::debug!(%error, "write_sample failed"),
        }
    }
}
