//! [`Client`]: one connection to a Message Node, shared by any number of hyperties.
//!
//! One task per connection owns the [`Link`]; callers talk to it through a command channel.
//! Inbound messages are sorted in that task, in this order:
//! 1. a `response` whose `(to, id)` matches a pending request's `(from, id)` completes it
//!    (responses are keyed by sender *and* id, since several hyperties share a connection and
//!    each may number its requests from 1);
//! 2. a message whose `(to, from)` has a route (an [`crate::Observer`]'s object) goes there;
//! 3. everything else goes to the inbound queue read by [`Client::recv`].
//!
//! Queues are bounded and never block the connection task: a full queue drops the message
//! with a warning, because a stalled reader must not stop responses reaching other callers.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    address::Address,
    error::{ClientError, Closed},
    message::{Message, MessageId, MessageType, Welcome},
    transport::{GrpcLink, GrpcTarget, Link, Received, TokenIn, WsLink, WsTarget},
};

/// Where a client connects.
#[derive(Debug, Clone)]
pub enum Target {
    /// The WebSocket `/msg` of a node's HTTP port.
    Ws(WsTarget),
    /// The gRPC `Attach` of a node's gRPC port (needs a `services.attach` token).
    Grpc(GrpcTarget),
}

impl Target {
    /// The WebSocket at `url` (`ws://<host:port>/msg`), token in the query.
    pub fn ws(url: impl Into<String>) -> Self {
        Target::Ws(WsTarget::new(url))
    }

    /// The WebSocket at `url`, token in the `Authorization` header.
    pub fn ws_with_header(url: impl Into<String>) -> Self {
        let mut target = WsTarget::new(url);
        target.token_in = TokenIn::Header;
        Target::Ws(target)
    }

    /// The gRPC endpoint `http://<host:port>`.
    pub fn grpc(endpoint: impl Into<String>) -> Self {
        Target::Grpc(GrpcTarget {
            endpoint: endpoint.into(),
        })
    }

    /// Opens a link to this target.
    pub async fn open(
        &self,
        token: &str,
        resume: Option<&str>,
        wait: Duration,
    ) -> Result<Link, ClientError> {
        Ok(match self {
            Target::Ws(t) => Link::Ws(Box::new(WsLink::connect(t, token, resume, wait).await?)),
            Target::Grpc(t) => {
                Link::Grpc(Box::new(GrpcLink::connect(t, token, resume, wait).await?))
            }
        })
    }
}

/// Timeouts and queue sizes of a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long [`Client::request`] waits for its response, and [`Client::recv`] for a message.
    pub request_timeout: Duration,
    /// How long connecting (and reading the welcome) may take.
    pub connect_timeout: Duration,
    /// Messages kept for [`Client::recv`] (and per observer) before new ones are dropped.
    pub queue_len: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            queue_len: 1024,
        }
    }
}

enum Command {
    Send(Message, oneshot::Sender<Result<(), Closed>>),
    Text(String, oneshot::Sender<Result<(), Closed>>),
    Envelope(
        Box<rethink_proto::v1::Envelope>,
        oneshot::Sender<Result<(), Closed>>,
    ),
    Close,
}

type RouteKey = (Address, Address);

/// What the connection task and the callers share.
struct Shared {
    pending: HashMap<(Address, MessageId), oneshot::Sender<Message>>,
    routes: HashMap<RouteKey, mpsc::Sender<Message>>,
}

struct Connection {
    commands: mpsc::Sender<Command>,
    ended: watch::Receiver<Option<Closed>>,
    ended_tx: Arc<watch::Sender<Option<Closed>>>,
    task: JoinHandle<()>,
}

impl Connection {
    /// Stops the connection task (dropping the link) and records `closed` unless it ended.
    fn abort(&self, shared: &Mutex<Shared>, closed: Closed) {
        self.task.abort();
        lock(shared).pending.clear();
        self.ended_tx.send_if_modified(|ended| {
            if ended.is_none() {
                *ended = Some(closed);
                true
            } else {
                false
            }
        });
    }
}

struct Inner {
    target: Mutex<Target>,
    options: ClientOptions,
    shared: Arc<Mutex<Shared>>,
    welcome: Mutex<Welcome>,
    connection: Mutex<Connection>,
    inbound_tx: mpsc::Sender<Message>,
    inbound_rx: tokio::sync::Mutex<mpsc::Receiver<Message>>,
    unparsed_tx: mpsc::Sender<String>,
    unparsed_rx: tokio::sync::Mutex<mpsc::Receiver<String>>,
    next_id: AtomicI64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.connection).task.abort();
    }
}

/// A connection to a Message Node. Cheap to clone; every clone shares the connection, its
/// pending requests and its inbound queue. Dropping the last clone drops the connection
/// without a close handshake (the session then waits out its grace period).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &*lock(&self.inner.target))
            .field("runtime", &self.welcome().runtime)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    /// Connects to `target` with `token` and default options.
    pub async fn connect(target: Target, token: &str) -> Result<Self, ClientError> {
        Self::connect_with(target, token, None, ClientOptions::default()).await
    }

    /// Connects to `target` with `token`, resuming the session of `resume` if given.
    pub async fn connect_with(
        target: Target,
        token: &str,
        resume: Option<&str>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let link = target.open(token, resume, options.connect_timeout).await?;
        let welcome = link.welcome().clone();
        let shared = Arc::new(Mutex::new(Shared {
            pending: HashMap::new(),
            routes: HashMap::new(),
        }));
        let (inbound_tx, inbound_rx) = mpsc::channel(options.queue_len.max(1));
        let (unparsed_tx, unparsed_rx) = mpsc::channel(options.queue_len.max(1));
        let queues = Queues {
            inbound: inbound_tx.clone(),
            unparsed: unparsed_tx.clone(),
        };
        let connection = spawn(link, shared.clone(), queues);
        Ok(Self {
            inner: Arc::new(Inner {
                target: Mutex::new(target),
                options,
                shared,
                welcome: Mutex::new(welcome),
                connection: Mutex::new(connection),
                inbound_tx,
                inbound_rx: tokio::sync::Mutex::new(inbound_rx),
                unparsed_tx,
                unparsed_rx: tokio::sync::Mutex::new(unparsed_rx),
                next_id: AtomicI64::new(1),
            }),
        })
    }

    /// Returns the welcome of the current connection.
    pub fn welcome(&self) -> Welcome {
        lock(&self.inner.welcome).clone()
    }

    /// Returns the connection's runtime address.
    pub fn runtime(&self) -> Address {
        lock(&self.inner.welcome).runtime.clone()
    }

    /// Returns the resume token of the session.
    pub fn resume_token(&self) -> String {
        lock(&self.inner.welcome).resume_token.clone()
    }

    /// Returns the registry address of the node's domain.
    pub fn registry(&self) -> Address {
        lock(&self.inner.welcome).registry()
    }

    /// Returns the sync service address of the node's domain.
    pub fn sync_service(&self) -> Address {
        lock(&self.inner.welcome).sync()
    }

    /// Returns the options.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Returns a fresh integer id, unique on this client.
    pub fn next_id(&self) -> MessageId {
        MessageId::Int(self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn commands(&self) -> mpsc::Sender<Command> {
        lock(&self.inner.connection).commands.clone()
    }

    fn ended(&self) -> watch::Receiver<Option<Closed>> {
        lock(&self.inner.connection).ended.clone()
    }

    /// Returns how the connection ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<Closed> {
        self.ended().borrow().clone()
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(
            self.close_reason()
                .unwrap_or_else(|| Closed::abnormal("the connection task ended")),
        )
    }

    /// Sends `message` as it is (no id is assigned; no response is awaited).
    pub async fn send(&self, message: Message) -> Result<(), ClientError> {
        let (done, sent) = oneshot::channel();
        if self
            .commands()
            .send(Command::Send(message, done))
            .await
            .is_err()
        {
            return Err(self.closed_error());
        }
        match sent.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(closed)) => Err(ClientError::Closed(closed)),
            Err(_) => Err(self.closed_error()),
        }
    }

    /// Sends a raw text frame (WebSocket only), for tests of malformed input.
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        let (done, sent) = oneshot::channel();
        if self
            .commands()
            .send(Command::Text(text.into(), done))
            .await
            .is_err()
        {
            return Err(self.closed_error());
        }
        match sent.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(closed)) => Err(ClientError::Closed(closed)),
            Err(_) => Err(self.closed_error()),
        }
    }

    /// Sends a raw `Attach` envelope (gRPC only), for tests of malformed input such as a body
    /// that is not JSON.
    pub async fn send_envelope(
        &self,
        envelope: rethink_proto::v1::Envelope,
    ) -> Result<(), ClientError> {
        let (done, sent) = oneshot::channel();
        if self
            .commands()
            .send(Command::Envelope(Box::new(envelope), done))
            .await
            .is_err()
        {
            return Err(self.closed_error());
        }
        match sent.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(closed)) => Err(ClientError::Closed(closed)),
            Err(_) => Err(self.closed_error()),
        }
    }

    /// Sends `message` (assigning a fresh id when its id is `Null`) and returns the response
    /// addressed to its `from` with its id, whatever its code. Times out after
    /// [`ClientOptions::request_timeout`].
    pub async fn request(&self, mut message: Message) -> Result<Message, ClientError> {
        if message.id == MessageId::Null {
            message.id = self.next_id();
        }
        let key = (message.from.clone(), message.id.clone());
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.shared).pending.insert(key.clone(), tx);
        if let Err(e) = self.send(message).await {
            lock(&self.inner.shared).pending.remove(&key);
            return Err(e);
        }
        let wait = self.inner.options.request_timeout;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                lock(&self.inner.shared).pending.remove(&key);
                Err(ClientError::Timeout(wait))
            }
        }
    }

    /// Sends a request of `kind` from `from` to `to` and returns the response whatever its
    /// code (for callers that look at error codes; [`Client::call`] turns them into errors).
    pub async fn ask(
        &self,
        kind: MessageType,
        from: &Address,
        to: &Address,
        body: Value,
    ) -> Result<Message, ClientError> {
        self.request(Message::new(kind, from, to, body)).await
    }

    /// Sends a request and returns `body.value` of a 2xx response; an error response becomes
    /// [`ClientError::Protocol`].
    pub async fn call(
        &self,
        kind: MessageType,
        from: &Address,
        to: &Address,
        body: Value,
    ) -> Result<Value, ClientError> {
        self.request(Message::new(kind, from, to, body))
            .await?
            .into_result()
    }

    /// Returns the next message that is neither a response to a request of this client nor
    /// routed to an observer; waits at most [`ClientOptions::request_timeout`].
    pub async fn recv(&self) -> Result<Message, ClientError> {
        self.recv_within(self.inner.options.request_timeout).await
    }

    /// Like [`Client::recv`], waiting at most `wait`. Messages already queued are returned
    /// even after the connection closed.
    pub async fn recv_within(&self, wait: Duration) -> Result<Message, ClientError> {
        self.next_from(&self.inner.inbound_rx, wait).await
    }

    /// Returns the next inbound frame that is not an envelope the client understands (not
    /// JSON, or a `from`/`to` that is not an address, as the node's answers to malformed
    /// frames may carry), as JSON text; waits at most [`ClientOptions::request_timeout`].
    pub async fn recv_unparsed(&self) -> Result<String, ClientError> {
        self.next_from(&self.inner.unparsed_rx, self.inner.options.request_timeout)
            .await
    }

    /// Returns the next item of one of the inbound queues: what is queued first, even after
    /// the connection closed; then the close; waits at most `wait`.
    async fn next_from<T>(
        &self,
        queue: &tokio::sync::Mutex<mpsc::Receiver<T>>,
        wait: Duration,
    ) -> Result<T, ClientError> {
        let mut ended = self.ended();
        let mut queue = queue.lock().await;
        let next = async {
            loop {
                if let Ok(item) = queue.try_recv() {
                    return Ok(item);
                }
                if let Some(closed) = ended.borrow_and_update().clone() {
                    return Err(ClientError::Closed(closed));
                }
                tokio::select! {
                    item = queue.recv() => if let Some(item) = item { return Ok(item) },
                    changed = ended.changed() => if changed.is_err() {
                        return Err(ClientError::Closed(Closed::abnormal("the connection task ended")));
                    },
                }
            }
        };
        tokio::time::timeout(wait, next)
            .await
            .map_err(|_| ClientError::Timeout(wait))?
    }

    /// Registers a hyperty with `descriptor` (from the runtime address); returns its address.
    pub async fn register(&self, descriptor: Value) -> Result<Address, ClientError> {
        let body = json!({"resource": "hyperty", "descriptor": descriptor});
        let value = self
            .call(MessageType::Create, &self.runtime(), &self.registry(), body)
            .await?;
        address_field(&value, "address")
    }

    /// Asks for the well-known `address` (services attached over gRPC only).
    pub async fn register_well_known(
        &self,
        address: &Address,
        descriptor: Option<Value>,
    ) -> Result<Address, ClientError> {
        let mut body = json!({"resource": "hyperty", "address": address});
        if let Some(descriptor) = descriptor {
            body["descriptor"] = descriptor;
        }
        let value = self
            .call(MessageType::Create, &self.runtime(), &self.registry(), body)
            .await?;
        address_field(&value, "address")
    }

    /// Replaces the connection's token with `token` (same identity, e.g. fresh from the auth
    /// service before the current one expires), so the session outlives the first token;
    /// returns the node's answer (`exp`: the new expiry). Another identity's token is 403, an
    /// invalid one 401, both as [`ClientError::Protocol`].
    pub async fn renew_token(&self, token: &str) -> Result<Value, ClientError> {
        let node = Address::node(&self.welcome().domain)?;
        self.call(
            MessageType::Update,
            &self.runtime(),
            &node,
            json!({"resource": "token", "token": token}),
        )
        .await
    }

    /// Unregisters `address`, asking as that address.
    pub async fn unregister(&self, address: &Address) -> Result<(), ClientError> {
        self.call(
            MessageType::Delete,
            address,
            &self.registry(),
            json!({"resource": address}),
        )
        .await
        .map(drop)
    }

    /// Asks the registry, as `from`, about `resource`: a hyperty address, a `user://` address,
    /// or a path ending in `/`. 404 comes back as [`ClientError::Protocol`].
    pub async fn lookup(&self, from: &Address, resource: &str) -> Result<Value, ClientError> {
        self.call(
            MessageType::Read,
            from,
            &self.registry(),
            json!({"resource": resource}),
        )
        .await
    }

    /// Polls the registry, as `from`, every `every` until `address` is unknown (404); gives up
    /// with [`ClientError::Timeout`] after `wait`.
    pub async fn wait_until_gone(
        &self,
        from: &Address,
        address: &Address,
        every: Duration,
        wait: Duration,
    ) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.lookup(from, address.as_str()).await {
                Err(ClientError::Protocol { code: 404, .. }) => return Ok(()),
                Err(e @ ClientError::Closed(_)) => return Err(e),
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Timeout(wait));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Waits until the connection ends (at most [`ClientOptions::request_timeout`]); returns
    /// how.
    pub async fn closed(&self) -> Result<Closed, ClientError> {
        let mut ended = self.ended();
        let wait = self.inner.options.request_timeout;
        tokio::time::timeout(wait, ended.wait_for(Option::is_some))
            .await
            .map_err(|_| ClientError::Timeout(wait))?
            .map(|c| c.clone().unwrap_or_else(|| Closed::abnormal("")))
            .map_err(|_| ClientError::Closed(Closed::abnormal("the connection task ended")))
    }

    /// Closes the connection cleanly and waits for the node's answer. The node keeps the
    /// session for its grace period.
    pub async fn close(&self) -> Result<Closed, ClientError> {
        let _ = self.commands().send(Command::Close).await;
        self.closed().await
    }

    /// Drops the connection at once, without a close handshake, as a lost network would.
    pub fn drop_connection(&self) {
        lock(&self.inner.connection).abort(
            &self.inner.shared,
            Closed::abnormal("connection dropped by the client"),
        );
    }

    /// Reconnects with `token` (same identity; a fresh token is fine) and the session's resume
    /// token, replacing the current connection (which the node closes with 4009 if it is still
    /// open). Requests in flight fail with [`ClientError::Closed`]; routes and the inbound queue
    /// are kept, so observers go on. Returns the new welcome (`resumed`, `addresses`).
    pub async fn resume(&self, token: &str) -> Result<Welcome, ClientError> {
        let target = lock(&self.inner.target).clone();
        self.resume_at(target, token).await
    }

    /// Like [`Client::resume`], on `target` (another replica: the node hands the session
    /// over); later resumes go there too.
    pub async fn resume_at(&self, target: Target, token: &str) -> Result<Welcome, ClientError> {
        let resume_token = self.resume_token();
        let link = target
            .open(
                token,
                Some(&resume_token),
                self.inner.options.connect_timeout,
            )
            .await?;
        *lock(&self.inner.target) = target;
        let welcome = link.welcome().clone();
        {
            let mut connection = lock(&self.inner.connection);
            connection.abort(
                &self.inner.shared,
                Closed::new(4009, "resumed by another connection"),
            );
            let queues = Queues {
                inbound: self.inner.inbound_tx.clone(),
                unparsed: self.inner.unparsed_tx.clone(),
            };
            *connection = spawn(link, self.inner.shared.clone(), queues);
        }
        *lock(&self.inner.welcome) = welcome.clone();
        Ok(welcome)
    }

    /// Adds a route: messages to `to` from `from` go to the returned receiver instead of the
    /// inbound queue, until it is dropped or [`Client::remove_route`] is called.
    pub fn route(&self, to: &Address, from: &Address) -> mpsc::Receiver<Message> {
        let (tx, rx) = mpsc::channel(self.inner.options.queue_len.max(1));
        lock(&self.inner.shared)
            .routes
            .insert((to.clone(), from.clone()), tx);
        rx
    }

    /// Removes the route of `to` from `from`.
    pub fn remove_route(&self, to: &Address, from: &Address) {
        lock(&self.inner.shared)
            .routes
            .remove(&(to.clone(), from.clone()));
    }
}

fn address_field(value: &Value, field: &str) -> Result<Address, ClientError> {
    value[field]
        .as_str()
        .ok_or_else(|| ClientError::Unexpected(format!("no {field} in {value}")))?
        .parse()
}

/// Where the connection task puts what is not a response.
struct Queues {
    inbound: mpsc::Sender<Message>,
    unparsed: mpsc::Sender<String>,
}

fn spawn(link: Link, shared: Arc<Mutex<Shared>>, queues: Queues) -> Connection {
    let (commands, rx) = mpsc::channel(64);
    let (ended_tx, ended) = watch::channel(None);
    let ended_tx = Arc::new(ended_tx);
    let ending = ended_tx.clone();
    let task = tokio::spawn(async move {
        let closed = drive(link, rx, &shared, &queues).await;
        tracing::debug!(%closed, "message node connection ended");
        // Dropping the senders fails every pending request with `Closed`.
        lock(&shared).pending.clear();
        ending.send_replace(Some(closed));
    });
    Connection {
        commands,
        ended,
        ended_tx,
        task,
    }
}

async fn drive(
    mut link: Link,
    mut commands: mpsc::Receiver<Command>,
    shared: &Mutex<Shared>,
    queues: &Queues,
) -> Closed {
    let mut accepting = true;
    loop {
        tokio::select! {
            command = commands.recv(), if accepting => match command {
                Some(Command::Send(message, done)) => {
                    let sent = link.send(&message).await;
                    let failed = sent.clone().err();
                    let _ = done.send(sent);
                    if let Some(closed) = failed {
                        return closed;
                    }
                }
                Some(Command::Text(text, done)) => {
                    let _ = done.send(link.send_text(text).await);
                }
                Some(Command::Envelope(envelope, done)) => {
                    let _ = done.send(link.send_envelope(*envelope).await);
                }
                Some(Command::Close) | None => {
                    // Keep reading until the node answers the close (or the stream ends).
                    link.close().await;
                    accepting = false;
                }
            },
            received = link.recv() => match received {
                Ok(Received::Message(message)) => dispatch(message, shared, &queues.inbound),
                Ok(Received::Unparsed(text)) => {
                    if queues.unparsed.try_send(text).is_err() {
                        tracing::warn!("unparsed-frame queue full; dropping a frame");
                    }
                }
                Err(closed) => return closed,
            },
        }
    }
}

fn dispatch(message: Message, shared: &Mutex<Shared>, inbound: &mpsc::Sender<Message>) {
    let mut shared = lock(shared);
    if message.is_response()
        && let Some(waiter) = shared
            .pending
            .remove(&(message.to.clone(), message.id.clone()))
    {
        // A waiter that gave up (timeout) just drops the late response.
        let _ = waiter.send(message);
        return;
    }
    let key = (message.to.clone(), message.from.clone());
    let message = match shared.routes.get(&key) {
        Some(route) => match route.try_send(message) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(m)) => {
                tracing::warn!(to = %m.to, from = %m.from, "observer queue full; dropping a message");
                return;
            }
            Err(mpsc::error::TrySendError::Closed(m)) => {
                shared.routes.remove(&key);
                m
            }
        },
        None => message,
    };
    drop(shared);
    if let Err(mpsc::error::TrySendError::Full(m)) = inbound.try_send(message) {
        tracing::warn!(id = %m.id, from = %m.from, "inbound queue full; dropping a message");
    }
}
