//! `rethink-auth-bench`: measures the auth service on loopback.
//!
//! Starts a real auth service (in-memory store) on free ports in this process and reports, as a
//! markdown table: in-process token verification, `GET /auth/me` over HTTP, and
//! `POST /auth/login` over HTTP (argon2id-bound). Latencies are per request, from send to the
//! full response.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rethink_auth::{AuthConfig, AuthService, Listeners};
use rethink_common::token::Grants;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "rethink-auth-bench", version)]
struct Args {
    /// Seconds per HTTP measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent requests for `/auth/me`.
    #[arg(long, default_value_t = 16)]
    me_concurrency: usize,
    /// Concurrent requests for `/auth/login`.
    #[arg(long, default_value_t = 4)]
    login_concurrency: usize,
    /// In-process verifications.
    #[arg(long, default_value_t = 20_000)]
    verifications: usize,
}

const PASSWORD: &str = "bench-password";

struct Stats {
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn row(&mut self, name: &str, concurrency: usize) -> String {
        self.latencies.sort();
        let pick = |q: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
            self.latencies.get(i).copied().unwrap_or_default()
        };
        format!(
            "| {name} | {concurrency} | {} | {:.0} | {:.0} | {:.0} |",
            self.count,
            self.count as f64 / self.elapsed.as_secs_f64(),
            pick(0.5).as_secs_f64() * 1e6,
            pick(0.99).as_secs_f64() * 1e6,
        )
    }
}

/// Runs `concurrency` workers calling `request` until `duration` has passed.
async fn load<F, Fut>(concurrency: usize, duration: Duration, request: F) -> anyhow::Result<Stats>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let deadline = start + duration;
    let workers = (0..concurrency).map(|_| {
        let request = request.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                request().await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        })
    });
    let mut latencies = Vec::new();
    for worker in futures::future::join_all(workers).await {
        latencies.extend(worker??);
    }
    Ok(Stats {
        count: latencies.len(),
        elapsed: start.elapsed(),
        latencies,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = AuthConfig::default();
    // The bench logs in on purpose many times, concurrently, from one address: every attempt
    // holds a throttle slot while its password is checked, so the counters are off.
    config.throttle.max_failures_per_user_addr = u32::MAX;
    config.throttle.max_failures_per_user = u32::MAX;
    config.throttle.max_failures_per_addr = u32::MAX;
    let backends = rethink_common::backends(None).await?;
    let service = AuthService::new(config, backends.kv, backends.bus).await?;
    service
        .create_user("bench", PASSWORD, None, Some(Grants::user()))
        .await?;
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await?,
        grpc: TcpListener::bind("127.0.0.1:0").await?,
    };
    let base = format!("http://{}", listeners.http_addr()?);
    let stop = CancellationToken::new();
    let server = tokio::spawn(rethink_auth::serve(
        service.clone(),
        listeners,
        stop.clone().cancelled_owned(),
    ));

    // In-process verification (signature, claims, revocation check).
    let token = service.mint_for_user("bench", None).await?.token;
    let verifier = service.verifier();
    verifier.verify(&token).await?;
    let mut latencies = Vec::with_capacity(args.verifications);
    let start = Instant::now();
    for _ in 0..args.verifications {
        let t = Instant::now();
        verifier.verify(&token).await?;
        latencies.push(t.elapsed());
    }
    let mut verify = Stats {
        count: args.verifications,
        elapsed: start.elapsed(),
        latencies,
    };

    let client = reqwest::Client::new();
    let duration = Duration::from_secs(args.seconds);
    let me = {
        let (client, url, token) = (client.clone(), format!("{base}/auth/me"), token.clone());
        move || {
            let request = client.get(&url).bearer_auth(&token).send();
            async move {
                let response = request.await?;
                anyhow::ensure!(response.status() == 200, "/auth/me: {}", response.status());
                response.bytes().await?;
                Ok(())
            }
        }
    };
    let mut me_stats = load(args.me_concurrency, duration, me).await?;
    let login = {
        let (client, url) = (client.clone(), format!("{base}/auth/login"));
        let body = serde_json::json!({"username": "bench", "password": PASSWORD}).to_string();
        move || {
            let request = client.post(&url).body(body.clone()).send();
            async move {
                let response = request.await?;
                anyhow::ensure!(
                    response.status() == 200,
                    "/auth/login: {}",
                    response.status()
                );
                response.bytes().await?;
                Ok(())
            }
        }
    };
    let mut login_stats = load(args.login_concurrency, duration, login).await?;

    println!("| operation | concurrency | requests | per second | p50 µs | p99 µs |");
    println!("|---|---|---|---|---|---|");
    println!("{}", verify.row("verify (in-process)", 1));
    println!("{}", me_stats.row("GET /auth/me", args.me_concurrency));
    println!(
        "{}",
        login_stats.row("POST /auth/login", args.login_concurrency)
    );

    stop.cancel();
    server.await.context("server task")??;
    Ok(())
}
