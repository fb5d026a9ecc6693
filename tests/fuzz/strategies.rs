//! Strategies: hostile values, with valid ones mixed in.

use super::*;

pub(crate) fn pd(seconds: i64, nanos: i32) -> PDuration {
    PDuration { seconds, nanos }
}

pub(crate) fn ms(millis: i64) -> PDuration {
    pd(millis / 1000, (millis % 1000) as i32 * 1_000_000)
}

/// Strings of a boundary length, in 1-, 2- and 4-byte characters and NULs.
pub(crate) fn long_text() -> BoxedStrategy<String> {
    let lengths = vec![127usize, 128, 129, 255, 256, 257, 511, 512, 513, 1024, 4097, 70_000];
    (prop::sample::select(lengths), prop::sample::select(vec!["a", "é", "🦀", "\0"]))
        .prop_map(|(count, unit)| unit.repeat(count))
        .boxed()
}

/// Any string at all: printable unicode, control characters, NUL.
pub(crate) fn wild_text() -> BoxedStrategy<String> {
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
pub(crate) fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[a-z0-9_:.-]{0,12}",
        1 => Just(String::new()),
        2 => wild_text(),
        1 => long_text(),
    ]
    .boxed()
}

/// Keys and names: mostly a few shared ones (so state builds up), then everything else.
pub(crate) fn name() -> BoxedStrategy<String> {
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
pub(crate) fn list_name() -> BoxedStrategy<String> {
    prop_oneof![
        20 => "[a-z0-9]{1,8}",
        1 => Just(String::new()),
        1 => Just("a".repeat(MAX_KEY_BYTES + 1)),
        1 => Just("a\0b".to_owned()),
    ]
    .boxed()
}

pub(crate) fn bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::sample::select(vec![MAX_VALUE_BYTES, MAX_VALUE_BYTES + 1]).prop_map(|n| vec![b'v'; n]),
    ]
    .boxed()
}

pub(crate) fn small_bytes() -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..16).boxed()
}

/// A list: usually short, sometimes empty or around `limit` (when given).
pub(crate) fn list<T: Debug + Clone + 'static>(
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
pub(crate) fn duration() -> BoxedStrategy<Option<PDuration>> {
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
pub(crate) fn wait() -> BoxedStrategy<Option<PDuration>> {
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

pub(crate) fn now_seconds() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

pub(crate) fn timestamp() -> BoxedStrategy<Timestamp> {
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

pub(crate) fn u64s() -> BoxedStrategy<u64> {
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

pub(crate) fn u32s() -> BoxedStrategy<u32> {
    let edges = vec![0, 1, 1000, 1001, 10_000, 10_001, 1 << 31, u32::MAX];
    prop_oneof![4 => 0u32..20, 1 => any::<u32>(), 2 => prop::sample::select(edges)].boxed()
}

pub(crate) fn i32s() -> BoxedStrategy<i32> {
    let edges = vec![i32::MIN, -1001, -1000, -1, 1000, 1001, i32::MAX];
    prop_oneof![4 => -5i32..5, 1 => any::<i32>(), 2 => prop::sample::select(edges)].boxed()
}

/// A proto enum field: the valid numbers `0..=last`, or any other i32.
pub(crate) fn enum_number(last: i32) -> BoxedStrategy<i32> {
    prop_oneof![
        6 => 0..=last,
        1 => prop::sample::select(vec![-1, last + 1, i32::MIN, i32::MAX]),
        1 => any::<i32>(),
    ]
    .boxed()
}

pub(crate) fn multiplier() -> BoxedStrategy<f64> {
    let edges =
        vec![0.0, -0.0, 1.0, 100.0, 100.000_001, 0.5, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX];
    prop_oneof![3 => 0.0f64..5.0, 2 => prop::sample::select(edges), 1 => any::<f64>()].boxed()
}

pub(crate) fn hex(length: usize) -> BoxedStrategy<String> {
    prop::collection::vec(prop::sample::select(b"0123456789abcdef".to_vec()), length)
        .prop_map(|digits| String::from_utf8(digits).unwrap())
        .boxed()
}

/// A lock lease id: well formed (32 lowercase hex) but unknown, nearly so, or anything.
pub(crate) fn lock_lease_id() -> BoxedStrategy<String> {
    prop_oneof![
        3 => hex(32),
        1 => "[0-9a-fA-F]{30,34}",
        1 => Just(String::new()),
        2 => text(),
    ]
    .boxed()
}

/// A job id of Baton's form (uuid v7 "." base64url(queue)) for `queue`.
pub(crate) fn job_id_for() -> BoxedStrategy<String> {
    (hex(8), hex(4), hex(3), hex(3), hex(12), prop::sample::select(vec!["k0", "k1", "k2", "k3", ""]))
        .prop_map(|(a, b, c, d, e, queue)| format!("{a}-{b}-7{c}-8{d}-{e}.{}", URL_SAFE_NO_PAD.encode(queue)))
        .boxed()
}

pub(crate) fn job_id() -> BoxedStrategy<String> {
    prop_oneof![
        3 => job_id_for(),
        1 => "[0-9a-f-]{36}\\.[A-Za-z0-9_-]{0,12}",
        1 => Just(String::new()),
        2 => text(),
    ]
    .boxed()
}

/// A queue lease id: Baton's form (token "." job id), broken variants, anything.
pub(crate) fn queue_lease_id() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (hex(32), job_id_for()).prop_map(|(token, job)| format!("{token}.{job}")),
        1 => (hex(32), text()).prop_map(|(token, job)| format!("{token}.{job}")),
        1 => Just(String::new()),
        2 => text(),
    ]
    .boxed()
}

/// A session id: well formed (22..=256 of `[A-Za-z0-9_-]`) but unknown, near misses, anything.
pub(crate) fn session_id() -> BoxedStrategy<String> {
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
pub(crate) fn pool_pick() -> BoxedStrategy<Option<Index>> {
    prop::option::weighted(0.5, any::<Index>()).boxed()
}

pub(crate) fn limit() -> BoxedStrategy<Limit> {
    (enum_number(3), prop_oneof![3 => 1u64..20, 1 => u64s()], duration(), prop_oneof![4 => Just(0u64), 1 => u64s()])
        .prop_map(|(algorithm, limit, period, burst)| Limit { algorithm, limit, period, burst })
        .boxed()
}

pub(crate) fn policy_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(POLICIES.to_vec()).prop_map(str::to_owned),
        1 => Just("nope".to_owned()),
        1 => text(),
    ]
    .boxed()
}

pub(crate) fn limit_request() -> BoxedStrategy<LimitRequest> {
    let source = prop_oneof![
        1 => Just(None),
        5 => limit().prop_map(|l| Some(limit_request::Source::Limit(l))),
        2 => policy_name().prop_map(|p| Some(limit_request::Source::Policy(p))),
    ];
    (name(), source, prop_oneof![3 => 0u64..3, 1 => u64s()])
        .prop_map(|(key, source, cost)| LimitRequest { key, source, cost })
        .boxed()
}

pub(crate) fn cheap_limit_request() -> BoxedStrategy<LimitRequest> {
    list_name()
        .prop_map(|key| LimitRequest { key, source: Some(limit_request::Source::Policy("fuzz".into())), cost: 1 })
        .boxed()
}

pub(crate) fn tag() -> BoxedStrategy<String> {
    prop_oneof![4 => prop::sample::select(vec!["t0", "t1", "t2"]).prop_map(str::to_owned), 1 => text()].boxed()
}

pub(crate) fn tags() -> BoxedStrategy<Vec<String>> {
    list(tag(), Just("t".to_owned()).boxed(), 32)
}

pub(crate) fn if_version() -> BoxedStrategy<u64> {
    prop_oneof![3 => Just(0u64), 1 => u64s()].boxed()
}

pub(crate) fn batch_set_entry() -> BoxedStrategy<BatchSetEntry> {
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

pub(crate) fn cheap_batch_set_entry() -> BoxedStrategy<BatchSetEntry> {
    list_name()
        .prop_map(|key| BatchSetEntry { key, value: b"v".to_vec(), ttl: Some(pd(60, 0)), ..Default::default() })
        .boxed()
}

pub(crate) fn data_map() -> BoxedStrategy<HashMap<String, Vec<u8>>> {
    let oversize: HashMap<String, Vec<u8>> = (0..=MAX_BATCH).map(|i| (format!("d{i}"), Vec::new())).collect();
    prop_oneof![
        8 => prop::collection::hash_map(prop_oneof![4 => "[a-z]{1,6}", 1 => text()], small_bytes(), 0..4),
        1 => Just(oversize),
        1 => prop::sample::select(vec![64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1])
            .prop_map(|n| HashMap::from([("big".to_owned(), vec![b'x'; n - 3])])),
    ]
    .boxed()
}

pub(crate) fn attributes() -> BoxedStrategy<HashMap<String, String>> {
    let oversize: HashMap<String, String> = (0..33).map(|i| (format!("a{i}"), "v".to_owned())).collect();
    prop_oneof![
        8 => prop::collection::hash_map(prop_oneof![4 => "[a-z]{1,6}", 1 => text()], text(), 0..4),
        1 => Just(oversize),
    ]
    .boxed()
}

pub(crate) fn enqueue_request() -> BoxedStrategy<EnqueueRequest> {
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
    let group = prop_oneof![3 => Just(String::new()), 2 => prop::sample::select(vec!["g0", "g1"]).prop_map(str::to_owned), 1 => name()];
    (
        (name(), bytes(), job_type, schedule, group),
        (i32s(), prop_oneof![3 => 0u32..5, 1 => u32s()], backoff, dedup_key, duration()),
    )
        .prop_map(
            |((queue, payload, r#type, schedule, group), (priority, max_attempts, backoff, dedup_key, dedup_ttl))| {
                EnqueueRequest {
                    queue,
                    payload,
                    r#type,
                    schedule,
                    priority,
                    max_attempts,
                    backoff,
                    dedup_key,
                    dedup_ttl,
                    group,
                }
            },
        )
        .boxed()
}

pub(crate) fn cheap_enqueue_request() -> BoxedStrategy<EnqueueRequest> {
    list_name().prop_map(|queue| EnqueueRequest { queue, ..Default::default() }).boxed()
}

pub(crate) fn envoy_descriptor() -> BoxedStrategy<RateLimitDescriptor> {
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

pub(crate) fn cheap_envoy_descriptor() -> BoxedStrategy<RateLimitDescriptor> {
    Just(RateLimitDescriptor {
        entries: vec![Entry { key: "remote_address".into(), value: "9.9.9.9".into() }],
        limit: None,
        hits_addend: None,
    })
    .boxed()
}

/// Every RPC's request strategy, built once.
pub(crate) struct Strategies {
    pub(crate) check: BoxedStrategy<CheckRequest>,
    pub(crate) reset: BoxedStrategy<ResetRequest>,
    pub(crate) acquire: BoxedStrategy<AcquireRequest>,
    pub(crate) renew: BoxedStrategy<(RenewRequest, Option<Index>)>,
    pub(crate) release: BoxedStrategy<(ReleaseRequest, Option<Index>)>,
    pub(crate) describe: BoxedStrategy<DescribeRequest>,
    pub(crate) keep_alive: BoxedStrategy<(KeepAliveRequest, Option<Index>)>,
    pub(crate) get: BoxedStrategy<GetRequest>,
    pub(crate) set: BoxedStrategy<SetRequest>,
    pub(crate) delete: BoxedStrategy<DeleteRequest>,
    pub(crate) batch_get: BoxedStrategy<BatchGetRequest>,
    pub(crate) batch_set: BoxedStrategy<BatchSetRequest>,
    pub(crate) invalidate_tag: BoxedStrategy<InvalidateTagRequest>,
    pub(crate) fetch: BoxedStrategy<FetchRequest>,
    pub(crate) fill: BoxedStrategy<(FillRequest, Option<Index>)>,
    pub(crate) create_session: BoxedStrategy<CreateSessionRequest>,
    pub(crate) get_session: BoxedStrategy<(GetSessionRequest, Option<Index>)>,
    pub(crate) update_session: BoxedStrategy<(UpdateSessionRequest, Option<Index>)>,
    pub(crate) rotate_session: BoxedStrategy<(RotateSessionRequest, Option<Index>)>,
    pub(crate) delete_session: BoxedStrategy<(DeleteSessionRequest, Option<Index>)>,
    pub(crate) list_sessions: BoxedStrategy<ListSessionsRequest>,
    pub(crate) revoke_sessions: BoxedStrategy<(RevokeSessionsRequest, Option<Index>)>,
    pub(crate) enqueue: BoxedStrategy<EnqueueRequest>,
    pub(crate) enqueue_batch: BoxedStrategy<EnqueueBatchRequest>,
    pub(crate) consume: BoxedStrategy<ConsumeRequest>,
    pub(crate) ack: BoxedStrategy<(AckRequest, Option<Index>)>,
    pub(crate) ack_batch: BoxedStrategy<(AckBatchRequest, Option<Index>)>,
    pub(crate) nack: BoxedStrategy<(NackRequest, Option<Index>)>,
    pub(crate) extend: BoxedStrategy<(ExtendRequest, Option<Index>)>,
    pub(crate) get_job: BoxedStrategy<(GetJobRequest, Option<Index>)>,
    pub(crate) cancel_job: BoxedStrategy<(CancelJobRequest, Option<Index>)>,
    pub(crate) get_queue_stats: BoxedStrategy<GetQueueStatsRequest>,
    pub(crate) list_dead_jobs: BoxedStrategy<ListDeadJobsRequest>,
    pub(crate) list_jobs: BoxedStrategy<ListJobsRequest>,
    pub(crate) configure_queue: BoxedStrategy<ConfigureQueueRequest>,
    pub(crate) update_progress: BoxedStrategy<(UpdateProgressRequest, Option<Index>)>,
    pub(crate) retry_dead_jobs: BoxedStrategy<(RetryDeadJobsRequest, Option<Index>)>,
    pub(crate) pause_queue: BoxedStrategy<PauseQueueRequest>,
    pub(crate) resume_queue: BoxedStrategy<ResumeQueueRequest>,
    pub(crate) should_rate_limit: BoxedStrategy<RateLimitRequest>,
}

impl Strategies {
    pub(crate) fn new() -> Self {
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
                .prop_map(|(name, lease_id, ttl, pick)| (KeepAliveRequest { name, lease_id, ttl, ..Default::default() }, pick))
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
            list_dead_jobs: (name(), u32s(), page_token.clone())
                .prop_map(|(queue, page_size, page_token)| ListDeadJobsRequest { queue, page_size, page_token })
                .boxed(),
            list_jobs: (name(), prop_oneof![4 => 0i32..8, 1 => any::<i32>()], u32s(), page_token)
                .prop_map(|(queue, state, page_size, page_token)| ListJobsRequest { queue, state, page_size, page_token })
                .boxed(),
            configure_queue: (
                name(),
                prop_oneof![3 => 0u32..10, 1 => Just(10_001u32), 1 => any::<u32>()],
                any::<bool>(),
                prop::option::weighted(0.6, limit()),
                any::<bool>(),
            )
                .prop_map(|(queue, group_concurrency, group_fifo, start_limit, start_limit_per_group)| {
                    let config = QueueConfig { group_concurrency, group_fifo, start_limit, start_limit_per_group };
                    ConfigureQueueRequest { queue, config: Some(config) }
                })
                .boxed(),
            update_progress: (
                queue_lease_id(),
                prop_oneof![4 => -1e6f64..1e6, 1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX])],
                prop_oneof![4 => bytes(), 1 => prop::sample::select(vec![4096usize, 4097]).prop_map(|n| vec![b'd'; n])],
                pool_pick(),
            )
                .prop_map(|(lease_id, value, detail, pick)| (UpdateProgressRequest { lease_id, value, detail }, pick))
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
