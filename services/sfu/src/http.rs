//! The HTTP routes of a node besides the ops endpoints (`/healthz`, `/readyz`, `/metrics` come
//! from `rethink_common::lifecycle::ops_router`).

use axum::Router;

/// Returns the node's own routes.
pub fn routes() -> Router {
    Router::new()
}
