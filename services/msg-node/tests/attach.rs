//! gRPC `Attach` for server hyperties: a well-known address, messages with a browser client,
//! and the grant and ownership rules.

use anyhow::Result;
use rethink_msg_client::{Address, Client, ClientError, Message, MessageId, MessageType};
use rethink_proto::v1::{Envelope as PbEnvelope, envelope::Id};
use rethink_testbed::TestBed;
use serde_json::json;

/// Returns the code a well-known claim got: 200 when granted, else the refusal's.
fn claim_code(claimed: &Result<Address, ClientError>) -> Option<u16> {
    match claimed {
        Ok(_) => Some(200),
        Err(e) => e.code(),
    }
}

#[tokio::test]
async fn a_service_registers_a_well_known_address_and_talks_with_a_browser() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let b = bed.default_msg_node("node-b").await?;
    let conference = bed.attach(&a, "service:conference").await?;
    let conference_h = Address::hyperty("localhost", "conference")?;

    let runtime = conference.runtime();
    let registered = conference
        .register_well_known(&conference_h, Some(json!({"kind": "conference"})))
        .await?;
    assert_eq!(registered, conference_h);

    // A browser on the other replica calls the conference hyperty and gets its answer.
    let (alice, me) = bed.user(&b, "alice").await?;
    let join = Message::new(
        MessageType::Execute,
        &me,
        &conference_h,
        json!({"method": "joinRoom", "room": "r1"}),
    )
    .with_id("join-1");
    let joining = tokio::spawn({
        let alice = alice.clone();
        async move { alice.request(join).await }
    });
    let request = conference.recv().await?;
    assert_eq!(request.id, MessageId::from("join-1"));
    assert_eq!(request.from, me);
    assert_eq!(request.body["method"], "joinRoom");
    conference
        .send_envelope(PbEnvelope {
            id: Some(Id::IdStr("join-1".into())),
            r#type: "response".into(),
            from: "hyperty://localhost/conference".into(),
            to: me.to_string(),
            body: json!({"code": 200, "value": {"room": "r1"}}).to_string(),
            ..PbEnvelope::default()
        })
        .await?;
    let reply = joining.await??;
    assert_eq!(reply.value()["room"], "r1", "{reply}");

    // Same rules as browsers: a spoofed from is refused, a bad body answered with 400.
    let spoofed = conference
        .request(Message::new(MessageType::Execute, &me, &conference_h, json!({})).with_id(2))
        .await?;
    assert_eq!(spoofed.code(), 403);
    conference
        .send_envelope(PbEnvelope {
            id: Some(Id::IdInt(3)),
            r#type: "execute".into(),
            from: runtime.to_string(),
            to: me.to_string(),
            body: "{oops".into(),
            ..PbEnvelope::default()
        })
        .await?;
    let answer = conference.recv().await?;
    assert_eq!(
        (answer.code(), answer.id.clone()),
        (400, MessageId::Int(3)),
        "{answer}"
    );

    // Another identity cannot take the well-known address (it is reserved for the conference
    // service); browsers cannot register one.
    let impostor = bed.attach(&b, "service:impostor").await?;
    assert_eq!(
        claim_code(&impostor.register_well_known(&conference_h, None).await),
        Some(403)
    );
    let refused = alice
        .request(Message::new(
            MessageType::Create,
            &me,
            &alice.registry(),
            json!({"resource": "hyperty", "address": "hyperty://localhost/camera/front"}),
        ))
        .await?;
    assert_eq!(refused.code(), 403, "{refused}");

    // Cameras get well-known addresses too, from a publisher service.
    let other = bed.attach(&b, "service:publisher-1").await?;
    let front_door = Address::hyperty("localhost", "camera/front-door")?;
    assert_eq!(
        claim_code(&other.register_well_known(&front_door, None).await),
        Some(200)
    );
    // Browsers list the cameras by path.
    let cameras = alice.lookup(&me, "hyperty://localhost/camera/").await?;
    assert_eq!(
        cameras["hyperties"].as_array().map(Vec::len),
        Some(1),
        "{cameras}"
    );
    assert_eq!(
        cameras["hyperties"][0]["address"],
        "hyperty://localhost/camera/front-door"
    );
    Ok(())
}

#[tokio::test]
async fn attach_needs_the_services_attach_grant() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let (user_token, _) = bed.user_token("alice");
    // gRPC PERMISSION_DENIED and UNAUTHENTICATED, in HTTP terms.
    let refused = Client::connect(a.attach_target(), &user_token).await;
    assert!(
        matches!(refused, Err(ClientError::Refused { status: 403, .. })),
        "a user token attached: {refused:?}"
    );
    let refused = Client::connect(a.attach_target(), "garbage").await;
    assert!(
        matches!(refused, Err(ClientError::Refused { status: 401, .. })),
        "garbage attached: {refused:?}"
    );
    Ok(())
}

#[tokio::test]
async fn revoking_a_service_token_ends_its_stream() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let grants = rethink_common::token::Grants {
        services: rethink_common::token::ServiceGrants { attach: true },
        ..Default::default()
    };
    let issued = bed.token("service:publisher-cam-1", "publisher-cam-1", grants)?;
    let camera = Client::connect(a.attach_target(), &issued.token).await?;
    let camera_h = Address::hyperty("localhost", "camera/1")?;
    assert_eq!(
        claim_code(&camera.register_well_known(&camera_h, None).await),
        Some(200)
    );
    bed.auth
        .revoke(&issued.claims)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // UNAUTHENTICATED "token revoked" is 4001 in close-code terms.
    let end = camera.closed().await?;
    assert_eq!(
        (end.code, end.reason.as_str()),
        (4001, "token revoked"),
        "{end}"
    );
    // Its well-known address is released at once.
    let (alice, me) = bed.user(&a, "alice").await?;
    let gone = alice.lookup(&me, camera_h.as_str()).await;
    assert_eq!(gone.err().and_then(|e| e.code()), Some(404));
    Ok(())
}
