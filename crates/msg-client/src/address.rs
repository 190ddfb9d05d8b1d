//! Typed protocol addresses (docs/protocol.md, "Addresses").
//!
//! An [`Address`] is a validated string of one of five forms: `hyperty://<domain>/<path>`,
//! `user://<domain>/<name>`, `object://<domain>/<id>`, `runtime://<domain>/<session>` and
//! `domain://<service>.<domain>`. The check is the client's half of the node's: it catches a
//! typo before it costs a round trip, and never accepts what the node would refuse on form
//! alone (the node still decides ownership and policy).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// Longest address the node accepts, in bytes.
pub const MAX_ADDRESS_LEN: usize = 512;

/// What an address names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressKind {
    /// `hyperty://<domain>/<uuid or well-known path>`: routable.
    Hyperty,
    /// `user://<domain>/<username>`: a person, for discovery.
    User,
    /// `object://<domain>/<id>`: a data object; requests go to the sync service.
    Object,
    /// `runtime://<domain>/<session>`: a connection itself; a valid `from`, not routable.
    Runtime,
    /// `domain://<service>.<domain>`: the registry, the sync service or the node.
    Domain,
}

impl AddressKind {
    /// Returns the URL scheme of this kind.
    pub fn scheme(self) -> &'static str {
        match self {
            AddressKind::Hyperty => "hyperty",
            AddressKind::User => "user",
            AddressKind::Object => "object",
            AddressKind::Runtime => "runtime",
            AddressKind::Domain => "domain",
        }
    }

    fn from_scheme(scheme: &str) -> Option<Self> {
        [
            AddressKind::Hyperty,
            AddressKind::User,
            AddressKind::Object,
            AddressKind::Runtime,
            AddressKind::Domain,
        ]
        .into_iter()
        .find(|k| k.scheme() == scheme)
    }
}

/// A validated protocol address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    text: String,
    kind: AddressKind,
    /// Byte offset where the authority (domain) starts and where the path starts.
    authority: (usize, usize),
}

impl Address {
    /// Parses and validates `text`.
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::BadAddress(format!("{text:?}: {why}"));
        if text.is_empty() || text.len() > MAX_ADDRESS_LEN {
            return Err(bad(&format!("must be 1-{MAX_ADDRESS_LEN} bytes")));
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("expected <scheme>://..."))?;
        let kind = AddressKind::from_scheme(scheme)
            .ok_or_else(|| bad("the scheme must be hyperty, user, object, runtime or domain"))?;
        let start = scheme.len() + 3;
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("must not contain whitespace or control characters"));
        }
        let authority = match kind {
            AddressKind::Domain => {
                if rest.contains('/') {
                    return Err(bad("a domain address has no path"));
                }
                let (service, domain) = rest
                    .split_once('.')
                    .ok_or_else(|| bad("expected domain://<service>.<domain>"))?;
                if service.is_empty() || domain.is_empty() {
                    return Err(bad("expected domain://<service>.<domain>"));
                }
                rest
            }
            _ => {
                let (domain, path) = rest
                    .split_once('/')
                    .ok_or_else(|| bad("expected <scheme>://<domain>/<path>"))?;
                if domain.is_empty() {
                    return Err(bad("the domain is empty"));
                }
                if path.is_empty() {
                    return Err(bad("the path is empty"));
                }
                if kind != AddressKind::Hyperty && path.contains('/') {
                    return Err(bad("only hyperty addresses have a path with '/'"));
                }
                domain
            }
        };
        Ok(Self {
            text: text.to_owned(),
            kind,
            authority: (start, start + authority.len()),
        })
    }

    /// Returns `hyperty://<domain>/<path>` (a well-known path such as `conference`).
    pub fn hyperty(domain: &str, path: &str) -> Result<Self, ClientError> {
        Self::parse(&format!("hyperty://{domain}/{path}"))
    }

    /// Returns `user://<domain>/<name>`.
    pub fn user(domain: &str, name: &str) -> Result<Self, ClientError> {
        Self::parse(&format!("user://{domain}/{name}"))
    }

    /// Returns `object://<domain>/<id>`.
    pub fn object(domain: &str, id: &str) -> Result<Self, ClientError> {
        Self::parse(&format!("object://{domain}/{id}"))
    }

    /// Returns the registry of `domain`, `domain://registry.<domain>`.
    pub fn registry(domain: &str) -> Result<Self, ClientError> {
        Self::parse(&format!("domain://registry.{domain}"))
    }

    /// Returns the sync service of `domain`, `domain://sync.<domain>`.
    pub fn sync(domain: &str) -> Result<Self, ClientError> {
        Self::parse(&format!("domain://sync.{domain}"))
    }

    /// Returns the node itself, `domain://msg-node.<domain>`.
    pub fn node(domain: &str) -> Result<Self, ClientError> {
        Self::parse(&format!("domain://msg-node.{domain}"))
    }

    /// Returns what the address names.
    pub fn kind(&self) -> AddressKind {
        self.kind
    }

    /// Returns the domain: `localhost` for `hyperty://localhost/x` and for
    /// `domain://registry.localhost`.
    pub fn domain(&self) -> &str {
        let authority = &self.text[self.authority.0..self.authority.1];
        match self.kind {
            AddressKind::Domain => authority.split_once('.').map_or(authority, |(_, d)| d),
            _ => authority,
        }
    }

    /// Returns the part after `<domain>/` (empty for domain addresses).
    pub fn path(&self) -> &str {
        self.text
            .get(self.authority.1 + 1..)
            .filter(|_| self.kind != AddressKind::Domain)
            .unwrap_or("")
    }

    /// Returns the address text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Address {
    type Err = ClientError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Address {
    type Error = ClientError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl TryFrom<&str> for Address {
    type Error = ClientError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.text
    }
}

impl AsRef<str> for Address {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl PartialEq<str> for Address {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for Address {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_knows_its_parts() {
        let h = Address::parse("hyperty://localhost/camera/front-door").unwrap();
        assert_eq!(
            (h.kind(), h.domain(), h.path()),
            (AddressKind::Hyperty, "localhost", "camera/front-door")
        );
        let d = Address::parse("domain://registry.localhost").unwrap();
        assert_eq!(
            (d.kind(), d.domain(), d.path()),
            (AddressKind::Domain, "localhost", "")
        );
        assert_eq!(
            Address::user("localhost", "bob").unwrap(),
            "user://localhost/bob"
        );
        assert_eq!(
            Address::object("x", "1").unwrap().kind(),
            AddressKind::Object
        );
        assert_eq!(
            Address::parse("runtime://localhost/4f0c").unwrap().kind(),
            AddressKind::Runtime
        );
    }

    #[test]
    fn refuses_malformed_addresses_with_a_reason() {
        for bad in [
            "",
            "hyperty:/localhost/x",
            "mailto://localhost/x",
            "hyperty://localhost/",
            "hyperty:///x",
            "user://localhost/a/b",
            "domain://registry",
            "domain://registry.localhost/x",
            "hyperty://localhost/a b",
        ] {
            let e = Address::parse(bad).unwrap_err();
            assert!(matches!(e, ClientError::BadAddress(_)), "{bad}: {e}");
        }
        assert!(Address::parse(&format!("hyperty://l/{}", "x".repeat(600))).is_err());
    }

    #[test]
    fn serde_goes_through_validation() {
        let a: Address = serde_json::from_str("\"hyperty://localhost/x\"").unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            "\"hyperty://localhost/x\""
        );
        assert!(serde_json::from_str::<Address>("\"nope\"").is_err());
    }
}
