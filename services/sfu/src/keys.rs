//! Key, channel and event-type names of the SFU, in one place.
//!
//! The heartbeat key names are the node registry's ([`crate::nodes`], defined in
//! `rethink-sfu-client`); they are re-exported here.

pub use crate::nodes::{NODE_KEY_PREFIX, node_key};

/// Event type of a participant that joined a room (payload `SfuParticipantJoined`).
pub const EVENT_PARTICIPANT_JOINED: &str = "sfu.participant.joined";
/// Event type of a participant that left a room (payload `SfuParticipantLeft`).
pub const EVENT_PARTICIPANT_LEFT: &str = "sfu.participant.left";
/// Event type of a track that started (payload `SfuTrackEvent`).
pub const EVENT_TRACK_PUBLISHED: &str = "sfu.track.published";
/// Event type of a track that ended (payload `SfuTrackEvent`).
pub const EVENT_TRACK_UNPUBLISHED: &str = "sfu.track.unpublished";
