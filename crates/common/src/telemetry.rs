//! Tracing, logs and trace-context propagation.
//!
//! [`init`] installs one process-wide `tracing` subscriber: an `EnvFilter` from `RUST_LOG`
//! (default `info`), human-readable or JSON lines on stderr, and an OpenTelemetry layer. Spans get
//! W3C trace ids whether or not they are exported, so trace context flows between services in
//! every setup; they are exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! The all-in-one stack runs every service in one process, so [`init`] may be called more than
//! once: the first call wins (its service name labels exported spans), later calls are no-ops.
//!
//! [`propagation`] carries the context across process boundaries: gRPC metadata, and string maps
//! (the event envelope's `trace_context`, WebSocket messages).

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` does not parse as a filter.
    #[error("RUST_LOG is not a valid filter: {0}")]
    Filter(String),
    /// The OTLP exporter could not be built from the `OTEL_EXPORTER_OTLP_*` settings.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// Another `tracing` subscriber was installed outside this module.
    #[error("a global tracing subscriber is already set: {0}")]
    AlreadySet(String),
}

/// Keeps exporting alive; dropping the guard of the first [`init`] flushes pending spans.
#[derive(Debug)]
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    owner: bool,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let provider = PROVIDER.get().and_then(|p| p.lock().ok()?.take());
        if let Some(provider) = provider {
            // Errors here mean the collector is gone; nothing useful is left to do with them.
            let _ = provider.shutdown();
        }
    }
}

static INSTALLED: OnceLock<()> = OnceLock::new();
static PROVIDER: OnceLock<Mutex<Option<SdkTracerProvider>>> = OnceLock::new();

/// Installs the process-wide subscriber for `service`; logs as JSON lines when `json_logs`.
///
/// Safe to call more than once: only the first call installs anything. Works inside or outside a
/// tokio runtime; OTLP export runs on a small runtime of its own.
pub fn init(service: &str, json_logs: bool) -> Result<TelemetryGuard, TelemetryError> {
    if INSTALLED.get().is_some() {
        return Ok(TelemetryGuard { owner: false });
    }
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            EnvFilter::try_new(&spec).map_err(|e| TelemetryError::Filter(e.to_string()))?
        }
        _ => EnvFilter::new("info"),
    };

    let provider = build_provider(service)?;
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("rethink"));
    let fmt = if json_logs {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // Colours only for a person at a terminal; log collectors get plain text.
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed()
    };

    let mut owner = false;
    let mut result = Ok(());
    INSTALLED.get_or_init(|| {
        result = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .with(otel)
            .try_init()
            .map_err(|e| TelemetryError::AlreadySet(e.to_string()));
        if result.is_ok() {
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            opentelemetry::global::set_tracer_provider(provider.clone());
            let _ = PROVIDER.set(Mutex::new(Some(provider)));
            owner = true;
        }
    });
    result?;
    Ok(TelemetryGuard { owner })
}

fn build_provider(service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let endpoint_set = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")
        .is_some_and(|v| !v.is_empty())
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some_and(|v| !v.is_empty());
    if !endpoint_set {
        return Ok(builder.build());
    }
    // The exporter's gRPC channel lives on a runtime of its own: the batch processor exports
    // from its own thread and blocks on shutdown, which would deadlock a service's
    // current-thread runtime (and tie export to whichever runtime happened to call init).
    let runtime = export_runtime()?;
    let _entered = runtime.enter();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(builder.with_batch_exporter(exporter).build())
}

fn export_runtime() -> Result<&'static tokio::runtime::Runtime, TelemetryError> {
    // Built inside get_or_init so that a losing racer never drops a runtime (which panics in
    // async contexts).
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-export")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| TelemetryError::Exporter(format!("cannot start the export runtime: {e}")))
}

/// W3C trace-context propagation over gRPC metadata and string maps.
pub mod propagation {
    use std::collections::HashMap;

    use opentelemetry::Context;
    use opentelemetry::propagation::{Extractor, Injector};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// Writes the current span's context (`traceparent`, `tracestate`) into gRPC metadata.
    pub fn inject_grpc(metadata: &mut tonic::metadata::MetadataMap) {
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut MetadataInjector(metadata));
        });
    }

    /// Reads the remote context from gRPC metadata (empty context when there is none).
    pub fn extract_grpc(metadata: &tonic::metadata::MetadataMap) -> Context {
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(metadata)))
    }

    /// A tonic client interceptor that injects the current context into every request:
    /// `Client::with_interceptor(channel, propagation::grpc_interceptor)`.
    #[allow(clippy::result_large_err)] // the signature is fixed by tonic's Interceptor
    pub fn grpc_interceptor(
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject_grpc(request.metadata_mut());
        Ok(request)
    }

    /// Returns the current span's context as a string map (for `Event.trace_context` and
    /// WebSocket messages); empty when there is no active trace.
    pub fn current_map() -> HashMap<String, String> {
        let cx = tracing::Span::current().context();
        let mut map = HashMap::new();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
        map
    }

    /// Reads a remote context from a string map written by [`current_map`].
    pub fn extract_map(map: &HashMap<String, String>) -> Context {
        opentelemetry::global::get_text_map_propagator(|p| p.extract(map))
    }

    /// Makes `cx` (from [`extract_grpc`] or [`extract_map`]) the parent of `span`, so the span
    /// continues the remote trace. Does nothing when telemetry is not initialised.
    pub fn set_parent(span: &tracing::Span, cx: Context) {
        // Fails only when the span is disabled or already started a trace of its own.
        let _ = span.set_parent(cx);
    }

    struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

    impl Injector for MetadataInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
            let value = tonic::metadata::MetadataValue::try_from(value.as_str());
            if let (Ok(key), Ok(value)) = (key, value) {
                self.0.insert(key, value);
            }
        }
    }

    struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

    impl Extractor for MetadataExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0
                .keys()
                .filter_map(|k| match k {
                    tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                    tonic::metadata::KeyRef::Binary(_) => None,
                })
                .collect()
        }
    }
}
