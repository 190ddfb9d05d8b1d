//! CPU time of a process from `/proc/<pid>/stat` (user + system, all threads), and the time
//! its threads spent runnable but waiting for a CPU (`/proc/<pid>/task/*/schedstat`): a
//! benchmark whose processes wait for the CPU measures the other load on the machine.

use std::{io, process::Command, sync::OnceLock};

/// Returns the CPU seconds `pid` has used so far (`self` for this process).
pub fn cpu_seconds(pid: &str) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses; fields after the last ')'
    // are fixed: state is field 3, utime field 14, stime field 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unexpected /proc stat format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unexpected /proc stat format"))
    };
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let total = ticks(14 - 3)? + ticks(15 - 3)?;
    Ok(total as f64 / clock_ticks() as f64)
}

/// Returns the seconds the threads of `pid` have spent waiting on a run queue so far.
pub fn run_delay_seconds(pid: &str) -> io::Result<f64> {
    let mut total: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // Threads come and go; one that ended between listing and reading counts as zero.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
            continue;
        };
        // Fields: time on the CPU, time waiting on a run queue (both ns), timeslices.
        if let Some(delay) = stat
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
        {
            total += delay;
        }
    }
    Ok(total as f64 / 1e9)
}

/// Returns the resident memory of `pid` in MiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_mib(pid: &str) -> io::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc status"))?;
    Ok(kib as f64 / 1024.0)
}

/// Returns the kernel's clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let before = cpu_seconds("self").unwrap();
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = cpu_seconds("self").unwrap();
        assert!(after >= before);
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_mib("self").unwrap() > 0.0);
    }

    #[test]
    fn reads_own_run_delay() {
        assert!(run_delay_seconds("self").unwrap() >= 0.0);
    }

    #[test]
    fn unknown_process_is_an_error() {
        assert!(cpu_seconds("999999999").is_err());
        assert!(run_delay_seconds("999999999").is_err());
    }
}
