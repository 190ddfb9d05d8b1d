//! The policy enforcement point in the router: a rule denies, the file changes, the node
//! reloads it without a restart.

use anyhow::Result;
use rethink_msg_client::{Message, MessageId, MessageType};
use rethink_testbed::{TestBed, WAIT};
use serde_json::{Value, json};

const STRICT: &str = r#"
version = 1
default_action = "deny"

[[rules]]
name = "no-execute-for-mallory"
action = "deny"
reason = "mallory may not execute"
identity = "mallory"
type = "execute"

[[rules]]
name = "everything-else"
action = "allow"
"#;

const RELAXED: &str = r#"
version = 1
default_action = "allow"
"#;

#[tokio::test]
async fn a_rule_denies_and_an_edited_file_is_reloaded() -> Result<()> {
    let bed = TestBed::start().await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, STRICT)?;
    let mut config = bed.msg_config("node-a");
    config.policy_file = Some(path.clone());
    let a = bed.msg_node(config).await?;
    let (mallory, m) = bed.user(&a, "mallory").await?;
    let (alice, al) = bed.user(&a, "alice").await?;

    let denied = mallory
        .request(Message::new(
            MessageType::Execute,
            &m,
            &al,
            json!({"method": "x"}),
        ))
        .await?;
    assert_eq!(denied.code(), 403, "{denied}");
    assert_eq!(denied.description(), "mallory may not execute");
    // Other types and other identities pass.
    mallory
        .send(Message::new(MessageType::Forward, &m, &al, Value::Null).with_id(1))
        .await?;
    assert_eq!(alice.recv().await?.kind, MessageType::Forward);
    alice
        .send(Message::new(MessageType::Execute, &al, &m, Value::Null).with_id(2))
        .await?;
    assert_eq!(mallory.recv().await?.kind, MessageType::Execute);

    // Edit the file; the node picks it up without a restart.
    let mut reloads = a.node.node().policy().watch_reloads();
    reloads.mark_unchanged();
    std::fs::write(&path, RELAXED)?;
    tokio::time::timeout(WAIT, reloads.changed()).await??;
    mallory
        .send(Message::new(MessageType::Execute, &m, &al, Value::Null).with_id(3))
        .await?;
    let got = alice.recv().await?;
    assert_eq!(
        (got.kind, got.id.clone()),
        (MessageType::Execute, MessageId::Int(3)),
        "{got}"
    );
    Ok(())
}
