//! Publishing of SFU events on the bus (`topics::SFU_EVENTS`), off the media loop.

use std::sync::Arc;

use rethink_common::bus::{EventBus, new_event, publish_event, topics};
use rethink_proto::v1::{SfuParticipantJoined, SfuParticipantLeft, SfuTrackEvent};
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
            BusEvent::Joined(p) => new_event(keys::EVENT_PARTICIPANT_JOINED, &source, p),
            BusEvent::Left(p) => new_event(keys::EVENT_PARTICIPANT_LEFT, &source, p),
            BusEvent::TrackPublished(p) => new_event(keys::EVENT_TRACK_PUBLISHED, &source, p),
            BusEvent::TrackUnpublished(p) => new_event(keys::EVENT_TRACK_UNPUBLISHED, &source, p),
        };
        if let Err(error) = publish_event(bus.as_ref(), topics::SFU_EVENTS, &envelope).await {
            tracing::warn!(%error, kind = %envelope.r#type, "cannot publish sfu event");
        }
    }
}
