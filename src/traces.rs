//! OpenTelemetry traces: a server span per RPC (continuing the caller's W3C trace context)
//! with Baton's attributes (pattern, tenant, name, outcome), a client span per Redis call
//! beneath it, and a span per message of a long stream (a job's delivery, a lease's renewal)
//! linked to the stream's span rather than held open under it. A job carries its trace
//! context from Enqueue to its delivery and on to the worker. Exported over OTLP (gRPC or
//! HTTP) with the standard `OTEL_*` variables honoured. Off by default, and then free: no
//! span is made.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
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

/// The share of traces starting at baton that are recorded (f64 bits). Sampling is decided
/// here, before any span exists: an unsampled call makes no span at all, so 1 % sampling
/// costs about what tracing off does, rather than the price of a span per call (measured:
/// 27 → 58 µs of CPU per Check when unsampled spans were made and dropped by the SDK).
static ROOT_RATIO: AtomicU64 = AtomicU64::new(0);

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
    ROOT_RATIO.store(root_ratio(flags.trace_sample_ratio)?.to_bits(), Ordering::Relaxed);
    // Every span baton makes was sampled before it was made (see ROOT_RATIO).
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("baton").build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .build();
    let _ = PROPAGATOR.set(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(provider))
}

/// The share of root traces to record: `--trace-sample-ratio`, else the standard
/// `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`, `traceidratio` and their `parentbased_`
/// forms; a caller's decision is always followed) with `OTEL_TRACES_SAMPLER_ARG`, else all.
fn root_ratio(flag: Option<f64>) -> anyhow::Result<f64> {
    if let Some(ratio) = flag {
        return Ok(ratio);
    }
    let sampler = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
    let argument = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
    ratio_of(&sampler, argument.as_deref())
}

fn ratio_of(sampler: &str, argument: Option<&str>) -> anyhow::Result<f64> {
    match sampler.trim_start_matches("parentbased_") {
        "" | "always_on" => Ok(1.0),
        "always_off" => Ok(0.0),
        "traceidratio" => match argument {
            None => Ok(1.0),
            Some(text) => match text.trim().parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                _ => anyhow::bail!("OTEL_TRACES_SAMPLER_ARG must be a ratio between 0 and 1, not {text:?}"),
            },
        },
        other => anyhow::bail!("OTEL_TRACES_SAMPLER={other:?} is not supported (always_on, always_off, traceidratio)"),
    }
}

/// Whether a trace starting here is recorded.
fn sample_root() -> bool {
    let ratio = f64::from_bits(ROOT_RATIO.load(Ordering::Relaxed));
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// Whether a call continuing `traceparent` (normalised), or starting a trace, is recorded.
fn sampled(traceparent: Option<&str>) -> bool {
    match traceparent {
        Some(traceparent) => traceparent.ends_with("-01"),
        None => sample_root(),
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("baton"))
}

/// A request's headers as the propagators read them, with `traceparent` normalised (see
/// [`normalized_traceparent`]).
struct Headers<'a> {
    headers: &'a http::HeaderMap,
    traceparent: Option<String>,
}

impl<'a> Headers<'a> {
    fn new(headers: &'a http::HeaderMap) -> Self {
        let traceparent =
            headers.get(TRACEPARENT).and_then(|value| value.to_str().ok()).and_then(normalized_traceparent);
        Self { headers, traceparent }
    }
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key == TRACEPARENT {
            return self.traceparent.as_deref();
        }
        self.headers.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.keys().map(http::HeaderName::as_str).collect()
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
        let headers = Headers::new(request.headers());
        if !sampled(headers.traceparent.as_deref()) {
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
            baton.pattern = pattern_of(service),
            baton.tenant = tracing::field::Empty,
            baton.name = tracing::field::Empty,
            baton.outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if let Some(propagator) = PROPAGATOR.get() {
            let _ = span.set_parent(propagator.extract(&headers));
        }
        // Logs inside the call carry these, to find the trace from a log line.
        if let Some(span_context) = span_context_of(&span) {
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
            // One line per traced call at debug level: a log search finds the trace.
            tracing::debug!(parent: &span, rpc.grpc.status_code = code, "rpc served");
            result
        })
    }
}

/// Runs one Redis call (`op`: the script or command) under a client span when tracing is on
/// and the call serves a traced operation (background work — pings, schedulers, idle
/// consumers' re-checks — would otherwise start a trace each). `slot` is the keys' hash slot
/// on a Redis Cluster. The call records its attempts with [`redis_attempt`].
pub async fn redis_call<T, E: std::fmt::Display>(
    op: &'static str,
    slot: Option<u16>,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    if !enabled() || tracing::Span::current().is_none() {
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
        db.redis.hash_slot = tracing::field::Empty,
        baton.redis.attempts = tracing::field::Empty,
    );
    if let Some(slot) = slot {
        // As i64: the OpenTelemetry layer exports narrower integers as text.
        span.record("db.redis.hash_slot", i64::from(slot));
    }
    let attempts = Arc::new(AtomicU32::new(1));
    let result = REDIS_ATTEMPTS.scope(attempts.clone(), call).instrument(span.clone()).await;
    span.record("baton.redis.attempts", i64::from(attempts.load(Ordering::Relaxed)));
    if let Err(err) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_message", err.to_string());
    }
    result
}

tokio::task_local! {
    /// The attempts of the traced Redis call being made (see [`redis_attempt`]).
    static REDIS_ATTEMPTS: Arc<AtomicU32>;
}

/// The current span's trace and span ids when it is sampled: a metric's exemplar.
pub fn sampled_ids() -> Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)> {
    if !enabled() {
        return None;
    }
    let span_context = span_context_of(&tracing::Span::current())?;
    span_context.is_sampled().then(|| (span_context.trace_id(), span_context.span_id()))
}

/// A Redis call is being sent again (a script the server had not cached is sent whole).
pub fn redis_attempt(attempt: u32) {
    let _ = REDIS_ATTEMPTS.try_with(|attempts| attempts.store(attempt, Ordering::Relaxed));
}

/// The pattern a service serves, for the `baton.pattern` attribute.
fn pattern_of(service: &str) -> &'static str {
    match service {
        "baton.v1.RateLimiterService" | "envoy.service.ratelimit.v3.RateLimitService" => "ratelimit",
        "baton.v1.LockService" => "lock",
        "baton.v1.CacheService" => "cache",
        "baton.v1.SessionStoreService" => "session",
        "baton.v1.JobQueueService" => "queue",
        "baton.v1.ElectionService" => "election",
        _ => "none",
    }
}

/// The tenant the RPC being served acts for (`baton.tenant`).
pub fn record_tenant(tenant: &str) {
    if enabled() {
        tracing::Span::current().record("baton.tenant", tenant);
    }
}

/// The lock, election or queue the RPC being served acts on (`baton.name`).
pub fn record_name(name: &str) {
    if enabled() {
        tracing::Span::current().record("baton.name", name);
    }
}

/// What the RPC being served came to (`baton.outcome`): allowed or denied, acquired, waited
/// or busy, hit or miss, enqueued or duplicate.
pub fn record_outcome(outcome: &'static str) {
    if enabled() {
        tracing::Span::current().record("baton.outcome", outcome);
    }
}

/// A span for a caller's wait (a busy lock, a held leadership) between two attempts.
pub fn wait_span(pattern: &'static str) -> tracing::Span {
    if !enabled() || tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!("wait", otel.name = "wait", baton.pattern = pattern)
}

/// The context of the span being served, for the spans of a stream's later messages to link
/// to; `None` when tracing is off or the caller is not sampled.
pub fn stream_context() -> Option<SpanContext> {
    if !enabled() {
        return None;
    }
    span_context_of(&tracing::Span::current())
}

/// A span for one message of a long stream (`kind`: "deliver", "renew") about `name` (a
/// queue, a lease's lock), linked to the stream's span; a child of `carried` (a job's
/// stored `traceparent`) when there is one.
pub fn message_span(
    kind: &'static str,
    pattern: &'static str,
    name: &str,
    stream: Option<&SpanContext>,
    carried: &str,
) -> tracing::Span {
    let carried_traceparent = normalized_traceparent(carried);
    if !enabled() || !sampled(carried_traceparent.as_deref()) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "message",
        otel.name = kind,
        otel.kind = if kind == "deliver" { "producer" } else { "server" },
        baton.pattern = pattern,
        baton.name = name,
        messaging.message.id = tracing::field::Empty,
        messaging.delivery.attempt = tracing::field::Empty,
    );
    if let (Some(propagator), Some(carried)) = (PROPAGATOR.get(), carried_traceparent) {
        let _ = span.set_parent(propagator.extract(&carried_context(&carried)));
    }
    if let Some(stream) = stream {
        span.add_link(stream.clone());
    }
    span
}

/// The job a delivery span delivers.
pub fn record_message(span: &tracing::Span, job_id: &str, attempt: u32) {
    if enabled() {
        span.record("messaging.message.id", job_id);
        span.record("messaging.delivery.attempt", i64::from(attempt));
    }
}

/// The valid OpenTelemetry context of `span`, if it has one (sampled or not).
fn span_context_of(span: &tracing::Span) -> Option<SpanContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

const TRACEPARENT: &str = "traceparent";

/// The trace context a new job carries: this baton's Enqueue span when it records the call,
/// else the caller's own `traceparent` (so a worker continues the enqueuer's trace either way).
/// Only a well-formed W3C value is kept: a caller cannot store anything else this way.
pub fn job_context(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    if let Some(span_context) = enabled().then(|| span_context_of(&tracing::Span::current())).flatten() {
        return Some(traceparent(&span_context));
    }
    metadata.get(TRACEPARENT).and_then(|value| value.to_str().ok()).and_then(normalized_traceparent)
}

/// The context a delivered job hands its worker: the delivery span's when tracing is on,
/// else what the job carried.
pub fn delivery_context(delivery_span: &tracing::Span, carried: &str) -> HashMap<String, String> {
    let value =
        if enabled() { span_context_of(delivery_span).map(|span_context| traceparent(&span_context)) } else { None };
    carried_context(value.as_deref().unwrap_or(carried))
}

/// A stored `traceparent` as a propagation carrier (empty when the job has none).
pub fn carried_context(carried: &str) -> HashMap<String, String> {
    if carried.is_empty() {
        return HashMap::new();
    }
    HashMap::from([(TRACEPARENT.to_owned(), carried.to_owned())])
}

fn traceparent(span_context: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
}

/// A well-formed `traceparent` with only its sampled flag kept. Trace Context Level 2
/// senders (Python's SDK) set the random-trace-id flag too (`-03`), which this SDK's
/// propagator refuses as unknown (open-telemetry/opentelemetry-rust#3435): refusing it
/// would start a new trace instead of continuing the caller's.
fn normalized_traceparent(value: &str) -> Option<String> {
    if !is_traceparent(value) {
        return None;
    }
    let (head, flags) = value.rsplit_once('-')?;
    let sampled = u8::from_str_radix(flags, 16).ok()? & 0x01;
    Some(format!("{head}-{sampled:02x}"))
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, as W3C Trace Context version 00 defines it.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_standard_sampler_variables() {
        assert_eq!(ratio_of("", None).unwrap(), 1.0);
        assert_eq!(ratio_of("parentbased_always_off", None).unwrap(), 0.0);
        assert_eq!(ratio_of("traceidratio", Some("0.25")).unwrap(), 0.25);
        assert_eq!(ratio_of("parentbased_traceidratio", None).unwrap(), 1.0);
        assert!(ratio_of("traceidratio", Some("2")).is_err());
        assert!(ratio_of("jaeger_remote", None).is_err());
    }

    #[test]
    fn keeps_only_the_sampled_flag_of_a_traceparent() {
        let head = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7";
        for (flags, kept) in [("00", "00"), ("01", "01"), ("02", "00"), ("03", "01"), ("ff", "01")] {
            assert_eq!(normalized_traceparent(&format!("{head}-{flags}")), Some(format!("{head}-{kept}")));
        }
        assert_eq!(normalized_traceparent("00-bad"), None);
    }

    #[test]
    fn keeps_only_well_formed_traceparents() {
        assert!(is_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        for hostile in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(!is_traceparent(hostile), "{hostile}");
        }
    }
}
