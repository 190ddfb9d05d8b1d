//! Helpers shared by the integration tests.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

/// Upper bound for anything a test awaits; generous because CI machines are slow, never a sleep.
pub const WAIT: Duration = Duration::from_secs(15);

/// Awaits `future`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls `check` until it returns true, for state that offers no event to await (key expiry).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
}
