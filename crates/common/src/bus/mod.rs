//! The event bus: channel-level publish/subscribe of bytes, and the typed event envelope.
//!
//! Layout: [`EventBus`] is the trait services code against; [`MemoryBus`] (one process, tokio
//! broadcast) and [`RedisBus`] (Redis pub/sub, reconnecting by itself) implement it. Channel
//! names are constants in [`topics`]. Payloads on the shared topics are `rethink.v1.Event`
//! envelopes built with [`new_event`] and sent with [`publish_event`].
//!
//! Delivery is at-most-once, like Redis pub/sub: a message published while a subscriber is
//! disconnected is not replayed. State that must survive belongs in the key-value store.

mod event;
mod memory;
mod redis;
pub mod topics;

use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;

pub use self::event::{decode_event, decode_payload, new_event, publish_event};
pub use self::memory::MemoryBus;
pub use self::redis::{RedisBus, RedisBusOptions};

/// Why a bus operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Redis refused or the connection failed (after the retries the bus does by itself).
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// The bus was shut down.
    #[error("event bus closed")]
    Closed,
    /// A message on the bus could not be decoded.
    #[error("bad event: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// One message received on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// The channel it was published on.
    pub channel: String,
    /// The payload as published.
    pub payload: Bytes,
}

/// A publish/subscribe bus of byte payloads on named channels.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes `payload` to every current subscriber of `channel`.
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError>;

    /// Returns the messages on these channels until the [`Subscription`] is dropped. Once this
    /// returns, messages published afterwards are delivered. Survives Redis restarts
    /// (re-subscribes by itself).
    async fn subscribe(&self, channels: &[String]) -> Result<Subscription, BusError>;

    /// Returns a receiver whose value changes each time the bus has reconnected and subscribed
    /// again, for buses that can lose messages while away (Redis); `None` for buses that never
    /// disconnect. Followers re-read from the store what they may have missed.
    fn reconnects(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// A live subscription: a stream of [`BusMessage`]; dropping it unsubscribes.
pub struct Subscription {
    stream: BoxStream<'static, BusMessage>,
    // Unsubscribes on drop; held only for its Drop.
    _guard: Option<Box<dyn Send>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// Wraps a stream of messages and a value whose `Drop` ends the subscription.
    pub fn new(
        stream: impl Stream<Item = BusMessage> + Send + 'static,
        guard: Option<Box<dyn Send>>,
    ) -> Self {
        Self {
            stream: Box::pin(stream),
            _guard: guard,
        }
    }

    /// Returns the next message, or `None` once the bus is gone.
    pub async fn recv(&mut self) -> Option<BusMessage> {
        futures::StreamExt::next(&mut self.stream).await
    }
}

impl Stream for Subscription {
    type Item = BusMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BusMessage>> {
        self.stream.as_mut().poll_next(cx)
    }
}
