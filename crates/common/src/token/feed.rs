//! How a verifier learns revocations, without losing one: [`TokenVerifier::follow`].
//!
//! Pub/sub is at-most-once: a revocation published while the subscriber reconnects is gone. The
//! store is the record (auth writes every revocation there before publishing it), so the feed
//! re-reads the revoked set from the store after every bus reconnect and every
//! [`FeedOptions::reload_interval`]. While it can neither subscribe nor read the store, the
//! service is held not ready under [`FEED_CONDITION`]: it fails closed instead of accepting
//! tokens it cannot know to be revoked.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use super::TokenVerifier;
use crate::{
    Backends,
    bus::{EventBus, Subscription, topics},
    kv::KvStore,
    lifecycle::{Health, Shutdown},
};

/// The readiness condition a verifier's feed holds unmet while it cannot follow revocations.
pub const FEED_CONDITION: &str = "token revocations";

/// Tuning of the revocation feed.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// How often the revoked set is re-read from the store even when the bus looks healthy.
    pub reload_interval: Duration,
    /// How soon a failed subscribe or store read is retried.
    pub retry_interval: Duration,
}

impl Default for FeedOptions {
    fn default() -> Self {
        Self {
            reload_interval: Duration::from_secs(5),
            retry_interval: Duration::from_millis(500),
        }
    }
}

impl TokenVerifier {
    /// Follows revocations with the default [`FeedOptions`]; see [`TokenVerifier::follow_with`].
    pub async fn follow(&self, backends: &Backends, health: &Health, shutdown: &Shutdown) {
        self.follow_with(backends, health, shutdown, FeedOptions::default())
            .await;
    }

    /// Starts the task that keeps this verifier's revoked set current from `backends` until
    /// `shutdown` (or until the last clone of the verifier is dropped). Returns after the first
    /// attempt: when Redis is up, revocations published from then on are seen and those stored
    /// before are loaded; when it is not, `health` is held not ready until the feed recovers.
    pub async fn follow_with(
        &self,
        backends: &Backends,
        health: &Health,
        shutdown: &Shutdown,
        options: FeedOptions,
    ) {
        let mut feed = Feed {
            verifier: self.downgrade(),
            bus: backends.bus.clone(),
            kv: backends.kv.clone(),
            health: health.clone(),
            options,
            subscription: None,
        };
        let healthy = feed.catch_up().await;
        let stop = self.stopped();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = feed.run(healthy) => {}
                () = stop.cancelled() => {}
                () = shutdown.wait() => {}
            }
        });
    }
}

struct Feed {
    verifier: super::verifier::WeakVerifier,
    bus: Arc<dyn EventBus>,
    kv: Arc<dyn KvStore>,
    health: Health,
    options: FeedOptions,
    subscription: Option<Subscription>,
}

impl Feed {
    /// Subscribes if needed, then reads the store; records and returns whether both hold.
    async fn catch_up(&mut self) -> bool {
        let Some(verifier) = self.verifier.upgrade() else {
            return false;
        };
        if self.subscription.is_none() {
            match self
                .bus
                .subscribe(&[topics::AUTH_REVOCATIONS.to_string()])
                .await
            {
                Ok(subscription) => self.subscription = Some(subscription),
                Err(error) => tracing::warn!(%error, "cannot subscribe to token revocations"),
            }
        }
        let loaded = match verifier.load_revocations(self.kv.as_ref()).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "cannot read token revocations from the store");
                false
            }
        };
        let healthy = loaded && self.subscription.is_some();
        self.health.set_condition(FEED_CONDITION, healthy);
        healthy
    }

    async fn run(mut self, mut healthy: bool) {
        let mut reconnects = self.bus.reconnects();
        loop {
            let wait = if healthy {
                self.options.reload_interval
            } else {
                self.options.retry_interval
            };
            let deadline = tokio::time::sleep(wait);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    () = reconnected(&mut reconnects) => break,
                    message = next(&mut self.subscription) => {
                        let Some(message) = message else {
                            // The bus is gone for good: subscribe again on the next round.
                            self.subscription = None;
                            break;
                        };
                        let Some(verifier) = self.verifier.upgrade() else { return };
                        match super::decode_revocation(&message.payload) {
                            Some(revoked) => verifier.revoke_local(&revoked.jti, revoked.exp),
                            None => tracing::warn!("ignoring undecodable revocation event"),
                        }
                    }
                }
            }
            healthy = self.catch_up().await;
        }
    }
}

/// Resolves when the bus reports a reconnect; never for buses that cannot lose messages.
async fn reconnected(reconnects: &mut Option<watch::Receiver<u64>>) {
    match reconnects {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                *reconnects = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn next(subscription: &mut Option<Subscription>) -> Option<crate::bus::BusMessage> {
    match subscription {
        Some(subscription) => subscription.recv().await,
        None => std::future::pending().await,
    }
}
