//! The `rethink.v1.Event` envelope: building, publishing and decoding.

use std::time::SystemTime;

use bytes::Bytes;
use prost::{Message, Name};
use rethink_proto::v1::Event;

use super::{BusError, EventBus};
use crate::telemetry::propagation;

/// Builds an envelope around `payload`: a fresh UUID, the current time, the current span's trace
/// context, and the payload's full protobuf name as `payload_type`.
///
/// `kind` is dotted and lowercase ("auth.token.revoked"); `source` is `"<service>/<instance>"`.
pub fn new_event<M: Message + Name>(kind: &str, source: &str, payload: &M) -> Event {
    Event {
        id: uuid::Uuid::new_v4().to_string(),
        r#type: kind.to_owned(),
        source: source.to_owned(),
        time: Some(prost_types::Timestamp::from(SystemTime::now())),
        trace_context: propagation::current_map(),
        payload_type: M::full_name(),
        payload: payload.encode_to_vec(),
    }
}

/// Publishes `event`, prost-encoded, on `channel`.
pub async fn publish_event(
    bus: &dyn EventBus,
    channel: &str,
    event: &Event,
) -> Result<(), BusError> {
    bus.publish(channel, Bytes::from(event.encode_to_vec()))
        .await
}

/// Decodes an envelope received from the bus.
pub fn decode_event(payload: &[u8]) -> Result<Event, BusError> {
    Ok(Event::decode(payload)?)
}

/// Decodes the envelope's payload as `M`; `None` when the event carries another message type.
pub fn decode_payload<M: Message + Name + Default>(event: &Event) -> Option<Result<M, BusError>> {
    (event.payload_type == M::full_name())
        .then(|| M::decode(event.payload.as_slice()).map_err(BusError::from))
}
