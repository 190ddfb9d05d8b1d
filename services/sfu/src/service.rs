//! The gRPC service `rethink.v1.Sfu`: checks the token and the request's fields, then hands the
//! request to the media driver. Errors become statuses through `From<SfuError> for Status`.

use rethink_proto::v1::sfu_server::Sfu;
use rethink_proto::v1::{
    SfuAddIceCandidateRequest, SfuAddIceCandidateResponse, SfuAnswerRenegotiationRequest,
    SfuAnswerRenegotiationResponse, SfuCloseRoomRequest, SfuCloseRoomResponse,
    SfuCreateRoomRequest, SfuCreateRoomResponse, SfuEventsRequest, SfuGetParticipantStatsRequest,
    SfuGetRoomStatsRequest, SfuJoinRequest, SfuJoinResponse, SfuLeaveRequest, SfuLeaveResponse,
    SfuOfferRequest, SfuOfferResponse, SfuParticipantStats, SfuRoomStats, SfuSubscribeRequest,
    SfuSubscribeResponse,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Authorizer;
use rethink_common::token::Claims;
use rethink_sfu_core::JoinMode;

use crate::driver::{DriverHandle, EventItem, JoinSpec, Opener};
use crate::error::SfuError;

/// Longest room, participant or track id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest SDP accepted, in bytes.
pub const MAX_SDP_LEN: usize = 64 * 1024;
/// Longest ICE candidate line, in bytes.
pub const MAX_CANDIDATE_LEN: usize = 1024;

/// The gRPC service; one instance serves every connection.
#[derive(Debug, Clone)]
pub struct SfuService {
    driver: DriverHandle,
    auth: Authorizer,
    node_id: String,
}

impl SfuService {
    /// Returns the service over a running driver.
    pub fn new(driver: DriverHandle, auth: Authorizer, node_id: String) -> Self {
        Self {
            driver,
            auth,
            node_id,
        }
    }

    async fn authorize<T>(&self, request: &Request<T>, room: &str) -> Result<Claims, SfuError> {
        self.auth.check(request.metadata(), Some(room)).await
    }

    /// Checks a call about one participant. A token of the subject that joined the
    /// participant renews its session: the participant is kept by this token from now on.
    async fn authorize_participant<T>(
        &self,
        request: &Request<T>,
        room: &str,
        participant: &str,
    ) -> Result<(), SfuError> {
        let claims = self.authorize(request, room).await?;
        check_room_participant(room, participant)?;
        match self
            .driver
            .claim(room.to_owned(), participant.to_owned(), claims, true)
            .await
        {
            // The call itself reports a missing room or participant.
            Ok(_) | Err(SfuError::RoomNotFound(_) | SfuError::ParticipantNotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Checks an id: 1 to [`MAX_ID_LEN`] bytes of printable ASCII.
pub fn check_id(field: &str, value: &str) -> Result<(), SfuError> {
    if value.is_empty() {
        return Err(SfuError::InvalidArgument(format!("{field} is empty")));
    }
    if value.len() > MAX_ID_LEN {
        return Err(SfuError::InvalidArgument(format!(
            "{field} is {} bytes long; the limit is {MAX_ID_LEN}",
            value.len()
        )));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SfuError::InvalidArgument(format!(
            "{field} must be printable ASCII without spaces"
        )));
    }
    Ok(())
}

/// Checks an SDP's size (its content is the core's business).
pub fn check_sdp(field: &str, sdp: &str) -> Result<(), SfuError> {
    if sdp.trim().is_empty() {
        return Err(SfuError::BadSdp(format!("{field} is empty")));
    }
    if sdp.len() > MAX_SDP_LEN {
        return Err(SfuError::BadSdp(format!(
            "{field} is {} bytes long; the limit is {MAX_SDP_LEN}",
            sdp.len()
        )));
    }
    Ok(())
}

fn check_room_participant(room: &str, participant: &str) -> Result<(), SfuError> {
    check_id("room", room)?;
    check_id("participant", participant)
}

#[tonic::async_trait]
impl Sfu for SfuService {
    async fn create_room(
        &self,
        request: Request<SfuCreateRoomRequest>,
    ) -> Result<Response<SfuCreateRoomResponse>, Status> {
        let room = &request.get_ref().room;
        self.authorize(&request, room).await?;
        check_id("room", room)?;
        self.driver.create_room(room.clone()).await?;
        Ok(Response::new(SfuCreateRoomResponse {
            node_id: self.node_id.clone(),
        }))
    }

    async fn close_room(
        &self,
        request: Request<SfuCloseRoomRequest>,
    ) -> Result<Response<SfuCloseRoomResponse>, Status> {
        let room = &request.get_ref().room;
        self.authorize(&request, room).await?;
        check_id("room", room)?;
        self.driver.close_room(room.clone()).await?;
        Ok(Response::new(SfuCloseRoomResponse {}))
    }

    async fn join(
        &self,
        request: Request<SfuJoinRequest>,
    ) -> Result<Response<SfuJoinResponse>, Status> {
        let body = request.get_ref();
        let claims = self.authorize(&request, &body.room).await?;
        check_room_participant(&body.room, &body.participant)?;
        check_sdp("offer_sdp", &body.offer_sdp)?;
        let body = request.into_inner();
        let answer_sdp = self
            .driver
            .join(JoinSpec {
                room: body.room,
                participant: body.participant,
                offer: body.offer_sdp,
                mode: JoinMode::Renegotiated,
                create_room: false,
                opener: Opener::new(self.auth.verifier(), claims),
            })
            .await?;
        Ok(Response::new(SfuJoinResponse { answer_sdp }))
    }

    async fn add_ice_candidate(
        &self,
        request: Request<SfuAddIceCandidateRequest>,
    ) -> Result<Response<SfuAddIceCandidateResponse>, Status> {
        let body = request.get_ref();
        self.authorize_participant(&request, &body.room, &body.participant)
            .await?;
        // An empty candidate is the end-of-candidates marker browsers send; the core ignores it.
        if body.candidate.len() > MAX_CANDIDATE_LEN {
            return Err(SfuError::InvalidArgument(format!(
                "candidate is {} bytes long; the limit is {MAX_CANDIDATE_LEN}",
                body.candidate.len()
            ))
            .into());
        }
        let body = request.into_inner();
        self.driver
            .add_candidate(body.room, body.participant, body.candidate)
            .await?;
        Ok(Response::new(SfuAddIceCandidateResponse {}))
    }

    async fn leave(
        &self,
        request: Request<SfuLeaveRequest>,
    ) -> Result<Response<SfuLeaveResponse>, Status> {
        let body = request.get_ref();
        self.authorize_participant(&request, &body.room, &body.participant)
            .await?;
        let body = request.into_inner();
        self.driver.leave(body.room, body.participant).await?;
        Ok(Response::new(SfuLeaveResponse {}))
    }

    async fn subscribe(
        &self,
        request: Request<SfuSubscribeRequest>,
    ) -> Result<Response<SfuSubscribeResponse>, Status> {
        self.set_subscribed(request, true).await
    }

    async fn unsubscribe(
        &self,
        request: Request<SfuSubscribeRequest>,
    ) -> Result<Response<SfuSubscribeResponse>, Status> {
        self.set_subscribed(request, false).await
    }

    async fn get_room_stats(
        &self,
        request: Request<SfuGetRoomStatsRequest>,
    ) -> Result<Response<SfuRoomStats>, Status> {
        let room = &request.get_ref().room;
        self.authorize(&request, room).await?;
        check_id("room", room)?;
        Ok(Response::new(self.driver.room_stats(room.clone()).await?))
    }

    async fn get_participant_stats(
        &self,
        request: Request<SfuGetParticipantStatsRequest>,
    ) -> Result<Response<SfuParticipantStats>, Status> {
        let body = request.get_ref();
        self.authorize_participant(&request, &body.room, &body.participant)
            .await?;
        let body = request.into_inner();
        let stats = self
            .driver
            .participant_stats(body.room, body.participant)
            .await?;
        Ok(Response::new(stats))
    }

    type EventsStream = ReceiverStream<EventItem>;

    async fn events(
        &self,
        request: Request<SfuEventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let body = request.get_ref();
        self.authorize_participant(&request, &body.room, &body.participant)
            .await?;
        let body = request.into_inner();
        let receiver = self.driver.events(body.room, body.participant).await?;
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn answer_renegotiation(
        &self,
        request: Request<SfuAnswerRenegotiationRequest>,
    ) -> Result<Response<SfuAnswerRenegotiationResponse>, Status> {
        let body = request.get_ref();
        self.authorize_participant(&request, &body.room, &body.participant)
            .await?;
        check_sdp("answer_sdp", &body.answer_sdp)?;
        let body = request.into_inner();
        self.driver
            .accept_answer(body.room, body.participant, body.answer_sdp)
            .await?;
        Ok(Response::new(SfuAnswerRenegotiationResponse {}))
    }

    async fn offer(
        &self,
        request: Request<SfuOfferRequest>,
    ) -> Result<Response<SfuOfferResponse>, Status> {
        let answer_sdp = self.offer_inner(request).await?;
        Ok(Response::new(SfuOfferResponse { answer_sdp }))
    }
}

impl SfuService {
    async fn offer_inner(&self, request: Request<SfuOfferRequest>) -> Result<String, Status> {
        let body = request.get_ref();
        self.authorize_participant(&request, &body.room, &body.participant)
            .await?;
        check_sdp("offer_sdp", &body.offer_sdp)?;
        let body = request.into_inner();
        Ok(self
            .driver
            .accept_offer(body.room, body.participant, body.offer_sdp)
            .await?)
    }

    async fn set_subscribed(
        &self,
        request: Request<SfuSubscribeRequest>,
        on: bool,
    ) -> Result<Response<SfuSubscribeResponse>, Status> {
        let body = request.get_ref();
        self.authorize_participant(&request, &body.room, &body.participant)
            .await?;
        check_id("track_id", &body.track_id)?;
        let body = request.into_inner();
        self.driver
            .set_subscribed(body.room, body.participant, body.track_id, on)
            .await?;
        Ok(Response::new(SfuSubscribeResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("room", "a-b_c.1:2@x/y").is_ok());
        assert!(check_id("room", "").is_err());
        assert!(check_id("room", "has space").is_err());
        assert!(check_id("room", "bell\u{7}").is_err());
        assert!(check_id("room", "é").is_err());
        assert!(check_id("room", &"x".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn sdp_size_is_checked() {
        assert!(check_sdp("offer_sdp", "v=0\r\n").is_ok());
        assert!(check_sdp("offer_sdp", "  ").is_err());
        assert!(check_sdp("offer_sdp", &"a".repeat(MAX_SDP_LEN + 1)).is_err());
    }
}
