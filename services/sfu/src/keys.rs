//! Key, channel and event-type names of the SFU, in one place.

/// Prefix of every node heartbeat key; the full key is [`node_key`].
pub const NODE_KEY_PREFIX: &str = "rethink:sfu:nodes:";

/// The heartbeat key of one node; its value is a prost-encoded `rethink.v1.SfuNode`.
pub fn node_key(node_id: &str) -> String {
    format!("{NODE_KEY_PREFIX}{node_id}")
}

/// Event type of a participant that joined a room (payload `SfuParticipantJoined`).
pub const EVENT_PARTICIPANT_JOINED: &str = "sfu.participant.joined";
/// Event type of a participant that left a room (payload `SfuParticipantLeft`).
pub const EVENT_PARTICIPANT_LEFT: &str = "sfu.participant.left";
/// Event type of a track that started (payload `SfuTrackEvent`).
pub const EVENT_TRACK_PUBLISHED: &str = "sfu.track.published";
/// Event type of a track that ended (payload `SfuTrackEvent`).
pub const EVENT_TRACK_UNPUBLISHED: &str = "sfu.track.unpublished";
