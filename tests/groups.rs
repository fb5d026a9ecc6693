//! Groups and start limits against a real Redis: per-group concurrency never exceeded,
//! cold groups served while a hot one backs up, strict FIFO per group across consumers that
//! fail and vanish mid-job, a queue limited to N starts per second in every one-second
//! span, and the configuration's validation.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::{
    AckRequest, Algorithm, ConfigureQueueRequest, ConsumeRequest, ConsumeResponse, Delivery, EnqueueBatchRequest,
    EnqueueRequest, GetQueueConfigRequest, GetQueueStatsRequest, Limit, NackRequest, QueueConfig, consume_response,
};
use common::{Clients, PATIENCE, Redis, Server, next_event, unique};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

type Queues = JobQueueServiceClient<Channel>;

const VISIBILITY: Duration = Duration::from_secs(30);

fn grouped(queue: &str, group: &str, payload: String) -> EnqueueRequest {
    EnqueueRequest {
        queue: queue.to_owned(),
        group: group.to_owned(),
        payload: payload.into_bytes(),
        ..Default::default()
    }
}

async fn enqueue_all(queues: &mut Queues, jobs: Vec<EnqueueRequest>) {
    for chunk in jobs.chunks(1000) {
        queues.enqueue_batch(EnqueueBatchRequest { requests: chunk.to_vec() }).await.unwrap();
    }
}

async fn configure(queues: &mut Queues, queue: &str, config: QueueConfig) {
    queues.configure_queue(ConfigureQueueRequest { queue: queue.to_owned(), config: Some(config) }).await.unwrap();
}

async fn consume(queues: &mut Queues, queue: &str, max_in_flight: u32) -> tonic::Streaming<ConsumeResponse> {
    let request = ConsumeRequest {
        queue: queue.to_owned(),
        max_in_flight,
        visibility_timeout: Some(duration_to_proto(VISIBILITY)),
        ..Default::default()
    };
    queues.consume(tokio_stream::once(request)).await.expect("consume").into_inner()
}

/// The next delivery, or None when none comes within `patience`.
async fn delivery(stream: &mut tonic::Streaming<ConsumeResponse>, patience: Duration) -> Option<Delivery> {
    match next_event(stream, patience).await {
        Some(consume_response::Event::Delivery(delivery)) => Some(delivery),
        Some(other) => panic!("expected a delivery, got {other:?}"),
        None => None,
    }
}

fn group_of(delivery: &Delivery) -> String {
    delivery.job.as_ref().unwrap().group.clone()
}

fn payload_of(delivery: &Delivery) -> String {
    String::from_utf8(delivery.job.as_ref().unwrap().payload.clone()).unwrap()
}

/// When the delivery's lease began, on the Redis clock (its expiry less the visibility).
fn started_micros(delivery: &Delivery) -> i64 {
    let expires = delivery.lease_expires_at.as_ref().unwrap();
    expires.seconds * 1_000_000 + i64::from(expires.nanos / 1000) - VISIBILITY.as_micros() as i64
}

fn percentile(mut samples: Vec<Duration>, p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1]
}

#[derive(Default)]
struct GroupLedger {
    holding: HashMap<String, u32>,
    most_held: HashMap<String, u32>,
    waits: HashMap<String, Vec<Duration>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_in_a_hundred_groups_keep_each_group_within_its_concurrency_and_serve_cold_groups_early() {
    let redis = Redis::start();
    let (a, b) = (Server::start(&redis.url(), &[]), Server::start(&redis.url(), &[]));
    let queue = unique("grouped");
    let mut queues = a.queues().await;
    configure(&mut queues, &queue, QueueConfig { group_concurrency: 3, ..Default::default() }).await;
    // The hot group's 5,050 jobs go in first; 99 cold groups of 50 follow.
    let mut jobs: Vec<EnqueueRequest> = (0..5050).map(|i| grouped(&queue, "hot", i.to_string())).collect();
    for i in 0..50 {
        jobs.extend((0..99).map(|g| grouped(&queue, &format!("cold-{g}"), i.to_string())));
    }
    let enqueued_at = Instant::now();
    enqueue_all(&mut queues, jobs).await;

    let ledger = Arc::new(Mutex::new(GroupLedger::default()));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let mut queues = if worker % 2 == 0 { a.queues().await } else { b.queues().await };
        let queue = queue.clone();
        let ledger = ledger.clone();
        workers.push(tokio::spawn(async move {
            let mut stream = consume(&mut queues, &queue, 16).await;
            let mut jobs = Vec::new();
            while let Some(delivery) = delivery(&mut stream, Duration::from_secs(2)).await {
                let group = group_of(&delivery);
                {
                    let mut ledger = ledger.lock().unwrap();
                    let held = ledger.holding.entry(group.clone()).or_default();
                    *held += 1;
                    let held = *held;
                    let most = ledger.most_held.entry(group.clone()).or_default();
                    *most = (*most).max(held);
                    ledger.waits.entry(group.clone()).or_default().push(enqueued_at.elapsed());
                }
                let (mut queues, ledger) = (queues.clone(), ledger.clone());
                jobs.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    // Released before the Ack is sent: what the test holds never exceeds
                    // what baton counts as active.
                    *ledger.lock().unwrap().holding.get_mut(&group).unwrap() -= 1;
                    queues.ack(AckRequest { lease_id: delivery.lease_id, result: Vec::new() }).await.unwrap();
                }));
            }
            let done = jobs.len();
            for job in jobs {
                job.await.unwrap();
            }
            done
        }));
    }
    let mut done = 0;
    for worker in workers {
        done += worker.await.unwrap();
    }
    assert_eq!(done, 10_000, "every job delivered once");

    let ledger = ledger.lock().unwrap();
    assert_eq!(ledger.most_held.len(), 100);
    for (group, most) in &ledger.most_held {
        assert!(*most <= 3, "group {group} had {most} jobs active at once (limit 3)");
    }
    assert!(ledger.most_held["hot"] >= 2, "the hot group ran jobs side by side");
    let hot_p99 = percentile(ledger.waits["hot"].clone(), 0.99);
    let cold: Vec<Duration> =
        ledger.waits.iter().filter(|(group, _)| *group != "hot").flat_map(|(_, waits)| waits.clone()).collect();
    let cold_p99 = percentile(cold, 0.99);
    println!("p99 wait: hot {hot_p99:?}, cold {cold_p99:?}");
    // Round robin serves a cold group's job every turn while the hot group is held to 3 at
    // a time: the cold groups are done well before the hot one's backlog drains.
    assert!(cold_p99 * 2 <= hot_p99, "cold p99 {cold_p99:?} against hot p99 {hot_p99:?}");
    let gactive: i64 = redis::cmd("EVAL")
        .arg("local n = 0 for _, k in ipairs(redis.call('KEYS', '*gactive*')) do n = n + redis.call('HLEN', k) end return n")
        .arg(0)
        .query(&mut redis.connection())
        .unwrap();
    assert_eq!(gactive, 0, "no group is left counted active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_serves_groups_in_turn_without_a_concurrency_limit() {
    let redis = Redis::start();
    let server = Server::start(&redis.url(), &[]);
    let queue = unique("turns");
    let mut queues = server.queues().await;
    // No configuration: groups still take turns. A backlog of 1,000 "hot" jobs first, then
    // 10 groups of 100, then 100 ungrouped jobs.
    let mut jobs: Vec<EnqueueRequest> = (0..1000).map(|i| grouped(&queue, "hot", i.to_string())).collect();
    for i in 0..100 {
        jobs.extend((0..10).map(|g| grouped(&queue, &format!("cold-{g}"), i.to_string())));
    }
    jobs.extend((0..100).map(|i| grouped(&queue, "", i.to_string())));
    enqueue_all(&mut queues, jobs).await;
    let mut stream = consume(&mut queues, &queue, 8).await;
    let mut order: Vec<String> = Vec::new();
    while let Some(delivery) = delivery(&mut stream, Duration::from_secs(2)).await {
        order.push(group_of(&delivery));
        queues.ack(AckRequest { lease_id: delivery.lease_id, result: Vec::new() }).await.unwrap();
    }
    assert_eq!(order.len(), 2100);
    // In the first 1,200 deliveries (12 lines of 100 turns), every cold group and the
    // ungrouped jobs are done: they never waited behind the hot backlog.
    let early = &order[..1200];
    for g in 0..10 {
        let name = format!("cold-{g}");
        assert_eq!(early.iter().filter(|group| **group == name).count(), 100, "{name}");
    }
    assert_eq!(early.iter().filter(|group| group.is_empty()).count(), 100, "the ungrouped jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_fifo_groups_hold_their_order_across_three_consumers_retries_and_a_vanished_consumer() {
    let redis = Redis::start();
    let (a, b) = (Server::start(&redis.url(), &[]), Server::start(&redis.url(), &[]));
    let queue = unique("fifo");
    let mut queues = a.queues().await;
    configure(&mut queues, &queue, QueueConfig { group_fifo: true, ..Default::default() }).await;
    const GROUPS: usize = 8;
    const PER_GROUP: usize = 25;
    let mut jobs = Vec::new();
    for i in 0..PER_GROUP {
        jobs.extend((0..GROUPS).map(|g| grouped(&queue, &format!("account-{g}"), i.to_string())));
    }
    enqueue_all(&mut queues, jobs).await;

    #[derive(Default)]
    struct Ledger {
        holding: HashMap<String, u32>,
        acked: HashMap<String, Vec<usize>>,
        nacked: HashMap<String, bool>,
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut consumers = Vec::new();
    for consumer in 0..3 {
        let mut queues = if consumer == 1 { b.queues().await } else { a.queues().await };
        let (queue, ledger) = (queue.clone(), ledger.clone());
        consumers.push(tokio::spawn(async move {
            let mut stream = consume(&mut queues, &queue, 8).await;
            let mut handled = 0;
            loop {
                let Some(delivery) = delivery(&mut stream, Duration::from_secs(2)).await else { return };
                let (group, position) = (group_of(&delivery), payload_of(&delivery).parse::<usize>().unwrap());
                {
                    let mut ledger = ledger.lock().unwrap();
                    let held = ledger.holding.entry(group.clone()).or_default();
                    assert_eq!(*held, 0, "two jobs of {group} at once");
                    *held += 1;
                    let next = ledger.acked.get(&group).map_or(0, Vec::len);
                    assert_eq!(position, next, "{group} delivered job {position} before job {next} was done");
                }
                handled += 1;
                // The third consumer vanishes holding its fifth job: it is handed back and
                // its group's next job must still wait for it.
                if consumer == 2 && handled == 5 {
                    ledger.lock().unwrap().holding.insert(group, 0);
                    drop(stream);
                    stream = consume(&mut queues, &queue, 8).await;
                    continue;
                }
                // Each group's seventh job fails once and is retried after a pause.
                let fail = position == 6 && !ledger.lock().unwrap().nacked.contains_key(&group);
                tokio::time::sleep(Duration::from_millis(1)).await;
                if fail {
                    ledger.lock().unwrap().nacked.insert(group.clone(), true);
                    *ledger.lock().unwrap().holding.get_mut(&group).unwrap() -= 1;
                    let retry_after = Some(duration_to_proto(Duration::from_millis(100)));
                    let nack = NackRequest {
                        lease_id: delivery.lease_id,
                        error: "retry".into(),
                        retry_after,
                        dead_letter: false,
                    };
                    queues.nack(nack).await.unwrap();
                } else {
                    {
                        let mut ledger = ledger.lock().unwrap();
                        *ledger.holding.get_mut(&group).unwrap() -= 1;
                        ledger.acked.entry(group).or_default().push(position);
                    }
                    queues.ack(AckRequest { lease_id: delivery.lease_id, result: Vec::new() }).await.unwrap();
                }
            }
        }));
    }
    for consumer in consumers {
        consumer.await.unwrap();
    }
    let ledger = ledger.lock().unwrap();
    for g in 0..GROUPS {
        let acked = &ledger.acked[&format!("account-{g}")];
        assert_eq!(*acked, (0..PER_GROUP).collect::<Vec<_>>(), "account-{g} in order, each once");
    }
    assert_eq!(ledger.nacked.len(), GROUPS, "every group's retry was exercised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_limited_to_50_starts_per_second_never_starts_more_in_any_second() {
    let redis = Redis::start();
    let server = Server::start(&redis.url(), &[]);
    let queue = unique("limited");
    let mut queues = server.queues().await;
    let start_limit = Limit {
        algorithm: Algorithm::SlidingWindow as i32,
        limit: 50,
        period: Some(duration_to_proto(Duration::from_secs(1))),
        burst: 0,
    };
    configure(&mut queues, &queue, QueueConfig { start_limit: Some(start_limit), ..Default::default() }).await;
    enqueue_all(&mut queues, (0..200).map(|i| grouped(&queue, "", i.to_string())).collect()).await;
    let started = Instant::now();
    let mut streams = [consume(&mut queues, &queue, 100).await, consume(&mut queues, &queue, 100).await];
    let mut starts = Vec::new();
    let mut peak_ready = 0;
    while starts.len() < 200 {
        for stream in &mut streams {
            if let Some(delivery) = delivery(stream, Duration::from_millis(20)).await {
                assert_eq!(delivery.attempt, 1, "a limited queue holds jobs back rather than handing them back");
                starts.push(started_micros(&delivery));
                queues.ack(AckRequest { lease_id: delivery.lease_id, result: Vec::new() }).await.unwrap();
            }
        }
        let stats = queues.get_queue_stats(GetQueueStatsRequest { queue: queue.clone() }).await.unwrap();
        peak_ready = peak_ready.max(stats.into_inner().ready);
        assert!(started.elapsed() < PATIENCE * 2, "only {} of 200 started", starts.len());
    }
    let took = started.elapsed();
    starts.sort_unstable();
    for (i, first) in starts.iter().enumerate() {
        let within = starts[i..].iter().take_while(|at| **at < first + 1_000_000).count();
        assert!(within <= 50, "{within} starts in the second from job {i}");
    }
    // 200 starts at 50 per second: the first 50 at once, the last no sooner than 3 s on.
    assert!(starts[199] - starts[0] >= 3_000_000, "200 starts in {} µs", starts[199] - starts[0]);
    assert!(took < Duration::from_secs(10), "the limit held jobs back too long: {took:?}");
    assert!(peak_ready >= 100, "held-back jobs wait READY (peak {peak_ready})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_limit_per_group_limits_each_group_on_its_own() {
    let redis = Redis::start();
    let server = Server::start(&redis.url(), &[]);
    let queue = unique("per-group");
    let mut queues = server.queues().await;
    let start_limit = Limit {
        algorithm: Algorithm::SlidingWindow as i32,
        limit: 5,
        period: Some(duration_to_proto(Duration::from_secs(60))),
        burst: 0,
    };
    let config = QueueConfig { start_limit: Some(start_limit), start_limit_per_group: true, ..Default::default() };
    configure(&mut queues, &queue, config).await;
    let mut jobs = Vec::new();
    for group in ["a", "b", ""] {
        jobs.extend((0..20).map(|i| grouped(&queue, group, i.to_string())));
    }
    enqueue_all(&mut queues, jobs).await;
    let mut stream = consume(&mut queues, &queue, 100).await;
    let mut per_group: HashMap<String, u32> = HashMap::new();
    while let Some(delivery) = delivery(&mut stream, Duration::from_millis(500)).await {
        *per_group.entry(group_of(&delivery)).or_default() += 1;
    }
    assert_eq!(per_group, HashMap::from([("a".into(), 5), ("b".into(), 5), (String::new(), 5)]));
    let read = queues.get_queue_config(GetQueueConfigRequest { queue: queue.clone() }).await.unwrap().into_inner();
    assert_eq!(read.config.unwrap(), config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_and_groups_are_refused_naming_the_field() {
    let redis = Redis::start();
    let server = Server::start(&redis.url(), &[]);
    let queue = unique("bad");
    let mut queues = server.queues().await;
    let no_period = Limit { algorithm: Algorithm::FixedWindow as i32, limit: 5, period: None, burst: 0 };
    let cases = [
        (QueueConfig { group_concurrency: 10_001, ..Default::default() }, "config.group_concurrency"),
        (QueueConfig { start_limit: Some(no_period), ..Default::default() }, "config.start_limit.period"),
        (
            QueueConfig {
                start_limit: Some(Limit {
                    limit: 0,
                    period: Some(duration_to_proto(Duration::from_secs(1))),
                    ..no_period
                }),
                ..Default::default()
            },
            "config.start_limit.limit",
        ),
    ];
    for (config, field) in cases {
        let request = ConfigureQueueRequest { queue: queue.clone(), config: Some(config) };
        let status = queues.configure_queue(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, field);
    }
    let read = queues.get_queue_config(GetQueueConfigRequest { queue: queue.clone() }).await.unwrap().into_inner();
    assert_eq!(read.config.unwrap(), QueueConfig::default(), "nothing was written");
    let oversized = grouped(&queue, &"g".repeat(513), "x".into());
    let status = queues.enqueue(oversized).await.unwrap_err();
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "group");
    let _ = PATIENCE;
}

/// Run as a child process by the next test: leases the head job of each of 3 FIFO groups
/// and holds them until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_consumer_child_process() {
    let (Ok(addr), Ok(queue)) = (std::env::var("BATON_FIFO_CHILD_ADDR"), std::env::var("BATON_FIFO_CHILD_QUEUE"))
    else {
        return; // Not running as the child: nothing to do.
    };
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut queues = JobQueueServiceClient::new(channel);
    let mut stream = consume(&mut queues, &queue, 8).await;
    for _ in 0..3 {
        let held = delivery(&mut stream, PATIENCE).await.expect("a job for the child");
        assert_eq!(payload_of(&held), "0", "the head of its group");
    }
    println!("HOLDING");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_group_waits_for_the_job_a_sigkilled_consumer_process_held() {
    let redis = Redis::start();
    let baton = Server::start(&redis.url(), &[]);
    let queue = unique("fifo-killed");
    let mut queues = baton.queues().await;
    configure(&mut queues, &queue, QueueConfig { group_fifo: true, ..Default::default() }).await;
    let mut jobs = Vec::new();
    for i in 0..10 {
        jobs.extend((0..3).map(|g| grouped(&queue, &format!("g{g}"), i.to_string())));
    }
    enqueue_all(&mut queues, jobs).await;
    let env = [("BATON_FIFO_CHILD_ADDR", baton.addr.to_string()), ("BATON_FIFO_CHILD_QUEUE", queue.clone())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut child =
        common::spawn_holding_child("fifo_consumer_child_process", &env, "the child never leased its jobs").await;
    // While the child holds every group's head, nothing else of those groups is delivered.
    let mut stream = consume(&mut queues, &queue, 8).await;
    assert!(delivery(&mut stream, Duration::from_millis(300)).await.is_none(), "a group's next job overtook its head");

    child.kill().unwrap();
    child.wait().unwrap();
    let mut order: HashMap<String, Vec<(String, u32)>> = HashMap::new();
    let mut streams = [stream, consume(&mut queues, &queue, 8).await, consume(&mut queues, &queue, 8).await];
    let (mut settled, started) = (0, Instant::now());
    while settled < 30 {
        assert!(started.elapsed() < PATIENCE, "only {settled} of 30 jobs settled");
        for stream in &mut streams {
            if let Some(delivery) = delivery(stream, Duration::from_millis(50)).await {
                let entries = order.entry(group_of(&delivery)).or_default();
                entries.push((payload_of(&delivery), delivery.attempt));
                queues.ack(AckRequest { lease_id: delivery.lease_id, result: Vec::new() }).await.unwrap();
                settled += 1;
            }
        }
    }
    for g in 0..3 {
        let expected: Vec<(String, u32)> = (0..10).map(|i| (i.to_string(), if i == 0 { 2 } else { 1 })).collect();
        assert_eq!(
            order[&format!("g{g}")],
            expected,
            "g{g}: the killed consumer's job first, again, then the rest in order"
        );
    }
}
