//! What OpenTelemetry tracing costs: `Check` (fixed window) against baton processes that
//! trace nothing (the main one), 1 % and 100 % of calls, each exporting over OTLP/gRPC to a
//! receiver in this process that only counts the spans. The figure to read is baton's CPU
//! per operation beside the untraced one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use baton::proto::v1::Algorithm;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use testkit::BatonProcess;

use super::check::check_one;
use super::{Bench, Pool};
use crate::measure;

/// Counts the spans it is sent.
#[derive(Clone, Default)]
struct SpanCounter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for SpanCounter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

async fn start_receiver(counter: SpanCounter) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(counter))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

async fn check_scenario(bench: &mut Bench, name: &str, pool: Pool) {
    bench.scenario(name, |_| None, check_one(pool, Algorithm::FixedWindow)).await;
}

pub async fn run(bench: &mut Bench) {
    let counter = SpanCounter::default();
    let receiver = start_receiver(counter.clone()).await;
    let endpoint = format!("http://{receiver}");
    let redis_url = format!("redis://127.0.0.1:{}", bench.redis_port);

    check_scenario(bench, "Check fixed window, tracing off", bench.pool.clone()).await;
    for (label, ratio) in [("1 %", "0.01"), ("100 %", "1.0")] {
        let traced = BatonProcess::start(
            &bench.baton_binary,
            &["--redis-url", &redis_url, "--otlp-endpoint", &endpoint, "--trace-sample-ratio", ratio],
            "warn,baton=info",
        );
        measure::measure_pid(traced.pid());
        let pool = Pool::connect(traced.addr, 8).await;
        let before = counter.0.load(Ordering::Relaxed);
        check_scenario(bench, &format!("Check fixed window, {label} of calls traced"), pool).await;
        // The exporter sends its last batch on a graceful shutdown.
        let mut traced = traced;
        traced.sigterm();
        traced.wait_exit(testkit::PATIENCE);
        let spans = counter.0.load(Ordering::Relaxed) - before;
        bench.notes.push(format!("tracing {label}: the receiver got {spans} spans (server and Redis spans)"));
    }
    measure::measure_pid(bench.baton_pid);
}
