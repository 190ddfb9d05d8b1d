//! Keyframe request throttling for one publisher layer.
//!
//! Many subscribers asking for a keyframe at once (a burst of PLIs after loss, several joins)
//! must cost the publisher one keyframe, not one per request: a keyframe is many times larger
//! than a delta frame. A request inside the minimum interval is remembered and sent when the
//! interval ends, unless a keyframe arrived in the meantime.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub(crate) struct KeyframeGate {
    last_sent: Option<Instant>,
    /// A request was held back by the interval and is still unanswered.
    deferred: bool,
    /// Requests sent to the publisher.
    pub(crate) sent: u64,
}

impl KeyframeGate {
    /// Records a request; returns true when it must be sent to the publisher now.
    pub(crate) fn request(&mut self, now: Instant, min_interval: Duration) -> bool {
        match self.last_sent {
            Some(t) if now.saturating_duration_since(t) < min_interval => {
                self.deferred = true;
                false
            }
            _ => {
                self.mark_sent(now);
                true
            }
        }
    }

    /// A keyframe arrived: a held-back request is answered.
    pub(crate) fn on_keyframe(&mut self) {
        self.deferred = false;
    }

    /// When a held-back request becomes due.
    pub(crate) fn deadline(&self, min_interval: Duration) -> Option<Instant> {
        match (self.deferred, self.last_sent) {
            // An interval too large to represent means "never again".
            (true, Some(t)) => t.checked_add(min_interval),
            _ => None,
        }
    }

    /// Returns true (and counts the request as sent) when a held-back request is due at `now`.
    pub(crate) fn poll_due(&mut self, now: Instant, min_interval: Duration) -> bool {
        match self.deadline(min_interval) {
            Some(due) if due <= now => {
                self.mark_sent(now);
                true
            }
            _ => false,
        }
    }

    fn mark_sent(&mut self, now: Instant) {
        self.last_sent = Some(now);
        self.deferred = false;
        self.sent += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(500);

    #[test]
    fn burst_collapses_into_one_request() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::default();
        assert!(g.request(t0, MIN));
        for i in 1..10 {
            assert!(!g.request(t0 + Duration::from_millis(i * 10), MIN));
        }
        assert_eq!(g.sent, 1);
        assert_eq!(g.deadline(MIN), Some(t0 + MIN));
        assert!(!g.poll_due(t0 + Duration::from_millis(499), MIN));
        assert!(g.poll_due(t0 + MIN, MIN));
        assert_eq!(g.sent, 2);
        assert_eq!(g.deadline(MIN), None);
    }

    #[test]
    fn keyframe_cancels_deferred_request() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::default();
        assert!(g.request(t0, MIN));
        assert!(!g.request(t0 + Duration::from_millis(100), MIN));
        g.on_keyframe();
        assert!(!g.poll_due(t0 + Duration::from_secs(1), MIN));
        assert!(g.request(t0 + Duration::from_secs(1), MIN));
    }
}
