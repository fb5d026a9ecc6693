//! Chaos, judged in the Jepsen manner. Two baton replicas talk to Redis through Toxiproxy
//! and clients talk to each replica through Toxiproxy, while a nemesis injects one fault
//! at a time — latency, a bandwidth squeeze, half-open connections, resets, refused
//! connections, Redis frozen, Redis killed and restarted, a replica SIGKILLed or SIGTERMed
//! and restarted in place, and every client connection to a replica cut — and workloads
//! record what they were told. Checkers then judge the histories:
//!
//! - locks: no two holders ever used a lease at once (each use ends before its lease could
//!   have expired, by the client's own clock) and tokens rise in the order leases are used;
//! - queue: every job ends SUCCEEDED, none was acked under two leases, duplicates counted;
//! - rate limit: no span of one period admits more than the limit, judged only where the
//!   client's send/receive times prove the admissions fell in one period;
//! - cache and sessions: a read after an acknowledged write never returns an older value.
//!
//! Redis runs with `appendfsync always`, so a kill loses no acknowledged write: every
//! violation is Baton's. `BATON_CHAOS_SECS` sets the length (120 s in `make test`,
//! longer in `make chaos`); the figures are printed at the end.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::cache_service_client::CacheServiceClient;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::lock_service_client::LockServiceClient;
use baton::proto::v1::rate_limiter_service_client::RateLimiterServiceClient;
use baton::proto::v1::session_store_service_client::SessionStoreServiceClient;
use baton::proto::v1::{
    AckRequest, AcquireRequest, Algorithm, CheckRequest, ConsumeRequest, CreateSessionRequest, EnqueueBatchRequest,
    EnqueueRequest, GetJobRequest, GetRequest, GetSessionRequest, JobState, Limit, LimitRequest, ReleaseRequest,
    SetRequest, UpdateSessionRequest, consume_response, limit_request,
};
use common::{Baton, Redis, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const LOCK_TTL: Duration = Duration::from_secs(2);
/// A holder stops using its lease this long before it could have expired.
const LOCK_MARGIN: Duration = Duration::from_millis(300);
const RATE_LIMIT: u64 = 20;
const RATE_PERIOD: Duration = Duration::from_secs(1);
const JOBS: usize = 3000;

// ─── Toxiproxy ───────────────────────────────────────────────────────────────────────────

struct Toxiproxy {
    child: Child,
    api: SocketAddr,
}

impl Toxiproxy {
    fn start() -> Self {
        let bin = std::env::var("TOXIPROXY_BIN")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/tools/toxiproxy/toxiproxy-server").into());
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("{bin}: {err} (`make toxiproxy` installs it from the Go module proxy)"));
        let api = SocketAddr::from(([127, 0, 0, 1], port));
        let listening = testkit::wait::until(common::PATIENCE, || std::net::TcpStream::connect(api).is_ok());
        assert!(listening, "toxiproxy did not start");
        Self { child, api }
    }

    async fn request(&self, method: &str, path: &str, body: &str) {
        let mut stream = tokio::net::TcpStream::connect(self.api).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: toxiproxy\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 2"), "toxiproxy {method} {path} {body}: {reply}");
    }

    /// A proxy listening on a new port; returns that port.
    async fn proxy(&self, name: &str, upstream: u16) -> u16 {
        let listen = free_port();
        let body = format!(r#"{{"name":"{name}","listen":"127.0.0.1:{listen}","upstream":"127.0.0.1:{upstream}"}}"#);
        self.request("POST", "/proxies", &body).await;
        listen
    }

    async fn toxic(&self, proxy: &str, kind: &str, attributes: &str) {
        let body = format!(r#"{{"name":"fault","type":"{kind}","stream":"downstream","attributes":{attributes}}}"#);
        self.request("POST", &format!("/proxies/{proxy}/toxics"), &body).await;
    }

    async fn heal(&self, proxy: &str) {
        self.request("POST", &format!("/proxies/{proxy}"), r#"{"enabled":true}"#).await;
        let mut stream = tokio::net::TcpStream::connect(self.api).await.unwrap();
        let head =
            format!("DELETE /proxies/{proxy}/toxics/fault HTTP/1.1\r\nHost: toxiproxy\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
    }

    async fn set_enabled(&self, proxy: &str, enabled: bool) {
        self.request("POST", &format!("/proxies/{proxy}"), &format!(r#"{{"enabled":{enabled}}}"#)).await;
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ─── The system under test ───────────────────────────────────────────────────────────────

struct Replica {
    port: u16,
    redis_url: String,
    baton: Option<Baton>,
}

impl Replica {
    fn start(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let extra = ["--listen", &listen, "--shutdown-delay", "100ms", "--shutdown-grace", "2s"];
        self.baton = Some(Baton::start(Some(&self.redis_url), &extra));
    }
}

fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect_lazy()
}

#[derive(Default)]
struct Counters {
    faults: AtomicU64,
    lock_uses: AtomicU64,
    lock_late_grants: AtomicU64,
    admitted: AtomicU64,
    deliveries: AtomicU64,
    cache_reads: AtomicU64,
    session_reads: AtomicU64,
    errors: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_queues_limits_cache_and_sessions_hold_under_faults() {
    let seconds: u64 = std::env::var("BATON_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let run_for = Duration::from_secs(seconds);

    let redis = Arc::new(Mutex::new(Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"])));
    let redis_port = redis.lock().unwrap().port;
    let toxiproxy = Arc::new(Toxiproxy::start());
    let redis_proxy = toxiproxy.proxy("redis", redis_port).await;
    let redis_url = format!("redis://127.0.0.1:{redis_proxy}");
    let mut replicas = Vec::new();
    let mut client_ports = Vec::new();
    for index in 0..2 {
        let mut replica = Replica { port: free_port(), redis_url: redis_url.clone(), baton: None };
        replica.start();
        client_ports.push(toxiproxy.proxy(&format!("baton{index}"), replica.port).await);
        replicas.push(replica);
    }
    let replicas = Arc::new(tokio::sync::Mutex::new(replicas));
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let mut workloads = Vec::new();
    for worker in 0..4 {
        let port = client_ports[worker % 2];
        workloads.push(tokio::spawn(lock_worker(channel(port), stop.clone(), counters.clone(), started)));
    }
    for worker in 0..3 {
        let port = client_ports[worker % 2];
        workloads.push(tokio::spawn(rate_worker(channel(port), stop.clone(), counters.clone(), started)));
    }
    workloads.push(tokio::spawn(cache_worker(
        channel(client_ports[0]),
        channel(client_ports[1]),
        stop.clone(),
        counters.clone(),
    )));
    workloads.push(tokio::spawn(session_worker(
        channel(client_ports[1]),
        channel(client_ports[0]),
        stop.clone(),
        counters.clone(),
    )));
    let queue = format!("chaos-{}", uuid::Uuid::new_v4().simple());
    let acks: Arc<Mutex<HashMap<String, Vec<String>>>> = Arc::default();
    let delivered: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut consumers = Vec::new();
    for worker in 0..4 {
        let port = client_ports[worker % 2];
        consumers.push(tokio::spawn(consumer(
            channel(port),
            queue.clone(),
            counters.clone(),
            acks.clone(),
            delivered.clone(),
        )));
    }
    let producer = tokio::spawn(producer(channel(client_ports[0]), queue.clone(), counters.clone()));

    // The nemesis: one fault at a time, each healed before the next.
    let mut round = 0u64;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let hold = Duration::from_millis(1500 + 500 * (round % 4));
        let victim = (round / 11) as usize % 2;
        let client_proxy = format!("baton{victim}");
        match round % 11 {
            0 => toxiproxy.toxic("redis", "latency", r#"{"latency":250,"jitter":200}"#).await,
            1 => toxiproxy.toxic("redis", "bandwidth", r#"{"rate":20}"#).await,
            2 => toxiproxy.toxic("redis", "timeout", r#"{"timeout":0}"#).await,
            3 => toxiproxy.toxic("redis", "reset_peer", r#"{"timeout":0}"#).await,
            4 => toxiproxy.set_enabled("redis", false).await,
            5 => redis.lock().unwrap().freeze(),
            6 => redis.lock().unwrap().restart(),
            7 => {
                let mut replicas = replicas.lock().await;
                replicas[victim].baton.as_mut().unwrap().sigkill();
                replicas[victim].start();
            }
            8 => {
                let mut replicas = replicas.lock().await;
                let mut baton = replicas[victim].baton.take().unwrap();
                baton.sigterm();
                assert!(baton.wait_exit(Duration::from_secs(10)).is_some(), "a SIGTERMed replica did not exit");
                replicas[victim].start();
            }
            9 => toxiproxy.toxic(&client_proxy, "latency", r#"{"latency":300,"jitter":200}"#).await,
            _ => toxiproxy.set_enabled(&client_proxy, false).await,
        }
        counters.faults.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(hold).await;
        redis.lock().unwrap().thaw();
        toxiproxy.heal("redis").await;
        for index in 0..2 {
            toxiproxy.heal(&format!("baton{index}")).await;
        }
        round += 1;
    }

    // Healed: the workloads stop, the queue drains, and the checkers judge.
    stop.store(true, Ordering::Relaxed);
    let mut histories = Vec::new();
    for workload in workloads {
        histories.push(workload.await.unwrap());
    }
    let job_ids = producer.await.unwrap();
    let mut queues = JobQueueServiceClient::new(channel(client_ports[0]));
    let mut unfinished = job_ids.clone();
    let drain_deadline = Instant::now() + Duration::from_secs(90);
    while !unfinished.is_empty() && Instant::now() < drain_deadline {
        let mut still = Vec::new();
        for id in unfinished {
            let state = match queues.get_job(GetJobRequest { job_id: id.clone() }).await {
                Ok(response) => response.into_inner().job.map(|job| job.state),
                Err(_) => None,
            };
            if state != Some(JobState::Succeeded as i32) {
                still.push(id);
            }
        }
        unfinished = still;
        if !unfinished.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for consumer in consumers {
        consumer.abort();
    }

    let lock_history: Vec<LockUse> = histories.iter().flat_map(|h| h.locks.clone()).collect();
    let admissions: Vec<(Instant, Instant)> = histories.iter().flat_map(|h| h.admissions.clone()).collect();
    let violations: Vec<String> = histories.iter().flat_map(|h| h.violations.clone()).collect();
    let acks = acks.lock().unwrap();
    let acked_twice: Vec<_> = acks.iter().filter(|(_, leases)| leases.len() > 1).collect();
    let delivered = delivered.lock().unwrap();
    let duplicates = delivered.values().filter(|n| **n > 1).count();

    eprintln!(
        "chaos {seconds} s: {} faults; locks {} uses ({} grants too late to use); rate limit {} admitted; \
         queue {} jobs, {} deliveries, {} jobs delivered more than once, {} acked twice, {} unfinished; \
         cache {} reads, sessions {} reads; {} calls failed (UNAVAILABLE and the like, all allowed)",
        counters.faults.load(Ordering::Relaxed),
        lock_history.len(),
        counters.lock_late_grants.load(Ordering::Relaxed),
        admissions.len(),
        job_ids.len(),
        counters.deliveries.load(Ordering::Relaxed),
        duplicates,
        acked_twice.len(),
        unfinished.len(),
        counters.cache_reads.load(Ordering::Relaxed),
        counters.session_reads.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed),
    );
    assert!(violations.is_empty(), "read-after-write violations: {violations:#?}");
    check_locks(lock_history);
    check_rate_limit(admissions);
    assert!(acked_twice.is_empty(), "jobs acked under two leases: {acked_twice:?}");
    assert!(
        unfinished.is_empty(),
        "{} jobs never SUCCEEDED: {:?}",
        unfinished.len(),
        &unfinished[..unfinished.len().min(5)]
    );
    assert!(counters.faults.load(Ordering::Relaxed) > 0);
}

// ─── Workloads ───────────────────────────────────────────────────────────────────────────

#[derive(Clone, Debug)]
struct LockUse {
    token: u64,
    start: Instant,
    end: Instant,
}

#[derive(Default)]
struct History {
    locks: Vec<LockUse>,
    admissions: Vec<(Instant, Instant)>,
    violations: Vec<String>,
}

async fn lock_worker(channel: Channel, stop: Arc<AtomicBool>, counters: Arc<Counters>, _: Instant) -> History {
    let mut locks = LockServiceClient::new(channel);
    let mut history = History::default();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let request = AcquireRequest {
            name: "chaos-lock".into(),
            ttl: Some(duration_to_proto(LOCK_TTL)),
            wait_timeout: Some(duration_to_proto(Duration::from_millis(800))),
            owner: "chaos".into(),
            ..Default::default()
        };
        let lease = match locks.acquire(request).await {
            Ok(response) => match response.into_inner() {
                response if response.acquired => response.lease.unwrap(),
                _ => continue,
            },
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The lease runs from some instant after `sent`: it is surely valid until sent + ttl.
        let valid_until = sent + LOCK_TTL - LOCK_MARGIN;
        let start = Instant::now();
        if start + Duration::from_millis(30) < valid_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let end = Instant::now();
            if end < valid_until {
                history.locks.push(LockUse { token: lease.fencing_token, start, end });
                counters.lock_uses.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            counters.lock_late_grants.fetch_add(1, Ordering::Relaxed);
        }
        let release = ReleaseRequest { name: "chaos-lock".into(), lease_id: lease.lease_id };
        if locks.release(release).await.is_err() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    history
}

fn check_locks(mut uses: Vec<LockUse>) {
    assert!(!uses.is_empty(), "no lock was ever used");
    uses.sort_by_key(|u| u.start);
    for pair in uses.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(b.start >= a.end, "two holders at once: {a:?} and {b:?}");
        assert!(b.token > a.token, "the fencing token fell: {a:?} then {b:?}");
    }
}

async fn rate_worker(channel: Channel, stop: Arc<AtomicBool>, counters: Arc<Counters>, _: Instant) -> History {
    let mut limiter = RateLimiterServiceClient::new(channel);
    let mut history = History::default();
    let limit = Limit {
        algorithm: Algorithm::SlidingWindow as i32,
        limit: RATE_LIMIT,
        period: Some(duration_to_proto(RATE_PERIOD)),
        burst: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        let request = CheckRequest {
            limits: vec![LimitRequest {
                key: "chaos-rl".into(),
                source: Some(limit_request::Source::Limit(limit)),
                cost: 1,
            }],
            ..Default::default()
        };
        let sent = Instant::now();
        match limiter.check(request).await {
            Ok(response) if response.get_ref().allowed => {
                history.admissions.push((sent, Instant::now()));
                counters.admitted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    history
}

/// An admission happened between its request's send and its answer's receipt. Any
/// `limit + 1` admissions whose sends and receipts all fit within one period surely fell
/// in one period: that is a violation; nothing weaker is claimed.
fn check_rate_limit(mut admissions: Vec<(Instant, Instant)>) {
    assert!(!admissions.is_empty(), "nothing was ever admitted");
    admissions.sort_by_key(|(sent, _)| *sent);
    let n = RATE_LIMIT as usize + 1;
    for group in admissions.windows(n) {
        let first_sent = group[0].0;
        let last_received = group.iter().map(|(_, received)| *received).max().unwrap();
        assert!(
            last_received.duration_since(first_sent) >= RATE_PERIOD,
            "{n} admissions within {:?}, under a limit of {RATE_LIMIT} per {RATE_PERIOD:?}",
            last_received.duration_since(first_sent)
        );
    }
}

async fn cache_worker(write: Channel, read: Channel, stop: Arc<AtomicBool>, counters: Arc<Counters>) -> History {
    let (mut writer, mut reader) = (CacheServiceClient::new(write), CacheServiceClient::new(read));
    let mut history = History::default();
    let mut acknowledged = 0u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let set = SetRequest {
            key: "chaos-cache".into(),
            value: n.to_string().into_bytes(),
            ttl: Some(duration_to_proto(Duration::from_secs(3600))),
            ..Default::default()
        };
        match writer.set(set).await {
            Ok(_) => acknowledged = n,
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        match reader.get(GetRequest { key: "chaos-cache".into() }).await {
            Ok(response) => {
                counters.cache_reads.fetch_add(1, Ordering::Relaxed);
                let response = response.into_inner();
                let seen =
                    response.entry.map(|e| String::from_utf8_lossy(&e.value).parse::<u64>().unwrap()).unwrap_or(0);
                if acknowledged > 0 && seen < acknowledged {
                    history.violations.push(format!("cache: read {seen} after write {acknowledged} was acknowledged"));
                }
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    history
}

async fn session_worker(write: Channel, read: Channel, stop: Arc<AtomicBool>, counters: Arc<Counters>) -> History {
    let (mut writer, mut reader) = (SessionStoreServiceClient::new(write), SessionStoreServiceClient::new(read));
    let mut history = History::default();
    let id = loop {
        let request = CreateSessionRequest {
            absolute_timeout: Some(duration_to_proto(Duration::from_secs(3600))),
            idle_timeout: Some(duration_to_proto(Duration::from_secs(3600))),
            ..Default::default()
        };
        match writer.create_session(request).await {
            Ok(response) => break response.into_inner().session_id,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut acknowledged = 0u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let update = UpdateSessionRequest {
            session_id: id.clone(),
            set: HashMap::from([("n".to_owned(), n.to_string().into_bytes())]),
            ..Default::default()
        };
        match writer.update_session(update).await {
            Ok(_) => acknowledged = n,
            Err(status) if status.code() == Code::NotFound => {
                history.violations.push("session: an acknowledged session vanished".into());
                break;
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        match reader.get_session(GetSessionRequest { session_id: id.clone(), no_touch: true }).await {
            Ok(response) => {
                counters.session_reads.fetch_add(1, Ordering::Relaxed);
                let session = response.into_inner().session.unwrap();
                let seen =
                    session.data.get("n").map(|v| String::from_utf8_lossy(v).parse::<u64>().unwrap()).unwrap_or(0);
                if seen < acknowledged {
                    history
                        .violations
                        .push(format!("session: read {seen} after write {acknowledged} was acknowledged"));
                }
            }
            Err(status) if status.code() == Code::NotFound => {
                history.violations.push("session: an acknowledged session vanished".into());
                break;
            }
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    history
}

/// Enqueues every job with a dedup key, so a retry after a lost answer adds nothing.
async fn producer(channel: Channel, queue: String, counters: Arc<Counters>) -> Vec<String> {
    let mut queues = JobQueueServiceClient::new(channel);
    let mut ids = Vec::new();
    for batch in 0..JOBS / 100 {
        let requests: Vec<EnqueueRequest> = (0..100)
            .map(|i| EnqueueRequest {
                queue: queue.clone(),
                payload: format!("{}", batch * 100 + i).into_bytes(),
                dedup_key: format!("job-{}", batch * 100 + i),
                dedup_ttl: Some(duration_to_proto(Duration::from_secs(3600))),
                max_attempts: 100,
                ..Default::default()
            })
            .collect();
        loop {
            match queues.enqueue_batch(EnqueueBatchRequest { requests: requests.clone() }).await {
                Ok(response) => {
                    ids.extend(response.into_inner().results.into_iter().map(|r| r.job_id));
                    break;
                }
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), JOBS, "dedup keys made retried batches add nothing");
    ids
}

async fn consumer(
    channel: Channel,
    queue: String,
    counters: Arc<Counters>,
    acks: Arc<Mutex<HashMap<String, Vec<String>>>>,
    delivered: Arc<Mutex<HashMap<String, u32>>>,
) {
    let mut queues = JobQueueServiceClient::new(channel);
    loop {
        let request = ConsumeRequest {
            queue: queue.clone(),
            max_in_flight: 16,
            visibility_timeout: Some(duration_to_proto(Duration::from_secs(3))),
            ..Default::default()
        };
        let mut stream = match queues.consume(tokio_stream::once(request)).await {
            Ok(response) => response.into_inner(),
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Some(Ok(event)) = stream.next().await {
            let Some(consume_response::Event::Delivery(delivery)) = event.event else {
                continue;
            };
            let job_id = delivery.job.unwrap().job_id;
            counters.deliveries.fetch_add(1, Ordering::Relaxed);
            *delivered.lock().unwrap().entry(job_id.clone()).or_default() += 1;
            // Acks are idempotent: retried through outages until answered either way.
            for _ in 0..20 {
                match queues.ack(AckRequest { lease_id: delivery.lease_id.clone(), result: Vec::new() }).await {
                    Ok(_) => {
                        let mut acks = acks.lock().unwrap();
                        let leases = acks.entry(job_id.clone()).or_default();
                        if !leases.contains(&delivery.lease_id) {
                            leases.push(delivery.lease_id.clone());
                        }
                        break;
                    }
                    Err(status) if status.code() == Code::FailedPrecondition => break,
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        // The stream broke (a fault) or ended: consume again until aborted.
        counters.errors.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ─── The checkers can fail ───────────────────────────────────────────────────────────────

#[test]
#[should_panic(expected = "two holders at once")]
fn the_lock_checker_sees_overlapping_uses() {
    let t = Instant::now();
    check_locks(vec![
        LockUse { token: 1, start: t, end: t + Duration::from_millis(20) },
        LockUse { token: 2, start: t + Duration::from_millis(10), end: t + Duration::from_millis(30) },
    ]);
}

#[test]
#[should_panic(expected = "the fencing token fell")]
fn the_lock_checker_sees_a_falling_token() {
    let t = Instant::now();
    check_locks(vec![
        LockUse { token: 5, start: t, end: t + Duration::from_millis(20) },
        LockUse { token: 4, start: t + Duration::from_millis(30), end: t + Duration::from_millis(40) },
    ]);
}

#[test]
#[should_panic(expected = "admissions within")]
fn the_rate_limit_checker_sees_too_many_admissions_in_one_period() {
    let t = Instant::now();
    let step = RATE_PERIOD / (2 * RATE_LIMIT as u32);
    check_rate_limit((0..=RATE_LIMIT as u32).map(|i| (t + step * i, t + step * i + step / 2)).collect());
}

#[test]
fn the_rate_limit_checker_accepts_admissions_spread_over_the_period() {
    let t = Instant::now();
    let step = RATE_PERIOD / RATE_LIMIT as u32;
    check_rate_limit((0..3 * RATE_LIMIT as u32).map(|i| (t + step * i, t + step * i + step / 4)).collect());
}
