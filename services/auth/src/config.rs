//! Configuration of the auth service (see `auth.example.toml` for every key, commented).

use std::{net::SocketAddr, time::Duration};

pub use rethink_common::config::RedisConfig;
use rethink_common::config::{ConfigError, ServiceConfig};
use rethink_common::lifecycle::ServeAddrs;
use rethink_common::listener::ListenerLimits;
use serde::{Deserialize, Serialize};

/// Everything the auth service can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HTTP address: `/auth/*` for browsers plus `/healthz`, `/readyz`, `/metrics`.
    pub http_addr: SocketAddr,
    /// gRPC address (`rethink.v1.Auth`, health, reflection); cluster-internal.
    pub grpc_addr: SocketAddr,
    /// Redis; without a URL users, keys and revocations live in memory.
    pub redis: RedisConfig,
    /// Token lifetime, audience and key rotation.
    pub tokens: TokenConfig,
    /// Limits on the HTTP surface.
    pub http: HttpConfig,
    /// Login throttling.
    pub throttle: ThrottleConfig,
    /// Bounds of both listeners (connections, header and request timeouts).
    pub listener: ListenerLimits,
    /// Milliseconds to finish in-flight requests after shutdown begins.
    pub drain_timeout_ms: u64,
}

/// Tokens and signing keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Lifetime of minted tokens, in seconds (also the cap for API-key tokens).
    pub ttl_secs: u64,
    /// `aud` claim of minted tokens.
    pub audience: String,
    /// Rotate the signing key when it is older than this many seconds; 0 = never.
    pub rotation_secs: u64,
}

/// HTTP limits, applied as tower layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Exact origins (`scheme://host[:port]`) whose pages may `POST /auth/login` cross-origin
    /// and read the answer (CORS); empty: same-origin pages only. The local stack lists the
    /// browser runtime's origin here, which logs users in from its own frame.
    pub cors_origins: Vec<String>,
}

/// Login throttling: attempts per (username, client address), per username from every address,
/// and per client address (see [`crate::throttle`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Attempts at one username from one client address within `window_secs` that lock that
    /// pair (the limit a guesser at one address meets first).
    pub max_failures_per_user_addr: u32,
    /// Attempts at one username from all addresses together within `window_secs` that lock the
    /// username everywhere; much higher than the pair limit, so one address cannot lock a user
    /// out from every address.
    pub max_failures_per_user: u32,
    /// Attempts from one client address, at any usernames, within `window_secs` that lock it.
    pub max_failures_per_addr: u32,
    /// Window in which attempts are counted, in seconds.
    pub window_secs: u64,
    /// A counter that fills up is locked this many seconds, then starts afresh.
    pub lockout_secs: u64,
    /// Proxies (IPs or CIDRs such as `10.0.0.0/8`) whose `X-Forwarded-For` is believed. The
    /// client address is the last hop not in this list; with an empty list (the default) it is
    /// always the socket's peer.
    pub trusted_proxies: Vec<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9081)),
            redis: RedisConfig::default(),
            tokens: TokenConfig::default(),
            http: HttpConfig::default(),
            throttle: ThrottleConfig::default(),
            listener: ListenerLimits::default(),
            drain_timeout_ms: 10_000,
        }
    }
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            ttl_secs: 3600,
            audience: rethink_common::token::DEFAULT_AUDIENCE.to_string(),
            rotation_secs: 7 * 24 * 3600,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            cors_origins: Vec::new(),
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures_per_user_addr: 5,
            max_failures_per_user: 100,
            max_failures_per_addr: 20,
            window_secs: 300,
            lockout_secs: 60,
            trusted_proxies: Vec::new(),
        }
    }
}

impl ServeAddrs for AuthConfig {
    fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }
}

impl TokenConfig {
    /// Returns the token lifetime.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }
}

impl ServiceConfig for AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(60..=30 * 24 * 3600).contains(&self.tokens.ttl_secs) {
            return Err(ConfigError::invalid(
                "tokens.ttl_secs must be between 60 and 2592000 (30 days)",
            ));
        }
        if self.tokens.rotation_secs != 0 && self.tokens.rotation_secs < 60 {
            return Err(ConfigError::invalid(
                "tokens.rotation_secs must be 0 (never) or at least 60",
            ));
        }
        if self.tokens.audience.trim().is_empty() {
            return Err(ConfigError::invalid("tokens.audience must not be empty"));
        }
        if !(256..=1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err(ConfigError::invalid(
                "http.max_body_bytes must be between 256 and 1048576",
            ));
        }
        for origin in &self.http.cors_origins {
            if !is_origin(origin) {
                return Err(ConfigError::invalid(format!(
                    "http.cors_origins: {origin:?} is not an origin (scheme://host[:port], no \
                     path, no trailing slash)"
                )));
            }
        }
        self.listener.validate().map_err(ConfigError::invalid)?;
        let t = &self.throttle;
        if t.max_failures_per_user_addr == 0
            || t.max_failures_per_user == 0
            || t.max_failures_per_addr == 0
        {
            return Err(ConfigError::invalid(
                "throttle.max_failures_per_user_addr, throttle.max_failures_per_user and \
                 throttle.max_failures_per_addr must be at least 1",
            ));
        }
        for proxy in &t.trusted_proxies {
            if crate::throttle::IpNet::parse(proxy).is_none() {
                return Err(ConfigError::invalid(format!(
                    "throttle.trusted_proxies: {proxy:?} is not an IP address or CIDR \
                     (e.g. 10.0.0.1 or 10.0.0.0/8)"
                )));
            }
        }
        if self.throttle.window_secs == 0 || self.throttle.lockout_secs == 0 {
            return Err(ConfigError::invalid(
                "throttle.window_secs and throttle.lockout_secs must be at least 1",
            ));
        }
        self.redis.validate()?;
        Ok(())
    }
}

/// Returns whether `text` is a serialized origin as browsers send it in `Origin`.
fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && http::HeaderValue::from_str(text).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        AuthConfig::default().validate().unwrap();
        let mut bad = AuthConfig::default();
        bad.tokens.ttl_secs = 1;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn cors_origins_must_be_exact_origins() {
        let with = |origin: &str| {
            let mut config = AuthConfig::default();
            config.http.cors_origins = vec![origin.to_string()];
            config.validate()
        };
        assert!(with("http://127.0.0.1:8081").is_ok());
        assert!(with("https://runtime.example.com").is_ok());
        for bad in [
            "*",
            "127.0.0.1:8081",
            "http://a/",
            "http://a/path",
            "ftp://a",
            "http://",
        ] {
            assert!(with(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn example_file_loads_and_matches_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("auth.example.toml");
        let loaded: AuthConfig = rethink_common::config::load_from_env(
            Some(&path),
            &serde_json::Value::Null,
            std::iter::empty(),
        )
        .unwrap();
        assert_eq!(loaded, AuthConfig::default());
    }
}
