//! [`Credential`]: the token a long-lived session was opened with, which ends the session when
//! it lapses and which its owner may replace with a fresher one.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::watch;

use super::{Claims, TokenError, TokenVerifier};

/// A session's token. Cheap to clone; clones share the current token.
///
/// WebSocket connections, gRPC streams and media sessions hold one and wait on
/// [`Credential::lapsed`] next to their work, so a revocation or an expiry ends them within the
/// time the verifier takes to learn it. [`Credential::renew`] replaces the token with a newer one
/// of the same subject, so a session can outlive its first token.
#[derive(Clone)]
pub struct Credential {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: TokenVerifier,
    claims: watch::Sender<Claims>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let claims = self.inner.claims.borrow();
        f.debug_struct("Credential")
            .field("sub", &claims.sub)
            .field("jti", &claims.jti)
            .field("exp", &claims.exp)
            .finish()
    }
}

impl Credential {
    /// Returns a credential for `claims`, which `verifier` has verified.
    pub fn new(verifier: &TokenVerifier, claims: Claims) -> Self {
        Self {
            inner: Arc::new(Inner {
                verifier: verifier.clone(),
                claims: watch::channel(claims).0,
            }),
        }
    }

    /// Returns the current token's claims.
    pub fn claims(&self) -> Claims {
        self.inner.claims.borrow().clone()
    }

    /// Returns the identity the session belongs to.
    pub fn subject(&self) -> String {
        self.inner.claims.borrow().sub.clone()
    }

    /// Replaces the token with `fresh` (already verified) when it belongs to the same subject
    /// and expires no earlier than the current one (a token minted in the same second counts:
    /// the session then follows the new token, and revoking the old one no longer ends it). A
    /// token that expires earlier is accepted but changes nothing, so a replayed old token
    /// cannot shorten a session.
    pub fn renew(&self, fresh: Claims) -> Result<(), TokenError> {
        let current = self.subject();
        if fresh.sub != current {
            return Err(TokenError::WrongSubject {
                expected: current,
                got: fresh.sub,
            });
        }
        if let Some(lapse) = self.inner.verifier.lapse_of(&fresh) {
            return Err(lapse);
        }
        self.inner.claims.send_if_modified(|claims| {
            let newer =
                fresh.exp > claims.exp || (fresh.exp == claims.exp && fresh.jti != claims.jti);
            if newer {
                *claims = fresh;
            }
            newer
        });
        Ok(())
    }

    /// Resolves with the reason once the current token is revoked or has expired. A renewal
    /// while waiting moves the deadline.
    pub async fn lapsed(&self) -> TokenError {
        let mut revocations = self.inner.verifier.revocations();
        let mut claims = self.inner.claims.subscribe();
        loop {
            let current = claims.borrow_and_update().clone();
            if let Some(lapse) = self.inner.verifier.lapse_of(&current) {
                return lapse;
            }
            let leeway = self.inner.verifier.leeway();
            let expiry = until_unix(current.exp).saturating_add(leeway);
            tokio::select! {
                // Both senders live as long as the verifier and this credential.
                _ = revocations.changed() => {}
                _ = claims.changed() => {}
                () = tokio::time::sleep(expiry) => {}
            }
        }
    }
}

/// Returns the time from now until the Unix second `at` (zero when it has passed).
fn until_unix(at: i64) -> Duration {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap_or(0));
    at.duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}
