//! Statistics and load counters, plus the rate meter they are built from.

use std::time::{Duration, Instant};

use crate::event::{TrackId, TrackKind};

/// Snapshot of one room.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomStats {
    /// Room id.
    pub room: String,
    /// Participant ids, in join order.
    pub participants: Vec<String>,
    /// Published tracks of the room.
    pub tracks: Vec<TrackStats>,
    /// Bits per second received from the room's publishers.
    pub bitrate_in_bps: u64,
    /// Bits per second sent to the room's participants.
    pub bitrate_out_bps: u64,
}

/// Snapshot of one published track.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackStats {
    /// Track id.
    pub track: TrackId,
    /// Publisher id.
    pub publisher: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Simulcast layers with their measured bitrate, lowest first; one entry with an empty rid
    /// without simulcast.
    pub layers: Vec<LayerStats>,
    /// Participants currently receiving the track (negotiated and open).
    pub subscribers: usize,
    /// Frames (or audio samples) received from the publisher.
    pub frames_in: u64,
    /// Keyframe requests sent to the publisher for this track.
    pub keyframe_requests: u64,
}

/// One simulcast layer of a published track.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStats {
    /// Layer id; empty without simulcast.
    pub rid: String,
    /// Measured incoming bitrate.
    pub bitrate_bps: u64,
}

/// Snapshot of one participant.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantStats {
    /// Participant id.
    pub participant: String,
    /// Room id.
    pub room: String,
    /// ICE and DTLS are up.
    pub connected: bool,
    /// Tracks this participant publishes.
    pub published: Vec<TrackId>,
    /// Tracks forwarded to this participant (negotiated and open), with the simulcast layer
    /// currently forwarded (empty without simulcast).
    pub subscribed: Vec<(TrackId, String)>,
    /// Bytes received from the peer (all UDP payload).
    pub bytes_in: u64,
    /// Bytes sent to the peer (all UDP payload).
    pub bytes_out: u64,
    /// Datagrams received from the peer (STUN, DTLS, RTP, RTCP).
    pub packets_in: u64,
    /// Datagrams sent to the peer (STUN, DTLS, RTP, RTCP).
    pub packets_out: u64,
    /// Bits per second received recently.
    pub bitrate_in_bps: u64,
    /// Bits per second sent recently.
    pub bitrate_out_bps: u64,
    /// Frames forwarded to this participant.
    pub frames_forwarded: u64,
    /// Available send bitrate towards the participant (bandwidth estimate), if known.
    pub estimate_bps: Option<u64>,
    /// Round-trip time reported by the WebRTC stack, if known.
    pub rtt_ms: Option<u64>,
    /// Fraction of packets lost from the peer to us (0.0–1.0), if known.
    pub ingress_loss: Option<f32>,
    /// Fraction of packets lost from us to the peer (0.0–1.0), if known.
    pub egress_loss: Option<f32>,
    /// NACKs received from the peer (our retransmissions).
    pub nacks_received: u64,
    /// NACKs sent to the peer (retransmissions we asked for).
    pub nacks_sent: u64,
    /// Keyframe requests (PLI/FIR) received from the peer.
    pub keyframe_requests_received: u64,
    /// Tracks of the room a viewer (WHEP) does not receive because its session has no free
    /// m-line of their kind; always empty for other participants.
    pub unsent: Vec<TrackId>,
}

/// Load of the whole node, for the heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLoad {
    /// Open rooms.
    pub rooms: usize,
    /// Participants in all rooms.
    pub participants: usize,
    /// Published tracks.
    pub tracks: usize,
    /// Open forwarded tracks (one per track per receiving participant).
    pub subscriptions: usize,
    /// Bits per second received on the media socket.
    pub bitrate_in_bps: u64,
    /// Bits per second sent from the media socket.
    pub bitrate_out_bps: u64,
    /// Datagrams received since start.
    pub datagrams_in: u64,
    /// Datagrams sent since start.
    pub datagrams_out: u64,
    /// Datagrams that matched no participant (or could not be parsed) since start.
    pub datagrams_dropped: u64,
    /// Of those, datagrams from no known address that named no known ICE ufrag.
    pub datagrams_unknown_source: u64,
}

/// Measures a byte rate over consecutive windows; reads return the last full window's rate,
/// so a reader without a clock (stats calls) still sees a meaningful number.
#[derive(Debug, Clone, Default)]
pub(crate) struct RateMeter {
    window_start: Option<Instant>,
    bytes: u64,
    bps: u64,
}

const WINDOW: Duration = Duration::from_millis(500);

impl RateMeter {
    pub(crate) fn add(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.bytes += bytes as u64;
    }

    /// Closes the current window once it is old enough; idle meters decay to zero this way.
    pub(crate) fn roll(&mut self, now: Instant) {
        let Some(start) = self.window_start else {
            self.window_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            let micros = elapsed.as_micros().max(1) as u64;
            self.bps = self.bytes.saturating_mul(8_000_000) / micros;
            self.bytes = 0;
            self.window_start = Some(now);
        }
    }

    pub(crate) fn bps(&self) -> u64 {
        self.bps
    }

    /// True once at least one window has been measured.
    pub(crate) fn is_measured(&self) -> bool {
        self.bps > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_reports_last_window_rate() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        m.add(t0, 0);
        for i in 0..10u64 {
            // 1250 bytes every 50 ms = 200 kbit/s
            m.add(t0 + Duration::from_millis(50 * i), 1250);
        }
        m.roll(t0 + Duration::from_millis(500));
        assert_eq!(m.bps(), 200_000);
        m.roll(t0 + Duration::from_millis(1000));
        assert_eq!(m.bps(), 0, "an idle window decays to zero");
    }
}
