//! The auth core shared by the HTTP and gRPC surfaces and the CLI: login, minting, revocation,
//! user and key administration.
//!
//! Contracts:
//! - Every token minted through this service's surfaces (login, API keys, `mint_for_user`) is
//!   indexed under `rethink:auth:issued:<sub>:<jti>` (value `<exp> <key id or ->`, TTL until it
//!   expires) BEFORE it is signed; a token whose index entry cannot be written is not handed
//!   out. Deleting a user, changing their password or their grants revokes every indexed token
//!   of `user:<name>`; revoking an API key revokes every token it minted. Only [`AuthService::issue`]
//!   (for embedders that mint service tokens in process) skips the index.
//! - A login re-reads the user after indexing its token and revokes the token when the user was
//!   deleted or changed meanwhile. The admin side writes the user first and scans the index
//!   after, so with one store (Redis executes commands in order) one of the two sees the
//!   other: a token is never left valid across a delete or password change.
//! - A revocation is applied locally, then stored (failure is an error to the caller), then
//!   published. A publish that fails is queued and retried by a background task with backoff
//!   (50 ms doubling to 5 s) until it succeeds or the token would have expired anyway; the
//!   queue holds [`RETRY_QUEUE`] revocations (beyond that they stay in the store only, and
//!   `rethink_auth_revocation_publish_dropped_total` counts them).
//! - Logins go through the [`Throttle`] (see [`crate::throttle`]): a slot is reserved before the
//!   password is checked.

use std::{net::IpAddr, sync::Arc, time::Duration};

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

use tokio::sync::{mpsc, watch};

use crate::{
    AuthConfig, AuthError,
    keys::KeyRing,
    throttle::Throttle,
    users::{ApiKeyRecord, UserRecord, UserStore, check_subject, normalize_username},
};

/// Key prefix of the index of issued tokens: `rethink:auth:issued:<sub>:<jti>`.
pub const ISSUED_PREFIX: &str = "rethink:auth:issued:";
/// Revocations whose publish failed that wait for a retry at most.
pub const RETRY_QUEUE: usize = 10_000;
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);

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
    /// Revocations whose publish failed, for the retry task.
    retries: mpsc::Sender<TokenRevoked>,
    /// Dropped with the service; stops the retry task.
    _stop_retries: watch::Sender<()>,
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
        let source = format!("auth/{}", &instance[..8]);
        let (retries, queue) = mpsc::channel(RETRY_QUEUE);
        let (stop_retries, stopped) = watch::channel(());
        tokio::spawn(retry_publishes(bus.clone(), source.clone(), queue, stopped));
        Ok(Self {
            inner: Arc::new(Inner {
                throttle: Throttle::new(config.throttle.clone(), kv.clone()),
                users: UserStore::new(kv.clone()),
                source,
                config,
                kv,
                bus,
                keys,
                verifier,
                retries,
                _stop_retries: stop_retries,
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

    /// Returns the bus and store the service runs on.
    pub fn backends(&self) -> rethink_common::Backends {
        rethink_common::Backends {
            bus: self.inner.bus.clone(),
            kv: self.inner.kv.clone(),
        }
    }

    /// Returns the login throttle.
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
    /// lifetime), without indexing it: user deletion and password changes do not revoke it.
    /// For embedders minting service tokens in process; every surface of this service uses the
    /// indexed path.
    pub fn issue(
        &self,
        sub: &str,
        name: &str,
        grants: Grants,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, AuthError> {
        let claims = self.claims(sub, name, grants, ttl);
        let token = self.inner.keys.sign(&claims)?;
        metrics::counter!("rethink_auth_tokens_issued_total").increment(1);
        Ok(IssuedToken { token, claims })
    }

    /// Mints a token and indexes it under its subject (and the API key that minted it) first,
    /// so that it can be revoked with the subject or the key.
    async fn issue_indexed(
        &self,
        sub: &str,
        name: &str,
        grants: Grants,
        ttl: Option<Duration>,
        key_id: Option<&str>,
    ) -> Result<IssuedToken, AuthError> {
        let claims = self.claims(sub, name, grants, ttl);
        let keep = Duration::from_secs((claims.exp - unix_now()).max(1) as u64 + 60);
        self.inner
            .kv
            .set(
                &format!("{ISSUED_PREFIX}{}:{}", claims.sub, claims.jti),
                Bytes::from(format!("{} {}", claims.exp, key_id.unwrap_or("-"))),
                Some(keep),
            )
            .await?;
        let token = self.inner.keys.sign(&claims)?;
        metrics::counter!("rethink_auth_tokens_issued_total").increment(1);
        Ok(IssuedToken { token, claims })
    }

    fn claims(&self, sub: &str, name: &str, grants: Grants, ttl: Option<Duration>) -> Claims {
        let max = self.inner.config.tokens.ttl();
        let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(max).min(max);
        let now = unix_now();
        Claims {
            sub: sub.to_string(),
            name: name.to_string(),
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs() as i64,
            jti: uuid::Uuid::new_v4().to_string(),
            aud: self.inner.config.tokens.audience.clone(),
            grants,
        }
    }

    /// Checks a username and password from client address `client` (throttled, see
    /// [`crate::throttle`]) and mints the user's token, carrying the user's stored grants.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<IssuedToken, AuthError> {
        let throttle = &self.inner.throttle;
        let attempt = throttle.begin(Some(username), client).await?;
        match self.inner.users.check(username, password).await {
            Ok(user) => {
                throttle.succeeded(attempt).await;
                self.issue_for_user(&user, None).await
            }
            Err(AuthError::InvalidCredentials) => {
                throttle.failed(attempt);
                metrics::counter!("rethink_auth_login_failures_total").increment(1);
                Err(AuthError::InvalidCredentials)
            }
            Err(e) => {
                throttle.abandoned(attempt).await;
                Err(e)
            }
        }
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
        self.issue_for_user(&user, ttl).await
    }

    /// Mints `user`'s token, then makes sure the user was not deleted or changed while it was
    /// minted (see the module contracts); if so, the token is revoked and refused.
    async fn issue_for_user(
        &self,
        user: &UserRecord,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, AuthError> {
        let issued = self
            .issue_indexed(
                &format!("user:{}", user.username),
                &user.display_name,
                user.grants.clone(),
                ttl,
                None,
            )
            .await?;
        let now = self.inner.users.get(&user.username).await?;
        let unchanged = now.as_ref().is_some_and(|now| {
            now.password_hash == user.password_hash && now.grants == user.grants
        });
        if !unchanged {
            self.revoke(&issued.claims).await?;
            return Err(AuthError::InvalidCredentials);
        }
        Ok(issued)
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
        let subject = check_subject(subject.filter(|s| !s.is_empty()).unwrap_or(&key.subject))?;
        if !key.may_mint_for(subject) {
            return Err(AuthError::Forbidden(format!(
                "api key {} may not mint tokens for subject {subject:?}",
                key.key_id
            )));
        }
        let name: String = name
            .filter(|s| !s.is_empty())
            .unwrap_or(subject)
            .chars()
            .take(128)
            .collect();
        self.issue_indexed(subject, &name, grants, ttl, Some(&key.key_id))
            .await
    }

    /// Verifies a token with the service's own keys and revocations.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        Ok(self.inner.verifier.verify(token).await?)
    }

    /// Revokes the token with these claims: stored until it expires, refused here at once and
    /// announced on the bus so every verifier refuses it.
    /// A publish that fails is retried in the background (see the module contracts).
    pub async fn revoke(&self, claims: &Claims) -> Result<(), AuthError> {
        self.revoke_jti(&claims.jti, claims.exp, &claims.sub).await
    }

    async fn revoke_jti(&self, jti: &str, exp: i64, sub: &str) -> Result<(), AuthError> {
        let now = unix_now();
        let ttl = Duration::from_secs((exp - now).max(1) as u64 + 300);
        self.inner.verifier.revoke_local(jti, exp);
        self.inner
            .kv
            .set(
                &format!("{REVOKED_KEY_PREFIX}{jti}"),
                Bytes::from(exp.to_string()),
                Some(ttl),
            )
            .await?;
        let payload = TokenRevoked {
            jti: jti.to_string(),
            exp,
        };
        if let Err(e) = publish_revocation(&*self.inner.bus, &self.inner.source, &payload).await {
            tracing::warn!(error = %e, %jti, "publishing revocation failed; retrying in the background");
            metrics::counter!("rethink_auth_revocation_publish_retries_total").increment(1);
            if self.inner.retries.try_send(payload).is_err() {
                tracing::error!(%jti, "revocation retry queue full; the revocation is only stored");
                metrics::counter!("rethink_auth_revocation_publish_dropped_total").increment(1);
            }
        }
        // The index entry has served its purpose.
        let _ = self
            .inner
            .kv
            .delete(&format!("{ISSUED_PREFIX}{sub}:{jti}"))
            .await;
        metrics::counter!("rethink_auth_tokens_revoked_total").increment(1);
        tracing::info!(%jti, %sub, "token revoked");
        Ok(())
    }

    /// Revokes every indexed token whose index entry matches: of subject `sub` (exactly), and
    /// when `key_id` is given, minted by that key. Returns how many were revoked.
    async fn revoke_indexed(
        &self,
        sub: Option<&str>,
        key_id: Option<&str>,
    ) -> Result<usize, AuthError> {
        let prefix = match sub {
            Some(sub) => format!("{ISSUED_PREFIX}{sub}:"),
            None => ISSUED_PREFIX.to_string(),
        };
        let mut count = 0;
        for (key, value) in self.inner.kv.scan_prefix(&prefix).await? {
            let Some(rest) = key.strip_prefix(ISSUED_PREFIX) else {
                continue;
            };
            // jtis are UUIDs: the subject is everything before the last ':'.
            let Some((token_sub, jti)) = rest.rsplit_once(':') else {
                continue;
            };
            if sub.is_some_and(|sub| sub != token_sub) {
                continue;
            }
            let text = String::from_utf8_lossy(&value);
            let mut parts = text.split(' ');
            let exp = parts.next().and_then(|e| e.parse::<i64>().ok());
            let minted_by = parts.next();
            if key_id.is_some() && key_id != minted_by {
                continue;
            }
            let exp = exp.unwrap_or_else(|| unix_now() + self.inner.config.tokens.ttl_secs as i64);
            self.revoke_jti(jti, exp, token_sub).await?;
            count += 1;
        }
        Ok(count)
    }

    /// Revokes every token of user `username`; returns how many.
    pub async fn revoke_user_tokens(&self, username: &str) -> Result<usize, AuthError> {
        let username = normalize_username(username)?;
        let count = self
            .revoke_indexed(Some(&format!("user:{username}")), None)
            .await?;
        if count > 0 {
            tracing::info!(%username, count, "revoked the user's tokens");
        }
        Ok(count)
    }

    /// Deletes a user and revokes every token of theirs; returns false when there was none.
    pub async fn delete_user(&self, username: &str) -> Result<bool, AuthError> {
        let deleted = self.inner.users.delete(username).await?;
        // Also when there was no record: a login racing a delete may have indexed a token.
        self.revoke_user_tokens(username).await?;
        Ok(deleted)
    }

    /// Replaces a user's password and revokes every token of theirs.
    pub async fn set_password(&self, username: &str, password: &str) -> Result<(), AuthError> {
        self.inner.users.set_password(username, password).await?;
        self.revoke_user_tokens(username).await?;
        Ok(())
    }

    /// Replaces a user's grants and revokes their tokens (which carry the old grants); the next
    /// login carries the new ones.
    pub async fn set_user_grants(
        &self,
        username: &str,
        grants: Grants,
    ) -> Result<UserRecord, AuthError> {
        let user = self.inner.users.set_grants(username, grants).await?;
        self.revoke_user_tokens(&user.username).await?;
        Ok(user)
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

    /// Creates an API key minting for `subject` by default and for the `subjects` patterns
    /// (`camera:*`, exact names) on request; returns the record and its secret.
    pub async fn create_api_key(
        &self,
        subject: &str,
        subjects: &[String],
        grants: Grants,
    ) -> Result<(ApiKeyRecord, String), AuthError> {
        self.inner
            .users
            .create_api_key(subject, subjects, grants)
            .await
    }

    /// Revokes an API key and every token it minted; returns false when there was no such key.
    pub async fn revoke_api_key(&self, key_id: &str) -> Result<bool, AuthError> {
        let existed = self.inner.users.revoke_api_key(key_id).await?;
        if existed {
            let count = self.revoke_indexed(None, Some(key_id)).await?;
            tracing::info!(%key_id, tokens = count, "api key revoked");
        }
        Ok(existed)
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

async fn publish_revocation(
    bus: &dyn EventBus,
    source: &str,
    payload: &TokenRevoked,
) -> Result<(), bus::BusError> {
    let event = bus::new_event(TOKEN_REVOKED_EVENT, source, payload);
    bus::publish_event(bus, topics::AUTH_REVOCATIONS, &event).await
}

/// Publishes queued revocations in order, each retried with backoff until it is out or its
/// token has expired (then no verifier accepts it anyway); ends when the service is dropped.
async fn retry_publishes(
    bus: Arc<dyn EventBus>,
    source: String,
    mut queue: mpsc::Receiver<TokenRevoked>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let revoked = tokio::select! {
            _ = stopped.changed() => return,
            revoked = queue.recv() => match revoked {
                Some(revoked) => revoked,
                None => return,
            },
        };
        let mut backoff = RETRY_BACKOFF_MIN;
        loop {
            tokio::select! {
                _ = stopped.changed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            if revoked.exp + 300 < unix_now() {
                break;
            }
            match publish_revocation(&*bus, &source, &revoked).await {
                Ok(()) => {
                    tracing::info!(jti = %revoked.jti, "revocation published after retrying");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, jti = %revoked.jti, "revocation publish failed again");
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }
}
