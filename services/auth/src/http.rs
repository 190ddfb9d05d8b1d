//! The browser-facing HTTP surface under `/auth`.
//!
//! | route | does |
//! |---|---|
//! | `POST /auth/login` | `{"username","password"}` → `{"token","token_type":"Bearer","expires_at"}`; cross-origin only from `http.cors_origins` |
//! | `POST /auth/token` | `{"key_id","secret","grants"?,"subject"?,"name"?,"ttl_secs"?}` → token |
//! | `GET /auth/.well-known/jwks.json` | the public signing keys |
//! | `GET /auth/me` | the bearer token's claims |
//! | `POST /auth/revoke` | revokes the bearer token |
//!
//! Every error is `{"error":{"code","message"}}`: handler errors through [`AuthError`], and
//! axum's and tower's own plain responses (unknown route, wrong method, body too large,
//! timeout) through `rethink_common::error::json_errors`, which the listener applies. The body
//! size limit is a tower layer here, the request timeout the listener's; logins are throttled inside [`AuthService::login`] (see [`crate::throttle`]),
//! with the client address from [`crate::throttle::client_addr`]: the socket peer, or the
//! `X-Forwarded-For` hop behind a configured trusted proxy.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{ConnectInfo, FromRef, FromRequest, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use rethink_common::{
    error::ErrorCode,
    token::{Authenticated, Grants, TokenVerifier},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    limit::RequestBodyLimitLayer,
};

use crate::{AuthError, AuthService, error::error_body, service::IssuedToken, throttle};

impl FromRef<AuthService> for TokenVerifier {
    fn from_ref(service: &AuthService) -> Self {
        service.verifier()
    }
}

/// Returns the `/auth/*` routes with their limits; merge it into any router (it sets no
/// fallback, so it merges with other services' routers).
pub fn router(service: AuthService) -> Router {
    let max_body = service.config().http.max_body_bytes;
    let login_route = post(login).layer(login_cors(&service.config().http.cors_origins));
    Router::new()
        .route("/auth/login", login_route)
        .route("/auth/token", post(mint))
        .route("/auth/.well-known/jwks.json", get(jwks))
        .route("/auth/me", get(me))
        .route("/auth/revoke", post(revoke))
        .route("/auth/{*rest}", any(not_found))
        .with_state(service)
        .layer(RequestBodyLimitLayer::new(max_body))
}

/// Lets the listed origins (the browser runtime's) post a login and read the token; no other
/// route answers cross-origin, and no origin outside the list gets CORS headers. Origins were
/// checked by `AuthConfig::validate`; one that still fails to parse is skipped.
fn login_cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::POST])
        .allow_headers([header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600))
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
