//! [`SfuControl`]: the `rethink.v1.Sfu` calls a room's authority makes, each carrying the
//! [`Bearer`] token, with plain arguments instead of request structs.

use std::time::Duration;

use rethink_proto::v1::{
    SfuAddIceCandidateRequest, SfuAnswerRenegotiationRequest, SfuCloseRoomRequest,
    SfuCreateRoomRequest, SfuEventsRequest, SfuGetParticipantStatsRequest, SfuGetRoomStatsRequest,
    SfuJoinRequest, SfuLeaveRequest, SfuNode, SfuOfferRequest, SfuParticipantEvent,
    SfuParticipantStats, SfuRoomStats, SfuSubscribeRequest, sfu_client::SfuClient,
};
use tonic::{
    Streaming,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::{bearer::Bearer, error::SfuClientError};

/// The generated client with the bearer interceptor.
pub type Authed = SfuClient<InterceptedService<Channel, Bearer>>;

/// A connection to one SFU node's control plane. Cheap to clone (clones share the HTTP/2
/// connection and the token).
#[derive(Debug, Clone)]
pub struct SfuControl {
    client: Authed,
    bearer: Bearer,
}

/// Largest gRPC message sent or accepted (an SDP is at most 64 KiB).
const MAX_MESSAGE: usize = 256 * 1024;

impl SfuControl {
    /// Connects to `addr` (`host:port` or `http://host:port`) within `wait`.
    pub async fn connect(
        addr: &str,
        bearer: Bearer,
        wait: Duration,
    ) -> Result<Self, SfuClientError> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let channel = Endpoint::from_shared(url)
            .map_err(|e| SfuClientError::Transport(format!("{addr}: {e}")))?
            .connect_timeout(wait)
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(Self::with_channel(channel, bearer))
    }

    /// Connects to the node a heartbeat names.
    pub async fn connect_node(
        node: &SfuNode,
        bearer: Bearer,
        wait: Duration,
    ) -> Result<Self, SfuClientError> {
        Self::connect(&node.grpc_addr, bearer, wait).await
    }

    /// Uses an existing channel (several controls may share one HTTP/2 connection).
    pub fn with_channel(channel: Channel, bearer: Bearer) -> Self {
        let client = SfuClient::with_interceptor(channel, bearer.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Self { client, bearer }
    }

    /// Returns the token holder (replace the token with [`Bearer::set`]).
    pub fn bearer(&self) -> &Bearer {
        &self.bearer
    }

    /// Returns the generated client, for calls without a wrapper here.
    pub fn raw(&self) -> Authed {
        self.client.clone()
    }

    /// Creates `room`; returns the id of the node that holds it.
    pub async fn create_room(&self, room: &str) -> Result<String, SfuClientError> {
        let request = SfuCreateRoomRequest { room: room.into() };
        Ok(self.raw().create_room(request).await?.into_inner().node_id)
    }

    /// Closes `room`, disconnecting everyone.
    pub async fn close_room(&self, room: &str) -> Result<(), SfuClientError> {
        let request = SfuCloseRoomRequest { room: room.into() };
        self.raw().close_room(request).await?;
        Ok(())
    }

    /// Joins `participant` to `room` with its SDP offer; returns the SDP answer.
    pub async fn join(
        &self,
        room: &str,
        participant: &str,
        offer_sdp: &str,
    ) -> Result<String, SfuClientError> {
        let request = SfuJoinRequest {
            room: room.into(),
            participant: participant.into(),
            offer_sdp: offer_sdp.into(),
        };
        Ok(self.raw().join(request).await?.into_inner().answer_sdp)
    }

    /// Adds one trickled ICE candidate of `participant` (empty = end of candidates).
    pub async fn trickle(
        &self,
        room: &str,
        participant: &str,
        candidate: &str,
    ) -> Result<(), SfuClientError> {
        let request = SfuAddIceCandidateRequest {
            room: room.into(),
            participant: participant.into(),
            candidate: candidate.into(),
        };
        self.raw().add_ice_candidate(request).await?;
        Ok(())
    }

    /// Removes `participant` from `room`.
    pub async fn leave(&self, room: &str, participant: &str) -> Result<(), SfuClientError> {
        let request = SfuLeaveRequest {
            room: room.into(),
            participant: participant.into(),
        };
        self.raw().leave(request).await?;
        Ok(())
    }

    /// Starts forwarding `track_id` to `participant`.
    pub async fn subscribe(
        &self,
        room: &str,
        participant: &str,
        track_id: &str,
    ) -> Result<(), SfuClientError> {
        self.raw()
            .subscribe(subscription(room, participant, track_id))
            .await?;
        Ok(())
    }

    /// Stops forwarding `track_id` to `participant`.
    pub async fn unsubscribe(
        &self,
        room: &str,
        participant: &str,
        track_id: &str,
    ) -> Result<(), SfuClientError> {
        self.raw()
            .unsubscribe(subscription(room, participant, track_id))
            .await?;
        Ok(())
    }

    /// Returns the statistics of `room`.
    pub async fn room_stats(&self, room: &str) -> Result<SfuRoomStats, SfuClientError> {
        let request = SfuGetRoomStatsRequest { room: room.into() };
        Ok(self.raw().get_room_stats(request).await?.into_inner())
    }

    /// Returns the statistics of one participant.
    pub async fn participant_stats(
        &self,
        room: &str,
        participant: &str,
    ) -> Result<SfuParticipantStats, SfuClientError> {
        let request = SfuGetParticipantStatsRequest {
            room: room.into(),
            participant: participant.into(),
        };
        Ok(self
            .raw()
            .get_participant_stats(request)
            .await?
            .into_inner())
    }

    /// Opens the `Events` stream of `participant` (replacing an earlier one).
    pub async fn events(
        &self,
        room: &str,
        participant: &str,
    ) -> Result<Streaming<SfuParticipantEvent>, SfuClientError> {
        let request = SfuEventsRequest {
            room: room.into(),
            participant: participant.into(),
        };
        Ok(self.raw().events(request).await?.into_inner())
    }

    /// Applies `participant`'s answer to the outstanding renegotiation offer.
    pub async fn answer_renegotiation(
        &self,
        room: &str,
        participant: &str,
        answer_sdp: &str,
    ) -> Result<(), SfuClientError> {
        let request = SfuAnswerRenegotiationRequest {
            room: room.into(),
            participant: participant.into(),
            answer_sdp: answer_sdp.into(),
        };
        self.raw().answer_renegotiation(request).await?;
        Ok(())
    }

    /// Sends a new offer of the participant itself; returns the answer.
    pub async fn offer(
        &self,
        room: &str,
        participant: &str,
        offer_sdp: &str,
    ) -> Result<String, SfuClientError> {
        let request = SfuOfferRequest {
            room: room.into(),
            participant: participant.into(),
            offer_sdp: offer_sdp.into(),
        };
        Ok(self.raw().offer(request).await?.into_inner().answer_sdp)
    }
}

fn subscription(room: &str, participant: &str, track_id: &str) -> SfuSubscribeRequest {
    SfuSubscribeRequest {
        room: room.into(),
        participant: participant.into(),
        track_id: track_id.into(),
    }
}
