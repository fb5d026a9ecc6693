//! Queue workflows against a real Redis: progress and results seen by a job's watcher on
//! another replica, every queue event in order on every replica, a watcher that stops
//! reading told exactly what it missed, events recorded only while watched, retention of
//! the newest succeeded and dead jobs, and bad input.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use baton::proto::duration_to_proto;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::{
    AckRequest, CancelJobRequest, ConsumeRequest, ConsumeResponse, Delivery, EnqueueRequest, ErrorReason,
    GetJobRequest, GetQueueStatsRequest, Job, JobState, ListJobsRequest, NackRequest, QueueEvent, QueueEventKind,
    RetryDeadJobsRequest, UpdateProgressRequest, WatchJobRequest, WatchQueueRequest, WatchQueueResponse,
    consume_response, enqueue_request, watch_queue_response,
};
use common::{Clients, PATIENCE, Redis, Server, next_event, reason_of, unique};
use tokio_stream::StreamExt;
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

async fn consume(queues: &mut Queues, queue: &str) -> tonic::Streaming<ConsumeResponse> {
    let request = ConsumeRequest {
        queue: queue.to_owned(),
        max_in_flight: 1,
        visibility_timeout: Some(duration_to_proto(Duration::from_secs(30))),
        ..Default::default()
    };
    queues.consume(tokio_stream::once(request)).await.expect("consume").into_inner()
}

async fn delivery(stream: &mut tonic::Streaming<ConsumeResponse>) -> Delivery {
    match next_event(stream, PATIENCE).await {
        Some(consume_response::Event::Delivery(delivery)) => delivery,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

async fn progress(queues: &mut Queues, delivery: &Delivery, value: f64, detail: &str) -> Result<(), tonic::Status> {
    let request =
        UpdateProgressRequest { lease_id: delivery.lease_id.clone(), value, detail: detail.as_bytes().to_vec() };
    queues.update_progress(request).await.map(drop)
}

async fn ack(queues: &mut Queues, delivery: &Delivery, result: &str) {
    let request = AckRequest { lease_id: delivery.lease_id.clone(), result: result.as_bytes().to_vec() };
    queues.ack(request).await.expect("ack");
}

async fn get_job(queues: &mut Queues, job_id: &str) -> Result<Job, tonic::Status> {
    Ok(queues.get_job(GetJobRequest { job_id: job_id.to_owned() }).await?.into_inner().job.unwrap())
}

async fn next_job(watch: &mut tonic::Streaming<baton::proto::v1::WatchJobResponse>) -> Option<Job> {
    match tokio::time::timeout(PATIENCE, watch.next()).await.expect("a job watcher message in time") {
        Some(Ok(message)) => Some(message.job.unwrap()),
        Some(Err(status)) => panic!("job watch failed: {status:?}"),
        None => None,
    }
}

/// Reads a job watch until `condition` holds for a message; panics if it ends first.
async fn job_until(
    watch: &mut tonic::Streaming<baton::proto::v1::WatchJobResponse>,
    condition: impl Fn(&Job) -> bool,
) -> Job {
    loop {
        let job = next_job(watch).await.expect("the job watch ended early");
        if condition(&job) {
            return job;
        }
    }
}

fn state(job: &Job) -> JobState {
    JobState::try_from(job.state).unwrap()
}

async fn watch_queue(queues: &mut Queues, queue: &str) -> tonic::Streaming<WatchQueueResponse> {
    queues.watch_queue(WatchQueueRequest { queue: queue.to_owned() }).await.expect("watch queue").into_inner()
}

async fn next_queue_message(watch: &mut tonic::Streaming<WatchQueueResponse>) -> watch_queue_response::Message {
    match tokio::time::timeout(PATIENCE, watch.next()).await.expect("a queue event in time") {
        Some(Ok(message)) => message.message.unwrap(),
        other => panic!("queue watch ended: {other:?}"),
    }
}

async fn next_queue_event(watch: &mut tonic::Streaming<WatchQueueResponse>) -> QueueEvent {
    match next_queue_message(watch).await {
        watch_queue_response::Message::Event(event) => event,
        watch_queue_response::Message::Missed(missed) => panic!("missed {} events", missed.count),
    }
}

fn kind(event: &QueueEvent) -> QueueEventKind {
    QueueEventKind::try_from(event.kind).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_result_reach_a_job_watcher_on_another_replica() {
    let redis = Redis::start();
    let (a, b) = (Server::start(&redis.url(), &[]), Server::start(&redis.url(), &[]));
    let queue = unique("rpc");
    let (mut on_a, mut on_b) = (a.queues().await, b.queues().await);
    let job_id = enqueue(&mut on_a, job(&queue, "resize 4 images")).await;

    let mut watch = on_b.watch_job(WatchJobRequest { job_id: job_id.clone() }).await.unwrap().into_inner();
    let first = next_job(&mut watch).await.unwrap();
    assert_eq!((state(&first), first.payload.len()), (JobState::Ready, 0), "the job as it is, without its payload");

    let mut stream = consume(&mut on_a, &queue).await;
    let delivery = delivery(&mut stream).await;
    let active = job_until(&mut watch, |job| state(job) == JobState::Active).await;
    assert_eq!(active.attempts, 1);

    progress(&mut on_a, &delivery, 50.0, "2 of 4").await.unwrap();
    let reported = job_until(&mut watch, |job| job.progress.is_some()).await;
    let reported_progress = reported.progress.clone().unwrap();
    assert_eq!((reported_progress.value, reported_progress.detail.as_slice()), (50.0, b"2 of 4".as_slice()));
    assert_eq!(state(&reported), JobState::Active);

    ack(&mut on_a, &delivery, "4 thumbnails").await;
    let done = job_until(&mut watch, |job| state(job) != JobState::Active).await;
    assert_eq!(state(&done), JobState::Succeeded);
    assert_eq!(done.result, b"4 thumbnails");
    assert_eq!(done.progress.unwrap().value, 50.0, "the last progress stays with the job");
    assert!(next_job(&mut watch).await.is_none(), "the stream ends OK after a finished state");

    // Watching a finished job sends it once and ends; GetJob shows the same progress.
    let mut again = on_a.watch_job(WatchJobRequest { job_id: job_id.clone() }).await.unwrap().into_inner();
    assert_eq!(state(&next_job(&mut again).await.unwrap()), JobState::Succeeded);
    assert!(next_job(&mut again).await.is_none());
    assert_eq!(get_job(&mut on_b, &job_id).await.unwrap().progress.unwrap().detail, b"2 of 4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_watcher_sees_retries_and_the_dead_end() {
    let redis = Redis::start();
    let server = Server::start(&redis.url(), &[]);
    let queue = unique("doomed");
    let mut queues = server.queues().await;
    let job_id = enqueue(&mut queues, EnqueueRequest { max_attempts: 2, ..job(&queue, "x") }).await;
    let mut watch = queues.watch_job(WatchJobRequest { job_id: job_id.clone() }).await.unwrap().into_inner();
    next_job(&mut watch).await.unwrap();
    let mut stream = consume(&mut queues, &queue).await;
    let first = delivery(&mut stream).await;
    let retry_after = Some(duration_to_proto(Duration::from_millis(100)));
    let nack = |lease_id: String| NackRequest { lease_id, error: "boom".into(), retry_after, dead_letter: false };
    queues.nack(nack(first.lease_id.clone())).await.unwrap();
    let failed = job_until(&mut watch, |job| state(job) == JobState::Failed).await;
    assert_eq!((failed.attempts, failed.last_error.as_str()), (1, "boom"));
    let second = delivery(&mut stream).await;
    queues.nack(nack(second.lease_id.clone())).await.unwrap();
    let dead = job_until(&mut watch, |job| state(job) == JobState::Dead).await;
    assert_eq!((dead.attempts, dead.last_error.as_str()), (2, "boom"));
    assert!(next_job(&mut watch).await.is_none());

    // The same queue, another (never issued) uuid: its last digit changed.
    let last = if job_id.as_bytes()[35] == b'0' { "1" } else { "0" };
    let other = format!("{}{last}{}", &job_id[..35], &job_id[36..]);
    let missing = queues.watch_job(WatchJobRequest { job_id: other }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    let malformed = queues.watch_job(WatchJobRequest { job_id: "not-a-job".into() }).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_sees_each_queue_event_in_order() {
    let redis = Redis::start();
    let (a, b) = (Server::start(&redis.url(), &[]), Server::start(&redis.url(), &[]));
    let queue = unique("events");
    let (mut on_a, mut on_b) = (a.queues().await, b.queues().await);
    let mut watchers = [watch_queue(&mut on_a, &queue).await, watch_queue(&mut on_b, &queue).await];

    // One job through progress, a retry and success; one whose worker goes away; one
    // dead-lettered and redriven; one cancelled while waiting.
    let first = enqueue(&mut on_a, job(&queue, "1")).await;
    let mut stream = consume(&mut on_b, &queue).await;
    let d1 = delivery(&mut stream).await;
    progress(&mut on_a, &d1, 10.0, "").await.unwrap();
    let retry_after = Some(duration_to_proto(Duration::from_millis(50)));
    on_a.nack(NackRequest { lease_id: d1.lease_id.clone(), error: "flaky".into(), retry_after, dead_letter: false })
        .await
        .unwrap();
    let d1_again = delivery(&mut stream).await;
    ack(&mut on_b, &d1_again, "ok").await;

    let second = enqueue(&mut on_a, job(&queue, "2")).await;
    let d2 = delivery(&mut stream).await;
    assert_eq!(d2.job.as_ref().unwrap().job_id, second);
    drop(stream); // the worker goes away holding it: it is handed back

    let mut stream = consume(&mut on_a, &queue).await;
    let d2_again = delivery(&mut stream).await;
    on_a.nack(NackRequest {
        lease_id: d2_again.lease_id.clone(),
        error: "bad".into(),
        dead_letter: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let redriven = on_b.retry_dead_jobs(RetryDeadJobsRequest { queue: queue.clone(), job_ids: vec![second.clone()] });
    assert_eq!(redriven.await.unwrap().into_inner().retried, 1);
    let d2_third = delivery(&mut stream).await;
    ack(&mut on_a, &d2_third, "").await;
    drop(stream);

    let third = enqueue(
        &mut on_b,
        EnqueueRequest {
            schedule: Some(enqueue_request::Schedule::Delay(duration_to_proto(Duration::from_secs(60)))),
            ..job(&queue, "3")
        },
    )
    .await;
    on_a.cancel_job(CancelJobRequest { job_id: third.clone() }).await.unwrap();

    use QueueEventKind::*;
    let expected = [
        (Enqueued, &first, JobState::Ready, 0),
        (Active, &first, JobState::Active, 1),
        (Progress, &first, JobState::Active, 1),
        (Failed, &first, JobState::Failed, 1),
        (Active, &first, JobState::Active, 2),
        (Succeeded, &first, JobState::Succeeded, 2),
        (Enqueued, &second, JobState::Ready, 0),
        (Active, &second, JobState::Active, 1),
        (Stalled, &second, JobState::Ready, 1),
        (Active, &second, JobState::Active, 2),
        (Dead, &second, JobState::Dead, 2),
        (Redriven, &second, JobState::Ready, 0),
        (Active, &second, JobState::Active, 1),
        (Succeeded, &second, JobState::Succeeded, 1),
        (Enqueued, &third, JobState::Scheduled, 0),
        (Cancelled, &third, JobState::Cancelled, 0),
    ];
    for watch in &mut watchers {
        for (at, (kind_expected, job_id, state_expected, attempt)) in expected.iter().enumerate() {
            let event = next_queue_event(watch).await;
            assert_eq!(
                (kind(&event), &event.job_id, JobState::try_from(event.state).unwrap(), event.attempt),
                (*kind_expected, *job_id, *state_expected, *attempt),
                "event {at}: {event:?}"
            );
            match kind(&event) {
                Progress => assert_eq!(event.progress.as_ref().unwrap().value, 10.0),
                Failed => {
                    assert_eq!(event.error, "flaky");
                    assert!(event.run_at.is_some());
                }
                Dead => assert_eq!(event.error, "bad"),
                Stalled => assert_eq!(event.error, "consumer disconnected"),
                Enqueued if *job_id == &third => assert!(event.run_at.is_some(), "a delayed job says when it is due"),
                _ => {}
            }
            assert!(event.at.is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_told_exactly_how_many_events_it_missed() {
    let redis = Redis::start();
    let server = Server::start(&redis.url(), &[]);
    let queue = unique("firehose");
    let mut queues = server.queues().await;
    let mut watch = watch_queue(&mut queues, &queue).await;
    // A second watcher that keeps reading, so the recording is known to be complete.
    let mut reader = watch_queue(&mut queues, &queue).await;
    enqueue(&mut queues, job(&queue, "long")).await;
    let mut stream = consume(&mut queues, &queue).await;
    let held = delivery(&mut stream).await;
    // 2,000 progress reports of 4 KiB each: 8 MB of events, more than HTTP/2 lets baton
    // send a watcher that does not read (the client's 2 MB stream window).
    const REPORTS: u64 = 2_000;
    let mut reporter = queues.clone();
    let lease_id = held.lease_id.clone();
    let report = tokio::spawn(async move {
        for i in 0..REPORTS {
            let request =
                UpdateProgressRequest { lease_id: lease_id.clone(), value: i as f64, detail: vec![b'x'; 4096] };
            reporter.update_progress(request).await.unwrap();
        }
    });
    let mut read = 0;
    while read < REPORTS + 2 {
        match next_queue_message(&mut reader).await {
            watch_queue_response::Message::Event(_) => read += 1,
            watch_queue_response::Message::Missed(missed) => panic!("a reading watcher missed {}", missed.count),
        }
    }
    report.await.unwrap();

    // Only now does the slow watcher read: what it holds, then the gap, accounted exactly.
    let (mut events, mut missed) = (0, 0);
    let mut last_value = -1.0;
    while events + missed < REPORTS + 2 {
        match next_queue_message(&mut watch).await {
            watch_queue_response::Message::Event(event) => {
                if let Some(progress) = event.progress {
                    assert!(progress.value > last_value, "events stay in order");
                    last_value = progress.value;
                }
                events += 1;
            }
            watch_queue_response::Message::Missed(gap) => {
                assert!(gap.count > 0);
                missed += gap.count;
            }
        }
    }
    assert_eq!(events + missed, REPORTS + 2);
    assert!(missed > 0, "a watcher that did not read was buffered whole ({events} events)");
    assert!(events < REPORTS, "{events} events were buffered for a watcher that did not read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_recorded_only_while_the_queue_is_watched() {
    let redis = Redis::start();
    let server = Server::start(&redis.url(), &[]);
    let queue = unique("quiet");
    let mut queues = server.queues().await;
    enqueue(&mut queues, job(&queue, "unwatched")).await;
    let mut stream = consume(&mut queues, &queue).await;
    let first = delivery(&mut stream).await;
    progress(&mut queues, &first, 1.0, "").await.unwrap();
    ack(&mut queues, &first, "").await;
    assert!(
        redis.keys().iter().all(|key| !key.ends_with(":events") && !key.ends_with(":watched")),
        "an unwatched queue recorded events: {:?}",
        redis.keys()
    );

    let mut watch = watch_queue(&mut queues, &queue).await;
    enqueue(&mut queues, job(&queue, "watched")).await;
    assert_eq!(kind(&next_queue_event(&mut watch).await), QueueEventKind::Enqueued);
    let keys = redis.keys();
    let events_key = keys.iter().find(|key| key.ends_with(":events")).expect("the queue's event stream");
    let ttl: i64 = redis::cmd("PTTL").arg(events_key).query(&mut redis.connection()).unwrap();
    assert!(ttl > 0, "the event stream outlives its watchers only for a while (PTTL {ttl})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_queue_keeps_only_the_newest_succeeded_and_dead_jobs() {
    let redis = Redis::start();
    let server = Server::start(&redis.url(), &["--queue-keep-succeeded", "5", "--queue-keep-dead", "3"]);
    let queue = unique("kept");
    let mut queues = server.queues().await;
    let mut stream = consume(&mut queues, &queue).await;
    let mut succeeded = Vec::new();
    for i in 0..12 {
        let job_id = enqueue(&mut queues, job(&queue, &i.to_string())).await;
        ack(&mut queues, &delivery(&mut stream).await, &format!("result {i}")).await;
        succeeded.push(job_id);
    }
    let mut dead = Vec::new();
    for i in 0..7 {
        let job_id = enqueue(&mut queues, job(&queue, &format!("dead {i}"))).await;
        let lease_id = delivery(&mut stream).await.lease_id;
        queues.nack(NackRequest { lease_id, dead_letter: true, ..Default::default() }).await.unwrap();
        dead.push(job_id);
    }

    let list = |state: JobState| ListJobsRequest { queue: queue.clone(), state: state as i32, ..Default::default() };
    let kept: Vec<String> = queues
        .list_jobs(list(JobState::Succeeded))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    let newest_first: Vec<String> = succeeded.iter().rev().take(5).cloned().collect();
    assert_eq!(kept, newest_first);
    let kept_dead: Vec<String> =
        queues.list_jobs(list(JobState::Dead)).await.unwrap().into_inner().jobs.into_iter().map(|j| j.job_id).collect();
    assert_eq!(kept_dead, dead[4..].to_vec(), "the newest dead jobs, oldest death first");
    for forgotten in succeeded[..7].iter().chain(&dead[..4]) {
        assert_eq!(get_job(&mut queues, forgotten).await.unwrap_err().code(), Code::NotFound);
    }
    assert_eq!(get_job(&mut queues, &succeeded[11]).await.unwrap().result, b"result 11");
    let stats = queues.get_queue_stats(GetQueueStatsRequest { queue: queue.clone() }).await.unwrap().into_inner();
    assert_eq!((stats.succeeded, stats.dead), (5, 3));
    // Nothing of the forgotten jobs is left in Redis: 5 + 3 job hashes and the indexes.
    let job_keys = redis.keys().into_iter().filter(|key| key.contains(":job:")).count();
    assert_eq!(job_keys, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_needs_the_current_lease_and_sane_input_and_lists_refuse_other_states() {
    let redis = Redis::start();
    let server = Server::start(&redis.url(), &[]);
    let queue = unique("strict");
    let mut queues = server.queues().await;
    let job_id = enqueue(&mut queues, job(&queue, "x")).await;
    let mut stream = consume(&mut queues, &queue).await;
    let held = delivery(&mut stream).await;

    for (value, detail, field) in [(f64::NAN, 0, "value"), (f64::INFINITY, 0, "value"), (1.0, 4097, "detail")] {
        let request = UpdateProgressRequest { lease_id: held.lease_id.clone(), value, detail: vec![b'x'; detail] };
        let status = queues.update_progress(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_details_bad_request().expect("BadRequest details");
        assert_eq!(bad.field_violations[0].field, field);
    }
    let malformed = UpdateProgressRequest { lease_id: "nope".into(), value: 1.0, detail: Vec::new() };
    assert_eq!(queues.update_progress(malformed).await.unwrap_err().code(), Code::InvalidArgument);
    assert!(get_job(&mut queues, &job_id).await.unwrap().progress.is_none(), "nothing was written");

    ack(&mut queues, &held, "").await;
    let stale = progress(&mut queues, &held, 99.0, "").await.unwrap_err();
    assert_eq!((stale.code(), reason_of(&stale)), (Code::FailedPrecondition, ErrorReason::JobNotLeased));
    assert!(get_job(&mut queues, &job_id).await.unwrap().progress.is_none());

    for refused in [JobState::Failed, JobState::Cancelled, JobState::Unspecified] {
        let request = ListJobsRequest { queue: queue.clone(), state: refused as i32, ..Default::default() };
        let status = queues.list_jobs(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{refused:?}");
    }
    let oversized = ListJobsRequest { queue, state: JobState::Ready as i32, page_size: 1001, ..Default::default() };
    assert_eq!(queues.list_jobs(oversized).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_pages_ready_jobs_oldest_due_first() {
    let redis = Redis::start();
    let server = Server::start(&redis.url(), &[]);
    let queue = unique("pages");
    let mut queues = server.queues().await;
    let low = enqueue(&mut queues, job(&queue, "low")).await;
    let high = enqueue(&mut queues, EnqueueRequest { priority: 5, ..job(&queue, "high") }).await;
    let later = enqueue(&mut queues, job(&queue, "later")).await;
    let page = |page_token: String| ListJobsRequest {
        queue: queue.clone(),
        state: JobState::Ready as i32,
        page_size: 2,
        page_token,
    };
    let first = queues.list_jobs(page(String::new())).await.unwrap().into_inner();
    let ids: Vec<&str> = first.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, [low.as_str(), high.as_str()], "by due time, whatever their priority");
    assert_eq!(first.jobs[1].payload, b"high");
    let second = queues.list_jobs(page(first.next_page_token)).await.unwrap().into_inner();
    assert_eq!(second.jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(), [later.as_str()]);
    assert!(second.next_page_token.is_empty());
}
