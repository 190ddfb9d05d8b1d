//! Data objects (docs/protocol.md, "Data objects"): a [`Reporter`] creates an object and is
//! the only one that changes it; [`Observer`]s subscribe and follow every change in version
//! order.
//!
//! An observer's route is added before its `subscribe` is sent, so a change that follows the
//! response at once is not missed; versions it has already seen (the node re-sends the
//! current state after a resume on another replica) are skipped.

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::{
    address::Address,
    client::Client,
    error::ClientError,
    message::{Message, MessageType},
};

/// The state of an object as the sync service reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectState {
    /// `object://<domain>/<id>`.
    pub url: Address,
    /// The schema name given at creation.
    pub schema: String,
    /// The hyperty that reports (owns) the object.
    pub reporter: Address,
    /// The current version (1 after creation).
    pub version: u64,
    /// The current value.
    pub value: Value,
}

impl ObjectState {
    fn from_value(value: &Value, current: Option<Value>) -> Result<Self, ClientError> {
        let field = |name: &str| {
            value[name]
                .as_str()
                .ok_or_else(|| ClientError::Unexpected(format!("no {name} in {value}")))
        };
        Ok(Self {
            url: field("url")?.parse()?,
            schema: field("schema")?.to_owned(),
            reporter: field("reporter")?.parse()?,
            version: value["version"]
                .as_u64()
                .ok_or_else(|| ClientError::Unexpected(format!("no version in {value}")))?,
            value: current.unwrap_or_else(|| value["value"].clone()),
        })
    }
}

/// The owner of a data object.
#[derive(Debug)]
pub struct Reporter {
    client: Client,
    hyperty: Address,
    state: ObjectState,
}

impl Reporter {
    /// Creates a private object of `schema` holding `value`, reported by `hyperty` (an
    /// address this client registered). Only the reporter's own identity may observe it; see
    /// [`Reporter::create_with`] to name observers.
    pub async fn create(
        client: &Client,
        hyperty: &Address,
        schema: &str,
        value: Value,
    ) -> Result<Self, ClientError> {
        Self::create_with(client, hyperty, schema, value, &[]).await
    }

    /// Like [`Reporter::create`], admitting `observers` as well: token subjects
    /// (`user:bob`), prefixes (`user:*`, `service:publisher*`) or `*` for everyone. The
    /// reporter's identity is always admitted.
    pub async fn create_with(
        client: &Client,
        hyperty: &Address,
        schema: &str,
        value: Value,
        observers: &[&str],
    ) -> Result<Self, ClientError> {
        let mut body = json!({"resource": "object", "schema": schema, "value": value});
        if !observers.is_empty() {
            body["observers"] = json!(observers);
        }
        let created = client
            .call(MessageType::Create, hyperty, &client.sync_service(), body)
            .await?;
        Ok(Self {
            client: client.clone(),
            hyperty: hyperty.clone(),
            state: ObjectState::from_value(&created, Some(value))?,
        })
    }

    /// Returns the object's URL.
    pub fn url(&self) -> &Address {
        &self.state.url
    }

    /// Returns the state as last written.
    pub fn state(&self) -> &ObjectState {
        &self.state
    }

    /// Replaces the value; returns the new version. 409 (another writer moved the version)
    /// comes back as [`ClientError::Protocol`]; [`Reporter::refresh`] and retry.
    pub async fn update(&mut self, value: Value) -> Result<u64, ClientError> {
        let body = json!({"version": self.state.version, "value": value});
        let answer = self
            .client
            .call(MessageType::Update, &self.hyperty, &self.state.url, body)
            .await?;
        let version = answer["version"]
            .as_u64()
            .ok_or_else(|| ClientError::Unexpected(format!("no version in {answer}")))?;
        self.state.version = version;
        self.state.value = value;
        Ok(version)
    }

    /// Reads the current state back.
    pub async fn refresh(&mut self) -> Result<&ObjectState, ClientError> {
        self.state = read(&self.client, &self.hyperty, &self.state.url).await?;
        Ok(&self.state)
    }

    /// Deletes the object; observers get a `delete`.
    pub async fn delete(self) -> Result<(), ClientError> {
        self.client
            .call(
                MessageType::Delete,
                &self.hyperty,
                &self.state.url,
                Value::Null,
            )
            .await
            .map(drop)
    }
}

/// Reads the state of `url` as `from`.
pub async fn read(
    client: &Client,
    from: &Address,
    url: &Address,
) -> Result<ObjectState, ClientError> {
    let value = client
        .call(MessageType::Read, from, url, Value::Null)
        .await?;
    ObjectState::from_value(&value, None)
}

/// A change an observer received.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The value was replaced.
    Updated {
        /// The new version.
        version: u64,
        /// The new value.
        value: Value,
    },
    /// The object was deleted; no more changes come.
    Deleted {
        /// The version of the deletion.
        version: u64,
    },
}

/// A subscription to a data object.
#[derive(Debug)]
pub struct Observer {
    client: Client,
    hyperty: Address,
    state: ObjectState,
    changes: mpsc::Receiver<Message>,
    deleted: bool,
}

impl Observer {
    /// Subscribes `hyperty` (an address this client registered) to `url`; returns with the
    /// object's current state.
    pub async fn subscribe(
        client: &Client,
        hyperty: &Address,
        url: &Address,
    ) -> Result<Self, ClientError> {
        let changes = client.route(hyperty, url);
        let subscribed = client
            .call(MessageType::Subscribe, hyperty, url, Value::Null)
            .await;
        let state = match subscribed.and_then(|v| ObjectState::from_value(&v, None)) {
            Ok(state) => state,
            Err(e) => {
                client.remove_route(hyperty, url);
                return Err(e);
            }
        };
        Ok(Self {
            client: client.clone(),
            hyperty: hyperty.clone(),
            state,
            changes,
            deleted: false,
        })
    }

    /// Returns the state as last seen.
    pub fn state(&self) -> &ObjectState {
        &self.state
    }

    /// Returns the current value as last seen.
    pub fn value(&self) -> &Value {
        &self.state.value
    }

    /// Returns the version last seen.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// Waits for the next change newer than the last one seen (at most the client's request
    /// timeout) and applies it.
    pub async fn next_change(&mut self) -> Result<Change, ClientError> {
        let wait = self.client.options().request_timeout;
        tokio::time::timeout(wait, self.next_change_forever())
            .await
            .map_err(|_| ClientError::Timeout(wait))?
    }

    async fn next_change_forever(&mut self) -> Result<Change, ClientError> {
        loop {
            let Some(message) = self.changes.recv().await else {
                return Err(ClientError::Unexpected(
                    "the observer's route was removed".into(),
                ));
            };
            let Some(version) = message.body["version"].as_u64() else {
                tracing::warn!(%message, "object change without a version");
                continue;
            };
            match message.kind {
                MessageType::Update if version > self.state.version => {
                    self.state.version = version;
                    self.state.value = message.body["value"].clone();
                    return Ok(Change::Updated {
                        version,
                        value: self.state.value.clone(),
                    });
                }
                MessageType::Delete if !self.deleted => {
                    self.deleted = true;
                    self.state.version = self.state.version.max(version);
                    return Ok(Change::Deleted { version });
                }
                // An update already seen (sent again after a handover), or noise.
                _ => {}
            }
        }
    }

    /// Waits until the observed version is at least `version`; returns the value then.
    pub async fn wait_for_version(&mut self, version: u64) -> Result<&Value, ClientError> {
        while self.state.version < version {
            if let Change::Deleted { .. } = self.next_change().await? {
                break;
            }
        }
        Ok(&self.state.value)
    }

    /// Reads the current state from the sync service (and keeps it).
    pub async fn read(&mut self) -> Result<&ObjectState, ClientError> {
        let state = read(&self.client, &self.hyperty, &self.state.url).await?;
        if state.version >= self.state.version {
            self.state = state;
        }
        Ok(&self.state)
    }

    /// Ends the subscription.
    pub async fn unsubscribe(self) -> Result<(), ClientError> {
        self.client
            .call(
                MessageType::Unsubscribe,
                &self.hyperty,
                &self.state.url,
                Value::Null,
            )
            .await
            .map(drop)
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.client.remove_route(&self.hyperty, &self.state.url);
    }
}
