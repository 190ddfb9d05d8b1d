//! The browser-facing HTTP surface under `/auth`.
//!
//! | route | does |
//! |---|---|
//! | `POST /auth/login` | `{"username","password"}` → `{"token","token_type":"Bearer","expires_at"}` |
//! | `POST /auth/token` | `{"key_id","secret","grants"?,"subject"?,"name"?,"ttl_secs"?}` → token |
//! | `GET /auth/.well-known/jwks.json` | the public signing keys |
//! | `GET /auth/me` | the bearer token's claims |
//! | `POST /auth/revoke` | revokes the bearer token |
//!
//! Every error is `{"error":{"code","message"}}`: handler errors through [`AuthError`], and
//! axum's and tower's own plain responses (unknown route, wrong method, body too large,
//! timeout) through the [`json_errors`] middleware. Body size limit and request timeout are
//! tower layers; logins are throttled inside [`AuthService::login`] (see [`crate::throttle`]),
//! with the client address from [`crate::throttle::client_addr`]: the socket peer, or the
//! `X-Forwarded-For` hop behind a configured trusted proxy.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, FromRef, FromRequest, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use rethink_common::{
    error::ErrorCode,
    token::{Authenticated, Grants, TokenVerifier},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

use crate::{AuthError, AuthService, error::error_body, service::IssuedToken, throttle};

impl FromRef<AuthService> for TokenVerifier {
    fn from_ref(service: &AuthService) -> Self {
        service.verifier()
    }
}

/// Returns the `/auth/*` routes with their limits; merge it into any router (it sets no
/// fallback, so it merges with other services' routers).
pub fn router(service: AuthService) -> Router {
    let http = &service.config().http;
    let max_body = http.max_body_bytes;
    let timeout = Duration::from_millis(http.request_timeout_ms);
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/token", post(mint))
        .route("/auth/.well-known/jwks.json", get(jwks))
        .route("/auth/me", get(me))
        .route("/auth/revoke", post(revoke))
        .route("/auth/{*rest}", any(not_found))
        .with_state(service)
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(middleware::map_response(json_errors))
}

/// A JSON body read regardless of `Content-Type` (curl's `-d` sends a form type); parse
/// failures are 400 and oversized bodies 413, both in the JSON error shape.
struct JsonBody<T>(T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AuthError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AuthError::TooLarge
            } else {
                AuthError::BadRequest(format!("cannot read body: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| AuthError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

#[derive(Deserialize)]
struct LoginBody {
    username: String,
    password: String,
}

/// What login and minting answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenBody {
    /// The compact JWT.
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl From<IssuedToken> for TokenBody {
    fn from(issued: IssuedToken) -> Self {
        Self {
            token: issued.token,
            token_type: "Bearer".into(),
            expires_at: issued.claims.exp,
        }
    }
}

async fn login(
    State(service): State<AuthService>,
    request: Request,
) -> Result<Json<TokenBody>, AuthError> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let forwarded = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    let client = throttle::client_addr(peer, forwarded, service.throttle().trusted_proxies());
    let JsonBody(body) = JsonBody::<LoginBody>::from_request(request, &()).await?;
    if body.username.is_empty() || body.password.is_empty() {
        return Err(AuthError::BadRequest(
            "username and password are required".into(),
        ));
    }
    let issued = service
        .login(&body.username, &body.password, client)
        .await?;
    Ok(Json(issued.into()))
}

/// Grants in a request: a scope string (`"rooms.join,room=a"`) or the claims' object shape.
#[derive(Deserialize)]
#[serde(untagged)]
enum GrantsInput {
    Scopes(String),
    Full(Grants),
}

#[derive(Deserialize)]
struct MintBody {
    key_id: String,
    secret: String,
    #[serde(default)]
    grants: Option<GrantsInput>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
}

async fn mint(
    State(service): State<AuthService>,
    JsonBody(body): JsonBody<MintBody>,
) -> Result<Json<TokenBody>, AuthError> {
    let requested = match body.grants {
        None => None,
        Some(GrantsInput::Full(grants)) => Some(grants),
        Some(GrantsInput::Scopes(scopes)) => {
            Some(scopes.parse::<Grants>().map_err(AuthError::BadRequest)?)
        }
    };
    let issued = service
        .mint_with_api_key(
            &body.key_id,
            &body.secret,
            requested.as_ref(),
            body.subject.as_deref(),
            body.name.as_deref(),
            body.ttl_secs.map(Duration::from_secs),
        )
        .await?;
    Ok(Json(issued.into()))
}

async fn jwks(State(service): State<AuthService>) -> Result<Response, AuthError> {
    let set = service.jwks().await?;
    let mut response = Json(set).into_response();
    // Verifiers refetch on unknown kids anyway; a short cache keeps rotation visible.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(response)
}

async fn me(Authenticated(claims): Authenticated) -> Response {
    Json(claims).into_response()
}

async fn revoke(
    State(service): State<AuthService>,
    Authenticated(claims): Authenticated,
) -> Result<Json<serde_json::Value>, AuthError> {
    service.revoke(&claims).await?;
    Ok(Json(serde_json::json!({"revoked": claims.jti})))
}

/// Answers unknown routes with a JSON 404; usable as the fallback of a whole server.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        error_body(ErrorCode::NotFound, "no such route"),
    )
        .into_response()
}

/// Rewrites error responses that are not JSON (from axum's routing, tower's limits and
/// timeouts) into `{"error":{"code","message"}}`, keeping status and headers such as `Allow`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // WebSocket upgrades and the like never carry error bodies, so rewriting them is safe.
    if is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => (ErrorCode::MethodNotAllowed, "method not allowed here"),
        StatusCode::REQUEST_TIMEOUT => (ErrorCode::Timeout, "request took too long"),
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (ErrorCode::UnsupportedMediaType, "send a JSON body"),
        StatusCode::TOO_MANY_REQUESTS => (ErrorCode::RateLimited, "too many requests"),
        StatusCode::SERVICE_UNAVAILABLE => (ErrorCode::Unavailable, "service unavailable"),
        s if s.is_server_error() => (ErrorCode::Internal, "internal error"),
        _ => (ErrorCode::BadRequest, "bad request"),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let body = error_body(code, message).into_response();
    let (body_parts, body) = body.into_parts();
    parts.headers.extend(body_parts.headers);
    Response::from_parts(parts, body)
}
