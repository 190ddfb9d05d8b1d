//! Shared foundation of every rethink service.
//!
//! Layout:
//! - [`config`]: layered configuration (defaults → file → `RETHINK_*` env → flags), validated.
//! - [`error`]: the one table of error codes and the one JSON error body of every API.
//! - [`telemetry`]: tracing, JSON logs, OTLP export, W3C trace-context propagation.
//! - [`lifecycle`]: shutdown on signals, readiness, `/healthz` `/readyz` `/metrics`.
//! - [`listener`]: bounds on every listening socket (connections, header and request timeouts).
//! - [`service`]: the one shape of every service (context in, parts out) and the serve loop.
//! - [`bus`]: the event bus (Redis pub/sub or in-memory) and its topic names.
//! - [`kv`]: the key-value store (Redis or in-memory) behind one trait.
//! - [`token`]: access-token claims and grants, verification against the auth service's JWKS,
//!   the revocation feed, and the renewable credential of long-lived sessions.
//! - [`backends()`]: one call that gives a service its bus and store (Redis or in-memory).
//! - `testing` (feature `testing`): a real `redis-server` on a free port and headless Chromium
//!   over the DevTools protocol, for tests.
//!
//! Contracts: everything here is runtime-agnostic in its types but expects a tokio runtime;
//! nothing that arrives from the network panics; errors are one `thiserror` enum per module.

mod backends;
pub mod bus;
pub mod config;
pub mod error;
pub mod kv;
pub mod lifecycle;
pub mod listener;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token;

pub use backends::{BackendError, Backends, backends};
