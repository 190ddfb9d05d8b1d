//! Publishing of SFU events on the bus (`topics::SFU_EVENTS`), off the media loop.

use std::sync::Arc;

use prost::Message;
use rethink_common::bus::{EventBus, new_event_named, publish_event, topics};
use rethink_proto::v1::{Event, SfuParticipantJoined, SfuParticipantLeft, SfuTrackEvent};
use tokio::sync::mpsc;

use crate::keys;

/// Events queued for the bus before the driver starts dropping them.
pub const BUS_QUEUE: usize = 4096;

/// One event for the bus.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A participant joined a room.
    Joined(SfuParticipantJoined),
    /// A participant left (or was dropped from) a room.
    Left(SfuParticipantLeft),
    /// A track started.
    TrackPublished(SfuTrackEvent),
    /// A track ended.
    TrackUnpublished(SfuTrackEvent),
}

/// Publishes every event from `events` until the channel closes. Failures are logged and the
/// event is dropped: the bus is at-most-once by contract, and the media loop must not wait.
pub async fn publish_all(
    bus: Arc<dyn EventBus>,
    source: String,
    mut events: mpsc::Receiver<BusEvent>,
) {
    while let Some(event) = events.recv().await {
        let envelope = match &event {
            BusEvent::Joined(p) => envelope(keys::EVENT_PARTICIPANT_JOINED, &source, p),
            BusEvent::Left(p) => envelope(keys::EVENT_PARTICIPANT_LEFT, &source, p),
            BusEvent::TrackPublished(p) => envelope(keys::EVENT_TRACK_PUBLISHED, &source, p),
            BusEvent::TrackUnpublished(p) => envelope(keys::EVENT_TRACK_UNPUBLISHED, &source, p),
        };
        if let Err(error) = publish_event(bus.as_ref(), topics::SFU_EVENTS, &envelope).await {
            tracing::warn!(%error, kind = %envelope.r#type, "cannot publish sfu event");
        }
    }
}

/// The protobuf full name of each payload, as `Event.payload_type` carries it.
pub trait PayloadName {
    /// Returns "rethink.v1.<Message>".
    const FULL_NAME: &'static str;
}

impl PayloadName for SfuParticipantJoined {
    const FULL_NAME: &'static str = "rethink.v1.SfuParticipantJoined";
}
impl PayloadName for SfuParticipantLeft {
    const FULL_NAME: &'static str = "rethink.v1.SfuParticipantLeft";
}
impl PayloadName for SfuTrackEvent {
    const FULL_NAME: &'static str = "rethink.v1.SfuTrackEvent";
}

/// Builds the envelope; `payload_type` is given explicitly because the generated types do not
/// implement `prost::Name`.
fn envelope<M: Message + PayloadName>(kind: &str, source: &str, payload: &M) -> Event {
    new_event_named(kind, source, M::FULL_NAME, payload)
}
