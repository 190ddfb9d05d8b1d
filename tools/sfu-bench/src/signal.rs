//! Signalling through the real gRPC API with the shared SFU client: join, then the
//! renegotiation relay hands the `Events` stream's offers to the client task and sends its
//! answers back.

use rethink_sfu_client::{Relay, RenegotiationOffer, SfuControl};
use tokio::sync::mpsc;

/// A participant's renegotiation channel; the relay stops when this is dropped.
pub struct Signal {
    /// Keeps the relay task alive.
    _relay: Relay,
    /// Offers to apply; each is answered through [`RenegotiationOffer::answer`].
    pub offers: mpsc::UnboundedReceiver<RenegotiationOffer>,
}

/// Joins `participant` with `offer`; returns the answer and the renegotiation channel.
pub async fn join(
    control: &SfuControl,
    room: &str,
    participant: &str,
    offer: String,
) -> anyhow::Result<(String, Signal)> {
    let answer = control.join(room, participant, &offer).await?;
    let (relay, offers) = Relay::start_channel(control, room, participant).await?;
    Ok((
        answer,
        Signal {
            _relay: relay,
            offers,
        },
    ))
}
