//! Shared foundation of every rethink service.
//!
//! Layout:
//! - [`config`]: layered configuration (defaults → file → `RETHINK_*` env → flags), validated.
//! - [`telemetry`]: tracing, JSON logs, OTLP export, W3C trace-context propagation.
//! - [`lifecycle`]: shutdown on signals, readiness, `/healthz` `/readyz` `/metrics`.
//! - [`bus`]: the event bus (Redis pub/sub or in-memory) and its topic names.
//! - [`kv`]: the key-value store (Redis or in-memory) behind one trait.
//! - [`token`]: access-token claims and verification against the auth service's JWKS.
