//! Configuration of the all-in-one stack.

use std::{net::SocketAddr, path::PathBuf};

pub use rethink_common::config::RedisConfig;
use rethink_common::config::{ConfigError, ServiceConfig};
use rethink_common::lifecycle::ServeAddrs;
use rethink_common::listener::ListenerLimits;
use serde::{Deserialize, Serialize};

/// What the stack can be told (file, `RETHINK_*` env, flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StackConfig {
    /// The one browser-facing address: `/auth/*`, `/msg`, `/client/*`, ... plus ops endpoints.
    pub http_addr: SocketAddr,
    /// gRPC of every service on one port.
    pub grpc_addr: SocketAddr,
    /// The browser runtime's own origin (web/runtime/ only); default: `http_addr` with port+1.
    pub runtime_addr: Option<SocketAddr>,
    /// The runtime origin as browsers see it when something fronts the listener (a proxy,
    /// `https://runtime.<domain>`); default: `http://<runtime_addr>`.
    pub runtime_origin: Option<String>,
    /// Directory of the runtime's files; default: the repository's `web/runtime`.
    pub runtime_dir: Option<PathBuf>,
    /// Redis; without a URL everything runs on the in-memory bus and store.
    pub redis: RedisConfig,
    /// Create the demo users alice, bob and carol (password `rethink-demo`).
    pub demo_users: bool,
    /// Bounds of the stack's two listeners.
    pub listener: ListenerLimits,
    /// Milliseconds to finish in-flight requests after shutdown begins.
    pub drain_timeout_ms: u64,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
            runtime_addr: None,
            runtime_origin: None,
            runtime_dir: None,
            redis: RedisConfig::default(),
            demo_users: true,
            listener: ListenerLimits::default(),
            drain_timeout_ms: 5_000,
        }
    }
}

impl StackConfig {
    /// Returns the runtime listener's address: `runtime_addr`, else `http_addr` with port+1
    /// (port 0 stays 0: a free port).
    pub fn runtime_addr(&self) -> SocketAddr {
        self.runtime_addr.unwrap_or_else(|| {
            let port = match self.http_addr.port() {
                0 => 0,
                port => port.wrapping_add(1),
            };
            SocketAddr::new(self.http_addr.ip(), port)
        })
    }

    /// Returns the directory served on the runtime origin.
    pub fn runtime_dir(&self) -> PathBuf {
        self.runtime_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../web/runtime"))
    }
}

impl ServeAddrs for StackConfig {
    fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }
}

impl ServiceConfig for StackConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.listener.validate().map_err(ConfigError::invalid)?;
        if self.runtime_addr() == self.http_addr && self.http_addr.port() != 0 {
            return Err(ConfigError::invalid(
                "runtime_addr must differ from http_addr: the runtime needs its own origin",
            ));
        }
        if let Some(origin) = &self.runtime_origin
            && (origin.ends_with('/') || !origin.contains("://"))
        {
            return Err(ConfigError::invalid(format!(
                "runtime_origin {origin:?} must be an origin such as https://runtime.example.com"
            )));
        }
        self.redis.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_loads_and_matches_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("stack.example.toml");
        let loaded: StackConfig = rethink_common::config::load_from_env(
            Some(&path),
            &serde_json::Value::Null,
            std::iter::empty(),
        )
        .unwrap();
        assert_eq!(loaded, StackConfig::default());
    }

    #[test]
    fn runtime_listens_next_to_http_by_default() {
        let config = StackConfig::default();
        assert_eq!(config.runtime_addr().to_string(), "127.0.0.1:8081");
        let mut same = StackConfig::default();
        same.runtime_addr = Some(same.http_addr);
        assert!(same.validate().is_err());
    }
}
