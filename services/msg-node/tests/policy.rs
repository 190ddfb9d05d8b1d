//! The policy enforcement point in the router: a rule denies, the file changes, the node
//! reloads it without a restart.

mod common;

use anyhow::Result;
use common::{TestBed, code};
use serde_json::json;

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
    let mut config = bed.config("node-a");
    config.policy_file = Some(path.clone());
    let a = bed.replica(config).await?;
    let (mut mallory, m) = bed.user(&a, "mallory").await?;
    let (mut alice, al) = bed.user(&a, "alice").await?;

    let denied = mallory
        .request("execute", &m, &al, json!({"method": "x"}))
        .await?;
    assert_eq!(code(&denied), 403, "{denied}");
    assert_eq!(denied["body"]["description"], "mallory may not execute");
    // Other types and other identities pass.
    mallory
        .send(&json!({"id": 1, "type": "forward", "from": m, "to": al}))
        .await?;
    assert_eq!(alice.recv().await?["type"], "forward");
    alice
        .send(&json!({"id": 2, "type": "execute", "from": al, "to": m}))
        .await?;
    assert_eq!(mallory.recv().await?["type"], "execute");

    // Edit the file; the node picks it up without a restart.
    let mut reloads = a.node.node().policy().watch_reloads();
    reloads.mark_unchanged();
    std::fs::write(&path, RELAXED)?;
    tokio::time::timeout(common::WAIT, reloads.changed()).await??;
    mallory
        .send(&json!({"id": 3, "type": "execute", "from": m, "to": al}))
        .await?;
    let got = alice.recv().await?;
    assert_eq!(
        (got["type"].as_str(), got["id"].as_i64()),
        (Some("execute"), Some(3)),
        "{got}"
    );
    Ok(())
}
