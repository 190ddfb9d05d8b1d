//! Bad input on a live connection: every bad frame gets an error response and the connection
//! keeps working.

use anyhow::Result;
use rethink_msg_client::{Message, MessageId, MessageType};
use rethink_testbed::TestBed;
use serde_json::json;

#[tokio::test]
async fn malformed_and_oversized_frames_are_answered_and_the_connection_stays_usable() -> Result<()>
{
    let bed = TestBed::start().await?;
    let a = bed.default_msg_node("node-a").await?;
    let (alice, me) = bed.user(&a, "alice").await?;

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
        // Every answer names addresses (the frame's own, else the node and the runtime), so
        // it arrives as a message.
        let reply = alice.recv().await?;
        assert_eq!(reply.kind, MessageType::Response, "{reply}");
        assert_eq!(
            u64::from(reply.code()),
            expected,
            "frame {:.80} got {reply}",
            frame
        );
        let description = reply.description();
        assert!(
            description.contains(words),
            "{description:?} lacks {words:?}"
        );
    }
    // Ids are echoed whenever they could be read.
    alice
        .send_text(json!({"id": "q", "type": "nope", "from": me, "to": me}).to_string())
        .await?;
    assert_eq!(alice.recv().await?.id, MessageId::from("q"));

    // Still usable: a message to itself arrives, discovery answers.
    alice
        .send(Message::new(MessageType::Forward, &me, &me, json!({"ok": true})).with_id(10))
        .await?;
    let echo = alice.recv().await?;
    assert_eq!(echo.body["ok"], true, "{echo}");
    let found = alice
        .request(Message::new(
            MessageType::Read,
            &me,
            &alice.registry(),
            json!({"resource": "user://localhost/alice"}),
        ))
        .await?;
    assert_eq!(found.value()["hyperties"][0]["address"], me.as_str());
    Ok(())
}
