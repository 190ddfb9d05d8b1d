//! The SFU under test: a separate `rethink-sfu` process pinned to one core, and its CPU time
//! read from `/proc/<pid>/stat`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `rethink-sfu` process, killed on drop.
pub struct SfuProcess {
    child: Child,
    /// Its gRPC address.
    pub grpc: SocketAddr,
    clock_ticks: u64,
}

impl SfuProcess {
    /// Starts `binary` under `taskset -c <cpu>` on free loopback ports, verifying tokens with
    /// the keys of the auth service at `auth_url`.
    pub async fn start(binary: &Path, cpu: &str, auth_url: &str) -> anyhow::Result<Self> {
        let grpc = free_tcp()?;
        let http = free_tcp()?;
        let udp = {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            socket.local_addr()?
        };
        let child = Command::new("taskset")
            .arg("-c")
            .arg(cpu)
            .arg(binary)
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--http-addr", &http.to_string()])
            .args(["--udp-addr", &udp.to_string()])
            .env("RETHINK_AUTH__URL", auth_url)
            .env(
                "RUST_LOG",
                std::env::var("SFU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()?;
        let clock_ticks = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100);
        let sfu = Self {
            child,
            grpc,
            clock_ticks,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(grpc).await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the SFU did not listen on {grpc}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(sfu)
    }

    /// Process id (taskset execs the SFU in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time the process's threads spent runnable but waiting for a CPU, so far.
    pub fn run_queue_wait(&self) -> anyhow::Result<Duration> {
        run_queue_wait_of(&format!("/proc/{}/task", self.pid()))
    }

    /// User + system CPU time of the whole process so far.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time_of(&format!("/proc/{}/stat", self.pid()), self.clock_ticks)
    }
}

/// User + system CPU time of this process so far.
pub fn own_cpu_time() -> anyhow::Result<Duration> {
    cpu_time_of("/proc/self/stat", 100)
}

/// Time this process's threads spent runnable but waiting for a CPU, so far.
pub fn own_run_queue_wait() -> anyhow::Result<Duration> {
    run_queue_wait_of("/proc/self/task")
}

/// Sums the run-queue wait (second field of `schedstat`, ns) over a process's threads. A
/// process can be far from 100 % CPU and still late: other sessions' work may hold its core.
fn run_queue_wait_of(task_dir: &str) -> anyhow::Result<Duration> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(task_dir)? {
        let path = entry?.path().join("schedstat");
        // A thread may end between listing and reading.
        let Ok(stat) = std::fs::read_to_string(path) else {
            continue;
        };
        total += stat
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(Duration::from_nanos(total))
}

/// Machine-wide UDP datagrams dropped because a socket's receive or send buffer was full
/// (`RcvbufErrors`, `SndbufErrors` of `/proc/net/snmp`).
pub fn udp_buffer_errors() -> anyhow::Result<(u64, u64)> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        anyhow::bail!("no Udp lines in /proc/net/snmp");
    };
    let field = |name: &str| -> anyhow::Result<u64> {
        let at = names
            .split_whitespace()
            .position(|n| n == name)
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/net/snmp"))?;
        Ok(values
            .split_whitespace()
            .nth(at)
            .ok_or_else(|| anyhow::anyhow!("short Udp line"))?
            .parse()?)
    };
    Ok((field("RcvbufErrors")?, field("SndbufErrors")?))
}

fn cpu_time_of(path: &str, clock_ticks: u64) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields
        .get(11)
        .ok_or_else(|| anyhow::anyhow!("no utime"))?
        .parse()?;
    let stime: u64 = fields
        .get(12)
        .ok_or_else(|| anyhow::anyhow!("no stime"))?
        .parse()?;
    Ok(Duration::from_micros(
        (utime + stime) * 1_000_000 / clock_ticks,
    ))
}

impl Drop for SfuProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
