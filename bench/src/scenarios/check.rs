//! Rate limits: `Check` of each algorithm against `EVALSHA` of the same script, and a
//! three-limit `Check`.

use std::time::Duration;

use baton::proto::duration_to_proto;
use baton::proto::v1::rate_limiter_service_client::RateLimiterServiceClient;
use baton::proto::v1::{Algorithm, CheckRequest, Limit, LimitRequest, limit_request};

use super::{Bench, Call, Pool};
use crate::redis_baseline::{redis_benchmark, script_sha};

/// Generous enough never to deny in a run; the sliding log is capped at 10,000 per key.
fn limit_for(algorithm: Algorithm) -> u64 {
    if algorithm == Algorithm::SlidingWindow { 10_000 } else { 1_000_000 }
}

fn limit(algorithm: Algorithm) -> Limit {
    Limit {
        algorithm: algorithm as i32,
        limit: limit_for(algorithm),
        period: Some(duration_to_proto(Duration::from_secs(60))),
        burst: 0,
    }
}

fn check_request(keys: &[String], algorithm: Algorithm) -> CheckRequest {
    CheckRequest {
        limits: keys
            .iter()
            .map(|key| LimitRequest {
                key: key.clone(),
                source: Some(limit_request::Source::Limit(limit(algorithm))),
                cost: 1,
            })
            .collect(),
        dry_run: false,
        fail_open: false,
    }
}

/// Caller `w`'s call `i`: one `Check` of `algorithm` on one of 100,000 keys.
pub fn check_one(pool: Pool, algorithm: Algorithm) -> impl Fn(usize, u64) -> Call + Send + Sync + 'static {
    move |w, i| {
        let mut client = RateLimiterServiceClient::new(pool.get(w));
        let key = format!("k{}", (w as u64 * 1_000_003 + i) % 100_000);
        Box::pin(async move {
            client.check(check_request(&[key], algorithm)).await.expect("check");
        })
    }
}

pub async fn run(bench: &mut Bench) {
    // The same source baton loads: the common prelude, the algorithms, then the script.
    let check_source = [
        include_str!("../../../src/store/prelude.lua"),
        include_str!("../../../src/ratelimit/limits.lua"),
        include_str!("../../../src/ratelimit/check.lua"),
    ]
    .join("\n");
    let (redis_port, d) = (bench.redis_port, bench.duration);
    let check_sha = script_sha(redis_port, &check_source);
    for (name, algorithm, code) in [
        ("Check fixed window", Algorithm::FixedWindow, "1"),
        ("Check sliding window", Algorithm::SlidingWindow, "2"),
        ("Check token bucket (GCRA)", Algorithm::TokenBucket, "3"),
    ] {
        let cap = limit_for(algorithm).to_string();
        let burst = if algorithm == Algorithm::TokenBucket { cap.clone() } else { "0".into() };
        // Each algorithm keeps its own state type, so each gets its own keys.
        let raw_key = format!("bench:raw:{code}:__rand_int__");
        let check_sha = check_sha.clone();
        let raw = move |c| {
            let command = ["EVALSHA", &check_sha, "1", &raw_key, "0", code, &cap, "60000000", &burst, "1"];
            Some(redis_benchmark(redis_port, c, d, &command))
        };
        bench.scenario(name, raw, check_one(bench.pool.clone(), algorithm)).await;
    }
    let pool = bench.pool.clone();
    bench
        .scenario(
            "Check 3 limits (GCRA)",
            |_| None,
            move |w, i| {
                let mut client = RateLimiterServiceClient::new(pool.get(w));
                let user = (w as u64 * 1_000_003 + i) % 100_000;
                let keys = [format!("{{u{user}}}:a"), format!("{{u{user}}}:b"), format!("{{u{user}}}:c")];
                async move {
                    client.check(check_request(&keys, Algorithm::TokenBucket)).await.expect("check");
                }
            },
        )
        .await;
}
