//! Redis pub/sub bus that survives Redis restarts.
//!
//! Publishing goes through a `ConnectionManager` (reconnects lazily; a publish that hits a dropped
//! connection is retried a few times). Subscribing goes through one dedicated pub/sub connection
//! per bus, owned by a background task that keeps the registry of live subscriptions. When that
//! connection drops, the task reconnects with backoff and subscribes again to every channel a
//! live [`Subscription`] wants, so subscriptions outlive Redis restarts. Messages published
//! while disconnected are lost (pub/sub is at-most-once).
//!
//! Metrics: `rethink_bus_reconnects_total`, `rethink_bus_publish_errors_total` (after retries),
//! `rethink_bus_dropped_messages_total` (a subscriber fell more than its buffer behind).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::{BusError, BusMessage, EventBus, Subscription};

/// Messages buffered per subscription before new ones are dropped (and logged).
const SUBSCRIPTION_BUFFER: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const PUBLISH_ATTEMPTS: u32 = 4;

/// An [`EventBus`] on Redis pub/sub; clones share connections and the subscriber task.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus").finish_non_exhaustive()
    }
}

struct Inner {
    publisher: ConnectionManager,
    control: mpsc::UnboundedSender<Control>,
    generation: watch::Receiver<u64>,
    next_id: AtomicU64,
}

enum Control {
    Subscribe {
        id: u64,
        channels: Vec<String>,
        sender: mpsc::Sender<BusMessage>,
        ack: oneshot::Sender<()>,
    },
    Unsubscribe {
        id: u64,
    },
}

/// Unsubscribes when the [`Subscription`] holding it is dropped.
struct Unsubscriber {
    id: u64,
    control: mpsc::UnboundedSender<Control>,
}

impl Drop for Unsubscriber {
    fn drop(&mut self) {
        // Fails only when the subscriber task is gone, and then nothing is subscribed anyway.
        let _ = self.control.send(Control::Unsubscribe { id: self.id });
    }
}

/// Tuning of a [`RedisBus`].
#[derive(Debug, Clone)]
pub struct RedisBusOptions {
    /// How often the subscriber connection is pinged, so that a silently dead network path is
    /// noticed and reconnected (default 15 s).
    pub ping_interval: Duration,
}

impl Default for RedisBusOptions {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(15),
        }
    }
}

impl RedisBus {
    /// Connects to Redis at `url` (`redis://host:port[/db]`); fails when it is unreachable now.
    /// Later outages are handled by reconnecting.
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        Self::connect_with(url, RedisBusOptions::default()).await
    }

    /// Like [`RedisBus::connect`], with explicit options.
    pub async fn connect_with(url: &str, options: RedisBusOptions) -> Result<Self, BusError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(BACKOFF_MAX)
            .set_number_of_retries(3);
        let publisher = ConnectionManager::new_with_config(client.clone(), config).await?;
        // Connect the subscriber once up front so a wrong URL fails here, not later in a loop.
        let first = connect_pubsub(&client).await?;
        let (control, control_rx) = mpsc::unbounded_channel();
        let (generation_tx, generation) = watch::channel(0);
        tokio::spawn(subscriber_task(
            client,
            first,
            control_rx,
            generation_tx,
            options.ping_interval,
        ));
        // Generation 1 is the first connection; waiting for it makes later generations mean
        // reconnects. The task only fails to get there if it ended, i.e. the bus is unusable.
        generation
            .clone()
            .wait_for(|g| *g >= 1)
            .await
            .map_err(|_| BusError::Closed)?;
        Ok(Self {
            inner: Arc::new(Inner {
                publisher,
                control,
                generation,
                next_id: AtomicU64::new(1),
            }),
        })
    }

    /// Returns a receiver of the subscriber connection's generation: it increments every time the
    /// connection is (re)established with every live subscription in place. Lets tests and health
    /// checks await a reconnect instead of guessing.
    pub fn subscriber_generation(&self) -> watch::Receiver<u64> {
        self.inner.generation.clone()
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, channel: &str, payload: Bytes) -> Result<(), BusError> {
        let mut delay = BACKOFF_MIN;
        let mut attempt = 1;
        loop {
            let mut conn = self.inner.publisher.clone();
            let result: Result<i64, redis::RedisError> = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload.as_ref())
                .query_async(&mut conn)
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(e) if attempt < PUBLISH_ATTEMPTS && is_transient(&e) => {
                    tracing::debug!(error = %e, attempt, "publish failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                    attempt += 1;
                }
                Err(e) => {
                    metrics::counter!("rethink_bus_publish_errors_total").increment(1);
                    return Err(e.into());
                }
            }
        }
    }

    fn reconnects(&self) -> Option<watch::Receiver<u64>> {
        Some(self.subscriber_generation())
    }

    async fn subscribe(&self, channels: &[String]) -> Result<Subscription, BusError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let (ack, acked) = oneshot::channel();
        self.inner
            .control
            .send(Control::Subscribe {
                id,
                channels: channels.to_vec(),
                sender,
                ack,
            })
            .map_err(|_| BusError::Closed)?;
        let guard = Unsubscriber {
            id,
            control: self.inner.control.clone(),
        };
        acked.await.map_err(|_| BusError::Closed)?;
        Ok(Subscription::new(
            ReceiverStream::new(receiver),
            Some(Box::new(guard)),
        ))
    }
}

fn is_transient(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error() || e.is_timeout() || e.is_connection_refusal()
}

async fn connect_pubsub(client: &redis::Client) -> Result<redis::aio::PubSub, redis::RedisError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()).await {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connecting to redis timed out",
        ))),
    }
}

/// Which subscription wants which channel.
#[derive(Default)]
struct Registry {
    by_channel: HashMap<String, HashMap<u64, mpsc::Sender<BusMessage>>>,
    by_id: HashMap<u64, Vec<String>>,
}

impl Registry {
    /// Registers and returns the channels nobody was subscribed to before.
    fn add(
        &mut self,
        id: u64,
        channels: Vec<String>,
        sender: mpsc::Sender<BusMessage>,
    ) -> Vec<String> {
        let mut fresh = Vec::new();
        let unique: HashSet<String> = channels.into_iter().collect();
        for channel in &unique {
            let subscribers = self.by_channel.entry(channel.clone()).or_default();
            if subscribers.is_empty() {
                fresh.push(channel.clone());
            }
            subscribers.insert(id, sender.clone());
        }
        self.by_id.insert(id, unique.into_iter().collect());
        fresh
    }

    /// Unregisters and returns the channels nobody is subscribed to any more.
    fn remove(&mut self, id: u64) -> Vec<String> {
        let mut gone = Vec::new();
        for channel in self.by_id.remove(&id).unwrap_or_default() {
            if let Some(subscribers) = self.by_channel.get_mut(&channel) {
                subscribers.remove(&id);
                if subscribers.is_empty() {
                    self.by_channel.remove(&channel);
                    gone.push(channel);
                }
            }
        }
        gone
    }

    fn channels(&self) -> Vec<String> {
        self.by_channel.keys().cloned().collect()
    }

    fn dispatch(&self, message: &redis::Msg) {
        let channel = message.get_channel_name();
        let Some(subscribers) = self.by_channel.get(channel) else {
            return;
        };
        let payload = Bytes::copy_from_slice(message.get_payload_bytes());
        for sender in subscribers.values() {
            let message = BusMessage {
                channel: channel.to_owned(),
                payload: payload.clone(),
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(message) {
                metrics::counter!("rethink_bus_dropped_messages_total").increment(1);
                tracing::warn!(channel, "slow bus subscriber; message dropped");
            }
        }
    }
}

/// What ended a connected session.
enum SessionEnd {
    /// The connection failed; reconnect.
    Lost,
    /// Every handle and subscription is gone; stop.
    Closed,
}

async fn subscriber_task(
    client: redis::Client,
    first: redis::aio::PubSub,
    mut control: mpsc::UnboundedReceiver<Control>,
    generation: watch::Sender<u64>,
    ping_interval: Duration,
) {
    let mut registry = Registry::default();
    let mut connection = Some(first);
    let mut delay = BACKOFF_MIN;
    loop {
        let pubsub = match connection.take() {
            Some(pubsub) => Ok(pubsub),
            None => connect_pubsub(&client).await,
        };
        let pubsub = match pubsub {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::debug!(error = %e, "redis pub/sub reconnect failed");
                if !offline_wait(&mut registry, &mut control, delay).await {
                    return;
                }
                delay = (delay * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let (mut sink, stream) = pubsub.split();
        let channels = registry.channels();
        if !channels.is_empty() {
            if let Err(e) = sink.subscribe(&channels).await {
                tracing::debug!(error = %e, "redis re-subscribe failed");
                if !offline_wait(&mut registry, &mut control, delay).await {
                    return;
                }
                delay = (delay * 2).min(BACKOFF_MAX);
                continue;
            }
            tracing::info!(
                channels = channels.len(),
                "redis pub/sub connected; subscriptions restored"
            );
        }
        delay = BACKOFF_MIN;
        generation.send_modify(|g| *g += 1);
        if *generation.borrow() > 1 {
            metrics::counter!("rethink_bus_reconnects_total").increment(1);
        }
        match session(
            &mut registry,
            &mut control,
            &mut sink,
            stream,
            ping_interval,
        )
        .await
        {
            SessionEnd::Closed => return,
            SessionEnd::Lost => tracing::warn!("redis pub/sub connection lost; reconnecting"),
        }
    }
}

/// Serves one connection until it fails or the bus is gone.
async fn session(
    registry: &mut Registry,
    control: &mut mpsc::UnboundedReceiver<Control>,
    sink: &mut PubSubSink,
    mut stream: PubSubStream,
    ping_interval: Duration,
) -> SessionEnd {
    let mut ping = tokio::time::interval(ping_interval);
    ping.reset();
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => registry.dispatch(&message),
                None => return SessionEnd::Lost,
            },
            command = control.recv() => match command {
                None => return SessionEnd::Closed,
                Some(Control::Subscribe { id, channels, sender, ack }) => {
                    let fresh = registry.add(id, channels, sender);
                    let result = if fresh.is_empty() { Ok(()) } else { sink.subscribe(&fresh).await };
                    // Acknowledge either way: on failure the reconnect re-subscribes everything.
                    let _ = ack.send(());
                    if result.is_err() {
                        return SessionEnd::Lost;
                    }
                }
                Some(Control::Unsubscribe { id }) => {
                    let gone = registry.remove(id);
                    if !gone.is_empty() && sink.unsubscribe(&gone).await.is_err() {
                        return SessionEnd::Lost;
                    }
                }
            },
            _ = ping.tick() => {
                // In subscribed mode the reply is ["pong", ""], not "PONG"; any reply will do.
                let pong = tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return SessionEnd::Lost;
                }
            }
        }
    }
}

/// Waits `delay` before the next reconnect while keeping the registry current; returns false
/// when the bus is gone.
async fn offline_wait(
    registry: &mut Registry,
    control: &mut mpsc::UnboundedReceiver<Control>,
    delay: Duration,
) -> bool {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            () = &mut sleep => return true,
            command = control.recv() => match command {
                None => return false,
                Some(Control::Subscribe { id, channels, sender, ack }) => {
                    // Subscribed for real on reconnect; acknowledging now keeps callers from
                    // hanging through an outage.
                    registry.add(id, channels, sender);
                    let _ = ack.send(());
                }
                Some(Control::Unsubscribe { id }) => {
                    registry.remove(id);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_subscribes_each_channel_once_and_releases_it_with_its_last_subscriber() {
        let mut registry = Registry::default();
        let (tx, _rx) = mpsc::channel(1);
        let mut fresh = registry.add(1, vec!["a".into(), "b".into(), "a".into()], tx.clone());
        fresh.sort();
        assert_eq!(fresh, ["a", "b"]);
        assert_eq!(registry.add(2, vec!["b".into(), "c".into()], tx), ["c"]);
        let mut gone = registry.remove(1);
        gone.sort();
        assert_eq!(gone, ["a"]);
        let mut gone = registry.remove(2);
        gone.sort();
        assert_eq!(gone, ["b", "c"]);
        assert!(registry.channels().is_empty());
        assert!(registry.remove(3).is_empty());
    }
}
