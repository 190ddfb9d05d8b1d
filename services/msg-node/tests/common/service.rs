//! A server hyperty over a real gRPC `Attach` stream.

use anyhow::Result;
use rethink_proto::v1::{Envelope as PbEnvelope, envelope::Id, msg_node_client::MsgNodeClient};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// An attached service: send on `tx`, receive on `rx`.
pub struct Service {
    pub tx: mpsc::Sender<PbEnvelope>,
    pub rx: Streaming<PbEnvelope>,
    pub runtime: String,
}

pub async fn attach(
    grpc: std::net::SocketAddr,
    token: &str,
) -> Result<Result<Service, tonic::Status>> {
    let mut client = MsgNodeClient::connect(format!("http://{grpc}")).await?;
    let (tx, rx) = mpsc::channel(16);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let mut stream = match client.attach(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    let welcome = next(&mut stream).await?;
    assert_eq!(welcome["id"], "session", "{welcome}");
    let runtime = welcome["body"]["value"]["runtime"]
        .as_str()
        .unwrap()
        .to_owned();
    Ok(Ok(Service {
        tx,
        rx: stream,
        runtime,
    }))
}

impl Service {
    /// Asks the registry for the well-known `address` (request `id`); returns the response.
    pub async fn claim(
        &mut self,
        id: i64,
        address: &str,
        descriptor: Option<Value>,
    ) -> Result<Value> {
        let mut body = json!({"resource": "hyperty", "address": address});
        if let Some(descriptor) = descriptor {
            body["descriptor"] = descriptor;
        }
        let runtime = self.runtime.clone();
        self.tx
            .send(envelope(
                id,
                "create",
                &runtime,
                "domain://registry.localhost",
                body,
            ))
            .await?;
        next(&mut self.rx).await
    }
}

pub fn envelope(id: i64, kind: &str, from: &str, to: &str, body: Value) -> PbEnvelope {
    PbEnvelope {
        id: Some(Id::IdInt(id)),
        r#type: kind.into(),
        from: from.into(),
        to: to.into(),
        body: body.to_string(),
        ..PbEnvelope::default()
    }
}

pub async fn next(stream: &mut Streaming<PbEnvelope>) -> Result<Value> {
    let m = tokio::time::timeout(super::WAIT, stream.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
    let id = match m.id {
        Some(Id::IdInt(n)) => json!(n),
        Some(Id::IdStr(s)) => json!(s),
        None => Value::Null,
    };
    let body: Value = if m.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&m.body)?
    };
    Ok(json!({"id": id, "type": m.r#type, "from": m.from, "to": m.to, "body": body}))
}
