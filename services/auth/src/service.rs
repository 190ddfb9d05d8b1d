//! The auth core shared by the HTTP and gRPC surfaces and the CLI: login, minting, revocation,
//! user and key administration.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use jsonwebtoken::jwk::JwkSet;
use rethink_common::{
    bus::{self, EventBus, topics},
    kv::KvStore,
    token::{
        Claims, Grants, JwksSource, REVOKED_KEY_PREFIX, TOKEN_REVOKED_EVENT, TokenError,
        TokenRevoked, TokenVerifier, VerifierOptions, unix_now,
    },
};

use crate::{
    AuthConfig, AuthError,
    keys::KeyRing,
    throttle::Throttle,
    users::{ApiKeyRecord, UserRecord, UserStore},
};

/// A freshly minted token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWT.
    pub token: String,
    /// Its claims.
    pub claims: Claims,
}

/// The auth service: cheap to clone, shared by every surface.
#[derive(Clone)]
pub struct AuthService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("source", &self.inner.source)
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: AuthConfig,
    kv: Arc<dyn KvStore>,
    bus: Arc<dyn EventBus>,
    keys: KeyRing,
    users: UserStore,
    verifier: TokenVerifier,
    throttle: Throttle,
    /// `Event.source` of events this instance publishes.
    source: String,
}

/// Lets the service's own verifier read keys straight from the key ring (no HTTP to itself).
struct RingSource(KeyRing);

#[async_trait]
impl JwksSource for RingSource {
    async fn fetch(&self) -> Result<JwkSet, TokenError> {
        self.0
            .reload()
            .await
            .map_err(|e| TokenError::KeysUnavailable(e.to_string()))?;
        Ok(self.0.jwks())
    }
}

impl AuthService {
    /// Loads (or creates) the signing keys and starts following revocations on `bus`.
    pub async fn new(
        config: AuthConfig,
        kv: Arc<dyn KvStore>,
        bus: Arc<dyn EventBus>,
    ) -> Result<Self, AuthError> {
        let keys = KeyRing::load_or_create(kv.clone(), config.tokens.ttl()).await?;
        let verifier = TokenVerifier::new(
            Arc::new(RingSource(keys.clone())),
            VerifierOptions {
                audience: config.tokens.audience.clone(),
                // Unknown kids come from another instance's rotation; rereading is one GET.
                min_refetch_interval: Duration::from_secs(1),
                ..VerifierOptions::default()
            },
        );
        verifier
            .follow_revocations(bus.as_ref())
            .await
            .map_err(|e| AuthError::Internal(format!("subscribing to revocations: {e}")))?;
        verifier.load_revocations(kv.as_ref()).await?;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        Ok(Self {
            inner: Arc::new(Inner {
                throttle: Throttle::new(config.throttle.clone()),
                users: UserStore::new(kv.clone()),
                source: format!("auth/{}", &instance[..8]),
                config,
                kv,
                bus,
                keys,
                verifier,
            }),
        })
    }

    /// Returns the configuration the service runs with.
    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// Returns a verifier that shares keys and revocations with this service (for services
    /// running in the same process, like the all-in-one stack).
    pub fn verifier(&self) -> TokenVerifier {
        self.inner.verifier.clone()
    }

    /// Returns the failed-login throttle.
    pub fn throttle(&self) -> &Throttle {
        &self.inner.throttle
    }

    /// Returns the user store.
    pub fn users(&self) -> &UserStore {
        &self.inner.users
    }

    /// Returns the signing keys.
    pub fn keys(&self) -> &KeyRing {
        &self.inner.keys
    }

    /// Returns the published key set, reread from the store so keys rotated by other instances
    /// appear.
    pub async fn jwks(&self) -> Result<JwkSet, AuthError> {
        self.inner.keys.reload().await?;
        Ok(self.inner.keys.jwks())
    }

    /// Mints a token for `sub` with `grants`, valid for `ttl` (capped at the configured
    /// lifetime).
    pub fn issue(
        &self,
        sub: &str,
        name: &str,
        grants: Grants,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, AuthError> {
        let max = self.inner.config.tokens.ttl();
        let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(max).min(max);
        let now = unix_now();
        let claims = Claims {
            sub: sub.to_string(),
            name: name.to_string(),
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs() as i64,
            jti: uuid::Uuid::new_v4().to_string(),
            aud: self.inner.config.tokens.audience.clone(),
            grants,
        };
        let token = self.inner.keys.sign(&claims)?;
        metrics::counter!("rethink_auth_tokens_issued_total").increment(1);
        Ok(IssuedToken { token, claims })
    }

    /// Checks a username and password and mints the user's token.
    pub async fn login(&self, username: &str, password: &str) -> Result<IssuedToken, AuthError> {
        let user = match self.inner.users.check(username, password).await {
            Ok(user) => user,
            Err(e) => {
                metrics::counter!("rethink_auth_login_failures_total").increment(1);
                return Err(e);
            }
        };
        self.issue_for_user(&user)
    }

    /// Mints a token for an existing user without a password (CLI, admin).
    pub async fn mint_for_user(
        &self,
        username: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, AuthError> {
        let user = self
            .inner
            .users
            .get(username)
            .await?
            .ok_or_else(|| AuthError::UserNotFound(username.to_string()))?;
        self.issue(
            &format!("user:{}", user.username),
            &user.display_name,
            user.grants.clone(),
            ttl,
        )
    }

    fn issue_for_user(&self, user: &UserRecord) -> Result<IssuedToken, AuthError> {
        self.issue(
            &format!("user:{}", user.username),
            &user.display_name,
            user.grants.clone(),
            None,
        )
    }

    /// Mints a token with an API key: grants are the key's intersected with `requested`.
    pub async fn mint_with_api_key(
        &self,
        key_id: &str,
        secret: &str,
        requested: Option<&Grants>,
        subject: Option<&str>,
        name: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, AuthError> {
        let key = self.inner.users.check_api_key(key_id, secret).await?;
        let grants = match requested {
            Some(requested) => key.grants.intersect(requested),
            None => key.grants.clone(),
        };
        let subject = subject.filter(|s| !s.is_empty()).unwrap_or(&key.subject);
        if subject.len() > 128 {
            return Err(AuthError::BadRequest(
                "subject longer than 128 characters".into(),
            ));
        }
        let name = name.filter(|s| !s.is_empty()).unwrap_or(subject);
        self.issue(subject, name, grants, ttl)
    }

    /// Verifies a token with the service's own keys and revocations.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        Ok(self.inner.verifier.verify(token).await?)
    }

    /// Revokes the token with these claims: stored until it expires, refused here at once and
    /// announced on the bus so every verifier refuses it.
    pub async fn revoke(&self, claims: &Claims) -> Result<(), AuthError> {
        let now = unix_now();
        let ttl = Duration::from_secs((claims.exp - now).max(1) as u64 + 300);
        self.inner.verifier.revoke_local(&claims.jti, claims.exp);
        self.inner
            .kv
            .set(
                &format!("{REVOKED_KEY_PREFIX}{}", claims.jti),
                Bytes::from(claims.exp.to_string()),
                Some(ttl),
            )
            .await?;
        let payload = TokenRevoked {
            jti: claims.jti.clone(),
            exp: claims.exp,
        };
        let event = bus::new_event(TOKEN_REVOKED_EVENT, &self.inner.source, &payload);
        bus::publish_event(&*self.inner.bus, topics::AUTH_REVOCATIONS, &event)
            .await
            .map_err(|e| AuthError::Internal(format!("publishing revocation: {e}")))?;
        metrics::counter!("rethink_auth_tokens_revoked_total").increment(1);
        tracing::info!(jti = %claims.jti, sub = %claims.sub, "token revoked");
        Ok(())
    }

    /// Creates a user.
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
        display_name: Option<&str>,
        grants: Option<Grants>,
    ) -> Result<UserRecord, AuthError> {
        self.inner
            .users
            .create(
                username,
                password,
                display_name,
                grants.unwrap_or_else(Grants::user),
            )
            .await
    }

    /// Creates an API key; returns the record and its secret.
    pub async fn create_api_key(
        &self,
        subject: &str,
        grants: Grants,
    ) -> Result<(ApiKeyRecord, String), AuthError> {
        self.inner.users.create_api_key(subject, grants).await
    }

    /// Rotates the signing key when it is older than the configured interval; runs until
    /// `shutdown` resolves.
    pub async fn run_key_rotation(&self, shutdown: impl Future<Output = ()>) {
        let every = self.inner.config.tokens.rotation_secs;
        if every == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(every.clamp(1, 60)));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.inner.keys.reload().await {
                tracing::warn!(error = %e, "reloading signing keys");
                continue;
            }
            if self.inner.keys.current_age() >= Duration::from_secs(every)
                && let Err(e) = self.inner.keys.rotate().await
            {
                tracing::warn!(error = %e, "rotating signing key");
            }
        }
    }
}
