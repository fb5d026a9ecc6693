//! Logs (text or JSON), the Prometheus recorder and its `/metrics` endpoint (Prometheus
//! text, or OpenMetrics with trace exemplars when the scraper asks for it), and the per-RPC
//! metrics layer.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::middleware::{Around, AroundLayer, BoxResponse};
use crate::task::TaskGuard;

/// Seconds; from sub-millisecond cache hits to multi-second waits.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the global tracing subscriber; `RUST_LOG` refines the default `info` level.
/// With `traces`, spans also become OpenTelemetry spans, and JSON log lines inside an RPC
/// carry its `trace_id` and `span_id` (in `span`).
pub fn init_tracing(format: LogFormat, traces: Option<&opentelemetry_sdk::trace::SdkTracerProvider>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).with(traces.map(crate::traces::layer)).init();
}

/// Installs the global metrics recorder with real histograms (not summaries).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS)?.install_recorder()?)
}

/// How often histogram samples are folded into their buckets. Until then the recorder
/// keeps every sample, so a baton that nobody scrapes would grow with every call.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` (any path, in fact) on `listener`: Prometheus needs nothing more,
/// and a hand-rolled responder avoids a second HTTP stack. Also runs the recorder's upkeep.
pub fn serve_metrics(listener: TcpListener, handle: PrometheusHandle) -> TaskGuard {
    TaskGuard::spawn(async move {
        let mut upkeep = tokio::time::interval(UPKEEP_INTERVAL);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = upkeep.tick() => {
                    handle.run_upkeep();
                    continue;
                }
            };
            let Ok((mut socket, _)) = accepted else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                // One read is enough to consume a scrape's request line and headers.
                let read = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read(&mut request)).await;
                let read = read.ok().and_then(Result::ok).unwrap_or(0);
                // Prometheus asks for OpenMetrics first when exemplar storage is on.
                let openmetrics = String::from_utf8_lossy(&request[..read])
                    .to_ascii_lowercase()
                    .contains("application/openmetrics-text");
                handle.run_upkeep();
                let (body, content_type) = if openmetrics {
                    (to_openmetrics(&handle.render()), "application/openmetrics-text; version=1.0.0; charset=utf-8")
                } else {
                    (handle.render(), "text/plain; version=0.0.4")
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    })
}

/// Counts every RPC and records its latency by service, method and gRPC code.
pub fn grpc_metrics_layer() -> AroundLayer<GrpcMetrics> {
    AroundLayer(GrpcMetrics)
}

#[derive(Debug, Clone, Copy)]
pub struct GrpcMetrics;

impl<ResBody: 'static, E: 'static> Around<http::Response<ResBody>, E> for GrpcMetrics {
    /// The method's labels and when the call began.
    type Seen = (&'static str, &'static str, Instant);

    fn before<B>(&self, request: &http::Request<B>) -> Self::Seen {
        let (service, method) = served_method(request.uri().path());
        (service, method, Instant::now())
    }

    fn after(
        (service, method, started): Self::Seen,
        response: BoxResponse<http::Response<ResBody>, E>,
    ) -> BoxResponse<http::Response<ResBody>, E> {
        Box::pin(async move {
            let result = response.await;
            let code = match &result {
                Ok(response) => code_name(grpc_status(response.headers())),
                Err(_) => "UNKNOWN",
            };
            let labels = [("service", service), ("method", method), ("code", code)];
            let seconds = started.elapsed().as_secs_f64();
            metrics::counter!("baton_grpc_requests_total", &labels).increment(1);
            metrics::histogram!("baton_grpc_request_duration_seconds", &labels).record(seconds);
            if let Some((trace_id, span_id)) = crate::traces::sampled_ids() {
                record_exemplar((service, method, code), seconds, trace_id, span_id);
            }
            result
        })
    }
}

/// A traced call shown beside the latency bucket it fell in.
#[derive(Debug, Clone)]
struct Exemplar {
    // Kept as ids and written as hex only when scraped: a traced call allocates nothing here.
    trace_id: opentelemetry::trace::TraceId,
    span_id: opentelemetry::trace::SpanId,
    seconds: f64,
    /// Unix seconds.
    at: f64,
}

/// The latency series' labels: served (service, method) and a code name, all static, so the
/// exemplars kept are bounded by the served methods × codes × buckets.
type SeriesLabels = (&'static str, &'static str, &'static str);

/// The latest traced call per latency series and bucket (the last slot is `+Inf`).
static EXEMPLARS: LazyLock<Mutex<HashMap<SeriesLabels, Vec<Option<Exemplar>>>>> = LazyLock::new(Default::default);

fn record_exemplar(
    labels: SeriesLabels,
    seconds: f64,
    trace_id: opentelemetry::trace::TraceId,
    span_id: opentelemetry::trace::SpanId,
) {
    let bucket = LATENCY_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(LATENCY_BUCKETS.len());
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let mut exemplars = EXEMPLARS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let slots = exemplars.entry(labels).or_insert_with(|| vec![None; LATENCY_BUCKETS.len() + 1]);
    slots[bucket] = Some(Exemplar { trace_id, span_id, seconds, at });
}

/// The exemplar of one `baton_grpc_request_duration_seconds_bucket` sample line, if any.
fn exemplar_for(sample: &str) -> Option<Exemplar> {
    let label = |name: &str| {
        let marker = format!("{name}=\"");
        let start = sample.find(&marker)? + marker.len();
        sample[start..].split('"').next()
    };
    let le = label("le")?;
    let bucket = if le == "+Inf" {
        LATENCY_BUCKETS.len()
    } else {
        let bound: f64 = le.parse().ok()?;
        LATENCY_BUCKETS.iter().position(|&b| (b - bound).abs() < f64::EPSILON * 16.0)?
    };
    let (service, method, code) = (label("service")?, label("method")?, label("code")?);
    let exemplars = EXEMPLARS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    exemplars
        .iter()
        .find(|((s, m, c), _)| *s == service && *m == method && *c == code)
        .and_then(|(_, slots)| slots[bucket].clone())
}

/// The Prometheus text exposition as OpenMetrics: counter families named without their
/// `_total`, the latency buckets with the trace of a call that fell in them, `# EOF`.
fn to_openmetrics(text: &str) -> String {
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 1024);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ").or_else(|| line.strip_prefix("# HELP ")) {
            let name = rest.split(' ').next().unwrap_or_default();
            if counters.contains(&name) {
                let family = name.strip_suffix("_total").unwrap_or(name);
                out.push_str(&line.replacen(name, family, 1));
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        let bucket = line.starts_with("baton_grpc_request_duration_seconds_bucket{");
        if let Some(exemplar) = bucket.then(|| exemplar_for(line)).flatten() {
            out.push_str(&format!(
                " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {:.3}",
                exemplar.trace_id, exemplar.span_id, exemplar.seconds, exemplar.at
            ));
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

/// A response's gRPC status code. Errors come "trailers-only", with grpc-status in the
/// headers; a success's status sits in trailers nobody waits for, so its absence means OK.
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> i32 {
    headers.get("grpc-status").and_then(|value| value.to_str().ok()).and_then(|value| value.parse().ok()).unwrap_or(0)
}

/// The label value of every path outside the served set: callers choose paths, so a path
/// must never become a label of its own (each would be a new series, before
/// authentication even runs).
const UNKNOWN_METHOD: (&str, &str) = ("unknown", "unknown");

/// Every RPC this server can answer, `/package.Service/Method` to its (service, method)
/// labels, read once from the descriptors of the services it registers.
static SERVED_METHODS: LazyLock<HashMap<String, (&'static str, &'static str)>> = LazyLock::new(|| {
    use prost::Message as _;
    let sets = [
        crate::proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut methods = HashMap::new();
    for set in sets {
        let set = prost_types::FileDescriptorSet::decode(set).expect("compiled-in descriptor set");
        for file in &set.file {
            for service in &file.service {
                // Leaked once: a fixed set of names that label every call without allocating.
                let service_name: &'static str =
                    Box::leak(format!("{}.{}", file.package(), service.name()).into_boxed_str());
                for method in &service.method {
                    let method_name: &'static str = Box::leak(method.name().to_owned().into_boxed_str());
                    methods.insert(format!("/{service_name}/{method_name}"), (service_name, method_name));
                }
            }
        }
    }
    methods
});

pub(crate) fn served_method(path: &str) -> (&'static str, &'static str) {
    SERVED_METHODS.get(path).copied().unwrap_or(UNKNOWN_METHOD)
}

fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|index| NAMES.get(index)).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_served_methods_and_folds_every_other_path() {
        assert_eq!(served_method("/baton.v1.RateLimiterService/Check"), ("baton.v1.RateLimiterService", "Check"));
        assert_eq!(
            served_method("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"),
            ("envoy.service.ratelimit.v3.RateLimitService", "ShouldRateLimit")
        );
        assert_eq!(served_method("/grpc.health.v1.Health/Watch"), ("grpc.health.v1.Health", "Watch"));
        for hostile in ["/baton.v1.RateLimiterService/Nope", "/x/y", "/", "", "/baton.v1.RateLimiterService/Check/"] {
            assert_eq!(served_method(hostile), UNKNOWN_METHOD, "{hostile}");
        }
    }

    #[test]
    fn openmetrics_names_counter_families_and_attaches_exemplars_to_their_bucket() {
        let labels = ("baton.v1.LockService", "Acquire", "OK");
        let trace_id = opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span_id = opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap();
        record_exemplar(labels, 0.003, trace_id, span_id);
        let text = "# HELP baton_grpc_requests_total calls\n# TYPE baton_grpc_requests_total counter\n\
                    baton_grpc_requests_total{service=\"baton.v1.LockService\",method=\"Acquire\",code=\"OK\"} 1\n\
                    # TYPE baton_grpc_request_duration_seconds histogram\n\
                    baton_grpc_request_duration_seconds_bucket{service=\"baton.v1.LockService\",method=\"Acquire\",code=\"OK\",le=\"0.0025\"} 0\n\
                    baton_grpc_request_duration_seconds_bucket{service=\"baton.v1.LockService\",method=\"Acquire\",code=\"OK\",le=\"0.005\"} 1\n\
                    baton_grpc_request_duration_seconds_bucket{service=\"baton.v1.LockService\",method=\"Acquire\",code=\"OK\",le=\"+Inf\"} 1\n";
        let open = to_openmetrics(text);
        let lines: Vec<&str> = open.lines().collect();
        assert_eq!(lines[0], "# HELP baton_grpc_requests calls");
        assert_eq!(lines[1], "# TYPE baton_grpc_requests counter");
        assert!(lines[2].starts_with("baton_grpc_requests_total{"), "samples keep _total");
        assert!(!lines[4].contains('#'), "no exemplar in a bucket the call did not fall in: {}", lines[4]);
        let exemplar = "} 1 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\",span_id=\"00f067aa0ba902b7\"} 0.003 ";
        assert!(lines[5].contains(exemplar), "{}", lines[5]);
        assert!(!lines[6].contains("# {"), "{}", lines[6]);
        assert_eq!(lines.last(), Some(&"# EOF"));
    }

    #[test]
    fn names_codes() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
