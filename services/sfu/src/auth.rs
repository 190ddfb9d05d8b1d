//! Who may call the SFU: every gRPC call carries `authorization: Bearer <token>`, verified
//! against the auth service's keys. The SFU is driven by services, so the token must be a
//! service token: `admin`, or `rooms.admin` covering the room the call is about.

use rethink_common::token::{Claims, TokenVerifier, bearer_from_metadata};

use crate::error::SfuError;

/// Checks the token of each call.
#[derive(Debug, Clone)]
pub enum Authorizer {
    /// Verifies tokens with the auth service's keys.
    Tokens(TokenVerifier),
    /// Accepts every call (config `auth.insecure_disable`; local experiments only).
    Disabled,
}

impl Authorizer {
    /// Verifies the call's token and that it may manage `room` (`None`: calls about no room).
    pub async fn check(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        room: Option<&str>,
    ) -> Result<(), SfuError> {
        let Self::Tokens(verifier) = self else {
            return Ok(());
        };
        let token = bearer_from_metadata(metadata).ok_or_else(|| {
            SfuError::Unauthenticated("missing `authorization: Bearer <token>` metadata".into())
        })?;
        let claims = verifier.verify(token).await.map_err(|error| {
            use rethink_common::token::TokenError;
            match error {
                TokenError::KeysUnavailable(reason) => SfuError::AuthUnavailable(reason),
                other => SfuError::Unauthenticated(other.to_string()),
            }
        })?;
        allowed(&claims, room)
    }
}

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
