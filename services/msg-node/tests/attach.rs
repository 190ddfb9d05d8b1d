//! gRPC `Attach` for server hyperties: a well-known address, messages with a browser client,
//! and the grant and ownership rules.

mod common;

use anyhow::Result;
use common::{TestBed, code};
use rethink_proto::v1::{Envelope as PbEnvelope, envelope::Id, msg_node_client::MsgNodeClient};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

struct Service {
    tx: mpsc::Sender<PbEnvelope>,
    rx: Streaming<PbEnvelope>,
    runtime: String,
}

async fn attach(grpc: std::net::SocketAddr, token: &str) -> Result<Result<Service, tonic::Status>> {
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
    async fn claim(&mut self, id: i64, address: &str, descriptor: Option<Value>) -> Result<Value> {
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

fn envelope(id: i64, kind: &str, from: &str, to: &str, body: Value) -> PbEnvelope {
    PbEnvelope {
        id: Some(Id::IdInt(id)),
        r#type: kind.into(),
        from: from.into(),
        to: to.into(),
        body: body.to_string(),
        ..PbEnvelope::default()
    }
}

async fn next(stream: &mut Streaming<PbEnvelope>) -> Result<Value> {
    let m = tokio::time::timeout(common::WAIT, stream.message())
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

#[tokio::test]
async fn a_service_registers_a_well_known_address_and_talks_with_a_browser() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let b = bed.default_replica("node-b").await?;
    let mut conference = attach(a.grpc, &bed.service_token("conference"))
        .await?
        .unwrap();

    let runtime = conference.runtime.clone();
    let registered = conference
        .claim(
            1,
            "hyperty://localhost/conference",
            Some(json!({"kind": "conference"})),
        )
        .await?;
    assert_eq!(code(&registered), 200, "{registered}");
    assert_eq!(
        registered["body"]["value"]["address"],
        "hyperty://localhost/conference"
    );

    // A browser on the other replica calls the conference hyperty and gets its answer.
    let (mut alice, me) = bed.user(&b, "alice").await?;
    alice
        .send(&json!({"id": "join-1", "type": "execute", "from": me, "to": "hyperty://localhost/conference",
                       "body": {"method": "joinRoom", "room": "r1"}}))
        .await?;
    let request = next(&mut conference.rx).await?;
    assert_eq!(request["id"], "join-1");
    assert_eq!(request["from"], me.as_str());
    assert_eq!(request["body"]["method"], "joinRoom");
    conference
        .tx
        .send(PbEnvelope {
            id: Some(Id::IdStr("join-1".into())),
            r#type: "response".into(),
            from: "hyperty://localhost/conference".into(),
            to: me.clone(),
            body: json!({"code": 200, "value": {"room": "r1"}}).to_string(),
            ..PbEnvelope::default()
        })
        .await?;
    let reply = alice.response_to(&json!("join-1")).await?;
    assert_eq!(reply["body"]["value"]["room"], "r1", "{reply}");

    // Same rules as browsers: a spoofed from is refused, a bad body answered with 400.
    conference
        .tx
        .send(envelope(
            2,
            "execute",
            &me,
            "hyperty://localhost/conference",
            json!({}),
        ))
        .await?;
    assert_eq!(code(&next(&mut conference.rx).await?), 403);
    let mut bad = envelope(3, "execute", &runtime, &me, json!({}));
    bad.body = "{oops".into();
    conference.tx.send(bad).await?;
    let answer = next(&mut conference.rx).await?;
    assert_eq!(
        (code(&answer), answer["id"].as_i64()),
        (400, Some(3)),
        "{answer}"
    );

    // Another identity cannot take the well-known address; browsers cannot register one.
    let mut other = attach(b.grpc, &bed.service_token("impostor"))
        .await?
        .unwrap();
    assert_eq!(
        code(
            &other
                .claim(1, "hyperty://localhost/conference", None)
                .await?
        ),
        409
    );
    let refused = alice
        .request(
            "create",
            &me,
            "domain://registry.localhost",
            json!({"resource": "hyperty", "address": "hyperty://localhost/camera/front"}),
        )
        .await?;
    assert_eq!(code(&refused), 403, "{refused}");

    // Cameras get well-known addresses too.
    assert_eq!(
        code(
            &other
                .claim(2, "hyperty://localhost/camera/front-door", None)
                .await?
        ),
        200
    );
    // Browsers list the cameras by path.
    let cameras = alice.lookup(&me, "hyperty://localhost/camera/").await?;
    assert_eq!(code(&cameras), 200, "{cameras}");
    assert_eq!(
        cameras["body"]["value"]["hyperties"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        cameras["body"]["value"]["hyperties"][0]["address"],
        "hyperty://localhost/camera/front-door"
    );
    Ok(())
}

#[tokio::test]
async fn attach_needs_the_services_attach_grant() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let (user_token, _) = bed.user_token("alice");
    let status = attach(a.grpc, &user_token)
        .await?
        .err()
        .expect("a user token attached");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = attach(a.grpc, "garbage")
        .await?
        .err()
        .expect("garbage attached");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    Ok(())
}

#[tokio::test]
async fn revoking_a_service_token_ends_its_stream() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let grants = rethink_common::token::Grants {
        services: rethink_common::token::ServiceGrants { attach: true },
        ..Default::default()
    };
    let issued = bed
        .auth
        .issue("service:camera-1", "camera-1", grants, None)
        .unwrap();
    let mut camera = attach(a.grpc, &issued.token).await?.unwrap();
    assert_eq!(
        code(
            &camera
                .claim(1, "hyperty://localhost/camera/1", None)
                .await?
        ),
        200
    );
    bed.auth
        .revoke(&issued.claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let end = tokio::time::timeout(common::WAIT, camera.rx.message()).await?;
    let status = end.expect_err("the stream should end with a status");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    assert_eq!(status.message(), "token revoked");
    // Its well-known address is released at once.
    let (mut alice, me) = bed.user(&a, "alice").await?;
    let gone = alice.lookup(&me, "hyperty://localhost/camera/1").await?;
    assert_eq!(code(&gone), 404, "{gone}");
    Ok(())
}
