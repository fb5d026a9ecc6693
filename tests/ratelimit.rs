//! RateLimiterService against a real Redis: exactness under concurrency, the sliding
//! window's bound, GCRA timing, atomicity, shared counters, validation.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::rate_limiter_service_client::RateLimiterServiceClient;
use baton::proto::v1::{
    Algorithm, CheckRequest, CheckResponse, ErrorReason, Limit, LimitRequest, ResetRequest, limit_request,
    reset_request,
};
use common::{Clients, Redis, Server, reason_of, unique};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

fn limit(algorithm: Algorithm, limit: u64, period: Duration, burst: u64) -> Limit {
    Limit { algorithm: algorithm as i32, limit, period: Some(duration_to_proto(period)), burst }
}

fn item(key: &str, limit: Limit, cost: u64) -> LimitRequest {
    LimitRequest { key: key.to_owned(), source: Some(limit_request::Source::Limit(limit)), cost }
}

fn request(items: Vec<LimitRequest>) -> CheckRequest {
    CheckRequest { limits: items, dry_run: false, fail_open: false }
}

async fn check(client: &mut RateLimiterServiceClient<Channel>, request: CheckRequest) -> CheckResponse {
    client.check(request).await.expect("check").into_inner()
}

fn millis(duration: &Option<prost_types::Duration>) -> i64 {
    let d = duration.as_ref().expect("duration set");
    d.seconds * 1000 + i64::from(d.nanos) / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_window_admits_exactly_the_limit_under_64_concurrent_callers() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let client = baton.rate_limiter().await;
    let key = unique("fw");
    let hourly = limit(Algorithm::FixedWindow, 100, Duration::from_secs(3600), 0);

    let mut callers = Vec::new();
    for caller in 0..64 {
        let mut client = client.clone();
        let (key, hourly) = (key.clone(), hourly);
        // 1000 calls spread over 64 callers: 40 callers make 16, 24 make 15.
        let calls = if caller < 40 { 16 } else { 15 };
        callers.push(tokio::spawn(async move {
            let mut allowed = 0u32;
            for _ in 0..calls {
                if check(&mut client, request(vec![item(&key, hourly, 1)])).await.allowed {
                    allowed += 1;
                }
            }
            (allowed, calls)
        }));
    }
    let (mut allowed, mut calls) = (0, 0);
    for caller in callers {
        let (a, c) = caller.await.unwrap();
        allowed += a;
        calls += c;
    }
    assert_eq!(calls, 1000);
    assert_eq!(allowed, 100);
    // The window's first write set the counter's expiry; the 99 after it kept it.
    redis.assert_every_key_expires_within(Duration::from_secs(3600));

    let mut client = client.clone();
    let denied = check(&mut client, request(vec![item(&key, hourly, 1)])).await;
    assert!(!denied.allowed);
    assert_eq!(denied.results[0].remaining, 0);
    // The window started at the first hit, an hour long: the retry is close to an hour.
    let retry = millis(&denied.retry_after);
    assert!(retry > 3_500_000 && retry <= 3_600_000, "retry_after {retry} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_window_never_admits_more_than_the_limit_in_any_period() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let client = baton.rate_limiter().await;
    let key = unique("sw");
    let period = Duration::from_secs(1);
    let max = 20u64;
    let sliding = limit(Algorithm::SlidingWindow, max, period, 0);

    // Eight callers hammer the key for 3.5 periods, crossing several window boundaries.
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..8 {
        let mut client = client.clone();
        let key = key.clone();
        callers.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            while started.elapsed() < Duration::from_millis(3500) {
                let sent = started.elapsed();
                let response = check(&mut client, request(vec![item(&key, sliding, 1)])).await;
                let received = started.elapsed();
                if response.allowed {
                    admitted.push((sent, received));
                }
                // Pacing: each caller checks every few milliseconds for 3.5 s.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            admitted
        }));
    }
    let mut admitted: Vec<(Duration, Duration)> = Vec::new();
    for caller in callers {
        admitted.extend(caller.await.unwrap());
    }
    admitted.sort();

    // The log's bound is exactly `limit` per period. Each admission happened somewhere in
    // [sent, received]; max + 1 admissions whose whole intervals fit in less than one
    // period are a certain violation.
    for (index, (first_sent, _)) in admitted.iter().enumerate() {
        let within = admitted[index..]
            .iter()
            .filter(|(sent, received)| sent >= first_sent && *received < *first_sent + period)
            .count() as u64;
        assert!(within <= max, "{within} admitted within one period starting at {first_sent:?}");
    }
    // The limiter admitted close to its capacity (3.5 periods: at least 3 full windows).
    assert!(admitted.len() as u64 >= 3 * max, "only {} admitted", admitted.len());
    assert!(admitted.len() as u64 <= 4 * max, "{} admitted", admitted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bucket_admits_the_burst_then_one_per_interval_with_exact_retry_after() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut client = baton.rate_limiter().await;
    let key = unique("tb");
    // 5 per 2 s: one every 400 ms, burst 3.
    let bucket = limit(Algorithm::TokenBucket, 5, Duration::from_secs(2), 3);
    let one = || request(vec![item(&key, bucket, 1)]);

    for expected_remaining in [2, 1, 0] {
        let response = check(&mut client, one()).await;
        assert!(response.allowed);
        assert_eq!(response.results[0].remaining, expected_remaining);
        assert_eq!(response.results[0].limit, 3);
    }
    let denied = check(&mut client, one()).await;
    let denied_at = Instant::now();
    assert!(!denied.allowed);
    let retry = Duration::from_millis(millis(&denied.retry_after) as u64);
    assert!(retry > Duration::from_millis(250) && retry <= Duration::from_millis(400), "retry_after {retry:?}");
    // reset_after: the whole burst refills in 3 intervals.
    let reset = millis(&denied.results[0].reset_after);
    assert!(reset > 1000 && reset <= 1200, "reset_after {reset} ms");

    // Clearly before retry_after: still denied.
    tokio::time::sleep_until((denied_at + retry - Duration::from_millis(150)).into()).await;
    assert!(!check(&mut client, one()).await.allowed, "admitted 150 ms before retry_after");
    // Just after it: admitted, and then denied again for one interval.
    tokio::time::sleep_until((denied_at + retry + Duration::from_millis(40)).into()).await;
    assert!(check(&mut client, one()).await.allowed, "denied 40 ms after retry_after");
    let next = check(&mut client, one()).await;
    assert!(!next.allowed);
    let retry = millis(&next.retry_after);
    assert!(retry > 250 && retry <= 400, "next retry_after {retry} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_multi_limit_check_consumes_nothing() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut client = baton.rate_limiter().await;
    let (user, global) = (unique("user"), unique("global"));
    let roomy = limit(Algorithm::FixedWindow, 10, Duration::from_secs(60), 0);
    let tight = limit(Algorithm::TokenBucket, 1, Duration::from_secs(60), 0);
    let both = || request(vec![item(&user, roomy, 1), item(&global, tight, 1)]);

    assert!(check(&mut client, both()).await.allowed);
    for _ in 0..3 {
        let denied = check(&mut client, both()).await;
        assert!(!denied.allowed);
        assert!(denied.results[0].allowed && !denied.results[1].allowed);
        assert_eq!(denied.results[0].remaining, 8, "the first limit reports what would remain after this request");
    }
    // Only the first, allowed check consumed from the roomy limit.
    let probe = CheckRequest { dry_run: true, ..request(vec![item(&user, roomy, 1)]) };
    assert_eq!(check(&mut client, probe).await.results[0].remaining, 8);
    let counted: i64 = redis::cmd("HGET")
        .arg(format!("baton:default:rl:{{{user}}}:fw:10:60000000"))
        .arg("c")
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(counted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_reset() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut client = baton.rate_limiter().await;
    let key = unique("dry");
    let small = limit(Algorithm::SlidingWindow, 3, Duration::from_secs(60), 0);

    let dry = check(&mut client, CheckRequest { dry_run: true, ..request(vec![item(&key, small, 2)]) }).await;
    assert!(dry.allowed);
    assert_eq!(dry.results[0].remaining, 1);
    assert_eq!(redis.dbsize(), 0, "a dry run writes nothing");

    assert!(check(&mut client, request(vec![item(&key, small, 3)])).await.allowed);
    assert!(!check(&mut client, request(vec![item(&key, small, 1)])).await.allowed);
    let reset = ResetRequest { key: key.clone(), source: Some(reset_request::Source::Limit(small)) };
    assert!(client.reset(reset.clone()).await.unwrap().into_inner().existed);
    assert!(!client.reset(reset).await.unwrap().into_inner().existed);
    let after = check(&mut client, request(vec![item(&key, small, 1)])).await;
    assert!(after.allowed);
    assert_eq!(after.results[0].remaining, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batons_share_counters() {
    let redis = Redis::start();
    let first = Server::start(&redis.url(), &[]);
    let second = Server::start(&redis.url(), &[]);
    let mut clients = [first.rate_limiter().await, second.rate_limiter().await];
    let key = unique("shared");
    let ten = limit(Algorithm::FixedWindow, 10, Duration::from_secs(3600), 0);
    let mut allowed_by = [0, 0];
    for call in 0..30 {
        if check(&mut clients[call % 2], request(vec![item(&key, ten, 1)])).await.allowed {
            allowed_by[call % 2] += 1;
        }
    }
    assert_eq!(allowed_by, [5, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_policies_from_the_config_file() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, "[policies.login]\nalgorithm = \"fixed_window\"\nlimit = 2\nperiod = \"1m\"\n").unwrap();
    let baton = Server::start(&redis.url(), &["--config", config.to_str().unwrap()]);
    let mut client = baton.rate_limiter().await;
    let key = unique("login");
    let by_policy = || {
        request(vec![LimitRequest {
            key: key.clone(),
            source: Some(limit_request::Source::Policy("login".into())),
            cost: 0,
        }])
    };
    assert!(check(&mut client, by_policy()).await.allowed);
    assert!(check(&mut client, by_policy()).await.allowed);
    let denied = check(&mut client, by_policy()).await;
    assert!(!denied.allowed);
    assert_eq!(denied.results[0].limit, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_invalid_argument_naming_the_field_and_write_nothing() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut client = baton.rate_limiter().await;
    let ok = limit(Algorithm::FixedWindow, 10, Duration::from_secs(1), 0);
    let seventeen: Vec<LimitRequest> = (0..17).map(|i| item(&format!("k{i}"), ok, 1)).collect();
    let negative = Limit { period: Some(prost_types::Duration { seconds: -1, nanos: 0 }), ..ok };
    let cases: Vec<(&str, CheckRequest, &str)> = vec![
        ("empty key", request(vec![item("", ok, 1)]), "limits[0].key"),
        ("513-byte key", request(vec![item(&"k".repeat(513), ok, 1)]), "limits[0].key"),
        ("zero period", request(vec![item("k", Limit { period: None, ..ok }, 1)]), "limits[0].limit.period"),
        ("negative period", request(vec![item("k", negative, 1)]), "limits[0].limit.period"),
        ("limit 0", request(vec![item("k", Limit { limit: 0, ..ok }, 1)]), "limits[0].limit.limit"),
        ("17 limits", request(seventeen), "limits"),
        ("no limits", request(vec![]), "limits"),
        (
            "unknown policy",
            request(vec![LimitRequest {
                key: "k".into(),
                source: Some(limit_request::Source::Policy("nope".into())),
                cost: 1,
            }]),
            "limits[0].policy",
        ),
        (
            "ALGORITHM_UNSPECIFIED",
            request(vec![item("k", Limit { algorithm: Algorithm::Unspecified as i32, ..ok }, 1)]),
            "limits[0].limit.algorithm",
        ),
        (
            "no limit or policy",
            request(vec![LimitRequest { key: "k".into(), source: None, cost: 1 }]),
            "limits[0].limit",
        ),
        ("cost above limit", request(vec![item("k", ok, 11)]), "limits[0].cost"),
        ("burst on a window", request(vec![item("k", Limit { burst: 3, ..ok }, 1)]), "limits[0].limit.burst"),
        ("second item bad", request(vec![item("k", ok, 1), item("", ok, 1)]), "limits[1].key"),
        ("duplicate", request(vec![item("k", ok, 1), item("k", ok, 1)]), "limits[1]"),
    ];
    for (name, request, field) in cases {
        let status = client.check(request).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        let bad_request = status.get_details_bad_request().unwrap_or_else(|| panic!("{name}: no BadRequest"));
        assert_eq!(bad_request.field_violations[0].field, field, "{name}");
        assert_eq!(reason_of(&status), ErrorReason::InvalidField);
    }
    let status = client.reset(ResetRequest { key: "k".into(), source: None }).await.expect_err("reset without a limit");
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "limit");
    assert_eq!(redis.dbsize(), 0, "rejected requests wrote {:?}", redis.keys());
}
