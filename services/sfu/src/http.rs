//! The HTTP port: `/healthz`, `/readyz`, `/metrics` (forwarding counters, load gauges).

use axum::Router;
use rethink_common::lifecycle::{Health, ops_router};

/// Returns the router of the HTTP port.
pub fn router(health: Health) -> Router {
    ops_router(health)
}
