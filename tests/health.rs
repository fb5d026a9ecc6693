//! Health names, reflection (v1 and v1alpha) and metrics.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Baton, Clients, PATIENCE, Redis, Server, eventually, health_status};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_and_unknown_names() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut health = baton.health().await;
    assert_eq!(health_status(&mut health, "").await, Some(ServingStatus::Serving));
    assert_eq!(health_status(&mut health, "liveness").await, Some(ServingStatus::Serving));
    eventually(PATIENCE, "rate limiter SERVING", || {
        let mut health = health.clone();
        async move { health_status(&mut health, "baton.v1.RateLimiterService").await == Some(ServingStatus::Serving) }
    })
    .await;
    let unknown =
        health.check(tonic_health::pb::HealthCheckRequest { service: "nope".into() }).await.expect_err("unknown name");
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_in_v1_and_v1alpha() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let expected = [
        "baton.v1.RateLimiterService",
        "baton.v1.LockService",
        "baton.v1.CacheService",
        "baton.v1.SessionStoreService",
        "baton.v1.JobQueueService",
        "grpc.health.v1.Health",
    ];

    use tonic_reflection::pb::v1;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(baton.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut replies = client.server_reflection_info(tokio_stream::once(request)).await.unwrap().into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = reply.message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in expected {
        assert!(names.iter().any(|n| n == name), "v1 lacks {name}: {names:?}");
    }

    use tonic_reflection::pb::v1alpha as alpha;
    let mut client = alpha::server_reflection_client::ServerReflectionClient::new(baton.channel().await);
    let request = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "baton.v1.RateLimiterService".into(),
        )),
    };
    let mut replies = client.server_reflection_info(tokio_stream::once(request)).await.unwrap().into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    assert!(
        matches!(
            reply.message_response,
            Some(alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref files))
                if !files.file_descriptor_proto.is_empty()
        ),
        "v1alpha did not describe the rate limiter: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rpcs_by_method_and_code() {
    let redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &[]);
    // The first health ping has completed (and set the Redis gauges) once this is SERVING.
    let health = baton.health().await;
    eventually(PATIENCE, "rate limiter SERVING", || {
        let mut health = health.clone();
        async move { health_status(&mut health, "baton.v1.RateLimiterService").await == Some(ServingStatus::Serving) }
    })
    .await;
    let mut client = baton.rate_limiter().await;
    let _ = client.check(baton::proto::v1::CheckRequest::default()).await.unwrap_err();
    let scrape = common::scrape_metrics(baton.metrics_addr).await;
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    let counted = scrape.lines().any(|line| {
        line.starts_with("baton_grpc_requests_total")
            && line.contains("method=\"Check\"")
            && line.contains("code=\"INVALID_ARGUMENT\"")
            && line.ends_with(" 1")
    });
    assert!(counted, "no request counter in:\n{scrape}");
    assert!(scrape.contains("baton_grpc_request_duration_seconds_bucket"), "no latency histogram");
    assert!(scrape.contains("baton_redis_up"), "no redis health gauge");
}
