//! The bandwidth we may use towards one subscriber: the budget its simulcast layers must fit.
//!
//! Three sources, the smallest wins:
//! - **Loss** (always on): the share of our packets the subscriber did not receive over the last
//!   second, from its transport-wide congestion control (TWCC) feedback. It follows the
//!   loss-based controller of Google congestion control: above 10 % loss the budget drops to
//!   what we actually sent, reduced by half the loss; under 2 % it grows by 8 % per report, up
//!   to a ceiling above what the best layers need. In between it holds.
//! - **REMB**: the receiver's own cap, while it keeps repeating it.
//! - **Delay** (optional, [`crate::CoreConfig::bwe`]): str0m's send-side estimator, which also
//!   paces the leg.
//!
//! Loss is measured without pacing or probing, so a leg is never held back by its estimator:
//! forwarding stays a straight copy, and the budget only decides which layer is forwarded.

use std::time::{Duration, Instant};

/// How long a REMB value from the peer stays authoritative without being repeated.
const REMB_TTL: Duration = Duration::from_secs(5);
/// Loss above which the budget is cut.
const LOSS_HIGH: f32 = 0.10;
/// Loss under which the budget may grow.
const LOSS_LOW: f32 = 0.02;
/// Growth per loss-free report.
const GROWTH: f64 = 1.08;
/// The budget never falls below this: enough for audio and a lowest layer.
const MIN_BPS: u64 = 50_000;

/// Budget towards one subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Estimate {
    /// Loss-based budget.
    loss_based: u64,
    /// Delay-based estimate of str0m's send-side estimator, when it runs.
    pub(crate) twcc: Option<u64>,
    /// The receiver's own cap (REMB), with the time it arrived.
    pub(crate) remb: Option<(u64, Instant)>,
    /// What the best layers of every subscription would need; caps the loss-based growth.
    pub(crate) wanted_bps: u64,
}

impl Estimate {
    pub(crate) fn new(initial_bps: u64) -> Self {
        Estimate {
            loss_based: initial_bps.max(MIN_BPS),
            twcc: None,
            remb: None,
            wanted_bps: 0,
        }
    }

    /// One loss report: `loss` over the last second, `sent_bps` what we sent meanwhile.
    pub(crate) fn on_loss(&mut self, loss: f32, sent_bps: u64) {
        let wanted_bps = self.wanted_bps;
        if loss > LOSS_HIGH {
            let base = self.loss_based.min(sent_bps.max(MIN_BPS));
            self.loss_based = (base as f64 * (1.0 - f64::from(loss) / 2.0)).round() as u64;
        } else if loss < LOSS_LOW {
            let ceiling = (wanted_bps + wanted_bps / 2).max(self.loss_based);
            self.loss_based = ((self.loss_based as f64 * GROWTH) as u64).min(ceiling);
        }
        self.loss_based = self.loss_based.max(MIN_BPS);
    }

    /// The budget now.
    pub(crate) fn available(&self, now: Instant) -> u64 {
        let remb = self
            .remb
            .filter(|(_, at)| now.saturating_duration_since(*at) < REMB_TTL)
            .map(|(bps, _)| bps);
        [Some(self.loss_based), self.twcc, remb]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.loss_based)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_loss_cuts_from_what_was_sent_and_clean_reports_grow_back() {
        let mut e = Estimate::new(2_500_000);
        e.wanted_bps = 1_000_000;
        // 20 % loss while sending 800 kbit/s: 800k × 0.9.
        e.on_loss(0.20, 800_000);
        assert_eq!(e.loss_based, 720_000);
        // Moderate loss holds.
        e.on_loss(0.05, 700_000);
        assert_eq!(e.loss_based, 720_000);
        // Clean reports grow by 8 % each, up to 1.5 × what is wanted.
        e.on_loss(0.0, 700_000);
        assert_eq!(e.loss_based, 777_600);
        for _ in 0..20 {
            e.on_loss(0.0, 700_000);
        }
        assert_eq!(e.loss_based, 1_500_000);
        // Never below the floor.
        for _ in 0..50 {
            e.on_loss(0.9, 0);
        }
        assert_eq!(e.loss_based, MIN_BPS);
    }

    #[test]
    fn the_smallest_source_wins_and_remb_expires() {
        let t0 = Instant::now();
        let mut e = Estimate::new(2_000_000);
        assert_eq!(e.available(t0), 2_000_000);
        e.remb = Some((300_000, t0));
        assert_eq!(e.available(t0 + Duration::from_secs(1)), 300_000);
        assert_eq!(e.available(t0 + REMB_TTL), 2_000_000);
        e.twcc = Some(1_000_000);
        assert_eq!(e.available(t0 + REMB_TTL), 1_000_000);
    }
}
