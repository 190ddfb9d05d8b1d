//! Receiving side: one task per remote track that reassembles H264 access units from RTP and
//! decodes them with openh264, publishing per-track counters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use rtc::media::io::sample_builder::SampleBuilder;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::watch;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

/// Identifies a remote track by its media stream id and track id (the `a=msid` pair).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RemoteTrackKey {
    /// The media stream id (the publisher's stream; SFUs usually put the participant here).
    pub stream_id: String,
    /// The track id.
    pub track_id: String,
}

/// Counters of one remote track.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackCounters {
    /// The media kind as negotiated.
    pub video: bool,
    /// RTP packets received.
    pub packets: u64,
    /// Access units handed to the decoder.
    pub access_units: u64,
    /// Frames the decoder produced.
    pub frames_decoded: u64,
    /// Access units the decoder rejected (expected before the first keyframe).
    pub decode_errors: u64,
    /// Width and height of the last decoded frame.
    pub last_size: Option<(usize, usize)>,
    /// True once the track ended (the sender stopped or the transceiver went inactive).
    pub ended: bool,
}

/// The per-track counters of a peer, shared with waiters through a watch channel.
pub(crate) type TrackStats = BTreeMap<RemoteTrackKey, TrackCounters>;

/// How often a receiver without a decoded frame asks for a keyframe. The SFU throttles PLIs
/// itself; this only covers a lost first keyframe.
const PLI_RETRY: Duration = Duration::from_millis(500);

/// Reads `track` until it ends, decoding video and updating `stats` after every packet.
pub(crate) async fn run_remote_track(
    track: Arc<dyn TrackRemote>,
    stats: watch::Sender<TrackStats>,
) {
    let key = RemoteTrackKey {
        stream_id: track.stream_id().await,
        track_id: track.track_id().await,
    };
    let video = track.kind().await == RtpCodecKind::Video;
    tracing::debug!(?key, video, "remote track");
    stats.send_modify(|s| {
        s.entry(key.clone()).or_default().video = video;
    });

    let mut decoder = match Decoder::new() {
        Ok(decoder) => decoder,
        Err(error) => {
            tracing::error!(%error, "cannot create H264 decoder");
            return;
        }
    };
    // 90 kHz video clock; up to 256 packets of reordering before a gap is given up on.
    let mut builder = SampleBuilder::new(256, H264Packet::default(), 90_000);
    let mut next_pli = Instant::now();
    let mut media_ssrc = None;

    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                media_ssrc.get_or_insert(packet.header.ssrc);
                let now = Instant::now();
                builder.push(now, packet);
                let mut update = TrackCounters {
                    packets: 1,
                    ..TrackCounters::default()
                };
                while let Some(sample) = builder.pop(now) {
                    if !video || sample.data.is_empty() {
                        continue;
                    }
                    update.access_units += 1;
                    match decoder.decode(&sample.data) {
                        Ok(Some(frame)) => {
                            update.frames_decoded += 1;
                            update.last_size = Some(frame.dimensions());
                        }
                        Ok(None) => {}
                        Err(_) => update.decode_errors += 1,
                    }
                }
                let mut decoded_any = false;
                stats.send_modify(|s| {
                    let c = s.entry(key.clone()).or_default();
                    c.packets += update.packets;
                    c.access_units += update.access_units;
                    c.frames_decoded += update.frames_decoded;
                    c.decode_errors += update.decode_errors;
                    if update.last_size.is_some() {
                        c.last_size = update.last_size;
                    }
                    decoded_any = c.frames_decoded > 0;
                });
                if video
                    && !decoded_any
                    && now >= next_pli
                    && let Some(ssrc) = media_ssrc
                {
                    next_pli = now + PLI_RETRY;
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: ssrc,
                    };
                    if let Err(error) = track.write_rtcp(vec![Box::new(pli)]).await {
                        tracing::debug!(%error, "cannot send PLI");
                    }
                }
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    tracing::debug!(?key, "remote track ended");
    stats.send_modify(|s| {
        s.entry(key).or_default().ended = true;
    });
}
