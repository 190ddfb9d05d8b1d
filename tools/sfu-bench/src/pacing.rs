//! The publisher's pacer: sends RTP at a fixed rate instead of a whole frame at once.
//!
//! A browser never puts a 10 KB frame on the wire in one burst: libwebrtc's pacer spreads the
//! packets at 2.5 × the target bitrate. Measuring an SFU with bursts would charge it for
//! queueing the publisher never causes. With a factor of 0 the pacer is off and frames leave
//! in one burst (the worst case for the SFU).
//!
//! The publisher also notes when each frame's first and last packet actually left, so a
//! subscriber can tell how long those packets spent between the publisher and itself, without
//! the time they waited in the pacer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Frames whose send times are kept for the subscribers to look up.
const SEND_LOG: usize = 256;

/// RTP datagrams waiting for their turn.
pub struct Pacer {
    /// Bits per second; 0 sends everything at once.
    rate_bps: u64,
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    /// When the next datagram may leave.
    next_at: Instant,
}

impl Pacer {
    pub fn new(rate_bps: u64) -> Self {
        Pacer {
            rate_bps,
            queue: VecDeque::new(),
            next_at: Instant::now(),
        }
    }

    pub fn push(&mut self, destination: SocketAddr, datagram: Vec<u8>) {
        self.queue.push_back((destination, datagram));
    }

    /// When the next queued datagram is due, if any is queued.
    pub fn deadline(&self) -> Option<Instant> {
        (!self.queue.is_empty()).then_some(self.next_at)
    }

    /// The next datagram if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(SocketAddr, Vec<u8>)> {
        if self.rate_bps > 0 && now < self.next_at {
            return None;
        }
        let (destination, datagram) = self.queue.pop_front()?;
        let bits_nanos = datagram.len() as u64 * 8 * 1_000_000_000;
        if let Some(nanos) = bits_nanos.checked_div(self.rate_bps) {
            // An idle pacer does not bank credit for a later burst.
            self.next_at = self.next_at.max(now) + Duration::from_nanos(nanos);
        }
        Some((destination, datagram))
    }
}

/// RTP timestamp and marker bit of an RTP datagram. The RTP header stays readable under
/// SRTP; RTCP, STUN and DTLS give `None`.
pub fn rtp_time_and_marker(datagram: &[u8]) -> Option<(u32, bool)> {
    if !is_rtp(datagram) {
        return None;
    }
    let ts = datagram.get(4..8)?;
    let marker = datagram[1] & 0x80 != 0;
    Some((u32::from_be_bytes([ts[0], ts[1], ts[2], ts[3]]), marker))
}

/// True for an RTP (not RTCP, STUN or DTLS) datagram.
pub fn is_rtp(datagram: &[u8]) -> bool {
    match (datagram.first(), datagram.get(1)) {
        (Some(&first), Some(&second)) => first >> 6 == 2 && !(64..=95).contains(&(second & 0x7f)),
        _ => false,
    }
}

/// When the first and the last packet of each recent frame left the publisher, by RTP
/// timestamp: one log for first packets, one for last (marker) packets.
#[derive(Default)]
pub struct SendLog {
    sent: Mutex<VecDeque<(u32, u64)>>,
}

impl SendLog {
    pub fn record(&self, rtp_time: u32, sent_nanos: u64) {
        if let Ok(mut sent) = self.sent.lock() {
            if sent.len() == SEND_LOG {
                sent.pop_front();
            }
            sent.push_back((rtp_time, sent_nanos));
        }
    }

    pub fn sent_at(&self, rtp_time: u32) -> Option<u64> {
        let sent = self.sent.lock().ok()?;
        sent.iter()
            .rev()
            .find(|(t, _)| *t == rtp_time)
            .map(|(_, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spreads_datagrams_at_its_rate() {
        let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // 8 Mbit/s: a 1000-byte datagram takes 1 ms.
        let mut pacer = Pacer::new(8_000_000);
        let t0 = Instant::now();
        pacer.push(dest, vec![0; 1000]);
        pacer.push(dest, vec![0; 1000]);
        assert!(pacer.pop_due(t0 + Duration::from_millis(1)).is_some());
        assert!(pacer.pop_due(t0 + Duration::from_millis(1)).is_none());
        assert_eq!(pacer.deadline(), Some(pacer.next_at));
        assert!(pacer.pop_due(t0 + Duration::from_millis(3)).is_some());
        assert_eq!(pacer.deadline(), None);
        // Off: everything at once.
        let mut off = Pacer::new(0);
        off.push(dest, vec![0; 1000]);
        off.push(dest, vec![0; 1000]);
        assert!(off.pop_due(t0).is_some() && off.pop_due(t0).is_some());
    }

    #[test]
    fn rtp_headers_are_read_in_the_clear() {
        let mut rtp = vec![0x80, 0x80 | 96, 0, 1, 0, 0, 0x0b, 0xb8, 0, 0, 0, 1];
        assert_eq!(rtp_time_and_marker(&rtp), Some((3000, true)));
        rtp[1] = 96;
        assert_eq!(rtp_time_and_marker(&rtp), Some((3000, false)));
        // RTCP sender report (PT 200) and a STUN binding request are not RTP.
        assert!(!is_rtp(&[0x80, 200, 0, 6]));
        assert!(!is_rtp(&[0x00, 0x01, 0, 0]));
        assert_eq!(rtp_time_and_marker(&[0x80]), None);
        assert_eq!(rtp_time_and_marker(&rtp[..6]), None);
    }
}
