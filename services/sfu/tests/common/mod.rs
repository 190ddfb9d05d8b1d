//! What only the SFU's own tests need besides the shared test bed (`rethink-testbed`): the
//! str0m client peer ([`peer`]), the shape of the SFU's HTTP error bodies, and a page server
//! for the Chromium tests.
//!
//! Services, tokens and the control client come from `rethink_testbed` and
//! `rethink_sfu_client`.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod peer;

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Reads an error body `{"error":{"code","message"}}`; returns `(code, message)`. Panics when
/// the body has another shape.
pub fn error_body(text: &str) -> (String, String) {
    let json: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("error body {text:?}: {e}"));
    let field = |name: &str| {
        json["error"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no error.{name} in {text}"))
            .to_owned()
    };
    (field("code"), field("message"))
}

/// Reads an error response: its status and the code and message of its JSON body.
pub async fn http_error(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let (code, message) = error_body(&text);
    (status, code, message)
}

/// Serves one HTML page at `/` on a free loopback port (127.0.0.1 is a secure context, so
/// the page may use getUserMedia); returns its address.
pub async fn serve_page(html: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(html) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
