//! Spans reach an OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! The environment is per process, so the test runs its exporting half in a child process (this
//! same test binary, with the variable set) against a fake collector served here.

mod common;

use std::process::Stdio;

use common::within;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use rethink_common::lifecycle::Shutdown;
use tokio::sync::mpsc;

struct Collector {
    received: mpsc::UnboundedSender<ExportTraceServiceRequest>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.received.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Span names and the `service.name` of every span the collector got.
fn spans(request: &ExportTraceServiceRequest) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in &resource_spans.scope_spans {
            for span in &scope.spans {
                out.push((service.clone(), span.name.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn spans_are_exported_to_the_otlp_endpoint() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector { received: tx }))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown.wait(),
            ),
    );

    let exe = std::env::current_exe().unwrap();
    let child = tokio::process::Command::new(exe)
        .args(["--exact", "exporting_child", "--ignored", "--nocapture"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let output = within("the exporting child", child).await.unwrap();
    assert!(
        output.status.success(),
        "child failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let request = within("an OTLP export", rx.recv()).await.unwrap();
    let got = spans(&request);
    assert!(
        got.contains(&("otlp-test".to_owned(), "exported-span".to_owned())),
        "{got:?}"
    );
    shutdown.trigger();
    within("the collector to stop", server)
        .await
        .unwrap()
        .unwrap();
}

/// The exporting half; run only by the test above, in its own process.
#[tokio::test]
#[ignore = "run by spans_are_exported_to_the_otlp_endpoint in a child process"]
async fn exporting_child() {
    assert!(std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some());
    let guard = rethink_common::telemetry::init("otlp-test", false).unwrap();
    tracing::info_span!("exported-span").in_scope(|| tracing::info!("inside"));
    // Dropping the guard flushes the batch to the collector.
    drop(guard);
}
