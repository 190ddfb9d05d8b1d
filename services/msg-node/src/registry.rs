//! The hyperty registry at `domain://registry.<domain>`: allocation, well-known addresses,
//! discovery, and the shared address map that routing reads.
//!
//! Well-known addresses (`hyperty://<domain>/conference`, `.../camera/<id>`) are claimed, not
//! allocated. [`ReservedTable`] (config `[[registry.reserved]]`) says which identities may claim
//! which address patterns; an address no pattern covers may be claimed by any attached
//! service. A claim is first come, first served across replicas (409 while another identity
//! holds it); the same identity may take its address back (a restarted service).
//!
//! Each bound address has an [`AddressRecord`] under [`address::address_key`] (which replica
//! holds it, whose it is, its descriptor) and, for people, a copy under
//! [`address::user_key`] so discovery is one prefix scan. Both expire after
//! `timing.address_ttl_secs` unless the holding replica refreshes them (every third of the TTL),
//! so a crashed replica's addresses disappear by themselves. Refreshes are compare-and-swap on
//! the exact record bytes, so a replica never resurrects an address another one took over.

use std::{collections::HashMap, sync::Arc, sync::PoisonError, time::Duration};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    address,
    config::RegistryConfig,
    envelope::{Envelope, MessageType},
    error::MsgNodeError,
    node::Node,
    policy::glob::Glob,
    session::Session,
    sync::Party,
};

/// Most hyperties one prefix listing returns.
pub const MAX_LISTED: usize = 500;

/// What the shared address map says about an address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddressRecord {
    /// The address itself.
    pub address: String,
    /// The replica whose connection holds it.
    pub node: String,
    /// The runtime (session) that registered it.
    pub runtime: String,
    /// The token subject of its owner (`user:alice`, `conference`).
    pub identity: String,
    /// `user://<domain>/<username>` for people's hyperties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// What the hyperty said about itself at registration.
    #[serde(default)]
    pub descriptor: Value,
}

/// The reserved well-known addresses and who may claim them, compiled from
/// [`RegistryConfig`].
#[derive(Debug, Clone, Default)]
pub struct ReservedTable {
    entries: Vec<(Glob, Vec<Glob>)>,
}

impl ReservedTable {
    /// Compiles the table for `domain`; fails on a bad glob or an address outside the domain.
    pub fn new(config: &RegistryConfig, domain: &str) -> Result<Self, String> {
        let prefix = format!("hyperty://{domain}/");
        let mut entries = Vec::new();
        for (n, entry) in config.reserved.iter().enumerate() {
            let address = entry.address.replace("{domain}", domain);
            if !address.starts_with(&prefix) || address.len() == prefix.len() {
                return Err(format!(
                    "registry.reserved[{n}].address {:?} must start with hyperty://{{domain}}/ \
                     and name a path",
                    entry.address
                ));
            }
            let pattern =
                Glob::new(&address).map_err(|e| format!("registry.reserved[{n}].address: {e}"))?;
            let subjects = entry
                .subjects
                .iter()
                .map(|s| Glob::new(s).map_err(|e| format!("registry.reserved[{n}].subjects: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            entries.push((pattern, subjects));
        }
        Ok(Self { entries })
    }

    /// Decides whether `subject` may claim the well-known `address`: the first reserved
    /// pattern that matches decides; an unreserved address is open to attached services only.
    pub fn check(
        &self,
        address: &str,
        subject: &str,
        is_service: bool,
    ) -> Result<(), MsgNodeError> {
        match self
            .entries
            .iter()
            .find(|(pattern, _)| pattern.matches(address))
        {
            Some((_, subjects)) if subjects.iter().any(|s| s.matches(subject)) => Ok(()),
            Some((pattern, subjects)) => {
                let allowed: Vec<&str> = subjects.iter().map(Glob::as_str).collect();
                Err(MsgNodeError::Forbidden(format!(
                    "{address} is reserved ({pattern}) for {}; {subject} may not claim it",
                    if allowed.is_empty() {
                        "nobody".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                )))
            }
            None if is_service => Ok(()),
            None => Err(MsgNodeError::Forbidden(
                "only services attached over gRPC may register unreserved well-known addresses"
                    .into(),
            )),
        }
    }
}

/// An address bound on this replica.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The session that holds it.
    pub session: Arc<Session>,
    /// The exact record bytes stored in the map (compare-and-swap refreshes need them).
    pub record: Bytes,
    /// The user index key, for people's hyperties.
    pub user_key: Option<String>,
}

impl Node {
    /// Handles a message to `domain://registry.<domain>`.
    pub(crate) async fn registry(
        &self,
        session: &Arc<Session>,
        envelope: &Envelope,
    ) -> Result<Envelope, MsgNodeError> {
        match envelope.kind {
            MessageType::Create => self.register(session, envelope).await,
            MessageType::Read => self.discover(envelope).await,
            MessageType::Delete => {
                let address = envelope.body_str("resource").ok_or_else(|| {
                    MsgNodeError::BadRequest(
                        "registry delete needs body.resource: the hyperty address".into(),
                    )
                })?;
                if !session.owns(address) || address == session.runtime {
                    return Err(MsgNodeError::Forbidden(format!(
                        "{address} is not a hyperty of this connection"
                    )));
                }
                self.unbind(session, address).await;
                self.delete_objects_of(session, address).await;
                Ok(envelope.reply_ok(Value::Null))
            }
            other => Err(MsgNodeError::BadRequest(format!(
                "the registry understands create, read and delete, not {other}"
            ))),
        }
    }

    async fn register(
        &self,
        session: &Arc<Session>,
        envelope: &Envelope,
    ) -> Result<Envelope, MsgNodeError> {
        if envelope.body_str("resource") != Some("hyperty") {
            return Err(MsgNodeError::BadRequest(
                "registry create needs body {\"resource\":\"hyperty\",\"descriptor\":{...}}".into(),
            ));
        }
        let descriptor = match envelope.body.get("descriptor") {
            None | Some(Value::Null) => json!({}),
            Some(d @ Value::Object(_)) => d.clone(),
            Some(_) => {
                return Err(MsgNodeError::BadRequest(
                    "body.descriptor must be a JSON object".into(),
                ));
            }
        };
        let max = self.config.limits.max_hyperties_per_connection;
        if session.address_count() >= max {
            return Err(MsgNodeError::Forbidden(format!(
                "a connection may register at most {max} hyperties"
            )));
        }
        let well_known = match envelope.body.get("address") {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) => {
                self.domain
                    .check_well_known(a)
                    .map_err(MsgNodeError::BadRequest)?;
                self.reserved
                    .check(a, &session.identity.subject, session.identity.is_service)?;
                Some(a.clone())
            }
            Some(_) => {
                return Err(MsgNodeError::BadRequest(
                    "body.address must be a string".into(),
                ));
            }
        };
        let address = well_known
            .clone()
            .unwrap_or_else(|| self.domain.new_hyperty());
        let record = AddressRecord {
            address: address.clone(),
            node: self.node_id.clone(),
            runtime: session.runtime.clone(),
            identity: session.identity.subject.clone(),
            user: session.identity.user.clone(),
            descriptor,
        };
        let bytes = Bytes::from(serde_json::to_vec(&record).unwrap_or_default());
        let ttl = Some(self.config.timing.address_ttl());
        let key = address::address_key(&address);
        if well_known.is_some() {
            self.claim(&key, &bytes, &session.identity.subject).await?;
        } else {
            self.kv.set(&key, bytes.clone(), ttl).await?;
        }
        let user_key = record.user.as_ref().map(|u| address::user_key(u, &address));
        if let Some(user_key) = &user_key {
            self.kv.set(user_key, bytes.clone(), ttl).await?;
        }
        if !session.add_address(&address) {
            let _ = self
                .kv
                .compare_and_swap(&key, Some(&bytes), None, None)
                .await;
            return Err(MsgNodeError::Gone("the session has ended".into()));
        }
        let previous = self
            .local
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                address.clone(),
                Binding {
                    session: session.clone(),
                    record: bytes,
                    user_key,
                },
            );
        if let Some(previous) = previous
            && previous.session.id != session.id
        {
            // A service re-attached and took its well-known address back from its old session.
            previous.session.remove_address(&address);
        }
        metrics::counter!("msgnode_hyperties_registered_total").increment(1);
        tracing::debug!(%address, identity = %session.identity.name, "hyperty registered");
        Ok(envelope.reply_ok(json!({ "address": address })))
    }

    /// Claims a well-known address: free, or already held by the same identity (a service
    /// that restarted), else 409.
    async fn claim(&self, key: &str, record: &Bytes, identity: &str) -> Result<(), MsgNodeError> {
        let ttl = Some(self.config.timing.address_ttl());
        for _ in 0..8 {
            if self.kv.set_nx(key, record.clone(), ttl).await? {
                return Ok(());
            }
            let Some(current) = self.kv.get(key).await? else {
                continue;
            };
            let holder = serde_json::from_slice::<AddressRecord>(&current)
                .map(|r| r.identity)
                .unwrap_or_default();
            if holder != identity {
                return Err(MsgNodeError::Conflict(
                    "this address is registered by another identity".into(),
                ));
            }
            if self
                .kv
                .compare_and_swap(key, Some(&current), Some(record.clone()), ttl)
                .await?
            {
                return Ok(());
            }
        }
        Err(MsgNodeError::Conflict(
            "this address keeps changing hands; try again".into(),
        ))
    }

    async fn discover(&self, envelope: &Envelope) -> Result<Envelope, MsgNodeError> {
        let resource = envelope.body_str("resource").unwrap_or_default();
        if self.domain.is_user(resource) {
            let mut hyperties: Vec<AddressRecord> = self
                .kv
                .scan_prefix(&address::user_prefix(resource))
                .await?
                .into_iter()
                .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
                .collect();
            hyperties.sort_by(|a, b| a.address.cmp(&b.address));
            let list: Vec<Value> = hyperties
                .into_iter()
                .map(|r| json!({ "address": r.address, "descriptor": r.descriptor }))
                .collect();
            return Ok(envelope.reply_ok(json!({ "user": resource, "hyperties": list })));
        }
        // A trailing slash lists the well-known addresses under a path, e.g. every camera:
        // `hyperty://<domain>/camera/`.
        if self.domain.is_hyperty(resource) && resource.ends_with('/') {
            let probe = format!("{resource}x");
            self.domain
                .check_well_known(&probe)
                .map_err(MsgNodeError::BadRequest)?;
            let mut hyperties: Vec<AddressRecord> = self
                .kv
                .scan_prefix(&address::address_key(resource))
                .await?
                .into_iter()
                .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
                .collect();
            hyperties.sort_by(|a, b| a.address.cmp(&b.address));
            hyperties.truncate(MAX_LISTED);
            let list: Vec<Value> = hyperties
                .into_iter()
                .map(|r| json!({ "address": r.address, "descriptor": r.descriptor }))
                .collect();
            return Ok(envelope.reply_ok(json!({ "prefix": resource, "hyperties": list })));
        }
        if self.domain.is_hyperty(resource) {
            let record = self
                .lookup(resource)
                .await?
                .ok_or_else(|| MsgNodeError::NotFound(format!("no such address: {resource}")))?;
            return Ok(envelope.reply_ok(json!({
                "address": record.address,
                "user": record.user,
                "descriptor": record.descriptor,
            })));
        }
        Err(MsgNodeError::BadRequest(format!(
            "registry read needs body.resource: user://{d}/<username>, hyperty://{d}/<id> or \
             a path such as hyperty://{d}/camera/",
            d = self.domain.name()
        )))
    }

    /// Returns the record of an address in the shared map.
    pub(crate) async fn lookup(
        &self,
        address: &str,
    ) -> Result<Option<AddressRecord>, MsgNodeError> {
        Ok(self
            .kv
            .get(&address::address_key(address))
            .await?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Unbinds an address of `session` here and in the shared map (only if the map still
    /// says it is ours), and stops its subscriptions.
    pub(crate) async fn unbind(&self, session: &Arc<Session>, address: &str) {
        session.remove_address(address);
        let binding = {
            let mut local = self.local.write().unwrap_or_else(PoisonError::into_inner);
            match local.get(address) {
                Some(b) if b.session.id == session.id => local.remove(address),
                _ => None,
            }
        };
        for key in session.subscription_keys() {
            if let Some((object, observer)) = key.split_once('|')
                && observer == address
            {
                session.remove_subscription(&key);
                let _ = self
                    .sync
                    .unsubscribe(
                        object,
                        Party {
                            address: observer,
                            identity: &session.identity.subject,
                        },
                    )
                    .await;
            }
        }
        let Some(binding) = binding else { return };
        let key = address::address_key(address);
        if let Err(error) = self
            .kv
            .compare_and_swap(&key, Some(&binding.record), None, None)
            .await
        {
            tracing::warn!(%error, %address, "could not remove an address from the map");
        }
        if let Some(user_key) = binding.user_key {
            let _ = self
                .kv
                .compare_and_swap(&user_key, Some(&binding.record), None, None)
                .await;
        }
        tracing::debug!(%address, "hyperty unregistered");
    }

    /// Refreshes the TTL of every local address every third of the TTL, until shutdown.
    pub(crate) fn spawn_refresher(self: &Arc<Self>) {
        let node = Arc::downgrade(self);
        let ttl = self.config.timing.address_ttl();
        let every = ttl / 3;
        let stop = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.wait() => return,
                    _ = tick.tick() => {}
                }
                let Some(node) = node.upgrade() else { return };
                node.refresh_all(ttl).await;
                node.refresh_sessions().await;
            }
        });
    }

    async fn refresh_all(&self, ttl: Duration) {
        let bindings: HashMap<String, Binding> = self
            .local
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (address, binding) in bindings {
            let key = address::address_key(&address);
            let record = &binding.record;
            let kept = match self
                .kv
                .compare_and_swap(&key, Some(record), Some(record.clone()), Some(ttl))
                .await
            {
                Ok(true) => true,
                // Expired (or Redis lost it): claim it again unless someone else has.
                Ok(false) => self
                    .kv
                    .set_nx(&key, record.clone(), Some(ttl))
                    .await
                    .unwrap_or(true),
                Err(error) => {
                    tracing::warn!(%error, "address refresh failed; retrying next round");
                    true
                }
            };
            if !kept {
                tracing::info!(%address, "address taken over elsewhere; unbinding it here");
                self.local
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&address);
                binding.session.remove_address(&address);
                continue;
            }
            if let Some(user_key) = &binding.user_key {
                let _ = self.kv.set(user_key, record.clone(), Some(ttl)).await;
            }
            let reporter = Party {
                address: &address,
                identity: &binding.session.identity.subject,
            };
            if let Err(error) = self.sync.refresh_all_of(reporter).await {
                tracing::warn!(%error, %address, "object refresh failed; retrying next round");
            }
        }
    }
}
