//! `rethink-sfu-bench`: fan-out load generator for the rethink SFU.
//!
//! Starts `rethink-sfu` as a separate process pinned to one core (`taskset`), joins one
//! publisher (a pre-encoded H264 loop at the target bitrate, every frame stamped with its number
//! and send time) and ramps up lightweight str0m subscribers through the real gRPC API, every
//! call with a real service token ([`auth`] runs the auth service in this process). At each
//! step it measures, over a fixed window: frame loss at the subscribers, SFU CPU time per
//! forwarded RTP packet (`/proc/<pid>/stat`), and publisher→subscriber frame latency on this
//! process's clock, plus the run-queue wait of both processes and the kernel's UDP buffer
//! drops. Run it pinned to the other core, in a session of its own with a raised autogroup
//! priority (docs/benchmarks.md has the command): the kernel shares CPU time between
//! sessions, so a plain `nice` does not keep other sessions' work off the SFU's core.

mod auth;
mod client;
mod media;
mod pacing;
mod sfu;
mod signal;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rethink_sfu_client::{Bearer, SfuControl};
use str0m::media::Direction;

use crate::auth::{BenchAuth, Client};
use crate::client::{Received, Sent};

const ROOM: &str = "bench";

/// One publisher → N subscribers through the SFU; prints one row per N.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The SFU binary (default: `rethink-sfu` next to this binary).
    #[arg(long)]
    sfu_bin: Option<PathBuf>,
    /// CPU list the SFU is pinned to (`taskset -c`).
    #[arg(long, default_value = "0")]
    sfu_cpu: String,
    /// Subscriber counts to measure, ascending.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100,200,300,400")]
    subscribers: Vec<usize>,
    /// Length of each measurement window.
    #[arg(long, default_value_t = 5)]
    window_secs: u64,
    /// Pause after joining before measuring.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// Publisher bitrate target in bit/s.
    #[arg(long, default_value_t = 2_500_000)]
    bitrate: u32,
    /// The publisher's pacer sends RTP at this multiple of `bitrate`, as browsers do
    /// (libwebrtc uses 2.5); 0 sends each frame in one burst.
    #[arg(long, default_value_t = 2.5)]
    pacing_factor: f64,
    /// Publisher frame rate.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Publisher frame width.
    #[arg(long, default_value_t = 640)]
    width: usize,
    /// Publisher frame height.
    #[arg(long, default_value_t = 480)]
    height: usize,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 8)]
    join_parallel: usize,
    /// Clients per gRPC connection (HTTP/2 caps concurrent streams per connection).
    #[arg(long, default_value_t = 50)]
    clients_per_channel: usize,
    /// Stop ramping once frame loss exceeds this percentage.
    #[arg(long, default_value_t = 10.0)]
    stop_loss_percent: f64,
}

struct Subscriber {
    received: Arc<Received>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    media::epoch();
    let sfu_bin = match &args.sfu_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("rethink-sfu"),
    };
    let video = Arc::new(media::VideoLoop::encode(
        args.width,
        args.height,
        args.fps,
        args.bitrate,
        (args.fps * 3) as usize,
    )?);
    println!(
        "publisher: {}x{} @ {} fps, H264 loop of {} frames, {:.2} Mbit/s",
        args.width,
        args.height,
        args.fps,
        video.len(),
        video.bitrate_bps as f64 / 1e6
    );

    let auth = BenchAuth::start(ROOM).await?;
    let sfu = sfu::SfuProcess::start(&sfu_bin, &args.sfu_cpu, auth.url()).await?;
    println!(
        "sfu: pid {} pinned to cpu {}, tokens from {}",
        sfu.pid(),
        args.sfu_cpu,
        auth.url()
    );
    let mut channels = Channels::new(sfu.grpc, args.clients_per_channel, auth.bearer());
    channels.next().await?.create_room(ROOM).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Sent::default());
    let pending = client::new_client(Direction::SendOnly, false).await?;
    let offer = pending.offer.clone();
    let (answer, signal) = signal::join(&channels.next().await?, ROOM, "publisher", offer).await?;
    tokio::spawn(client::run_publisher(
        pending,
        answer,
        signal,
        Arc::clone(&video),
        args.fps,
        (f64::from(args.bitrate) * args.pacing_factor) as u64,
        Arc::clone(&sent),
        Arc::clone(&stop),
    ));
    wait_until(Duration::from_secs(10), "publisher connected", || {
        sent.connected.load(Ordering::Relaxed)
    })
    .await?;

    println!();
    println!(
        "| subscribers | packet loss % | frame loss % | RTP pkt/s out | datagrams/s out | SFU CPU % | SFU µs/RTP pkt | SFU µs/datagram | 1st pkt p50 ms | 1st pkt p99 ms | last pkt p50 ms | last pkt p99 ms | bench CPU % |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut subscribers: Vec<Subscriber> = Vec::new();
    let mut best_under_1 = None;
    for &target in &args.subscribers {
        while subscribers.len() < target {
            let batch = (target - subscribers.len()).min(args.join_parallel);
            let mut joins = Vec::new();
            for _ in 0..batch {
                let id = subscribers.len() + joins.len();
                let client = channels.next().await?;
                let stop = Arc::clone(&stop);
                let sent = Arc::clone(&sent);
                joins.push(tokio::spawn(async move {
                    let pending = client::new_client(Direction::RecvOnly, true).await?;
                    let offer = pending.offer.clone();
                    let name = format!("sub-{id}");
                    let (answer, signal) = signal::join(&client, ROOM, &name, offer).await?;
                    let received = Arc::new(Received::default());
                    tokio::spawn(client::run_subscriber(
                        pending,
                        answer,
                        signal,
                        Arc::clone(&received),
                        sent,
                        stop,
                    ));
                    anyhow::Ok(Subscriber { received })
                }));
            }
            for join in joins {
                subscribers.push(join.await??);
            }
        }
        let waited = wait_until(
            Duration::from_secs(30),
            "every subscriber receiving",
            || {
                subscribers
                    .iter()
                    .all(|s| s.received.first_packet.load(Ordering::Relaxed))
            },
        )
        .await;
        if let Err(error) = waited {
            let silent = subscribers
                .iter()
                .filter(|s| !s.received.first_packet.load(Ordering::Relaxed))
                .count();
            eprintln!("{error}: {silent} of {} subscribers got no frame", target);
        }
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;

        for s in &subscribers {
            s.received.frames.lock().map(|mut f| f.clear()).ok();
        }
        let first = sent.next_frame.load(Ordering::Relaxed);
        let counters0 = Counters::read(&subscribers);
        let (cpu0, own0, t0) = (sfu.cpu_time()?, sfu::own_cpu_time()?, Instant::now());
        let (wait0, own_wait0) = (sfu.run_queue_wait()?, sfu::own_run_queue_wait()?);
        let (rcvbuf0, sndbuf0) = sfu::udp_buffer_errors()?;
        tokio::time::sleep(Duration::from_secs(args.window_secs)).await;
        let last = sent.next_frame.load(Ordering::Relaxed);
        let counters1 = Counters::read(&subscribers);
        let (cpu1, own1, t1) = (sfu.cpu_time()?, sfu::own_cpu_time()?, Instant::now());
        let (wait1, own_wait1) = (sfu.run_queue_wait()?, sfu::own_run_queue_wait()?);
        let (rcvbuf1, sndbuf1) = sfu::udp_buffer_errors()?;
        // Frames still in flight at the end of the window get a moment to arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;

        let mut row = measure(&subscribers, first, last);
        let estimates = subscriber_estimates(&mut channels).await;
        let wall = (t1 - t0).as_secs_f64();
        let sfu_cpu = (cpu1 - cpu0).as_secs_f64();
        let own_cpu = (own1 - own0).as_secs_f64();
        let packets = counters1.packets - counters0.packets;
        let expected = counters1.expected - counters0.expected;
        let datagrams = counters1.datagrams - counters0.datagrams;
        let loss = 100.0 * (1.0 - packets as f64 / expected.max(1) as f64).max(0.0);
        let frames_expected = (last - first) * target as u64;
        let frame_loss = 100.0 * (1.0 - row.frames as f64 / frames_expected.max(1) as f64);
        println!(
            "| {target} | {loss:.2} | {frame_loss:.2} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            packets as f64 / wall,
            datagrams as f64 / wall,
            100.0 * sfu_cpu / wall,
            sfu_cpu * 1e6 / (packets.max(1) as f64),
            sfu_cpu * 1e6 / (datagrams.max(1) as f64),
            percentile_ms(&mut row.first_us, 0.50),
            percentile_ms(&mut row.first_us, 0.99),
            percentile_ms(&mut row.last_us, 0.50),
            percentile_ms(&mut row.last_us, 0.99),
            100.0 * own_cpu / wall,
        );
        eprintln!(
            "  N={target}: run-queue wait: SFU {:.0} %, bench {:.0} % of the window; UDP buffer drops (machine): receive {}, send {}",
            100.0 * (wait1 - wait0).as_secs_f64() / wall,
            100.0 * (own_wait1 - own_wait0).as_secs_f64() / wall,
            rcvbuf1 - rcvbuf0,
            sndbuf1 - sndbuf0,
        );
        if let Some((min, mean)) = estimates {
            eprintln!(
                "  N={target}: SFU bandwidth estimate per subscriber: min {:.2} / mean {:.2} Mbit/s",
                min / 1e6,
                mean / 1e6
            );
        }
        if loss < 1.0 && frame_loss < 1.0 {
            best_under_1 = Some(target);
        }
        if loss.max(frame_loss) > args.stop_loss_percent {
            println!("(stopping: loss above {}%)", args.stop_loss_percent);
            break;
        }
    }
    println!();
    match best_under_1 {
        Some(n) => println!("max subscribers measured with < 1% packet and frame loss: {n}"),
        None => println!("no step stayed under 1% loss"),
    }
    println!(
        "publisher keyframe requests received: {}",
        sent.keyframe_requests.load(Ordering::Relaxed)
    );
    stop.store(true, Ordering::Relaxed);
    Ok(())
}

/// The SFU's downlink bandwidth estimates of the subscribers (min, mean), from room stats.
async fn subscriber_estimates(channels: &mut Channels) -> Option<(f64, f64)> {
    let client = channels.next().await.ok()?;
    let stats = client.room_stats(ROOM).await.ok()?;
    let estimates: Vec<f64> = stats
        .participant_stats
        .iter()
        .filter(|p| p.participant.starts_with("sub-") && p.estimated_bps > 0)
        .map(|p| p.estimated_bps as f64)
        .collect();
    let min = estimates.iter().copied().fold(f64::INFINITY, f64::min);
    (!estimates.is_empty()).then(|| (min, estimates.iter().sum::<f64>() / estimates.len() as f64))
}

/// Sums of the subscribers' counters at one instant.
struct Counters {
    packets: u64,
    /// Sum of the highest sequence numbers: its growth is the number of packets sent.
    expected: u64,
    datagrams: u64,
}

impl Counters {
    fn read(subscribers: &[Subscriber]) -> Self {
        let mut c = Counters {
            packets: 0,
            expected: 0,
            datagrams: 0,
        };
        for s in subscribers {
            c.packets += s.received.packets.load(Ordering::Relaxed);
            c.expected += s.received.max_seq.load(Ordering::Relaxed);
            c.datagrams += s.received.datagrams.load(Ordering::Relaxed);
        }
        c
    }
}

/// Frame records of one window.
struct Row {
    frames: u64,
    first_us: Vec<u32>,
    last_us: Vec<u32>,
}

fn percentile_ms(samples: &mut [u32], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_unstable();
    let index = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[index] as f64 / 1000.0
}

/// Collects, per subscriber, the distinct frames numbered `first..last` whose stamped packet
/// arrived, with their latencies.
fn measure(subscribers: &[Subscriber], first: u64, last: u64) -> Row {
    let mut row = Row {
        frames: 0,
        first_us: Vec::new(),
        last_us: Vec::new(),
    };
    for s in subscribers {
        let Ok(frames) = s.received.frames.lock() else {
            continue;
        };
        let mut seen = std::collections::HashSet::new();
        for &(seq, first_us, last_us) in frames.iter() {
            if seq >= first && seq < last && seen.insert(seq) {
                row.frames += 1;
                row.first_us.push(first_us);
                if last_us != u32::MAX {
                    row.last_us.push(last_us);
                }
            }
        }
    }
    row
}

/// gRPC clients carrying the bench's token, a new connection every `per_channel` clients.
struct Channels {
    addr: std::net::SocketAddr,
    per_channel: usize,
    bearer: Bearer,
    handed_out: usize,
    current: Option<Client>,
}

impl Channels {
    fn new(addr: std::net::SocketAddr, per_channel: usize, bearer: Bearer) -> Self {
        Self {
            addr,
            per_channel: per_channel.max(1),
            bearer,
            handed_out: 0,
            current: None,
        }
    }

    async fn next(&mut self) -> anyhow::Result<Client> {
        if self.current.is_none() || self.handed_out.is_multiple_of(self.per_channel) {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))?
                .connect()
                .await?;
            self.current = Some(SfuControl::with_channel(channel, self.bearer.clone()));
        }
        self.handed_out += 1;
        self.current
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no gRPC channel"))
    }
}

async fn wait_until(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let end = Instant::now() + limit;
    while !done() {
        anyhow::ensure!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
