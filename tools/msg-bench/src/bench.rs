//! The run: setup, connecting the clients, the rate steps and the report.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};

use crate::{
    client::{self, Connected, Handle},
    cpu::{cpu_seconds, rss_mib, run_delay_seconds},
    setup::{self, LocalAuth, NodeProcess, NodeSpawn},
    stats::Stats,
};

/// Command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "rethink-msg-bench",
    version,
    about = "Load generator for the rethink Message Node"
)]
pub struct Args {
    /// Number of WebSocket clients (one hyperty each).
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Clients per group; a client sends only to the other members of its group.
    #[arg(long, default_value_t = 10)]
    pub group_size: usize,
    /// Users the clients log in as (client i uses user i mod users).
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Aggregate send rates in messages per second, one step each, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,20000,30000,40000,45000,50000,55000,60000,70000,80000,100000"
    )]
    pub rates: Vec<u64>,
    /// Seconds of load before each measurement window (queues reach their steady state).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,
    /// Seconds of each measurement window.
    #[arg(long, default_value_t = 8.0)]
    pub measure_secs: f64,
    /// Filler bytes in each message body (on top of about 180 bytes of envelope).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// The run stops after a step that delivers less than this share of the offered rate.
    #[arg(long, default_value_t = 0.9)]
    pub min_delivered_share: f64,
    /// The run stops after a step whose p99 latency exceeds this many milliseconds.
    #[arg(long, default_value_t = 500.0)]
    pub max_p99_ms: f64,
    /// The `rethink-msg-node` binary; defaults to the one next to this binary.
    #[arg(long)]
    pub msg_node_bin: Option<PathBuf>,
    /// CPUs (taskset list) for the node.
    #[arg(long, default_value = "0")]
    pub node_cpus: String,
    /// CPUs (taskset list) for this generator.
    #[arg(long, default_value = "1")]
    pub bench_cpus: Option<String>,
    /// Run without pinning either process.
    #[arg(long)]
    pub no_pin: bool,
    /// `RUST_LOG` of the spawned node.
    #[arg(long, default_value = "warn")]
    pub node_log: String,
    /// Use a running node at this base URL (`http://127.0.0.1:8082`) instead of spawning one.
    /// Its policy must already lift the rate limit of the bench users (see docs/benchmarks.md).
    #[arg(long, requires_all = ["node_pid", "auth_url", "password"])]
    pub connect: Option<String>,
    /// With `--connect`: the node's process id, for its CPU time.
    #[arg(long)]
    pub node_pid: Option<u32>,
    /// With `--connect`: the auth service base URL to log the users in at.
    #[arg(long)]
    pub auth_url: Option<String>,
    /// With `--connect`: the password of the existing users `<user-prefix>NNN`.
    #[arg(long, env = "RETHINK_BENCH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Name prefix of the bench users (`bench-000`, `bench-001`, ...).
    #[arg(long, default_value = "bench-")]
    pub user_prefix: String,
}

/// The figures of one step.
#[derive(Debug)]
struct StepResult {
    rate: u64,
    sent_per_sec: f64,
    delivered_per_sec: f64,
    node_cpu: f64,
    node_wait: f64,
    bench_cpu: f64,
    bench_wait: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    errors: u64,
    lost: u64,
    unpaced: u64,
    node_rss_mib: f64,
}

impl StepResult {
    /// Messages delivered per CPU-second of the node.
    fn per_core(&self) -> f64 {
        if self.node_cpu > 0.0 {
            self.delivered_per_sec / self.node_cpu
        } else {
            0.0
        }
    }
}

/// Runs the benchmark and prints the report.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.group_size < 2 || args.clients < args.group_size || args.users == 0 {
        bail!("need --group-size >= 2, --clients >= --group-size and --users >= 1");
    }
    for url in [&args.connect, &args.auth_url].into_iter().flatten() {
        check_loopback(url)?;
    }
    let http = reqwest::Client::new();
    let dir = tempfile::Builder::new().prefix("msg-bench-").tempdir()?;
    let users = args.users.min(args.clients);

    let mut local_auth = None;
    let (auth_url, password) = match (&args.auth_url, &args.password) {
        (Some(url), Some(password)) if args.connect.is_some() => (url.clone(), password.clone()),
        _ => {
            eprintln!("starting the auth service with {users} users ...");
            let auth = LocalAuth::start(&args.user_prefix, users).await?;
            let pair = (auth.url.clone(), auth.password().to_owned());
            local_auth = Some(auth);
            pair
        }
    };
    let tokens = setup::login_all(&http, &auth_url, &args.user_prefix, users, &password).await?;

    let mut spawned = None;
    let (node_url, node_pid) = match (&args.connect, args.node_pid) {
        (Some(url), Some(pid)) => (url.trim_end_matches('/').to_owned(), pid),
        _ => {
            let binary = match &args.msg_node_bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .context("no directory of this binary")?
                    .join("rethink-msg-node"),
            };
            let node = NodeProcess::spawn(
                NodeSpawn {
                    binary: &binary,
                    core: (!args.no_pin).then_some(args.node_cpus.as_str()),
                    auth_url: &auth_url,
                    dir: dir.path(),
                    log_filter: &args.node_log,
                },
                &http,
            )
            .await?;
            eprintln!(
                "rethink-msg-node pid {} at {} (log {})",
                node.pid,
                node.url,
                node.log.display()
            );
            let pair = (node.url.clone(), node.pid);
            spawned = Some(node);
            pair
        }
    };
    let node_pid = node_pid.to_string();
    cpu_seconds(&node_pid).with_context(|| format!("reading /proc/{node_pid}/stat"))?;

    let ws_url = format!("{}/msg", node_url.replacen("http", "ws", 1));
    eprintln!("connecting {} clients to {ws_url} ...", args.clients);
    let started = Instant::now();
    let connected: Vec<Connected> = stream::iter(0..args.clients)
        .map(|i| {
            let (ws_url, token) = (&ws_url, &tokens[i % users]);
            async move {
                client::connect(ws_url, token)
                    .await
                    .with_context(|| format!("client {i}"))
            }
        })
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    eprintln!(
        "{} clients connected with a hyperty each in {:.1} s",
        connected.len(),
        started.elapsed().as_secs_f64()
    );

    let stats = Arc::new(Mutex::new(Stats::default()));
    let handles = start_clients(connected, args.group_size, args.payload_bytes, &stats);

    print_header(&args, users);
    let mut results = Vec::new();
    for &rate in &args.rates {
        let result = step(rate, &args, &handles, &stats, &node_pid).await?;
        print_row(&result);
        let stop = result.delivered_per_sec < args.min_delivered_share * rate as f64
            || result.p99_ms > args.max_p99_ms
            || lock(&stats).closed.values().sum::<u64>() > 0;
        results.push(result);
        if stop {
            break;
        }
    }
    drop(handles);
    print_summary(&results, &lock(&stats));
    if let Some(node) = spawned {
        node.stop().await;
    }
    drop(local_auth);
    Ok(())
}

/// Refuses URLs that leave the machine: the bench generates load only on loopback (and reads
/// the node's CPU time from this machine's `/proc` anyway).
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(h, _)| h);
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{url}: the bench runs on loopback only (127.0.0.1, ::1 or localhost)");
    }
    Ok(())
}

fn lock(stats: &Mutex<Stats>) -> std::sync::MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Splits the clients into groups (a short last group joins the one before it) and starts them.
fn start_clients(
    connected: Vec<Connected>,
    group_size: usize,
    payload_bytes: usize,
    stats: &Arc<Mutex<Stats>>,
) -> Vec<Handle> {
    let payload: Arc<str> = "x".repeat(payload_bytes).into();
    let addresses: Vec<String> = connected.iter().map(|c| c.hyperty.clone()).collect();
    let groups = (addresses.len() / group_size).max(1);
    let group_of = |i: usize| (i / group_size).min(groups - 1);
    connected
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let peers: Vec<String> = (0..addresses.len())
                .filter(|&j| j != i && group_of(j) == group_of(i))
                .map(|j| addresses[j].clone())
                .collect();
            client::spawn(c, peers, payload.clone(), stats.clone())
        })
        .collect()
}

/// Runs one step: warm-up, measurement window, drain.
async fn step(
    rate: u64,
    args: &Args,
    handles: &[Handle],
    stats: &Arc<Mutex<Stats>>,
    node_pid: &str,
) -> anyhow::Result<StepResult> {
    let (sent_before, received_before, trouble_before) = {
        let s = lock(stats);
        (s.sent, s.received, s.trouble())
    };
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let total = warmup + Duration::from_secs_f64(args.measure_secs);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let start = Instant::now();
    let mut issued: u64 = 0;
    let mut unpaced: u64 = 0;
    let mut cursor = 0;
    let mut window: Option<(Instant, [f64; 4])> = None;
    loop {
        tick.tick().await;
        let elapsed = start.elapsed();
        if window.is_none() && elapsed >= warmup {
            lock(stats).open_window();
            window = Some((Instant::now(), counters(node_pid)?));
        }
        if elapsed >= total {
            break;
        }
        let due = (rate as f64 * elapsed.as_secs_f64()) as u64 - issued;
        for _ in 0..due {
            // A client whose order queue is full is stuck behind its socket: the generator (or
            // the node's reading of that socket) cannot keep the pace.
            if handles[cursor].send.try_send(()).is_err() {
                unpaced += 1;
            }
            cursor = (cursor + 1) % handles.len();
        }
        issued += due;
    }
    let (opened, before) = window.context("empty measurement window")?;
    let (window_secs, used, sent, received, latency) = {
        let mut s = lock(stats);
        s.measuring = false;
        let secs = opened.elapsed().as_secs_f64();
        let after = counters(node_pid)?;
        let used: Vec<f64> = after
            .iter()
            .zip(before)
            // Run-queue counters of threads that ended meanwhile drop out of the sums.
            .map(|(a, b)| ((a - b) / secs).max(0.0))
            .collect();
        (
            secs,
            used,
            s.window_sent,
            s.window_received,
            s.latency.clone(),
        )
    };
    // Drain: wait (bounded) until everything sent in this step has arrived or been refused.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (errors, lost) = loop {
        let (errors, outstanding) = {
            let s = lock(stats);
            let errors = s.trouble() - trouble_before;
            let sent = s.sent - sent_before;
            let arrived = s.received - received_before + errors;
            (errors, sent.saturating_sub(arrived))
        };
        if outstanding == 0 || Instant::now() > deadline {
            break (errors, outstanding);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ms = |micros: u64| micros as f64 / 1_000.0;
    Ok(StepResult {
        rate,
        sent_per_sec: sent as f64 / window_secs,
        delivered_per_sec: received as f64 / window_secs,
        node_cpu: used[0],
        node_wait: used[1],
        bench_cpu: used[2],
        bench_wait: used[3],
        p50_ms: ms(latency.quantile(0.50)),
        p99_ms: ms(latency.quantile(0.99)),
        max_ms: ms(latency.max()),
        errors,
        lost,
        unpaced,
        node_rss_mib: rss_mib(node_pid)?,
    })
}

/// Returns CPU seconds and run-queue wait seconds of the node and of this process.
fn counters(node_pid: &str) -> anyhow::Result<[f64; 4]> {
    Ok([
        cpu_seconds(node_pid)?,
        run_delay_seconds(node_pid)?,
        cpu_seconds("self")?,
        run_delay_seconds("self")?,
    ])
}

fn print_header(args: &Args, users: usize) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "# rethink-msg-bench: {} clients in groups of {}, {} users, {} filler bytes, \
         {} s warm-up + {} s window per step",
        args.clients,
        args.group_size,
        users,
        args.payload_bytes,
        args.warmup_secs,
        args.measure_secs
    );
    println!(
        "# cpu: {cpu}; cores usable by the generator: {cores}; node cpus: {}",
        if args.no_pin {
            "unpinned"
        } else {
            &args.node_cpus
        }
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# load average at start (1, 5, 15 min): {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "| offered msg/s | sent msg/s | delivered msg/s | node CPU (cores) | delivered msg/s per node core | p50 ms | p99 ms | max ms | errors | lost | node wait | node RSS MiB | generator CPU | generator wait | unpaced |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
}

fn print_row(r: &StepResult) {
    println!(
        "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {} |",
        r.rate,
        r.sent_per_sec,
        r.delivered_per_sec,
        r.node_cpu,
        r.per_core(),
        r.p50_ms,
        r.p99_ms,
        r.max_ms,
        r.errors,
        r.lost,
        r.node_wait,
        r.node_rss_mib,
        r.bench_cpu,
        r.bench_wait,
        r.unpaced
    );
}

fn print_summary(results: &[StepResult], stats: &Stats) {
    let best = results
        .iter()
        .filter(|r| r.p99_ms < 20.0)
        .max_by(|a, b| a.delivered_per_sec.total_cmp(&b.delivered_per_sec));
    match best {
        Some(r) => println!(
            "# highest delivered rate with p99 < 20 ms: {:.0} msg/s at {:.2} node cores \
             ({:.0} msg/s per core), p99 {:.2} ms",
            r.delivered_per_sec,
            r.node_cpu,
            r.per_core(),
            r.p99_ms
        ),
        None => println!("# no step had p99 < 20 ms"),
    }
    let peak = results
        .iter()
        .max_by(|a, b| a.per_core().total_cmp(&b.per_core()));
    if let Some(r) = peak {
        println!(
            "# best delivered msg/s per node core-second: {:.0} (offered {} msg/s)",
            r.per_core(),
            r.rate
        );
    }
    if !stats.errors.is_empty() {
        println!("# error responses by code: {:?}", stats.errors);
    }
    if let Some(example) = &stats.example_error {
        println!("# example error: {example}");
    }
    if !stats.closed.is_empty() {
        println!("# connections ended: {:?}", stats.closed);
    }
    if stats.unexpected > 0 {
        println!("# unexpected frames: {}", stats.unexpected);
    }
}

#[cfg(test)]
mod tests {
    use super::check_loopback;

    #[test]
    fn accepts_only_loopback_urls() {
        for ok in [
            "http://127.0.0.1:8082",
            "http://localhost:8081/",
            "http://[::1]:8082",
            "http://127.0.0.2",
        ] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8082",
            "http://example.org",
            "http://[2001:db8::1]:80",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }
}
