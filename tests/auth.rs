//! API keys and tenant namespaces: no key or a wrong key is UNAUTHENTICATED, a key used
//! outside its allowed RPCs is PERMISSION_DENIED, and two tenants on one Redis can never
//! see, settle or count each other's state, even knowing each other's names and ids.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use baton::proto::duration_to_proto;
use baton::proto::v1::{
    AckRequest, AcquireRequest, Algorithm, CheckRequest, ClearSessionsRequest, ConsumeRequest, CountSessionsRequest,
    CreateSessionRequest, DescribeRequest, EnqueueRequest, ErrorReason, GetJobRequest, GetRequest, GetSessionRequest,
    Limit, LimitRequest, RenewRequest, RevokeSessionsRequest, SetRequest, consume_response, limit_request,
};
use common::{Clients, Redis, Server, health_status, reason_of};
use sha2::{Digest, Sha256};
use tokio_stream::StreamExt;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;

const KEY_A: &str = "tenant-a-secret-key";
const KEY_B: &str = "tenant-b-secret-key";
const WORKER_A: &str = "tenant-a-worker-key";

fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn start(redis: &Redis) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.toml");
    let config = format!(
        "[[api_keys]]\nsha256 = \"{}\"\ntenant = \"a\"\n\n[[api_keys]]\nsha256 = \"{}\"\ntenant = \"b\"\n\n\
         [[api_keys]]\nsha256 = \"{}\"\ntenant = \"a\"\nallow = [\"baton.v1.JobQueueService/Consume\", \"baton.v1.JobQueueService/Ack\"]\n",
        hash(KEY_A),
        hash(KEY_B),
        hash(WORKER_A)
    );
    std::fs::write(&path, config).unwrap();
    let baton = Server::start(&redis.url(), &["--config", path.to_str().unwrap()]);
    (dir, baton)
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

fn describe(name: &str) -> DescribeRequest {
    DescribeRequest { name: name.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_unpermitted_keys_are_refused_while_health_stays_open() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let mut locks = baton.locks().await;

    let status = locks.describe(describe("x")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason_of(&status), ErrorReason::ApiKeyInvalid);
    let status = locks.describe(with_key(describe("x"), "not-a-key")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = locks.describe(with_key(describe("x"), WORKER_A)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason_of(&status), ErrorReason::RpcNotAllowed);
    // The worker key may consume but not enqueue.
    let mut queues = baton.queues().await;
    let enqueue = EnqueueRequest { queue: "q".into(), ..Default::default() };
    assert_eq!(queues.enqueue(with_key(enqueue, WORKER_A)).await.unwrap_err().code(), Code::PermissionDenied);
    let consume = ConsumeRequest { queue: "q".into(), ..Default::default() };
    assert!(queues.consume(with_key(tokio_stream::once(consume), WORKER_A)).await.is_ok());

    assert!(locks.describe(with_key(describe("x"), KEY_A)).await.is_ok());
    let mut health = baton.health().await;
    assert_eq!(health_status(&mut health, "").await, Some(ServingStatus::Serving));
    assert_eq!(redis.dbsize(), 0, "refused requests wrote {:?}", redis.keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_one_redis_never_see_each_other() {
    let redis = Redis::start();
    let (_dir, baton) = start(&redis);
    let second = Duration::from_secs(30);

    // Locks: the same name is two locks; a's lease means nothing to b.
    let mut locks = baton.locks().await;
    let acquire =
        || AcquireRequest { name: "order:1".into(), ttl: Some(duration_to_proto(second)), ..Default::default() };
    let lease_a = locks.acquire(with_key(acquire(), KEY_A)).await.unwrap().into_inner().lease.unwrap();
    assert!(!locks.describe(with_key(describe("order:1"), KEY_B)).await.unwrap().into_inner().held);
    assert!(locks.acquire(with_key(acquire(), KEY_B)).await.unwrap().into_inner().acquired);
    let renew = RenewRequest { name: "order:1".into(), lease_id: lease_a.lease_id.clone(), ttl: None };
    assert_eq!(locks.renew(with_key(renew, KEY_B)).await.unwrap_err().code(), Code::FailedPrecondition);

    // Cache.
    let mut cache = baton.cache().await;
    let set = SetRequest {
        key: "user:1".into(),
        value: b"a".to_vec(),
        ttl: Some(duration_to_proto(second)),
        ..Default::default()
    };
    cache.set(with_key(set, KEY_A)).await.unwrap();
    assert!(!cache.get(with_key(GetRequest { key: "user:1".into() }, KEY_B)).await.unwrap().into_inner().found);

    // Sessions: a's id is unknown to b, and b cannot revoke a's subject.
    let mut sessions = baton.sessions().await;
    let create = CreateSessionRequest { subject: "alice".into(), ..Default::default() };
    let session_a = sessions.create_session(with_key(create, KEY_A)).await.unwrap().into_inner().session_id;
    let get = GetSessionRequest { session_id: session_a.clone(), no_touch: true };
    assert_eq!(sessions.get_session(with_key(get.clone(), KEY_B)).await.unwrap_err().code(), Code::NotFound);
    let revoke = RevokeSessionsRequest { subject: "alice".into(), ..Default::default() };
    assert_eq!(sessions.revoke_sessions(with_key(revoke, KEY_B)).await.unwrap().into_inner().revoked, 0);
    // Counting and clearing are tenant-wide, and only tenant-wide.
    let b_count = sessions.count_sessions(with_key(CountSessionsRequest {}, KEY_B)).await.unwrap();
    assert_eq!(b_count.into_inner().live, 0);
    let a_count = sessions.count_sessions(with_key(CountSessionsRequest {}, KEY_A)).await.unwrap();
    assert_eq!(a_count.into_inner().live, 1);
    assert_eq!(
        sessions.clear_sessions(with_key(ClearSessionsRequest {}, KEY_B)).await.unwrap().into_inner().cleared,
        0
    );
    assert!(sessions.get_session(with_key(get, KEY_A)).await.is_ok());

    // Queues: b neither sees a's job nor receives it nor settles its lease.
    let mut queues = baton.queues().await;
    let job_a = queues
        .enqueue(with_key(EnqueueRequest { queue: "emails".into(), ..Default::default() }, KEY_A))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let get_job = GetJobRequest { job_id: job_a.clone() };
    assert_eq!(queues.get_job(with_key(get_job, KEY_B)).await.unwrap_err().code(), Code::NotFound);
    let consume = || ConsumeRequest { queue: "emails".into(), max_in_flight: 1, ..Default::default() };
    let mut stream_b = queues.consume(with_key(tokio_stream::once(consume()), KEY_B)).await.unwrap().into_inner();
    assert!(tokio::time::timeout(Duration::from_millis(800), stream_b.next()).await.is_err(), "b received a's job");
    let mut stream_a = queues.consume(with_key(tokio_stream::once(consume()), KEY_A)).await.unwrap().into_inner();
    let Some(Ok(event)) = stream_a.next().await else { panic!("a's stream ended") };
    let Some(consume_response::Event::Delivery(delivery)) = event.event else { panic!("not a delivery") };
    let ack = || AckRequest { lease_id: delivery.lease_id.clone(), result: vec![] };
    assert_eq!(queues.ack(with_key(ack(), KEY_B)).await.unwrap_err().code(), Code::FailedPrecondition);
    queues.ack(with_key(ack(), KEY_A)).await.unwrap();

    // Rate limits: the same key is two counters.
    let mut limiter = baton.rate_limiter().await;
    let check = || CheckRequest {
        limits: vec![LimitRequest {
            key: "login:alice".into(),
            source: Some(limit_request::Source::Limit(Limit {
                algorithm: Algorithm::FixedWindow as i32,
                limit: 1,
                period: Some(duration_to_proto(Duration::from_secs(60))),
                burst: 0,
            })),
            cost: 1,
        }],
        ..Default::default()
    };
    assert!(limiter.check(with_key(check(), KEY_A)).await.unwrap().into_inner().allowed);
    assert!(!limiter.check(with_key(check(), KEY_A)).await.unwrap().into_inner().allowed);
    assert!(limiter.check(with_key(check(), KEY_B)).await.unwrap().into_inner().allowed);

    // Every key is under one tenant's prefix; none in the default namespace.
    let keys = redis.keys();
    assert!(keys.iter().any(|k| k.starts_with("baton:a:")) && keys.iter().any(|k| k.starts_with("baton:b:")));
    let stray: Vec<_> = keys.iter().filter(|k| !k.starts_with("baton:a:") && !k.starts_with("baton:b:")).collect();
    assert!(stray.is_empty(), "keys outside the tenants' prefixes: {stray:?}");
}
