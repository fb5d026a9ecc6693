//! Redis Sentinel failover under load: one master, one replica, three sentinels
//! (`down-after-milliseconds` 1000) on loopback. The master is SIGKILLed in the middle of
//! a lock-contention run and of a queue run; Baton follows the sentinels to the promoted
//! replica without a restart. The tests measure and print what the failover cost
//! (recovery time, duplicates, token reuse) and assert what must hold whatever it cost.
//!
//! Replication is asynchronous: a write acknowledged in the last instant before the kill
//! may be missing on the new master. The tests treat such writes as the documented loss
//! (docs/scale-out.md) and count them, and assert everything older.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::{
    AckRequest, AcquireRequest, ConsumeRequest, EnqueueRequest, GetJobRequest, JobState, ReleaseRequest,
    consume_response,
};
use common::{Auth, Baton, Clients, PATIENCE, SentinelSet, eventually, health_status};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// Writes acknowledged this long before the kill are taken as replicated (loopback
/// replication lags by microseconds; this leaves room for a stalled, busy machine).
const REPLICATION_MARGIN: Duration = Duration::from_secs(1);
/// A failover is `down-after-milliseconds` (1 s) + agreement + election + promotion,
/// then Baton's own lookup (≤ 0.6 s): a few seconds. This bound only catches a hang.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);

fn sentinel_baton(set: &SentinelSet) -> Baton {
    let args = set.baton_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Baton::start(None, &args)
}

async fn wait_serving(baton: &Baton, service: &str) {
    let health = baton.health().await;
    eventually(PATIENCE, "baton serving through sentinel", || {
        let mut health = health.clone();
        async move { health_status(&mut health, service).await == Some(ServingStatus::Serving) }
    })
    .await;
}

/// Kills the current master and returns when; the port is the old master's.
fn kill_master(set: &mut SentinelSet) -> (Instant, u16) {
    let port = set.master_port().expect("the sentinels name a master");
    set.node_on(port).kill();
    (Instant::now(), port)
}

/// Waits for the sentinels to name a master other than `old`; returns it and when.
async fn promoted(set: &SentinelSet, old: u16) -> (u16, Instant) {
    let started = Instant::now();
    loop {
        if let Some(port) = set.master_port().filter(|port| *port != old) {
            return (port, Instant::now());
        }
        assert!(started.elapsed() < RECOVERY_BOUND, "the sentinels promoted no replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The minimal ACL rules of docs/security.md plus what it adds for sentinel mode.
const DOCUMENTED_SENTINEL_ACL: &str = "resetkeys ~baton:* resetchannels &baton:* -@all +@read +@write +@scripting \
     +@pubsub +@connection -@dangerous +info +wait +time +role";

// ─── Locks ─────────────────────────────────────────────────────────────────────────────

/// What the fencing resource and the clients saw.
#[derive(Default)]
struct LockRun {
    /// Tokens the resource accepted, in acceptance order.
    accepted: Vec<u64>,
    /// Writes refused because their token was not above the last accepted one.
    refused: u64,
    /// Every granted token, with how often it was granted.
    granted: HashMap<u64, u32>,
    /// Acquires answered with an error (or not at all), and the first answer and the
    /// first grant after the kill.
    errors: u64,
    first_answer_after: Option<Instant>,
    first_grant_after: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_followed_and_the_fenced_resource_never_accepts_out_of_token_order() {
    let mut set = SentinelSet::start(Auth::acl_user_with("baton", "lock-secret", DOCUMENTED_SENTINEL_ACL));
    let batons = [sentinel_baton(&set), sentinel_baton(&set)];
    for baton in &batons {
        wait_serving(baton, "baton.v1.LockService").await;
    }
    let name = common::unique("failover-lock");
    let run: Arc<Mutex<LockRun>> = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut clients = Vec::new();
    for client in 0..8 {
        let mut locks = batons[client % 2].locks().await;
        let (name, run, killed_at, stopped) = (name.clone(), run.clone(), killed_at.clone(), stopped.clone());
        clients.push(tokio::spawn(async move {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let request = AcquireRequest {
                    name: name.clone(),
                    ttl: Some(duration_to_proto(Duration::from_secs(2))),
                    wait_timeout: Some(duration_to_proto(Duration::from_millis(500))),
                    owner: format!("client-{client}"),
                    permits: 1,
                    request_id: String::new(),
                };
                let answer = tokio::time::timeout(Duration::from_secs(5), locks.acquire(request)).await;
                let after_kill = killed_at.lock().unwrap().is_some();
                let response = match answer {
                    Ok(Ok(response)) => response.into_inner(),
                    _ => {
                        run.lock().unwrap().errors += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if after_kill {
                    run.lock().unwrap().first_answer_after.get_or_insert_with(Instant::now);
                }
                let Some(lease) = response.lease.filter(|_| response.acquired) else {
                    continue;
                };
                {
                    let mut run = run.lock().unwrap();
                    if after_kill {
                        run.first_grant_after.get_or_insert_with(Instant::now);
                    }
                    *run.granted.entry(lease.fencing_token).or_default() += 1;
                    // The resource: `UPDATE … WHERE fence < $token`.
                    if run.accepted.last().is_none_or(|last| lease.fencing_token > *last) {
                        run.accepted.push(lease.fencing_token);
                    } else {
                        run.refused += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                let release = ReleaseRequest { name: name.clone(), lease_id: lease.lease_id };
                let _ = tokio::time::timeout(Duration::from_secs(5), locks.release(release)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    let grants_before = run.lock().unwrap().granted.len();
    assert!(grants_before > 20, "only {grants_before} grants before the failover");
    let (kill, old) = kill_master(&mut set);
    *killed_at.lock().unwrap() = Some(kill);
    let (new, promoted_at) = promoted(&set, old).await;

    // Grants resume on the new master, without restarting anything.
    eventually(RECOVERY_BOUND, "lock grants resume after the failover", || {
        let run = run.clone();
        async move { run.lock().unwrap().first_grant_after.is_some_and(|at| at.elapsed() > Duration::from_secs(2)) }
    })
    .await;
    stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let run = std::mem::take(&mut *run.lock().unwrap());
    let reused: Vec<(u64, u32)> = run.granted.iter().filter(|(_, n)| **n > 1).map(|(t, n)| (*t, *n)).collect();
    let first_answer = run.first_answer_after.expect("answered after the kill").saturating_duration_since(kill);
    let first_grant = run.first_grant_after.expect("granted after the kill").saturating_duration_since(kill);
    eprintln!(
        "lock failover {old} -> {new}: sentinels promoted after {:?}; first answer after {first_answer:?}, \
         first grant after {first_grant:?}; {} grants ({} before the kill), {} errors, {} tokens granted twice \
         {reused:?}, {} stale writes refused by the resource",
        promoted_at.saturating_duration_since(kill),
        run.granted.values().sum::<u32>(),
        grants_before,
        run.errors,
        reused.len(),
        run.refused,
    );
    assert!(first_grant < RECOVERY_BOUND);

    // The notification path followed too: a release on the new master wakes a waiter on
    // the other baton at once, not at its 1 s safety re-check.
    let mut handoffs = Vec::new();
    for _ in 0..3 {
        let (mut holder, mut waiter_locks) = (batons[0].locks().await, batons[1].locks().await);
        let hold = |wait: Duration| AcquireRequest {
            name: name.clone(),
            ttl: Some(duration_to_proto(Duration::from_secs(10))),
            wait_timeout: Some(duration_to_proto(wait)),
            owner: "handoff".into(),
            permits: 1,
            request_id: String::new(),
        };
        let lease = holder.acquire(hold(Duration::from_secs(5))).await.unwrap().into_inner().lease.unwrap();
        let request = hold(Duration::from_secs(10));
        let waiter = tokio::spawn(async move {
            let acquired = waiter_locks.acquire(request).await.unwrap().into_inner();
            let released = ReleaseRequest {
                name: acquired.lease.as_ref().unwrap().name.clone(),
                lease_id: acquired.lease.unwrap().lease_id,
            };
            let at = Instant::now();
            waiter_locks.release(released).await.unwrap();
            at
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        holder.release(ReleaseRequest { name: name.clone(), lease_id: lease.lease_id }).await.unwrap();
        let released_at = Instant::now();
        handoffs.push(waiter.await.unwrap().saturating_duration_since(released_at));
    }
    handoffs.sort();
    eprintln!("hand-offs after the failover: {handoffs:?}");
    assert!(handoffs[1] < Duration::from_millis(300), "waiters are not woken on the new master: {handoffs:?}");
    // The resource saw strictly increasing tokens: no two writers out of token order.
    assert!(run.accepted.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(run.accepted.len() > grants_before, "no write accepted after the failover");
    for baton in &batons {
        assert!(baton.logs().iter().any(|line| line.contains("redis master changed")), "no switch logged");
        assert!(!baton.logs().iter().any(|line| line.contains("NOPERM")), "ACL denials in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_grants_wait_for_the_replica_of_the_master_the_sentinels_name() {
    let mut set = SentinelSet::start(Auth::none());
    let mut args = set.baton_args();
    args.extend(["--lock-min-replicas".to_owned(), "1".to_owned(), "--redis-timeout".to_owned(), "2s".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let baton = Baton::start(None, &args);
    wait_serving(&baton, "baton.v1.LockService").await;
    let mut locks = baton.locks().await;
    let request = |name: &str| AcquireRequest {
        name: name.to_owned(),
        ttl: Some(duration_to_proto(Duration::from_secs(10))),
        wait_timeout: None,
        owner: "replicated".into(),
        permits: 1,
        request_id: String::new(),
    };
    let granted = locks.acquire(request(&common::unique("replicated"))).await.unwrap().into_inner();
    assert!(granted.acquired, "the replica did not acknowledge the grant");

    // Without its replica the master cannot have a grant acknowledged: it is undone.
    let replica = set.data.iter().map(|node| node.port).find(|port| Some(*port) != set.master_port()).unwrap();
    set.node_on(replica).kill();
    let name = common::unique("unreplicated");
    let status = locks.acquire(request(&name)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let describe = baton::proto::v1::DescribeRequest { name };
    assert!(!locks.describe(describe).await.unwrap().into_inner().held, "an unacknowledged grant was kept");
}

// ─── Queues ────────────────────────────────────────────────────────────────────────────

type Queues = JobQueueServiceClient<Channel>;

/// Jobs by their index (the dedup key): when each enqueue was answered, deliveries, acks.
#[derive(Default)]
struct QueueRun {
    enqueued: HashMap<u32, (String, Instant)>,
    deliveries: HashMap<u32, u32>,
    acked: HashMap<u32, Instant>,
    /// Acks refused because the lease had moved on (the job was already re-delivered).
    stale_acks: u64,
    first_enqueue_after: Option<Instant>,
}

fn payload_index(payload: &[u8]) -> u32 {
    String::from_utf8_lossy(payload).parse().expect("numeric payload")
}

async fn worker(mut queues: Queues, queue: String, run: Arc<Mutex<QueueRun>>, done: Arc<tokio::sync::Notify>) {
    loop {
        let request = ConsumeRequest {
            queue: queue.clone(),
            max_in_flight: 8,
            visibility_timeout: Some(duration_to_proto(Duration::from_secs(3))),
            ..Default::default()
        };
        let stream = tokio::select! {
            () = done.notified() => return,
            stream = queues.consume(tokio_stream::once(request)) => stream,
        };
        let Ok(stream) = stream else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut stream = stream.into_inner();
        loop {
            let event = tokio::select! {
                () = done.notified() => return,
                event = stream.next() => event,
            };
            let Some(Ok(response)) = event else {
                break; // The stream ended (UNAVAILABLE): consume again.
            };
            let Some(consume_response::Event::Delivery(delivery)) = response.event else {
                continue;
            };
            let index = payload_index(&delivery.job.as_ref().unwrap().payload);
            *run.lock().unwrap().deliveries.entry(index).or_default() += 1;
            // Ack until it is answered: done, or refused because the lease is gone.
            loop {
                let ack = AckRequest { lease_id: delivery.lease_id.clone(), result: Vec::new() };
                match tokio::time::timeout(Duration::from_secs(5), queues.ack(ack)).await {
                    Ok(Ok(_)) => {
                        run.lock().unwrap().acked.entry(index).or_insert_with(Instant::now);
                        break;
                    }
                    Ok(Err(status)) if status.code() == Code::FailedPrecondition => {
                        run.lock().unwrap().stale_acks += 1;
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    }
}

async fn enqueue_until_answered(queues: &mut Queues, queue: &str, index: u32) -> String {
    loop {
        let request = EnqueueRequest {
            queue: queue.to_owned(),
            payload: index.to_string().into_bytes(),
            dedup_key: format!("job-{index}"),
            dedup_ttl: Some(duration_to_proto(Duration::from_secs(600))),
            ..Default::default()
        };
        match tokio::time::timeout(Duration::from_secs(5), queues.enqueue(request)).await {
            Ok(Ok(response)) => return response.into_inner().job_id,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn produce(producer: &mut Queues, queue: &str, indexes: std::ops::Range<u32>, run: &Mutex<QueueRun>) {
    for index in indexes {
        let job_id = enqueue_until_answered(producer, queue, index).await;
        run.lock().unwrap().enqueued.insert(index, (job_id, Instant::now()));
        if index % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn job_state(queues: &mut Queues, job_id: &str) -> Option<JobState> {
    loop {
        match queues.get_job(GetJobRequest { job_id: job_id.to_owned() }).await {
            Ok(response) => return JobState::try_from(response.into_inner().job.unwrap().state).ok(),
            Err(status) if status.code() == Code::NotFound => return None,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_loses_no_acked_job_and_every_job_is_delivered() {
    const JOBS: u32 = 600;
    let mut set = SentinelSet::start(Auth::requirepass("queue-secret"));
    let batons = [sentinel_baton(&set), sentinel_baton(&set)];
    for baton in &batons {
        wait_serving(baton, "baton.v1.JobQueueService").await;
    }
    let queue = common::unique("failover-queue");
    let run: Arc<Mutex<QueueRun>> = Arc::default();
    let done = Arc::new(tokio::sync::Notify::new());
    let mut workers = Vec::new();
    for n in 0..4 {
        let queues = batons[n % 2].queues().await;
        workers.push(tokio::spawn(worker(queues, queue.clone(), run.clone(), done.clone())));
    }

    // The producer enqueues steadily (10 jobs per 50 ms); the master dies a third of the way.
    let mut producer = batons[0].queues().await;
    produce(&mut producer, &queue, 0..JOBS / 3, &run).await;
    let (kill, old) = kill_master(&mut set);
    let ((new, promoted_at), ()) =
        tokio::join!(promoted(&set, old), produce(&mut producer, &queue, JOBS / 3..JOBS, &run));
    {
        let mut run = run.lock().unwrap();
        run.first_enqueue_after = run.enqueued.get(&(JOBS / 3)).map(|(_, at)| *at);
    }

    // Enqueues answered just before the kill may not have reached the replica: a careful
    // producer checks those it cannot be sure of, and sends again the ones that are gone.
    let doubtful: Vec<(u32, String)> = run
        .lock()
        .unwrap()
        .enqueued
        .iter()
        .filter(|(_, (_, at))| *at + REPLICATION_MARGIN > kill && *at <= kill)
        .map(|(index, (id, _))| (*index, id.clone()))
        .collect();
    let mut enqueues_lost = 0;
    for (index, job_id) in doubtful {
        if job_state(&mut producer, &job_id).await.is_none() {
            enqueues_lost += 1;
            let job_id = enqueue_until_answered(&mut producer, &queue, index).await;
            run.lock().unwrap().enqueued.insert(index, (job_id, Instant::now()));
        }
    }

    eventually(Duration::from_secs(60), "every job delivered and acked", || {
        let run = run.clone();
        async move { run.lock().unwrap().acked.len() == JOBS as usize }
    })
    .await;
    done.notify_waiters();
    for worker in workers {
        let _ = tokio::time::timeout(PATIENCE, worker).await;
    }

    let run = std::mem::take(&mut *run.lock().unwrap());
    // Every job acked before the failover (beyond the replication margin) stays done.
    let mut acked_before = 0;
    let mut undone = Vec::new();
    for (index, acked_at) in &run.acked {
        if *acked_at + REPLICATION_MARGIN <= kill {
            acked_before += 1;
            let state = job_state(&mut producer, &run.enqueued[index].0).await;
            if state != Some(JobState::Succeeded) {
                undone.push((*index, state));
            }
        }
    }
    let deliveries: u32 = run.deliveries.values().sum();
    let duplicates = deliveries - run.deliveries.len() as u32;
    let recovery = run.first_enqueue_after.expect("an enqueue after the kill").saturating_duration_since(kill);
    eprintln!(
        "queue failover {old} -> {new}: sentinels promoted after {:?}; first enqueue answered after {recovery:?}; \
         {JOBS} jobs, {deliveries} deliveries ({duplicates} duplicates), {} stale acks refused, {acked_before} \
         acked before the failover all checked, {enqueues_lost} answered enqueues lost and re-sent",
        promoted_at.saturating_duration_since(kill),
        run.stale_acks,
    );
    assert!(undone.is_empty(), "jobs acked before the failover are not done: {undone:?}");
    assert!(acked_before > 0, "no job was acked before the failover");
    assert_eq!(run.deliveries.len(), JOBS as usize, "a job was never delivered");
    assert!(recovery < RECOVERY_BOUND);
}
