//! Channel names on the event bus, one place for all of them.
//!
//! Every channel carries prost-encoded `rethink.v1.Event` envelopes unless noted otherwise.

/// Token revocations from auth (`auth.token.revoked`); every token verifier listens.
pub const AUTH_REVOCATIONS: &str = "rethink.events.auth.revocations";
/// Room and participant events from SFU nodes.
pub const SFU_EVENTS: &str = "rethink.events.sfu";
/// Policy changes the msg-node enforcement point must apply.
pub const MSG_NODE_POLICY: &str = "rethink.events.msg-node.policy";
/// Room lifecycle events from the conference service.
pub const CONFERENCE_EVENTS: &str = "rethink.events.conference";
/// Camera online/offline, viewer and recording events from publishers.
pub const CAMERA_EVENTS: &str = "rethink.events.camera";
