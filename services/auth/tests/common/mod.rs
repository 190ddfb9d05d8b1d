//! Test harness: a real auth service on loopback port 0, optionally on a real Redis.

#![allow(dead_code)]

use std::net::SocketAddr;

use rethink_auth::{AuthConfig, AuthService, Listeners};
use rethink_common::token::Grants;
use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub const PASSWORD: &str = "correct horse";

/// A running auth service.
pub struct TestAuth {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub service: AuthService,
    pub client: reqwest::Client,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), rethink_auth::AuthError>>>,
}

/// A config for tests: ports are bound by the harness, so the addresses are unused.
pub fn test_config(redis_url: Option<&str>) -> AuthConfig {
    let mut config = AuthConfig::default();
    config.redis.url = redis_url.map(str::to_string);
    config.drain_timeout_ms = 1000;
    config
}

impl TestAuth {
    /// Starts a service with users alice (user grants) and root (all grants) unless they exist.
    pub async fn start(config: AuthConfig) -> Self {
        let backends = rethink_common::backends(config.redis.url.as_deref())
            .await
            .expect("backends");
        Self::start_with(config, backends).await
    }

    /// Starts a service on the given bus and store (tests wrap them to inject faults).
    pub async fn start_with(config: AuthConfig, backends: rethink_common::Backends) -> Self {
        let service = AuthService::new(config, backends.kv, backends.bus)
            .await
            .expect("auth service");
        for (name, grants) in [("alice", Grants::user()), ("root", Grants::all())] {
            match service
                .create_user(name, PASSWORD, None, Some(grants))
                .await
            {
                Ok(_) | Err(rethink_auth::AuthError::UserExists(_)) => {}
                Err(e) => panic!("seeding {name}: {e}"),
            }
        }
        let listeners = Listeners {
            http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            grpc: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let http = listeners.http_addr().unwrap();
        let grpc = listeners.grpc_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(rethink_auth::serve(
            service.clone(),
            listeners,
            stop.clone().cancelled_owned(),
        ));
        Self {
            http,
            grpc,
            service,
            client: reqwest::Client::new(),
            stop,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// POSTs a raw body to `path`; returns status, headers and the JSON body (Null if none).
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        split(response).await
    }

    /// Logs in with `X-Forwarded-For: <forwarded_for>`; returns status, headers and JSON.
    pub async fn login_via(
        &self,
        forwarded_for: &str,
        username: &str,
        password: &str,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let body = serde_json::json!({"username": username, "password": password});
        let response = self
            .client
            .post(self.url("/auth/login"))
            .header("content-type", "application/json")
            .header("x-forwarded-for", forwarded_for)
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        split(response).await
    }

    /// Returns a gRPC client of this service.
    pub async fn grpc_client(
        &self,
    ) -> rethink_proto::v1::auth_client::AuthClient<tonic::transport::Channel> {
        rethink_proto::v1::auth_client::AuthClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("grpc connect")
    }

    pub async fn login(&self, username: &str, password: &str) -> (u16, Value) {
        let body = serde_json::json!({"username": username, "password": password});
        let (status, _, json) = self.post_raw("/auth/login", body.to_string()).await;
        (status, json)
    }

    /// Logs in and returns the token, panicking on failure.
    pub async fn token(&self, username: &str) -> String {
        let (status, json) = self.login(username, PASSWORD).await;
        assert_eq!(status, 200, "login {username}: {json}");
        json["token"].as_str().unwrap().to_string()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, _, json) = split(request.send().await.expect("request")).await;
        (status, json)
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestAuth {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn split(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, json)
}

/// Asserts the `{"error":{"code","message"}}` shape and returns the code.
pub fn error_code(json: &Value) -> String {
    let error = &json["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no error message in {json}"
    );
    error["code"].as_str().expect("error code").to_string()
}

/// Wraps `message` in a request carrying `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Polls `verifier` until it refuses `token` (bounded); returns the refusal.
pub async fn refused(
    verifier: &rethink_common::token::TokenVerifier,
    token: &str,
) -> rethink_common::token::TokenError {
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match verifier.verify(token).await {
                Err(e) => return e,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .expect("the verifier refuses the token within 10 s")
}
