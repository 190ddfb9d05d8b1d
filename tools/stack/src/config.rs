//! Configuration of the all-in-one stack.

use std::net::SocketAddr;

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
            redis: RedisConfig::default(),
            demo_users: true,
            listener: ListenerLimits::default(),
            drain_timeout_ms: 5_000,
        }
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
}
