//! In-process bus on a tokio broadcast channel; what the all-in-one stack and unit tests use.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::{BusError, BusMessage, EventBus, Subscription};

/// Messages a slow subscriber may fall behind before it skips (and logs) the oldest.
const CAPACITY: usize = 4096;

/// An in-process [`EventBus`]; clones share the same channels.
#[derive(Clone, Debug)]
pub struct MemoryBus {
    sender: broadcast::Sender<BusMessage>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    /// Returns an empty bus.
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(CAPACITY).0,
        }
    }
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError> {
        // No receivers is not an error: pub/sub drops messages nobody listens to.
        let _ = self.sender.send(BusMessage {
            channel: channel.to_owned(),
            payload,
        });
        Ok(())
    }

    async fn subscribe(&self, channels: &[String]) -> Result<Subscription, BusError> {
        let wanted: Arc<HashSet<String>> = Arc::new(channels.iter().cloned().collect());
        let stream = BroadcastStream::new(self.sender.subscribe()).filter_map(move |item| {
            let wanted = Arc::clone(&wanted);
            async move {
                match item {
                    Ok(message) if wanted.contains(&message.channel) => Some(message),
                    Ok(_) => None,
                    Err(BroadcastStreamRecvError::Lagged(skipped)) => {
                        metrics::counter!("rethink_bus_dropped_messages_total").increment(skipped);
                        tracing::warn!(skipped, "slow bus subscriber skipped messages");
                        None
                    }
                }
            }
        });
        Ok(Subscription::new(stream, None))
    }
}
