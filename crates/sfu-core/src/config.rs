//! Configuration of the media core.

use std::net::SocketAddr;
use std::time::Duration;

/// Settings of one node's media core. `candidates` must hold at least one usable address.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Host candidates advertised in every answer and offer: the address(es) of the one shared
    /// UDP socket as peers can reach it (for containers/NAT the public address).
    pub candidates: Vec<SocketAddr>,
    /// Minimum time between two keyframe requests sent to the same publisher layer. Requests
    /// from many subscribers inside this window collapse into one.
    pub keyframe_min_interval: Duration,
    /// Also runs str0m's delay-based send-side estimator on every leg. Its estimate caps the
    /// layer budget, but str0m then paces each leg at 1.1 × the estimate, so a leg whose
    /// estimate falls below a single-layer stream's bitrate queues (up to 2 s) instead of
    /// dropping. Without it the budget comes from TWCC-reported loss and REMB, unpaced.
    pub bwe: bool,
    /// Starting point of the bandwidth estimate on subscriber legs, in bits per second.
    pub bwe_initial_bps: u64,
    /// How long a participant may take from `join` until ICE and DTLS are up.
    pub connect_timeout: Duration,
    /// How long a connected participant may stay ICE-disconnected before it is removed.
    pub disconnect_grace: Duration,
    /// How long a server offer may stay unanswered before it is withdrawn and made again.
    pub answer_timeout: Duration,
    /// Interval of the WebRTC stack's own statistics (RTT, loss) feeding participant stats.
    pub stats_interval: Duration,
    /// Most rooms open at once on this node.
    pub max_rooms: usize,
    /// Most participants in one room.
    pub max_participants_per_room: usize,
    /// Most tracks one participant may publish.
    pub max_tracks_per_participant: usize,
    /// Largest SDP accepted, in bytes.
    pub max_sdp_bytes: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            candidates: Vec::new(),
            keyframe_min_interval: Duration::from_millis(500),
            bwe: true,
            bwe_initial_bps: 2_500_000,
            connect_timeout: Duration::from_secs(30),
            disconnect_grace: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(10),
            stats_interval: Duration::from_secs(1),
            max_rooms: 10_000,
            max_participants_per_room: 1_000,
            max_tracks_per_participant: 16,
            max_sdp_bytes: 64 * 1024,
        }
    }
}
