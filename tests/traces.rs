//! OpenTelemetry traces from baton processes to an OTLP receiver in this test (a tonic
//! server implementing the collector's TraceService): the span tree of a Check that
//! continues the caller's trace, of an Acquire that waited, of a job from Enqueue on one
//! replica through its delivery on another to its Ack, and the error status of spans during
//! a Redis outage.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::proto::duration_to_proto;
use baton::proto::v1::{
    AckRequest, AcquireRequest, Algorithm, CheckRequest, ConsumeRequest, EnqueueRequest, KeepAliveRequest, Limit,
    LimitRequest, ReleaseRequest, consume_response, limit_request,
};
use common::{
    Baton, Clients, PATIENCE, Redis, RedisCluster, eventually, heartbeats, next_event, scrape_metrics, unique,
};
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

/// With the random-trace-id flag of Trace Context Level 2 set too (`03`), as Python's
/// OpenTelemetry SDK sends it.
fn with_traceparent<T>(message: T) -> tonic::Request<T> {
    with_context(message, &format!("00-{TRACE_ID}-{CALLER_SPAN}-03"))
}

fn with_context<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    request
}

/// `GET /metrics` as Prometheus asks when it stores exemplars.
async fn scrape_openmetrics(addr: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n\r\n";
        stream.write_all(request.as_bytes()).unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body
    })
    .await
    .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Now on the clock spans are stamped with (the same machine's).
fn unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
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
    assert_eq!(text(&server, "baton.pattern").as_deref(), Some("ratelimit"));
    assert_eq!(text(&server, "baton.tenant").as_deref(), Some("default"));
    assert_eq!(text(&server, "baton.outcome").as_deref(), Some("allowed"));

    let script = receiver
        .span("the Check's Redis span", |span| span.parent_span_id == server.span_id && !span.span_id.is_empty())
        .await;
    // The latency histogram shows this call as an exemplar to an OpenMetrics scraper.
    let exposition = scrape_openmetrics(baton.metrics_addr).await;
    assert!(exposition.contains("content-type: application/openmetrics-text"), "{exposition}");
    let exemplar = format!("# {{trace_id=\"{TRACE_ID}\",span_id=\"{}\"}}", hex(&server.span_id));
    assert!(
        exposition.lines().any(|line| line.starts_with("baton_grpc_request_duration_seconds_bucket{")
            && line.contains("method=\"Check\"")
            && line.contains(&exemplar)),
        "{exposition}"
    );
    assert!(exposition.contains("# TYPE baton_grpc_requests counter"), "{exposition}");
    assert!(exposition.trim_end().ends_with("# EOF"), "{exposition}");
    assert!(!scrape_metrics(baton.metrics_addr).await.contains("trace_id="), "plain Prometheus text has no exemplars");
    assert_eq!(hex(&script.trace_id), TRACE_ID);
    assert_eq!(text(&script, "db.system").as_deref(), Some("redis"));
    assert!(script.name.starts_with("ratelimit"), "{}", script.name);
    // A fresh Redis had not cached the script: it was sent whole on a second attempt.
    assert_eq!(int(&script, "baton.redis.attempts"), Some(2));
    let attributes: Vec<&str> = script.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(attributes.iter().filter(|key| **key == "baton.redis.attempts").count(), 1, "{attributes:?}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_that_waited_shows_its_wait_between_two_attempts() {
    let redis = Redis::start();
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let baton = Baton::start(Some(&redis.url()), &["--otlp-endpoint", &endpoint]);
    let mut locks = baton.locks().await;
    let name = unique("traced-lock");
    let acquire = |wait: Duration| AcquireRequest {
        name: name.clone(),
        ttl: Some(duration_to_proto(Duration::from_secs(30))),
        wait_timeout: Some(duration_to_proto(wait)),
        ..Default::default()
    };
    let held = locks.acquire(acquire(Duration::ZERO)).await.unwrap().into_inner().lease.unwrap();
    let mut waiter = locks.clone();
    let waiting = tokio::spawn({
        let request = acquire(Duration::from_secs(30));
        async move { waiter.acquire(with_traceparent(request)).await.unwrap().into_inner() }
    });
    // Released only once the waiter's first attempt has been exported, so the waiter is known
    // to be waiting (a fixed sleep raced a slow start of the waiting call on a loaded machine).
    receiver
        .span("the waiter's first attempt", |span| hex(&span.trace_id) == TRACE_ID && span.name.starts_with("lock"))
        .await;
    // The release takes effect somewhere between its call and its answer: the waiter's
    // span for that attempt may be exported a moment before its nap's span starts.
    let released_at = unix_nanos();
    locks.release(ReleaseRequest { name: name.clone(), lease_id: held.lease_id }).await.unwrap();
    let release_answered_at = unix_nanos();
    assert!(waiting.await.unwrap().acquired);

    let server = receiver
        .span("the waiting Acquire's server span", |span| {
            span.name == "baton.v1.LockService/Acquire" && hex(&span.trace_id) == TRACE_ID
        })
        .await;
    assert_eq!(text(&server, "baton.outcome").as_deref(), Some("waited"));
    assert_eq!(text(&server, "baton.name").as_deref(), Some(name.as_str()));
    assert_eq!(text(&server, "baton.pattern").as_deref(), Some("lock"));
    assert!(server.end_time_unix_nano >= released_at, "the call waited for the release");

    // Children end before their parent, so they were exported with it or before it. A waiter
    // re-checks every second, one wait span per nap: the last nap is the one the release ended.
    let beneath = |prefix: &str| -> Vec<Span> {
        let spans = receiver.spans().into_iter();
        spans.filter(|span| span.parent_span_id == server.span_id && span.name.starts_with(prefix)).collect()
    };
    let wait = beneath("wait").into_iter().max_by_key(|span| span.start_time_unix_nano).expect("a wait span");
    assert!(
        wait.start_time_unix_nano <= release_answered_at && wait.end_time_unix_nano >= released_at,
        "the last wait spans the release: {} ..= {} against {released_at} ..= {release_answered_at}",
        wait.start_time_unix_nano,
        wait.end_time_unix_nano
    );
    // An attempt found the lock busy before that wait, the one after it took the lock.
    let attempts = beneath("lock");
    assert!(attempts.iter().any(|span| span.end_time_unix_nano <= wait.start_time_unix_nano));
    assert!(attempts.iter().any(|span| span.start_time_unix_nano >= wait.end_time_unix_nano));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_carries_its_trace_from_enqueue_through_delivery_on_another_replica_to_ack() {
    let redis = Redis::start();
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let producer_side = Baton::start(Some(&redis.url()), &["--otlp-endpoint", &endpoint]);
    let worker_side = Baton::start(Some(&redis.url()), &["--otlp-endpoint", &endpoint]);
    let queue = unique("traced-queue");
    let mut producer = producer_side.queues().await;
    let enqueued = producer
        .enqueue(with_traceparent(EnqueueRequest {
            queue: queue.clone(),
            payload: b"work".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    let mut worker = worker_side.queues().await;
    let opening = ConsumeRequest { queue: queue.clone(), max_in_flight: 1, ..Default::default() };
    let mut stream = worker.consume(tokio_stream::once(opening)).await.unwrap().into_inner();
    let Some(consume_response::Event::Delivery(delivery)) = next_event(&mut stream, PATIENCE).await else {
        panic!("no delivery");
    };
    let job = delivery.job.unwrap();
    assert_eq!(job.job_id, enqueued.job_id);
    // What a worker's instrumentation extracts and sends on with its Ack.
    let carried = job.trace_context.get("traceparent").cloned().expect("the delivery carries a trace context");
    assert!(carried.starts_with(&format!("00-{TRACE_ID}-")), "{carried}");
    worker.ack(with_context(AckRequest { lease_id: delivery.lease_id, ..Default::default() }, &carried)).await.unwrap();

    let enqueue =
        receiver.span("the Enqueue's server span", |span| span.name == "baton.v1.JobQueueService/Enqueue").await;
    assert_eq!(hex(&enqueue.trace_id), TRACE_ID);
    assert_eq!(text(&enqueue, "baton.name").as_deref(), Some(queue.as_str()));
    assert_eq!(text(&enqueue, "baton.outcome").as_deref(), Some("enqueued"));
    let consume =
        receiver.span("the Consume's server span", |span| span.name == "baton.v1.JobQueueService/Consume").await;
    assert_ne!(consume.trace_id, enqueue.trace_id, "the stream is a trace of its own");
    let deliver = receiver.span("the delivery's span", |span| span.name == "deliver").await;
    assert_eq!(deliver.trace_id, enqueue.trace_id, "the delivery continues the enqueuer's trace");
    assert_eq!(deliver.parent_span_id, enqueue.span_id);
    assert_eq!(text(&deliver, "messaging.message.id").as_deref(), Some(job.job_id.as_str()));
    assert_eq!(int(&deliver, "messaging.delivery.attempt"), Some(1));
    assert!(
        deliver.links.iter().any(|link| link.span_id == consume.span_id && link.trace_id == consume.trace_id),
        "the delivery links to the stream's span"
    );
    assert_eq!(carried, format!("00-{TRACE_ID}-{}-01", hex(&deliver.span_id)));
    let ack = receiver.span("the Ack's server span", |span| span.name == "baton.v1.JobQueueService/Ack").await;
    assert_eq!(ack.trace_id, enqueue.trace_id);
    assert_eq!(ack.parent_span_id, deliver.span_id, "the worker's Ack continues from the delivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_a_job_still_carries_the_enqueuers_traceparent_and_nothing_else() {
    let redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("carried");
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let job = |payload: &[u8]| EnqueueRequest { queue: queue.clone(), payload: payload.to_vec(), ..Default::default() };
    queues.enqueue(with_context(job(b"traced"), &traceparent)).await.unwrap();
    queues.enqueue(with_context(job(b"hostile"), "00-not-a-traceparent-at-all")).await.unwrap();
    queues.enqueue(job(b"untraced")).await.unwrap();

    let opening = ConsumeRequest { queue: queue.clone(), max_in_flight: 3, ..Default::default() };
    let mut stream = queues.consume(tokio_stream::once(opening)).await.unwrap().into_inner();
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 3 {
        let Some(consume_response::Event::Delivery(delivery)) = next_event(&mut stream, PATIENCE).await else {
            panic!("expected three deliveries, got {}", seen.len());
        };
        let job = delivery.job.unwrap();
        seen.insert(job.payload.clone(), job.trace_context);
    }
    assert_eq!(seen[b"traced".as_slice()].get("traceparent"), Some(&traceparent));
    assert!(seen[b"hostile".as_slice()].is_empty(), "a malformed traceparent is not stored");
    assert!(seen[b"untraced".as_slice()].is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_keepalive_renewal_is_a_span_of_its_own_linked_to_the_stream() {
    let redis = Redis::start();
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let baton = Baton::start(Some(&redis.url()), &["--otlp-endpoint", &endpoint]);
    let mut locks = baton.locks().await;
    let name = unique("kept");
    let ttl = Duration::from_millis(600);
    let acquire = AcquireRequest { name: name.clone(), ttl: Some(duration_to_proto(ttl)), ..Default::default() };
    let lease = locks.acquire(acquire).await.unwrap().into_inner().lease.unwrap();
    let opening = KeepAliveRequest { name: name.clone(), lease_id: lease.lease_id.clone(), ..Default::default() };
    let (beats, task) = heartbeats(opening, ttl / 3);
    let mut answers = locks.keep_alive(with_traceparent(beats)).await.unwrap().into_inner();
    let mut renewed = 0;
    while renewed < 4 {
        if answers.message().await.unwrap().unwrap().renewed {
            renewed += 1;
        }
    }
    task.abort();

    let stream =
        receiver.span("the KeepAlive's server span", |span| span.name == "baton.v1.LockService/KeepAlive").await;
    assert_eq!(hex(&stream.trace_id), TRACE_ID);
    let renewals = |spans: &[Span]| -> Vec<Span> {
        spans
            .iter()
            .filter(|span| span.name == "renew" && text(span, "baton.name").as_deref() == Some(&name))
            .cloned()
            .collect()
    };
    eventually(PATIENCE, "three renewal spans", || async { renewals(&receiver.spans()).len() >= 3 }).await;
    for renewal in renewals(&receiver.spans()) {
        assert_ne!(renewal.trace_id, stream.trace_id, "a renewal is not held under the stream's span");
        assert!(renewal.links.iter().any(|link| link.span_id == stream.span_id), "linked to the stream");
        assert!(
            receiver.spans().iter().any(|span| span.parent_span_id == renewal.span_id && span.name == "lock_renew"),
            "the renewal's Redis call sits beneath it"
        );
    }
    assert!(
        stream.end_time_unix_nano < renewals(&receiver.spans())[2].start_time_unix_nano,
        "the stream's span ended first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_call_makes_no_span_and_a_callers_decision_is_followed() {
    let redis = Redis::start();
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    // No trace that starts at baton is recorded.
    let baton = Baton::start(Some(&redis.url()), &["--otlp-endpoint", &endpoint, "--trace-sample-ratio", "0"]);
    let mut client = baton.rate_limiter().await;
    client.check(check_request(&unique("root"))).await.unwrap();
    let unsampled = format!("00-{}-{CALLER_SPAN}-00", "1".repeat(32));
    client.check(with_context(check_request(&unique("unsampled")), &unsampled)).await.unwrap();
    client.check(with_traceparent(check_request(&unique("sampled")))).await.unwrap();

    receiver.span("the sampled caller's Check", |span| span.name == "baton.v1.RateLimiterService/Check").await;
    let spans = receiver.spans();
    let checks = spans.iter().filter(|span| span.name == "baton.v1.RateLimiterService/Check").count();
    assert_eq!(checks, 1, "only the sampled caller's Check is recorded");
    assert!(spans.iter().all(|span| hex(&span.trace_id) == TRACE_ID), "no span of another trace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_redis_span_names_the_hash_slot_of_its_keys() {
    let cluster = RedisCluster::start(3);
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let baton = Baton::start(Some(&cluster.url()), &["--redis-mode", "cluster", "--otlp-endpoint", &endpoint]);
    let mut client = baton.rate_limiter().await;
    let key = unique("slotted");
    client.check(with_traceparent(check_request(&key))).await.unwrap();

    let server = receiver.span("the Check", |span| span.name == "baton.v1.RateLimiterService/Check").await;
    let script = receiver.span("its Redis span", |span| span.parent_span_id == server.span_id).await;
    let slot = int(&script, "db.redis.hash_slot")
        .unwrap_or_else(|| panic!("a hash slot on a cluster: {:?}", script.attributes));
    // The slot Redis itself gives the counter key the Check wrote.
    let written: Vec<(String, i64)> = cluster
        .nodes
        .iter()
        .flat_map(|node| node.query::<Vec<String>>(redis::cmd("KEYS").arg(format!("*{key}*"))).unwrap_or_default())
        .map(|name| {
            let slot = cluster.nodes[0].query::<i64>(redis::cmd("CLUSTER").arg("KEYSLOT").arg(&name)).unwrap();
            (name, slot)
        })
        .collect();
    assert!(!written.is_empty(), "the Check wrote its counter");
    assert!(written.iter().all(|(_, written_slot)| *written_slot == slot), "{written:?} against {slot}");
}
