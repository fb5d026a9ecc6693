//! OpenTelemetry traces: a server span per RPC (continuing the caller's W3C trace context),
//! a client span per Redis call beneath it, exported over OTLP (gRPC or HTTP) with the
//! standard `OTEL_*` variables honoured. Off by default, and then free: no span is made.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::{Flags, OtlpProtocol};
use crate::middleware::{Around, AroundLayer, BoxResponse};

/// Whether spans are made at all (an exporter is configured).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Reads `traceparent`, `tracestate` and `baggage`: set once tracing starts.
static PROPAGATOR: std::sync::OnceLock<TextMapCompositePropagator> = std::sync::OnceLock::new();

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The OTLP endpoint: `--otlp-endpoint`, else the standard variables.
fn endpoint(flags: &Flags) -> Option<String> {
    flags
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").ok())
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|endpoint| !endpoint.is_empty())
}

/// Starts exporting when an endpoint is configured; the provider must be shut down at exit
/// so the last spans are sent.
pub fn start(flags: &Flags) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = endpoint(flags) else {
        return Ok(None);
    };
    let exporter = match flags.otlp_protocol {
        OtlpProtocol::Grpc => {
            opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build()?
        }
        OtlpProtocol::HttpProtobuf => {
            // The standard's rule: a signal-less endpoint gets the signal's path appended.
            let url = if endpoint.ends_with("/v1/traces") {
                endpoint
            } else {
                format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .build()?
        }
    };
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("baton").build());
    // Without the flag the SDK's default applies: OTEL_TRACES_SAMPLER(_ARG), else
    // parent-based always-on.
    if let Some(ratio) = flags.trace_sample_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))));
    }
    let provider = builder.build();
    let _ = PROPAGATOR.set(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(provider))
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("baton"))
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes the server span of every RPC, child of the caller's context when it sent one.
pub fn rpc_span_layer() -> AroundLayer<RpcSpans> {
    AroundLayer(RpcSpans)
}

#[derive(Debug, Clone, Copy)]
pub struct RpcSpans;

impl<ResBody: 'static, E: 'static> Around<http::Response<ResBody>, E> for RpcSpans {
    type Seen = Option<tracing::Span>;

    fn before<B>(&self, request: &http::Request<B>) -> Option<tracing::Span> {
        if !enabled() {
            return None;
        }
        let (service, method) = crate::telemetry::served_method(request.uri().path());
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if let Some(propagator) = PROPAGATOR.get() {
            let _ = span.set_parent(propagator.extract(&Headers(request.headers())));
        }
        // Logs inside the call carry these, to find the trace from a log line.
        let context = span.context();
        let span_context = context.span().span_context().clone();
        if span_context.is_valid() {
            span.record("trace_id", span_context.trace_id().to_string());
            span.record("span_id", span_context.span_id().to_string());
        }
        Some(span)
    }

    fn after(
        span: Option<tracing::Span>,
        response: BoxResponse<http::Response<ResBody>, E>,
    ) -> BoxResponse<http::Response<ResBody>, E> {
        let Some(span) = span else {
            return response;
        };
        Box::pin(async move {
            let result = response.instrument(span.clone()).await;
            let code = match &result {
                Ok(response) => crate::telemetry::grpc_status(response.headers()),
                Err(_) => 2,
            };
            span.record("rpc.grpc.status_code", code);
            if code != 0 {
                span.record("otel.status_code", "ERROR");
            }
            result
        })
    }
}

/// Runs one Redis call (`op`: the script or command) under a client span when tracing is on.
pub async fn redis_call<T, E: std::fmt::Display>(
    op: &'static str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    if !enabled() {
        return call.await;
    }
    let span = tracing::info_span!(
        "redis",
        otel.name = op,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        db.system = "redis",
        db.operation = op,
    );
    let result = call.instrument(span.clone()).await;
    if let Err(err) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", err.to_string());
    }
    result
}
