//! OpenTelemetry traces from a baton process to an OTLP receiver in this test (a tonic
//! server implementing the collector's TraceService): the span tree of a Check that
//! continues the caller's trace, and the error status of spans during a Redis outage.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::proto::duration_to_proto;
use baton::proto::v1::{Algorithm, CheckRequest, Limit, LimitRequest, limit_request};
use common::{Baton, Clients, PATIENCE, Redis, eventually, unique};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tonic::Code;

/// Every span exported to it.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on a free port; answers the endpoint for `--otlp-endpoint`.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (the exporter batches every few seconds) for a span `matching`.
    async fn span(&self, what: &str, matching: impl Fn(&Span) -> bool) -> Span {
        eventually(PATIENCE, what, || async { self.spans().iter().any(&matching) }).await;
        self.spans().into_iter().find(|span| matching(span)).unwrap()
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
}

fn text(span: &Span, key: &str) -> Option<String> {
    match attribute(span, key) {
        Some(Value::StringValue(text)) => Some(text),
        _ => None,
    }
}

fn int(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(Value::IntValue(value)) => Some(value),
        _ => None,
    }
}

fn check_request(key: &str) -> CheckRequest {
    let limit = Limit {
        algorithm: Algorithm::FixedWindow as i32,
        limit: 10,
        period: Some(duration_to_proto(Duration::from_secs(60))),
        burst: 0,
    };
    CheckRequest {
        limits: vec![LimitRequest { key: key.to_owned(), source: Some(limit_request::Source::Limit(limit)), cost: 1 }],
        ..Default::default()
    }
}

/// A W3C traceparent as a caller's instrumentation sends it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn with_traceparent<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap());
    request
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_continues_the_callers_trace_with_a_redis_span_beneath_it() {
    let redis = Redis::start();
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let baton = Baton::start(Some(&redis.url()), &["--otlp-endpoint", &endpoint]);
    let mut client = baton.rate_limiter().await;
    client.check(with_traceparent(check_request(&unique("traced")))).await.unwrap();

    let server =
        receiver.span("the Check's server span", |span| span.name == "baton.v1.RateLimiterService/Check").await;
    assert_eq!(hex(&server.trace_id), TRACE_ID, "the caller's trace is continued");
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(text(&server, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(text(&server, "rpc.service").as_deref(), Some("baton.v1.RateLimiterService"));
    assert_eq!(text(&server, "rpc.method").as_deref(), Some("Check"));
    assert_eq!(int(&server, "rpc.grpc.status_code"), Some(0));

    let script = receiver
        .span("the Check's Redis span", |span| span.parent_span_id == server.span_id && !span.span_id.is_empty())
        .await;
    assert_eq!(hex(&script.trace_id), TRACE_ID);
    assert_eq!(text(&script, "db.system").as_deref(), Some("redis"));
    assert!(script.name.starts_with("ratelimit"), "{}", script.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_redis_outage_the_spans_carry_an_error_status() {
    let mut redis = Redis::start();
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let baton = Baton::start(Some(&redis.url()), &["--otlp-endpoint", &endpoint]);
    let mut client = baton.rate_limiter().await;
    redis.kill();
    let status = client.check(with_traceparent(check_request(&unique("outage")))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    let server = receiver
        .span("the failed Check's server span", |span| {
            span.name == "baton.v1.RateLimiterService/Check" && int(span, "rpc.grpc.status_code") == Some(14)
        })
        .await;
    assert_eq!(server.status.as_ref().map(|status| status.code), Some(StatusCode::Error as i32));
    let script = receiver.span("the failed Redis span", |span| span.parent_span_id == server.span_id).await;
    assert_eq!(script.status.as_ref().map(|status| status.code), Some(StatusCode::Error as i32));
}
