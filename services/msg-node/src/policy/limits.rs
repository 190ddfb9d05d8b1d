//! Per-identity limits: message size and a token-bucket rate.
//!
//! Time is passed in (`now`), never read here, so tests drive the buckets on a virtual clock.
//! Buckets are per replica: an identity connected to two replicas gets each replica's rate.

use std::collections::HashMap;
use std::time::Instant;

/// The limits that apply to one identity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Largest accepted message (the whole frame), in bytes.
    pub max_message_bytes: usize,
    /// Sustained messages per second; 0 means unlimited.
    pub rate: f64,
    /// Messages that may be sent at once after a quiet period (the bucket size).
    pub burst: u32,
}

impl Limits {
    /// What applies when the policy file sets nothing: 64 KiB, 200 msg/s, bursts of 400.
    pub const DEFAULT: Limits = Limits {
        max_message_bytes: 64 * 1024,
        rate: 200.0,
        burst: 400,
    };

    /// Returns these limits with the given fields replaced.
    pub fn overlay(self, max: Option<usize>, rate: Option<f64>, burst: Option<u32>) -> Limits {
        Limits {
            max_message_bytes: max.unwrap_or(self.max_message_bytes),
            rate: rate.unwrap_or(self.rate),
            burst: burst.unwrap_or(self.burst),
        }
    }
}

/// Bucket count below which idle buckets are never swept.
const SWEEP_FLOOR: usize = 4096;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by identity.
///
/// Memory stays proportional to the identities active within one refill period: a bucket that
/// has refilled completely is indistinguishable from a new one, so sweeps drop it.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: HashMap<String, Bucket>,
    sweep_at: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            buckets: HashMap::new(),
            sweep_at: SWEEP_FLOOR,
        }
    }
}

impl RateLimiter {
    /// Takes one token from `key`'s bucket; returns false when the bucket is empty.
    pub fn try_take(&mut self, key: &str, limits: &Limits, now: Instant) -> bool {
        if limits.rate <= 0.0 {
            return true;
        }
        let burst = f64::from(limits.burst);
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.sweep_at {
            self.sweep(limits, now);
        }
        let bucket = self.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        // A `now` earlier than the last one (callers racing) adds nothing rather than panicking.
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        // Clamping also applies a smaller burst after a policy reload.
        bucket.tokens = (bucket.tokens + elapsed * limits.rate).min(burst);
        bucket.last = bucket.last.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops buckets that would be full by `now`. Uses the current limits for all of them, which
    /// at worst forgets a little debt of an identity whose own limits are slower.
    fn sweep(&mut self, limits: &Limits, now: Instant) {
        let burst = f64::from(limits.burst);
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens + elapsed * limits.rate < burst
        });
        self.sweep_at = (self.buckets.len() * 2).max(SWEEP_FLOOR);
    }

    /// Returns how many buckets are held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const L: Limits = Limits {
        max_message_bytes: 100,
        rate: 10.0,
        burst: 5,
    };

    #[test]
    fn burst_then_refill_at_the_rate() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(rl.try_take("a", &L, t0));
        }
        assert!(!rl.try_take("a", &L, t0));
        // 10/s: one token every 100 ms.
        assert!(!rl.try_take("a", &L, t0 + Duration::from_millis(99)));
        // By 200 ms two tokens have accrued, whatever the failed attempt in between.
        assert!(rl.try_take("a", &L, t0 + Duration::from_millis(200)));
        assert!(rl.try_take("a", &L, t0 + Duration::from_millis(200)));
        assert!(!rl.try_take("a", &L, t0 + Duration::from_millis(200)));
        // Other identities are independent.
        assert!(rl.try_take("b", &L, t0));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert!(rl.try_take("a", &L, later));
        }
        assert!(!rl.try_take("a", &L, later));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let mut rl = RateLimiter::default();
        let unlimited = Limits { rate: 0.0, ..L };
        let t0 = Instant::now();
        assert!((0..10_000).all(|_| rl.try_take("a", &unlimited, t0)));
        assert_eq!(rl.len(), 0);
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now() + Duration::from_secs(10);
        for _ in 0..5 {
            assert!(rl.try_take("a", &L, t0));
        }
        assert!(!rl.try_take("a", &L, t0 - Duration::from_secs(5)));
        assert!(rl.try_take("a", &L, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn sweeps_keep_memory_bounded() {
        let mut rl = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..SWEEP_FLOOR {
            assert!(rl.try_take(&format!("id{i}"), &L, t0));
        }
        assert_eq!(rl.len(), SWEEP_FLOOR);
        // Half a second later every bucket is full again; the next new identity sweeps them.
        assert!(rl.try_take("late", &L, t0 + Duration::from_millis(500)));
        assert_eq!(rl.len(), 1);
    }
}
