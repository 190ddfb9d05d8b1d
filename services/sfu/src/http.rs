//! The node's HTTP routes besides the ops endpoints (`/healthz`, `/readyz`, `/metrics` come from
//! `rethink_common::lifecycle::ops_router`): WHIP ingest.
//!
//! WHIP (RFC 9725): `POST /whip/<room>` with an SDP offer (`application/sdp`) joins a new
//! publisher `whip-<random>` to the room (created if missing, unless the node drains) and
//! answers `201 Created` with the SDP answer and `Location: /whip/<room>/<publisher>`;
//! `DELETE` on that location ends the session. Trickle ICE (`PATCH`) is not offered: the node
//! is ICE-lite and learns the client's address from its checks, so the answer is complete.
//! The token is a service token or a user token with `rooms.publish` for the room.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use http::StatusCode;
use http::header::{CONTENT_TYPE, LOCATION};

use crate::auth::Authorizer;
use crate::driver::DriverHandle;
use crate::error::SfuError;
use crate::service::{MAX_SDP_LEN, check_id, check_sdp};

/// Prefix of the participant ids WHIP sessions get.
pub const WHIP_PARTICIPANT_PREFIX: &str = "whip-";

#[derive(Clone)]
struct MediaState {
    driver: DriverHandle,
    auth: Authorizer,
}

/// Returns the node's own routes.
pub fn routes(driver: DriverHandle, auth: Authorizer) -> Router {
    Router::new()
        .route("/whip/{room}", post(whip_publish))
        .route("/whip/{room}/{participant}", delete(whip_stop))
        .layer(DefaultBodyLimit::max(MAX_SDP_LEN))
        .with_state(MediaState { driver, auth })
}

async fn whip_publish(
    State(state): State<MediaState>,
    Path(room): Path<String>,
    request: Request,
) -> Result<Response, SfuError> {
    let (parts, body) = request.into_parts();
    state.auth.check_media(&parts, &room, true).await?;
    check_id("room", &room)?;
    let offer = read_sdp(&parts.headers, body).await?;
    match state.driver.create_room(room.clone()).await {
        Ok(()) | Err(SfuError::RoomExists(_)) => {}
        Err(error) => return Err(error),
    }
    let participant = format!(
        "{WHIP_PARTICIPANT_PREFIX}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let answer = state
        .driver
        .join(room.clone(), participant.clone(), offer)
        .await?;
    Ok((
        StatusCode::CREATED,
        [
            (CONTENT_TYPE, "application/sdp".to_string()),
            (LOCATION, format!("/whip/{room}/{participant}")),
        ],
        answer,
    )
        .into_response())
}

async fn whip_stop(
    State(state): State<MediaState>,
    Path((room, participant)): Path<(String, String)>,
    request: Request,
) -> Result<Response, SfuError> {
    let (parts, _) = request.into_parts();
    state.auth.check_media(&parts, &room, true).await?;
    check_id("room", &room)?;
    check_id("participant", &participant)?;
    // Only WHIP sessions end through WHIP; conference participants leave through their service.
    if !participant.starts_with(WHIP_PARTICIPANT_PREFIX) {
        return Err(SfuError::ParticipantNotFound { room, participant });
    }
    state.driver.leave(room, participant).await?;
    Ok(StatusCode::OK.into_response())
}

async fn read_sdp(headers: &http::HeaderMap, body: Body) -> Result<String, SfuError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/sdp")
    {
        return Err(SfuError::UnsupportedMediaType(format!(
            "content-type must be application/sdp, not {content_type:?}"
        )));
    }
    let bytes = axum::body::to_bytes(body, MAX_SDP_LEN)
        .await
        .map_err(|_| SfuError::BadSdp(format!("offer is larger than {MAX_SDP_LEN} bytes")))?;
    let offer = String::from_utf8(bytes.to_vec())
        .map_err(|_| SfuError::BadSdp("offer is not utf-8".into()))?;
    check_sdp("offer", &offer)?;
    Ok(offer)
}
