//! Telemetry init is idempotent and trace context crosses gRPC metadata and string maps.

use rethink_common::telemetry::{self, propagation};
use tracing::info_span;

fn trace_id(map: &std::collections::HashMap<String, String>) -> String {
    // traceparent: version-traceid-spanid-flags
    map["traceparent"].split('-').nth(1).unwrap().to_owned()
}

#[tokio::test]
async fn init_twice_and_propagate() {
    let _first = telemetry::init("test-one", false).unwrap();
    // The all-in-one stack initialises once per service in one process.
    let _second = telemetry::init("test-two", true).unwrap();

    let outer = info_span!("outer");
    let (map, metadata) = {
        let _entered = outer.enter();
        let map = propagation::current_map();
        let mut metadata = tonic::metadata::MetadataMap::new();
        propagation::inject_grpc(&mut metadata);
        (map, metadata)
    };
    assert!(map.contains_key("traceparent"), "{map:?}");
    let id = trace_id(&map);
    assert_eq!(id.len(), 32);
    assert_ne!(id, "0".repeat(32));
    let header = metadata.get("traceparent").unwrap().to_str().unwrap();
    assert!(header.contains(&id));

    // A span parented on the extracted context continues the same trace.
    let remote = info_span!("remote");
    propagation::set_parent(&remote, propagation::extract_grpc(&metadata));
    let continued = remote.in_scope(propagation::current_map);
    assert_eq!(trace_id(&continued), id);
    assert_ne!(
        continued["traceparent"], map["traceparent"],
        "a new span id"
    );

    let from_map = info_span!("from_map");
    propagation::set_parent(&from_map, propagation::extract_map(&map));
    assert_eq!(trace_id(&from_map.in_scope(propagation::current_map)), id);

    // Outside any span there is nothing to propagate.
    assert!(!propagation::current_map().contains_key("traceparent"));
    // Garbage in is ignored, never a panic.
    let mut junk = std::collections::HashMap::new();
    junk.insert("traceparent".to_owned(), "not-a-trace".to_owned());
    let junk_span = info_span!("junk");
    propagation::set_parent(&junk_span, propagation::extract_map(&junk));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "json_logs_child", "--ignored", "--nocapture"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let event = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v["fields"]["message"] == "hello json")
        .unwrap_or_else(|| panic!("no JSON log line in {stderr}"));
    assert_eq!(event["level"], "INFO");
    assert_eq!(event["fields"]["room"], "r1");
    assert!(event["timestamp"].is_string());
}

/// The logging half; run only by the test above, in its own process.
#[tokio::test]
#[ignore = "run by json_logs_are_one_object_per_line in a child process"]
async fn json_logs_child() {
    let _guard = telemetry::init("json-test", true).unwrap();
    tracing::info!(room = "r1", "hello json");
    tracing::debug!("filtered out by RUST_LOG=info");
}
