//! Every service against a 3-master Redis Cluster started by the harness (`redis-server
//! --cluster-enabled yes` ×3 + `redis-cli --cluster create`): the acceptance behaviours of
//! each pattern hold with their keys spread over all three masters, notifications cross
//! nodes, a rate-limit Check spanning slots is refused naming the hash-tag rule, and the
//! minimal ACL user of docs/security.md (plus its cluster additions) works.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::cache_service_client::CacheServiceClient;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::lock_service_client::LockServiceClient;
use baton::proto::v1::rate_limiter_service_client::RateLimiterServiceClient;
use baton::proto::v1::{
    AckRequest, AcquireRequest, Algorithm, BatchGetRequest, BatchSetEntry, BatchSetRequest, CheckRequest,
    ConsumeRequest, ConsumeResponse, CreateSessionRequest, DeleteSessionRequest, Delivery, EnqueueBatchRequest,
    EnqueueRequest, FetchRequest, FillRequest, GetQueueStatsRequest, GetRequest, GetSessionRequest,
    InvalidateTagRequest, Lease, Limit, LimitRequest, ListSessionsRequest, ReleaseRequest, RevokeSessionsRequest,
    RotateSessionRequest, SetRequest, UpdateSessionRequest, consume_response, enqueue_request, limit_request,
};
use baton::slot_of;
use common::{Auth, Baton, Clients, PATIENCE, RedisCluster, unique};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

fn cluster_baton(cluster: &RedisCluster) -> Baton {
    Baton::start(Some(&cluster.url()), &["--redis-mode", "cluster"])
}

/// `count` names starting with `prefix` whose hash tags (`{name}`) fall in different
/// slots from one another: enough of them land on every master.
fn spread_names(prefix: &str, count: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut slots = HashSet::new();
    let base = unique(prefix);
    for i in 0.. {
        let name = format!("{base}-{i}");
        if slots.insert(slot_of(&format!("{{{name}}}"))) {
            names.push(name);
        }
        if names.len() == count {
            break;
        }
    }
    names
}

// ─── RateLimiterService ────────────────────────────────────────────────────────────────

fn fixed(limit: u64) -> Limit {
    Limit {
        algorithm: Algorithm::FixedWindow as i32,
        limit,
        period: Some(duration_to_proto(Duration::from_secs(3600))),
        burst: 0,
    }
}

fn item(key: &str, limit: Limit) -> LimitRequest {
    LimitRequest { key: key.to_owned(), source: Some(limit_request::Source::Limit(limit)), cost: 1 }
}

fn check_request(items: Vec<LimitRequest>, dry_run: bool) -> CheckRequest {
    CheckRequest { limits: items, dry_run, fail_open: false }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_exact_per_key_and_a_check_spanning_slots_names_the_hash_tag_rule() {
    let cluster = RedisCluster::start(3);
    let batons = [cluster_baton(&cluster), cluster_baton(&cluster)];
    let clients = [batons[0].rate_limiter().await, batons[1].rate_limiter().await];
    let keys = spread_names("rl", 12);

    // 64 callers over two batons, 1536 calls cycling over 12 keys (128 each, limit 100).
    let allowed: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut callers = Vec::new();
    for caller in 0..64 {
        let (mut client, keys, allowed) = (clients[caller % 2].clone(), keys.clone(), allowed.clone());
        callers.push(tokio::spawn(async move {
            for call in 0..24 {
                let key = &keys[(caller + call) % keys.len()];
                let response = client.check(check_request(vec![item(key, fixed(100))], false)).await.unwrap();
                if response.into_inner().allowed {
                    *allowed.lock().unwrap().entry(key.clone()).or_default() += 1;
                }
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let allowed = allowed.lock().unwrap().clone();
    assert_eq!(allowed.len(), keys.len());
    assert!(allowed.values().all(|n| *n == 100), "allowed per key: {allowed:?}");

    // Scripts are loaded per node: after every node forgot them (as a promoted replica
    // or a new node has never known them), the next calls load them where they run.
    for node in &cluster.nodes {
        let _: () = node.query(redis::cmd("SCRIPT").arg("FLUSH")).expect("script flush");
    }
    let mut client = clients[0].clone();
    for key in &keys {
        let response = client.check(check_request(vec![item(key, fixed(100))], true)).await.unwrap();
        assert!(!response.into_inner().allowed, "{key} forgot its count");
    }

    // Keys that start with one {tag} share a slot: checked together, atomically.
    let tag = unique("user");
    let (minute, hour) = (format!("{{{tag}}}:minute"), format!("{{{tag}}}:hour"));
    for _ in 0..3 {
        let both = check_request(vec![item(&minute, fixed(5)), item(&hour, fixed(3))], false);
        assert!(client.check(both).await.unwrap().into_inner().allowed);
    }
    let both = check_request(vec![item(&minute, fixed(5)), item(&hour, fixed(3))], false);
    assert!(!client.check(both).await.unwrap().into_inner().allowed);
    let peek = client.check(check_request(vec![item(&minute, fixed(5))], true)).await.unwrap().into_inner();
    assert_eq!(peek.results[0].remaining, 1, "the denied check consumed from the other limit");

    // Keys of different slots in one Check: refused before any Redis call.
    let status = client.check(check_request(vec![item(&keys[0], fixed(5)), item(&keys[1], fixed(5))], false)).await;
    let status = status.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let violation = &status.get_details_bad_request().unwrap().field_violations[0];
    assert_eq!(violation.field, "limits[1].key");
    assert!(status.message().contains("hash tag"), "{}", status.message());

    cluster.assert_keys_on_every_master();
}

// ─── LockService ───────────────────────────────────────────────────────────────────────

type Locks = LockServiceClient<Channel>;

fn acquire_request(name: &str, ttl: Duration, wait: Duration) -> AcquireRequest {
    AcquireRequest {
        name: name.to_owned(),
        ttl: Some(duration_to_proto(ttl)),
        wait_timeout: Some(duration_to_proto(wait)),
        owner: "cluster-test".into(),
        permits: 1,
        request_id: String::new(),
    }
}

async fn hold(locks: &mut Locks, name: &str) -> Lease {
    let response = locks.acquire(acquire_request(name, Duration::from_secs(30), Duration::ZERO)).await.unwrap();
    let response = response.into_inner();
    assert!(response.acquired, "{name} was not free");
    response.lease.unwrap()
}

async fn release(locks: &mut Locks, lease: &Lease) -> bool {
    let request = ReleaseRequest { name: lease.name.clone(), lease_id: lease.lease_id.clone() };
    locks.release(request).await.unwrap().into_inner().released
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_exclude_and_fence_on_every_master_and_releases_wake_waiters_across_nodes() {
    let cluster = RedisCluster::start(3);
    let batons = [cluster_baton(&cluster), cluster_baton(&cluster)];
    let names = spread_names("lock", 6);

    // 8 clients per lock over two batons, 25 cycles each: one holder at a time, tokens
    // strictly increasing per lock.
    let inside: Arc<HashMap<String, AtomicU32>> =
        Arc::new(names.iter().map(|name| (name.clone(), AtomicU32::new(0))).collect());
    let highest: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for (n, name) in names.iter().enumerate() {
        for client in 0..8 {
            let mut locks = batons[(n + client) % 2].locks().await;
            let (name, inside, highest) = (name.clone(), inside.clone(), highest.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    let request = acquire_request(&name, Duration::from_secs(10), Duration::from_secs(60));
                    let response = locks.acquire(request).await.unwrap().into_inner();
                    assert!(response.acquired, "waited a minute for {name}");
                    let lease = response.lease.unwrap();
                    assert_eq!(inside[&name].fetch_add(1, Ordering::SeqCst), 0, "two holders of {name}");
                    {
                        let mut highest = highest.lock().unwrap();
                        let last = highest.entry(name.clone()).or_default();
                        assert!(lease.fencing_token > *last, "token {} after {}", lease.fencing_token, *last);
                        *last = lease.fencing_token;
                    }
                    tokio::task::yield_now().await;
                    inside[&name].fetch_sub(1, Ordering::SeqCst);
                    assert!(release(&mut locks, &lease).await);
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }

    // A waiter on another baton is woken by the release (a message published on the
    // lock's node, heard by a subscription on whichever node), not by its 1 s re-check.
    let mut handoffs = Vec::new();
    for name in &names {
        let (mut holder, waiter_locks) = (batons[0].locks().await, batons[1].locks().await);
        let lease = hold(&mut holder, name).await;
        let waiter = {
            let (mut locks, name) = (waiter_locks, name.clone());
            tokio::spawn(async move {
                let request = acquire_request(&name, Duration::from_secs(5), Duration::from_secs(10));
                let acquired = locks.acquire(request).await.unwrap().into_inner().acquired;
                (acquired, Instant::now())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(release(&mut holder, &lease).await);
        let released_at = Instant::now();
        let (acquired, acquired_at) = waiter.await.unwrap();
        assert!(acquired);
        handoffs.push(acquired_at.saturating_duration_since(released_at));
    }
    handoffs.sort();
    eprintln!("hand-offs after release: {handoffs:?}");
    assert!(handoffs[handoffs.len() / 2] < Duration::from_millis(300), "median hand-off {handoffs:?}");

    cluster.assert_keys_on_every_master();
}

// ─── CacheService ──────────────────────────────────────────────────────────────────────

type Cache = CacheServiceClient<Channel>;

fn set_request(key: &str, value: &[u8], tags: &[String]) -> SetRequest {
    SetRequest {
        key: key.to_owned(),
        value: value.to_vec(),
        ttl: Some(duration_to_proto(Duration::from_secs(600))),
        tags: tags.to_vec(),
        ..Default::default()
    }
}

async fn get(cache: &mut Cache, key: &str) -> Option<Vec<u8>> {
    let response = cache.get(GetRequest { key: key.to_owned() }).await.unwrap().into_inner();
    response.found.then(|| response.entry.unwrap().value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_runs_one_loader_per_key_and_tag_invalidation_hides_entries_of_every_slot() {
    let cluster = RedisCluster::start(3);
    let batons = [cluster_baton(&cluster), cluster_baton(&cluster)];
    let clients = [batons[0].cache().await, batons[1].cache().await];

    // 100 concurrent misses on each of three keys: one loader per key, everyone served.
    let hot = spread_names("hot", 3);
    let loaders: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut callers = Vec::new();
    for caller in 0..300 {
        let (mut cache, key, loaders) = (clients[caller % 2].clone(), hot[caller % 3].clone(), loaders.clone());
        callers.push(tokio::spawn(async move {
            let request = FetchRequest {
                key: key.clone(),
                lease_ttl: Some(duration_to_proto(Duration::from_secs(10))),
                wait_timeout: Some(duration_to_proto(Duration::from_secs(10))),
            };
            let response = cache.fetch(request).await.unwrap().into_inner();
            if response.found {
                return (key, response.entry.unwrap().value);
            }
            assert!(!response.fill_token.is_empty(), "neither a value nor a token");
            *loaders.lock().unwrap().entry(key.clone()).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let fill = FillRequest {
                key: key.clone(),
                fill_token: response.fill_token,
                value: key.as_bytes().to_vec(),
                ttl: Some(duration_to_proto(Duration::from_secs(60))),
                ..Default::default()
            };
            let value = cache.fill(fill).await.unwrap().into_inner().entry.unwrap().value;
            (key, value)
        }));
    }
    for caller in callers {
        let (key, value) = caller.await.unwrap();
        assert_eq!(value, key.as_bytes());
    }
    let loaders = loaders.lock().unwrap().clone();
    assert_eq!(loaders.len(), 3);
    assert!(loaders.values().all(|n| *n == 1), "loaders per key: {loaders:?}");

    // A tag's stamp lives in its own slot; its entries in many others.
    let mut cache = clients[0].clone();
    let (tag, other_tag) = (unique("tag"), unique("other-tag"));
    let tagged = spread_names("tagged", 30);
    let entries = tagged
        .iter()
        .map(|key| BatchSetEntry {
            key: key.clone(),
            value: b"v".to_vec(),
            ttl: Some(duration_to_proto(Duration::from_secs(600))),
            tags: vec![tag.clone(), other_tag.clone()],
            ..Default::default()
        })
        .collect();
    cache.batch_set(BatchSetRequest { entries }).await.unwrap();
    let lonely = unique("lonely");
    cache.set(set_request(&lonely, b"v", std::slice::from_ref(&other_tag))).await.unwrap();
    let found = cache.batch_get(BatchGetRequest { keys: tagged.clone() }).await.unwrap().into_inner().entries;
    assert!(found.iter().all(|entry| entry.found));

    cache.invalidate_tag(InvalidateTagRequest { tag: tag.clone() }).await.unwrap();
    let found = cache.batch_get(BatchGetRequest { keys: tagged.clone() }).await.unwrap().into_inner().entries;
    assert!(found.iter().all(|entry| !entry.found), "an invalidated entry is still served");
    for key in &tagged[..5] {
        assert_eq!(get(&mut cache, key).await, None);
    }
    assert_eq!(get(&mut cache, &lonely).await, Some(b"v".to_vec()), "another tag's entry was hidden");
    // Written after the invalidation: stamped with the new generation, visible.
    cache.set(set_request(&tagged[0], b"new", std::slice::from_ref(&tag))).await.unwrap();
    assert_eq!(get(&mut clients[1].clone(), &tagged[0]).await, Some(b"new".to_vec()));

    cluster.assert_keys_on_every_master();
}

// ─── SessionStoreService ───────────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_rotate_across_slots_and_revoke_all_leaves_only_the_exception() {
    let cluster = RedisCluster::start(3);
    let batons = [cluster_baton(&cluster), cluster_baton(&cluster)];
    let mut sessions = batons[0].sessions().await;
    let mut other = batons[1].sessions().await;
    let subject = unique("subject");

    let mut ids = Vec::new();
    for i in 0..20 {
        let request = CreateSessionRequest {
            subject: subject.clone(),
            data: HashMap::from([("n".to_owned(), i.to_string().into_bytes())]),
            ..Default::default()
        };
        ids.push(sessions.create_session(request).await.unwrap().into_inner().session_id);
    }
    for id in &ids {
        let request = GetSessionRequest { session_id: id.clone(), no_touch: false };
        assert!(other.get_session(request).await.unwrap().into_inner().session.is_some());
    }

    // Rotation: the old and new keys are (almost surely) in different slots.
    let update = UpdateSessionRequest {
        session_id: ids[0].clone(),
        set: HashMap::from([("cart".to_owned(), b"3 items".to_vec())]),
        ..Default::default()
    };
    let version = sessions.update_session(update).await.unwrap().into_inner().session.unwrap().version;
    let rotated = sessions.rotate_session(RotateSessionRequest { session_id: ids[0].clone() }).await.unwrap();
    let rotated = rotated.into_inner();
    let session = rotated.session.unwrap();
    assert_eq!(session.data["cart"], b"3 items");
    assert_eq!(session.version, version);
    let old = other.get_session(GetSessionRequest { session_id: ids[0].clone(), no_touch: false }).await;
    assert_eq!(old.unwrap_err().code(), Code::NotFound);
    let revive = UpdateSessionRequest {
        session_id: ids[0].clone(),
        set: HashMap::from([("x".to_owned(), b"y".to_vec())]),
        ..Default::default()
    };
    assert_eq!(other.update_session(revive).await.unwrap_err().code(), Code::NotFound);
    let new = other.get_session(GetSessionRequest { session_id: rotated.session_id.clone(), no_touch: true }).await;
    assert_eq!(new.unwrap().into_inner().session.unwrap().data["cart"], b"3 items");

    let listed = other.list_sessions(ListSessionsRequest { subject: subject.clone() }).await.unwrap();
    let listed = listed.into_inner().sessions;
    assert_eq!(listed.len(), 20);
    assert!(listed.iter().any(|s| s.handle == session.handle));

    // Log out everywhere but here.
    let keep = listed[7].handle.clone();
    let request = RevokeSessionsRequest { subject: subject.clone(), handles: Vec::new(), except_handle: keep.clone() };
    assert_eq!(sessions.revoke_sessions(request).await.unwrap().into_inner().revoked, 19);
    let listed = sessions.list_sessions(ListSessionsRequest { subject: subject.clone() }).await.unwrap();
    let listed = listed.into_inner().sessions;
    assert_eq!(listed.iter().map(|s| s.handle.clone()).collect::<Vec<_>>(), vec![keep]);
    let mut alive = 0;
    for id in ids.iter().chain([&rotated.session_id]) {
        if other.get_session(GetSessionRequest { session_id: id.clone(), no_touch: true }).await.is_ok() {
            alive += 1;
        }
    }
    assert_eq!(alive, 1);
    // Sessions spread over the masters while there were twenty of them; more now make sure.
    for _ in 0..30 {
        let request = CreateSessionRequest { subject: unique("spread"), ..Default::default() };
        let id = sessions.create_session(request).await.unwrap().into_inner().session_id;
        assert!(sessions.delete_session(DeleteSessionRequest { session_id: id }).await.unwrap().into_inner().deleted);
        let request = CreateSessionRequest { subject: unique("spread"), ..Default::default() };
        sessions.create_session(request).await.unwrap();
    }
    cluster.assert_keys_on_every_master();
}

// ─── JobQueueService ───────────────────────────────────────────────────────────────────

type Queues = JobQueueServiceClient<Channel>;

async fn consume(queues: &mut Queues, queue: &str, max_in_flight: u32) -> tonic::Streaming<ConsumeResponse> {
    let request = ConsumeRequest {
        queue: queue.to_owned(),
        max_in_flight,
        visibility_timeout: Some(duration_to_proto(Duration::from_secs(60))),
        ..Default::default()
    };
    queues.consume(tokio_stream::once(request)).await.unwrap().into_inner()
}

async fn next_delivery(stream: &mut tonic::Streaming<ConsumeResponse>, patience: Duration) -> Option<Delivery> {
    match tokio::time::timeout(patience, stream.next()).await {
        Ok(Some(Ok(ConsumeResponse { event: Some(consume_response::Event::Delivery(delivery)) }))) => Some(delivery),
        Ok(other) => panic!("expected a delivery, got {other:?}"),
        Err(_) => None,
    }
}

async fn ack(queues: &mut Queues, delivery: &Delivery) {
    queues.ack(AckRequest { lease_id: delivery.lease_id.clone(), result: Vec::new() }).await.expect("ack");
}

fn job(queue: &str, payload: &str) -> EnqueueRequest {
    EnqueueRequest { queue: queue.to_owned(), payload: payload.as_bytes().to_vec(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_on_every_master_deliver_each_job_once_in_priority_order_and_never_early() {
    let cluster = RedisCluster::start(3);
    let batons = [cluster_baton(&cluster), cluster_baton(&cluster)];
    let queues = spread_names("queue", 6);
    let mut producer = batons[0].queues().await;
    let mut expected = HashSet::new();
    for queue in &queues {
        let requests = (0..500).map(|i| job(queue, &i.to_string())).collect();
        let results = producer.enqueue_batch(EnqueueBatchRequest { requests }).await.unwrap().into_inner().results;
        expected.extend(results.into_iter().map(|r| r.job_id));
    }
    assert_eq!(expected.len(), 3000);

    // Two workers per queue, one on each baton.
    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for (n, queue) in queues.iter().enumerate() {
        for worker in 0..2 {
            let mut client = batons[(n + worker) % 2].queues().await;
            let (queue, seen) = (queue.clone(), seen.clone());
            workers.push(tokio::spawn(async move {
                let mut stream = consume(&mut client, &queue, 16).await;
                while let Some(delivery) = next_delivery(&mut stream, Duration::from_secs(2)).await {
                    *seen.lock().unwrap().entry(delivery.job.as_ref().unwrap().job_id.clone()).or_default() += 1;
                    ack(&mut client, &delivery).await;
                }
            }));
        }
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.len(), 3000, "jobs lost");
    assert!(seen.values().all(|n| *n == 1), "a job was delivered twice");
    assert!(seen.keys().all(|id| expected.contains(id)));
    for queue in &queues {
        let stats = producer.get_queue_stats(GetQueueStatsRequest { queue: queue.clone() }).await.unwrap();
        let stats = stats.into_inner();
        assert_eq!((stats.ready, stats.active, stats.scheduled, stats.dead), (0, 0, 0, 0));
    }

    // A waiting consumer is pushed new jobs at once (notified across nodes), priority first,
    // and a delayed job waits its turn.
    let queue = &queues[0];
    let mut client = batons[1].queues().await;
    let mut stream = consume(&mut client, queue, 10).await;
    let delayed = EnqueueRequest {
        schedule: Some(enqueue_request::Schedule::Delay(duration_to_proto(Duration::from_millis(1500)))),
        ..job(queue, "delayed")
    };
    let enqueued_at = Instant::now();
    producer.enqueue(delayed).await.unwrap();
    producer.pause_queue(baton::proto::v1::PauseQueueRequest { queue: queue.clone() }).await.unwrap();
    producer.enqueue(job(queue, "low")).await.unwrap();
    producer.enqueue(EnqueueRequest { priority: 5, ..job(queue, "high") }).await.unwrap();
    producer.resume_queue(baton::proto::v1::ResumeQueueRequest { queue: queue.clone() }).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        let delivery = next_delivery(&mut stream, PATIENCE).await.expect("a delivery");
        let payload = String::from_utf8(delivery.job.as_ref().unwrap().payload.clone()).unwrap();
        if payload == "delayed" {
            assert!(enqueued_at.elapsed() >= Duration::from_millis(1500), "delivered early");
        }
        order.push(payload);
        ack(&mut client, &delivery).await;
    }
    assert_eq!(order, vec!["high", "low", "delayed"]);

    cluster.assert_keys_on_every_master();
}

// ─── Credentials ───────────────────────────────────────────────────────────────────────

/// The minimal ACL rules of docs/security.md plus what it adds for cluster mode.
const DOCUMENTED_CLUSTER_ACL: &str = "resetkeys ~baton:* resetchannels &baton:* -@all +@read +@write +@scripting \
     +@pubsub +@connection -@dangerous +info +wait +time +cluster|slots +cluster|nodes";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_reaches_every_master_scripts_and_notifications_included() {
    let cluster = RedisCluster::start_with_auth(3, Auth::acl_user_with("baton", "s3cret-pass", DOCUMENTED_CLUSTER_ACL));
    let baton = cluster_baton(&cluster);
    let mut limiter: RateLimiterServiceClient<Channel> = baton.rate_limiter().await;
    let mut locks = baton.locks().await;
    let names = spread_names("acl", 6);
    for name in &names {
        let response = limiter.check(check_request(vec![item(name, fixed(1))], false)).await.unwrap();
        assert!(response.into_inner().allowed);
        let lease = hold(&mut locks, name).await;
        // The waiter hears the release through a subscription that authenticated too.
        let waiter = {
            let (mut locks, name) = (locks.clone(), name.clone());
            tokio::spawn(async move {
                let request = acquire_request(&name, Duration::from_secs(5), Duration::from_secs(10));
                locks.acquire(request).await.unwrap().into_inner().acquired
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(release(&mut locks, &lease).await);
        assert!(waiter.await.unwrap());
    }
    let mut queues = baton.queues().await;
    let queue = unique("acl-queue");
    let mut stream = consume(&mut queues, &queue, 1).await;
    queues.enqueue(job(&queue, "hello")).await.unwrap();
    let delivery = next_delivery(&mut stream, PATIENCE).await.expect("a delivery");
    ack(&mut queues, &delivery).await;
    cluster.assert_keys_on_every_master();
    let denied: Vec<_> = baton.logs().into_iter().filter(|line| line.contains("NOPERM")).collect();
    assert!(denied.is_empty(), "ACL denials: {denied:#?}");

    // A wrong password is a start that never turns SERVING, not a crash.
    let wrong = format!("redis://baton:wrong@{}", cluster.nodes[0].addr());
    let impostor = Baton::start(Some(&wrong), &["--redis-mode", "cluster"]);
    let mut health = impostor.health().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = common::health_status(&mut health, "baton.v1.LockService").await;
    assert_eq!(status, Some(tonic_health::pb::health_check_response::ServingStatus::NotServing));
}

// ─── Envoy's ShouldRateLimit ───────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_descriptors_in_different_slots_are_each_counted_exactly() {
    use baton::proto::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use baton::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use baton::proto::envoy::service::ratelimit::v3::RateLimitRequest;
    use baton::proto::envoy::service::ratelimit::v3::rate_limit_response::Code as EnvoyCode;
    use baton::proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;

    let cluster = RedisCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.toml");
    let config = "[[envoy.domains]]\ndomain = \"edge\"\n[[envoy.domains.descriptors]]\nkey = \"remote_address\"\n\
                  rate_limit = { unit = \"day\", requests_per_unit = 3 }\n";
    std::fs::write(&path, config).unwrap();
    let baton = Baton::start(Some(&cluster.url()), &["--redis-mode", "cluster", "--config", path.to_str().unwrap()]);
    let mut envoy = RateLimitServiceClient::new(baton.channel().await);
    let addresses = spread_names("10.0.0", 2);
    let descriptors: Vec<RateLimitDescriptor> = addresses
        .iter()
        .map(|address| RateLimitDescriptor {
            entries: vec![Entry { key: "remote_address".into(), value: address.clone() }],
            limit: None,
            hits_addend: None,
        })
        .collect();
    let request = || RateLimitRequest { domain: "edge".into(), descriptors: descriptors.clone(), hits_addend: 0 };
    for remaining in [2, 1, 0] {
        let response = envoy.should_rate_limit(request()).await.unwrap().into_inner();
        assert_eq!(response.overall_code, EnvoyCode::Ok as i32);
        assert!(response.statuses.iter().all(|status| status.limit_remaining == remaining), "{response:?}");
    }
    let over = envoy.should_rate_limit(request()).await.unwrap().into_inner();
    assert_eq!(over.overall_code, EnvoyCode::OverLimit as i32);
    assert!(over.statuses.iter().all(|status| status.code == EnvoyCode::OverLimit as i32));
}
