//! Who may call the SFU: every gRPC call carries `authorization: Bearer <token>`, verified
//! against the auth service's keys. The SFU is driven by services, so the token must be a
//! service token: `admin`, or `rooms.admin` covering the room the call is about. WHIP/WHEP
//! requests may also use a user token with `rooms.publish` / `rooms.subscribe` for the room.

use rethink_common::token::{Claims, TokenVerifier, bearer_from_metadata, bearer_from_parts};

use crate::error::SfuError;

/// Checks the token of each call with the auth service's keys. There is no way to turn the
/// checks off: local tools run the auth service in process (`rethink_auth::LocalAuth`).
#[derive(Debug, Clone)]
pub struct Authorizer {
    verifier: TokenVerifier,
}

impl Authorizer {
    /// Checks tokens with `verifier`.
    pub fn new(verifier: TokenVerifier) -> Self {
        Self { verifier }
    }

    /// Verifies the call's token and that it may manage `room` (`None`: calls about no room).
    pub async fn check(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        room: Option<&str>,
    ) -> Result<(), SfuError> {
        let claims = self.claims(bearer_from_metadata(metadata)).await?;
        allowed(&claims, room)
    }

    /// Verifies an HTTP request's token (WHIP/WHEP) and that it may publish (`publish`) or
    /// receive media in `room`. Service tokens (`rooms.admin`) may do both.
    pub async fn check_media(
        &self,
        parts: &http::request::Parts,
        room: &str,
        publish: bool,
    ) -> Result<(), SfuError> {
        let claims = self.claims(bearer_from_parts(parts)).await?;
        if allowed(&claims, Some(room)).is_ok() {
            return Ok(());
        }
        let rooms = &claims.grants.rooms;
        let granted = if publish {
            rooms.publish
        } else {
            rooms.subscribe
        };
        if granted && claims.grants.covers_room(room) {
            Ok(())
        } else {
            Err(SfuError::PermissionDenied(format!(
                "token of {:?} lacks `rooms.{}` for room {room:?}",
                claims.sub,
                if publish { "publish" } else { "subscribe" }
            )))
        }
    }

    /// Verifies `token`.
    async fn claims(&self, token: Option<&str>) -> Result<Claims, SfuError> {
        let token = token.ok_or_else(|| {
            SfuError::Unauthenticated("missing `authorization: Bearer <token>`".into())
        })?;
        self.verifier.verify(token).await.map_err(|error| {
            use rethink_common::token::TokenError;
            match error {
                TokenError::KeysUnavailable(reason) => SfuError::AuthUnavailable(reason),
                other => SfuError::Unauthenticated(other.to_string()),
            }
        })
    }
}

/// A service token: `admin`, or `rooms.admin` covering `room`.
fn allowed(claims: &Claims, room: Option<&str>) -> Result<(), SfuError> {
    let grants = &claims.grants;
    if grants.admin {
        return Ok(());
    }
    if grants.rooms.admin && room.is_none_or(|room| grants.covers_room(room)) {
        return Ok(());
    }
    Err(SfuError::PermissionDenied(format!(
        "token of {:?} lacks `rooms.admin`{}; the sfu takes service tokens only",
        claims.sub,
        room.map(|r| format!(" for room {r:?}")).unwrap_or_default()
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
        assert!(allowed(&claims("rooms.admin"), Some("a")).is_ok());
        assert!(allowed(&claims("admin"), Some("a")).is_ok());
        assert!(allowed(&claims("user"), Some("a")).is_err());
        assert!(allowed(&claims("rooms.admin,room=a"), Some("a")).is_ok());
        assert!(allowed(&claims("rooms.admin,room=a"), Some("b")).is_err());
    }
}
