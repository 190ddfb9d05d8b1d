//! What the clients observe, shared by all client tasks (one thread, so the lock is never
//! contended).

use std::collections::BTreeMap;

use crate::histogram::Histogram;

/// Counters since the start and within the current measurement window.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages written to sockets since the start.
    pub sent: u64,
    /// Forwards received since the start.
    pub received: u64,
    /// True while a measurement window is open.
    pub measuring: bool,
    /// Messages written within the window.
    pub window_sent: u64,
    /// Forwards received within the window.
    pub window_received: u64,
    /// Latency of the forwards received within the window, in microseconds.
    pub latency: Histogram,
    /// Error responses by code, since the start.
    pub errors: BTreeMap<u16, u64>,
    /// Frames that were neither a forward nor a response.
    pub unexpected: u64,
    /// Connections that ended, by reason.
    pub closed: BTreeMap<String, u64>,
    /// One example error response, for the report.
    pub example_error: Option<String>,
}

impl Stats {
    /// Counts `n` messages written.
    pub fn on_sent(&mut self, n: u64) {
        self.sent += n;
        if self.measuring {
            self.window_sent += n;
        }
    }

    /// Counts one forward received after `latency_nanos`.
    pub fn on_received(&mut self, latency_nanos: u64) {
        self.received += 1;
        if self.measuring {
            self.window_received += 1;
            self.latency.record(latency_nanos / 1_000);
        }
    }

    /// Counts a frame that is not a relayed forward (error responses under load).
    pub fn on_other_frame(&mut self, text: &str) {
        let code = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .filter(|v| v["type"] == "response")
            .and_then(|v| v["body"]["code"].as_u64());
        match code {
            Some(200) => {}
            Some(code) => {
                *self
                    .errors
                    .entry(u16::try_from(code).unwrap_or(u16::MAX))
                    .or_default() += 1;
                if self.example_error.is_none() {
                    self.example_error = Some(text.chars().take(300).collect());
                }
            }
            None => self.unexpected += 1,
        }
    }

    /// Counts a connection that ended.
    pub fn on_closed(&mut self, reason: &str) {
        *self.closed.entry(reason.to_owned()).or_default() += 1;
    }

    /// Opens a measurement window.
    pub fn open_window(&mut self) {
        self.measuring = true;
        self.window_sent = 0;
        self.window_received = 0;
        self.latency.clear();
    }

    /// Returns the number of error responses and closed connections so far.
    pub fn trouble(&self) -> u64 {
        self.errors.values().sum::<u64>() + self.closed.values().sum::<u64>() + self.unexpected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_inside_the_window() {
        let mut s = Stats::default();
        s.on_sent(3);
        s.on_received(5_000);
        s.open_window();
        s.on_sent(2);
        s.on_received(7_000);
        assert_eq!((s.sent, s.received), (5, 2));
        assert_eq!((s.window_sent, s.window_received), (2, 1));
        assert_eq!(s.latency.quantile(0.5), 7);
    }

    #[test]
    fn classifies_other_frames() {
        let mut s = Stats::default();
        s.on_other_frame(r#"{"id":1,"type":"response","from":"a","to":"b","body":{"code":429,"description":"slow down"}}"#);
        s.on_other_frame(r#"{"id":1,"type":"response","from":"a","to":"b","body":{"code":200}}"#);
        s.on_other_frame("not json");
        assert_eq!(s.errors.get(&429), Some(&1));
        assert_eq!(s.unexpected, 1);
        assert_eq!(s.trouble(), 2);
    }
}
