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
    /// Starts `binary` under `taskset -c <cpu>` on free loopback ports, with token checks off
    /// (a local benchmark has no auth service).
    pub async fn start(binary: &Path, cpu: &str) -> anyhow::Result<Self> {
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
            .env("RETHINK_AUTH__INSECURE_DISABLE", "true")
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

    /// User + system CPU time of the whole process so far.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time_of(&format!("/proc/{}/stat", self.pid()), self.clock_ticks)
    }
}

/// User + system CPU time of this process so far.
pub fn own_cpu_time() -> anyhow::Result<Duration> {
    cpu_time_of("/proc/self/stat", 100)
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
