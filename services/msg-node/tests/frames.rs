//! Bad input on a live connection: every bad frame gets an error response and the connection
//! keeps working.

mod common;

use anyhow::Result;
use common::{TestBed, code};
use serde_json::json;

#[tokio::test]
async fn malformed_and_oversized_frames_are_answered_and_the_connection_stays_usable() -> Result<()>
{
    let bed = TestBed::start().await?;
    let a = bed.default_replica("node-a").await?;
    let (mut alice, me) = bed.user(&a, "alice").await?;

    let cases: Vec<(String, u64, &str)> = vec![
        ("{not json".into(), 400, "malformed json"),
        ("[1,2,3]".into(), 400, "must be a JSON object"),
        (json!({"type": "read", "from": me, "to": me}).to_string(), 400, "missing field 'id'"),
        (json!({"id": 1, "from": me, "to": me}).to_string(), 400, "missing field 'type'"),
        (json!({"id": 2, "type": "read", "to": me}).to_string(), 400, "missing field 'from'"),
        (json!({"id": 3, "type": "read", "from": me}).to_string(), 400, "missing field 'to'"),
        (json!({"id": 4, "type": "shout", "from": me, "to": me}).to_string(), 400, "unknown message type"),
        (json!({"id": 5, "type": "read", "from": 7, "to": me}).to_string(), 400, "'from' must be a string"),
        (
            json!({"id": 7, "type": "create", "from": me, "to": "domain://registry.localhost", "body": {"resource": "car"}}).to_string(),
            400,
            "registry create needs",
        ),
    ];
    for (frame, expected, words) in cases {
        alice.send_text(frame.clone()).await?;
        let reply = alice.recv().await?;
        assert_eq!(reply["type"], "response", "{reply}");
        assert_eq!(code(&reply), expected, "frame {:.80} got {reply}", frame);
        let description = reply["body"]["description"].as_str().unwrap_or_default();
        assert!(
            description.contains(words),
            "{description:?} lacks {words:?}"
        );
    }
    // Ids are echoed whenever they could be read.
    alice
        .send_text(json!({"id": "q", "type": "nope", "from": me, "to": me}).to_string())
        .await?;
    assert_eq!(alice.recv().await?["id"], "q");

    // Still usable: a message to itself arrives, discovery answers.
    alice
        .send(&json!({"id": 10, "type": "forward", "from": me, "to": me, "body": {"ok": true}}))
        .await?;
    let echo = alice.recv().await?;
    assert_eq!(echo["body"]["ok"], true, "{echo}");
    let found = alice
        .request(
            "read",
            &me,
            "domain://registry.localhost",
            json!({"resource": "user://localhost/alice"}),
        )
        .await?;
    assert_eq!(
        found["body"]["value"]["hyperties"][0]["address"],
        me.as_str()
    );
    Ok(())
}
