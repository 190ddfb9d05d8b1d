//! CPU time of this process, for the heartbeat's load figure.

use std::time::{Duration, Instant};

/// Linux reports `/proc/self/stat` times in clock ticks of `USER_HZ`, which is 100 on every
/// architecture Linux supports today (reading `sysconf` would need `unsafe`).
const TICKS_PER_SECOND: u64 = 100;

/// Returns the CPU time (user + system, every thread) this process used so far, or `None` where
/// `/proc` is not available.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based in proc(5)).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// Turns successive CPU-time samples into a percentage of one core.
#[derive(Debug)]
pub struct CpuMeter {
    last: Option<(Instant, Duration)>,
}

impl CpuMeter {
    /// Starts measuring from now.
    pub fn new() -> Self {
        Self {
            last: process_cpu_time().map(|cpu| (Instant::now(), cpu)),
        }
    }

    /// Returns the CPU use since the previous call, in percent of one core (0 when unknown).
    pub fn sample(&mut self) -> f64 {
        let now = Instant::now();
        let Some(cpu) = process_cpu_time() else {
            return 0.0;
        };
        let percent = match self.last {
            Some((then, before)) if now > then => {
                let used = cpu.saturating_sub(before).as_secs_f64();
                used / (now - then).as_secs_f64() * 100.0
            }
            _ => 0.0,
        };
        self.last = Some((now, cpu));
        percent
    }
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_the_name() {
        let line = "1234 (rethink sfu) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 \
                    8 0 100 1000 100 18446744073709551615";
        assert_eq!(parse_stat(line), Some(Duration::from_secs(3)));
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(parse_stat("nonsense"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn reads_this_process() {
        if cfg!(target_os = "linux") {
            assert!(process_cpu_time().is_some());
        }
    }
}
