//! The adversarial review's findings, each reproduced against a real baton and Redis the
//! way the reviewer broke it: nothing a caller sends creates metric series, an expired
//! lease frees its stream, the session size cap holds, a fill that began before a tag
//! invalidation is not served, fencing tokens rise across a Redis rollback, a refused
//! CreateSession writes nothing, `}` in a name reaches no other object's keys, and bytes
//! that are not protobuf are INVALID_ARGUMENT.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::{
    AckRequest, AcquireRequest, ConsumeRequest, CreateSessionRequest, EnqueueRequest, ErrorReason, ExtendRequest,
    FetchRequest, FillRequest, GetQueueStatsRequest, InvalidateTagRequest, ListSessionsRequest, NackRequest,
    ReleaseRequest, RevokeSessionsRequest, UpdateSessionRequest, consume_response,
};
use common::{Baton, Clients, PATIENCE, Redis, Server, reason_of, unique};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn series(scrape: &str, metric: &str) -> Vec<String> {
    scrape.lines().filter(|line| line.starts_with(metric)).map(str::to_owned).collect()
}

/// Sends `message` to `path` with prost's codec, whatever the server expects there.
async fn call_raw<M: prost::Message + Default + Send + 'static>(
    channel: tonic::transport::Channel,
    path: &str,
    message: M,
    api_key: Option<&str>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(message);
    if let Some(key) = api_key {
        request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    let codec = tonic_prost::ProstCodec::<M, ()>::default();
    grpc.unary(request, path, codec).await.expect_err("the call must fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_paths_without_a_key_create_no_metric_series() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    let hash = baton::ids::hex(&Sha256::digest(b"the-real-key"));
    std::fs::write(&config, format!("[[api_keys]]\nsha256 = \"{hash}\"\ntenant = \"a\"\n")).unwrap();
    let baton = Baton::start(Some(&redis.url()), &["--config", config.to_str().unwrap()]);
    let channel = baton.channel().await;
    for i in 0..300 {
        let status = call_raw(channel.clone(), &format!("/made.up.Service{i}/Method{i}"), (), None).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    }
    // And with a valid key, to a path no service serves.
    for i in 0..50 {
        let status =
            call_raw(channel.clone(), &format!("/baton.v1.LockService/Nope{i}"), (), Some("the-real-key")).await;
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    }
    let scrape = common::scrape_metrics(baton.metrics_addr).await;
    let requests = series(&scrape, "baton_grpc_requests_total");
    assert!(!scrape.contains("made.up") && !scrape.contains("Nope"), "a caller's path became a label");
    assert!(requests.len() <= 3, "unknown paths made {} series: {requests:#?}", requests.len());
    let unauthenticated = requests
        .iter()
        .find(|line| line.contains("method=\"unknown\"") && line.contains("UNAUTHENTICATED"))
        .unwrap_or_else(|| panic!("no shared series for unknown paths: {requests:#?}"));
    assert!(unauthenticated.ends_with(" 300"), "{unauthenticated}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_the_message_are_invalid_argument_with_error_info() {
    /// Field 1 of CheckRequest is a repeated message; a varint there does not decode.
    #[derive(Clone, PartialEq, prost::Message)]
    struct NotACheck {
        #[prost(uint64, tag = "1")]
        limits: u64,
    }
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let status =
        call_raw(baton.channel().await, "/baton.v1.RateLimiterService/Check", NotACheck { limits: 7 }, None).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(reason_of(&status), ErrorReason::InvalidField);
    assert!(status.get_details_bad_request().is_some(), "no BadRequest in {status:?}");
    assert_eq!(redis.dbsize(), 0, "a malformed request wrote something");
}

async fn next_delivery(stream: &mut tonic::Streaming<baton::proto::v1::ConsumeResponse>) -> baton::proto::v1::Delivery {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(Ok(response))) => match response.event {
            Some(consume_response::Event::Delivery(delivery)) => delivery,
            other => panic!("expected a delivery, got {other:?}"),
        },
        other => panic!("no delivery within {PATIENCE:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_expired_lease_frees_its_stream_and_is_refused() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("stall");
    let mut ids = Vec::new();
    for payload in ["first", "second", "third"] {
        let request = EnqueueRequest { queue: queue.clone(), payload: payload.into(), ..Default::default() };
        ids.push(queues.enqueue(request).await.unwrap().into_inner().job_id);
    }
    let request = ConsumeRequest {
        queue: queue.clone(),
        max_in_flight: 1,
        visibility_timeout: Some(duration_to_proto(Duration::from_secs(1))),
        ..Default::default()
    };
    let mut stream = queues.consume(tokio_stream::once(request)).await.unwrap().into_inner();
    let held = next_delivery(&mut stream).await;
    assert_eq!((held.job.as_ref().unwrap().job_id.as_str(), held.attempt), (ids[0].as_str(), 1));
    let delivered_at = Instant::now();

    // Never settled: past its deadline the lease settles nothing... (the pause is the
    // scenario; polling with Ack would settle the job while it is still in time).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let lease = || held.lease_id.clone();
    let refusals = [
        queues.ack(AckRequest { lease_id: lease(), result: Vec::new() }).await.map(drop),
        queues.extend(ExtendRequest { lease_id: lease(), visibility_timeout: None }).await.map(drop),
        queues.nack(NackRequest { lease_id: lease(), ..Default::default() }).await.map(drop),
    ];
    for refusal in refusals {
        let status = refusal.expect_err("an expired lease settled its job");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert_eq!(reason_of(&status), ErrorReason::JobNotLeased);
    }
    // ...and its job comes back to the same stream, with nothing else happening on the queue.
    let again = next_delivery(&mut stream).await;
    assert_eq!((again.job.as_ref().unwrap().job_id.as_str(), again.attempt), (ids[0].as_str(), 2));
    let waited = delivered_at.elapsed();
    assert!(waited < Duration::from_secs(5), "re-delivered after {waited:?} with a 1 s visibility");
    queues.ack(AckRequest { lease_id: again.lease_id, result: Vec::new() }).await.unwrap();
    for expected in &ids[1..] {
        let next = next_delivery(&mut stream).await;
        assert_eq!(&next.job.as_ref().unwrap().job_id, expected);
        queues.ack(AckRequest { lease_id: next.lease_id, result: Vec::new() }).await.unwrap();
    }
}

/// A session's stored `size` against what its data really takes.
fn stored_and_real_size(redis: &Redis, session_id: &str) -> (i64, i64) {
    let key = format!("baton:default:sess:{{{}}}:s", baton::ids::hex(&Sha256::digest(session_id.as_bytes())));
    let mut conn = redis.connection();
    let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL").arg(&key).query(&mut conn).unwrap();
    let real = fields
        .iter()
        .filter_map(|(field, value)| field.strip_prefix("d:").map(|k| k.len() + value.len()))
        .sum::<usize>();
    let stored: i64 = String::from_utf8(fields["size"].clone()).unwrap().parse().unwrap();
    (stored, real as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_session_size_is_always_the_real_size_and_the_cap_holds() {
    let redis = Redis::start();
    let cap = 64 * 1024;
    let baton = Server::start(&redis.url(), &["--session-max-bytes", &cap.to_string()]);
    let mut sessions = baton.sessions().await;
    let created = sessions.create_session(CreateSessionRequest::default()).await.unwrap().into_inner();
    let id = created.session_id;

    // The review's bypass: one key both set and removed, again and again.
    let big = vec![b'x'; 60 * 1024];
    for _ in 0..20 {
        let request = UpdateSessionRequest {
            session_id: id.clone(),
            set: HashMap::from([("k".to_owned(), big.clone())]),
            remove: vec!["k".to_owned()],
            ..Default::default()
        };
        let status = sessions.update_session(request).await.expect_err("a key both set and removed");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "remove[0]");
    }

    // Random updates over a few keys, repeated removals included: the stored size follows
    // the data exactly, and never passes the cap.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    for _ in 0..300 {
        let mut set = HashMap::new();
        for _ in 0..next(4) {
            set.insert(format!("k{}", next(6)), vec![b'v'; next(20 * 1024) as usize]);
        }
        let remove: Vec<String> =
            (0..next(4)).map(|_| format!("k{}", next(6))).filter(|key| !set.contains_key(key)).collect();
        let request = UpdateSessionRequest { session_id: id.clone(), set, remove, if_version: 0, ..Default::default() };
        match sessions.update_session(request).await {
            Ok(_) => {}
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{status:?}"),
        }
        let (stored, real) = stored_and_real_size(&redis, &id);
        assert_eq!(stored, real, "the stored size drifted from the data");
        assert!(real <= cap, "{real} bytes under a {cap}-byte cap");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_queue_names_create_no_series_and_real_ones_carry_the_tenant() {
    let redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &[]);
    let mut queues = baton.queues().await;
    for i in 0..500 {
        let request = GetQueueStatsRequest { queue: format!("made-up-{i}") };
        queues.get_queue_stats(request).await.unwrap();
    }
    let real = unique("real");
    queues.enqueue(EnqueueRequest { queue: real.clone(), payload: b"x".to_vec(), ..Default::default() }).await.unwrap();
    queues.get_queue_stats(GetQueueStatsRequest { queue: real.clone() }).await.unwrap();
    let scrape = common::scrape_metrics(baton.metrics_addr).await;
    let gauges = series(&scrape, "baton_queue_jobs");
    assert!(!scrape.contains("made-up-"), "an empty made-up queue got series");
    assert_eq!(gauges.len(), 4, "{gauges:#?}");
    assert!(gauges.iter().all(|line| line.contains("tenant=\"default\"") && line.contains(&real)), "{gauges:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_began_before_a_tag_invalidation_is_not_served() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut cache = baton.cache().await;
    let fetch = |key: &str| FetchRequest {
        key: key.to_owned(),
        lease_ttl: Some(duration_to_proto(Duration::from_secs(10))),
        wait_timeout: Some(duration_to_proto(Duration::from_millis(100))),
    };
    let fill = |key: &str, token: String, tag: &str| FillRequest {
        key: key.to_owned(),
        fill_token: token,
        value: b"read before the write".to_vec(),
        ttl: Some(duration_to_proto(Duration::from_secs(60))),
        tags: vec![tag.to_owned()],
        ..Default::default()
    };
    for round in 0..20 {
        let (key, tag) = (unique("user"), format!("t{round}"));
        // The loader starts, the database is written and the tag invalidated, the loader fills.
        let token = cache.fetch(fetch(&key)).await.unwrap().into_inner().fill_token;
        assert!(!token.is_empty(), "a miss hands out a token");
        cache.invalidate_tag(InvalidateTagRequest { tag: tag.clone() }).await.unwrap();
        let status = cache.fill(fill(&key, token, &tag)).await.expect_err("a fill from before the invalidation");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(reason_of(&status), ErrorReason::FillTokenStale);
        // The next reader loads afresh at once: a miss with a token, not the old value.
        let next = cache.fetch(fetch(&key)).await.unwrap().into_inner();
        assert!(!next.found && !next.fill_token.is_empty(), "{next:?}");
        // A fill that began after the invalidation is stored and served.
        cache.fill(fill(&key, next.fill_token, &tag)).await.expect("a fill from after the invalidation");
        assert!(cache.fetch(fetch(&key)).await.unwrap().into_inner().found);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_rise_across_a_redis_restored_from_an_older_snapshot() {
    let mut redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut locks = baton.locks().await;
    let name = unique("fenced");
    let acquire = || AcquireRequest {
        name: name.clone(),
        ttl: Some(duration_to_proto(Duration::from_secs(30))),
        owner: "test".into(),
        ..Default::default()
    };
    let first = locks.acquire(acquire()).await.unwrap().into_inner().lease.unwrap();
    locks.release(ReleaseRequest { name: name.clone(), lease_id: first.lease_id.clone() }).await.unwrap();
    let _: () = redis::cmd("SAVE").query(&mut redis.connection()).unwrap();
    let second = locks.acquire(acquire()).await.unwrap().into_inner().lease.unwrap();
    assert!(second.fencing_token > first.fencing_token);

    // Redis comes back from the snapshot: the second grant is lost, its holder still acts.
    redis.restart();
    let third = loop {
        match locks.acquire(acquire()).await {
            Ok(response) => break response.into_inner().lease.unwrap(),
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        third.fencing_token > second.fencing_token,
        "token {} after a rollback, {} already issued",
        third.fencing_token,
        second.fencing_token
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_create_session_writes_nothing_for_the_other_subject() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut sessions = baton.sessions().await;
    let id = baton::ids::new_session_id();
    let create = |subject: &str| CreateSessionRequest {
        session_id: id.clone(),
        subject: subject.to_owned(),
        data: HashMap::from([("secret".to_owned(), b"alice's".to_vec())]),
        ..Default::default()
    };
    sessions.create_session(create("alice")).await.unwrap();
    let keys_before = redis.keys();
    let status = sessions.create_session(create("mallory")).await.expect_err("the id is taken");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(redis.keys(), keys_before, "a refused create wrote keys");

    let listed = sessions.list_sessions(ListSessionsRequest { subject: "mallory".into() }).await.unwrap();
    assert!(listed.into_inner().sessions.is_empty(), "another subject's session was listed");
    let request = RevokeSessionsRequest { subject: "mallory".into(), ..Default::default() };
    assert_eq!(sessions.revoke_sessions(request).await.unwrap().into_inner().revoked, 0);
    let alice = sessions.list_sessions(ListSessionsRequest { subject: "alice".into() }).await.unwrap();
    assert_eq!(alice.into_inner().sessions.len(), 1, "the owner's session suffered");

    // An entry planted in another subject's index (as the old code wrote) counts for nobody.
    let hash = baton::ids::hex(&Sha256::digest(id.as_bytes()));
    let _: () = redis::cmd("ZADD")
        .arg("baton:default:sessidx:{mallory}:i")
        .arg(1)
        .arg(&hash)
        .query(&mut redis.connection())
        .unwrap();
    let listed = sessions.list_sessions(ListSessionsRequest { subject: "mallory".into() }).await.unwrap();
    assert!(listed.into_inner().sessions.is_empty());
    let request = RevokeSessionsRequest { subject: "mallory".into(), ..Default::default() };
    assert_eq!(sessions.revoke_sessions(request).await.unwrap().into_inner().revoked, 0);
    let alice = sessions.list_sessions(ListSessionsRequest { subject: "alice".into() }).await.unwrap();
    assert_eq!(alice.into_inner().sessions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brace_in_a_name_reaches_no_other_objects_keys() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let enqueue = |queue: &str, dedup: &str| EnqueueRequest {
        queue: queue.to_owned(),
        payload: b"x".to_vec(),
        dedup_key: dedup.to_owned(),
        dedup_ttl: Some(duration_to_proto(Duration::from_secs(60))),
        ..Default::default()
    };
    // The review's two collisions: a dedup key that paused another queue, and one that
    // broke another queue's ready set.
    queues.enqueue(enqueue("jobs", "x}:paused")).await.unwrap();
    queues.enqueue(enqueue("mail", "y}:ready")).await.unwrap();
    for victim in ["jobs}:dedup:x", "mail}:dedup:y"] {
        queues.enqueue(enqueue(victim, "")).await.expect("the victim queue works");
        let stats = queues.get_queue_stats(GetQueueStatsRequest { queue: victim.to_owned() }).await.unwrap();
        let stats = stats.into_inner();
        assert!(!stats.paused && stats.ready == 1, "{victim}: {stats:?}");
    }
    // Every key's hash tag holds no brace but its own delimiters; the one key without a
    // tag is the namespace's set of queue names.
    for key in redis.keys() {
        let Some(open) = key.find('{') else {
            assert_eq!(key, "baton:default:queues");
            continue;
        };
        let tag = &key[open + 1..];
        let tag = &tag[..tag.find('}').unwrap()];
        assert!(!tag.contains('{'), "{key}");
    }
}
