//! Addresses, key names and channel names, in one place.
//!
//! Address forms (see docs/protocol.md):
//! - `hyperty://<domain>/<uuid>`: allocated by the registry for a connection;
//! - `hyperty://<domain>/<path>`: well-known addresses registered by attached services
//!   (`conference`, `camera/<id>`);
//! - `runtime://<domain>/<session>`: the connection itself, usable as `from` before it owns a
//!   hyperty; not routable;
//! - `user://<domain>/<username>`: an identity, used for discovery;
//! - `domain://registry.<domain>`, `domain://sync.<domain>`, `domain://msg-node.<domain>`: the
//!   node's own services.

/// Prefix of address map keys: `<prefix><address>` → [`crate::registry::AddressRecord`] JSON.
pub const ADDRESS_KEY_PREFIX: &str = "rethink:msgnode:addr:";
/// Prefix of the per-user index: `<prefix><user-url>|<address>` → the same record.
pub const USER_KEY_PREFIX: &str = "rethink:msgnode:user:";
/// Prefix of the session directory: `<prefix><sha256(resume token)>` → the holding replica's id.
pub const SESSION_KEY_PREFIX: &str = "rethink:msgnode:session:";
/// Prefix of per-replica bus channels: `<prefix><node-id>`.
pub const NODE_CHANNEL_PREFIX: &str = "rethink.msgnode.node.";

/// Longest path of a well-known hyperty address.
pub const MAX_WELL_KNOWN_PATH: usize = 128;

/// Addresses of one domain.
#[derive(Debug, Clone)]
pub struct Domain {
    name: String,
    registry: String,
    sync: String,
    node: String,
    hyperty_prefix: String,
    user_prefix: String,
}

impl Domain {
    /// Builds the addresses of `name` (e.g. `localhost`).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            registry: format!("domain://registry.{name}"),
            sync: format!("domain://sync.{name}"),
            node: format!("domain://msg-node.{name}"),
            hyperty_prefix: format!("hyperty://{name}/"),
            user_prefix: format!("user://{name}/"),
        }
    }

    /// Returns the domain name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns `domain://registry.<domain>`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Returns `domain://sync.<domain>`.
    pub fn sync(&self) -> &str {
        &self.sync
    }

    /// Returns `domain://msg-node.<domain>`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Returns a fresh `hyperty://<domain>/<uuid>`.
    pub fn new_hyperty(&self) -> String {
        format!("{}{}", self.hyperty_prefix, uuid::Uuid::new_v4())
    }

    /// Returns `runtime://<domain>/<session>`.
    pub fn runtime(&self, session: &str) -> String {
        format!("runtime://{}/{session}", self.name)
    }

    /// Returns `user://<domain>/<username>`.
    pub fn user(&self, username: &str) -> String {
        format!("{}{username}", self.user_prefix)
    }

    /// Returns true for a hyperty address of this domain.
    pub fn is_hyperty(&self, address: &str) -> bool {
        address
            .strip_prefix(&self.hyperty_prefix)
            .is_some_and(|rest| !rest.is_empty())
    }

    /// Returns true for a user address of this domain.
    pub fn is_user(&self, address: &str) -> bool {
        address
            .strip_prefix(&self.user_prefix)
            .is_some_and(valid_name)
    }

    /// Checks a well-known hyperty address a service asks for: `hyperty://<domain>/<path>` with
    /// path segments of letters, digits, `.`, `_`, `-` (e.g. `conference`, `camera/front-door`).
    pub fn check_well_known(&self, address: &str) -> Result<(), String> {
        let Some(path) = address.strip_prefix(&self.hyperty_prefix) else {
            return Err(format!(
                "address must start with {}; got {address:?}",
                self.hyperty_prefix
            ));
        };
        if path.is_empty() || path.len() > MAX_WELL_KNOWN_PATH {
            return Err(format!(
                "address path must be 1-{MAX_WELL_KNOWN_PATH} bytes"
            ));
        }
        if !path.split('/').all(valid_name) {
            return Err(
                "address path segments must be non-empty and use letters, digits, '.', '_' or '-'"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Returns true for a non-empty name of letters, digits, `.`, `_`, `-` (no `..`).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
}

/// Returns the key of an address in the shared address map.
pub fn address_key(address: &str) -> String {
    format!("{ADDRESS_KEY_PREFIX}{address}")
}

/// Returns the key of an address in its user's index.
pub fn user_key(user: &str, address: &str) -> String {
    format!("{USER_KEY_PREFIX}{user}|{address}")
}

/// Returns the prefix under which a user's addresses are indexed.
pub fn user_prefix(user: &str) -> String {
    format!("{USER_KEY_PREFIX}{user}|")
}

/// Returns the session directory key of a resume token (hashed: the store never holds the
/// secret itself).
pub fn session_key(resume_token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(resume_token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{SESSION_KEY_PREFIX}{hex}")
}

/// Returns the bus channel of a replica.
pub fn node_channel(node: &str) -> String {
    format!("{NODE_CHANNEL_PREFIX}{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_recognises_addresses() {
        let d = Domain::new("example.org");
        assert_eq!(d.registry(), "domain://registry.example.org");
        assert!(d.is_hyperty(&d.new_hyperty()));
        assert!(!d.is_hyperty("hyperty://other.org/x"));
        assert!(!d.is_hyperty("hyperty://example.org/"));
        assert!(d.is_user("user://example.org/alice"));
        assert!(!d.is_user("user://example.org/al|ce"));
    }

    #[test]
    fn checks_well_known_addresses() {
        let d = Domain::new("localhost");
        assert!(d.check_well_known("hyperty://localhost/conference").is_ok());
        assert!(
            d.check_well_known("hyperty://localhost/camera/front-door")
                .is_ok()
        );
        for bad in [
            "hyperty://localhost/",
            "hyperty://localhost/camera//x",
            "hyperty://localhost/../x",
            "hyperty://localhost/a|b",
            "hyperty://elsewhere/conference",
        ] {
            assert!(d.check_well_known(bad).is_err(), "{bad}");
        }
    }
}
