//! The two transports, behind one [`Link`]: a WebSocket on `/msg` and the gRPC `Attach` stream.
//!
//! A link carries [`Message`]s both ways and knows nothing about requests; [`crate::Client`]
//! drives one link per connection in its own task. [`WsLink`] is also usable alone, for load
//! generators that write frames themselves ([`WsLink::into_stream`]).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rethink_proto::v1::{self as pb, msg_node_client::MsgNodeClient};
use serde_json::Value;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message as Frame, client::IntoClientRequest, protocol::WebSocketConfig},
};

use crate::{
    error::{ClientError, Closed},
    message::{Message, MessageId, MessageType, Welcome},
};

/// The raw WebSocket stream.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Metadata key of the resume token on `Attach`.
pub const RESUME_METADATA: &str = "resume-token";

/// How the WebSocket carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenIn {
    /// `?access_token=<token>` (what browsers must use).
    #[default]
    Query,
    /// `Authorization: Bearer <token>`.
    Header,
    /// The URL already carries `access_token` (or deliberately none): nothing is added.
    Url,
}

/// Returns `<base>?access_token=<token>[&resume=<resume>]`, both percent-encoded.
pub fn ws_url(base: &str, token: &str, resume: Option<&str>) -> String {
    let mut url = format!("{base}?access_token={}", encode(token));
    if let Some(resume) = resume {
        url.push_str("&resume=");
        url.push_str(&encode(resume));
    }
    url
}

fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where and how to open a WebSocket connection.
#[derive(Debug, Clone)]
pub struct WsTarget {
    /// `ws://<host:port>/msg`.
    pub url: String,
    /// How the token travels.
    pub token_in: TokenIn,
    /// WebSocket settings (read buffer, frame limits); `None` for tungstenite's defaults.
    pub config: Option<WebSocketConfig>,
}

impl WsTarget {
    /// Targets `url` (`ws://<host:port>/msg`) with the token in the query.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token_in: TokenIn::Query,
            config: None,
        }
    }
}

/// An open WebSocket after the welcome.
pub struct WsLink {
    ws: WsStream,
    welcome: Welcome,
}

impl std::fmt::Debug for WsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsLink")
            .field("runtime", &self.welcome.runtime)
            .finish_non_exhaustive()
    }
}

impl WsLink {
    /// Connects to `target` with `token` (resuming `resume` if given) and reads the welcome,
    /// each within `wait`.
    pub async fn connect(
        target: &WsTarget,
        token: &str,
        resume: Option<&str>,
        wait: Duration,
    ) -> Result<Self, ClientError> {
        let mut request = match target.token_in {
            TokenIn::Query => ws_url(&target.url, token, None),
            TokenIn::Header | TokenIn::Url => target.url.clone(),
        };
        if let Some(resume) = resume {
            request.push(if request.contains('?') { '&' } else { '?' });
            request.push_str("resume=");
            request.push_str(&encode(resume));
        }
        let mut request = request.into_client_request()?;
        if target.token_in == TokenIn::Header {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| ClientError::Transport("the token is not a valid header".into()))?;
            request.headers_mut().insert("authorization", value);
        }
        let connect = tokio_tungstenite::connect_async_with_config(request, target.config, true);
        let (mut ws, _) = match tokio::time::timeout(wait, connect).await {
            Err(_) => return Err(ClientError::Timeout(wait)),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err(ClientError::Refused {
                    status: response.status().as_u16(),
                    body,
                });
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(connected)) => connected,
        };
        let first = tokio::time::timeout(wait, next_message(&mut ws))
            .await
            .map_err(|_| ClientError::Timeout(wait))?
            .map_err(ClientError::Closed)?;
        let welcome = Welcome::from_message(&first)?;
        Ok(Self { ws, welcome })
    }

    /// Returns the welcome.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Sends `message` and waits for the response with its id; anything else that arrives in
    /// between is dropped. For setup before a load generator takes the stream over.
    pub async fn request(
        &mut self,
        message: &Message,
        wait: Duration,
    ) -> Result<Message, ClientError> {
        self.ws.send(Frame::text(message.to_string())).await?;
        tokio::time::timeout(wait, async {
            loop {
                let m = next_message(&mut self.ws)
                    .await
                    .map_err(ClientError::Closed)?;
                if m.is_response() && m.id == message.id && m.to == message.from {
                    return Ok(m);
                }
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(wait))?
    }

    /// Returns the stream and the welcome, for callers that write frames themselves.
    pub fn into_stream(self) -> (WsStream, Welcome) {
        (self.ws, self.welcome)
    }
}

/// What one inbound frame turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// An envelope the client understands.
    Message(Message),
    /// A frame that is not one (not JSON, an unknown type, a `from`/`to` that is not an
    /// address: the node echoes what a bad frame carried), as JSON text.
    Unparsed(String),
}

/// Reads the next message, skipping frames that are not envelopes (during setup).
async fn next_message(ws: &mut WsStream) -> Result<Message, Closed> {
    loop {
        if let Received::Message(m) = next_frame(ws).await? {
            return Ok(m);
        }
    }
}

/// Reads the next text frame.
async fn next_frame(ws: &mut WsStream) -> Result<Received, Closed> {
    loop {
        match ws.next().await {
            Some(Ok(Frame::Text(text))) => {
                return Ok(match serde_json::from_str::<Message>(text.as_str()) {
                    Ok(m) => Received::Message(m),
                    Err(_) => Received::Unparsed(text.as_str().to_owned()),
                });
            }
            Some(Ok(Frame::Close(frame))) => {
                return Err(frame.map_or_else(
                    || Closed::new(Closed::NO_STATUS, ""),
                    |f| Closed::new(u16::from(f.code), f.reason.as_str()),
                ));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(Closed::abnormal(e.to_string())),
            None => return Err(Closed::abnormal("connection ended")),
        }
    }
}

/// Where to attach over gRPC.
#[derive(Debug, Clone)]
pub struct GrpcTarget {
    /// `http://<host:port>` of the node's gRPC port.
    pub endpoint: String,
}

/// An open `Attach` stream after the welcome.
#[derive(Debug)]
pub struct GrpcLink {
    tx: Option<mpsc::Sender<pb::Envelope>>,
    rx: tonic::Streaming<pb::Envelope>,
    welcome: Welcome,
}

impl GrpcLink {
    /// Attaches to `target` with `token` (resuming `resume` if given) and reads the welcome.
    pub async fn connect(
        target: &GrpcTarget,
        token: &str,
        resume: Option<&str>,
        wait: Duration,
    ) -> Result<Self, ClientError> {
        let endpoint = tonic::transport::Endpoint::from_shared(target.endpoint.clone())
            .map_err(|e| ClientError::Transport(format!("{}: {e}", target.endpoint)))?
            .connect_timeout(wait);
        let channel = endpoint.connect().await?;
        let mut client = MsgNodeClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Transport("the token is not valid metadata".into()))?;
        request.metadata_mut().insert("authorization", bearer);
        if let Some(resume) = resume {
            let value = resume.parse().map_err(|_| {
                ClientError::Transport("the resume token is not valid metadata".into())
            })?;
            request.metadata_mut().insert(RESUME_METADATA, value);
        }
        let mut rx = match tokio::time::timeout(wait, client.attach(request)).await {
            Err(_) => return Err(ClientError::Timeout(wait)),
            Ok(Err(status)) => return Err(refused(&status)),
            Ok(Ok(response)) => response.into_inner(),
        };
        let first = tokio::time::timeout(wait, next_envelope(&mut rx))
            .await
            .map_err(|_| ClientError::Timeout(wait))?
            .map_err(ClientError::Closed)?;
        let welcome = Welcome::from_message(&first)?;
        Ok(Self {
            tx: Some(tx),
            rx,
            welcome,
        })
    }
}

fn refused(status: &tonic::Status) -> ClientError {
    let code = match status.code() {
        tonic::Code::Unauthenticated => 401,
        tonic::Code::PermissionDenied => 403,
        tonic::Code::NotFound => 404,
        tonic::Code::ResourceExhausted => 429,
        _ => 503,
    };
    ClientError::Refused {
        status: code,
        body: format!("{:?}: {}", status.code(), status.message()),
    }
}

async fn next_envelope(rx: &mut tonic::Streaming<pb::Envelope>) -> Result<Message, Closed> {
    loop {
        if let Received::Message(m) = next_grpc(rx).await? {
            return Ok(m);
        }
    }
}

async fn next_grpc(rx: &mut tonic::Streaming<pb::Envelope>) -> Result<Received, Closed> {
    match rx.message().await {
        Ok(Some(envelope)) => Ok(match from_proto(&envelope) {
            Ok(m) => Received::Message(m),
            Err(_) => Received::Unparsed(
                serde_json::json!({
                    "id": match &envelope.id {
                        Some(pb::envelope::Id::IdInt(n)) => Value::from(*n),
                        Some(pb::envelope::Id::IdStr(s)) => Value::from(s.clone()),
                        None => Value::Null,
                    },
                    "type": envelope.r#type,
                    "from": envelope.from,
                    "to": envelope.to,
                    "body": envelope.body,
                })
                .to_string(),
            ),
        }),
        Ok(None) => Err(Closed::new(Closed::NORMAL, "stream ended")),
        Err(status) => Err(Closed::from_status(&status)),
    }
}

/// Converts a message to the `Attach` envelope: the body as JSON text, empty for null.
pub fn to_proto(message: &Message) -> pb::Envelope {
    pb::Envelope {
        id: match &message.id {
            MessageId::Int(n) => Some(pb::envelope::Id::IdInt(*n)),
            MessageId::Str(s) => Some(pb::envelope::Id::IdStr(s.clone())),
            MessageId::Null => None,
        },
        r#type: message.kind.as_str().to_owned(),
        from: message.from.to_string(),
        to: message.to.to_string(),
        body: if message.body.is_null() {
            String::new()
        } else {
            message.body.to_string()
        },
        trace: message
            .trace
            .as_ref()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    }
}

/// Converts an `Attach` envelope to a message.
pub fn from_proto(envelope: &pb::Envelope) -> Result<Message, ClientError> {
    let kind = MessageType::parse(&envelope.r#type)
        .ok_or_else(|| ClientError::Unexpected(format!("unknown type {:?}", envelope.r#type)))?;
    let body = if envelope.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&envelope.body)
            .map_err(|e| ClientError::Unexpected(format!("body is not JSON: {e}")))?
    };
    Ok(Message {
        id: match &envelope.id {
            Some(pb::envelope::Id::IdInt(n)) => MessageId::Int(*n),
            Some(pb::envelope::Id::IdStr(s)) => MessageId::Str(s.clone()),
            None => MessageId::Null,
        },
        kind,
        from: envelope.from.parse()?,
        to: envelope.to.parse()?,
        body,
        trace: (!envelope.trace.is_empty()).then(|| {
            envelope
                .trace
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }),
    })
}

/// One open connection of either transport.
#[derive(Debug)]
pub enum Link {
    /// A WebSocket on `/msg`.
    Ws(Box<WsLink>),
    /// An `Attach` stream.
    Grpc(Box<GrpcLink>),
}

impl Link {
    /// Returns the welcome of the connection.
    pub fn welcome(&self) -> &Welcome {
        match self {
            Link::Ws(l) => &l.welcome,
            Link::Grpc(l) => &l.welcome,
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), Closed> {
        match self {
            Link::Ws(l) => {
                l.ws.send(Frame::text(message.to_string()))
                    .await
                    .map_err(|e| Closed::abnormal(e.to_string()))
            }
            Link::Grpc(l) => match &l.tx {
                Some(tx) => tx
                    .send(to_proto(message))
                    .await
                    .map_err(|_| Closed::abnormal("the attach stream is closed")),
                None => Err(Closed::new(Closed::NORMAL, "closed by the client")),
            },
        }
    }

    /// Sends one raw text frame (WebSocket only; on `Attach` the text becomes the body of
    /// nothing, so it is refused).
    pub async fn send_text(&mut self, text: String) -> Result<(), Closed> {
        match self {
            Link::Ws(l) => {
                l.ws.send(Frame::text(text))
                    .await
                    .map_err(|e| Closed::abnormal(e.to_string()))
            }
            Link::Grpc(_) => Err(Closed::abnormal("raw frames need the WebSocket transport")),
        }
    }

    /// Sends one raw `Attach` envelope (gRPC only).
    pub async fn send_envelope(&mut self, envelope: pb::Envelope) -> Result<(), Closed> {
        match self {
            Link::Grpc(l) => match &l.tx {
                Some(tx) => tx
                    .send(envelope)
                    .await
                    .map_err(|_| Closed::abnormal("the attach stream is closed")),
                None => Err(Closed::new(Closed::NORMAL, "closed by the client")),
            },
            Link::Ws(_) => Err(Closed::abnormal("raw envelopes need the Attach transport")),
        }
    }

    /// Receives the next frame, or how the connection ended.
    pub async fn recv(&mut self) -> Result<Received, Closed> {
        match self {
            Link::Ws(l) => next_frame(&mut l.ws).await,
            Link::Grpc(l) => next_grpc(&mut l.rx).await,
        }
    }

    /// Starts a clean close: a close frame on the WebSocket, the end of the request stream on
    /// `Attach`. The node's answer still arrives through [`Link::recv`].
    pub async fn close(&mut self) {
        match self {
            Link::Ws(l) => {
                let _ = l.ws.close(None).await;
            }
            Link::Grpc(l) => l.tx = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Address;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            ws_url("ws://h/msg", "a.b-c_d", Some("x/y+z")),
            "ws://h/msg?access_token=a.b-c_d&resume=x%2Fy%2Bz"
        );
    }

    #[test]
    fn proto_round_trip_keeps_ids_and_null_bodies() {
        let a = Address::parse("hyperty://localhost/a").unwrap();
        let b = Address::parse("hyperty://localhost/b").unwrap();
        for (id, body) in [
            (MessageId::Int(5), json!({"k": 1})),
            (MessageId::from("x"), Value::Null),
        ] {
            let m = Message::new(MessageType::Forward, &a, &b, body).with_id(id);
            let pb = to_proto(&m);
            assert_eq!(from_proto(&pb).unwrap(), m);
        }
        let mut bad = to_proto(&Message::new(MessageType::Forward, &a, &b, json!(1)));
        bad.body = "{oops".into();
        assert!(from_proto(&bad).is_err());
    }
}
