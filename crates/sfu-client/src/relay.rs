//! [`Relay`]: the renegotiation relay of one participant. A task reads the participant's
//! `Events` stream, hands each renegotiation offer to the caller's answerer (a callback, or a
//! channel of [`RenegotiationOffer`]s for callers whose peer lives in another task) and sends
//! the answer back with `AnswerRenegotiation`. Every event is also recorded, so tests can wait
//! for tracks and participants coming and going.

use std::{future::Future, time::Duration};

use rethink_proto::v1::sfu_participant_event::Event;
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{control::SfuControl, error::SfuClientError};

/// What the relay has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayOutcome {
    /// Offers answered and accepted by the SFU.
    pub answered: u32,
    /// The first error met (applying an offer or sending its answer); later offers are still
    /// relayed.
    pub error: Option<String>,
    /// The `Events` stream ended (the participant left or the room closed).
    pub ended: bool,
}

/// One renegotiation offer handed to a channel answerer.
#[derive(Debug)]
pub struct RenegotiationOffer {
    /// The SFU's SDP offer.
    pub sdp: String,
    reply: oneshot::Sender<Result<String, String>>,
}

impl RenegotiationOffer {
    /// Sends `answer_sdp` back to the SFU.
    pub fn answer(self, answer_sdp: String) {
        let _ = self.reply.send(Ok(answer_sdp));
    }

    /// Gives up on this offer; the relay records `why` as its error.
    pub fn refuse(self, why: impl Into<String>) {
        let _ = self.reply.send(Err(why.into()));
    }
}

/// A running relay; stops when dropped.
#[derive(Debug)]
pub struct Relay {
    events: watch::Receiver<Vec<Event>>,
    outcome: watch::Receiver<RelayOutcome>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Opens `participant`'s `Events` stream and relays every renegotiation offer through
    /// `answer` (offer SDP in, answer SDP or a reason out).
    pub async fn start<F, Fut>(
        control: &SfuControl,
        room: &str,
        participant: &str,
        mut answer: F,
    ) -> Result<Self, SfuClientError>
    where
        F: FnMut(String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<String, String>> + Send,
    {
        let mut stream = control.events(room, participant).await?;
        let (events_tx, events) = watch::channel(Vec::new());
        let (outcome_tx, outcome) = watch::channel(RelayOutcome::default());
        let (control, room, participant) =
            (control.clone(), room.to_owned(), participant.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let message = match stream.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, %participant, "events stream ended");
                        break;
                    }
                };
                let Some(event) = message.event else { continue };
                if let Event::Renegotiation(offer) = &event {
                    let result = match answer(offer.offer_sdp.clone()).await {
                        Ok(sdp) => control
                            .answer_renegotiation(&room, &participant, &sdp)
                            .await
                            .map_err(|e| format!("AnswerRenegotiation: {e}")),
                        Err(why) => Err(format!("applying the offer: {why}")),
                    };
                    outcome_tx.send_modify(|o| match result {
                        Ok(()) => o.answered += 1,
                        Err(error) => {
                            tracing::warn!(%error, %participant, "renegotiation failed");
                            o.error.get_or_insert(error);
                        }
                    });
                }
                events_tx.send_modify(|all| all.push(event));
            }
            outcome_tx.send_modify(|o| o.ended = true);
        });
        Ok(Self {
            events,
            outcome,
            task,
        })
    }

    /// Like [`Relay::start`], handing each offer to the returned channel; the receiver answers
    /// with [`RenegotiationOffer::answer`]. An offer dropped unanswered counts as an error.
    pub async fn start_channel(
        control: &SfuControl,
        room: &str,
        participant: &str,
    ) -> Result<(Self, mpsc::UnboundedReceiver<RenegotiationOffer>), SfuClientError> {
        let (offers_tx, offers_rx) = mpsc::unbounded_channel();
        let relay = Self::start(control, room, participant, move |sdp| {
            let (reply, answered) = oneshot::channel();
            let handed = offers_tx.send(RenegotiationOffer { sdp, reply }).is_ok();
            async move {
                if !handed {
                    return Err("nobody takes offers any more".to_owned());
                }
                answered
                    .await
                    .unwrap_or_else(|_| Err("the offer was dropped unanswered".to_owned()))
            }
        })
        .await?;
        Ok((relay, offers_rx))
    }

    /// Returns what the relay has done so far.
    pub fn outcome(&self) -> RelayOutcome {
        self.outcome.borrow().clone()
    }

    /// Returns every event received so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.borrow().clone()
    }

    /// Returns a watch of the events received so far.
    pub fn watch_events(&self) -> watch::Receiver<Vec<Event>> {
        self.events.clone()
    }

    /// Waits until at least `count` offers were answered, or an error, or the stream ended;
    /// returns the outcome then, or `Err` with the outcome after `wait`.
    pub async fn wait_answered(
        &self,
        count: u32,
        wait: Duration,
    ) -> Result<RelayOutcome, RelayOutcome> {
        let mut outcome = self.outcome.clone();
        let reached = tokio::time::timeout(
            wait,
            outcome.wait_for(|o| o.answered >= count || o.error.is_some() || o.ended),
        )
        .await;
        match reached {
            Ok(Ok(o)) if o.answered >= count => Ok(o.clone()),
            _ => Err(self.outcome()),
        }
    }

    /// Waits until an event matching `pred` arrived; returns it, or `None` after `wait`.
    pub async fn wait_event(&self, wait: Duration, pred: impl Fn(&Event) -> bool) -> Option<Event> {
        let mut events = self.events.clone();
        let found = tokio::time::timeout(wait, events.wait_for(|all| all.iter().any(&pred))).await;
        match found {
            Ok(Ok(all)) => all.iter().find(|e| pred(e)).cloned(),
            _ => None,
        }
    }
}
