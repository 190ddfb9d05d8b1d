//! Ed25519 signing keys: creation, rotation, the published JWK set, and signing.
//!
//! The key ring is one JSON document in the key-value store under [`KEYRING_KEY`], so every
//! auth instance signs with the same keys and publishes the same set. The last key that has not
//! been retired signs; retired keys stay published until every token they signed has expired
//! (`retired_at + token_ttl + leeway`), then are pruned at the next rotation. Updates use
//! compare-and-swap so two instances rotating at once cannot lose a key.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey};
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm,
        OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
    },
};
use rethink_common::{kv::KvStore, token::unix_now};
use serde::{Deserialize, Serialize};

use crate::AuthError;

/// Key of the key ring document in the key-value store.
pub const KEYRING_KEY: &str = "rethink:auth:signing-keys";

/// Extra time a retired key stays published beyond the token lifetime (verifier leeway).
const RETIRE_GRACE_SECS: i64 = 120;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// The 32-byte Ed25519 seed, base64url.
    seed: String,
    created_at: i64,
    #[serde(default)]
    retired_at: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredRing {
    keys: Vec<StoredKey>,
}

struct Loaded {
    /// The exact stored bytes, the `expected` value of the next compare-and-swap.
    raw: Bytes,
    kid: String,
    created_at: i64,
    encoding: EncodingKey,
    jwks: JwkSet,
}

/// The signing keys of the auth service. Cheap to clone.
#[derive(Clone)]
pub struct KeyRing {
    kv: Arc<dyn KvStore>,
    token_ttl: Duration,
    loaded: Arc<RwLock<Arc<Loaded>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kid", &self.current().kid)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads the ring from `kv`, creating it with one fresh key when there is none.
    pub async fn load_or_create(
        kv: Arc<dyn KvStore>,
        token_ttl: Duration,
    ) -> Result<Self, AuthError> {
        let raw = match kv.get(KEYRING_KEY).await? {
            Some(raw) => raw,
            None => {
                let ring = StoredRing {
                    keys: vec![new_key(unix_now())],
                };
                let raw = encode(&ring)?;
                // Another instance may have created it meanwhile; then use theirs.
                if !kv.set_nx(KEYRING_KEY, raw.clone(), None).await? {
                    kv.get(KEYRING_KEY)
                        .await?
                        .ok_or_else(|| AuthError::Internal("key ring vanished".into()))?
                } else {
                    raw
                }
            }
        };
        let loaded = parse(raw)?;
        Ok(Self {
            kv,
            token_ttl,
            loaded: Arc::new(RwLock::new(Arc::new(loaded))),
        })
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rereads the ring from the store (another instance may have rotated).
    pub async fn reload(&self) -> Result<(), AuthError> {
        let raw = match self.kv.get(KEYRING_KEY).await? {
            Some(raw) => raw,
            None => {
                // The store lost its data (e.g. Redis restarted without persistence): put back
                // the ring this instance holds, so tokens it signed stay verifiable.
                tracing::warn!("signing keys missing from the store; restoring them");
                let current = self.current().raw.clone();
                self.kv.set_nx(KEYRING_KEY, current, None).await?;
                self.kv
                    .get(KEYRING_KEY)
                    .await?
                    .ok_or_else(|| AuthError::Internal("key ring vanished".into()))?
            }
        };
        if raw != self.current().raw {
            let loaded = parse(raw)?;
            *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        }
        Ok(())
    }

    /// Starts signing with a fresh key; returns its `kid`. The previous key stays published
    /// until its tokens have expired.
    pub async fn rotate(&self) -> Result<String, AuthError> {
        for _ in 0..8 {
            let current = self.current();
            let mut ring: StoredRing = serde_json::from_slice(&current.raw)
                .map_err(|e| AuthError::Internal(format!("stored key ring: {e}")))?;
            let now = unix_now();
            let keep_after = now - self.token_ttl.as_secs() as i64 - RETIRE_GRACE_SECS;
            ring.keys
                .retain(|k| k.retired_at.is_none_or(|retired| retired > keep_after));
            for key in &mut ring.keys {
                key.retired_at.get_or_insert(now);
            }
            let key = new_key(now);
            let kid = key.kid.clone();
            ring.keys.push(key);
            let raw = encode(&ring)?;
            if self
                .kv
                .compare_and_swap(KEYRING_KEY, Some(&current.raw), Some(raw.clone()), None)
                .await?
            {
                *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(parse(raw)?);
                tracing::info!(%kid, "rotated signing key");
                return Ok(kid);
            }
            self.reload().await?;
        }
        Err(AuthError::Internal("key rotation kept conflicting".into()))
    }

    /// Returns the `kid` of the signing key.
    pub fn current_kid(&self) -> String {
        self.current().kid.clone()
    }

    /// Returns how long the signing key has been in use.
    pub fn current_age(&self) -> Duration {
        Duration::from_secs((unix_now() - self.current().created_at).max(0) as u64)
    }

    /// Returns the public keys to publish: the signing key and retired keys whose tokens may
    /// still be valid.
    pub fn jwks(&self) -> JwkSet {
        self.current().jwks.clone()
    }

    /// Signs `claims` as a compact EdDSA JWT with the current key.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, AuthError> {
        let current = self.current();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(current.kid.clone());
        jsonwebtoken::encode(&header, claims, &current.encoding)
            .map_err(|e| AuthError::Internal(format!("signing: {e}")))
    }
}

fn new_key(now: i64) -> StoredKey {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    StoredKey {
        kid: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
        seed: URL_SAFE_NO_PAD.encode(key.to_bytes()),
        created_at: now,
        retired_at: None,
    }
}

fn encode(ring: &StoredRing) -> Result<Bytes, AuthError> {
    serde_json::to_vec(ring)
        .map(Bytes::from)
        .map_err(|e| AuthError::Internal(format!("encoding key ring: {e}")))
}

fn signing_key(stored: &StoredKey) -> Result<SigningKey, AuthError> {
    let seed: [u8; 32] = URL_SAFE_NO_PAD
        .decode(&stored.seed)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AuthError::Internal(format!("stored key {} is corrupt", stored.kid)))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn parse(raw: Bytes) -> Result<Loaded, AuthError> {
    let ring: StoredRing = serde_json::from_slice(&raw)
        .map_err(|e| AuthError::Internal(format!("stored key ring: {e}")))?;
    let signer = ring
        .keys
        .iter()
        .rev()
        .find(|k| k.retired_at.is_none())
        .or(ring.keys.last())
        .ok_or_else(|| AuthError::Internal("stored key ring is empty".into()))?;
    let der = signing_key(signer)?
        .to_pkcs8_der()
        .map_err(|e| AuthError::Internal(format!("encoding key: {e}")))?;
    let mut keys = Vec::with_capacity(ring.keys.len());
    for stored in &ring.keys {
        let public = signing_key(stored)?.verifying_key();
        keys.push(Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                key_id: Some(stored.kid.clone()),
                ..Default::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(public.as_bytes()),
            }),
        });
    }
    Ok(Loaded {
        kid: signer.kid.clone(),
        created_at: signer.created_at,
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        jwks: JwkSet { keys },
        raw,
    })
}
