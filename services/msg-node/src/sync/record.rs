//! What the Syncher stores and publishes: key and channel names, the stored object record, and
//! the change messages replicas exchange.
//!
//! Records and change messages are JSON, not protobuf: the object value is arbitrary JSON and
//! only msg-node replicas read these, so a JSON document stays the most direct encoding.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bus channel on which every replica publishes object changes and every replica that has local
/// observers listens. Carries JSON [`BusChange`] messages.
pub const SYNC_CHANNEL: &str = "rethink.msg-node.sync.changes";

/// Key of an object record.
pub fn object_key(url: &str) -> String {
    format!("msgnode:sync:object:{url}")
}

/// Key of an object's observer list (JSON array of addresses).
pub fn observers_key(url: &str) -> String {
    format!("msgnode:sync:observers:{url}")
}

/// Key of the list of objects an identity owns (JSON array of URLs, over all its hyperties),
/// which bounds how many it may hold: a new hyperty address does not start a new count.
pub fn owner_key(owner: &str) -> String {
    format!("msgnode:sync:owner:{owner}")
}

/// One stored object.
///
/// A delete first replaces the record by a tombstone (`deleted`, version + 1, short TTL), then
/// notifies observers, then removes it, so no update can slip in between the notification and
/// the removal, and a crash in between leaves nothing behind for long.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ObjectRecord {
    pub url: String,
    pub schema: String,
    pub reporter: String,
    /// The identity (token subject) behind the reporter; its list bounds its objects.
    #[serde(default)]
    pub owner: String,
    /// Who may read and subscribe: identities or `prefix*` patterns (see [`Observers`]).
    #[serde(default)]
    pub observers: Observers,
    pub version: u64,
    pub value: Value,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl ObjectRecord {
    /// Returns true when `who` may read or subscribe: the reporter hyperty itself, its owner, or
    /// an identity the observer list admits.
    pub fn may_observe(&self, who: super::Party<'_>) -> bool {
        who.address == self.reporter
            || (!self.owner.is_empty() && who.identity == self.owner)
            || self.observers.admits(who.identity)
    }

    /// Returns the identity whose list counts this object (records written before owners were
    /// kept count under their reporter address).
    pub fn owner_or_reporter(&self) -> &str {
        if self.owner.is_empty() {
            &self.reporter
        } else {
            &self.owner
        }
    }
}

/// Most entries of an observer list.
pub const MAX_OBSERVER_PATTERNS: usize = 32;

/// The identities allowed to observe an object, chosen by its reporter at creation: each entry
/// is an exact token subject (`user:bob`), a prefix ending in `*` (`user:*`, `service:camera-*`)
/// or `*` alone (anyone authenticated). Nothing else is a wildcard, so a pattern never admits
/// more than it visibly says.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Observers(Vec<String>);

impl Observers {
    /// Checks and builds an observer list.
    pub fn new(patterns: Vec<String>) -> Result<Observers, String> {
        if patterns.len() > MAX_OBSERVER_PATTERNS {
            return Err(format!(
                "observers may list at most {MAX_OBSERVER_PATTERNS} identities or patterns"
            ));
        }
        for p in &patterns {
            let body = p.strip_suffix('*').unwrap_or(p);
            if p.is_empty() || p.len() > super::MAX_NAME_LEN || body.contains('*') {
                return Err(format!(
                    "observer {p:?} must be an identity such as user:bob, a prefix ending in '*' \
                     such as user:*, or '*'"
                ));
            }
        }
        Ok(Observers(patterns))
    }

    /// Returns true when `identity` matches an entry.
    pub fn admits(&self, identity: &str) -> bool {
        !identity.is_empty()
            && self.0.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => identity.starts_with(prefix),
                None => p == identity,
            })
    }

    /// Returns the entries.
    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

/// A change as it travels between replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BusChange {
    /// The object now has `value` at `version`.
    Update {
        url: String,
        version: u64,
        value: Value,
    },
    /// The object was deleted; `version` is one past its last value.
    Delete { url: String, version: u64 },
    /// `observer` unsubscribed; every replica ends its local streams for that observer.
    Unsubscribe { url: String, observer: String },
}

impl BusChange {
    /// Returns the object URL the change is about.
    pub fn url(&self) -> &str {
        match self {
            BusChange::Update { url, .. }
            | BusChange::Delete { url, .. }
            | BusChange::Unsubscribe { url, .. } => url,
        }
    }
}

/// Decodes a JSON list of strings; a missing key is an empty list.
pub fn decode_list(bytes: Option<&[u8]>) -> Result<Vec<String>, serde_json::Error> {
    bytes.map_or(Ok(Vec::new()), serde_json::from_slice)
}
