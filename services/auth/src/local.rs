//! The auth service inside another process: in-memory store and bus, real HTTP and gRPC on
//! free loopback ports. Load generators use it to mint and verify real tokens without a
//! deployment; the services they start verify those tokens through [`LocalAuth::url`].

use std::net::SocketAddr;

use rethink_common::lifecycle::Shutdown;

use crate::{AuthConfig, AuthError, AuthService, Listeners};

/// A running in-process auth service; it stops when this value is dropped.
pub struct LocalAuth {
    service: AuthService,
    url: String,
    shutdown: Shutdown,
}

impl LocalAuth {
    /// Starts the service with `config` (its listen addresses are replaced by free loopback
    /// ports, its Redis setting ignored) and returns once it accepts connections.
    pub async fn start(config: AuthConfig) -> Result<Self, AuthError> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = AuthConfig {
            http_addr: loopback,
            grpc_addr: loopback,
            ..config
        };
        let backends = rethink_common::backends(None)
            .await
            .map_err(|e| AuthError::Internal(format!("in-memory backends: {e}")))?;
        let service = AuthService::new(config.clone(), backends.kv, backends.bus).await?;
        let io = |e: std::io::Error| AuthError::Internal(format!("binding loopback: {e}"));
        let listeners = Listeners::bind(&config).await.map_err(io)?;
        let url = format!("http://{}", listeners.http_addr().map_err(io)?);
        let shutdown = Shutdown::new();
        let stop = shutdown.clone();
        let served = service.clone();
        tokio::spawn(async move {
            if let Err(error) = crate::serve(served, listeners, stop.wait()).await {
                tracing::error!(%error, "in-process auth service failed");
            }
        });
        Ok(Self {
            service,
            url,
            shutdown,
        })
    }

    /// Returns the service, to create users and mint tokens directly.
    pub fn service(&self) -> &AuthService {
        &self.service
    }

    /// Returns the base URL of its HTTP port, `http://127.0.0.1:<port>` (JWKS, login).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for LocalAuth {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rethink_common::token::{Grants, HttpJwks, TokenVerifier, VerifierOptions};

    use super::*;

    #[tokio::test]
    async fn its_tokens_verify_against_the_keys_it_serves() {
        let auth = LocalAuth::start(AuthConfig::default()).await.unwrap();
        let grants: Grants = "rooms.admin".parse().unwrap();
        let token = auth
            .service()
            .issue("service:test", "test", grants, None)
            .unwrap()
            .token;
        // The way another process checks it: the JWK set over HTTP at `url`.
        let verifier = TokenVerifier::new(
            Arc::new(HttpJwks::new(auth.url())),
            VerifierOptions::default(),
        );
        let claims = verifier.verify(&token).await.unwrap();
        assert!(claims.grants.rooms.admin);
        assert_eq!(claims.sub, "service:test");
    }
}
