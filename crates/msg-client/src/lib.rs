//! The Message Node client: the one implementation of the client side of docs/protocol.md,
//! used by tests, tools and services (as mini-redis ships its client next to its protocol).
//!
//! ```no_run
//! # async fn demo(token: &str) -> Result<(), rethink_msg_client::ClientError> {
//! use rethink_msg_client::{Client, Target, MessageType, Message};
//! let alice = Client::connect(Target::ws("ws://127.0.0.1:8082/msg"), token).await?;
//! let me = alice.register(serde_json::json!({"name": "chat"})).await?;
//! let bob = alice.lookup(&me, "user://localhost/bob").await?;
//! # let _ = bob; Ok(()) }
//! ```
//!
//! Layout:
//! - [`address`]: [`Address`], the validated `hyperty://`, `user://`, `object://`,
//!   `runtime://` and `domain://` forms.
//! - [`message`]: the envelope [`Message`] (`{id, type, from, to, body}`), [`MessageId`],
//!   [`MessageType`], response helpers and the [`Welcome`].
//! - [`transport`]: the two transports behind one [`transport::Link`]: the WebSocket `/msg`
//!   (token in `?access_token=` or the `Authorization` header) and gRPC
//!   `rethink.v1.MsgNode.Attach` (token in `authorization` metadata, `resume-token` metadata).
//! - [`client`]: [`Client`], one connection shared by many hyperties: request/response
//!   matching keyed by (sender, id) with timeouts, the inbound queue, registry helpers,
//!   token renewal ([`Client::renew_token`]), resume, close, and raw frames for tests
//!   ([`Client::send_text`], [`Client::send_envelope`], [`Client::recv_unparsed`]).
//! - [`objects`]: [`Reporter`] and [`Observer`] of data objects (private to the reporter's
//!   identity unless [`Reporter::create_with`] names observers).
//! - [`error`]: [`ClientError`] and [`Closed`].
//!
//! Contracts:
//! - Nothing the node sends can panic the client: frames that are not envelopes it
//!   understands go to their own queue ([`Client::recv_unparsed`]); a connection that breaks fails its pending requests with
//!   [`ClientError::Closed`], never a hang (every wait has a timeout from [`ClientOptions`]).
//! - A request is completed only by a `response` addressed to the request's `from` with the
//!   request's id; ids from [`Client::next_id`] are unique per client.
//! - The connection task never blocks on a slow reader: inbound and observer queues are
//!   bounded ([`ClientOptions::queue_len`]) and drop on overflow, with a warning.
//! - Closes are reported in WebSocket close-code terms for both transports (see [`Closed`]).
//! - [`Client::resume`] keeps the session (addresses, observers' routes, the inbound queue);
//!   dropping the last [`Client`] drops the connection without a close handshake.

pub mod address;
pub mod client;
pub mod error;
pub mod message;
pub mod objects;
pub mod transport;

pub use address::{Address, AddressKind};
pub use client::{Client, ClientOptions, Target};
pub use error::{ClientError, Closed};
pub use message::{Message, MessageId, MessageType, PreviousClose, Welcome};
pub use objects::{Change, ObjectState, Observer, Reporter};
pub use transport::{Received, TokenIn, WsLink, WsTarget};
