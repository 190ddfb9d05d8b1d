//! Policy enforcement point: every message, from a browser or a gRPC-attached service, is
//! checked here before it is routed.
//!
//! Layout: [`file`] parses and compiles the TOML policy file, [`glob`] matches identities and
//! addresses, [`limits`] holds the size limits and token buckets. [`PolicyEngine`] ties them
//! together and swaps in a new policy when the file changes or an event arrives on
//! [`topics::MSG_NODE_POLICY`].
//!
//! Evaluation order, the contract `docs/policy.md` documents:
//! 1. size: larger than the identity's `max_message_bytes` → 413;
//! 2. rate: the identity's token bucket is empty → 429 (denied messages count too, so flooding
//!    with forbidden messages is throttled as well);
//! 3. rules, in file order, first match wins: `deny` → 403 with the rule's reason;
//! 4. no rule matched: the default action.
//!
//! Every deny is logged with its reason and counted in `msgnode_policy_denied_total{reason,code}`.
//! A reload that fails (unreadable file, bad TOML, invalid rule) keeps the policy in force.

mod file;
pub(crate) mod glob;
mod limits;
#[cfg(test)]
mod tests;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rethink_common::bus::{EventBus, Subscription, decode_event, topics};
use rethink_common::lifecycle::Shutdown;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::file::{Action, Policy};
pub use self::glob::Glob;
pub use self::limits::Limits;
use self::limits::RateLimiter;
use crate::envelope::Envelope;

/// The built-in policy (see `default.toml`): messages to hyperties, objects and node services
/// are allowed, everything else denied; 64 KiB per message; 200 msg/s with bursts of 400 per user
/// and ten times that per service.
pub const DEFAULT_POLICY: &str = include_str!("default.toml");

/// How often the reloader looks at the policy file.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Largest policy file accepted, in bytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Name of the counter of denied messages (labels `reason` and `code`).
pub const DENIED_METRIC: &str = "msgnode_policy_denied_total";

/// Name of the counter of policy reloads (label `result`: `ok` or `error`).
pub const RELOADS_METRIC: &str = "msgnode_policy_reloads_total";

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Io {
        /// The policy file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("policy file {path} has {size} bytes; the limit is {MAX_FILE_BYTES}")]
    TooLarge {
        /// The policy file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The text is not TOML, or has unknown or mistyped keys.
    #[error("policy is not valid: {0}")]
    Parse(String),
    /// The TOML is well-formed but a value is not acceptable (bad pattern, unknown type, ...).
    #[error("policy is not valid: {0}")]
    Invalid(String),
    /// The engine runs the built-in policy, so there is no file to reload.
    #[error("no policy file is configured, so there is nothing to reload")]
    NoFile,
}

/// What the policy is asked about one message.
#[derive(Clone, Copy, Debug)]
pub struct PolicyContext<'a> {
    /// The authenticated sender: a user name, or a service name for gRPC-attached services.
    pub identity: &'a str,
    /// Whether `identity` authenticated with a service token.
    pub is_service: bool,
    /// The message.
    pub envelope: &'a Envelope,
    /// Size of the message as received (the frame), in bytes.
    pub size: usize,
    /// The current time; passed in so limits can be tested on a virtual clock.
    pub now: Instant,
}

/// The verdict on one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Route the message.
    Allow,
    /// Refuse it: answer the sender with `code` (403, 413 or 429) and `reason`.
    Deny {
        /// 403 (a rule or the default), 413 (too large) or 429 (rate limit).
        code: u16,
        /// Why, for the sender and the log.
        reason: String,
    },
}

impl Decision {
    /// Returns whether the message may pass.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// The policy enforcement point. Cheap to clone; clones share the policy, the rate buckets and
/// reloads.
#[derive(Clone, Debug)]
pub struct PolicyEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: Option<PathBuf>,
    policy: RwLock<Arc<Policy>>,
    /// Users and services get separate buckets, so a user named like a service is not confused
    /// with it.
    user_buckets: Mutex<RateLimiter>,
    service_buckets: Mutex<RateLimiter>,
    /// Hash of the file content last looked at (applied or rejected), so a broken file is
    /// reported once, not at every poll.
    last_seen: Mutex<Option<u64>>,
    /// Bumped on every policy swap.
    generation: watch::Sender<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The protected data stays consistent even if a holder panicked mid-way (plain counters).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PolicyEngine {
    fn with_policy(policy: Policy, path: Option<PathBuf>, seen: Option<u64>) -> Self {
        PolicyEngine {
            inner: Arc::new(Inner {
                path,
                policy: RwLock::new(Arc::new(policy)),
                user_buckets: Mutex::default(),
                service_buckets: Mutex::default(),
                last_seen: Mutex::new(seen),
                generation: watch::Sender::new(0),
            }),
        }
    }

    /// Loads the policy file at `path`; [`reload_from_file`](Self::reload_from_file) and
    /// [`spawn_reloader`](Self::spawn_reloader) read it again later.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let text = read_file(path)?;
        let policy = file::parse(&text)?;
        Ok(Self::with_policy(
            policy,
            Some(path.to_owned()),
            Some(hash(&text)),
        ))
    }

    /// Builds an engine from policy text (no file behind it).
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        Ok(Self::with_policy(file::parse(text)?, None, None))
    }

    /// Returns an engine running [`DEFAULT_POLICY`].
    pub fn default_policy() -> Self {
        // The built-in text is checked by a unit test; failing here would be a build defect.
        let policy = file::parse(DEFAULT_POLICY).expect("the built-in policy is valid");
        Self::with_policy(policy, None, None)
    }

    /// Returns the policy file, if the engine was loaded from one.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Returns how many times the policy has been replaced since the engine was built.
    pub fn generation(&self) -> u64 {
        *self.inner.generation.borrow()
    }

    /// Returns a receiver that sees [`generation`](Self::generation) change on every reload.
    pub fn watch_reloads(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Returns the limits that apply to an identity under the current policy.
    pub fn limits_for(&self, identity: &str, is_service: bool) -> Limits {
        self.current().limits_for(identity, is_service)
    }

    fn current(&self) -> Arc<Policy> {
        Arc::clone(
            &self
                .inner
                .policy
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Decides on one message. Denies are logged and counted; an allowed message has taken one
    /// token from its identity's rate bucket.
    pub fn evaluate(&self, ctx: &PolicyContext<'_>) -> Decision {
        let policy = self.current();
        let limits = policy.limits_for(ctx.identity, ctx.is_service);
        if ctx.size > limits.max_message_bytes {
            let reason = format!(
                "message of {} bytes is larger than the limit of {} bytes",
                ctx.size, limits.max_message_bytes
            );
            return deny(ctx, 413, "message_too_large", reason);
        }
        let buckets = if ctx.is_service {
            &self.inner.service_buckets
        } else {
            &self.inner.user_buckets
        };
        if !lock(buckets).try_take(ctx.identity, &limits, ctx.now) {
            let reason = format!(
                "rate limit of {} messages per second (bursts of {}) exceeded; slow down",
                limits.rate, limits.burst
            );
            return deny(ctx, 429, "rate_limited", reason);
        }
        let env = ctx.envelope;
        match policy
            .rules
            .iter()
            .find(|r| r.matches(ctx.identity, ctx.is_service, env))
        {
            Some(rule) if rule.action == Action::Allow => Decision::Allow,
            Some(rule) => deny(ctx, 403, &rule.name, rule.reason.clone()),
            None if policy.default_action == Action::Allow => Decision::Allow,
            None => deny(ctx, 403, "default", policy.default_reason.clone()),
        }
    }

    /// Charges a frame that never became a message (malformed JSON, wrong shape, binary) to its
    /// sender's rate bucket, so a flood of garbage is limited like a flood of messages. Returns
    /// the 429 decision when the bucket is empty.
    pub fn charge_malformed(&self, identity: &str, is_service: bool, now: Instant) -> Decision {
        let limits = self.current().limits_for(identity, is_service);
        let buckets = if is_service {
            &self.inner.service_buckets
        } else {
            &self.inner.user_buckets
        };
        if lock(buckets).try_take(identity, &limits, now) {
            return Decision::Allow;
        }
        metrics::counter!(DENIED_METRIC, "reason" => "rate_limited").increment(1);
        Decision::Deny {
            code: 429,
            reason: format!(
                "rate limit of {} messages per second (bursts of {}) exceeded, malformed frames \
                 included; slow down",
                limits.rate, limits.burst
            ),
        }
    }

    /// Reads the policy file again and puts it in force. On any error the current policy stays
    /// and the error is logged and returned.
    pub fn reload_from_file(&self) -> Result<(), PolicyError> {
        let path = self.inner.path.as_deref().ok_or(PolicyError::NoFile)?;
        let text = read_file(path).inspect_err(|e| reload_failed(path, e))?;
        self.apply(path, &text)
    }

    /// Reloads the policy file if its content differs from the last version looked at; returns
    /// whether a new policy is in force. A broken file is reported once per distinct content.
    pub fn reload_if_changed(&self) -> Result<bool, PolicyError> {
        let path = self.inner.path.as_deref().ok_or(PolicyError::NoFile)?;
        let text = read_file(path)?;
        self.apply_if_changed(path, &text)
    }

    fn apply_if_changed(&self, path: &Path, text: &str) -> Result<bool, PolicyError> {
        let h = hash(text);
        if lock(&self.inner.last_seen).replace(h) == Some(h) {
            return Ok(false);
        }
        self.apply(path, text).map(|()| true)
    }

    /// Replaces the policy with `text` if it is valid.
    fn apply(&self, path: &Path, text: &str) -> Result<(), PolicyError> {
        *lock(&self.inner.last_seen) = Some(hash(text));
        let policy = file::parse(text).inspect_err(|e| reload_failed(path, e))?;
        let rules = policy.rules.len();
        *self
            .inner
            .policy
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
        self.inner.generation.send_modify(|g| *g += 1);
        metrics::counter!(RELOADS_METRIC, "result" => "ok").increment(1);
        tracing::info!(path = %path.display(), rules, "policy reloaded");
        Ok(())
    }

    /// Starts the reloader: it polls the policy file every [`POLL_INTERVAL`] and reloads when the
    /// content changed, and reloads at once when any message arrives on
    /// [`topics::MSG_NODE_POLICY`] (so operators can make every replica pick up an updated file
    /// without waiting). Ends when `shutdown` triggers. Without a policy file it only logs events.
    pub fn spawn_reloader(&self, bus: Arc<dyn EventBus>, shutdown: Shutdown) -> JoinHandle<()> {
        self.spawn_reloader_every(bus, shutdown, POLL_INTERVAL)
    }

    /// [`spawn_reloader`](Self::spawn_reloader) with a chosen poll interval.
    pub fn spawn_reloader_every(
        &self,
        bus: Arc<dyn EventBus>,
        shutdown: Shutdown,
        every: Duration,
    ) -> JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let stop = shutdown.wait();
            tokio::pin!(stop);
            let mut subscription = subscribe(&*bus).await;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    _ = tick.tick() => {
                        if subscription.is_none() {
                            subscription = subscribe(&*bus).await;
                        }
                        engine.poll_file().await;
                    }
                    message = next_message(&mut subscription) => match message {
                        Some(payload) => engine.on_event(&payload).await,
                        None => {
                            tracing::warn!("policy event subscription ended; resubscribing");
                            subscription = None;
                        }
                    },
                }
            }
        })
    }

    async fn poll_file(&self) {
        let Some(path) = self.inner.path.as_deref() else {
            return;
        };
        match read_file_async(path).await {
            // Errors are logged inside; the policy in force stays.
            Ok(text) => {
                let _ = self.apply_if_changed(path, &text);
            }
            Err(e) => {
                // A missing file is normal for a moment while a ConfigMap swaps its symlink;
                // report only once per outage.
                if lock(&self.inner.last_seen).take().is_some() {
                    reload_failed(path, &e);
                }
            }
        }
    }

    async fn on_event(&self, payload: &[u8]) {
        match decode_event(payload) {
            Ok(event) => tracing::info!(id = %event.id, kind = %event.r#type,
                source = %event.source, "policy event received"),
            Err(_) => tracing::info!("policy event received"),
        }
        let Some(path) = self.inner.path.as_deref() else {
            tracing::warn!("policy event ignored: no policy file is configured");
            return;
        };
        match read_file_async(path).await {
            Ok(text) => {
                // Errors are logged inside; the policy in force stays.
                let _ = self.apply(path, &text);
            }
            Err(e) => reload_failed(path, &e),
        }
    }
}

fn deny(ctx: &PolicyContext<'_>, code: u16, label: &str, reason: String) -> Decision {
    let env = ctx.envelope;
    tracing::info!(
        identity = ctx.identity,
        service = ctx.is_service,
        from = %env.from,
        to = %env.to,
        kind = %env.kind,
        code,
        rule = label,
        reason = %reason,
        "message denied by policy"
    );
    metrics::counter!(DENIED_METRIC, "reason" => label.to_owned(), "code" => code.to_string())
        .increment(1);
    Decision::Deny { code, reason }
}

fn reload_failed(path: &Path, error: &PolicyError) {
    metrics::counter!(RELOADS_METRIC, "result" => "error").increment(1);
    tracing::error!(path = %path.display(), %error, "policy not reloaded; the previous policy stays in force");
}

fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn io_error(path: &Path, source: std::io::Error) -> PolicyError {
    PolicyError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_file(path: &Path) -> Result<String, PolicyError> {
    let size = std::fs::metadata(path)
        .map_err(|e| io_error(path, e))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(PolicyError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    std::fs::read_to_string(path).map_err(|e| io_error(path, e))
}

async fn read_file_async(path: &Path) -> Result<String, PolicyError> {
    let size = tokio::fs::metadata(path)
        .await
        .map_err(|e| io_error(path, e))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(PolicyError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| io_error(path, e))
}

async fn subscribe(bus: &dyn EventBus) -> Option<Subscription> {
    match bus.subscribe(&[topics::MSG_NODE_POLICY.to_owned()]).await {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::warn!(%error, "cannot subscribe to policy events; retrying at the next poll");
            None
        }
    }
}

/// Waits for the next policy event; never completes without a subscription.
async fn next_message(subscription: &mut Option<Subscription>) -> Option<bytes::Bytes> {
    match subscription {
        Some(s) => s.recv().await.map(|m| m.payload),
        None => std::future::pending().await,
    }
}
