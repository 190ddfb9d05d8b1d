//! Signalling through the real gRPC API: join, then relay renegotiation offers from the
//! `Events` stream to the client task and its answers back.

use rethink_proto::v1::sfu_participant_event::Event;
use rethink_proto::v1::{SfuAnswerRenegotiationRequest, SfuEventsRequest, SfuJoinRequest};
use tokio::sync::mpsc;

use crate::auth::Client;

/// Joins `participant` with `offer`; returns the answer and the renegotiation channels (offers
/// to the client, answers from it), relayed by two background tasks.
pub async fn join(
    client: &Client,
    room: &str,
    participant: &str,
    offer: String,
) -> anyhow::Result<(
    String,
    mpsc::UnboundedReceiver<String>,
    mpsc::UnboundedSender<String>,
)> {
    let mut client = client.clone();
    let answer = client
        .join(SfuJoinRequest {
            room: room.into(),
            participant: participant.into(),
            offer_sdp: offer,
        })
        .await?
        .into_inner()
        .answer_sdp;
    let mut events = client
        .events(SfuEventsRequest {
            room: room.into(),
            participant: participant.into(),
        })
        .await?
        .into_inner();
    let (offers_tx, offers_rx) = mpsc::unbounded_channel();
    let (answers_tx, mut answers_rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok(Some(message)) = events.message().await {
            if let Some(Event::Renegotiation(r)) = message.event
                && offers_tx.send(r.offer_sdp).is_err()
            {
                break;
            }
        }
    });
    let (room, participant) = (room.to_owned(), participant.to_owned());
    tokio::spawn(async move {
        while let Some(answer_sdp) = answers_rx.recv().await {
            let request = SfuAnswerRenegotiationRequest {
                room: room.clone(),
                participant: participant.clone(),
                answer_sdp,
            };
            if let Err(status) = client.answer_renegotiation(request).await {
                eprintln!("{participant}: AnswerRenegotiation failed: {status}");
            }
        }
    });
    Ok((answer, offers_rx, answers_tx))
}
