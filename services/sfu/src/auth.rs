//! Who may call the SFU. Every request carries `authorization: Bearer <token>`, verified
//! against the auth service's keys; the verified claims then decide:
//!
//! | caller | may |
//! |---|---|
//! | gRPC `rethink.v1.Sfu` | only room admins: `admin`, or `rooms.admin` covering the room (service tokens) |
//! | WHIP `POST /whip/<room>` | `rooms.publish` covering the room (`Grants::may_publish`), or a room admin |
//! | WHEP `POST /whep/<room>` | `rooms.subscribe` covering the room (`Grants::may_subscribe`), or a room admin |
//! | `PATCH`/`DELETE` of a WHIP/WHEP session | the identity that opened it (same `sub`, still holding the grant above), or a room admin |
//!
//! A login token (rooms.join, cameras.view) therefore reaches no media: media rights name
//! rooms (`room=<name>` or `room=<prefix>*`). The session checks themselves (who opened a
//! session) live with the session, in the driver; this module only reads tokens and grants.

use rethink_common::token::{Claims, TokenVerifier, bearer_from_metadata, bearer_from_parts};

use crate::error::SfuError;

/// Checks the token of each call with the auth service's keys. There is no way to turn the
/// checks off: local tools run the auth service in process (`rethink_auth::LocalAuth`).
#[derive(Debug, Clone)]
pub struct Authorizer {
    verifier: TokenVerifier,
}

/// What a media session does in its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaRight {
    /// WHIP: publish media into the room.
    Publish,
    /// WHEP: receive the room's media.
    Subscribe,
}

impl Authorizer {
    /// Checks tokens with `verifier`.
    pub fn new(verifier: TokenVerifier) -> Self {
        Self { verifier }
    }

    /// The verifier (sessions watch their tokens with it).
    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    /// Verifies the call's token and that it may manage `room` (`None`: calls about no room);
    /// returns its claims.
    pub async fn check(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        room: Option<&str>,
    ) -> Result<Claims, SfuError> {
        let claims = self.claims(bearer_from_metadata(metadata)).await?;
        may_manage(&claims, room)?;
        Ok(claims)
    }

    /// Verifies an HTTP request's token (WHIP/WHEP) and returns its claims; what they allow
    /// is checked by [`may_media`] and by the session's owner check.
    pub async fn authenticate(&self, parts: &http::request::Parts) -> Result<Claims, SfuError> {
        self.claims(bearer_from_parts(parts)).await
    }

    /// Verifies `token`.
    async fn claims(&self, token: Option<&str>) -> Result<Claims, SfuError> {
        let token = token.ok_or_else(|| {
            SfuError::Unauthenticated("missing `authorization: Bearer <token>`".into())
        })?;
        self.verifier.verify(token).await.map_err(SfuError::from)
    }
}

/// A service token: `admin`, or `rooms.admin` covering `room` (any room for `None`).
pub fn may_manage(claims: &Claims, room: Option<&str>) -> Result<(), SfuError> {
    let grants = &claims.grants;
    let allowed = match room {
        Some(room) => grants.may_admin_room(room),
        None => grants.admin || grants.rooms.admin,
    };
    if allowed {
        return Ok(());
    }
    Err(SfuError::PermissionDenied(format!(
        "token of {:?} lacks `rooms.admin`{}; the sfu takes service tokens only",
        claims.sub,
        room.map(|r| format!(" for room {r:?}")).unwrap_or_default()
    )))
}

/// Whether `claims` may publish or receive media in `room`: the matching grant covering the
/// room, or a room admin's token.
pub fn may_media(claims: &Claims, room: &str, right: MediaRight) -> Result<(), SfuError> {
    let grants = &claims.grants;
    let granted = match right {
        MediaRight::Publish => grants.may_publish(room),
        MediaRight::Subscribe => grants.may_subscribe(room),
    };
    if granted || grants.may_admin_room(room) {
        return Ok(());
    }
    Err(SfuError::PermissionDenied(format!(
        "token of {:?} lacks `rooms.{}` for room {room:?}",
        claims.sub,
        match right {
            MediaRight::Publish => "publish",
            MediaRight::Subscribe => "subscribe",
        }
    )))
}

#[cfg(test)]
mod tests {
    use rethink_common::token::Grants;

    use super::*;

    fn claims(grants: &str) -> Claims {
        Claims {
            sub: "svc".into(),
            name: "svc".into(),
            iat: 0,
            nbf: 0,
            exp: 0,
            jti: "j".into(),
            aud: "rethink".into(),
            grants: grants.parse::<Grants>().unwrap(),
        }
    }

    #[test]
    fn room_admin_is_needed_and_limited_to_its_rooms() {
        assert!(may_manage(&claims("rooms.admin"), Some("a")).is_ok());
        assert!(may_manage(&claims("admin"), Some("a")).is_ok());
        assert!(may_manage(&claims("user"), Some("a")).is_err());
        assert!(may_manage(&claims("rooms.admin,room=a"), Some("a")).is_ok());
        assert!(may_manage(&claims("rooms.admin,room=a"), Some("b")).is_err());
    }

    #[test]
    fn media_needs_the_grant_for_the_room() {
        let publish = claims("rooms.publish,room=a");
        assert!(may_media(&publish, "a", MediaRight::Publish).is_ok());
        assert!(may_media(&publish, "a", MediaRight::Subscribe).is_err());
        assert!(may_media(&publish, "b", MediaRight::Publish).is_err());
        let join = claims("rooms.join");
        assert!(may_media(&join, "a", MediaRight::Subscribe).is_err());
        assert!(may_media(&claims("rooms.admin"), "a", MediaRight::Subscribe).is_ok());
    }
}
