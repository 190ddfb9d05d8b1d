//! The node's HTTP routes besides the ops endpoints (`/healthz`, `/readyz`, `/metrics` come from
//! `rethink_common::lifecycle::ops_router`): WHIP ingest (RFC 9725) and WHEP playback
//! (draft-ietf-wish-whep), two directions of one protocol served by one code path.
//!
//! | request | WHIP (`/whip/...`) | WHEP (`/whep/...`) |
//! |---|---|---|
//! | `POST /<p>/<room>`, `application/sdp` offer | publisher `whip-<id>`; room created if missing (unless draining) | viewer `whep-<id>`; room must exist (404) |
//! | `PATCH /<p>/<room>/<id>`, `application/trickle-ice-sdpfrag` | trickle → 204; new ICE credentials → ICE restart, 200 with our fragment | same |
//! | `DELETE /<p>/<room>/<id>` | ends the session, 200 | same |
//!
//! `POST` answers `201 Created` with the SDP answer, `Location: /<p>/<room>/<id>`, an `ETag`
//! naming the ICE session (our ICE ufrag) and `Accept-Patch: application/trickle-ice-sdpfrag`.
//! The node is ICE-lite and learns the client's address from its checks, so the answer is
//! complete and trickling is optional. A `PATCH` whose fragment carries new
//! `a=ice-ufrag`/`a=ice-pwd` restarts ICE (RFC 9725 §4.3.2): the answer is `200 OK` with our
//! new credentials and candidates as a fragment and a new `ETag`; the client keeps the rest of
//! its session and applies them to its remote description. `If-Match` is not required.
//!
//! A WHIP publisher publishes what its offer sends and receives nothing. A WHEP viewer's offer
//! must only receive (`recvonly` audio/video m-lines, else 400); the room's current tracks
//! fill its m-lines by kind, tracks published later fill m-lines that are free then, and the
//! rest are listed as `unsent_tracks` in its participant stats. Neither ever gets an offer
//! from the server (the protocols have no way to carry one).
//!
//! Browsers on other origins may call every route (CORS, any origin: requests carry a bearer
//! token, never a cookie); `OPTIONS` is answered as a CORS preflight.
//!
//! Tokens: `Authorization: Bearer` only. `POST` needs `rooms.publish` (WHIP) / `rooms.subscribe`
//! (WHEP) covering the room, or a room admin's token ([`crate::auth`]). A session belongs to the
//! identity that opened it: `PATCH` and `DELETE` by another identity are 403 unless it
//! administers the room. The session ends when its token lapses (revoked or expired); any
//! `PATCH` of its opener renews it with the newer token, and a `PATCH` without a body does only
//! that (204).
//!
//! Errors: `{"error":{"code","message"}}` from [`SfuError`]'s one mapping to the shared code
//! table: 401 no or bad token, 403 missing grant or another identity's session, 404 unknown
//! room or session, 400 bad SDP or fragment, 413 body over [`MAX_SDP_LEN`], 415 wrong content
//! type, 429 limits, 503 draining.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use http::Method;
use http::StatusCode;
use http::header::{AUTHORIZATION, CONTENT_TYPE, ETAG, IF_MATCH, LOCATION};
use rethink_sfu_core::{IceUpdate, JoinMode};
use tower_http::cors::{Any, CorsLayer};

use rethink_common::token::Claims;

use crate::auth::{Authorizer, MediaRight, may_media};
use crate::driver::{DriverHandle, JoinSpec, Opener, Ownership};
use crate::error::SfuError;
use crate::service::{MAX_SDP_LEN, check_id, check_sdp};

/// Prefix of the participant ids WHIP sessions get.
pub const WHIP_PARTICIPANT_PREFIX: &str = "whip-";
/// Prefix of the participant ids WHEP sessions get.
pub const WHEP_PARTICIPANT_PREFIX: &str = "whep-";

const SDP: &str = "application/sdp";
/// RFC 5789 §3.1; not among `http`'s constants.
const ACCEPT_PATCH: http::HeaderName = http::HeaderName::from_static("accept-patch");
const SDP_FRAGMENT: &str = "application/trickle-ice-sdpfrag";

/// The two protocols: the same exchange in opposite media directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Whip,
    Whep,
}

impl Protocol {
    fn path(self) -> &'static str {
        match self {
            Protocol::Whip => "whip",
            Protocol::Whep => "whep",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Protocol::Whip => WHIP_PARTICIPANT_PREFIX,
            Protocol::Whep => WHEP_PARTICIPANT_PREFIX,
        }
    }

    /// What the token must allow in the room.
    fn right(self) -> MediaRight {
        match self {
            Protocol::Whip => MediaRight::Publish,
            Protocol::Whep => MediaRight::Subscribe,
        }
    }

    fn mode(self) -> JoinMode {
        match self {
            Protocol::Whip => JoinMode::Publish,
            Protocol::Whep => JoinMode::View,
        }
    }
}

#[derive(Clone)]
struct MediaState {
    driver: DriverHandle,
    auth: Authorizer,
}

/// Returns the node's own routes.
pub fn routes(driver: DriverHandle, auth: Authorizer) -> Router {
    Router::new()
        .merge(protocol_routes(Protocol::Whip))
        .merge(protocol_routes(Protocol::Whep))
        // Bodies are read with their own limit (and a 413); this one only has to let them in.
        .layer(DefaultBodyLimit::max(MAX_SDP_LEN + 1))
        .layer(browser_access())
        .with_state(MediaState { driver, auth })
}

/// `POST /<p>/<room>`, `PATCH` and `DELETE /<p>/<room>/<id>` of one protocol.
fn protocol_routes(protocol: Protocol) -> Router<MediaState> {
    let endpoint = format!("/{}/{{room}}", protocol.path());
    let session = format!("/{}/{{room}}/{{participant}}", protocol.path());
    Router::new()
        .route(
            &endpoint,
            post(move |state, room, request| start(protocol, state, room, request)),
        )
        .route(
            &session,
            delete(move |state, path, request| stop(protocol, state, path, request))
                .patch(move |state, path, request| patch(protocol, state, path, request)),
        )
}

/// Browser players and publishers are often served from another origin than the media node.
/// Any origin may call: every request carries its own bearer token and no cookie, so a page
/// gains nothing it could not do with the token anyway. Preflights are answered here; the
/// headers a client needs to continue the session (`Location`, `ETag`, `Accept-Patch`) are
/// exposed to its script.
fn browser_access() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers([AUTHORIZATION, CONTENT_TYPE, IF_MATCH])
        .expose_headers([LOCATION, ETAG, ACCEPT_PATCH])
}

/// `POST`: a new session from an SDP offer.
async fn start(
    protocol: Protocol,
    State(state): State<MediaState>,
    Path(room): Path<String>,
    request: Request,
) -> Result<Response, SfuError> {
    let (parts, body) = request.into_parts();
    let claims = state.auth.authenticate(&parts).await?;
    may_media(&claims, &room, protocol.right())?;
    check_id("room", &room)?;
    check_content_type(&parts.headers, SDP)?;
    let offer = read_body(body, "offer").await?;
    check_sdp("offer", &offer)?;
    let participant = format!(
        "{}{}",
        protocol.prefix(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let answer = state
        .driver
        .join(JoinSpec {
            room: room.clone(),
            participant: participant.clone(),
            offer,
            mode: protocol.mode(),
            // A WHIP publisher opens its room; the join removes it again if it fails.
            create_room: protocol == Protocol::Whip,
            opener: Opener::new(state.auth.verifier(), claims),
        })
        .await?;
    let mut response = (
        StatusCode::CREATED,
        [
            (CONTENT_TYPE, SDP.to_string()),
            (
                LOCATION,
                format!("/{}/{room}/{participant}", protocol.path()),
            ),
            (ACCEPT_PATCH, SDP_FRAGMENT.to_string()),
        ],
        answer.clone(),
    )
        .into_response();
    if let Some(etag) = ice_etag(&answer) {
        response.headers_mut().insert(ETAG, etag);
    }
    Ok(response)
}

/// `PATCH`: trickled candidates or an ICE restart; any PATCH of the opener renews the session
/// with its token, and one without a body does only that.
async fn patch(
    protocol: Protocol,
    State(state): State<MediaState>,
    Path((room, participant)): Path<(String, String)>,
    request: Request,
) -> Result<Response, SfuError> {
    let (parts, body) = request.into_parts();
    authorize_session(&state, protocol, &parts, &room, &participant).await?;
    let fragment = read_body(body, "fragment").await?;
    if fragment.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    check_content_type(&parts.headers, SDP_FRAGMENT)?;
    match state.driver.patch_ice(room, participant, fragment).await? {
        IceUpdate::Trickled => Ok(StatusCode::NO_CONTENT.into_response()),
        IceUpdate::Restarted { fragment, .. } => {
            let etag = ice_etag(&fragment);
            let mut response = (
                StatusCode::OK,
                [(CONTENT_TYPE, SDP_FRAGMENT.to_string())],
                fragment,
            )
                .into_response();
            if let Some(etag) = etag {
                response.headers_mut().insert(ETAG, etag);
            }
            Ok(response)
        }
    }
}

/// `DELETE`: ends the session.
async fn stop(
    protocol: Protocol,
    State(state): State<MediaState>,
    Path((room, participant)): Path<(String, String)>,
    request: Request,
) -> Result<Response, SfuError> {
    let (parts, _) = request.into_parts();
    authorize_session(&state, protocol, &parts, &room, &participant).await?;
    state.driver.leave(room, participant).await?;
    Ok(StatusCode::OK.into_response())
}

/// A session of this protocol may be changed or ended by the identity that opened it (same
/// subject, its token still granting the protocol's right in the room) or by a room admin.
/// The opener's token renews the session: it is kept by this token from now on.
async fn authorize_session(
    state: &MediaState,
    protocol: Protocol,
    parts: &http::request::Parts,
    room: &str,
    participant: &str,
) -> Result<Claims, SfuError> {
    let claims = state.auth.authenticate(parts).await?;
    check_session(protocol, room, participant)?;
    let media = may_media(&claims, room, protocol.right());
    let admin = claims.grants.may_admin_room(room);
    let ownership = state
        .driver
        .claim(
            room.to_owned(),
            participant.to_owned(),
            claims.clone(),
            media.is_ok(),
        )
        .await?;
    match ownership {
        _ if admin => Ok(claims),
        Ownership::Opener => media.map(|()| claims),
        Ownership::Other => Err(SfuError::PermissionDenied(format!(
            "session {participant:?} was opened by another identity than {:?}; only its \
             opener or an admin of room {room:?} may change or end it",
            claims.sub
        ))),
    }
}

/// Only sessions of this protocol are reachable through its resource URLs; conference
/// participants are managed by their service, and a WHEP token cannot end a WHIP session.
fn check_session(protocol: Protocol, room: &str, participant: &str) -> Result<(), SfuError> {
    check_id("room", room)?;
    check_id("participant", participant)?;
    if !participant.starts_with(protocol.prefix()) {
        return Err(SfuError::ParticipantNotFound {
            room: room.to_owned(),
            participant: participant.to_owned(),
        });
    }
    Ok(())
}

fn check_content_type(headers: &http::HeaderMap, expected: &str) -> Result<(), SfuError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(SfuError::UnsupportedMediaType(format!(
            "content-type must be {expected}, not {content_type:?}"
        )))
    }
}

async fn read_body(body: Body, what: &str) -> Result<String, SfuError> {
    let bytes = axum::body::to_bytes(body, MAX_SDP_LEN).await.map_err(|_| {
        SfuError::TooLarge(format!("the {what} is larger than {MAX_SDP_LEN} bytes"))
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| SfuError::BadSdp(format!("the {what} is not utf-8")))
}

/// The `ETag` of a session, from our answer or restart fragment: our ICE ufrag, which
/// changes with every ICE restart.
fn ice_etag(sdp: &str) -> Option<http::HeaderValue> {
    let ufrag = sdp
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))?;
    http::HeaderValue::from_str(&format!("\"{}\"", ufrag.trim())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_matched_by_essence() {
        let mut headers = http::HeaderMap::new();
        assert!(check_content_type(&headers, SDP).is_err());
        headers.insert(
            CONTENT_TYPE,
            "Application/SDP; charset=utf-8".parse().unwrap(),
        );
        assert!(check_content_type(&headers, SDP).is_ok());
        assert!(check_content_type(&headers, SDP_FRAGMENT).is_err());
    }

    #[test]
    fn sessions_of_the_other_protocol_are_not_found() {
        assert!(check_session(Protocol::Whep, "r", "whep-abc").is_ok());
        assert!(check_session(Protocol::Whep, "r", "whip-abc").is_err());
        assert!(check_session(Protocol::Whip, "r", "alice").is_err());
    }

    #[test]
    fn etag_is_the_ice_ufrag() {
        let etag = ice_etag("v=0\r\na=ice-ufrag:Ab12\r\n").unwrap();
        assert_eq!(etag, "\"Ab12\"");
        assert!(ice_etag("v=0\r\n").is_none());
    }
}
