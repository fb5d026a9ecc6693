//! Rolling restarts, worker shutdowns and frozen processes, on the server's side: a
//! draining replica takes no new work but keeps renewals and settlements working and
//! exits as soon as nothing is in flight; a worker drains its stream and hands back what it
//! never started at no attempt's cost; a holder that stops proving it is alive — a
//! SIGSTOPped process — loses its lease within its ttl.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::lock_service_client::LockServiceClient;
use baton::proto::v1::{
    AckRequest, AcquireRequest, ConsumeRequest, EnqueueRequest, ErrorReason, FetchRequest, GetJobRequest, JobState,
    KeepAliveRequest, RenewRequest, consume_response,
};
use common::{Baton, Clients, PATIENCE, Redis, eventually, next_event, reason_of, unique};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

fn acquire_request(name: &str, ttl: Duration, wait: Duration) -> AcquireRequest {
    AcquireRequest {
        name: name.to_owned(),
        ttl: Some(duration_to_proto(ttl)),
        wait_timeout: Some(duration_to_proto(wait)),
        owner: "test".into(),
        ..Default::default()
    }
}

fn assert_shutting_down(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason_of(status), ErrorReason::ShuttingDown);
    assert!(status.get_details_retry_info().is_some(), "no RetryInfo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_takes_no_new_work_keeps_renewals_and_exits_once_idle() {
    let redis = Redis::start();
    let delay = Duration::from_secs(2);
    let mut leaving = Baton::start(Some(&redis.url()), &["--shutdown-delay", "2s", "--shutdown-grace", "20s"]);
    let staying = Baton::start(Some(&redis.url()), &[]);
    let mut locks = leaving.locks().await;
    let name = unique("drained");
    let held = locks.acquire(acquire_request(&name, Duration::from_secs(30), Duration::ZERO)).await.unwrap();
    let held = held.into_inner().lease.unwrap();

    // A waiter on the leaving replica, and a Fetch waiting for someone else's fill.
    let waiter = {
        let mut locks = leaving.locks().await;
        let request = acquire_request(&name, Duration::from_secs(30), Duration::from_secs(15));
        tokio::spawn(async move { locks.acquire(request).await })
    };
    let mut cache = leaving.cache().await;
    let key = unique("page");
    let fetch = |wait: u64| FetchRequest {
        key: key.clone(),
        lease_ttl: Some(duration_to_proto(Duration::from_secs(30))),
        wait_timeout: Some(duration_to_proto(Duration::from_secs(wait))),
    };
    assert!(!cache.fetch(fetch(0)).await.unwrap().into_inner().fill_token.is_empty());
    let fetch_waiter = {
        let mut cache = leaving.cache().await;
        let request = fetch(15);
        tokio::spawn(async move { cache.fetch(request).await })
    };
    // Both reach baton and wait; a Fetch waiting leaves no trace outside baton to poll.
    tokio::time::sleep(Duration::from_millis(300)).await;

    leaving.sigterm();
    let sigterm = Instant::now();
    // The waiters are told to go elsewhere at once, and nothing is granted to them.
    let waited = tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("the waiter is answered").unwrap();
    assert_shutting_down(&waited.expect_err("a grant on a draining replica"));
    let fetched = tokio::time::timeout(Duration::from_secs(1), fetch_waiter).await.expect("answered").unwrap();
    assert_shutting_down(&fetched.expect_err("a Fetch wait on a draining replica"));

    // During the shutdown delay: new work is refused, renewals keep working.
    let other = unique("other");
    let status = locks.acquire(acquire_request(&other, Duration::from_secs(5), Duration::ZERO)).await.unwrap_err();
    assert_shutting_down(&status);
    let mut queues = leaving.queues().await;
    let consume = ConsumeRequest { queue: unique("q"), ..Default::default() };
    assert_shutting_down(&queues.consume(tokio_stream::once(consume)).await.unwrap_err());
    let renew = RenewRequest { name: name.clone(), lease_id: held.lease_id.clone(), ttl: None };
    let renewed = locks.renew(renew).await.expect("a renewal on a draining replica").into_inner().lease.unwrap();
    assert_eq!(renewed.fencing_token, held.fencing_token);
    assert!(sigterm.elapsed() < delay, "the checks outlasted the shutdown delay");

    // Nothing is in flight: it exits right after the delay, not at the end of the grace.
    let exit = tokio::task::spawn_blocking(move || leaving.wait_exit(PATIENCE)).await.unwrap();
    assert_eq!(exit.and_then(|status| status.code()), Some(0));
    let took = sigterm.elapsed();
    assert!(took < delay + Duration::from_secs(2), "exit took {took:?} with nothing in flight");

    // The lease was never lost, and nobody else was granted it.
    let mut other_locks = staying.locks().await;
    let busy = other_locks.acquire(acquire_request(&name, Duration::from_secs(5), Duration::ZERO)).await.unwrap();
    assert_eq!(busy.into_inner().holder.unwrap().fencing_token, held.fencing_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_worker_gets_nothing_more_and_unstarted_jobs_cost_no_attempt() {
    let redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("drain");
    let mut ids = Vec::new();
    for i in 0..12 {
        let request = EnqueueRequest { queue: queue.clone(), payload: vec![i], max_attempts: 1, ..Default::default() };
        ids.push(queues.enqueue(request).await.unwrap().into_inner().job_id);
    }
    let (steer, steering) = tokio::sync::mpsc::channel(4);
    steer.send(ConsumeRequest { queue: queue.clone(), max_in_flight: 5, ..Default::default() }).await.unwrap();
    let mut stream = queues.consume(ReceiverStream::new(steering)).await.unwrap().into_inner();
    let mut deliveries = Vec::new();
    while deliveries.len() < 5 {
        match next_event(&mut stream, PATIENCE).await {
            Some(consume_response::Event::Delivery(delivery)) => deliveries.push(delivery),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    // Stop: no more jobs; two were never started, three are finished.
    let unstarted: Vec<String> = deliveries[3..].iter().map(|d| d.lease_id.clone()).collect();
    steer.send(ConsumeRequest { drain: true, unstarted_lease_ids: unstarted, ..Default::default() }).await.unwrap();
    // The steering message and the Acks travel on different HTTP/2 streams: an Ack served
    // before the drain would rightly free a slot for one more delivery. The handed-back jobs
    // being ready again shows the drain was applied (the server applies both together).
    let handed_back: Vec<String> = deliveries[3..].iter().map(|d| d.job.as_ref().unwrap().job_id.clone()).collect();
    eventually(PATIENCE, "the unstarted jobs to be ready again", || {
        let mut queues = queues.clone();
        let handed_back = handed_back.clone();
        async move {
            for job_id in handed_back {
                let job = queues.get_job(GetJobRequest { job_id }).await.unwrap().into_inner().job.unwrap();
                if JobState::try_from(job.state).unwrap() != JobState::Ready {
                    return false;
                }
            }
            true
        }
    })
    .await;
    for delivery in &deliveries[..3] {
        queues.ack(AckRequest { lease_id: delivery.lease_id.clone(), result: Vec::new() }).await.unwrap();
    }
    // With nothing held, the server ends the stream cleanly, and delivered nothing more.
    let end = tokio::time::timeout(PATIENCE, stream.next()).await.expect("the drained stream ends");
    assert!(end.is_none(), "expected the end of the stream, got {end:?}");

    let mut states = Vec::new();
    for id in &ids {
        let job = queues.get_job(GetJobRequest { job_id: id.clone() }).await.unwrap().into_inner().job.unwrap();
        states.push((JobState::try_from(job.state).unwrap(), job.attempts));
    }
    let succeeded = states.iter().filter(|s| **s == (JobState::Succeeded, 1)).count();
    let untouched = states.iter().filter(|s| **s == (JobState::Ready, 0)).count();
    assert_eq!((succeeded, untouched), (3, 9), "{states:?}");

    // A steering message naming something that is not a lease of this queue is refused
    // by name; a spent lease of the queue is ignored.
    let (steer, steering) = tokio::sync::mpsc::channel(4);
    steer.send(ConsumeRequest { queue: queue.clone(), max_in_flight: 1, ..Default::default() }).await.unwrap();
    let mut stream = queues.consume(ReceiverStream::new(steering)).await.unwrap().into_inner();
    let Some(consume_response::Event::Delivery(in_hand)) = next_event(&mut stream, PATIENCE).await else {
        panic!("no delivery");
    };
    let spent = deliveries[0].lease_id.clone();
    steer.send(ConsumeRequest { unstarted_lease_ids: vec![spent], ..Default::default() }).await.unwrap();
    steer.send(ConsumeRequest { unstarted_lease_ids: vec!["nonsense".into()], ..Default::default() }).await.unwrap();
    let status = tokio::time::timeout(PATIENCE, stream.next()).await.unwrap().unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "unstarted_lease_ids[0]");
    // The refused stream keeps its lease: the worker may be running that job.
    let job_id = in_hand.job.unwrap().job_id;
    let job = queues.get_job(GetJobRequest { job_id }).await.unwrap().into_inner().job.unwrap();
    assert_eq!((JobState::try_from(job.state).unwrap(), job.attempts), (JobState::Active, 1));
    let ack = AckRequest { lease_id: in_hand.lease_id, result: Vec::new() };
    queues.ack(ack).await.expect("the lease is still good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stops_sending_heartbeats_loses_its_lease_within_the_ttl() {
    let redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &[]);
    let mut locks = baton.locks().await;
    let name = unique("silent");
    let ttl = Duration::from_secs(1);
    let lease = locks.acquire(acquire_request(&name, ttl, Duration::ZERO)).await.unwrap().into_inner().lease.unwrap();
    // The stream stays open (the sender is kept), but no heartbeat follows the first message.
    let (heartbeat, heartbeats) = tokio::sync::mpsc::channel(1);
    heartbeat
        .send(KeepAliveRequest { name: name.clone(), lease_id: lease.lease_id, ..Default::default() })
        .await
        .unwrap();
    let mut answers = locks.keep_alive(ReceiverStream::new(heartbeats)).await.unwrap().into_inner();
    answers.next().await.unwrap().expect("the first renewal");
    let silent_since = Instant::now();

    let mut other = baton.locks().await;
    let granted = other.acquire(acquire_request(&name, ttl, Duration::from_secs(5))).await.unwrap().into_inner();
    assert!(granted.acquired);
    let after = silent_since.elapsed();
    assert!(after <= ttl + Duration::from_millis(500), "a silent holder kept a {ttl:?} lease for {after:?}");
    let ended = tokio::time::timeout(PATIENCE, answers.next()).await.expect("the stream ends").unwrap();
    let status = ended.expect_err("a lost lease ends the stream with an error");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&status), ErrorReason::LeaseNotHeld);
    drop(heartbeat);
}

/// Run as a child process by the next test: holds a 1 s lease with heartbeats every ttl/3
/// until frozen or killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeating_holder_child_process() {
    let (Ok(addr), Ok(name)) = (std::env::var("BATON_CHILD_ADDR"), std::env::var("BATON_CHILD_LOCK")) else {
        return; // Not running as the child: nothing to do.
    };
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut locks = LockServiceClient::new(channel);
    let ttl = Duration::from_secs(1);
    let lease = locks.acquire(acquire_request(&name, ttl, Duration::ZERO)).await.unwrap().into_inner().lease.unwrap();
    let request = KeepAliveRequest { name, lease_id: lease.lease_id, ..Default::default() };
    let (heartbeats, _sending) = common::heartbeats(request, ttl / 3);
    let mut answers = locks.keep_alive(heartbeats).await.unwrap().into_inner();
    answers.next().await.unwrap().unwrap();
    println!("HOLDING");
    while answers.next().await.is_some() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_holder_loses_its_one_second_lease_within_two_seconds() {
    let redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &[]);
    let name = unique("frozen");
    let addr = baton.addr.to_string();
    let env = [("BATON_CHILD_ADDR", addr.as_str()), ("BATON_CHILD_LOCK", name.as_str())];
    let mut child =
        common::spawn_holding_child("heartbeating_holder_child_process", &env, "the child never held the lock").await;
    // Held well past its ttl while the holder is alive.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut locks = baton.locks().await;
    let busy = locks.acquire(acquire_request(&name, Duration::from_secs(1), Duration::ZERO)).await.unwrap();
    assert!(!busy.into_inner().acquired, "a heartbeating holder lost its lease");

    testkit::signal(child.id(), libc::SIGSTOP);
    let frozen_at = Instant::now();
    let granted = locks.acquire(acquire_request(&name, Duration::from_secs(1), Duration::from_secs(10))).await;
    let after = frozen_at.elapsed();
    testkit::signal(child.id(), libc::SIGCONT);
    let _ = child.kill();
    let _ = child.wait();
    assert!(granted.unwrap().into_inner().acquired);
    assert!(after <= Duration::from_secs(2), "a frozen holder kept its 1 s lease for {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_heartbeat_is_answered_in_order_and_only_renewals_say_so() {
    let redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &["--redis-timeout", "200ms"]);
    let mut locks = baton.locks().await;
    let name = unique("answered");
    let ttl = Duration::from_secs(3);
    let lease = locks.acquire(acquire_request(&name, ttl, Duration::ZERO)).await.unwrap().into_inner().lease.unwrap();
    let (heartbeat, heartbeats) = tokio::sync::mpsc::channel(8);
    let first = KeepAliveRequest { name: name.clone(), lease_id: lease.lease_id.clone(), ..Default::default() };
    heartbeat.send(first).await.unwrap();
    let mut answers = locks.keep_alive(ReceiverStream::new(heartbeats)).await.unwrap().into_inner();
    let mut next = async || tokio::time::timeout(PATIENCE, answers.next()).await.unwrap().unwrap().unwrap();
    assert!(next().await.renewed, "the first message renews");

    // Two heartbeats at once: the second comes within ttl/10 of the first's renewal.
    tokio::time::sleep(ttl / 5).await;
    heartbeat.send(KeepAliveRequest::default()).await.unwrap();
    heartbeat.send(KeepAliveRequest::default()).await.unwrap();
    assert_eq!((next().await.renewed, next().await.renewed), (true, false));

    // Redis frozen: the heartbeat is still answered, not renewed; then renewed again.
    tokio::time::sleep(ttl / 5).await;
    redis.freeze();
    heartbeat.send(KeepAliveRequest::default()).await.unwrap();
    let during = next().await;
    redis.thaw();
    assert!(!during.renewed, "renewed while Redis was frozen");
    tokio::time::sleep(ttl / 5).await;
    heartbeat.send(KeepAliveRequest::default()).await.unwrap();
    let after = next().await;
    assert!(after.renewed);
    assert_eq!(after.lease.unwrap().fencing_token, lease.fencing_token);

    // A half-close stops the heartbeats but releases nothing: the lease runs out its ttl.
    drop(heartbeat);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = locks.acquire(acquire_request(&name, ttl, Duration::ZERO)).await.unwrap().into_inner();
    assert!(!busy.acquired, "a half-close released the lease");
    let status = tokio::time::timeout(PATIENCE, answers.next()).await.unwrap().unwrap().unwrap_err();
    assert_eq!(reason_of(&status), ErrorReason::LeaseNotHeld);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_only_to_hand_back_and_drain_delivers_nothing() {
    let redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("hand-back-only");
    for i in 0..4 {
        let request = EnqueueRequest { queue: queue.clone(), payload: vec![i], ..Default::default() };
        queues.enqueue(request).await.unwrap();
    }
    // An earlier stream's deliveries, never started; that stream is still open.
    let (first_steer, steering) = tokio::sync::mpsc::channel(1);
    first_steer.send(ConsumeRequest { queue: queue.clone(), max_in_flight: 2, ..Default::default() }).await.unwrap();
    let mut earlier = queues.consume(ReceiverStream::new(steering)).await.unwrap().into_inner();
    let mut unstarted = Vec::new();
    while unstarted.len() < 2 {
        if let Some(consume_response::Event::Delivery(delivery)) = next_event(&mut earlier, PATIENCE).await {
            unstarted.push(delivery.lease_id);
        }
    }
    let opening = ConsumeRequest {
        queue: queue.clone(),
        max_in_flight: 8,
        drain: true,
        unstarted_lease_ids: unstarted,
        ..Default::default()
    };
    let mut stream = queues.consume(tokio_stream::once(opening)).await.unwrap().into_inner();
    let end = tokio::time::timeout(PATIENCE, stream.next()).await.expect("the stream ends");
    assert!(end.is_none(), "expected a clean end with no delivery, got {end:?}");
    let stats = queues.get_queue_stats(baton::proto::v1::GetQueueStatsRequest { queue }).await.unwrap().into_inner();
    assert_eq!((stats.ready, stats.active), (4, 0), "{stats:?}");
}
