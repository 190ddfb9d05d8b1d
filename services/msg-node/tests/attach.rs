//! gRPC `Attach` for server hyperties: a well-known address, messages with a browser client,
//! and the grant and ownership rules.

mod common;

use anyhow::Result;
use common::{
    TestBed, code,
    service::{attach, envelope, next},
};
use rethink_proto::v1::{Envelope as PbEnvelope, envelope::Id};
use serde_json::json;

#[tokio::test]
async fn a_service_registers_a_well_known_address_and_talks_with_a_browser() -> Result<()> {
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let b = bed.default_replica("node-b").await?;
    let mut conference = attach(a.grpc, &bed.service_token("service:conference"))
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

    // Another identity cannot take the well-known address (it is reserved for the conference
    // service); browsers cannot register one.
    let mut impostor = attach(b.grpc, &bed.service_token("service:impostor"))
        .await?
        .unwrap();
    assert_eq!(
        code(
            &impostor
                .claim(1, "hyperty://localhost/conference", None)
                .await?
        ),
        403
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

    // Cameras get well-known addresses too, from a publisher service.
    let mut other = attach(b.grpc, &bed.service_token("service:publisher-1"))
        .await?
        .unwrap();
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
        .issue("service:publisher-cam-1", "publisher-cam-1", grants, None)
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
