//! Failed-login throttling, as a tower layer around the login route.
//!
//! [`Throttle`] counts failures per username and per client address in a window; reaching the
//! limit locks that key for `lockout_secs`. While a key is locked every attempt is answered
//! `429 Too Many Requests` with `Retry-After`, right or wrong password, so guessing stops.
//! [`LoginThrottleLayer`] reads the username from the JSON body (then hands the body on
//! unchanged), asks the throttle, and feeds back the status of the inner response: 401 counts
//! as a failure, a success clears the username's count. The gRPC `Login` uses the same
//! [`Throttle`] directly.
//!
//! State is per process: behind several auth replicas the effective limit is multiplied by the
//! replica count, which still bounds guessing.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{Request, StatusCode},
    response::{IntoResponse, Response},
};
use futures::future::BoxFuture;
use serde::Deserialize;
use tower::{Layer, Service};

use crate::{AuthError, config::ThrottleConfig};

/// Most keys tracked at once; beyond it, idle entries are dropped first.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

/// Which kind of key an entry counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    User(String),
    Addr(IpAddr),
}

/// Failure counters and locks. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct Throttle {
    config: ThrottleConfig,
    entries: Arc<Mutex<HashMap<Key, Entry>>>,
}

impl Throttle {
    /// Returns a throttle with no recorded failures.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn keys(user: Option<&str>, addr: Option<IpAddr>) -> Vec<Key> {
        let mut keys = Vec::with_capacity(2);
        if let Some(user) = user {
            keys.push(Key::User(user.trim().to_ascii_lowercase()));
        }
        if let Some(addr) = addr {
            keys.push(Key::Addr(addr));
        }
        keys
    }

    /// Returns how long to wait when `user` or `addr` is locked.
    pub fn check(&self, user: Option<&str>, addr: Option<IpAddr>) -> Result<(), AuthError> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let wait = Self::keys(user, addr)
            .iter()
            .filter_map(|k| entries.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match wait {
            Some(wait) => Err(AuthError::Throttled(wait)),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt.
    pub fn failure(&self, user: Option<&str>, addr: Option<IpAddr>) {
        let now = Instant::now();
        let window = Duration::from_secs(self.config.window_secs);
        let lockout = Duration::from_secs(self.config.lockout_secs);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| {
                e.locked_until.is_some_and(|u| u > now) || now - e.window_start < window
            });
        }
        for key in Self::keys(user, addr) {
            let limit = match key {
                Key::User(_) => self.config.max_failures_per_user,
                Key::Addr(_) => self.config.max_failures_per_addr,
            };
            if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
                continue;
            }
            let entry = entries.entry(key).or_insert(Entry {
                failures: 0,
                window_start: now,
                locked_until: None,
            });
            if now - entry.window_start >= window {
                entry.failures = 0;
                entry.window_start = now;
            }
            entry.failures += 1;
            if entry.failures >= limit {
                entry.locked_until = Some(now + lockout);
                entry.failures = 0;
                entry.window_start = now;
            }
        }
    }

    /// Clears the username's failures after a successful login. The address keeps its count,
    /// so one valid account cannot be used to reset guessing from that address.
    pub fn success(&self, user: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&Key::User(user.trim().to_ascii_lowercase()));
    }
}

/// Wraps the login route with a [`Throttle`].
#[derive(Debug, Clone)]
pub struct LoginThrottleLayer {
    throttle: Throttle,
    max_body: usize,
}

impl LoginThrottleLayer {
    /// Returns the layer; bodies above `max_body` bytes are refused with 413.
    pub fn new(throttle: Throttle, max_body: usize) -> Self {
        Self { throttle, max_body }
    }
}

impl<S> Layer<S> for LoginThrottleLayer {
    type Service = LoginThrottle<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoginThrottle {
            inner,
            throttle: self.throttle.clone(),
            max_body: self.max_body,
        }
    }
}

/// The service made by [`LoginThrottleLayer`].
#[derive(Debug, Clone)]
pub struct LoginThrottle<S> {
    inner: S,
    throttle: Throttle,
    max_body: usize,
}

#[derive(Deserialize)]
struct UsernameOnly {
    username: String,
}

/// Returns the client address: the first `X-Forwarded-For` hop when trusted, else the peer.
pub fn client_addr<B>(request: &Request<B>, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(addr) = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(addr);
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

impl<S> Service<Request<Body>> for LoginThrottle<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone is ready only if polled; swap so the polled instance serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let throttle = self.throttle.clone();
        let max_body = self.max_body;
        Box::pin(async move {
            let addr = client_addr(&request, throttle.config.trust_forwarded_for);
            let (parts, body) = request.into_parts();
            let bytes = match axum::body::to_bytes(body, max_body).await {
                Ok(bytes) => bytes,
                Err(_) => return Ok(AuthError::TooLarge.into_response()),
            };
            let user = serde_json::from_slice::<UsernameOnly>(&bytes)
                .ok()
                .map(|u| u.username)
                .filter(|u| !u.is_empty() && u.len() <= 64);
            if let Err(e) = throttle.check(user.as_deref(), addr) {
                metrics::counter!("rethink_auth_login_throttled_total").increment(1);
                return Ok(e.into_response());
            }
            let response = inner
                .call(Request::from_parts(parts, Body::from(bytes)))
                .await?;
            match response.status() {
                StatusCode::UNAUTHORIZED => throttle.failure(user.as_deref(), addr),
                status if status.is_success() => {
                    if let Some(user) = &user {
                        throttle.success(user);
                    }
                }
                _ => {}
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            max_failures_per_user: 3,
            max_failures_per_addr: 5,
            window_secs: 60,
            lockout_secs: 30,
            trust_forwarded_for: false,
        }
    }

    #[test]
    fn locks_user_after_limit_and_success_clears() {
        let t = Throttle::new(config());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        t.failure(Some("Alice"), Some(ip));
        t.failure(Some("alice"), Some(ip));
        assert!(t.check(Some("alice"), None).is_ok());
        t.success("alice");
        t.failure(Some("alice"), Some(ip));
        t.failure(Some("alice"), Some(ip));
        assert!(t.check(Some("alice"), None).is_ok());
        t.failure(Some("alice"), Some(ip));
        assert!(matches!(
            t.check(Some("ALICE"), None),
            Err(AuthError::Throttled(_))
        ));
        // 5 failures from the address: the address is locked for every user.
        assert!(matches!(
            t.check(Some("bob"), Some(ip)),
            Err(AuthError::Throttled(_))
        ));
        assert!(
            t.check(Some("bob"), Some("10.0.0.2".parse().unwrap()))
                .is_ok()
        );
    }
}
