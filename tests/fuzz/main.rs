//! Request validation of every RPC under random, hostile input (issue #9), with proptest.
//!
//! One Redis, one Baton. For every RPC of every service — Envoy's `ShouldRateLimit`
//! included — proptest strategies generate requests biased toward what breaks validators:
//! empty, oversized (past the 512-byte key limit), unicode and NUL-containing strings;
//! negative, huge and nanos-out-of-range Durations and Timestamps; zero, huge and
//! boundary numbers; enum numbers outside the enum; oversized lists and maps; malformed
//! lease ids, job ids, session ids and tokens. Valid values are mixed in, and ids that
//! Baton really issued (leases, jobs, sessions, fill tokens) are fed back into later
//! requests, so the deeper paths run too. Requests go one at a time through the real
//! gRPC clients, every RPC once per round, interleaved.
//!
//! Every answer must be one a client can act on: never INTERNAL or UNKNOWN (the server's
//! CatchPanic layer turns a handler panic into INTERNAL, so either means a panic or a
//! bug), never an authentication code (auth is off), never a hang past the deadline.
//! Every INVALID_ARGUMENT must name the field (`google.rpc.BadRequest`) and must have
//! written nothing to Redis. Requests that API.md calls invalid (empty or oversized
//! keys, negative or malformed durations, out-of-range lock ttls, oversized batches,
//! unknown policies and algorithms, malformed ids, values over the maximum) must be
//! INVALID_ARGUMENT. The server must still be alive at the end.
//!
//! "Wrote nothing" is measured on Redis itself, around each request, with two counters
//! from one `INFO persistence stats`: `rdb_changes_since_last_save` is the server's dirty
//! counter — every command that changes the data set adds to it, each write inside a Lua
//! script included, while reads, PING, PUBLISH and key expiry do not (`--save ""` means
//! it is never reset) — and `total_commands_processed` counts every command, so a
//! rejection that only read shows up too (reported, not failed: API.md forbids writes).
//! Both counters are server-wide, and Baton has background work (the health PING every
//! 500 ms, the session gauge, the release or hand-back after a dropped stream), so a
//! rejection whose window was not quiet is sent again once the counters settle, up to
//! three times: validation is a pure function of the request, so a write it makes
//! repeats every time, while background noise does not land in every window.
//!
//! Each run draws a new seed, so runs keep exploring; `BATON_FUZZ_SEED=<the seed a run
//! printed> cargo test --test fuzz -- --nocapture` sends the same requests again (state
//! that depends on timing, such as which leases are still live, may differ), and
//! `BATON_FUZZ_CASES` sets the cases per RPC (default 256).

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
mod driver;
mod oracle;
mod strategies;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use baton::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{Entry, RateLimitOverride};
use baton::proto::envoy::service::ratelimit::v3::RateLimitRequest;
use baton::proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use baton::proto::v1::cache_service_client::CacheServiceClient;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::lock_service_client::LockServiceClient;
use baton::proto::v1::rate_limiter_service_client::RateLimiterServiceClient;
use baton::proto::v1::session_store_service_client::SessionStoreServiceClient;
use baton::proto::v1::{
    AckBatchRequest, AckRequest, AcquireRequest, Backoff, BatchGetRequest, BatchSetEntry, BatchSetRequest,
    CancelJobRequest, CheckRequest, ClearSessionsRequest, ConfigureQueueRequest, ConsumeRequest, ConsumeResponse,
    CountSessionsRequest, CreateSessionRequest, DeleteRequest, DeleteSessionRequest, DescribeRequest,
    EnqueueBatchRequest, EnqueueRequest, ExtendRequest, FetchRequest, FillRequest, GetJobRequest,
    GetQueueConfigRequest, GetQueueStatsRequest, GetRequest, GetSessionRequest, InvalidateTagRequest, JobState,
    KeepAliveRequest, Limit, LimitRequest, ListDeadJobsRequest, ListJobsRequest, ListSessionsRequest, NackRequest,
    PauseQueueRequest, QueueConfig, ReleaseRequest, RenewRequest, ResetRequest, ResumeQueueRequest,
    RetryDeadJobsRequest, RevokeSessionsRequest, RotateSessionRequest, SetRequest, UpdateProgressRequest,
    UpdateSessionRequest, consume_response, enqueue_request, limit_request, reset_request,
};
use common::{Baton, Clients as _, Redis};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use prost_types::{Duration as PDuration, Timestamp};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The deadline of calls that may wait (Acquire, Fetch): Baton clamps their wait to it.
const WAITING_DEADLINE: Duration = Duration::from_millis(300);
/// The deadline of every other call.
const DEADLINE: Duration = Duration::from_secs(2);
/// No answer by then is a hang (the server promises never to outlive the caller's deadline).
const HANG: Duration = Duration::from_secs(5);
/// How long a stream's first message is awaited before the stream is dropped.
const FIRST_MESSAGE: Duration = Duration::from_millis(20);
/// How many times a rejection is sent when background work blurred its measurement.
const ATTEMPTS: usize = 3;
/// API.md's default key limit.
const MAX_KEY_BYTES: usize = 512;
/// API.md's and the config's default value limit.
const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// API.md's default batch limit.
const MAX_BATCH: usize = 1000;

/// Named policies and Envoy rules, so that both are exercised, not only inline limits.
const CONFIG: &str = r#"
[policies.fuzz]
algorithm = "token_bucket"
limit = 5
period = "1s"

[policies.fuzz_open]
algorithm = "fixed_window"
limit = 3
period = "1m"
fail_open = true

[envoy]
response_headers = true

[[envoy.domains]]
domain = "fuzz"
[[envoy.domains.descriptors]]
key = "remote_address"
rate_limit = { unit = "second", requests_per_unit = 5 }
[[envoy.domains.descriptors]]
key = "remote_address"
value = "open"
rate_limit = { unlimited = true }
[[envoy.domains.descriptors]]
key = "to_number"
shadow_mode = true
rate_limit = { unit = "hour", requests_per_unit = 2 }
[[envoy.domains.descriptors]]
key = "message_type"
value = "marketing"
[[envoy.domains.descriptors.descriptors]]
key = "to_number"
rate_limit = { unit = "day", requests_per_unit = 5, algorithm = "sliding_window" }
"#;
const POLICIES: [&str; 2] = ["fuzz", "fuzz_open"];

use driver::{Clients, Fuzz, Pool, round};
use strategies::Strategies;

fn seed() -> u64 {
    match std::env::var("BATON_FUZZ_SEED") {
        Ok(seed) => seed.parse().expect("BATON_FUZZ_SEED is a u64"),
        Err(_) => {
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 ^ u64::from(std::process::id())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_to_every_rpc_never_panic_and_rejections_are_invalid_argument_and_write_nothing() {
    let cases: u32 = std::env::var("BATON_FUZZ_CASES").ok().map_or(256, |n| n.parse().expect("BATON_FUZZ_CASES"));
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let baton = Baton::start(Some(&redis.url()), &["--config", config.to_str().unwrap()]);
    let channel = baton.channel().await;
    let clients = Clients {
        rate: RateLimiterServiceClient::new(channel.clone()),
        locks: LockServiceClient::new(channel.clone()),
        cache: CacheServiceClient::new(channel.clone()),
        sessions: SessionStoreServiceClient::new(channel.clone()),
        queues: JobQueueServiceClient::new(channel.clone()),
        envoy: RateLimitServiceClient::new(channel),
    };

    let seed = seed();
    let mut seed_bytes = [0u8; 32];
    for chunk in seed_bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let runner = TestRunner::new_with_rng(ProptestConfig::with_cases(cases), rng);
    let connection = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut fuzz = Fuzz {
        runner,
        redis: connection,
        own_commands: 1,
        tallies: BTreeMap::new(),
        failures: Vec::new(),
        findings: Vec::new(),
        reads_before_rejecting: BTreeMap::new(),
        retries: 0,
        pool: Pool::default(),
        consumer: None,
    };
    // Calibrate: the smallest growth of `commands` between two snapshots is our own INFO.
    let mut own = u64::MAX;
    for _ in 0..5 {
        let (a, b) = (fuzz.counters().await, fuzz.counters().await);
        own = own.min(b.commands - a.commands);
    }
    fuzz.own_commands = own;
    // And a write shows: the measurement itself must be able to fail.
    let before = fuzz.counters().await;
    let _: () = redis::cmd("SET").arg("fuzz:probe").arg("1").query_async(&mut fuzz.redis).await.unwrap();
    let _: i64 = redis::cmd("DEL").arg("fuzz:probe").query_async(&mut fuzz.redis).await.unwrap();
    assert_eq!(fuzz.counters().await.writes - before.writes, 2, "Redis's dirty counter counts writes");
    println!("fuzz: seed {seed} (BATON_FUZZ_SEED), {cases} cases per RPC");

    let strategies = Strategies::new();
    let started = Instant::now();
    for _ in 0..fuzz.runner.config().cases {
        round(&mut fuzz, &strategies, &clients).await;
    }
    let elapsed = started.elapsed();
    fuzz.consumer = None;

    // The server is alive and still answers.
    assert!(common::process_alive(baton.pid()), "baton died during the fuzz run (seed {seed})");
    let mut locks = clients.locks.clone();
    locks.describe(DescribeRequest { name: "k0".into() }).await.expect("baton still answers after the fuzz run");

    let mut total = (0u32, 0u32, 0u32);
    println!("{:<26} {:>8} {:>9} {:>17}  other codes", "rpc", "accepted", "rejected", "(INVALID_ARGUMENT)");
    for (rpc, tally) in &fuzz.tallies {
        let other: u32 = tally.other.values().sum();
        total = (total.0 + tally.ok, total.1 + tally.invalid_argument, total.2 + other);
        println!("{rpc:<26} {:>8} {:>27}  {:?}", tally.ok, tally.invalid_argument, tally.other);
    }
    let cases_run = total.0 + total.1 + total.2;
    println!(
        "fuzz: {cases_run} requests to {} RPCs in {elapsed:.1?}: {} accepted, {} INVALID_ARGUMENT, {} other; \
         {} re-sent after background noise; seed {seed}",
        fuzz.tallies.len(),
        total.0,
        total.1,
        total.2,
        fuzz.retries,
    );
    if !fuzz.reads_before_rejecting.is_empty() {
        println!("fuzz: rejections that read Redis first (no write): {:?}", fuzz.reads_before_rejecting);
    }
    for finding in &fuzz.findings {
        println!("finding: {finding}");
    }
    // A name's first word is its RPC; "Lock/KeepAlive acquiring" is a second form of one.
    let rpcs: std::collections::HashSet<&str> = fuzz.tallies.keys().filter_map(|name| name.split(' ').next()).collect();
    assert_eq!(rpcs.len(), 43, "every RPC was exercised");
    let problems: Vec<&String> = fuzz.failures.iter().chain(&fuzz.findings).collect();
    assert!(
        problems.is_empty(),
        "{} problems (seed {seed}; BATON_FUZZ_SEED={seed} reproduces):\n{}",
        problems.len(),
        problems.iter().take(40).map(|p| p.as_str()).collect::<Vec<_>>().join("\n")
    );
}
