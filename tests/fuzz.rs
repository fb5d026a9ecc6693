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

mod common;

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
    CancelJobRequest, CheckRequest, ClearSessionsRequest, ConsumeRequest, ConsumeResponse, CountSessionsRequest,
    CreateSessionRequest, DeleteRequest, DeleteSessionRequest, DescribeRequest, EnqueueBatchRequest, EnqueueRequest,
    ExtendRequest, FetchRequest, FillRequest, GetJobRequest, GetQueueStatsRequest, GetRequest, GetSessionRequest,
    InvalidateTagRequest, KeepAliveRequest, Limit, LimitRequest, ListDeadJobsRequest, ListSessionsRequest, NackRequest,
    PauseQueueRequest, ReleaseRequest, RenewRequest, ResetRequest, ResumeQueueRequest, RetryDeadJobsRequest,
    RevokeSessionsRequest, RotateSessionRequest, SetRequest, UpdateSessionRequest, consume_response, enqueue_request,
    limit_request, reset_request,
};
use common::{Baton, Redis};
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

// ---------------------------------------------------------------------------------------
// Strategies: hostile values, with valid ones mixed in.
// ---------------------------------------------------------------------------------------

fn pd(seconds: i64, nanos: i32) -> PDuration {
    PDuration { seconds, nanos }
}

fn ms(millis: i64) -> PDuration {
    pd(millis / 1000, (millis % 1000) as i32 * 1_000_000)
}

/// Strings of a boundary length, in 1-, 2- and 4-byte characters and NULs.
fn long_text() -> BoxedStrategy<String> {
    let lengths = vec![127usize, 128, 129, 255, 256, 257, 511, 512, 513, 1024, 4097, 70_000];
    (prop::sample::select(lengths), prop::sample::select(vec!["a", "é", "🦀", "\0"]))
        .prop_map(|(count, unit)| unit.repeat(count))
        .boxed()
}

/// Any string at all: printable unicode, control characters, NUL.
fn wild_text() -> BoxedStrategy<String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        "\\PC{0,24}",
        Just("a\0b".to_owned()),
        Just(" ".to_owned()),
        Just("\u{feff}".to_owned()),
    ]
    .boxed()
}

/// Free text fields (owners, types, errors, handles).
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z0-9_:.-]{0,12}",
        1 => Just(String::new()),
        2 => wild_text(),
        1 => long_text(),
    ]
    .boxed()
}

/// Keys and names: mostly a few shared ones (so state builds up), then everything else.
fn name() -> BoxedStrategy<String> {
    prop_oneof![
        8 => prop::sample::select(vec!["k0", "k1", "k2", "k3", "{t}k4", "user:42"]).prop_map(str::to_owned),
        2 => "[a-zA-Z0-9:{}_.-]{1,24}",
        1 => Just(String::new()),
        2 => long_text(),
        2 => wild_text(),
    ]
    .boxed()
}

/// Names inside lists that may hold a thousand of them: short, with the odd bad one.
fn list_name() -> BoxedStrategy<String> {
    prop_oneof![
        20 => "[a-z0-9]{1,8}",
        1 => Just(String::new()),
        1 => Just("a".repeat(MAX_KEY_BYTES + 1)),
        1 => Just("a\0b".to_owned()),
    ]
    .boxed()
}

fn bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::sample::select(vec![MAX_VALUE_BYTES, MAX_VALUE_BYTES + 1]).prop_map(|n| vec![b'v'; n]),
    ]
    .boxed()
}

fn small_bytes() -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..16).boxed()
}

/// A list: usually short, sometimes empty or around `limit` (when given).
fn list<T: Debug + Clone + 'static>(
    element: BoxedStrategy<T>,
    cheap: BoxedStrategy<T>,
    limit: usize,
) -> BoxedStrategy<Vec<T>> {
    prop_oneof![
        8 => prop::collection::vec(element, 0..4),
        1 => prop::collection::vec(cheap, limit..=limit + 1),
    ]
    .boxed()
}

/// Durations for ttls, periods, timeouts: valid, boundary and broken.
fn duration() -> BoxedStrategy<Option<PDuration>> {
    let boundaries = vec![
        ms(1),
        pd(0, 999_999),
        ms(99),
        ms(100),
        ms(999),
        ms(1000),
        pd(600, 0),
        pd(600, 1),
        pd(3600, 0),
        pd(3600, 1),
        pd(12 * 3600, 0),
        pd(12 * 3600 + 1, 0),
        pd(30 * 86_400, 0),
        pd(30 * 86_400, 1),
    ];
    let broken = vec![
        pd(-1, 0),
        pd(0, -1),
        pd(-5, -5),
        pd(1, -1),
        pd(-1, 1),
        pd(0, 1_000_000_000),
        pd(0, i32::MAX),
        pd(0, i32::MIN),
        pd(i64::MAX, 999_999_999),
        pd(i64::MAX, 0),
        pd(i64::MIN, 0),
        pd(i64::MAX / 32 + 1, 0),
        pd(u64::MAX as i64 / 1_000_000, 0),
        pd(315_576_000_001, 0),
    ];
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(pd(0, 0))),
        4 => (1i64..5_000).prop_map(|n| Some(ms(n))),
        2 => prop::sample::select(boundaries).prop_map(Some),
        1 => (0i64..10_000_000, 0i32..1_000_000_000).prop_map(|(s, n)| Some(pd(s, n))),
        2 => prop::sample::select(broken).prop_map(Some),
        1 => (any::<i64>(), any::<i32>()).prop_map(|(s, n)| Some(pd(s, n))),
    ]
    .boxed()
}

/// Wait timeouts: mostly at most 50 ms so the run stays short, then the broken ones.
fn wait() -> BoxedStrategy<Option<PDuration>> {
    let hostile = vec![
        pd(-1, 0),
        pd(0, -1),
        pd(0, 1_000_000_000),
        pd(i64::MAX, 999_999_999),
        pd(i64::MIN, 0),
        pd(600, 0),
        pd(601, 0),
        pd(3600, 0),
        pd(3601, 0),
    ];
    prop_oneof![
        3 => Just(None),
        6 => (0i64..=50).prop_map(|n| Some(ms(n))),
        2 => prop::sample::select(hostile).prop_map(Some),
        1 => (any::<i64>(), any::<i32>()).prop_map(|(s, n)| Some(pd(s, n))),
    ]
    .boxed()
}

fn now_seconds() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn timestamp() -> BoxedStrategy<Timestamp> {
    let now = now_seconds();
    let fixed = vec![
        Timestamp { seconds: 0, nanos: 0 },
        Timestamp { seconds: -1, nanos: 0 },
        Timestamp { seconds: now, nanos: -1 },
        Timestamp { seconds: now, nanos: 1_000_000_000 },
        Timestamp { seconds: i64::MAX, nanos: 999_999_999 },
        Timestamp { seconds: i64::MIN, nanos: 0 },
        Timestamp { seconds: u64::MAX as i64 / 1_000_000 + 1, nanos: 0 },
        Timestamp { seconds: 253_402_300_800, nanos: 0 },
        Timestamp { seconds: now + 31 * 86_400, nanos: 0 },
    ];
    prop_oneof![
        4 => (0i64..10, 0i32..1_000_000_000).prop_map(move |(s, n)| Timestamp { seconds: now + s, nanos: n }),
        1 => (0..now).prop_map(|s| Timestamp { seconds: s, nanos: 0 }),
        2 => prop::sample::select(fixed),
        1 => (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Timestamp { seconds, nanos }),
    ]
    .boxed()
}

fn u64s() -> BoxedStrategy<u64> {
    let edges = vec![
        0,
        1,
        10_000,
        10_001,
        1_000_000_000_000,
        1_000_000_000_001,
        (1 << 53) + 1,
        i64::MAX as u64,
        i64::MAX as u64 + 1,
        u64::MAX - 1,
        u64::MAX,
    ];
    prop_oneof![4 => 0u64..20, 1 => any::<u64>(), 2 => prop::sample::select(edges)].boxed()
}

fn u32s() -> BoxedStrategy<u32> {
    let edges = vec![0, 1, 1000, 1001, 10_000, 10_001, 1 << 31, u32::MAX];
    prop_oneof![4 => 0u32..20, 1 => any::<u32>(), 2 => prop::sample::select(edges)].boxed()
}

fn i32s() -> BoxedStrategy<i32> {
    let edges = vec![i32::MIN, -1001, -1000, -1, 1000, 1001, i32::MAX];
    prop_oneof![4 => -5i32..5, 1 => any::<i32>(), 2 => prop::sample::select(edges)].boxed()
}

/// A proto enum field: the valid numbers `0..=last`, or any other i32.
fn enum_number(last: i32) -> BoxedStrategy<i32> {
    prop_oneof![
        6 => 0..=last,
        1 => prop::sample::select(vec![-1, last + 1, i32::MIN, i32::MAX]),
        1 => any::<i32>(),
    ]
    .boxed()
}

fn multiplier() -> BoxedStrategy<f64> {
    let edges =
        vec![0.0, -0.0, 1.0, 100.0, 100.000_001, 0.5, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX];
    prop_oneof![3 => 0.0f64..5.0, 2 => prop::sample::select(edges), 1 => any::<f64>()].boxed()
}

fn hex(length: usize) -> BoxedStrategy<String> {
    prop::collection::vec(prop::sample::select(b"0123456789abcdef".to_vec()), length)
        .prop_map(|digits| String::from_utf8(digits).unwrap())
        .boxed()
}

/// A lock lease id: well formed (32 lowercase hex) but unknown, nearly so, or anything.
fn lock_lease_id() -> BoxedStrategy<String> {
    prop_oneof![
        3 => hex(32),
        1 => "[0-9a-fA-F]{30,34}",
        1 => Just(String::new()),
        2 => text(),
    ]
    .boxed()
}

/// A job id of Baton's form (uuid v7 "." base64url(queue)) for `queue`.
fn job_id_for() -> BoxedStrategy<String> {
    (hex(8), hex(4), hex(3), hex(3), hex(12), prop::sample::select(vec!["k0", "k1", "k2", "k3", ""]))
        .prop_map(|(a, b, c, d, e, queue)| format!("{a}-{b}-7{c}-8{d}-{e}.{}", URL_SAFE_NO_PAD.encode(queue)))
        .boxed()
}

fn job_id() -> BoxedStrategy<String> {
    prop_oneof![
        3 => job_id_for(),
        1 => "[0-9a-f-]{36}\\.[A-Za-z0-9_-]{0,12}",
        1 => Just(String::new()),
        2 => text(),
    ]
    .boxed()
}

/// A queue lease id: Baton's form (token "." job id), broken variants, anything.
fn queue_lease_id() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (hex(32), job_id_for()).prop_map(|(token, job)| format!("{token}.{job}")),
        1 => (hex(32), text()).prop_map(|(token, job)| format!("{token}.{job}")),
        1 => Just(String::new()),
        2 => text(),
    ]
    .boxed()
}

/// A session id: well formed (22..=256 of `[A-Za-z0-9_-]`) but unknown, near misses, anything.
fn session_id() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[A-Za-z0-9_-]{22,60}",
        1 => prop::sample::select(vec![21usize, 22, 256, 257]).prop_map(|n| "s".repeat(n)),
        1 => "[A-Za-z0-9_-]{10,30}[+/=. ][A-Za-z0-9]{0,8}",
        1 => Just(String::new()),
        2 => text(),
    ]
    .boxed()
}

/// Maybe substitute an id Baton really issued: an index into the pool.
fn pool_pick() -> BoxedStrategy<Option<Index>> {
    prop::option::weighted(0.5, any::<Index>()).boxed()
}

fn limit() -> BoxedStrategy<Limit> {
    (enum_number(3), prop_oneof![3 => 1u64..20, 1 => u64s()], duration(), prop_oneof![4 => Just(0u64), 1 => u64s()])
        .prop_map(|(algorithm, limit, period, burst)| Limit { algorithm, limit, period, burst })
        .boxed()
}

fn policy_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(POLICIES.to_vec()).prop_map(str::to_owned),
        1 => Just("nope".to_owned()),
        1 => text(),
    ]
    .boxed()
}

fn limit_request() -> BoxedStrategy<LimitRequest> {
    let source = prop_oneof![
        1 => Just(None),
        5 => limit().prop_map(|l| Some(limit_request::Source::Limit(l))),
        2 => policy_name().prop_map(|p| Some(limit_request::Source::Policy(p))),
    ];
    (name(), source, prop_oneof![3 => 0u64..3, 1 => u64s()])
        .prop_map(|(key, source, cost)| LimitRequest { key, source, cost })
        .boxed()
}

fn cheap_limit_request() -> BoxedStrategy<LimitRequest> {
    list_name()
        .prop_map(|key| LimitRequest { key, source: Some(limit_request::Source::Policy("fuzz".into())), cost: 1 })
        .boxed()
}

fn tag() -> BoxedStrategy<String> {
    prop_oneof![4 => prop::sample::select(vec!["t0", "t1", "t2"]).prop_map(str::to_owned), 1 => text()].boxed()
}

fn tags() -> BoxedStrategy<Vec<String>> {
    list(tag(), Just("t".to_owned()).boxed(), 32)
}

fn if_version() -> BoxedStrategy<u64> {
    prop_oneof![3 => Just(0u64), 1 => u64s()].boxed()
}

fn batch_set_entry() -> BoxedStrategy<BatchSetEntry> {
    (name(), bytes(), duration(), if_version(), any::<bool>(), tags(), duration())
        .prop_map(|(key, value, ttl, if_version, if_absent, tags, stale_ttl)| BatchSetEntry {
            key,
            value,
            ttl,
            if_version,
            if_absent,
            tags,
            stale_ttl,
        })
        .boxed()
}

fn cheap_batch_set_entry() -> BoxedStrategy<BatchSetEntry> {
    list_name()
        .prop_map(|key| BatchSetEntry { key, value: b"v".to_vec(), ttl: Some(pd(60, 0)), ..Default::default() })
        .boxed()
}

fn data_map() -> BoxedStrategy<HashMap<String, Vec<u8>>> {
    let oversize: HashMap<String, Vec<u8>> = (0..=MAX_BATCH).map(|i| (format!("d{i}"), Vec::new())).collect();
    prop_oneof![
        8 => prop::collection::hash_map(prop_oneof![4 => "[a-z]{1,6}", 1 => text()], small_bytes(), 0..4),
        1 => Just(oversize),
        1 => prop::sample::select(vec![64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1])
            .prop_map(|n| HashMap::from([("big".to_owned(), vec![b'x'; n - 3])])),
    ]
    .boxed()
}

fn attributes() -> BoxedStrategy<HashMap<String, String>> {
    let oversize: HashMap<String, String> = (0..33).map(|i| (format!("a{i}"), "v".to_owned())).collect();
    prop_oneof![
        8 => prop::collection::hash_map(prop_oneof![4 => "[a-z]{1,6}", 1 => text()], text(), 0..4),
        1 => Just(oversize),
    ]
    .boxed()
}

fn enqueue_request() -> BoxedStrategy<EnqueueRequest> {
    let schedule = prop_oneof![
        3 => Just(None),
        2 => duration().prop_map(|d| d.map(enqueue_request::Schedule::Delay)),
        2 => timestamp().prop_map(|t| Some(enqueue_request::Schedule::RunAt(t))),
    ];
    let backoff = prop::option::weighted(
        0.4,
        (duration(), duration(), multiplier()).prop_map(|(initial, max, multiplier)| Backoff {
            initial,
            max,
            multiplier,
        }),
    );
    let job_type = prop_oneof![3 => Just(String::new()), 2 => prop::sample::select(vec!["a", "b"]).prop_map(str::to_owned), 1 => text()];
    let dedup_key = prop_oneof![3 => Just(String::new()), 2 => prop::sample::select(vec!["d0", "d1"]).prop_map(str::to_owned), 1 => name()];
    (
        (name(), bytes(), job_type, schedule),
        (i32s(), prop_oneof![3 => 0u32..5, 1 => u32s()], backoff, dedup_key, duration()),
    )
        .prop_map(|((queue, payload, r#type, schedule), (priority, max_attempts, backoff, dedup_key, dedup_ttl))| {
            EnqueueRequest { queue, payload, r#type, schedule, priority, max_attempts, backoff, dedup_key, dedup_ttl }
        })
        .boxed()
}

fn cheap_enqueue_request() -> BoxedStrategy<EnqueueRequest> {
    list_name().prop_map(|queue| EnqueueRequest { queue, ..Default::default() }).boxed()
}

fn envoy_descriptor() -> BoxedStrategy<RateLimitDescriptor> {
    let keys = prop_oneof![
        6 => prop::sample::select(vec!["remote_address", "to_number", "message_type", "x"]).prop_map(str::to_owned),
        1 => text(),
    ];
    let values = prop_oneof![
        6 => prop::sample::select(vec!["1.2.3.4", "open", "marketing", "2061111111"]).prop_map(str::to_owned),
        1 => text(),
    ];
    let entries = prop::collection::vec((keys, values).prop_map(|(key, value)| Entry { key, value }), 0..3);
    let limit = prop::option::weighted(
        0.3,
        (u32s(), enum_number(6)).prop_map(|(requests_per_unit, unit)| RateLimitOverride { requests_per_unit, unit }),
    );
    let hits = prop_oneof![
        3 => Just(None),
        2 => (0u64..3).prop_map(Some),
        1 => Just(Some(u64::MAX)),
        1 => u64s().prop_map(Some),
    ];
    (entries, limit, hits)
        .prop_map(|(entries, limit, hits_addend)| RateLimitDescriptor { entries, limit, hits_addend })
        .boxed()
}

fn cheap_envoy_descriptor() -> BoxedStrategy<RateLimitDescriptor> {
    Just(RateLimitDescriptor {
        entries: vec![Entry { key: "remote_address".into(), value: "9.9.9.9".into() }],
        limit: None,
        hits_addend: None,
    })
    .boxed()
}

/// Every RPC's request strategy, built once.
struct Strategies {
    check: BoxedStrategy<CheckRequest>,
    reset: BoxedStrategy<ResetRequest>,
    acquire: BoxedStrategy<AcquireRequest>,
    renew: BoxedStrategy<(RenewRequest, Option<Index>)>,
    release: BoxedStrategy<(ReleaseRequest, Option<Index>)>,
    describe: BoxedStrategy<DescribeRequest>,
    keep_alive: BoxedStrategy<(KeepAliveRequest, Option<Index>)>,
    get: BoxedStrategy<GetRequest>,
    set: BoxedStrategy<SetRequest>,
    delete: BoxedStrategy<DeleteRequest>,
    batch_get: BoxedStrategy<BatchGetRequest>,
    batch_set: BoxedStrategy<BatchSetRequest>,
    invalidate_tag: BoxedStrategy<InvalidateTagRequest>,
    fetch: BoxedStrategy<FetchRequest>,
    fill: BoxedStrategy<(FillRequest, Option<Index>)>,
    create_session: BoxedStrategy<CreateSessionRequest>,
    get_session: BoxedStrategy<(GetSessionRequest, Option<Index>)>,
    update_session: BoxedStrategy<(UpdateSessionRequest, Option<Index>)>,
    rotate_session: BoxedStrategy<(RotateSessionRequest, Option<Index>)>,
    delete_session: BoxedStrategy<(DeleteSessionRequest, Option<Index>)>,
    list_sessions: BoxedStrategy<ListSessionsRequest>,
    revoke_sessions: BoxedStrategy<(RevokeSessionsRequest, Option<Index>)>,
    enqueue: BoxedStrategy<EnqueueRequest>,
    enqueue_batch: BoxedStrategy<EnqueueBatchRequest>,
    consume: BoxedStrategy<ConsumeRequest>,
    ack: BoxedStrategy<(AckRequest, Option<Index>)>,
    ack_batch: BoxedStrategy<(AckBatchRequest, Option<Index>)>,
    nack: BoxedStrategy<(NackRequest, Option<Index>)>,
    extend: BoxedStrategy<(ExtendRequest, Option<Index>)>,
    get_job: BoxedStrategy<(GetJobRequest, Option<Index>)>,
    cancel_job: BoxedStrategy<(CancelJobRequest, Option<Index>)>,
    get_queue_stats: BoxedStrategy<GetQueueStatsRequest>,
    list_dead_jobs: BoxedStrategy<ListDeadJobsRequest>,
    retry_dead_jobs: BoxedStrategy<(RetryDeadJobsRequest, Option<Index>)>,
    pause_queue: BoxedStrategy<PauseQueueRequest>,
    resume_queue: BoxedStrategy<ResumeQueueRequest>,
    should_rate_limit: BoxedStrategy<RateLimitRequest>,
}

impl Strategies {
    fn new() -> Self {
        let reset_source = prop_oneof![
            1 => Just(None),
            4 => limit().prop_map(|l| Some(reset_request::Source::Limit(l))),
            2 => policy_name().prop_map(|p| Some(reset_request::Source::Policy(p))),
        ];
        let page_token = prop_oneof![
            3 => Just(String::new()),
            1 => (0u64..200).prop_map(|n| n.to_string()),
            2 => prop::sample::select(vec![
                "-1",
                "abc",
                "1e3",
                " 1",
                "+1",
                "9223372036854775807",
                "9223372036854775808",
                "10000000000000000000",
                "18446744073709551615",
                "18446744073709551616",
            ])
            .prop_map(str::to_owned),
            1 => text(),
        ];
        Self {
            check: (list(limit_request(), cheap_limit_request(), 16), any::<bool>(), any::<bool>())
                .prop_map(|(limits, dry_run, fail_open)| CheckRequest { limits, dry_run, fail_open })
                .boxed(),
            reset: (name(), reset_source).prop_map(|(key, source)| ResetRequest { key, source }).boxed(),
            acquire: (
                (name(), duration(), wait(), text()),
                (prop_oneof![3 => 0u32..4, 1 => u32s()], prop_oneof![3 => Just(String::new()), 1 => "[a-z0-9]{1,8}", 1 => text()]),
            )
                .prop_map(|((name, ttl, wait_timeout, owner), (permits, request_id))| AcquireRequest {
                    name,
                    ttl,
                    wait_timeout,
                    owner,
                    permits,
                    request_id,
                })
                .boxed(),
            renew: (name(), lock_lease_id(), duration(), pool_pick())
                .prop_map(|(name, lease_id, ttl, pick)| (RenewRequest { name, lease_id, ttl }, pick))
                .boxed(),
            release: (name(), lock_lease_id(), pool_pick())
                .prop_map(|(name, lease_id, pick)| (ReleaseRequest { name, lease_id }, pick))
                .boxed(),
            describe: name().prop_map(|name| DescribeRequest { name }).boxed(),
            keep_alive: (name(), lock_lease_id(), duration(), pool_pick())
                .prop_map(|(name, lease_id, ttl, pick)| (KeepAliveRequest { name, lease_id, ttl }, pick))
                .boxed(),
            get: name().prop_map(|key| GetRequest { key }).boxed(),
            set: batch_set_entry()
                .prop_map(|e| SetRequest {
                    key: e.key,
                    value: e.value,
                    ttl: e.ttl,
                    if_version: e.if_version,
                    if_absent: e.if_absent,
                    tags: e.tags,
                    stale_ttl: e.stale_ttl,
                })
                .boxed(),
            delete: (name(), if_version()).prop_map(|(key, if_version)| DeleteRequest { key, if_version }).boxed(),
            batch_get: list(name(), list_name(), MAX_BATCH).prop_map(|keys| BatchGetRequest { keys }).boxed(),
            batch_set: list(batch_set_entry(), cheap_batch_set_entry(), MAX_BATCH)
                .prop_map(|entries| BatchSetRequest { entries })
                .boxed(),
            invalidate_tag: tag().prop_map(|tag| InvalidateTagRequest { tag }).boxed(),
            fetch: (name(), duration(), wait())
                .prop_map(|(key, lease_ttl, wait_timeout)| FetchRequest { key, lease_ttl, wait_timeout })
                .boxed(),
            fill: (
                (name(), prop_oneof![3 => hex(32), 1 => "[0-9a-f]{60,70}", 1 => Just(String::new()), 1 => text()]),
                (bytes(), duration(), tags(), any::<bool>(), duration(), pool_pick()),
            )
                .prop_map(|((key, fill_token), (value, ttl, tags, abandon, stale_ttl, pick))| {
                    (FillRequest { key, fill_token, value, ttl, tags, abandon, stale_ttl }, pick)
                })
                .boxed(),
            create_session: (
                (prop_oneof![2 => Just(String::new()), 3 => name()], data_map(), duration(), duration()),
                (attributes(), prop_oneof![4 => Just(String::new()), 2 => session_id()]),
            )
                .prop_map(|((subject, data, idle_timeout, absolute_timeout), (attributes, session_id))| {
                    CreateSessionRequest { subject, data, idle_timeout, absolute_timeout, attributes, session_id }
                })
                .boxed(),
            get_session: (session_id(), any::<bool>(), pool_pick())
                .prop_map(|(session_id, no_touch, pick)| (GetSessionRequest { session_id, no_touch }, pick))
                .boxed(),
            update_session: (
                (session_id(), data_map(), list(text(), list_name(), MAX_BATCH), if_version()),
                (duration(), duration(), pool_pick()),
            )
                .prop_map(|((session_id, set, remove, if_version), (idle_timeout, absolute_timeout, pick))| {
                    let request =
                        UpdateSessionRequest { session_id, set, remove, if_version, idle_timeout, absolute_timeout };
                    (request, pick)
                })
                .boxed(),
            rotate_session: (session_id(), pool_pick())
                .prop_map(|(session_id, pick)| (RotateSessionRequest { session_id }, pick))
                .boxed(),
            delete_session: (session_id(), pool_pick())
                .prop_map(|(session_id, pick)| (DeleteSessionRequest { session_id }, pick))
                .boxed(),
            list_sessions: name().prop_map(|subject| ListSessionsRequest { subject }).boxed(),
            revoke_sessions: (name(), list(text(), list_name(), MAX_BATCH), text(), pool_pick())
                .prop_map(|(subject, handles, except_handle, pick)| {
                    (RevokeSessionsRequest { subject, handles, except_handle }, pick)
                })
                .boxed(),
            enqueue: enqueue_request(),
            enqueue_batch: list(enqueue_request(), cheap_enqueue_request(), MAX_BATCH)
                .prop_map(|requests| EnqueueBatchRequest { requests })
                .boxed(),
            consume: (name(), u32s(), duration(), list(text(), list_name(), 32), text())
                .prop_map(|(queue, max_in_flight, visibility_timeout, types, consumer)| ConsumeRequest {
                    queue,
                    max_in_flight,
                    visibility_timeout,
                    types,
                    consumer,
                    ..Default::default()
                })
                .boxed(),
            ack: (queue_lease_id(), bytes(), pool_pick())
                .prop_map(|(lease_id, result, pick)| (AckRequest { lease_id, result }, pick))
                .boxed(),
            ack_batch: (
                list(
                    (queue_lease_id(), bytes()).prop_map(|(lease_id, result)| AckRequest { lease_id, result }).boxed(),
                    queue_lease_id().prop_map(|lease_id| AckRequest { lease_id, result: Vec::new() }).boxed(),
                    MAX_BATCH,
                ),
                pool_pick(),
            )
                .prop_map(|(acks, pick)| (AckBatchRequest { acks }, pick))
                .boxed(),
            nack: (
                queue_lease_id(),
                prop_oneof![4 => text(), 1 => prop::sample::select(vec![65_536usize, 65_537]).prop_map(|n| "e".repeat(n))],
                duration(),
                any::<bool>(),
                pool_pick(),
            )
                .prop_map(|(lease_id, error, retry_after, dead_letter, pick)| {
                    (NackRequest { lease_id, error, retry_after, dead_letter }, pick)
                })
                .boxed(),
            extend: (queue_lease_id(), duration(), pool_pick())
                .prop_map(|(lease_id, visibility_timeout, pick)| (ExtendRequest { lease_id, visibility_timeout }, pick))
                .boxed(),
            get_job: (job_id(), pool_pick()).prop_map(|(job_id, pick)| (GetJobRequest { job_id }, pick)).boxed(),
            cancel_job: (job_id(), pool_pick()).prop_map(|(job_id, pick)| (CancelJobRequest { job_id }, pick)).boxed(),
            get_queue_stats: name().prop_map(|queue| GetQueueStatsRequest { queue }).boxed(),
            list_dead_jobs: (name(), u32s(), page_token)
                .prop_map(|(queue, page_size, page_token)| ListDeadJobsRequest { queue, page_size, page_token })
                .boxed(),
            retry_dead_jobs: (name(), list(job_id(), job_id_for(), MAX_BATCH), pool_pick())
                .prop_map(|(queue, job_ids, pick)| (RetryDeadJobsRequest { queue, job_ids }, pick))
                .boxed(),
            pause_queue: name().prop_map(|queue| PauseQueueRequest { queue }).boxed(),
            resume_queue: name().prop_map(|queue| ResumeQueueRequest { queue }).boxed(),
            should_rate_limit: (
                prop_oneof![4 => Just("fuzz".to_owned()), 1 => Just(String::new()), 1 => text()],
                prop_oneof![
                    9 => list(envoy_descriptor(), cheap_envoy_descriptor(), 256),
                    // One descriptor several times: its hits add up on one counter.
                    2 => envoy_descriptor().prop_flat_map(|d| prop::collection::vec(Just(d), 2..4)),
                ],
                u32s(),
            )
                .prop_map(|(domain, descriptors, hits_addend)| RateLimitRequest { domain, descriptors, hits_addend })
                .boxed(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The oracle: what API.md says must be INVALID_ARGUMENT. Only rules the contract states
// outright; anything it leaves to the server is not judged here.
// ---------------------------------------------------------------------------------------

mod oracle {
    use super::*;

    /// Why the request must be rejected, if it must.
    pub type Verdict = Option<String>;

    pub fn first(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        verdicts.into_iter().flatten().next()
    }

    pub fn key(field: &str, key: &str) -> Verdict {
        (key.is_empty() || key.len() > MAX_KEY_BYTES).then(|| format!("{field} is {} bytes", key.len()))
    }

    fn broken(d: &PDuration) -> bool {
        d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000
    }

    /// A negative or malformed duration, wherever it appears.
    pub fn duration(field: &str, d: Option<&PDuration>) -> Verdict {
        d.filter(|d| broken(d)).map(|d| format!("{field} is {d:?}"))
    }

    fn as_std(d: Option<&PDuration>) -> Option<Duration> {
        d.filter(|d| !broken(d)).map(|d| Duration::new(d.seconds as u64, d.nanos as u32))
    }

    /// A duration that must lie in `range` when set (zero counts as unset unless `required`).
    pub fn bounded(
        field: &str,
        d: Option<&PDuration>,
        range: std::ops::RangeInclusive<Duration>,
        required: bool,
    ) -> Verdict {
        duration(field, d).or_else(|| match as_std(d).filter(|d| !d.is_zero()) {
            None if required => Some(format!("{field} is required")),
            None => None,
            Some(d) => (!range.contains(&d)).then(|| format!("{field} {d:?} is outside {range:?}")),
        })
    }

    pub fn value(field: &str, value: &[u8]) -> Verdict {
        (value.len() > MAX_VALUE_BYTES).then(|| format!("{field} is {} bytes", value.len()))
    }

    pub fn batch<T>(field: &str, items: &[T], limit: usize) -> Verdict {
        (items.len() > limit).then(|| format!("{field} holds {}", items.len()))
    }

    /// An id no Baton could have issued: Baton's ids are ASCII letters, digits, `-_.`.
    pub fn malformed_id(field: &str, id: &str) -> Verdict {
        let foreign = id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        foreign.then(|| format!("{field} {id:?} is malformed"))
    }

    /// API.md: 32 lowercase hex (128 random bits, as Baton issues them).
    pub fn lock_lease_id(id: &str) -> Verdict {
        let ok = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        (!ok).then(|| format!("lease_id {id:?} is not a lease id"))
    }

    /// API.md: 22..=256 characters of `[A-Za-z0-9_-]`.
    pub fn session_id(id: &str) -> Verdict {
        let ok = (22..=256).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        (!ok).then(|| format!("session_id of {} bytes is malformed", id.len()))
    }

    fn limit(field: &str, limit: &Limit) -> Verdict {
        first([
            (!(1..=3).contains(&limit.algorithm)).then(|| format!("{field}.algorithm is {}", limit.algorithm)),
            bounded(&format!("{field}.period"), limit.period.as_ref(), Duration::ZERO..=Duration::MAX, true),
        ])
    }

    fn policy(field: &str, name: &str) -> Verdict {
        (!POLICIES.contains(&name)).then(|| format!("{field} {name:?} is unknown"))
    }

    pub fn check(r: &CheckRequest) -> Verdict {
        if r.limits.is_empty() || r.limits.len() > 16 {
            return Some(format!("limits holds {}", r.limits.len()));
        }
        first(r.limits.iter().enumerate().map(|(i, l)| {
            let field = format!("limits[{i}]");
            first([
                key(&format!("{field}.key"), &l.key),
                match &l.source {
                    None => Some(format!("{field} has neither limit nor policy")),
                    Some(limit_request::Source::Limit(limit)) => self::limit(&format!("{field}.limit"), limit),
                    Some(limit_request::Source::Policy(name)) => policy(&format!("{field}.policy"), name),
                },
            ])
        }))
    }

    pub fn reset(r: &ResetRequest) -> Verdict {
        first([
            key("key", &r.key),
            match &r.source {
                None => Some("neither limit nor policy".to_owned()),
                Some(reset_request::Source::Limit(l)) => limit("limit", l),
                Some(reset_request::Source::Policy(name)) => policy("policy", name),
            },
        ])
    }

    /// API.md: a lock ttl is 100 ms ..= 1 h.
    pub fn lock_ttl(d: Option<&PDuration>, required: bool) -> Verdict {
        bounded("ttl", d, Duration::from_millis(100)..=Duration::from_secs(3600), required)
    }

    pub fn set(key_: &str, value_: &[u8], ttl: Option<&PDuration>, stale_ttl: Option<&PDuration>, at: &str) -> Verdict {
        first([
            key(&format!("{at}key"), key_),
            value(&format!("{at}value"), value_),
            // API.md: ttl required, bounded by the server max (30 days by default).
            bounded(&format!("{at}ttl"), ttl, Duration::ZERO..=Duration::from_secs(30 * 86_400), true),
            duration(&format!("{at}stale_ttl"), stale_ttl),
        ])
    }

    pub fn enqueue(r: &EnqueueRequest, at: &str) -> Verdict {
        first([
            key(&format!("{at}queue"), &r.queue),
            value(&format!("{at}payload"), &r.payload),
            match &r.schedule {
                Some(enqueue_request::Schedule::Delay(d)) => duration(&format!("{at}delay"), Some(d)),
                Some(enqueue_request::Schedule::RunAt(t)) => {
                    (t.seconds < 0 || !(0..1_000_000_000).contains(&t.nanos)).then(|| format!("{at}run_at is {t:?}"))
                }
                None => None,
            },
            r.backoff.as_ref().and_then(|b| {
                first([
                    duration(&format!("{at}backoff.initial"), b.initial.as_ref()),
                    duration(&format!("{at}backoff.max"), b.max.as_ref()),
                ])
            }),
            if r.dedup_key.is_empty() {
                None
            } else {
                first([
                    key(&format!("{at}dedup_key"), &r.dedup_key),
                    duration(&format!("{at}dedup_ttl"), r.dedup_ttl.as_ref()),
                ])
            },
        ])
    }
}

// ---------------------------------------------------------------------------------------
// The driver.
// ---------------------------------------------------------------------------------------

/// Redis's write and command counters (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    writes: u64,
    commands: u64,
}

#[derive(Default)]
struct Tally {
    ok: u32,
    invalid_argument: u32,
    other: BTreeMap<String, u32>,
}

/// Ids Baton really issued, fed back into later requests.
#[derive(Default)]
struct Pool {
    lock_leases: Vec<(String, String)>,
    jobs: Vec<String>,
    queue_leases: Vec<String>,
    sessions: Vec<String>,
    handles: Vec<String>,
    fills: Vec<(String, String)>,
}

fn remember<T>(list: &mut Vec<T>, item: T) {
    if list.len() >= 64 {
        list.remove(0);
    }
    list.push(item);
}

fn pick<T: Clone>(list: &[T], index: &Option<Index>) -> Option<T> {
    match index {
        Some(index) if !list.is_empty() => Some(list[index.index(list.len())].clone()),
        _ => None,
    }
}

/// A request's Debug, with long runs of one character folded, cut to a readable size.
fn brief(request: &impl Debug) -> String {
    fold(&format!("{request:?}"))
}

/// `text` with long repeats (of up to six characters: an escaped `\0`, a byte `118, `)
/// folded, cut to a readable size.
fn fold(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut at = 0;
    while at < chars.len() {
        let folded = (1..=6).find_map(|unit| {
            let pattern = chars.get(at..at + unit)?;
            let repeats = chars[at..].chunks_exact(unit).take_while(|chunk| *chunk == pattern).count();
            (repeats * unit > 16).then_some((unit, repeats))
        });
        match folded {
            Some((unit, repeats)) => {
                out.push_str(&format!("{}{{×{repeats}}}", String::from_iter(&chars[at..at + unit])));
                at += unit * repeats;
            }
            None => {
                out.push(chars[at]);
                at += 1;
            }
        }
    }
    if out.len() > 1500 {
        let cut = (0..=1500).rev().find(|&i| out.is_char_boundary(i)).unwrap();
        out.truncate(cut);
        out.push('…');
    }
    out
}

struct Fuzz {
    runner: TestRunner,
    redis: redis::aio::MultiplexedConnection,
    /// How much `commands` grows between two snapshots with nothing in between.
    own_commands: u64,
    tallies: BTreeMap<&'static str, Tally>,
    failures: Vec<String>,
    findings: Vec<String>,
    reads_before_rejecting: BTreeMap<&'static str, u32>,
    retries: u32,
    pool: Pool,
    /// The last accepted Consume stream, kept open so its deliveries' leases are live
    /// for Ack, Nack and Extend; replacing it hands its jobs back.
    consumer: Option<tonic::Streaming<ConsumeResponse>>,
}

impl Fuzz {
    fn sample<T: Debug>(&mut self, strategy: &BoxedStrategy<T>) -> T {
        strategy.new_tree(&mut self.runner).expect("strategy generates").current()
    }

    async fn counters(&mut self) -> Counters {
        let info: String =
            redis::cmd("INFO").arg("persistence").arg("stats").query_async(&mut self.redis).await.unwrap();
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or_else(|| panic!("INFO has no {name}"))
        };
        Counters { writes: field("rdb_changes_since_last_save"), commands: field("total_commands_processed") }
    }

    /// Waits (briefly) until Redis's counters stop moving.
    async fn settle(&mut self) {
        let started = Instant::now();
        let mut last = self.counters().await;
        while started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let now = self.counters().await;
            if now.writes == last.writes && now.commands - last.commands == self.own_commands {
                return;
            }
            last = now;
        }
    }

    /// Takes the deliveries the open Consume stream has ready, for their lease ids.
    async fn drain_consumer(&mut self) {
        let Some(stream) = self.consumer.as_mut() else {
            return;
        };
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(1), stream.message()).await {
                Ok(Ok(Some(message))) => {
                    if let Some(consume_response::Event::Delivery(delivery)) = message.event {
                        remember(&mut self.pool.queue_leases, delivery.lease_id);
                    }
                }
                Ok(Ok(None) | Err(_)) => {
                    self.consumer = None;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    fn fail(&mut self, rpc: &str, what: String, request: &impl Debug) {
        self.failures.push(format!("{rpc}: {what}\n    request: {}", brief(request)));
    }

    /// Sends `request`, checks the answer, and returns the response if it was accepted.
    async fn exercise<Req, Resp, F, Fut>(
        &mut self,
        rpc: &'static str,
        request: Req,
        verdict: oracle::Verdict,
        send: F,
    ) -> Option<Resp>
    where
        Req: Clone + Debug,
        F: Fn(Req) -> Fut,
        Fut: Future<Output = Result<Resp, Status>>,
    {
        let (mut wrote_every_time, mut read_every_time) = (true, true);
        for attempt in 1..=ATTEMPTS {
            let before = self.counters().await;
            let answer = tokio::time::timeout(HANG, send(request.clone())).await;
            let after = self.counters().await;
            let Ok(answer) = answer else {
                self.fail(rpc, format!("no answer within {HANG:?}"), &request);
                return None;
            };
            let tally = self.tallies.entry(rpc).or_default();
            let status = match answer {
                Ok(response) => {
                    tally.ok += 1;
                    if let Some(why) = verdict {
                        self.findings.push(format!(
                            "{rpc}: accepted, but {}\n    request: {}",
                            fold(&why),
                            brief(&request)
                        ));
                    }
                    return Some(response);
                }
                Err(status) => status,
            };
            let code = status.code();
            match code {
                Code::InvalidArgument => {
                    let wrote = after.writes != before.writes;
                    let read = after.commands - before.commands != self.own_commands;
                    wrote_every_time &= wrote;
                    read_every_time &= read;
                    if (wrote || read) && attempt < ATTEMPTS {
                        // Maybe background work: settle, then the same request again.
                        self.retries += 1;
                        self.settle().await;
                        continue;
                    }
                    tally.invalid_argument += 1;
                    let named = status
                        .get_details_bad_request()
                        .is_some_and(|bad| bad.field_violations.first().is_some_and(|v| !v.field.is_empty()));
                    if !named {
                        self.fail(
                            rpc,
                            format!("INVALID_ARGUMENT without a BadRequest field: {}", fold(&format!("{status:?}"))),
                            &request,
                        );
                    }
                    if wrote_every_time {
                        self.fail(
                            rpc,
                            format!(
                                "rejected ({}) but Redis was written, {ATTEMPTS} times in a row",
                                fold(status.message())
                            ),
                            &request,
                        );
                    } else if read_every_time {
                        *self.reads_before_rejecting.entry(rpc).or_default() += 1;
                    }
                    return None;
                }
                // An ambiguous answer to a request that must be rejected: ask again.
                Code::DeadlineExceeded | Code::Unavailable if verdict.is_some() && attempt < ATTEMPTS => {
                    self.retries += 1;
                    self.settle().await;
                    continue;
                }
                Code::Internal
                | Code::Unknown
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Unimplemented
                | Code::DataLoss => {
                    *tally.other.entry(format!("{code:?}")).or_default() += 1;
                    self.fail(rpc, format!("answered {code:?}: {}", fold(status.message())), &request);
                    return None;
                }
                _ => {
                    *tally.other.entry(format!("{code:?}")).or_default() += 1;
                    if let Some(why) = verdict {
                        self.findings.push(format!(
                            "{rpc}: answered {code:?} ({}), not INVALID_ARGUMENT, but {}\n    request: {}",
                            fold(status.message()),
                            fold(&why),
                            brief(&request)
                        ));
                    }
                    return None;
                }
            }
        }
        unreachable!("every attempt returns or continues")
    }
}

/// A unary call with a deadline: a closure from request to response, for `exercise`.
macro_rules! unary {
    ($client:expr, $method:ident, $deadline:expr) => {{
        let client = $client.clone();
        move |request| {
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(request);
                request.set_timeout($deadline);
                client.$method(request).await.map(tonic::Response::into_inner)
            }
        }
    }};
}

/// A streaming call whose first request message opens it: sends that one message, reads the
/// first answer (or status) briefly, drops the call.
macro_rules! first_message {
    ($client:expr, $method:ident) => {{
        let client = $client.clone();
        move |request| {
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(tokio_stream::once(request));
                request.set_timeout(DEADLINE);
                let mut stream = client.$method(request).await?.into_inner();
                let first = match tokio::time::timeout(FIRST_MESSAGE, stream.message()).await {
                    Ok(message) => message?,
                    Err(_) => None,
                };
                drop(stream);
                // The server releases or hands back what the stream held: let it land.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, Status>(first)
            }
        }
    }};
}

struct Clients {
    rate: RateLimiterServiceClient<Channel>,
    locks: LockServiceClient<Channel>,
    cache: CacheServiceClient<Channel>,
    sessions: SessionStoreServiceClient<Channel>,
    queues: JobQueueServiceClient<Channel>,
    envoy: RateLimitServiceClient<Channel>,
}

/// One request to every RPC.
async fn round(fuzz: &mut Fuzz, s: &Strategies, c: &Clients) {
    use oracle as o;

    // RateLimiterService
    let r = fuzz.sample(&s.check);
    let v = o::check(&r);
    fuzz.exercise("RateLimiter/Check", r, v, unary!(c.rate, check, DEADLINE)).await;
    let r = fuzz.sample(&s.reset);
    let v = o::reset(&r);
    fuzz.exercise("RateLimiter/Reset", r, v, unary!(c.rate, reset, DEADLINE)).await;

    // LockService
    let r = fuzz.sample(&s.acquire);
    let v = o::first([
        o::key("name", &r.name),
        o::lock_ttl(r.ttl.as_ref(), true),
        o::duration("wait_timeout", r.wait_timeout.as_ref()),
    ]);
    if let Some(response) = fuzz.exercise("Lock/Acquire", r, v, unary!(c.locks, acquire, WAITING_DEADLINE)).await
        && let Some(lease) = response.lease
    {
        remember(&mut fuzz.pool.lock_leases, (lease.name, lease.lease_id));
    }
    let (mut r, p) = fuzz.sample(&s.renew);
    if let Some((name, id)) = pick(&fuzz.pool.lock_leases, &p) {
        (r.name, r.lease_id) = (name, id);
    }
    let v = o::first([o::key("name", &r.name), o::lock_lease_id(&r.lease_id), o::lock_ttl(r.ttl.as_ref(), false)]);
    fuzz.exercise("Lock/Renew", r, v, unary!(c.locks, renew, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.release);
    if let Some((name, id)) = pick(&fuzz.pool.lock_leases, &p) {
        (r.name, r.lease_id) = (name, id);
    }
    let v = o::first([o::key("name", &r.name), o::lock_lease_id(&r.lease_id)]);
    fuzz.exercise("Lock/Release", r, v, unary!(c.locks, release, DEADLINE)).await;
    let r = fuzz.sample(&s.describe);
    let v = o::key("name", &r.name);
    fuzz.exercise("Lock/Describe", r, v, unary!(c.locks, describe, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.keep_alive);
    if let Some((name, id)) = pick(&fuzz.pool.lock_leases, &p) {
        (r.name, r.lease_id) = (name, id);
    }
    let v = o::first([o::key("name", &r.name), o::lock_lease_id(&r.lease_id), o::lock_ttl(r.ttl.as_ref(), false)]);
    fuzz.exercise("Lock/KeepAlive", r, v, first_message!(c.locks, keep_alive)).await;

    // CacheService
    let r = fuzz.sample(&s.get);
    let v = o::key("key", &r.key);
    fuzz.exercise("Cache/Get", r, v, unary!(c.cache, get, DEADLINE)).await;
    let r = fuzz.sample(&s.set);
    let v = o::set(&r.key, &r.value, r.ttl.as_ref(), r.stale_ttl.as_ref(), "");
    fuzz.exercise("Cache/Set", r, v, unary!(c.cache, set, DEADLINE)).await;
    let r = fuzz.sample(&s.delete);
    let v = o::key("key", &r.key);
    fuzz.exercise("Cache/Delete", r, v, unary!(c.cache, delete, DEADLINE)).await;
    let r = fuzz.sample(&s.batch_get);
    let v = o::first(
        std::iter::once(o::batch("keys", &r.keys, MAX_BATCH))
            .chain(r.keys.iter().enumerate().map(|(i, k)| o::key(&format!("keys[{i}]"), k))),
    );
    fuzz.exercise("Cache/BatchGet", r, v, unary!(c.cache, batch_get, DEADLINE)).await;
    let r = fuzz.sample(&s.batch_set);
    let v =
        o::first(std::iter::once(o::batch("entries", &r.entries, MAX_BATCH)).chain(
            r.entries.iter().enumerate().map(|(i, e)| {
                o::set(&e.key, &e.value, e.ttl.as_ref(), e.stale_ttl.as_ref(), &format!("entries[{i}]."))
            }),
        ));
    fuzz.exercise("Cache/BatchSet", r, v, unary!(c.cache, batch_set, DEADLINE)).await;
    let r = fuzz.sample(&s.invalidate_tag);
    let v = r.tag.is_empty().then(|| "tag is empty".to_owned());
    fuzz.exercise("Cache/InvalidateTag", r, v, unary!(c.cache, invalidate_tag, DEADLINE)).await;
    let r = fuzz.sample(&s.fetch);
    let v = o::first([
        o::key("key", &r.key),
        o::duration("lease_ttl", r.lease_ttl.as_ref()),
        o::duration("wait_timeout", r.wait_timeout.as_ref()),
    ]);
    let key_ = r.key.clone();
    if let Some(response) = fuzz.exercise("Cache/Fetch", r, v, unary!(c.cache, fetch, WAITING_DEADLINE)).await
        && !response.fill_token.is_empty()
    {
        remember(&mut fuzz.pool.fills, (key_, response.fill_token));
    }
    let (mut r, p) = fuzz.sample(&s.fill);
    if let Some((key_, token)) = pick(&fuzz.pool.fills, &p) {
        (r.key, r.fill_token) = (key_, token);
    }
    let v = o::first([
        r.fill_token.is_empty().then(|| "fill_token is empty".to_owned()),
        if r.abandon {
            o::key("key", &r.key)
        } else {
            o::set(&r.key, &r.value, r.ttl.as_ref(), r.stale_ttl.as_ref(), "")
        },
    ]);
    fuzz.exercise("Cache/Fill", r, v, unary!(c.cache, fill, DEADLINE)).await;

    // SessionStoreService
    let r = fuzz.sample(&s.create_session);
    let v = o::first([
        (!r.session_id.is_empty()).then(|| o::session_id(&r.session_id)).flatten(),
        (!r.subject.is_empty()).then(|| o::key("subject", &r.subject)).flatten(),
        o::duration("idle_timeout", r.idle_timeout.as_ref()),
        o::duration("absolute_timeout", r.absolute_timeout.as_ref()),
    ]);
    if let Some(response) =
        fuzz.exercise("Session/CreateSession", r, v, unary!(c.sessions, create_session, DEADLINE)).await
    {
        remember(&mut fuzz.pool.sessions, response.session_id);
        if let Some(session) = response.session {
            remember(&mut fuzz.pool.handles, session.handle);
        }
    }
    let (mut r, p) = fuzz.sample(&s.get_session);
    if let Some(id) = pick(&fuzz.pool.sessions, &p) {
        r.session_id = id;
    }
    let v = o::session_id(&r.session_id);
    fuzz.exercise("Session/GetSession", r, v, unary!(c.sessions, get_session, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.update_session);
    if let Some(id) = pick(&fuzz.pool.sessions, &p) {
        r.session_id = id;
    }
    let v = o::first([
        o::session_id(&r.session_id),
        o::duration("idle_timeout", r.idle_timeout.as_ref()),
        o::duration("absolute_timeout", r.absolute_timeout.as_ref()),
    ]);
    fuzz.exercise("Session/UpdateSession", r, v, unary!(c.sessions, update_session, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.rotate_session);
    if let Some(id) = pick(&fuzz.pool.sessions, &p) {
        r.session_id = id;
    }
    let v = o::session_id(&r.session_id);
    if let Some(response) =
        fuzz.exercise("Session/RotateSession", r, v, unary!(c.sessions, rotate_session, DEADLINE)).await
    {
        remember(&mut fuzz.pool.sessions, response.session_id);
    }
    let (mut r, p) = fuzz.sample(&s.delete_session);
    if let Some(id) = pick(&fuzz.pool.sessions, &p) {
        r.session_id = id;
    }
    let v = o::session_id(&r.session_id);
    fuzz.exercise("Session/DeleteSession", r, v, unary!(c.sessions, delete_session, DEADLINE)).await;
    let r = fuzz.sample(&s.list_sessions);
    let v = o::key("subject", &r.subject);
    fuzz.exercise("Session/ListSessions", r, v, unary!(c.sessions, list_sessions, DEADLINE)).await;
    fuzz.exercise("Session/CountSessions", CountSessionsRequest {}, None, unary!(c.sessions, count_sessions, DEADLINE))
        .await;
    fuzz.exercise("Session/ClearSessions", ClearSessionsRequest {}, None, unary!(c.sessions, clear_sessions, DEADLINE))
        .await;
    let (mut r, p) = fuzz.sample(&s.revoke_sessions);
    if let Some(handle) = pick(&fuzz.pool.handles, &p) {
        r.handles.push(handle);
    }
    let v = o::key("subject", &r.subject);
    fuzz.exercise("Session/RevokeSessions", r, v, unary!(c.sessions, revoke_sessions, DEADLINE)).await;

    // JobQueueService
    let r = fuzz.sample(&s.enqueue);
    let v = o::enqueue(&r, "");
    if let Some(response) = fuzz.exercise("Queue/Enqueue", r, v, unary!(c.queues, enqueue, DEADLINE)).await {
        remember(&mut fuzz.pool.jobs, response.job_id);
    }
    let r = fuzz.sample(&s.enqueue_batch);
    let v = o::first(
        [o::batch("requests", &r.requests, MAX_BATCH), r.requests.is_empty().then(|| "requests is empty".to_owned())]
            .into_iter()
            .chain(r.requests.iter().enumerate().map(|(i, e)| o::enqueue(e, &format!("requests[{i}].")))),
    );
    if let Some(response) = fuzz.exercise("Queue/EnqueueBatch", r, v, unary!(c.queues, enqueue_batch, DEADLINE)).await {
        for result in response.results.into_iter().take(4) {
            remember(&mut fuzz.pool.jobs, result.job_id);
        }
    }
    let r = fuzz.sample(&s.consume);
    let v = o::first([o::key("queue", &r.queue), o::duration("visibility_timeout", r.visibility_timeout.as_ref())]);
    let consume = {
        let client = c.queues.clone();
        move |request| {
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(tokio_stream::once(request));
                request.set_timeout(DEADLINE);
                let mut stream = client.consume(request).await?.into_inner();
                let first = match tokio::time::timeout(FIRST_MESSAGE, stream.message()).await {
                    Ok(message) => message?,
                    Err(_) => None,
                };
                Ok::<_, Status>((first, stream))
            }
        }
    };
    if let Some((first, stream)) = fuzz.exercise("Queue/Consume", r, v, consume).await {
        if let Some(consume_response::Event::Delivery(delivery)) = first.and_then(|m| m.event) {
            remember(&mut fuzz.pool.queue_leases, delivery.lease_id);
        }
        if fuzz.consumer.replace(stream).is_some() {
            // The old stream's jobs are handed back: let that land.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    fuzz.drain_consumer().await;
    let (mut r, p) = fuzz.sample(&s.extend);
    if let Some(id) = pick(&fuzz.pool.queue_leases, &p) {
        r.lease_id = id;
    }
    let v = o::first([
        o::malformed_id("lease_id", &r.lease_id),
        o::duration("visibility_timeout", r.visibility_timeout.as_ref()),
    ]);
    fuzz.exercise("Queue/Extend", r, v, unary!(c.queues, extend, DEADLINE)).await;
    fuzz.drain_consumer().await;
    let (mut r, p) = fuzz.sample(&s.nack);
    if let Some(id) = pick(&fuzz.pool.queue_leases, &p) {
        r.lease_id = id;
    }
    let v = o::first([o::malformed_id("lease_id", &r.lease_id), o::duration("retry_after", r.retry_after.as_ref())]);
    fuzz.exercise("Queue/Nack", r, v, unary!(c.queues, nack, DEADLINE)).await;
    fuzz.drain_consumer().await;
    let (mut r, p) = fuzz.sample(&s.ack);
    if let Some(id) = pick(&fuzz.pool.queue_leases, &p) {
        r.lease_id = id;
    }
    let v = o::first([o::malformed_id("lease_id", &r.lease_id), o::value("result", &r.result)]);
    fuzz.exercise("Queue/Ack", r, v, unary!(c.queues, ack, DEADLINE)).await;
    fuzz.drain_consumer().await;
    let (mut r, p) = fuzz.sample(&s.ack_batch);
    if let (Some(id), Some(first)) = (pick(&fuzz.pool.queue_leases, &p), r.acks.first_mut()) {
        first.lease_id = id;
    }
    let v = o::first(
        [o::batch("acks", &r.acks, MAX_BATCH), r.acks.is_empty().then(|| "acks is empty".to_owned())]
            .into_iter()
            .chain(r.acks.iter().enumerate().flat_map(|(i, ack)| {
                [
                    o::malformed_id(&format!("acks[{i}].lease_id"), &ack.lease_id),
                    o::value(&format!("acks[{i}].result"), &ack.result),
                ]
            })),
    );
    fuzz.exercise("Queue/AckBatch", r, v, unary!(c.queues, ack_batch, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.get_job);
    if let Some(id) = pick(&fuzz.pool.jobs, &p) {
        r.job_id = id;
    }
    let v = o::malformed_id("job_id", &r.job_id);
    fuzz.exercise("Queue/GetJob", r, v, unary!(c.queues, get_job, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.cancel_job);
    if let Some(id) = pick(&fuzz.pool.jobs, &p) {
        r.job_id = id;
    }
    let v = o::malformed_id("job_id", &r.job_id);
    fuzz.exercise("Queue/CancelJob", r, v, unary!(c.queues, cancel_job, DEADLINE)).await;
    let r = fuzz.sample(&s.get_queue_stats);
    let v = o::key("queue", &r.queue);
    fuzz.exercise("Queue/GetQueueStats", r, v, unary!(c.queues, get_queue_stats, DEADLINE)).await;
    let r = fuzz.sample(&s.list_dead_jobs);
    let v = o::key("queue", &r.queue);
    fuzz.exercise("Queue/ListDeadJobs", r, v, unary!(c.queues, list_dead_jobs, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.retry_dead_jobs);
    if let Some(id) = pick(&fuzz.pool.jobs, &p) {
        r.job_ids.push(id);
    }
    let v = o::first(
        std::iter::once(o::key("queue", &r.queue))
            .chain(r.job_ids.iter().enumerate().map(|(i, id)| o::malformed_id(&format!("job_ids[{i}]"), id))),
    );
    fuzz.exercise("Queue/RetryDeadJobs", r, v, unary!(c.queues, retry_dead_jobs, DEADLINE)).await;
    let r = fuzz.sample(&s.pause_queue);
    let v = o::key("queue", &r.queue);
    fuzz.exercise("Queue/PauseQueue", r, v, unary!(c.queues, pause_queue, DEADLINE)).await;
    let r = fuzz.sample(&s.resume_queue);
    let v = o::key("queue", &r.queue);
    fuzz.exercise("Queue/ResumeQueue", r, v, unary!(c.queues, resume_queue, DEADLINE)).await;

    // envoy.service.ratelimit.v3.RateLimitService
    let r = fuzz.sample(&s.should_rate_limit);
    let v = o::first([
        r.domain.is_empty().then(|| "domain is empty".to_owned()),
        r.descriptors.is_empty().then(|| "descriptors is empty".to_owned()),
    ]);
    fuzz.exercise("Envoy/ShouldRateLimit", r, v, unary!(c.envoy, should_rate_limit, DEADLINE)).await;
}

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
    assert_eq!(fuzz.tallies.len(), 39, "every RPC was exercised");
    let problems: Vec<&String> = fuzz.failures.iter().chain(&fuzz.findings).collect();
    assert!(
        problems.is_empty(),
        "{} problems (seed {seed}; BATON_FUZZ_SEED={seed} reproduces):\n{}",
        problems.len(),
        problems.iter().take(40).map(|p| p.as_str()).collect::<Vec<_>>().join("\n")
    );
}
