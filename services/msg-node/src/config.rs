//! Configuration of the Message Node (see `msg-node.example.toml` for every key, commented).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

pub use rethink_common::config::RedisConfig;
use rethink_common::config::{ConfigError, ServiceConfig};
use rethink_common::lifecycle::ServeAddrs;
use rethink_common::listener::ListenerLimits;
use rethink_common::service::AuthClientConfig;
use serde::{Deserialize, Serialize};

/// Everything the Message Node can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MsgNodeConfig {
    /// HTTP address: `/msg` (WebSocket), `/client`, `/healthz`, `/readyz`, `/metrics`.
    pub http_addr: SocketAddr,
    /// gRPC address: `rethink.v1.MsgNode`, health, reflection; cluster-internal.
    pub grpc_addr: SocketAddr,
    /// The domain of every address this node hands out (`hyperty://<domain>/...`).
    pub domain: String,
    /// This replica's id in the address map and bus channel names; unset picks a random one.
    pub node_id: Option<String>,
    /// The auth service whose tokens are accepted: URL (for its public keys), audience and the
    /// clock leeway (a connection whose token expired is closed this long after `exp`).
    pub auth: AuthClientConfig,
    /// Redis; without a URL the registry, routing and objects live in memory (one replica).
    pub redis: RedisConfig,
    /// Policy file (see docs/policy.md); unset uses the built-in default policy.
    pub policy_file: Option<PathBuf>,
    /// Directory served at `/client`.
    pub web_dir: PathBuf,
    /// Sizes and counts.
    pub limits: LimitsConfig,
    /// Who may claim which well-known addresses.
    pub registry: RegistryConfig,
    /// Timers of sessions and routing.
    pub timing: TimingConfig,
    /// Bounds of both listeners.
    pub listener: ListenerLimits,
    /// Milliseconds to finish in-flight work after shutdown begins.
    pub drain_timeout_ms: u64,
}

/// Sizes and counts that bound memory per connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest envelope accepted, in bytes. On the WebSocket it is the largest message read at
    /// all: a larger one closes the connection (1009) before it is buffered or parsed; over
    /// gRPC a larger envelope is answered with 413.
    pub max_message_bytes: usize,
    /// Messages queued for one connection before it counts as a slow consumer and is closed.
    pub queue_len: usize,
    /// Hyperties one connection may register.
    pub max_hyperties_per_connection: usize,
    /// Live sessions (connected or in their grace period) on this replica.
    pub max_sessions: usize,
    /// Live sessions of one identity on this replica (one person's tabs, one service's
    /// instances), so one token cannot take the whole replica.
    pub max_sessions_per_identity: usize,
    /// Live data objects one identity may report, over all its hyperties and replicas.
    pub max_objects_per_identity: usize,
}

/// The hyperty registry's rules for well-known addresses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Reserved well-known addresses and who may claim them; the first entry whose address
    /// matches decides. Giving the list replaces the defaults (conference and cameras).
    pub reserved: Vec<ReservedAddress>,
}

/// One reserved address pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservedAddress {
    /// Address glob; `{domain}` stands for the node's domain, `*` matches within one path
    /// segment, `**` across segments (e.g. `hyperty://{domain}/camera/*`).
    pub address: String,
    /// Token subjects that may claim a matching address, as globs (`service:conference`,
    /// `camera:*`). Empty: nobody may.
    pub subjects: Vec<String>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        let entry = |address: &str, subjects: &[&str]| ReservedAddress {
            address: address.into(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        };
        Self {
            reserved: vec![
                entry("hyperty://{domain}/conference", &["service:conference"]),
                entry(
                    "hyperty://{domain}/camera/*",
                    &["camera:*", "service:publisher*"],
                ),
            ],
        }
    }
}

/// Timers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingConfig {
    /// Seconds a disconnected session keeps its addresses and queues messages for a resume.
    pub grace_secs: u64,
    /// Milliseconds to wait for another replica to confirm a delivery before answering 408.
    pub delivery_timeout_ms: u64,
    /// Seconds an address stays in the shared map without a refresh (refreshed every third).
    pub address_ttl_secs: u64,
    /// Seconds between WebSocket pings; a connection silent for two intervals is dead (its
    /// session enters the grace period).
    pub ping_secs: u64,
    /// Seconds a data object lives without a refresh; the replica of its reporter refreshes it
    /// with the reporter's addresses, so only objects of a crashed replica expire (objects of
    /// an ended session are deleted at once). 0: objects never expire.
    pub object_ttl_secs: u64,
}

impl Default for MsgNodeConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 9082)),
            domain: "localhost".into(),
            node_id: None,
            auth: AuthClientConfig::default(),
            redis: RedisConfig::default(),
            policy_file: None,
            web_dir: PathBuf::from("web"),
            limits: LimitsConfig::default(),
            registry: RegistryConfig::default(),
            timing: TimingConfig::default(),
            listener: ListenerLimits::default(),
            drain_timeout_ms: 10_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            queue_len: 1024,
            max_hyperties_per_connection: 32,
            max_sessions: 20_000,
            max_sessions_per_identity: 64,
            max_objects_per_identity: 100,
        }
    }
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            grace_secs: 15,
            delivery_timeout_ms: 5_000,
            address_ttl_secs: 30,
            ping_secs: 20,
            object_ttl_secs: 120,
        }
    }
}

impl ServeAddrs for MsgNodeConfig {
    fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }
}

impl TimingConfig {
    /// Returns the grace period of a disconnected session.
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.grace_secs)
    }

    /// Returns the cross-replica delivery timeout.
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }

    /// Returns the WebSocket ping interval.
    pub fn ping(&self) -> Duration {
        Duration::from_secs(self.ping_secs)
    }

    /// Returns the TTL of data objects, if they expire.
    pub fn object_ttl(&self) -> Option<Duration> {
        (self.object_ttl_secs > 0).then(|| Duration::from_secs(self.object_ttl_secs))
    }

    /// Returns the TTL of address map entries.
    pub fn address_ttl(&self) -> Duration {
        Duration::from_secs(self.address_ttl_secs)
    }
}

impl ServiceConfig for MsgNodeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let domain_ok = !self.domain.is_empty()
            && self.domain.len() <= 253
            && self
                .domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':');
        if !domain_ok {
            return Err(ConfigError::invalid(format!(
                "domain {:?} must be a host name (letters, digits, '.', '-', optional ':port')",
                self.domain
            )));
        }
        if let Some(id) = &self.node_id
            && (id.is_empty()
                || id.len() > 64
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(ConfigError::invalid(format!(
                "node_id {id:?} must be 1-64 letters, digits, '-' or '_'"
            )));
        }
        self.auth.validate()?;
        self.listener.validate().map_err(ConfigError::invalid)?;
        let l = &self.limits;
        if l.max_message_bytes < 1024 {
            return Err(ConfigError::invalid(
                "limits.max_message_bytes must be at least 1024",
            ));
        }
        if l.queue_len == 0
            || l.max_hyperties_per_connection == 0
            || l.max_sessions == 0
            || l.max_sessions_per_identity == 0
            || l.max_objects_per_identity == 0
        {
            return Err(ConfigError::invalid(
                "limits.queue_len, limits.max_hyperties_per_connection, limits.max_sessions, \
                 limits.max_sessions_per_identity and limits.max_objects_per_identity must be \
                 at least 1",
            ));
        }
        let t = &self.timing;
        if t.delivery_timeout_ms == 0 || t.address_ttl_secs < 3 || t.ping_secs == 0 {
            return Err(ConfigError::invalid(
                "timing.delivery_timeout_ms and timing.ping_secs must be positive and \
                 timing.address_ttl_secs at least 3",
            ));
        }
        if t.object_ttl_secs != 0 && t.object_ttl_secs < t.address_ttl_secs {
            return Err(ConfigError::invalid(
                "timing.object_ttl_secs must be 0 (never expire) or at least \
                 timing.address_ttl_secs, since objects are refreshed with the addresses",
            ));
        }
        crate::registry::ReservedTable::new(&self.registry, &self.domain)
            .map_err(ConfigError::invalid)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        MsgNodeConfig::default().validate().unwrap();
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../msg-node.example.toml");
        let parsed: MsgNodeConfig = toml::from_str(text).unwrap();
        assert_eq!(parsed, MsgNodeConfig::default());
    }

    #[test]
    fn rejects_bad_domains_and_limits() {
        let mut c = MsgNodeConfig {
            domain: "a b".into(),
            ..MsgNodeConfig::default()
        };
        assert!(c.validate().is_err());
        c.domain = "example.org".into();
        c.limits.max_message_bytes = 10;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_message_bytes")
        );
        c.limits.max_message_bytes = 65536;
        c.registry.reserved[0].subjects = vec!["bad\\".into()];
        assert!(c.validate().unwrap_err().to_string().contains("registry"));
        c.registry.reserved[0].subjects.clear();
        c.registry.reserved[0].address = "hyperty://elsewhere/conference".into();
        assert!(c.validate().unwrap_err().to_string().contains("registry"));
    }
}
