//! Rewriting of forwarded RTP packets for one subscriber of one track.
//!
//! A subscriber sees one continuous stream per track although the SFU may switch the simulcast
//! layer it forwards, and layers are separate RTP streams with their own sequence numbers and
//! timestamp bases. [`SeqMap`] gives the outgoing stream gap-free sequence numbers across a
//! switch (a jump would look like loss and trigger NACKs for packets that never existed), and
//! [`Timeline`] keeps the RTP clock moving forward with wall-clock time.

use std::time::Instant;

use str0m::media::MediaTime;

/// First outgoing sequence number of a stream. Small, so the SRTP rollover counter starts at 0
/// as the receiver assumes.
const FIRST_SEQ: u64 = 1;

/// Maps the extended sequence numbers of the forwarded layer onto the outgoing stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqMap {
    /// Outgoing = incoming + offset, for the layer being forwarded.
    offset: i64,
    /// First incoming sequence number of the current layer: older packets of it (reordered
    /// from before the switch) have no place in the outgoing stream.
    base: u64,
    /// Highest outgoing sequence number so far.
    highest: Option<u64>,
}

impl SeqMap {
    /// The outgoing sequence number for `seq`, or `None` when the packet must be dropped.
    /// `switched` marks the first packet of a newly started layer.
    pub(crate) fn map(&mut self, seq: u64, switched: bool) -> Option<u64> {
        if switched || self.highest.is_none() {
            let next = self.highest.map_or(FIRST_SEQ, |h| h + 1);
            self.offset = next as i64 - seq as i64;
            self.base = seq;
        } else if seq < self.base {
            return None;
        }
        let out = u64::try_from(seq as i64 + self.offset).ok()?;
        self.highest = Some(self.highest.map_or(out, |h| h.max(out)));
        Some(out)
    }
}

/// Keeps the outgoing RTP timeline continuous across layer switches.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    offset: i128,
    last: Option<(u64, Instant)>,
}

/// Largest forward step (in seconds) that still counts as "the new layer continues the old
/// timeline": layers sharing a timestamp base keep their exact timestamps.
const CONTINUOUS_SECS: i128 = 5;

impl Timeline {
    pub(crate) fn map(&mut self, time: MediaTime, wallclock: Instant, switched: bool) -> MediaTime {
        let freq = time.frequency();
        let rate = i128::from(freq.get());
        let input = i128::from(time.numer());
        if switched && let Some((last, last_wall)) = self.last {
            let last = i128::from(last);
            let step = input + self.offset - last;
            if step <= 0 || step > CONTINUOUS_SECS * rate {
                let gap = wallclock.saturating_duration_since(last_wall);
                let gap_ticks = (gap.as_micros() as i128 * rate / 1_000_000).max(1);
                self.offset = last + gap_ticks - input;
            }
        }
        let out = (input + self.offset).clamp(0, i128::from(u64::MAX)) as u64;
        self.last = Some((out, wallclock));
        MediaTime::new(out, freq)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sequence_numbers_continue_across_a_switch() {
        let mut m = SeqMap::default();
        assert_eq!(m.map(5_000, false), Some(FIRST_SEQ));
        assert_eq!(m.map(5_001, false), Some(FIRST_SEQ + 1));
        // Reordered packet of the same layer keeps its place.
        assert_eq!(m.map(5_003, false), Some(FIRST_SEQ + 3));
        assert_eq!(m.map(5_002, false), Some(FIRST_SEQ + 2));
        // Switch to a layer numbered far away: continues right after the highest.
        assert_eq!(m.map(70_000, true), Some(FIRST_SEQ + 4));
        assert_eq!(m.map(70_001, false), Some(FIRST_SEQ + 5));
        // A late packet of the new layer from before the switch point is dropped.
        assert_eq!(m.map(69_999, false), None);
        // Switching back to a lower-numbered layer still moves forward.
        assert_eq!(m.map(5_100, true), Some(FIRST_SEQ + 6));
    }

    #[test]
    fn timeline_rebases_unrelated_layer_and_keeps_shared_base() {
        let t0 = Instant::now();
        let mut tl = Timeline::default();
        let a = tl.map(MediaTime::from_90khz(1_000_000), t0, true);
        assert_eq!(a.numer(), 1_000_000);
        let b = tl.map(
            MediaTime::from_90khz(1_003_000),
            t0 + Duration::from_millis(33),
            false,
        );
        assert_eq!(b.numer(), 1_003_000);
        // A layer with an unrelated base: continue 33 ms (2970 ticks) after the last frame.
        let c = tl.map(
            MediaTime::from_90khz(42),
            t0 + Duration::from_millis(66),
            true,
        );
        assert_eq!(c.numer(), 1_003_000 + 2970);
        let d = tl.map(
            MediaTime::from_90khz(42 + 3000),
            t0 + Duration::from_millis(99),
            false,
        );
        assert_eq!(d.numer(), 1_003_000 + 2970 + 3000);
        // Switching to a layer that continues the current timeline keeps its timestamps.
        let e = tl.map(
            MediaTime::from_90khz(42 + 6000),
            t0 + Duration::from_millis(133),
            true,
        );
        assert_eq!(e.numer(), d.numer() + 3000);
    }
}
