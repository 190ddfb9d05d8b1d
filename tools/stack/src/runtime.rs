//! The browser runtime's origin: a second listener that serves only the runtime's static files
//! (`web/runtime/`: the core page, its workers, the hyperty catalogue, the service worker) and
//! `/config.json`, which tells the core where the services are.
//!
//! Contracts: nothing else is served here (no `/auth`, no `/msg`, no app pages), so the runtime
//! origin holds only what the runtime provider ships; every answer says `Cache-Control:
//! no-cache` because the runtime's service worker, not the HTTP cache, decides what a warm
//! start reuses (docs/runtime.md).

use axum::{Json, Router, http::HeaderValue, response::Response, routing::get};
use serde_json::json;
use tower_http::services::ServeDir;

/// Returns the runtime origin's router: `GET /config.json` and the files of `dir`.
pub fn router(dir: std::path::PathBuf, services_url: String) -> Router {
    let config = json!({ "services": services_url });
    Router::new()
        .route("/config.json", get(move || async move { Json(config) }))
        .fallback_service(ServeDir::new(dir).append_index_html_on_directories(true))
        .layer(axum::middleware::map_response(no_cache))
}

async fn no_cache(mut response: Response) -> Response {
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    response
}
