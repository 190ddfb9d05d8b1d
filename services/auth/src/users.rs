//! Users (argon2id password hashes) and API keys, stored as JSON documents in the key-value
//! store (Redis when configured, memory otherwise).
//!
//! Password hashing is deliberately slow, so it runs on the blocking pool. Unknown users are
//! checked against a dummy hash so that response times do not reveal which names exist.
//!
//! Contracts: a user's `grants` are explicit and stored with the user (records written before
//! the field existed load as [`Grants::user`]); login tokens carry exactly those. An API key
//! names the subjects it may mint for ([`SubjectPattern`]); `service:` and `user:` subjects
//! need a pattern that literally starts with that prefix. A revoked (deleted) key checks as
//! [`AuthError::InvalidApiKey`].

use std::sync::{Arc, LazyLock};

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use rand::RngCore;
use rethink_common::{kv::KvStore, token::Grants, token::unix_now};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::AuthError;

/// Key prefix of user documents: `rethink:auth:user:<username>`.
pub const USER_PREFIX: &str = "rethink:auth:user:";
/// Key prefix of API key documents: `rethink:auth:apikey:<key id>`.
pub const API_KEY_PREFIX: &str = "rethink:auth:apikey:";

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Longest password accepted (bounds hashing work per request).
pub const MAX_PASSWORD_LEN: usize = 256;

/// A stored user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// Login name: 1-64 of `[A-Za-z0-9._-]`, stored lowercase.
    pub username: String,
    /// Name shown to others.
    pub display_name: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// What the user's tokens allow; set by admins, [`Grants::user`] for older records.
    #[serde(default = "Grants::user")]
    pub grants: Grants,
    /// Unix seconds.
    pub created_at: i64,
}

/// A stored API key: only a SHA-256 of its secret (the secret is 32 random bytes, so a fast hash
/// is enough; argon2 protects low-entropy passwords).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public identifier, `ak_<hex>`.
    pub key_id: String,
    /// Subject of the tokens minted with this key when the request names none.
    pub subject: String,
    /// Other subjects the key may mint for: exact names or `prefix*` patterns. Keys stored
    /// before the field existed may mint only for `subject`.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Upper bound of the grants of minted tokens.
    pub grants: Grants,
    /// base64url SHA-256 of the secret.
    pub secret_sha256: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Users and API keys on top of a [`KvStore`].
#[derive(Clone)]
pub struct UserStore {
    kv: Arc<dyn KvStore>,
    /// Bounds concurrent argon2 work (about 19 MiB and tens of ms each), so a flood of logins
    /// queues instead of exhausting memory and the blocking pool.
    hashing: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for UserStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserStore").finish_non_exhaustive()
    }
}

/// A valid hash of a password nobody has, verified when the user does not exist.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password_blocking("not-a-real-password").unwrap_or_default());

/// Normalises and checks a username.
pub fn normalize_username(name: &str) -> Result<String, AuthError> {
    let name = name.trim().to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(name)
    } else {
        Err(AuthError::BadRequest(
            "username must be 1-64 characters of letters, digits, '.', '_' or '-'".into(),
        ))
    }
}

fn check_password(password: &str) -> Result<(), AuthError> {
    if password.chars().count() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(AuthError::BadRequest(format!(
            "password must be {MIN_PASSWORD_LEN}-{MAX_PASSWORD_LEN} characters"
        )));
    }
    Ok(())
}

fn hash_password_blocking(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(format!("hashing password: {e}")))
}

async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || hash_password_blocking(&password))
        .await
        .map_err(|e| AuthError::Internal(format!("hashing task: {e}")))?
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, raw: &[u8]) -> Result<T, AuthError> {
    serde_json::from_slice(raw).map_err(|e| AuthError::Internal(format!("stored {key}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, AuthError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| AuthError::Internal(format!("encoding record: {e}")))
}

fn secret_digest(secret: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(secret.as_bytes()))
}

impl UserStore {
    /// Returns a store over `kv`.
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            kv,
            hashing: Arc::new(tokio::sync::Semaphore::new(cpus * 2)),
        }
    }

    async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| AuthError::Internal(format!("hashing permits: {e}")))?;
        hash_password(password.to_string()).await
    }

    async fn verify(&self, password: &str, hash: String) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        verify_password(password.to_string(), hash).await
    }

    /// Creates a user; fails with [`AuthError::UserExists`] when the name is taken.
    pub async fn create(
        &self,
        username: &str,
        password: &str,
        display_name: Option<&str>,
        grants: Grants,
    ) -> Result<UserRecord, AuthError> {
        let username = normalize_username(username)?;
        check_password(password)?;
        let display_name = display_name
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .unwrap_or(&username)
            .chars()
            .take(128)
            .collect();
        let record = UserRecord {
            password_hash: self.hash(password).await?,
            username,
            display_name,
            grants,
            created_at: unix_now(),
        };
        let key = format!("{USER_PREFIX}{}", record.username);
        if self.kv.set_nx(&key, encode(&record)?, None).await? {
            Ok(record)
        } else {
            Err(AuthError::UserExists(record.username))
        }
    }

    /// Returns the user, if any.
    pub async fn get(&self, username: &str) -> Result<Option<UserRecord>, AuthError> {
        let Ok(username) = normalize_username(username) else {
            return Ok(None);
        };
        let key = format!("{USER_PREFIX}{username}");
        match self.kv.get(&key).await? {
            Some(raw) => decode(&key, &raw).map(Some),
            None => Ok(None),
        }
    }

    /// Returns the user when `password` is right; [`AuthError::InvalidCredentials`] otherwise.
    pub async fn check(&self, username: &str, password: &str) -> Result<UserRecord, AuthError> {
        if password.len() > MAX_PASSWORD_LEN {
            return Err(AuthError::InvalidCredentials);
        }
        let user = self.get(username).await?;
        let hash = match &user {
            Some(user) => user.password_hash.clone(),
            // The first use computes the dummy hash: keep that off the async threads.
            None => tokio::task::spawn_blocking(|| DUMMY_HASH.clone())
                .await
                .unwrap_or_default(),
        };
        let ok = self.verify(password, hash).await;
        match user {
            Some(user) if ok => Ok(user),
            _ => Err(AuthError::InvalidCredentials),
        }
    }

    /// Deletes a user; returns false when there was none. Crate-only: callers go through
    /// [`crate::AuthService::delete_user`], which also revokes the user's tokens.
    pub(crate) async fn delete(&self, username: &str) -> Result<bool, AuthError> {
        let username = normalize_username(username)?;
        Ok(self.kv.delete(&format!("{USER_PREFIX}{username}")).await?)
    }

    /// Replaces a user's password (through [`crate::AuthService::set_password`], which also
    /// revokes the user's tokens).
    pub(crate) async fn set_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(), AuthError> {
        check_password(password)?;
        let hash = self.hash(password).await?;
        self.update(username, |record| record.password_hash = hash.clone())
            .await
            .map(drop)
    }

    /// Changes a stored user with `change` by compare-and-swap, so concurrent changes of other
    /// fields (a password and grants at once) are not lost; returns the stored record.
    async fn update(
        &self,
        username: &str,
        change: impl Fn(&mut UserRecord),
    ) -> Result<UserRecord, AuthError> {
        let username = normalize_username(username)?;
        let key = format!("{USER_PREFIX}{username}");
        for _ in 0..8 {
            let raw = self
                .kv
                .get(&key)
                .await?
                .ok_or_else(|| AuthError::UserNotFound(username.clone()))?;
            let mut record: UserRecord = decode(&key, &raw)?;
            change(&mut record);
            if self
                .kv
                .compare_and_swap(&key, Some(&raw), Some(encode(&record)?), None)
                .await?
            {
                return Ok(record);
            }
        }
        Err(AuthError::Internal(format!(
            "update of user {username:?} kept conflicting"
        )))
    }

    /// Replaces a user's grants; returns the updated record (through
    /// [`crate::AuthService::set_user_grants`]).
    pub(crate) async fn set_grants(
        &self,
        username: &str,
        grants: Grants,
    ) -> Result<UserRecord, AuthError> {
        self.update(username, |record| record.grants = grants.clone())
            .await
    }

    /// Returns every user, sorted by name.
    pub async fn list(&self) -> Result<Vec<UserRecord>, AuthError> {
        let mut users = Vec::new();
        for (key, raw) in self.kv.scan_prefix(USER_PREFIX).await? {
            users.push(decode::<UserRecord>(&key, &raw)?);
        }
        users.sort_by(|a, b| a.username.cmp(&b.username));
        Ok(users)
    }

    /// Creates an API key that mints for `subject` by default and for the `subjects` patterns
    /// on request; returns the record and the secret (shown once, stored hashed).
    pub async fn create_api_key(
        &self,
        subject: &str,
        subjects: &[String],
        grants: Grants,
    ) -> Result<(ApiKeyRecord, String), AuthError> {
        let subject = check_subject(subject.trim())?;
        let subjects = subjects
            .iter()
            .map(|p| SubjectPattern::parse(p).map(|p| p.as_str().to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let secret = URL_SAFE_NO_PAD.encode(secret);
        let record = ApiKeyRecord {
            key_id: format!("ak_{}", uuid::Uuid::new_v4().simple()),
            subject: subject.to_string(),
            subjects,
            grants,
            secret_sha256: secret_digest(&secret),
            created_at: unix_now(),
        };
        let key = format!("{API_KEY_PREFIX}{}", record.key_id);
        self.kv.set(&key, encode(&record)?, None).await?;
        Ok((record, secret))
    }

    /// Returns the key when `secret` is right; [`AuthError::InvalidApiKey`] otherwise.
    pub async fn check_api_key(
        &self,
        key_id: &str,
        secret: &str,
    ) -> Result<ApiKeyRecord, AuthError> {
        if !valid_key_id(key_id) || secret.len() > 256 {
            return Err(AuthError::InvalidApiKey);
        }
        let key = format!("{API_KEY_PREFIX}{key_id}");
        let Some(raw) = self.kv.get(&key).await? else {
            return Err(AuthError::InvalidApiKey);
        };
        let record: ApiKeyRecord = decode(&key, &raw)?;
        // Comparing digests, not secrets: timing reveals nothing usable about the secret.
        if record.secret_sha256 == secret_digest(secret) {
            Ok(record)
        } else {
            Err(AuthError::InvalidApiKey)
        }
    }

    /// Returns every API key (records hold only the secret's digest), sorted by id.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, AuthError> {
        let mut keys = Vec::new();
        for (key, raw) in self.kv.scan_prefix(API_KEY_PREFIX).await? {
            keys.push(decode::<ApiKeyRecord>(&key, &raw)?);
        }
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        Ok(keys)
    }

    /// Revokes an API key: it mints nothing from then on. Returns false when there was none
    /// (through [`crate::AuthService::revoke_api_key`], which also revokes its tokens).
    pub(crate) async fn revoke_api_key(&self, key_id: &str) -> Result<bool, AuthError> {
        if !valid_key_id(key_id) {
            return Ok(false);
        }
        Ok(self.kv.delete(&format!("{API_KEY_PREFIX}{key_id}")).await?)
    }
}

fn valid_key_id(key_id: &str) -> bool {
    !key_id.is_empty()
        && key_id.len() <= 64
        && key_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a token subject: 1-128 printable characters without spaces.
pub fn check_subject(subject: &str) -> Result<&str, AuthError> {
    let valid = !subject.is_empty()
        && subject.len() <= 128
        && subject
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace());
    if valid {
        Ok(subject)
    } else {
        Err(AuthError::BadRequest(
            "subject must be 1-128 characters without spaces or control characters".into(),
        ))
    }
}

/// Subject prefixes that name identities of their own (services, people): an API key mints
/// for them only through a pattern that spells the prefix out.
const PROTECTED_PREFIXES: [&str; 2] = ["service:", "user:"];

/// A subject an API key may mint for: `camera:lobby` (exactly that) or `camera:*` (every
/// subject starting with `camera:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPattern(String);

impl SubjectPattern {
    /// Parses a pattern; `*` may appear only at the end.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let text = text.trim();
        let body = text.strip_suffix('*').unwrap_or(text);
        if body.contains('*') || (text != "*" && check_subject(body).is_err()) || text.len() > 128 {
            return Err(AuthError::BadRequest(format!(
                "subject pattern {text:?} must be a subject or a prefix ending in '*', \
                 e.g. camera:*"
            )));
        }
        Ok(Self(text.to_string()))
    }

    /// Returns the pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns true when `subject` matches: equal, or starting with the prefix before `*`. A
    /// subject starting with `service:` or `user:` (in any case) matches only a pattern that
    /// starts with the same prefix, so `*` never covers other services or people.
    pub fn matches(&self, subject: &str) -> bool {
        let lower = subject.to_ascii_lowercase();
        let pattern = self.0.to_ascii_lowercase();
        if let Some(protected) = PROTECTED_PREFIXES.iter().find(|p| lower.starts_with(*p))
            && !pattern.starts_with(protected)
        {
            return false;
        }
        match self.0.strip_suffix('*') {
            Some(prefix) => subject.starts_with(prefix),
            None => subject == self.0,
        }
    }
}

impl ApiKeyRecord {
    /// Returns true when this key may mint tokens for `subject`: its own default subject, or a
    /// subject matching one of its patterns.
    pub fn may_mint_for(&self, subject: &str) -> bool {
        subject == self.subject
            || self
                .subjects
                .iter()
                .filter_map(|p| SubjectPattern::parse(p).ok())
                .any(|p| p.matches(subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(subject: &str, patterns: &[&str]) -> ApiKeyRecord {
        ApiKeyRecord {
            key_id: "ak_x".into(),
            subject: subject.into(),
            subjects: patterns.iter().map(|p| p.to_string()).collect(),
            grants: Grants::default(),
            secret_sha256: String::new(),
            created_at: 0,
        }
    }

    #[test]
    fn subject_patterns_cover_only_what_they_name() {
        let k = key("camera:default", &["camera:*", "bot:exact"]);
        assert!(k.may_mint_for("camera:default"));
        assert!(k.may_mint_for("camera:lobby"));
        assert!(k.may_mint_for("bot:exact"));
        assert!(!k.may_mint_for("bot:exact2"));
        assert!(!k.may_mint_for("cameras:x"));
        // `*` alone covers everything except services and people.
        let any = key("app:x", &["*"]);
        assert!(any.may_mint_for("anything"));
        for protected in ["service:sfu", "user:alice", "USER:alice", "Service:x"] {
            assert!(!any.may_mint_for(protected), "{protected}");
        }
        let people = key("app:x", &["user:guest-*", "service:recorder"]);
        assert!(people.may_mint_for("user:guest-1"));
        assert!(!people.may_mint_for("user:alice"));
        assert!(people.may_mint_for("service:recorder"));
        assert!(!people.may_mint_for("service:sfu"));
        // Old records without patterns mint only for their own subject.
        let old: ApiKeyRecord = serde_json::from_str(
            r#"{"key_id":"ak_1","subject":"service:conf","grants":{},"secret_sha256":"","created_at":0}"#,
        )
        .unwrap();
        assert!(old.may_mint_for("service:conf") && !old.may_mint_for("service:other"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "a*b", "**", "with space*", "x".repeat(200).as_str()] {
            assert!(SubjectPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(SubjectPattern::parse("*").is_ok());
    }

    #[test]
    fn users_stored_without_grants_load_as_user() {
        let old: UserRecord = serde_json::from_str(
            r#"{"username":"old","display_name":"Old","password_hash":"x","created_at":1}"#,
        )
        .unwrap();
        assert_eq!(old.grants, Grants::user());
    }
}
