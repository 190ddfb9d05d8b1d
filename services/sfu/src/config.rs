//! The SFU's configuration: defaults → `sfu.toml` → `RETHINK_*` env → flags
//! (see `rethink_common::config`). `services/sfu/sfu.example.toml` documents every key.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use rethink_common::config::RedisConfig;
use rethink_common::config::{ConfigError, ServiceConfig};
use rethink_common::listener::ListenerLimits;
use rethink_common::service::AuthClientConfig;
use serde::{Deserialize, Serialize};

/// Every setting of the SFU service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SfuConfig {
    /// This node's id in the node registry; empty means `sfu-<random>`, chosen at start.
    pub node_id: String,
    /// Where the gRPC `rethink.v1.Sfu` service listens.
    pub grpc_addr: SocketAddr,
    /// Where `/healthz`, `/readyz`, `/metrics` and the WHIP/WHEP endpoints listen.
    pub http_addr: SocketAddr,
    /// The one UDP socket every peer's media goes through.
    pub udp_addr: SocketAddr,
    /// Kernel send and receive buffer of the UDP socket, in bytes (capped by the kernel's
    /// `net.core.rmem_max` / `wmem_max`). Large buffers absorb bursts of fan-out traffic.
    pub udp_buffer_bytes: usize,
    /// Addresses advertised to peers as ICE host candidates (with the UDP port), for containers
    /// and NAT. Empty means the bound UDP address (or 127.0.0.1 when bound to an unspecified one).
    pub public_ips: Vec<IpAddr>,
    /// The gRPC address other services use to reach this node, written in the heartbeat.
    /// Empty means the bound gRPC address (its IP replaced by the first public IP, or
    /// 127.0.0.1, when unspecified).
    pub advertise_grpc_addr: String,
    /// The public base URL of this node's HTTP port (WHIP/WHEP), written in the heartbeat.
    pub advertise_http_url: String,
    /// Redis; without it the node registry and events stay in memory (single-process stack).
    pub redis: RedisConfig,
    /// The auth service whose JWKS verifies the service tokens of gRPC callers.
    pub auth: AuthClientConfig,
    /// Bounds of the HTTP and gRPC listeners.
    pub listener: ListenerLimits,
    /// How often the node writes its heartbeat, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// How long a heartbeat stays valid, in milliseconds; must exceed the interval.
    pub heartbeat_ttl_ms: u64,
    /// After SIGTERM, how long existing rooms may live before they are closed, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Most rooms this node holds at once.
    pub max_rooms: usize,
    /// Most participants in one room.
    pub max_participants_per_room: usize,
    /// How long a room may stay empty (no participant since it was created, or since the last
    /// one left) before it is closed, in milliseconds. Rooms WHIP created count too, so rooms
    /// nobody uses cannot fill `max_rooms`.
    pub empty_room_timeout_ms: u64,
    /// str0m's delay-based send-side estimator towards every peer. Each subscriber's simulcast
    /// layer always follows a budget made from the loss its TWCC feedback reports and from its
    /// REMB; this adds the delay-based estimate to it, but str0m (0.25) then also paces every
    /// leg at 1.1 × that estimate with no way to pace above it, so a leg whose estimate dips
    /// below the stream it forwards queues packets for up to 2 s instead of passing them on.
    /// Off (the default): forwarded media leaves at the publisher's rate.
    pub bandwidth_estimation: bool,
}

impl Default for SfuConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 7881)),
            http_addr: SocketAddr::from(([0, 0, 0, 0], 7880)),
            udp_addr: SocketAddr::from(([0, 0, 0, 0], 7882)),
            udp_buffer_bytes: 4 * 1024 * 1024,
            public_ips: Vec::new(),
            advertise_grpc_addr: String::new(),
            advertise_http_url: String::new(),
            redis: RedisConfig::default(),
            auth: AuthClientConfig::default(),
            listener: ListenerLimits::default(),
            heartbeat_interval_ms: 2_000,
            heartbeat_ttl_ms: 6_000,
            drain_timeout_ms: 120_000,
            max_rooms: 10_000,
            max_participants_per_room: 1_000,
            empty_room_timeout_ms: 30_000,
            bandwidth_estimation: false,
        }
    }
}

impl SfuConfig {
    /// The heartbeat period.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The heartbeat key's time to live.
    pub fn heartbeat_ttl(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ttl_ms)
    }

    /// How long a room may stay empty before it is closed.
    pub fn empty_room_timeout(&self) -> Duration {
        Duration::from_millis(self.empty_room_timeout_ms)
    }

    /// The longest drain after the first SIGTERM.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

impl ServiceConfig for SfuConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.auth.validate()?;
        self.listener.validate().map_err(ConfigError::invalid)?;
        if self.heartbeat_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "heartbeat_interval_ms must be positive",
            ));
        }
        if self.heartbeat_ttl_ms <= self.heartbeat_interval_ms {
            return Err(ConfigError::invalid(format!(
                "heartbeat_ttl_ms ({}) must exceed heartbeat_interval_ms ({}), or the node \
                 would vanish between beats",
                self.heartbeat_ttl_ms, self.heartbeat_interval_ms
            )));
        }
        if self.max_rooms == 0 || self.max_participants_per_room == 0 {
            return Err(ConfigError::invalid(
                "max_rooms and max_participants_per_room must be positive",
            ));
        }
        if self.empty_room_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "empty_room_timeout_ms must be positive (a room is closed once empty that long)",
            ));
        }
        if let Some(ip) = self.public_ips.iter().find(|ip| ip.is_unspecified()) {
            return Err(ConfigError::invalid(format!(
                "public_ips: {ip} cannot be advertised; give the address peers reach this node at"
            )));
        }
        if self.node_id.len() > 128 || self.node_id.chars().any(|c| c.is_control()) {
            return Err(ConfigError::invalid(
                "node_id must be at most 128 printable characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SfuConfig::default().validate().unwrap();
    }

    #[test]
    fn ttl_must_exceed_interval() {
        let config = SfuConfig {
            heartbeat_ttl_ms: 1_000,
            heartbeat_interval_ms: 1_000,
            ..SfuConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("heartbeat_ttl_ms"), "{error}");
    }

    #[test]
    fn example_file_loads_and_equals_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sfu.example.toml");
        let no_flags: Option<()> = None;
        let loaded: SfuConfig =
            rethink_common::config::load_from_env(Some(&path), &no_flags, std::iter::empty())
                .unwrap();
        assert_eq!(loaded, SfuConfig::default());
    }

    #[test]
    fn env_and_flags_override_the_file() {
        let env = [
            ("RETHINK_UDP_ADDR".to_string(), "127.0.0.1:9999".to_string()),
            (
                "RETHINK_REDIS__URL".to_string(),
                "redis://127.0.0.1:1".to_string(),
            ),
            (
                "RETHINK_BANDWIDTH_ESTIMATION".to_string(),
                "true".to_string(),
            ),
        ];
        let flags = serde_json::json!({"public_ips": ["203.0.113.7"]});
        let loaded: SfuConfig = rethink_common::config::load_from_env(None, &flags, env).unwrap();
        assert_eq!(loaded.udp_addr, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(loaded.redis.url.as_deref(), Some("redis://127.0.0.1:1"));
        assert!(loaded.bandwidth_estimation);
        assert_eq!(
            loaded.public_ips,
            vec!["203.0.113.7".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sfu.toml");
        std::fs::write(&path, "udp_adr = \"0.0.0.0:1\"\n").unwrap();
        let no_flags: Option<()> = None;
        let error = rethink_common::config::load_from_env::<SfuConfig>(
            Some(&path),
            &no_flags,
            std::iter::empty(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("udp_adr"), "{error}");
    }

    #[test]
    fn token_checks_cannot_be_turned_off() {
        // The removed `auth.insecure_disable` must fail at start, not be ignored: a deployment
        // that still sets it learns that its callers now need tokens.
        let env = [(
            "RETHINK_AUTH__INSECURE_DISABLE".to_string(),
            "true".to_string(),
        )];
        let no_flags: Option<()> = None;
        let error =
            rethink_common::config::load_from_env::<SfuConfig>(None, &no_flags, env).unwrap_err();
        assert!(error.to_string().contains("insecure_disable"), "{error}");
    }

    #[test]
    fn unspecified_public_ip_is_refused() {
        let config = SfuConfig {
            public_ips: vec!["0.0.0.0".parse().unwrap()],
            ..SfuConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
