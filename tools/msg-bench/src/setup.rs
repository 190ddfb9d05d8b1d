//! Everything before the load: the auth service, tokens, the bench policy and the msg-node
//! process.
//!
//! In the default mode the bench runs the real auth service in its own process (memory store,
//! real HTTP on loopback), creates the bench users, logs each one in over `POST /auth/login`,
//! writes a policy file that lifts the per-identity rate limit for `bench-*` identities, and
//! starts `rethink-msg-node` as a separate process pinned with `taskset`. With `--connect` it
//! uses a node that is already running (and its auth service and policy) instead.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use rethink_auth::AuthConfig;
use tokio::process::{Child, Command};

/// The policy the spawned node runs with: the built-in default policy plus an override that
/// makes the bench identities unlimited (the default 200 msg/s per identity is meant for people).
pub const BENCH_POLICY: &str = r#"# msg-node policy for rethink-msg-bench: the default policy, with the per-identity rate
# limit lifted for the load-test identities (bench-*). Everything else is unchanged.
version = 1
default_action = "deny"
default_reason = "no policy rule allows this message"

[limits]
max_message_bytes = 65536
rate = 200.0
burst = 400

[service_limits]
rate = 2000.0
burst = 4000

[[identity_limits]]
identity = "bench-*"
service = false
rate = 0.0

[[rules]]
name = "hyperties"
action = "allow"
to = "hyperty://**"

[[rules]]
name = "objects"
action = "allow"
to = "object://**"

[[rules]]
name = "node-services"
action = "allow"
to = "domain://**"
"#;

/// The password of every bench user (they exist only in the bench's in-memory auth store).
const PASSWORD: &str = "bench-password-not-secret";

/// The auth service, run inside the bench process on loopback, with the bench users.
pub struct LocalAuth {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    _auth: rethink_auth::LocalAuth,
}

impl LocalAuth {
    /// Starts the auth service on a free loopback port with `users` users named
    /// `<prefix><n>` (n zero-padded to three digits).
    pub async fn start(prefix: &str, users: usize) -> anyhow::Result<Self> {
        let auth = rethink_auth::LocalAuth::start(AuthConfig::default()).await?;
        for n in 0..users {
            auth.service()
                .create_user(&user_name(prefix, n), PASSWORD, None, None)
                .await?;
        }
        Ok(Self {
            url: auth.url().to_owned(),
            _auth: auth,
        })
    }

    /// Returns the password of the bench users.
    pub fn password(&self) -> &'static str {
        PASSWORD
    }
}

/// Returns the name of bench user `n`.
pub fn user_name(prefix: &str, n: usize) -> String {
    format!("{prefix}{n:03}")
}

/// Logs `users` users in at `auth_url` and returns one token per user.
pub async fn login_all(
    http: &reqwest::Client,
    auth_url: &str,
    prefix: &str,
    users: usize,
    password: &str,
) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct TokenBody {
        token: String,
    }
    let mut tokens = Vec::with_capacity(users);
    for n in 0..users {
        let name = user_name(prefix, n);
        let response = http
            .post(format!("{auth_url}/auth/login"))
            .json(&serde_json::json!({ "username": name, "password": password }))
            .send()
            .await
            .with_context(|| format!("logging in {name} at {auth_url}"))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            bail!("login of {name} failed with {status}: {body}");
        }
        tokens.push(response.json::<TokenBody>().await?.token);
    }
    Ok(tokens)
}

/// The spawned `rethink-msg-node` process; killed on drop.
pub struct NodeProcess {
    /// Base URL of its HTTP surface, `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its process id (for `/proc/<pid>/stat`).
    pub pid: u32,
    /// Where its output goes.
    pub log: PathBuf,
    child: Child,
}

/// How to start the node.
pub struct NodeSpawn<'a> {
    /// The `rethink-msg-node` binary.
    pub binary: &'a Path,
    /// CPU list for `taskset -c`, or None to run unpinned.
    pub core: Option<&'a str>,
    /// Auth service base URL (for its public keys).
    pub auth_url: &'a str,
    /// Directory for the policy file and the log.
    pub dir: &'a Path,
    /// `RUST_LOG` of the node.
    pub log_filter: &'a str,
}

impl NodeProcess {
    /// Starts the node with the bench policy and waits until `/readyz` answers 200.
    pub async fn spawn(spec: NodeSpawn<'_>, http: &reqwest::Client) -> anyhow::Result<Self> {
        if !spec.binary.is_file() {
            bail!(
                "{} not found; build it first: cargo build --release -p rethink-msg-node \
                 (or pass --msg-node-bin)",
                spec.binary.display()
            );
        }
        let policy = spec.dir.join("bench-policy.toml");
        std::fs::write(&policy, BENCH_POLICY)?;
        let log = spec.dir.join("msg-node.log");
        let http_addr = free_port()?;
        let grpc_addr = free_port()?;
        let mut command = match spec.core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core).arg(spec.binary);
                c
            }
            None => Command::new(spec.binary),
        };
        command
            .arg("--http-addr")
            .arg(http_addr.to_string())
            .arg("--grpc-addr")
            .arg(grpc_addr.to_string())
            .arg("--auth-url")
            .arg(spec.auth_url)
            .arg("--policy-file")
            .arg(&policy)
            .env("RUST_LOG", spec.log_filter)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(spec.dir.join("msg-node.stderr"))?)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", spec.binary.display()))?;
        // taskset execs the node, so the child's pid is the node's.
        let pid = child.id().context("the node exited at once")?;
        let url = format!("http://{http_addr}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "rethink-msg-node exited with {status}; see {} and msg-node.stderr",
                    log.display()
                );
            }
            let ready = http
                .get(format!("{url}/readyz"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                bail!("rethink-msg-node did not become ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            url,
            pid,
            log,
            child,
        })
    }

    /// Stops the node.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Returns a loopback address with a port that was free a moment ago.
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Pins this process to `cores` (a `taskset -c` list) before any worker thread exists.
pub fn pin_self(cores: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset -p -c {cores} failed with {status}");
    }
    Ok(())
}
