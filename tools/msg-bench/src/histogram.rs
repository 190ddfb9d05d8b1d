//! A log-linear latency histogram: constant memory, about 1.6 % relative error.
//!
//! Values are microseconds. Below 64 µs every value has its own bucket; above, each power of
//! two is split into 64 buckets, so a reported percentile is at most 1/64 above the true value.

/// Sub-buckets per power of two.
const SUB: u64 = 64;
/// Powers of two covered above the linear range (64 µs · 2^26 ≈ 71 minutes).
const OCTAVES: usize = 26;

/// Counts of latencies in microseconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; SUB as usize * (OCTAVES + 1)],
            count: 0,
            max: 0,
        }
    }
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, micros: u64) {
        let index = index_of(micros).min(self.buckets.len() - 1);
        self.buckets[index] += 1;
        self.count += 1;
        self.max = self.max.max(micros);
    }

    /// Returns the largest recorded value.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Returns the value below which `q` (0..=1) of the recorded values lie (the upper edge of
    /// the bucket that holds the q-th value), or 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // The rank of the q-th value, 1-based; ceil so p99 of 100 values is the 99th.
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                // The last bucket also holds everything beyond the covered range.
                if index == self.buckets.len() - 1 {
                    return self.max;
                }
                return upper_edge(index).min(self.max);
            }
        }
        self.max
    }

    /// Empties the histogram.
    pub fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = 0);
        self.count = 0;
        self.max = 0;
    }
}

fn index_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    // v in [2^k, 2^(k+1)) with k >= 6: octave k-5, 64 sub-buckets of width 2^(k-6).
    let k = 63 - u64::from(v.leading_zeros());
    let octave = k - 5;
    let sub = (v >> (k - 6)) - SUB;
    (octave * SUB + sub) as usize
}

fn upper_edge(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let octave = index / SUB;
    let sub = index % SUB;
    let k = octave + 5;
    ((SUB + sub + 1) << (k - 6)) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in 1..=50 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 25);
        assert_eq!(h.quantile(1.0), 50);
        assert_eq!(h.count, 50);
    }

    #[test]
    fn large_values_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, exact) in [(0.5, 50_000.0), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!(
                got >= exact && got <= exact * 1.02,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(h.quantile(1.0), 100_000);
    }

    #[test]
    fn edges_are_monotonic_and_consistent() {
        let mut previous = 0;
        for index in 1..(SUB as usize * 10) {
            let edge = upper_edge(index);
            assert!(edge > previous);
            assert_eq!(index_of(edge), index);
            assert_eq!(index_of(edge + 1), index + 1);
            previous = edge;
        }
    }

    #[test]
    fn huge_values_saturate() {
        let mut h = Histogram::default();
        h.record(u64::MAX);
        assert_eq!(h.quantile(0.5), u64::MAX);
    }
}
