//! Test helpers: a real `redis-server` on a free port ([`RedisServer`]) and headless Chromium
//! over the DevTools protocol ([`chromium`]).
//!
//! Enabled by the `testing` feature; use it as a dev-dependency:
//! `rethink-common = { workspace = true, features = ["testing"] }`.

pub mod chromium;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a freshly started server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process without persistence, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

/// Why the test server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    /// `redis-server` could not be spawned (not installed?).
    #[error("cannot run redis-server (install it: apt-get install redis-server): {0}")]
    Spawn(std::io::Error),
    /// No free port could be found.
    #[error("no free port: {0}")]
    Port(std::io::Error),
    /// The server did not answer PING in time.
    #[error("redis-server on port {port} did not answer PING within {timeout:?}: {detail}")]
    NotReady {
        /// The port it was started on.
        port: u16,
        /// How long was waited.
        timeout: Duration,
        /// The last error seen.
        detail: String,
    },
}

impl RedisServer {
    /// Starts `redis-server --port <free> --save "" --appendonly no` and waits until it answers
    /// PING.
    pub async fn start() -> Result<Self, RedisServerError> {
        // Another process may grab the free port before redis-server binds it; try a few.
        let mut attempts = 3;
        loop {
            let port = free_port()?;
            let dir =
                std::env::temp_dir().join(format!("rethink-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(RedisServerError::Spawn)?;
            let mut server = Self {
                port,
                child: None,
                dir,
            };
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e @ RedisServerError::NotReady { .. }) if attempts > 1 => {
                    tracing::debug!(error = %e, "redis-server did not start; trying another port");
                    attempts -= 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Returns `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Returns the port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server and waits until it is gone; clients see their connections drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same port, empty.
    pub async fn restart(&mut self) -> Result<(), RedisServerError> {
        self.stop();
        self.spawn().await
    }

    async fn spawn(&mut self) -> Result<(), RedisServerError> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(RedisServerError::Spawn)?;
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), RedisServerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let client = redis::Client::open(self.url()).map_err(|e| RedisServerError::NotReady {
            port: self.port,
            timeout: START_TIMEOUT,
            detail: e.to_string(),
        })?;
        loop {
            let detail = match ping(&client).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(RedisServerError::NotReady {
                    port: self.port,
                    timeout: START_TIMEOUT,
                    detail: format!("redis-server exited with {status}"),
                });
            }
            if Instant::now() >= deadline {
                return Err(RedisServerError::NotReady {
                    port: self.port,
                    timeout: START_TIMEOUT,
                    detail,
                });
            }
            // A starting server has no event to await; poll at a short, bounded interval.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn ping(client: &redis::Client) -> Result<(), String> {
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(format!("unexpected reply {pong:?}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, RedisServerError> {
    // Binding port 0 lets the kernel pick a free port; it is released again for redis-server.
    let listener = TcpListener::bind("127.0.0.1:0").map_err(RedisServerError::Port)?;
    Ok(listener
        .local_addr()
        .map_err(RedisServerError::Port)?
        .port())
}
