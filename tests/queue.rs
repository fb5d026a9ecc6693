//! JobQueueService against a real Redis: no job lost or duplicated across consumers and
//! baton processes, redelivery after consumer and baton deaths, fenced leases, retries and
//! dead letters, priorities, delays, dedup, cancellation, credit, pause, bad input.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::{
    AckBatchRequest, AckRequest, Backoff, CancelJobRequest, ConsumeRequest, ConsumeResponse, Delivery,
    EnqueueBatchRequest, EnqueueRequest, ErrorReason, GetJobRequest, GetQueueStatsRequest, JobState,
    ListDeadJobsRequest, NackRequest, PauseQueueRequest, ResumeQueueRequest, RetryDeadJobsRequest, consume_response,
    enqueue_request,
};
use common::{Baton, Clients, PATIENCE, Redis, Server, eventually, reason_of, unique};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

type Queues = JobQueueServiceClient<Channel>;

fn job(queue: &str, payload: &str) -> EnqueueRequest {
    EnqueueRequest { queue: queue.to_owned(), payload: payload.as_bytes().to_vec(), ..Default::default() }
}

async fn enqueue(queues: &mut Queues, request: EnqueueRequest) -> String {
    queues.enqueue(request).await.expect("enqueue").into_inner().job_id
}

async fn consume(
    queues: &mut Queues,
    queue: &str,
    max_in_flight: u32,
    visibility: Duration,
) -> tonic::Streaming<ConsumeResponse> {
    let request = ConsumeRequest {
        queue: queue.to_owned(),
        max_in_flight,
        visibility_timeout: Some(duration_to_proto(visibility)),
        ..Default::default()
    };
    queues.consume(tokio_stream::once(request)).await.expect("consume").into_inner()
}

use common::next_event;

async fn next_delivery(stream: &mut tonic::Streaming<ConsumeResponse>, patience: Duration) -> Option<Delivery> {
    match next_event(stream, patience).await {
        Some(consume_response::Event::Delivery(delivery)) => Some(delivery),
        Some(other) => panic!("expected a delivery, got {other:?}"),
        None => None,
    }
}

async fn ack(queues: &mut Queues, delivery: &Delivery) -> Result<(), tonic::Status> {
    queues.ack(AckRequest { lease_id: delivery.lease_id.clone(), result: Vec::new() }).await.map(drop)
}

async fn job_state(queues: &mut Queues, job_id: &str) -> JobState {
    let job = queues.get_job(GetJobRequest { job_id: job_id.to_owned() }).await.unwrap().into_inner().job.unwrap();
    JobState::try_from(job.state).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_over_eight_streams_and_two_batons_are_each_delivered_once() {
    let redis = Redis::start();
    let batons = [Server::start(&redis.url(), &[]), Server::start(&redis.url(), &[])];
    let queue = unique("bulk");
    let mut producer = batons[0].queues().await;
    let mut expected = HashSet::new();
    for batch in 0..10 {
        let requests = (0..1000).map(|i| job(&queue, &format!("{batch}-{i}"))).collect();
        let results = producer.enqueue_batch(EnqueueBatchRequest { requests }).await.unwrap().into_inner().results;
        expected.extend(results.into_iter().map(|r| r.job_id));
    }
    assert_eq!(expected.len(), 10_000);

    let seen: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for worker in 0..8 {
        let mut queues = batons[worker % 2].queues().await;
        let (queue, seen) = (queue.clone(), seen.clone());
        workers.push(tokio::spawn(async move {
            let mut stream = consume(&mut queues, &queue, 16, Duration::from_secs(60)).await;
            // A worker stops after 2 s without work: the queue has drained.
            while let Some(delivery) = next_delivery(&mut stream, Duration::from_secs(2)).await {
                let job_id = delivery.job.as_ref().unwrap().job_id.clone();
                *seen.lock().unwrap().entry(job_id).or_default() += 1;
                ack(&mut queues, &delivery).await.expect("ack");
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.len(), 10_000, "jobs lost");
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "delivered twice: {duplicates:?}");
    assert!(seen.keys().all(|id| expected.contains(id)));
    let stats = producer.get_queue_stats(GetQueueStatsRequest { queue }).await.unwrap().into_inner();
    assert_eq!((stats.ready, stats.active, stats.scheduled, stats.dead), (0, 0, 0, 0));
}

/// Run as a child process by the next test: leases 50 jobs and holds them until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_consumer_child_process() {
    let (Ok(addr), Ok(queue)) = (std::env::var("BATON_CHILD_ADDR"), std::env::var("BATON_CHILD_QUEUE")) else {
        return; // Not running as the child: nothing to do.
    };
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut queues = JobQueueServiceClient::new(channel);
    let mut stream = consume(&mut queues, &queue, 50, Duration::from_secs(120)).await;
    for _ in 0..50 {
        next_delivery(&mut stream, PATIENCE).await.expect("a job for the child");
    }
    println!("HOLDING");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_killed_consumer_process_are_redelivered_at_once() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("killed-consumer");
    let requests = (0..50).map(|i| job(&queue, &i.to_string())).collect();
    queues.enqueue_batch(EnqueueBatchRequest { requests }).await.unwrap();

    let env = [("BATON_CHILD_ADDR", baton.addr.to_string()), ("BATON_CHILD_QUEUE", queue.clone())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut child =
        common::spawn_holding_child("queue_consumer_child_process", &env, "the child never leased its jobs").await;
    let stats = queues.get_queue_stats(GetQueueStatsRequest { queue: queue.clone() }).await.unwrap().into_inner();
    assert_eq!((stats.active, stats.ready), (50, 0));

    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = Instant::now();
    let mut stream = consume(&mut queues, &queue, 64, Duration::from_secs(60)).await;
    let mut redelivered = HashSet::new();
    while redelivered.len() < 50 {
        let delivery = next_delivery(&mut stream, PATIENCE).await.expect("redelivery");
        assert_eq!(delivery.attempt, 2);
        redelivered.insert(delivery.job.unwrap().job_id);
    }
    // The visibility timeout was 120 s: only the disconnect can have returned them.
    assert!(killed_at.elapsed() < Duration::from_secs(5), "took {:?}", killed_at.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_a_sigkilled_baton_return_after_the_visibility_timeout() {
    let redis = Redis::start();
    let mut doomed = Baton::start(Some(&redis.url()), &[]);
    let survivor = Baton::start(Some(&redis.url()), &[]);
    let queue = unique("killed-baton");
    let mut queues = survivor.queues().await;
    for i in 0..5 {
        enqueue(&mut queues, job(&queue, &i.to_string())).await;
    }
    let visibility = Duration::from_secs(2);
    let mut doomed_queues = doomed.queues().await;
    let mut stream = consume(&mut doomed_queues, &queue, 5, visibility).await;
    for _ in 0..5 {
        next_delivery(&mut stream, PATIENCE).await.unwrap();
    }
    doomed.sigkill();
    let killed_at = Instant::now();
    let mut other = consume(&mut queues, &queue, 5, Duration::from_secs(60)).await;
    let mut redelivered = 0;
    while redelivered < 5 {
        let delivery = next_delivery(&mut other, PATIENCE).await.expect("redelivered");
        assert_eq!(delivery.attempt, 2);
        redelivered += 1;
    }
    let took = killed_at.elapsed();
    assert!(took >= visibility - Duration::from_millis(300), "redelivered {took:?} after the kill, before the timeout");
    assert!(took <= visibility + Duration::from_secs(3), "redelivered only {took:?} after the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_unavailable_and_acks_go_through_the_other_baton() {
    let redis = Redis::start();
    let leaving = Baton::start(Some(&redis.url()), &["--shutdown-delay", "100ms"]);
    let staying = Baton::start(Some(&redis.url()), &[]);
    let queue = unique("drained");
    let mut queues = staying.queues().await;
    for i in 0..3 {
        enqueue(&mut queues, job(&queue, &i.to_string())).await;
    }
    let mut stream = consume(&mut leaving.queues().await, &queue, 3, Duration::from_secs(60)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next_delivery(&mut stream, PATIENCE).await.unwrap());
    }
    leaving.sigterm();
    let ended = common::final_status(&mut stream).await;
    assert_eq!(ended.code(), Code::Unavailable);
    assert_eq!(reason_of(&ended), ErrorReason::ShuttingDown);
    for delivery in &held {
        ack(&mut queues, delivery).await.expect("ack through the other baton");
        assert_eq!(job_state(&mut queues, &delivery.job.as_ref().unwrap().job_id).await, JobState::Succeeded);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_lease_cannot_ack_a_newer_delivery() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("fenced");
    enqueue(&mut queues, job(&queue, "x")).await;
    let mut first = consume(&mut queues, &queue, 1, Duration::from_secs(1)).await;
    let old = next_delivery(&mut first, PATIENCE).await.unwrap();
    drop(first);
    // Handed back when the stream closed; the next stream gets a new delivery.
    let mut second = consume(&mut queues, &queue, 1, Duration::from_secs(30)).await;
    let new = next_delivery(&mut second, PATIENCE).await.unwrap();
    assert_eq!(new.job.as_ref().unwrap().job_id, old.job.as_ref().unwrap().job_id);
    assert_eq!(new.attempt, 2);

    let status = ack(&mut queues, &old).await.expect_err("an old lease");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&status), ErrorReason::JobNotLeased);
    let nack = NackRequest { lease_id: old.lease_id.clone(), ..Default::default() };
    assert_eq!(queues.nack(nack).await.unwrap_err().code(), Code::FailedPrecondition);
    ack(&mut queues, &new).await.expect("the current lease acks");
    ack(&mut queues, &new).await.expect("a repeated ack is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_always_fails_dies_after_max_attempts_respecting_backoff_and_can_be_redriven() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("poison");
    let backoff = Duration::from_millis(400);
    let request = EnqueueRequest {
        max_attempts: 3,
        backoff: Some(Backoff { initial: Some(duration_to_proto(backoff)), max: None, multiplier: 1.0 }),
        ..job(&queue, "bad")
    };
    let job_id = enqueue(&mut queues, request).await;
    let mut stream = consume(&mut queues, &queue, 1, Duration::from_secs(30)).await;
    let mut last_nack: Option<Instant> = None;
    for attempt in 1..=3 {
        let delivery = next_delivery(&mut stream, PATIENCE).await.expect("a delivery");
        if let Some(nacked_at) = last_nack {
            let gap = nacked_at.elapsed();
            assert!(gap >= backoff - Duration::from_millis(20), "attempt {attempt} came {gap:?} after the nack");
        }
        assert_eq!(delivery.attempt, attempt);
        let delivered = delivery.job.as_ref().unwrap();
        assert_eq!((delivered.attempts, delivered.state()), (attempt, JobState::Active), "the delivered job");
        let request =
            NackRequest { lease_id: delivery.lease_id, error: format!("boom {attempt}"), ..Default::default() };
        let state = queues.nack(request).await.unwrap().into_inner().state;
        last_nack = Some(Instant::now());
        let expected = if attempt < 3 { JobState::Failed } else { JobState::Dead };
        assert_eq!(JobState::try_from(state).unwrap(), expected);
    }
    assert!(next_delivery(&mut stream, Duration::from_millis(1500)).await.is_none(), "a dead job was delivered");
    assert_eq!(job_state(&mut queues, &job_id).await, JobState::Dead);
    let dead = queues
        .list_dead_jobs(ListDeadJobsRequest { queue: queue.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.jobs.len(), 1);
    assert_eq!(dead.jobs[0].last_error, "boom 3");

    let retried = queues
        .retry_dead_jobs(RetryDeadJobsRequest { queue: queue.clone(), job_ids: vec![] })
        .await
        .unwrap()
        .into_inner()
        .retried;
    assert_eq!(retried, 1);
    let delivery = next_delivery(&mut stream, PATIENCE).await.expect("redriven");
    assert_eq!(delivery.job.unwrap().job_id, job_id);
    assert_eq!(delivery.attempt, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_first_then_fifo_within_a_priority() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("priorities");
    let mut expected: Vec<(i32, usize, String)> = Vec::new();
    for i in 0..30 {
        let priority = [0, 10, -5][i % 3];
        let id = enqueue(&mut queues, EnqueueRequest { priority, ..job(&queue, &i.to_string()) }).await;
        expected.push((-priority, i, id));
    }
    expected.sort();
    let mut stream = consume(&mut queues, &queue, 1, Duration::from_secs(30)).await;
    for (_, _, id) in expected {
        let delivery = next_delivery(&mut stream, PATIENCE).await.unwrap();
        assert_eq!(delivery.job.as_ref().unwrap().job_id, id);
        ack(&mut queues, &delivery).await.unwrap();
    }
}

/// A delivered job travels from Redis packed (fetch.lua's cmsgpack): every length class of
/// msgpack string and every byte value arrives as enqueued, and so does each field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_carry_every_payload_size_and_byte_exactly() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("packed");
    // The bounds of msgpack's fixstr, str8, str16 and str32, and the largest payload allowed.
    let sizes = [0, 1, 31, 32, 255, 256, 65_535, 65_536, 1024 * 1024];
    let mut sent = HashMap::new();
    for (n, size) in sizes.into_iter().enumerate() {
        let payload: Vec<u8> = (0..size).map(|i| ((i * 7 + n) % 256) as u8).collect();
        let request = EnqueueRequest {
            r#type: format!("tÿpe-{size}"),
            priority: n as i32 - 4,
            max_attempts: 3 + n as u32,
            payload: payload.clone(),
            ..job(&queue, "")
        };
        sent.insert(enqueue(&mut queues, request).await, (n, payload));
    }
    let mut stream = consume(&mut queues, &queue, sizes.len() as u32, Duration::from_secs(30)).await;
    for _ in 0..sizes.len() {
        let delivery = next_delivery(&mut stream, PATIENCE).await.expect("delivered");
        let job = delivery.job.as_ref().unwrap();
        let (n, payload) = sent.remove(&job.job_id).expect("a job enqueued once, delivered once");
        assert!(
            job.payload == payload,
            "job {n}: payload of {} bytes arrived as {} bytes",
            payload.len(),
            job.payload.len()
        );
        assert_eq!(
            (job.r#type.as_str(), job.priority, job.max_attempts, job.attempts, delivery.attempt),
            (format!("tÿpe-{}", payload.len()).as_str(), n as i32 - 4, 3 + n as u32, 1, 1),
        );
        assert_eq!(JobState::try_from(job.state).unwrap(), JobState::Active);
        ack(&mut queues, &delivery).await.unwrap();
    }
}

/// The next `deliveries` event of a stream opened with `batch_deliveries`.
async fn next_batch(stream: &mut tonic::Streaming<ConsumeResponse>) -> Vec<Delivery> {
    match next_event(stream, PATIENCE).await {
        Some(consume_response::Event::Deliveries(batch)) => batch.deliveries,
        other => panic!("expected a batch of deliveries, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_deliveries_bring_a_fetch_in_few_messages_each_under_the_byte_bound() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("batched");
    let requests = (0..100).map(|i| job(&queue, &format!("small-{i}"))).collect();
    queues.enqueue_batch(EnqueueBatchRequest { requests }).await.unwrap();
    let request = ConsumeRequest {
        queue: queue.clone(),
        max_in_flight: 200,
        visibility_timeout: Some(duration_to_proto(Duration::from_secs(30))),
        batch_deliveries: true,
        ..Default::default()
    };
    let mut stream = queues.consume(tokio_stream::once(request)).await.unwrap().into_inner();

    // Ready before the stream opened: one fetch takes them all, in one message or few.
    let (mut payloads, mut messages, mut leases) = (Vec::new(), 0, Vec::new());
    while payloads.len() < 100 {
        messages += 1;
        for delivery in next_batch(&mut stream).await {
            payloads.push(String::from_utf8(delivery.job.unwrap().payload).unwrap());
            leases.push(AckRequest { lease_id: delivery.lease_id, result: Vec::new() });
        }
    }
    assert!(messages <= 5, "100 ready jobs came in {messages} messages");
    assert_eq!(payloads, (0..100).map(|i| format!("small-{i}")).collect::<Vec<_>>(), "each once, in order");
    let results = queues.ack_batch(AckBatchRequest { acks: leases }).await.unwrap().into_inner().results;
    assert!(results.iter().all(|result| result.acked));

    // Large payloads: no batch holds more than 1 MiB of them, so each of these goes alone.
    let large = 700 * 1024;
    let requests = (0..3).map(|i| EnqueueRequest { payload: vec![i; large], ..job(&queue, "") }).collect();
    queues.enqueue_batch(EnqueueBatchRequest { requests }).await.unwrap();
    let mut received = Vec::new();
    while received.len() < 3 {
        let batch = next_batch(&mut stream).await;
        assert_eq!(batch.len(), 1, "two payloads of {large} bytes in one batch");
        received.extend(batch.into_iter().map(|delivery| delivery.job.unwrap().payload));
    }
    assert_eq!(received, (0..3).map(|i| vec![i; large]).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_deliveries_stay_under_the_message_bound_whatever_the_jobs_carry_besides_payloads() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("errors");
    let requests = (0..40).map(|i| job(&queue, &format!("j{i}"))).collect();
    queues.enqueue_batch(EnqueueBatchRequest { requests }).await.unwrap();
    // Each job fails once with a 60 KiB error: tiny payloads, 2.4 MiB of jobs in all.
    let mut stream = consume(&mut queues, &queue, 40, Duration::from_secs(30)).await;
    for _ in 0..40 {
        let delivery = next_delivery(&mut stream, PATIENCE).await.expect("delivered");
        let nack = NackRequest {
            lease_id: delivery.lease_id,
            error: "e".repeat(60 * 1024),
            retry_after: Some(duration_to_proto(Duration::from_millis(1))),
            ..Default::default()
        };
        queues.nack(nack).await.unwrap();
    }
    drop(stream);
    let request = ConsumeRequest { queue, max_in_flight: 40, batch_deliveries: true, ..Default::default() };
    let mut stream = queues.consume(tokio_stream::once(request)).await.unwrap().into_inner();
    let mut received = 0;
    while received < 40 {
        let batch = next_batch(&mut stream).await;
        let bytes: usize = batch.iter().map(prost::Message::encoded_len).sum();
        assert!(batch.len() == 1 || bytes <= 1 << 20, "{} deliveries in {bytes} bytes", batch.len());
        assert!(batch.iter().all(|delivery| delivery.job.as_ref().unwrap().last_error.len() == 60 * 1024));
        received += batch.len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_is_never_delivered_early() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("delayed");
    let mut stream = consume(&mut queues, &queue, 1, Duration::from_secs(30)).await;
    let delay = Duration::from_millis(500);
    let enqueued_at = Instant::now();
    let request = EnqueueRequest {
        schedule: Some(enqueue_request::Schedule::Delay(duration_to_proto(delay))),
        ..job(&queue, "later")
    };
    let job_id = enqueue(&mut queues, request).await;
    assert_eq!(job_state(&mut queues, &job_id).await, JobState::Scheduled);
    let delivery = next_delivery(&mut stream, PATIENCE).await.expect("delivered");
    let after = enqueued_at.elapsed();
    assert!(after >= delay, "delivered after {after:?}");
    eprintln!("delayed job delivered {:?} late", after - delay);
    assert!(after <= delay + Duration::from_secs(2), "delivered only after {after:?}");
    assert_eq!(delivery.job.unwrap().job_id, job_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_dedup_key_returns_the_first_job() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("dedup");
    let request = EnqueueRequest { dedup_key: "invoice-7".into(), ..job(&queue, "send") };
    let first = queues.enqueue(request.clone()).await.unwrap().into_inner();
    let second = queues.enqueue(request).await.unwrap().into_inner();
    assert!(!first.duplicate && second.duplicate);
    assert_eq!(first.job_id, second.job_id);
    let stats = queues.get_queue_stats(GetQueueStatsRequest { queue }).await.unwrap().into_inner();
    assert_eq!(stats.ready, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_active_job_tells_its_holder_and_refuses_its_ack() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("cancel");
    let waiting = enqueue(&mut queues, EnqueueRequest { priority: -1, ..job(&queue, "later") }).await;
    let active = enqueue(&mut queues, job(&queue, "now")).await;
    let mut stream = consume(&mut queues, &queue, 1, Duration::from_secs(30)).await;
    let delivery = next_delivery(&mut stream, PATIENCE).await.unwrap();
    assert_eq!(delivery.job.as_ref().unwrap().job_id, active);

    // A waiting job is simply removed.
    queues.cancel_job(CancelJobRequest { job_id: waiting.clone() }).await.unwrap();
    assert_eq!(job_state(&mut queues, &waiting).await, JobState::Cancelled);

    let cancelled = queues.cancel_job(CancelJobRequest { job_id: active.clone() }).await.unwrap().into_inner();
    assert!(cancelled.cancelled);
    match next_event(&mut stream, PATIENCE).await {
        Some(consume_response::Event::Cancelled(notice)) => {
            assert_eq!(notice.job_id, active);
            assert_eq!(notice.lease_id, delivery.lease_id);
        }
        other => panic!("expected JobCancelled, got {other:?}"),
    }
    let status = ack(&mut queues, &delivery).await.expect_err("ack of a cancelled job");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason_of(&status), ErrorReason::JobCancelled);
    assert_eq!(job_state(&mut queues, &active).await, JobState::Cancelled);
    // The cancellation freed the stream's credit, and the cancelled waiting job never comes.
    assert!(next_delivery(&mut stream, Duration::from_millis(1500)).await.is_none());
    let missing = baton::ids::new_job_id(&queue);
    assert_eq!(queues.cancel_job(CancelJobRequest { job_id: missing }).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_streams_use_a_constant_number_of_redis_connections() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let queues = baton.queues().await;
    let queue = unique("idle");
    let mut streams = Vec::new();
    for _ in 0..1000 {
        streams.push(consume(&mut queues.clone(), &queue, 1, Duration::from_secs(30)).await);
    }
    // The claim is that nothing grows: give a per-stream connection, if there were one,
    // time to appear. A poll cannot wait for something that should never happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut redis.connection()).unwrap();
    let connections = clients.lines().count();
    eprintln!("redis connections with 1000 idle consumers: {connections}");
    assert!(connections <= 5, "{connections} connections:\n{clients}");
    // They are live: one job reaches exactly one of them.
    let mut producer = queues.clone();
    let job_id = enqueue(&mut producer, job(&queue, "wake")).await;
    eventually(PATIENCE, "job delivered", || {
        let (mut producer, job_id) = (producer.clone(), job_id.clone());
        async move { job_state(&mut producer, &job_id).await == JobState::Active }
    })
    .await;
}

/// Acks freeing credit must wake the stream well before its 1 s safety re-check, whether
/// they go through the stream's own baton (told directly) or another (told over pub/sub).
async fn credit_is_counted_right(ack_through_the_other_baton: bool) {
    let redis = Redis::start();
    let (a, b) = (Server::start(&redis.url(), &[]), Server::start(&redis.url(), &[]));
    let queue = unique("credit");
    let mut through_b = b.queues().await;
    for i in 0..20 {
        enqueue(&mut through_b, job(&queue, &i.to_string())).await;
    }
    let mut through_a = a.queues().await;
    let mut stream = consume(&mut through_a, &queue, 4, Duration::from_secs(30)).await;
    let acker = if ack_through_the_other_baton { &mut through_b } else { &mut through_a };
    let mut outstanding: Vec<Delivery> = Vec::new();
    let mut received = 0;
    while received < 20 {
        match next_delivery(&mut stream, Duration::from_millis(700)).await {
            Some(delivery) => {
                received += 1;
                outstanding.push(delivery);
                assert!(outstanding.len() <= 4, "{} outstanding with max_in_flight 4", outstanding.len());
            }
            None => {
                assert_eq!(outstanding.len(), 4, "the stream stalled with free credit");
                let settled = outstanding.remove(0);
                ack(acker, &settled).await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_is_counted_right_when_acks_go_through_another_baton() {
    credit_is_counted_right(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_is_counted_right_when_acks_go_through_the_streams_own_baton() {
    credit_is_counted_right(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_batch_settles_each_lease_on_its_own_merits_across_queues_and_frees_credit() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let (first, second) = (unique("batch-a"), unique("batch-b"));
    let mut first_jobs = Vec::new();
    for i in 0..8 {
        first_jobs.push(enqueue(&mut queues, job(&first, &i.to_string())).await);
    }
    let second_job = enqueue(&mut queues, job(&second, "b")).await;
    let mut first_stream = consume(&mut queues, &first, 4, Duration::from_secs(30)).await;
    let mut second_stream = consume(&mut queues, &second, 4, Duration::from_secs(30)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(next_delivery(&mut first_stream, PATIENCE).await.expect("a job of the first queue"));
    }
    let other = next_delivery(&mut second_stream, PATIENCE).await.expect("the second queue's job");

    // Already acked (answers acked again), cancelled under its holder, forged, and plain.
    ack(&mut queues, &held[0]).await.unwrap();
    let cancelled = held[1].job.as_ref().unwrap().job_id.clone();
    queues.cancel_job(CancelJobRequest { job_id: cancelled.clone() }).await.unwrap();
    let unknown = {
        let (token, job_id) = held[2].lease_id.split_once('.').unwrap();
        format!("{}.{job_id}", "0".repeat(token.len()))
    };
    let lease_ids = [held[0].lease_id.clone(), held[1].lease_id.clone(), unknown, held[3].lease_id.clone()];
    let mut acks: Vec<AckRequest> =
        lease_ids.into_iter().map(|lease_id| AckRequest { lease_id, result: b"done".to_vec() }).collect();
    acks.push(AckRequest { lease_id: other.lease_id.clone(), result: Vec::new() });
    let results = queues.ack_batch(AckBatchRequest { acks }).await.unwrap().into_inner().results;
    let outcomes: Vec<(bool, &str)> = results.iter().map(|r| (r.acked, r.reason.as_str())).collect();
    assert_eq!(
        outcomes,
        [(true, ""), (false, "JOB_CANCELLED"), (false, "JOB_NOT_LEASED"), (true, ""), (true, "")],
        "per-lease outcomes, in order"
    );
    let job_of = |delivery: &Delivery| delivery.job.as_ref().unwrap().job_id.clone();
    assert_eq!(job_state(&mut queues, &job_of(&held[3])).await, JobState::Succeeded);
    assert_eq!(job_state(&mut queues, &second_job).await, JobState::Succeeded);
    assert_eq!(job_state(&mut queues, &job_of(&held[2])).await, JobState::Active, "a forged lease settles nothing");
    assert_eq!(job_state(&mut queues, &cancelled).await, JobState::Cancelled);

    // Three of the four leases are settled: the stream refills well before its 1 s re-check.
    let mut refilled = 0;
    while let Some(event) = next_event(&mut first_stream, Duration::from_millis(700)).await {
        if let consume_response::Event::Delivery(delivery) = event {
            assert!(first_jobs.contains(&job_of(&delivery)));
            refilled += 1;
        }
    }
    assert_eq!(refilled, 3, "credit freed by the batch is used at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_batches_and_credit_go_through_whole() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("bulk");
    let mut enqueued = HashSet::new();
    for batch in [1000, 500] {
        let requests = (0..batch).map(|i| job(&queue, &i.to_string())).collect();
        let results = queues.enqueue_batch(EnqueueBatchRequest { requests }).await.unwrap().into_inner().results;
        enqueued.extend(results.into_iter().map(|result| result.job_id));
    }
    assert_eq!(enqueued.len(), 1500);
    let mut stream = consume(&mut queues, &queue, 1000, Duration::from_secs(60)).await;
    let mut delivered = HashSet::new();
    let mut leases = Vec::new();
    while leases.len() < 1000 {
        let delivery = next_delivery(&mut stream, PATIENCE).await.expect("a full credit's worth of jobs");
        assert!(delivered.insert(delivery.job.as_ref().unwrap().job_id.clone()), "delivered twice");
        leases.push(delivery.lease_id);
    }
    let acks = leases.into_iter().map(|lease_id| AckRequest { lease_id, result: Vec::new() }).collect();
    let results = queues.ack_batch(AckBatchRequest { acks }).await.unwrap().into_inner().results;
    assert!(results.iter().all(|result| result.acked), "every held lease acks");
    while delivered.len() < 1500 {
        let delivery = next_delivery(&mut stream, PATIENCE).await.expect("the rest, once the credit is back");
        assert!(delivered.insert(delivery.job.as_ref().unwrap().job_id.clone()), "delivered twice");
    }
    assert_eq!(delivered, enqueued);
    let stats = queues.get_queue_stats(GetQueueStatsRequest { queue }).await.unwrap().into_inner();
    assert_eq!((stats.ready, stats.active), (0, 500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_announced_once_and_acks_through_the_streams_baton_announce_nothing() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("announce");
    let mut stream = consume(&mut queues, &queue, 64, Duration::from_secs(30)).await;
    let published = redis.record_published();
    let requests = (0..50).map(|i| job(&queue, &i.to_string())).collect();
    queues.enqueue_batch(EnqueueBatchRequest { requests }).await.unwrap();
    for _ in 0..50 {
        let delivery = next_delivery(&mut stream, PATIENCE).await.expect("every job of the batch is delivered");
        ack(&mut queues, &delivery).await.unwrap();
    }
    // One more job, announced on its own, marks the end of what the batch caused.
    enqueue(&mut queues, job(&queue, "last")).await;
    let delivery = next_delivery(&mut stream, PATIENCE).await.expect("the last job");
    ack(&mut queues, &delivery).await.unwrap();
    let queue_channel = |channel: &str| channel.contains(&queue) && channel.ends_with(":notify");
    eventually(PATIENCE, "the last job is announced", || async { published.on(queue_channel).len() >= 2 }).await;
    assert_eq!(published.on(queue_channel), ["enqueued", "enqueued"], "one announcement per batch");
    let stream_channels = |channel: &str| channel.contains(&queue) && !channel.ends_with(":notify");
    assert_eq!(published.on(stream_channels), Vec::<String>::new(), "local acks are not published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_delivers_nothing_until_resumed() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("paused");
    queues.pause_queue(PauseQueueRequest { queue: queue.clone() }).await.unwrap();
    enqueue(&mut queues, job(&queue, "held back")).await;
    let mut stream = consume(&mut queues, &queue, 1, Duration::from_secs(30)).await;
    assert!(next_delivery(&mut stream, Duration::from_millis(1500)).await.is_none());
    let stats = queues.get_queue_stats(GetQueueStatsRequest { queue: queue.clone() }).await.unwrap().into_inner();
    assert!(stats.paused);
    assert_eq!(stats.ready, 1);
    queues.resume_queue(ResumeQueueRequest { queue }).await.unwrap();
    assert!(next_delivery(&mut stream, PATIENCE).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_are_invalid_argument_naming_the_field_and_write_nothing() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let cases: Vec<(&str, EnqueueRequest, &str)> = vec![
        ("empty queue", job("", "x"), "queue"),
        ("oversized payload", EnqueueRequest { payload: vec![0; 1024 * 1024 + 1], ..job("q", "") }, "payload"),
        ("priority", EnqueueRequest { priority: 5000, ..job("q", "x") }, "priority"),
        (
            "negative delay",
            EnqueueRequest {
                schedule: Some(enqueue_request::Schedule::Delay(prost_types::Duration { seconds: -1, nanos: 0 })),
                ..job("q", "x")
            },
            "delay",
        ),
    ];
    for (what, request, field) in cases {
        let status = queues.enqueue(request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, field, "{what}");
    }
    let batch = EnqueueBatchRequest { requests: vec![job("q", "ok"), job("", "bad")] };
    let status = queues.enqueue_batch(batch).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "requests[1].queue");
    let too_many = ConsumeRequest { queue: "q".into(), max_in_flight: 100_000, ..Default::default() };
    let status = queues.consume(tokio_stream::once(too_many)).await.map(drop).unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "max_in_flight");
    let status = queues.ack(AckRequest { lease_id: "forged".into(), result: vec![] }).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "lease_id");
    let status = queues.ack_batch(AckBatchRequest { acks: vec![] }).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "acks");
    let oversized = AckRequest { lease_id: "forged".into(), result: vec![0; 1024 * 1024 + 1] };
    let status = queues.ack_batch(AckBatchRequest { acks: vec![oversized] }).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "acks[0].result");
    let status = queues.get_job(GetJobRequest { job_id: "nope".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(redis.dbsize(), 0, "rejected requests wrote {:?}", redis.keys());
}

/// The ack scripts Redis ran, from baton's own Redis latency histogram.
async fn ack_scripts_run(baton: &Baton) -> u64 {
    let metrics = common::scrape_metrics(baton.metrics_addr).await;
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("baton_redis_command_duration_seconds_count{") && line.contains("op=\"queue_ack\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_acks_share_scripts_and_keep_their_own_outcomes() {
    let redis = Redis::start();
    let baton = Baton::start(Some(&redis.url()), &["--queue-max-in-flight", "1000"]);
    let mut queues = baton.queues().await;
    let queue = unique("grouped-acks");
    const JOBS: usize = 300;
    let jobs: Vec<EnqueueRequest> = (0..JOBS).map(|i| job(&queue, &i.to_string())).collect();
    queues.enqueue_batch(EnqueueBatchRequest { requests: jobs }).await.unwrap();
    let mut stream = consume(&mut queues, &queue, JOBS as u32, Duration::from_secs(60)).await;
    let mut deliveries = Vec::new();
    while deliveries.len() < JOBS {
        deliveries.push(next_delivery(&mut stream, PATIENCE).await.expect("every job is delivered"));
    }
    // Every tenth job is cancelled first: its Ack must fail alone, whatever it is grouped with.
    let cancelled: HashSet<String> =
        deliveries.iter().step_by(10).map(|delivery| delivery.job.as_ref().unwrap().job_id.clone()).collect();
    for job_id in &cancelled {
        queues.cancel_job(CancelJobRequest { job_id: job_id.clone() }).await.unwrap();
    }
    let scripts_before = ack_scripts_run(&baton).await;

    let acks = deliveries.iter().map(|delivery| {
        let mut queues = queues.clone();
        let delivery = delivery.clone();
        async move { (delivery.job.clone().unwrap().job_id, ack(&mut queues, &delivery).await) }
    });
    let outcomes = futures::future::join_all(acks).await;

    for (job_id, outcome) in &outcomes {
        if cancelled.contains(job_id) {
            let status = outcome.as_ref().expect_err("the Ack of a cancelled job is refused");
            assert_eq!(reason_of(status), ErrorReason::JobCancelled);
        } else {
            outcome.as_ref().unwrap_or_else(|status| panic!("ack of {job_id}: {status:?}"));
            assert_eq!(job_state(&mut queues, job_id).await, JobState::Succeeded);
        }
    }
    let scripts = ack_scripts_run(&baton).await - scripts_before;
    assert!(scripts < JOBS as u64 / 2, "{JOBS} concurrent Acks took {scripts} ack scripts");
    // Repeating an applied Ack still answers done, alone.
    let repeated = deliveries.iter().find(|d| !cancelled.contains(&d.job.as_ref().unwrap().job_id)).unwrap();
    ack(&mut queues, repeated).await.unwrap();
}

/// A job's hash holds only the fields that say something (each field costs Redis on every
/// write and read of the job), and every field of the job reads back as enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_stored_lean_and_reads_back_whole() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let mut queues = baton.queues().await;
    let queue = unique("lean");
    let backoff = Backoff {
        initial: Some(duration_to_proto(Duration::from_millis(1500))),
        max: Some(duration_to_proto(Duration::from_secs(60))),
        multiplier: 2.5,
    };
    let plain = EnqueueRequest { priority: -3, max_attempts: 7, backoff: Some(backoff), ..job(&queue, "p") };
    let plain_id = enqueue(&mut queues, plain).await;
    let hour = Duration::from_secs(3600);
    let delayed = EnqueueRequest {
        r#type: "mail".into(),
        dedup_key: "once".into(),
        schedule: Some(enqueue_request::Schedule::Delay(duration_to_proto(hour))),
        ..job(&queue, "d")
    };
    let delayed_id = enqueue(&mut queues, delayed).await;

    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("*:job:{plain_id}")).query(&mut redis.connection()).unwrap();
    assert_eq!(keys.len(), 1, "one hash for the job: {keys:?}");
    let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL").arg(&keys[0]).query(&mut redis.connection()).unwrap();
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["created_at", "payload", "spec", "state"]);

    let get = |id: &String| GetJobRequest { job_id: id.clone() };
    let plain = queues.get_job(get(&plain_id)).await.unwrap().into_inner().job.unwrap();
    assert_eq!((plain.priority, plain.max_attempts, plain.attempts), (-3, 7, 0));
    assert_eq!(plain.backoff, Some(backoff));
    assert_eq!((plain.r#type.as_str(), plain.dedup_key.as_str()), ("", ""));
    assert_eq!(plain.run_at, plain.created_at, "a job due at once runs at its creation");
    assert_eq!(JobState::try_from(plain.state).unwrap(), JobState::Ready);

    let delayed = queues.get_job(get(&delayed_id)).await.unwrap().into_inner().job.unwrap();
    assert_eq!((delayed.r#type.as_str(), delayed.dedup_key.as_str()), ("mail", "once"));
    let (created, run_at) = (delayed.created_at.unwrap(), delayed.run_at.unwrap());
    assert_eq!(run_at.seconds - created.seconds, hour.as_secs() as i64);
    assert_eq!(JobState::try_from(delayed.state).unwrap(), JobState::Scheduled);
}
