//! Redis failures: killed (connections refused) and frozen with SIGSTOP (connections
//! hang). Checks answer UNAVAILABLE within their deadline or, under fail-open, at once
//! from the breaker; per-service health follows Redis while `""` and `liveness` do not;
//! everything recovers in the same baton process.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::rate_limiter_service_client::RateLimiterServiceClient;
use baton::proto::v1::{Algorithm, CheckRequest, ErrorReason, Limit, LimitRequest, limit_request};
use common::{Baton, Clients, PATIENCE, Redis, eventually, health_status, reason_of, unique};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

const RATE_LIMITER: &str = "baton.v1.RateLimiterService";
const ALL_SERVICES: [&str; 5] = [
    "baton.v1.RateLimiterService",
    "baton.v1.LockService",
    "baton.v1.CacheService",
    "baton.v1.SessionStoreService",
    "baton.v1.JobQueueService",
];

fn check_request(key: &str, fail_open: bool) -> tonic::Request<CheckRequest> {
    let limit = Limit {
        algorithm: Algorithm::TokenBucket as i32,
        limit: 1000,
        period: Some(duration_to_proto(Duration::from_secs(1))),
        burst: 0,
    };
    let mut request = tonic::Request::new(CheckRequest {
        limits: vec![LimitRequest { key: key.to_owned(), source: Some(limit_request::Source::Limit(limit)), cost: 1 }],
        dry_run: false,
        fail_open,
    });
    request.set_timeout(Duration::from_secs(3));
    request
}

async fn all_services_are(baton: &Baton, status: ServingStatus) -> bool {
    let mut health = baton.health().await;
    for service in ALL_SERVICES {
        if health_status(&mut health, service).await != Some(status) {
            return false;
        }
    }
    true
}

async fn process_health_stays_serving(baton: &Baton) {
    let mut health = baton.health().await;
    assert_eq!(health_status(&mut health, "").await, Some(ServingStatus::Serving));
    assert_eq!(health_status(&mut health, "liveness").await, Some(ServingStatus::Serving));
}

/// Asserts the outage behaviour: UNAVAILABLE within the deadline, fail-open degraded and
/// fast once the breaker knows, health names flipped.
async fn assert_outage(baton: &Baton, client: &mut RateLimiterServiceClient<Channel>, key: &str) {
    let started = Instant::now();
    let status = client.check(check_request(key, false)).await.expect_err("redis is down");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason_of(&status), ErrorReason::StorageUnavailable);
    assert!(status.get_details_retry_info().is_some());
    assert!(took < Duration::from_secs(3), "UNAVAILABLE took {took:?}");

    let flipped =
        eventually(PATIENCE, "services NOT_SERVING", || all_services_are(baton, ServingStatus::NotServing)).await;
    eprintln!("health went NOT_SERVING {flipped:?} after the first failed check");
    process_health_stays_serving(baton).await;

    // The breaker is open: fail-open checks answer degraded without waiting on Redis.
    for _ in 0..5 {
        let started = Instant::now();
        let response = client.check(check_request(key, true)).await.expect("fail-open answers").into_inner();
        let took = started.elapsed();
        assert!(response.allowed && response.degraded);
        assert!(took < Duration::from_millis(250), "fail-open check took {took:?}, the Redis timeout is 500 ms");
    }
}

async fn assert_recovered(baton: &Baton, client: &mut RateLimiterServiceClient<Channel>, key: &str) {
    let back = eventually(PATIENCE, "services SERVING again", || all_services_are(baton, ServingStatus::Serving)).await;
    eprintln!("health went SERVING {back:?} after redis came back");
    let response = client.check(check_request(key, false)).await.expect("check after recovery").into_inner();
    assert!(response.allowed && !response.degraded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_then_restarted() {
    let mut redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &[]);
    let mut client = baton.rate_limiter().await;
    let key = unique("kill");
    eventually(PATIENCE, "services SERVING", || all_services_are(&baton, ServingStatus::Serving)).await;
    assert!(client.check(check_request(&key, false)).await.unwrap().into_inner().allowed);

    redis.kill();
    assert_outage(&baton, &mut client, &key).await;
    redis.restart();
    assert_recovered(&baton, &mut client, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_then_thawed() {
    let redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &[]);
    let mut client = baton.rate_limiter().await;
    let key = unique("freeze");
    eventually(PATIENCE, "services SERVING", || all_services_are(&baton, ServingStatus::Serving)).await;
    assert!(client.check(check_request(&key, false)).await.unwrap().into_inner().allowed);

    redis.freeze();
    assert_outage(&baton, &mut client, &key).await;
    redis.thaw();
    assert_recovered(&baton, &mut client, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_starts_while_redis_is_down_and_serves_once_it_is_up() {
    let mut redis = Redis::start();
    redis.kill();
    let baton = Baton::start(Some(&redis.url()), &[]);
    let mut health = baton.health().await;
    assert_eq!(health_status(&mut health, RATE_LIMITER).await, Some(ServingStatus::NotServing));
    assert_eq!(health_status(&mut health, "").await, Some(ServingStatus::Serving));
    redis.restart();
    let mut client = baton.rate_limiter().await;
    assert_recovered(&baton, &mut client, &unique("late")).await;
}
