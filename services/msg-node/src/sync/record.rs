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

/// Key of the list of objects a reporter owns (JSON array of URLs), which bounds how many it
/// may hold.
pub fn reporter_key(reporter: &str) -> String {
    format!("msgnode:sync:reporter:{reporter}")
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
    pub version: u64,
    pub value: Value,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
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
