//! The message envelope of the browser protocol and its parser.
//!
//! Every WebSocket text frame (and every gRPC `Attach` message) carries one envelope:
//! `{"id", "type", "from", "to", "body"}`. The parser never panics and turns every problem into a
//! [`FrameError`] that knows which response to send, so a bad frame costs the sender one error
//! response and the connection stays usable. `docs/protocol.md` is the public description.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Longest accepted `from` / `to` address, in bytes.
pub const MAX_ADDRESS_LEN: usize = 512;
/// Most entries of a `trace` map, and the longest value.
pub const MAX_TRACE_ENTRIES: usize = 4;
/// Longest value in a `trace` map, in bytes.
pub const MAX_TRACE_VALUE_LEN: usize = 512;

// The wire types a client and the node share live once, in the client crate.
pub use rethink_msg_client::message::{MAX_ID_LEN, MessageId, MessageType};

/// One protocol message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Envelope {
    /// Client-chosen id, echoed in the response.
    pub id: MessageId,
    /// What the message asks for.
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// Sender address; must be owned by the sending connection.
    pub from: String,
    /// Destination address.
    pub to: String,
    /// Free-form JSON payload; for responses `{"code", "value"|"description"}`.
    #[serde(default)]
    pub body: Value,
    /// Optional W3C trace context (`traceparent`, `tracestate`), forwarded unchanged; the node
    /// records its handling of the message as a span of that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<BTreeMap<String, String>>,
}

impl Envelope {
    /// Builds an envelope.
    pub fn new(
        id: MessageId,
        kind: MessageType,
        from: impl Into<String>,
        to: impl Into<String>,
        body: Value,
    ) -> Envelope {
        Envelope {
            id,
            kind,
            from: from.into(),
            to: to.into(),
            body,
            trace: None,
        }
    }

    /// Returns the success response to this message: `{"code": 200, "value": value}`, sent from
    /// this message's destination back to its sender with the same id.
    pub fn reply_ok(&self, value: Value) -> Envelope {
        self.reply_body(json!({ "code": 200, "value": value }))
    }

    /// Returns an error response to this message: `{"code": code, "description": description}`.
    pub fn reply_err(&self, code: u16, description: impl Into<String>) -> Envelope {
        self.reply_body(json!({ "code": code, "description": description.into() }))
    }

    fn reply_body(&self, body: Value) -> Envelope {
        Envelope {
            id: self.id.clone(),
            kind: MessageType::Response,
            from: self.to.clone(),
            to: self.from.clone(),
            body,
            trace: None,
        }
    }

    /// Returns the response code of a `response` message (`body.code`), if it has one.
    pub fn response_code(&self) -> Option<u16> {
        if self.kind != MessageType::Response {
            return None;
        }
        self.body
            .get("code")
            .and_then(Value::as_u64)
            .and_then(|c| u16::try_from(c).ok())
    }

    /// Returns the string field `name` of an object body.
    pub fn body_str(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }

    /// Serializes to the JSON text of one frame.
    pub fn to_json(&self) -> String {
        // Serializing this struct cannot fail: keys are strings and `Value` is always valid.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a frame was refused, with everything needed to answer it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct FrameError {
    /// The frame's id if it could be read, else `Null`.
    pub id: MessageId,
    /// The frame's `from` if it could be read (the response goes back there).
    pub from: Option<String>,
    /// The frame's `to` if it could be read (the response comes from there).
    pub to: Option<String>,
    /// 400 (malformed) or 413 (too large).
    pub code: u16,
    /// What was wrong, for a person.
    pub description: String,
}

impl FrameError {
    /// Returns the error response for this frame. `node` is the sender address used when the
    /// frame's own `to` could not be read; `peer` the destination when its `from` could not.
    pub fn response(&self, node: &str, peer: &str) -> Envelope {
        Envelope {
            id: self.id.clone(),
            kind: MessageType::Response,
            from: self.to.clone().unwrap_or_else(|| node.to_owned()),
            to: self.from.clone().unwrap_or_else(|| peer.to_owned()),
            body: json!({ "code": self.code, "description": self.description }),
            trace: None,
        }
    }
}

/// Parses one text frame into an envelope.
///
/// Frames longer than `max_bytes` are refused with 413 (their id is still echoed when it can be
/// read); everything else that is not a valid envelope is refused with 400. Unknown extra fields
/// are ignored.
pub fn parse_frame(text: &str, max_bytes: usize) -> Result<Envelope, FrameError> {
    let value: Result<Value, _> = serde_json::from_str(text);
    let too_large = text.len() > max_bytes;
    let object = match value {
        Ok(Value::Object(map)) => map,
        Ok(_) if too_large => return Err(oversized(&Map::new(), text.len(), max_bytes)),
        Ok(_) => return Err(bad(&Map::new(), "a frame must be a JSON object")),
        Err(_) if too_large => return Err(oversized(&Map::new(), text.len(), max_bytes)),
        Err(e) => return Err(bad(&Map::new(), format!("malformed json: {e}"))),
    };
    if too_large {
        return Err(oversized(&object, text.len(), max_bytes));
    }
    let id = match object.get("id") {
        None | Some(Value::Null) => return Err(bad(&object, "missing field 'id'")),
        Some(v) => read_id(v).ok_or_else(|| {
            bad(
                &object,
                format!("'id' must be an integer or a string of at most {MAX_ID_LEN} bytes"),
            )
        })?,
    };
    let kind = match object.get("type") {
        None | Some(Value::Null) => return Err(bad(&object, "missing field 'type'")),
        Some(Value::String(name)) => MessageType::parse(name).ok_or_else(|| {
            bad(
                &object,
                format!(
                    "unknown message type '{}'; expected one of create, read, update, delete, \
                     subscribe, unsubscribe, response, forward, execute",
                    truncate(name, 40)
                ),
            )
        })?,
        Some(_) => return Err(bad(&object, "'type' must be a string")),
    };
    let from = read_address(&object, "from")?;
    let to = read_address(&object, "to")?;
    let body = object.get("body").cloned().unwrap_or(Value::Null);
    let trace = match object.get("trace") {
        None | Some(Value::Null) => None,
        Some(v) => Some(read_trace(v).ok_or_else(|| {
            bad(
                &object,
                format!(
                    "'trace' must be an object of at most {MAX_TRACE_ENTRIES} strings                      (W3C traceparent, tracestate) of at most {MAX_TRACE_VALUE_LEN} bytes"
                ),
            )
        })?),
    };
    Ok(Envelope {
        id,
        kind,
        from,
        to,
        body,
        trace,
    })
}

fn read_trace(value: &Value) -> Option<BTreeMap<String, String>> {
    let map = value.as_object()?;
    if map.len() > MAX_TRACE_ENTRIES {
        return None;
    }
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) if s.len() <= MAX_TRACE_VALUE_LEN && k.len() <= 64 => {
                Some((k.clone(), s.clone()))
            }
            _ => None,
        })
        .collect()
}

fn read_id(value: &Value) -> Option<MessageId> {
    match value {
        Value::Number(n) => n.as_i64().map(MessageId::Int),
        Value::String(s) if s.len() <= MAX_ID_LEN => Some(MessageId::Str(s.clone())),
        _ => None,
    }
}

fn read_address(object: &Map<String, Value>, field: &str) -> Result<String, FrameError> {
    match object.get(field) {
        None | Some(Value::Null) => Err(bad(object, format!("missing field '{field}'"))),
        Some(Value::String(s)) if s.is_empty() => {
            Err(bad(object, format!("'{field}' must not be empty")))
        }
        Some(Value::String(s)) if s.len() > MAX_ADDRESS_LEN => Err(bad(
            object,
            format!("'{field}' is longer than {MAX_ADDRESS_LEN} bytes"),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(bad(object, format!("'{field}' must be a string"))),
    }
}

/// Builds a 400 error, salvaging id/from/to from whatever part of the frame is readable.
fn bad(object: &Map<String, Value>, description: impl Into<String>) -> FrameError {
    salvage(object, 400, description.into())
}

fn oversized(object: &Map<String, Value>, len: usize, max: usize) -> FrameError {
    salvage(
        object,
        413,
        format!("message of {len} bytes is larger than the limit of {max} bytes"),
    )
}

fn salvage(object: &Map<String, Value>, code: u16, description: String) -> FrameError {
    let address = |field: &str| {
        object
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_ADDRESS_LEN)
            .map(str::to_owned)
    };
    FrameError {
        id: object.get("id").and_then(read_id).unwrap_or_default(),
        from: address("from"),
        to: address("to"),
        code,
        description,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 64 * 1024;

    #[test]
    fn parses_a_full_envelope() {
        let e = parse_frame(
            r#"{"id":7,"type":"create","from":"a","to":"b","body":{"x":1},"extra":true}"#,
            MAX,
        )
        .unwrap();
        assert_eq!(e.id, MessageId::Int(7));
        assert_eq!(e.kind, MessageType::Create);
        assert_eq!((e.from.as_str(), e.to.as_str()), ("a", "b"));
        assert_eq!(e.body, json!({"x": 1}));
    }

    #[test]
    fn trace_context_is_kept_and_checked() {
        let e = parse_frame(
            r#"{"id":1,"type":"forward","from":"a","to":"b","trace":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}"#,
            MAX,
        )
        .unwrap();
        assert!(e.to_json().contains("traceparent"));
        assert_eq!(parse_frame(&e.to_json(), MAX).unwrap(), e);
        let bad = parse_frame(
            r#"{"id":1,"type":"forward","from":"a","to":"b","trace":{"x":1}}"#,
            MAX,
        );
        assert_eq!(bad.unwrap_err().code, 400);
        assert!(
            !Envelope::new(MessageId::Int(1), MessageType::Read, "a", "b", Value::Null)
                .to_json()
                .contains("trace")
        );
    }

    #[test]
    fn body_is_optional_and_ids_may_be_strings() {
        let e = parse_frame(r#"{"id":"q1","type":"read","from":"a","to":"b"}"#, MAX).unwrap();
        assert_eq!(e.id, MessageId::Str("q1".into()));
        assert_eq!(e.body, Value::Null);
    }

    #[test]
    fn round_trips_through_json() {
        let e = Envelope::new(
            MessageId::Str("x".into()),
            MessageType::Execute,
            "hyperty://localhost/a",
            "hyperty://localhost/b",
            json!({"k": [1, 2]}),
        );
        let back: Envelope = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(back, e);
        assert!(e.to_json().contains(r#""type":"execute""#));
    }

    #[test]
    fn replies_swap_addresses_and_keep_the_id() {
        let e = parse_frame(r#"{"id":3,"type":"read","from":"a","to":"b"}"#, MAX).unwrap();
        let ok = e.reply_ok(json!([1]));
        assert_eq!((ok.from.as_str(), ok.to.as_str()), ("b", "a"));
        assert_eq!(ok.id, MessageId::Int(3));
        assert_eq!(ok.response_code(), Some(200));
        let err = e.reply_err(404, "nope");
        assert_eq!(err.body, json!({"code": 404, "description": "nope"}));
    }

    #[test]
    fn malformed_json_is_400_with_null_id() {
        let err = parse_frame("{not json", MAX).unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(err.id, MessageId::Null);
        assert!(err.description.starts_with("malformed json"));
        let reply = err.response("domain://msg-node.localhost", "runtime://localhost/r");
        assert_eq!(reply.to, "runtime://localhost/r");
        assert!(reply.to_json().contains(r#""id":null"#));
    }

    #[test]
    fn unknown_type_keeps_the_id_and_addresses() {
        let err = parse_frame(r#"{"id":9,"type":"shout","from":"a","to":"b"}"#, MAX).unwrap_err();
        assert_eq!(err.code, 400);
        assert_eq!(err.id, MessageId::Int(9));
        assert!(err.description.contains("unknown message type 'shout'"));
        let reply = err.response("n", "p");
        assert_eq!((reply.from.as_str(), reply.to.as_str()), ("b", "a"));
    }

    #[test]
    fn missing_fields_are_named() {
        for (frame, field) in [
            (r#"{"type":"read","from":"a","to":"b"}"#, "id"),
            (r#"{"id":1,"from":"a","to":"b"}"#, "type"),
            (r#"{"id":1,"type":"read","to":"b"}"#, "from"),
            (r#"{"id":1,"type":"read","from":"a"}"#, "to"),
        ] {
            let err = parse_frame(frame, MAX).unwrap_err();
            assert_eq!(err.code, 400);
            assert_eq!(err.description, format!("missing field '{field}'"));
        }
    }

    #[test]
    fn oversized_frames_are_413_and_echo_the_id() {
        let big = format!(
            r#"{{"id":5,"type":"forward","from":"a","to":"b","body":"{}"}}"#,
            "x".repeat(200)
        );
        let err = parse_frame(&big, 100).unwrap_err();
        assert_eq!(err.code, 413);
        assert_eq!(err.id, MessageId::Int(5));
        let garbage = "y".repeat(200);
        assert_eq!(parse_frame(&garbage, 100).unwrap_err().code, 413);
    }

    #[test]
    fn rejects_bad_field_types() {
        for frame in [
            r#"[1,2]"#,
            r#"{"id":1.5,"type":"read","from":"a","to":"b"}"#,
            r#"{"id":{},"type":"read","from":"a","to":"b"}"#,
            r#"{"id":1,"type":3,"from":"a","to":"b"}"#,
            r#"{"id":1,"type":"read","from":"","to":"b"}"#,
            r#"{"id":1,"type":"read","from":"a","to":7}"#,
            r#"{"id":1,"type":"READ","from":"a","to":"b"}"#,
        ] {
            assert_eq!(parse_frame(frame, MAX).unwrap_err().code, 400, "{frame}");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            // Quarters are exact in binary, so they survive a text round trip.
            (-1000i32..1000).prop_map(|n| json!(f64::from(n) / 4.0)),
            ".{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn field_value() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(None),
            json_value().prop_map(Some),
            prop::sample::select(MessageType::ALL.to_vec()).prop_map(|t| Some(json!(t.as_str()))),
            "[a-z]{1,10}://[a-z.]{1,10}/[a-z0-9]{0,8}".prop_map(|s| Some(json!(s))),
        ]
    }

    proptest! {
        /// Arbitrary text never panics the parser, and the answer respects the size limit.
        #[test]
        fn never_panics_on_arbitrary_text(text in ".{0,300}", max in 0usize..400) {
            match parse_frame(&text, max) {
                Ok(_) => prop_assert!(text.len() <= max),
                Err(e) => prop_assert!(e.code == 400 || e.code == 413),
            }
        }

        /// Objects with arbitrary field values either parse into an envelope that round-trips,
        /// or get a 400 whose response is itself a valid frame.
        #[test]
        fn structured_frames_parse_or_answer(
            id in field_value(), kind in field_value(), from in field_value(),
            to in field_value(), body in prop::option::of(json_value()),
        ) {
            let mut map = Map::new();
            for (k, v) in [("id", id), ("type", kind), ("from", from), ("to", to), ("body", body)] {
                if let Some(v) = v { map.insert(k.to_owned(), v); }
            }
            let text = Value::Object(map).to_string();
            match parse_frame(&text, MAX) {
                Ok(env) => {
                    let again = parse_frame(&env.to_json(), MAX).unwrap();
                    prop_assert_eq!(again, env);
                }
                Err(e) => {
                    prop_assert_eq!(e.code, 400);
                    let reply = e.response("domain://msg-node.localhost", "runtime://localhost/x");
                    let parsed = parse_frame(&reply.to_json(), MAX);
                    // The reply's id may be null, which is only legal server-side; all else must hold.
                    if e.id != MessageId::Null {
                        prop_assert!(parsed.is_ok());
                    }
                }
            }
        }
    }
}
