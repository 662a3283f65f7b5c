//! OpenTelemetry spans (`telemetry: { otlp, sample }`): publish, webhook and
//! poll cycles, and proxied requests (pass-through and GRIP), exported in
//! batches over OTLP/HTTP (protobuf) to a collector.
//!
//! A request's `traceparent` makes its span a child of the client's trace
//! (and the client's sampling decision holds); a proxied request, a GRIP
//! request and a poll send their own span's `traceparent` upstream.
//!
//! Off (no `telemetry:`) costs nothing: there is no `Tracing`, every span
//! site is an `Option` that is None, and a client's `traceparent` passes
//! through untouched like any other header.
//!
//! - `export`: the exporter's HTTP client, the gateway's own `outbound`.

mod export;

use crate::config::Telemetry;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// Why tracing could not start (the gateway then runs without it).
#[derive(Debug)]
pub enum TelemetryError {
    Runtime(std::io::Error),
    Exporter(String),
}

impl fmt::Display for TelemetryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TelemetryError::Runtime(e) => write!(f, "telemetry: cannot start its thread: {e}"),
            TelemetryError::Exporter(e) => write!(f, "telemetry: OTLP exporter: {e}"),
        }
    }
}

impl std::error::Error for TelemetryError {}

/// How often buffered spans are sent at most (and at least, when there are some).
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// The tracer, shared by every handler.
pub struct Tracing {
    tracer: SdkTracer,
    /// Held for the life of the gateway: the batches are its.
    _provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
}

impl fmt::Debug for Tracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// Start the exporter (its thread and batching) for `cfg`.
    pub fn start(cfg: &Telemetry) -> Result<Tracing, TelemetryError> {
        let client = export::Sender::start(&cfg.otlp).map_err(TelemetryError::Runtime)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!(
                "http://{}:{}{}",
                cfg.otlp.host, cfg.otlp.port, cfg.otlp.path
            ))
            .with_timeout(export::TIMEOUT)
            .with_http_client(client)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_EVERY)
                    .build(),
            )
            .build();
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "ssegate".into());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sample,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(service)
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        Ok(Tracing {
            tracer: provider.tracer("ssegate"),
            _provider: provider,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// A span for a request this gateway answers or passes on: the child
    /// of the client's `traceparent` when it sent one, else a new trace.
    pub fn request_span(
        &self,
        name: &'static str,
        kind: SpanKind,
        headers: &http::HeaderMap,
    ) -> Span {
        let parent = self
            .propagator
            .extract(&opentelemetry_http::HeaderExtractor(headers));
        self.start_span(name, kind, &parent)
    }

    /// A span that starts a trace of its own (a poll cycle).
    pub fn root_span(&self, name: &'static str, kind: SpanKind) -> Span {
        self.start_span(name, kind, &Context::new())
    }

    fn start_span(&self, name: &'static str, kind: SpanKind, parent: &Context) -> Span {
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .start_with_context(&self.tracer, parent);
        Span { inner: span }
    }
}

/// One span; it ends (and is queued for export) when dropped.
pub struct Span {
    inner: opentelemetry_sdk::trace::Span,
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Span")
            .field("context", self.inner.span_context())
            .finish()
    }
}

impl Span {
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.inner.set_attribute(KeyValue::new(key, value));
    }

    /// Mark the span failed, with a short description (no request data).
    pub fn fail(&mut self, why: impl Into<Cow<'static, str>>) {
        self.inner.set_status(Status::error(why));
    }

    /// This span as a W3C `traceparent`, for a request that goes upstream
    /// (it replaces the client's: the upstream is this span's child).
    pub fn traceparent(&self) -> String {
        let sc = self.inner.span_context();
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    }

    /// The trace id (32 hex digits), for logs.
    pub fn trace_id(&self) -> String {
        self.inner.span_context().trace_id().to_string()
    }
}

/// Span kinds, so that callers need not name the opentelemetry crate.
pub(crate) use opentelemetry::trace::SpanKind as Kind;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OtlpEndpoint;

    fn tracing(sample: f64) -> Tracing {
        Tracing::start(&Telemetry {
            otlp: OtlpEndpoint {
                url: "http://127.0.0.1:9".into(),
                host: "127.0.0.1".into(),
                port: 9,
                path: "/v1/traces".into(),
            },
            sample,
        })
        .unwrap()
    }

    #[test]
    fn a_client_traceparent_is_the_parent_and_a_new_one_goes_upstream() {
        let t = tracing(0.0);
        let mut headers = http::HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", parent.parse().unwrap());
        let span = t.request_span("proxy", SpanKind::Server, &headers);
        // Sampled although the ratio is 0: the client's trace decides.
        assert!(span.inner.span_context().is_sampled());
        assert_eq!(span.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let sent = span.traceparent();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "our span, not the client's: {sent}"
        );
        assert!(sent.ends_with("-01"), "{sent}");
    }

    #[test]
    fn the_ratio_samples_new_traces() {
        let none = tracing(0.0).root_span("poll", SpanKind::Client);
        assert!(!none.inner.span_context().is_sampled());
        let all = tracing(1.0).root_span("poll", SpanKind::Client);
        assert!(all.inner.span_context().is_sampled());
    }
}
