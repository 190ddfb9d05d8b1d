//! The SFU control client: what a room's authority (the conference service, tests, the load
//! generator) needs to drive `rethink.v1.Sfu` nodes.
//!
//! Layout:
//! - [`bearer`]: [`Bearer`], the interceptor adding `authorization: Bearer <token>`; the token
//!   can be replaced at runtime.
//! - [`nodes`]: the heartbeat keys ([`nodes::NODE_KEY_PREFIX`], [`nodes::node_key`]), heartbeat
//!   decoding, and least-loaded placement ([`nodes::least_loaded`], [`nodes::pick_least_loaded`]).
//! - [`control`]: [`SfuControl`], create/close room, join (offer → answer), trickle, leave,
//!   subscriptions, stats, events, renegotiation answers.
//! - [`relay`]: [`Relay`], the task that answers a participant's renegotiation offers.
//! - [`error`]: the one error, [`SfuClientError`].
//!
//! [`place`] ties them together: it picks the least loaded live node from the store and
//! connects to it.
//!
//! Contracts:
//! - The key names and score here are the SFU's own: the service writes the heartbeat this
//!   crate reads (the SFU depends on this crate for them, never the other way round).
//! - Every call carries the [`Bearer`]'s current token; a status from the SFU is returned as
//!   [`SfuClientError::Status`] unchanged, so callers can match on its code.
//! - A [`Relay`] never stops at a failed renegotiation: it records the first error and goes on;
//!   it ends with the `Events` stream or when dropped.

pub mod bearer;
pub mod control;
pub mod error;
pub mod nodes;
pub mod relay;

use std::time::Duration;

use rethink_common::kv::KvStore;
use rethink_proto::v1::SfuNode;

pub use bearer::Bearer;
pub use control::SfuControl;
pub use error::SfuClientError;
pub use relay::{Relay, RelayOutcome, RenegotiationOffer};

/// Picks the least loaded live node from the heartbeats in `kv` and connects to it.
pub async fn place(
    kv: &dyn KvStore,
    bearer: Bearer,
    wait: Duration,
) -> Result<(SfuNode, SfuControl), SfuClientError> {
    let node = nodes::least_loaded(kv)
        .await?
        .ok_or(SfuClientError::NoNode)?;
    let control = SfuControl::connect_node(&node, bearer, wait).await?;
    Ok((node, control))
}
