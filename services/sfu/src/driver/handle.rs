//! The handlers' side of the driver: commands with oneshot replies over a bounded channel.

use tokio::sync::{mpsc, oneshot, watch};

use rethink_proto::v1::{SfuNodeLoad, SfuParticipantEvent, SfuParticipantStats, SfuRoomStats};

use rethink_common::token::{Claims, Credential, TokenVerifier};
use rethink_sfu_core::{IceUpdate, JoinMode};

use crate::error::SfuError;

/// Items of a participant's event stream, as tonic wants them.
pub type EventItem = Result<SfuParticipantEvent, tonic::Status>;

pub(super) type Reply<T> = oneshot::Sender<Result<T, SfuError>>;

/// Who opened a participant's session, and the token that keeps it: the session ends when
/// that token lapses (revoked or expired). Only that identity (or a room admin) may manage
/// the session later, and a newer token of it renews the session.
#[derive(Debug, Clone)]
pub struct Opener {
    /// The current token of the session.
    pub credential: Credential,
}

impl Opener {
    /// The opener named by `claims`, which `verifier` verified.
    pub fn new(verifier: &TokenVerifier, claims: Claims) -> Self {
        Self {
            credential: Credential::new(verifier, claims),
        }
    }

    /// The identity (`sub`) the session belongs to.
    pub fn subject(&self) -> String {
        self.credential.subject()
    }
}

/// A join as the driver takes it.
#[derive(Debug)]
pub struct JoinSpec {
    /// The room.
    pub room: String,
    /// The participant's name in the room.
    pub participant: String,
    /// The SDP offer.
    pub offer: String,
    /// How the session is negotiated.
    pub mode: JoinMode,
    /// Create the room when it is missing (WHIP); a failed join then leaves no room behind.
    pub create_room: bool,
    /// Who opens the session.
    pub opener: Opener,
}

/// Whether a token is of the identity that opened a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Same subject as the opener's token.
    Opener,
    /// Another identity.
    Other,
}

/// A request to the driver.
#[derive(Debug)]
pub(super) enum Command {
    CreateRoom {
        room: String,
        reply: Reply<()>,
    },
    CloseRoom {
        room: String,
        reply: Reply<()>,
    },
    Join {
        spec: JoinSpec,
        reply: Reply<String>,
    },
    Claim {
        room: String,
        participant: String,
        claims: Claims,
        renew: bool,
        reply: Reply<Ownership>,
    },
    PatchIce {
        room: String,
        participant: String,
        fragment: String,
        reply: Reply<IceUpdate>,
    },
    AddCandidate {
        room: String,
        participant: String,
        candidate: String,
        reply: Reply<()>,
    },
    Leave {
        room: String,
        participant: String,
        reply: Reply<()>,
    },
    SetSubscribed {
        room: String,
        participant: String,
        track: String,
        on: bool,
        reply: Reply<()>,
    },
    AcceptAnswer {
        room: String,
        participant: String,
        answer: String,
        reply: Reply<()>,
    },
    AcceptOffer {
        room: String,
        participant: String,
        offer: String,
        reply: Reply<String>,
    },
    Events {
        room: String,
        participant: String,
        reply: Reply<mpsc::Receiver<EventItem>>,
    },
    RoomStats {
        room: String,
        reply: Reply<SfuRoomStats>,
    },
    ParticipantStats {
        room: String,
        participant: String,
        reply: Reply<SfuParticipantStats>,
    },
    Load {
        reply: Reply<SfuNodeLoad>,
    },
    Drain,
    Stop,
    CloseAll {
        reply: Reply<()>,
    },
}

/// The handlers' side of the driver. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DriverHandle {
    commands: mpsc::Sender<Command>,
    participants: watch::Receiver<usize>,
}

impl DriverHandle {
    pub(super) fn new(
        commands: mpsc::Sender<Command>,
        participants: watch::Receiver<usize>,
    ) -> Self {
        Self {
            commands,
            participants,
        }
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, SfuError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| SfuError::DriverGone)?;
        response.await.map_err(|_| SfuError::DriverGone)?
    }

    /// Creates a room.
    pub async fn create_room(&self, room: String) -> Result<(), SfuError> {
        self.call(|reply| Command::CreateRoom { room, reply }).await
    }

    /// Closes a room and disconnects its participants.
    pub async fn close_room(&self, room: String) -> Result<(), SfuError> {
        self.call(|reply| Command::CloseRoom { room, reply }).await
    }

    /// Joins a participant; returns the SDP answer.
    pub async fn join(&self, spec: JoinSpec) -> Result<String, SfuError> {
        self.call(|reply| Command::Join { spec, reply }).await
    }

    /// Tells whether `claims` are of the identity that opened the participant's session; when
    /// they are and `renew` is set, the session is kept by this (newer) token from now on.
    pub async fn claim(
        &self,
        room: String,
        participant: String,
        claims: Claims,
        renew: bool,
    ) -> Result<Ownership, SfuError> {
        self.call(|reply| Command::Claim {
            room,
            participant,
            claims,
            renew,
            reply,
        })
        .await
    }

    /// Applies a trickle-ICE SDP fragment (candidates, or an ICE restart).
    pub async fn patch_ice(
        &self,
        room: String,
        participant: String,
        fragment: String,
    ) -> Result<IceUpdate, SfuError> {
        self.call(|reply| Command::PatchIce {
            room,
            participant,
            fragment,
            reply,
        })
        .await
    }

    /// Adds a trickled remote ICE candidate.
    pub async fn add_candidate(
        &self,
        room: String,
        participant: String,
        candidate: String,
    ) -> Result<(), SfuError> {
        self.call(|reply| Command::AddCandidate {
            room,
            participant,
            candidate,
            reply,
        })
        .await
    }

    /// Removes a participant.
    pub async fn leave(&self, room: String, participant: String) -> Result<(), SfuError> {
        self.call(|reply| Command::Leave {
            room,
            participant,
            reply,
        })
        .await
    }

    /// Turns forwarding of one track to a participant on or off.
    pub async fn set_subscribed(
        &self,
        room: String,
        participant: String,
        track: String,
        on: bool,
    ) -> Result<(), SfuError> {
        self.call(|reply| Command::SetSubscribed {
            room,
            participant,
            track,
            on,
            reply,
        })
        .await
    }

    /// Applies the participant's answer to a renegotiation offer.
    pub async fn accept_answer(
        &self,
        room: String,
        participant: String,
        answer: String,
    ) -> Result<(), SfuError> {
        self.call(|reply| Command::AcceptAnswer {
            room,
            participant,
            answer,
            reply,
        })
        .await
    }

    /// Handles the participant's own new offer; returns the answer.
    pub async fn accept_offer(
        &self,
        room: String,
        participant: String,
        offer: String,
    ) -> Result<String, SfuError> {
        self.call(|reply| Command::AcceptOffer {
            room,
            participant,
            offer,
            reply,
        })
        .await
    }

    /// Opens (or replaces) the participant's event stream.
    pub async fn events(
        &self,
        room: String,
        participant: String,
    ) -> Result<mpsc::Receiver<EventItem>, SfuError> {
        self.call(|reply| Command::Events {
            room,
            participant,
            reply,
        })
        .await
    }

    /// Returns the statistics of a room.
    pub async fn room_stats(&self, room: String) -> Result<SfuRoomStats, SfuError> {
        self.call(|reply| Command::RoomStats { room, reply }).await
    }

    /// Returns the statistics of a participant.
    pub async fn participant_stats(
        &self,
        room: String,
        participant: String,
    ) -> Result<SfuParticipantStats, SfuError> {
        self.call(|reply| Command::ParticipantStats {
            room,
            participant,
            reply,
        })
        .await
    }

    /// Returns the node's load (without CPU, which the heartbeat measures).
    pub async fn load(&self) -> Result<SfuNodeLoad, SfuError> {
        self.call(|reply| Command::Load { reply }).await
    }

    /// Refuses new rooms from now on.
    pub async fn drain(&self) -> Result<(), SfuError> {
        self.commands
            .send(Command::Drain)
            .await
            .map_err(|_| SfuError::DriverGone)
    }

    /// Stops the driver task; later calls fail with [`SfuError::DriverGone`].
    pub async fn stop(&self) {
        let _ = self.commands.send(Command::Stop).await;
    }

    /// Closes every room.
    pub async fn close_all(&self) -> Result<(), SfuError> {
        self.call(|reply| Command::CloseAll { reply }).await
    }

    /// Returns a receiver of the number of participants on the node.
    pub fn participants(&self) -> watch::Receiver<usize> {
        self.participants.clone()
    }
}
