//! The JSON envelope `{id, type, from, to, body}` as the client sees it, the response body
//! `{code, value | description}`, and the welcome (docs/protocol.md).
//!
//! These are client-side types: they serialize exactly like the node's `envelope` module, but
//! parsing is strict only where the client relies on a field (`from`/`to` must be addresses,
//! the type one of the nine); a frame that does not parse is the transport's business.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{address::Address, error::ClientError};

/// Longest string `id` the node accepts, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// The sender-chosen id of a message, echoed in its response: an integer or a string.
/// `Null` appears only in error responses to frames whose id could not be read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[serde(untagged)]
pub enum MessageId {
    /// A JSON integer.
    Int(i64),
    /// A JSON string.
    Str(String),
    /// JSON `null`.
    #[default]
    Null,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageId::Int(n) => write!(f, "{n}"),
            MessageId::Str(s) => write!(f, "{s:?}"),
            MessageId::Null => f.write_str("null"),
        }
    }
}

impl From<i64> for MessageId {
    fn from(n: i64) -> Self {
        MessageId::Int(n)
    }
}

impl From<&str> for MessageId {
    fn from(s: &str) -> Self {
        MessageId::Str(s.to_owned())
    }
}

impl From<String> for MessageId {
    fn from(s: String) -> Self {
        MessageId::Str(s)
    }
}

/// The nine message types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    Create,
    Read,
    Update,
    Delete,
    Subscribe,
    Unsubscribe,
    Response,
    Forward,
    Execute,
}

impl MessageType {
    /// Every type, in protocol order.
    pub const ALL: [MessageType; 9] = [
        MessageType::Create,
        MessageType::Read,
        MessageType::Update,
        MessageType::Delete,
        MessageType::Subscribe,
        MessageType::Unsubscribe,
        MessageType::Response,
        MessageType::Forward,
        MessageType::Execute,
    ];

    /// Returns the wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Create => "create",
            MessageType::Read => "read",
            MessageType::Update => "update",
            MessageType::Delete => "delete",
            MessageType::Subscribe => "subscribe",
            MessageType::Unsubscribe => "unsubscribe",
            MessageType::Response => "response",
            MessageType::Forward => "forward",
            MessageType::Execute => "execute",
        }
    }

    /// Parses a wire name (case-sensitive).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One protocol message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Message {
    /// Sender-chosen id, echoed in the response.
    #[serde(default)]
    pub id: MessageId,
    /// What the message asks for.
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// Sender address.
    pub from: Address,
    /// Destination address.
    pub to: Address,
    /// Any JSON; `null` when absent.
    #[serde(default)]
    pub body: Value,
    /// Optional W3C trace context, forwarded unchanged by the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<BTreeMap<String, String>>,
}

impl Message {
    /// Builds a message with id `Null`; [`crate::Client::request`] assigns the id.
    pub fn new(kind: MessageType, from: &Address, to: &Address, body: Value) -> Self {
        Self {
            id: MessageId::Null,
            kind,
            from: from.clone(),
            to: to.clone(),
            body,
            trace: None,
        }
    }

    /// Returns this message with `id`.
    pub fn with_id(mut self, id: impl Into<MessageId>) -> Self {
        self.id = id.into();
        self
    }

    /// Returns the response to this message: same id, `from`/`to` swapped, body
    /// `{"code": 200, "value": value}`.
    pub fn reply(&self, value: Value) -> Message {
        self.reply_body(json!({"code": 200, "value": value}))
    }

    /// Returns the error response to this message: `{"code": code, "description": ...}`.
    pub fn reply_error(&self, code: u16, description: &str) -> Message {
        self.reply_body(json!({"code": code, "description": description}))
    }

    fn reply_body(&self, body: Value) -> Message {
        Message {
            id: self.id.clone(),
            kind: MessageType::Response,
            from: self.to.clone(),
            to: self.from.clone(),
            body,
            trace: None,
        }
    }

    /// Returns true for a `response`.
    pub fn is_response(&self) -> bool {
        self.kind == MessageType::Response
    }

    /// Returns `body.code` of a response (0 when absent).
    pub fn code(&self) -> u16 {
        self.body["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0)
    }

    /// Returns `body.value` of a response (`Null` when absent).
    pub fn value(&self) -> &Value {
        &self.body["value"]
    }

    /// Returns `body.description` of an error response.
    pub fn description(&self) -> &str {
        self.body["description"].as_str().unwrap_or("")
    }

    /// Returns `Ok(value)` for a 2xx response, else [`ClientError::Protocol`].
    pub fn into_result(self) -> Result<Value, ClientError> {
        let code = self.code();
        if (200..300).contains(&code) {
            let mut body = self.body;
            Ok(body
                .get_mut("value")
                .map(Value::take)
                .unwrap_or(Value::Null))
        } else {
            Err(ClientError::Protocol {
                code,
                description: self.description().to_owned(),
            })
        }
    }

    /// Returns the message as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

/// Why the node closed a previous connection of a resumed session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PreviousClose {
    /// The close code (4008, ...).
    pub code: u16,
    /// Its reason.
    pub reason: String,
}

/// The welcome's value: the first frame on every connection, and `read` of
/// `{"resource":"session"}` on `domain://msg-node.<domain>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Welcome {
    /// The connection's own address; `from` until it owns a hyperty.
    pub runtime: Address,
    /// The token's identity (`name`).
    #[serde(default)]
    pub identity: String,
    /// The person's address, when the identity is a user.
    #[serde(default)]
    pub user: Option<Address>,
    /// The secret that resumes this session within the grace period.
    pub resume_token: String,
    /// Whether this connection resumed an earlier session.
    #[serde(default)]
    pub resumed: bool,
    /// Why the node closed the previous connection, if it did.
    #[serde(default)]
    pub previous_close: Option<PreviousClose>,
    /// The addresses the session holds (kept across a resume).
    #[serde(default)]
    pub addresses: Vec<Address>,
    /// The replica's id.
    #[serde(default)]
    pub node: String,
    /// The node's domain.
    pub domain: String,
    /// Largest message the node accepts.
    #[serde(default)]
    pub max_message_bytes: usize,
    /// How long the session outlives its connection, in seconds.
    #[serde(default)]
    pub grace_secs: u64,
}

impl Welcome {
    /// Reads the welcome out of the node's first message; anything else is a protocol error.
    pub fn from_message(message: &Message) -> Result<Self, ClientError> {
        if message.id != MessageId::Str("session".into()) || message.code() != 200 {
            return Err(ClientError::Unexpected(format!(
                "expected the welcome, got {message}"
            )));
        }
        serde_json::from_value(message.value().clone())
            .map_err(|e| ClientError::Unexpected(format!("malformed welcome: {e}")))
    }

    /// Returns the registry of the node's domain.
    pub fn registry(&self) -> Address {
        Address::registry(&self.domain).unwrap_or_else(|_| self.runtime.clone())
    }

    /// Returns the sync service of the node's domain.
    pub fn sync(&self) -> Address {
        Address::sync(&self.domain).unwrap_or_else(|_| self.runtime.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_the_protocol() {
        let a = Address::parse("hyperty://localhost/a").unwrap();
        let b = Address::parse("hyperty://localhost/b").unwrap();
        let m = Message::new(MessageType::Execute, &a, &b, json!({"k": 1})).with_id("call-1");
        let v = m.to_value();
        assert_eq!(
            v,
            json!({"id": "call-1", "type": "execute", "from": "hyperty://localhost/a",
                   "to": "hyperty://localhost/b", "body": {"k": 1}})
        );
        let back: Message = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
        let r = m.reply(json!("ok"));
        assert_eq!(
            (r.code(), r.from.as_str(), r.id.clone()),
            (200, "hyperty://localhost/b", m.id.clone())
        );
        let e = m
            .reply_error(404, "no such address")
            .into_result()
            .unwrap_err();
        assert!(matches!(e, ClientError::Protocol { code: 404, .. }), "{e}");
    }

    #[test]
    fn absent_body_and_null_id_parse() {
        let m: Message = serde_json::from_str(
            r#"{"id":null,"type":"response","from":"domain://msg-node.localhost","to":"runtime://localhost/x"}"#,
        )
        .unwrap();
        assert_eq!((m.id, m.body), (MessageId::Null, Value::Null));
    }
}
