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
