//! Login throttling that holds under concurrency and across replicas.
//!
//! Every login attempt reserves a slot in three counters BEFORE its password is checked:
//! (username, client address), username from every address, and client address. When a counter
//! is full the attempt is refused with [`AuthError::Throttled`] (HTTP 429 with `Retry-After`,
//! gRPC `RESOURCE_EXHAUSTED`) without touching the password hash, right or wrong password, so N
//! concurrent guesses for one user from one address give at most
//! `max_failures_per_user_addr` wrong-password answers. A failed attempt keeps its slots; a
//! successful one clears the (username, address) counter and gives back its slots in the other
//! two; an attempt that ends without a verdict (bad request, storage error) gives back all three.
//! An [`Attempt`] dropped without a verdict keeps its slots: unknown outcomes count as failures.
//!
//! The (username, address) limit is the low one a guesser meets first; the per-username limit is
//! much higher, so a flood from one address locks that address out of that account (and, past
//! `max_failures_per_addr`, out of every account) but not the account's owner elsewhere.
//! A limit of `u32::MAX` turns that counter off.
//!
//! Layout: [`Throttle`] (counters), [`Attempt`] (one reservation), [`client_addr`] and
//! [`IpNet`] (the client address behind trusted proxies).
//!
//! Contracts — state lives in the shared [`KvStore`] (Redis when configured, so replicas share
//! the counts; memory otherwise). Each counter is one key
//! `rethink:auth:throttle:{pair|user|addr}:<id>` whose value is `<count> <started_ms> <until_ms>`
//! (Unix milliseconds) with a TTL until `until_ms`. The store has no INCR, so a reservation is a
//! compare-and-swap loop: read, check `count < limit`, write `count + 1` expecting the bytes
//! read. Contention is bounded by the limit (once a counter is full, readers stop writing); a
//! loop that still keeps losing gives up and refuses the attempt for a second (fail closed).
//! `until_ms` is `started_ms + window_secs`; the slot that fills the counter sets it to
//! `now + lockout_secs` (the lock), after which the counter expires and counting starts afresh.
//! A refund only decrements the window it reserved in (`started_ms` matches), so a success
//! can lift a lock that in-flight attempts caused.
//! When the store fails, the attempt fails with [`AuthError::Storage`] (503), never unthrottled.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use rand::Rng;
use rethink_common::kv::{KvError, KvStore};

use crate::{AuthError, config::ThrottleConfig};

/// Key prefix of the throttle counters.
pub const THROTTLE_PREFIX: &str = "rethink:auth:throttle:";

/// Compare-and-swap rounds before a reservation gives up (fails closed).
const MAX_CAS_ROUNDS: u32 = 32;
/// How long an attempt that lost too many compare-and-swap rounds is told to wait.
const CONTENDED_WAIT: Duration = Duration::from_secs(1);

/// Failure counters in the key-value store. Cheap to clone.
#[derive(Clone)]
pub struct Throttle {
    config: ThrottleConfig,
    trusted_proxies: Arc<[IpNet]>,
    kv: Arc<dyn KvStore>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The slots one login attempt holds; hand it back with [`Throttle::succeeded`],
/// [`Throttle::failed`] or [`Throttle::abandoned`].
#[derive(Debug)]
#[must_use = "an attempt must be finished with succeeded, failed or abandoned"]
pub struct Attempt {
    /// (key, started_ms of the window the slot was taken in, is the (user, address) pair).
    slots: Vec<(String, u64, bool)>,
}

/// A counter's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counter {
    count: u32,
    started_ms: u64,
    until_ms: u64,
}

impl Counter {
    fn parse(raw: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut parts = text.split(' ');
        let counter = Counter {
            count: parts.next()?.parse().ok()?,
            started_ms: parts.next()?.parse().ok()?,
            until_ms: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(counter)
    }

    fn encode(&self) -> Bytes {
        Bytes::from(format!(
            "{} {} {}",
            self.count, self.started_ms, self.until_ms
        ))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Returns `Some(wait)` when the reservation was refused.
type Reserved = Result<u64, Duration>;

impl Throttle {
    /// Returns a throttle keeping its counters in `kv`. Unparsable `trusted_proxies` entries
    /// are ignored here; [`crate::AuthConfig`] validation refuses them.
    pub fn new(config: ThrottleConfig, kv: Arc<dyn KvStore>) -> Self {
        let trusted_proxies = config
            .trusted_proxies
            .iter()
            .filter_map(|p| IpNet::parse(p))
            .collect();
        Self {
            config,
            trusted_proxies,
            kv,
        }
    }

    /// Returns the proxies whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted_proxies
    }

    fn counters(&self, user: Option<&str>, addr: Option<IpAddr>) -> Vec<(String, u32, bool)> {
        let c = &self.config;
        let user = user
            .map(|u| u.trim().to_ascii_lowercase())
            .filter(|u| !u.is_empty() && u.len() <= 64);
        let mut out = Vec::with_capacity(3);
        if let (Some(user), Some(addr)) = (&user, addr) {
            out.push((
                format!("{THROTTLE_PREFIX}pair:{user}@{addr}"),
                c.max_failures_per_user_addr,
                true,
            ));
        }
        if let Some(user) = &user {
            out.push((
                format!("{THROTTLE_PREFIX}user:{user}"),
                c.max_failures_per_user,
                false,
            ));
        }
        if let Some(addr) = addr {
            out.push((
                format!("{THROTTLE_PREFIX}addr:{addr}"),
                c.max_failures_per_addr,
                false,
            ));
        }
        // u32::MAX means the counter is off.
        out.retain(|(_, limit, _)| *limit != u32::MAX);
        out
    }

    /// Reserves a slot for one attempt at `user` from `addr`, before its password is checked.
    /// Refused with [`AuthError::Throttled`] (how long to wait) when a counter is full.
    pub async fn begin(
        &self,
        user: Option<&str>,
        addr: Option<IpAddr>,
    ) -> Result<Attempt, AuthError> {
        let mut attempt = Attempt { slots: Vec::new() };
        for (key, limit, pair) in self.counters(user, addr) {
            let reserved = match self.reserve(&key, limit).await {
                Ok(reserved) => reserved,
                Err(e) => {
                    self.abandoned(attempt).await;
                    return Err(e.into());
                }
            };
            match reserved {
                Ok(started_ms) => attempt.slots.push((key, started_ms, pair)),
                Err(wait) => {
                    self.abandoned(attempt).await;
                    metrics::counter!("rethink_auth_login_throttled_total").increment(1);
                    return Err(AuthError::Throttled(wait));
                }
            }
        }
        Ok(attempt)
    }

    /// Ends an attempt whose password was right: clears the (username, address) counter and
    /// gives back the other slots.
    pub async fn succeeded(&self, attempt: Attempt) {
        for (key, started_ms, pair) in attempt.slots {
            let result = if pair {
                self.kv.delete(&key).await.map(drop)
            } else {
                self.refund(&key, started_ms).await
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, %key, "releasing a login throttle slot");
            }
        }
    }

    /// Ends an attempt whose password was wrong: its slots stay taken until the window ends.
    pub fn failed(&self, attempt: Attempt) {
        drop(attempt);
    }

    /// Ends an attempt that got no verdict (malformed request, storage failure): gives back
    /// every slot.
    pub async fn abandoned(&self, attempt: Attempt) {
        for (key, started_ms, _) in attempt.slots {
            if let Err(e) = self.refund(&key, started_ms).await {
                tracing::warn!(error = %e, %key, "releasing a login throttle slot");
            }
        }
    }

    async fn reserve(&self, key: &str, limit: u32) -> Result<Reserved, KvError> {
        let window = self.config.window_secs.saturating_mul(1000);
        let lockout = self.config.lockout_secs.saturating_mul(1000);
        for round in 0..MAX_CAS_ROUNDS {
            let raw = self.kv.get(key).await?;
            let now = now_ms();
            let current = raw
                .as_deref()
                .and_then(Counter::parse)
                .filter(|c| c.until_ms > now);
            let next = match current {
                None => Counter {
                    count: 1,
                    started_ms: now,
                    until_ms: now.saturating_add(window),
                },
                Some(c) if c.count < limit => Counter {
                    count: c.count + 1,
                    ..c
                },
                Some(c) => return Ok(Err(Duration::from_millis(c.until_ms - now))),
            };
            // The slot that fills the counter starts the lockout; the counter then expires
            // with it and counting starts afresh.
            let next = if next.count >= limit {
                Counter {
                    until_ms: now.saturating_add(lockout),
                    ..next
                }
            } else {
                next
            };
            let ttl = Duration::from_millis((next.until_ms - now).max(1));
            if self
                .kv
                .compare_and_swap(key, raw.as_deref(), Some(next.encode()), Some(ttl))
                .await?
            {
                return Ok(Ok(next.started_ms));
            }
            backoff(round).await;
        }
        tracing::warn!(%key, "login throttle counter kept conflicting; refusing the attempt");
        Ok(Err(CONTENDED_WAIT))
    }

    async fn refund(&self, key: &str, started_ms: u64) -> Result<(), KvError> {
        for round in 0..MAX_CAS_ROUNDS {
            let Some(raw) = self.kv.get(key).await? else {
                return Ok(());
            };
            let now = now_ms();
            let Some(current) = Counter::parse(&raw)
                .filter(|c| c.started_ms == started_ms && c.until_ms > now && c.count > 0)
            else {
                // Another window (or nothing) now: the slot expired with its window.
                return Ok(());
            };
            let next = (current.count > 1).then(|| {
                Counter {
                    count: current.count - 1,
                    ..current
                }
                .encode()
            });
            let ttl = Duration::from_millis((current.until_ms - now).max(1));
            if self
                .kv
                .compare_and_swap(key, Some(&raw), next, Some(ttl))
                .await?
            {
                return Ok(());
            }
            backoff(round).await;
        }
        tracing::warn!(%key, "login throttle refund kept conflicting; the slot expires instead");
        Ok(())
    }
}

/// Spreads out writers that lost a compare-and-swap round, so they do not collide again.
async fn backoff(round: u32) {
    let max_us = 200 * u64::from(round.min(10) + 1);
    let wait = rand::thread_rng().gen_range(0..=max_us);
    tokio::time::sleep(Duration::from_micros(wait)).await;
}

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `::1/128`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `ip` or `ip/prefix`; `None` when it is neither.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse::<IpAddr>().ok()?, Some(prefix.parse().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Returns true when `ip` is inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Returns the client address of a request from `peer` (the socket address) carrying these
/// `X-Forwarded-For` values. Forwarded hops are believed only while they come from a trusted
/// proxy: starting at the peer, each trusted hop hands over to the hop it forwarded for (read
/// right to left); the first untrusted one is the client. An untrusted peer is the client
/// whatever the header says, so clients cannot pick their own address.
pub fn client_addr<'a>(
    peer: Option<IpAddr>,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let mut client = peer?.to_canonical();
    if !trusted.iter().any(|net| net.contains(client)) {
        return Some(client);
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Ok(addr) = hop.parse::<IpAddr>() else {
            // Garbage from the proxy's own client: the proxy's view is the last one believed.
            break;
        };
        client = addr.to_canonical();
        if !trusted.iter().any(|net| net.contains(client)) {
            break;
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use rethink_common::kv::MemoryKv;

    use super::*;

    fn throttle(pair: u32, user: u32, addr: u32) -> Throttle {
        let config = ThrottleConfig {
            max_failures_per_user_addr: pair,
            max_failures_per_user: user,
            max_failures_per_addr: addr,
            window_secs: 60,
            lockout_secs: 30,
            trusted_proxies: Vec::new(),
        };
        Throttle::new(config, Arc::new(MemoryKv::new()))
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[tokio::test]
    async fn pair_locks_after_limit_and_success_clears_it() {
        let t = throttle(3, 100, 100);
        for _ in 0..2 {
            let a = t.begin(Some("Alice"), ip("10.0.0.1")).await.unwrap();
            t.failed(a);
        }
        let ok = t.begin(Some("alice"), ip("10.0.0.1")).await.unwrap();
        t.succeeded(ok).await;
        for _ in 0..3 {
            let a = t.begin(Some("alice"), ip("10.0.0.1")).await.unwrap();
            t.failed(a);
        }
        let refused = t.begin(Some("ALICE"), ip("10.0.0.1")).await.unwrap_err();
        assert!(
            matches!(refused, AuthError::Throttled(wait) if wait > Duration::from_secs(25)),
            "{refused:?}"
        );
        // The same user from elsewhere, and another user from here, are not locked.
        let a = t.begin(Some("alice"), ip("10.0.0.2")).await.unwrap();
        t.succeeded(a).await;
        let a = t.begin(Some("bob"), ip("10.0.0.1")).await.unwrap();
        t.succeeded(a).await;
    }

    #[tokio::test]
    async fn reservations_count_before_the_verdict_and_abandon_refunds() {
        let t = throttle(2, 100, 100);
        let first = t.begin(Some("alice"), ip("10.0.0.1")).await.unwrap();
        let second = t.begin(Some("alice"), ip("10.0.0.1")).await.unwrap();
        // Two attempts in flight fill the pair: a third waits, whatever its password.
        assert!(t.begin(Some("alice"), ip("10.0.0.1")).await.is_err());
        t.abandoned(first).await;
        let third = t.begin(Some("alice"), ip("10.0.0.1")).await.unwrap();
        t.failed(second);
        t.failed(third);
        assert!(t.begin(Some("alice"), ip("10.0.0.1")).await.is_err());
    }

    #[tokio::test]
    async fn user_and_address_limits_apply_across_pairs() {
        let t = throttle(100, 3, 4);
        for n in 1..=3 {
            let a = t
                .begin(Some("alice"), ip(&format!("10.0.0.{n}")))
                .await
                .unwrap();
            t.failed(a);
        }
        assert!(t.begin(Some("alice"), ip("10.0.0.9")).await.is_err());
        for user in ["u1", "u2", "u3"] {
            let a = t.begin(Some(user), ip("10.1.0.1")).await.unwrap();
            t.failed(a);
        }
        let a = t.begin(Some("u4"), ip("10.1.0.1")).await.unwrap();
        t.failed(a);
        assert!(t.begin(Some("u5"), ip("10.1.0.1")).await.is_err());
        // Off: u32::MAX.
        let off = throttle(u32::MAX, u32::MAX, u32::MAX);
        for _ in 0..10 {
            let a = off.begin(Some("alice"), ip("10.0.0.1")).await.unwrap();
            off.failed(a);
        }
    }

    #[test]
    fn counters_parse_only_their_own_shape() {
        let c = Counter {
            count: 3,
            started_ms: 10,
            until_ms: 20,
        };
        assert_eq!(Counter::parse(&c.encode()), Some(c));
        for bad in ["", "1 2", "1 2 3 4", "a b c", "-1 2 3"] {
            assert_eq!(Counter::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn networks_and_forwarded_hops() {
        let nets: Vec<IpNet> = ["10.0.0.0/8", "127.0.0.1", "::1", "fd00::/8"]
            .iter()
            .map(|n| IpNet::parse(n).unwrap())
            .collect();
        for bad in ["", "10.0.0.0/33", "::/129", "host", "10.0.0.1/x"] {
            assert_eq!(IpNet::parse(bad), None, "{bad}");
        }
        assert!(nets[0].contains("10.200.1.1".parse().unwrap()));
        assert!(!nets[0].contains("11.0.0.1".parse().unwrap()));
        assert!(nets[1].contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );

        // Untrusted peer: the header is ignored.
        assert_eq!(
            client_addr(ip("192.0.2.1"), ["198.51.100.7"], &nets),
            ip("192.0.2.1")
        );
        // Trusted peer: the last untrusted hop, skipping trusted ones and spoofed left hops.
        assert_eq!(
            client_addr(ip("127.0.0.1"), ["6.6.6.6, 198.51.100.7, 10.1.1.1"], &nets),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_addr(ip("127.0.0.1"), ["6.6.6.6", "198.51.100.7"], &nets),
            ip("198.51.100.7")
        );
        // Garbage or no header: the last trusted hop.
        assert_eq!(
            client_addr(ip("127.0.0.1"), ["junk, 10.1.1.1"], &nets),
            ip("10.1.1.1")
        );
        assert_eq!(client_addr(ip("127.0.0.1"), [], &nets), ip("127.0.0.1"));
        assert_eq!(client_addr(None, ["1.2.3.4"], &nets), None);
    }
}
