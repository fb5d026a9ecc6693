//! Queues: jobs per second from enqueue to ack (one Ack per job, as BullMQ's Worker
//! completes each job, then with AckBatch), and how late delayed jobs are delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::{
    AckBatchRequest, AckRequest, ConsumeRequest, EnqueueBatchRequest, EnqueueRequest, WatchQueueRequest,
    consume_response, enqueue_request,
};
use futures::FutureExt;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::Bench;
use crate::measure::histogram;

/// Runs both groups; returns the end-to-end rates (one Ack per job, AckBatch) for the peers.
pub async fn run(bench: &mut Bench) -> (f64, f64) {
    let d = bench.duration;
    let pool: Vec<Channel> = (0..6).map(|worker| bench.pool.get(worker)).collect();
    let plain = Variant { batched_acks: false, groups: 0, watcher: false };
    let per_job = queue_end_to_end(&pool, "bench-e2e", d, plain).await;
    bench.notes.push(format!(
        "Queue end to end (2 producers with EnqueueBatch of 100, 4 consumer streams with max_in_flight 256, \
         one Ack per job): {per_job:.0} jobs/s acked"
    ));
    let batched_acks = Variant { batched_acks: true, ..plain };
    let batched = queue_end_to_end(&pool, "bench-e2e-batched", d, batched_acks).await;
    bench.notes.push(format!(
        "Queue end to end as above, consumers acking with AckBatch (whatever the stream has delivered, up to \
         {ACK_BATCH}): {batched:.0} jobs/s acked"
    ));
    let grouped = queue_end_to_end(&pool, "bench-e2e-groups", d, Variant { groups: 100, ..batched_acks }).await;
    let watched = queue_end_to_end(&pool, "bench-e2e-watched", d, Variant { watcher: true, ..batched_acks }).await;
    bench.notes.push(format!(
        "Queue end to end with AckBatch, jobs spread over 100 groups (round robin, no group limit): \
         {grouped:.0} jobs/s ({:.2}× plain); with a WatchQueue watcher reading every event: {watched:.0} jobs/s \
         ({:.2}× plain)",
        grouped / batched,
        watched / batched
    ));
    delayed_lateness(bench).await;
    (per_job, batched)
}

/// Delayed jobs: how late after their due time are they delivered?
async fn delayed_lateness(bench: &mut Bench) {
    let mut queues = JobQueueServiceClient::new(bench.pool.get(0));
    let request = ConsumeRequest { queue: "bench-delay".into(), max_in_flight: 64, ..Default::default() };
    let mut stream = queues.consume(tokio_stream::once(request)).await.unwrap().into_inner();
    let mut lateness = histogram();
    for _ in 0..50 {
        let enqueued = Instant::now();
        let request = EnqueueRequest {
            queue: "bench-delay".into(),
            schedule: Some(enqueue_request::Schedule::Delay(duration_to_proto(Duration::from_millis(200)))),
            ..Default::default()
        };
        queues.enqueue(request).await.unwrap();
        let Some(Ok(event)) = stream.next().await else { break };
        let late = enqueued.elapsed().saturating_sub(Duration::from_millis(200));
        lateness.record(late.as_micros().max(1) as u64).unwrap();
        if let Some(consume_response::Event::Delivery(delivery)) = event.event {
            queues.ack(AckRequest { lease_id: delivery.lease_id, result: vec![] }).await.unwrap();
        }
    }
    bench.notes.push(format!(
        "Delayed job lateness (200 ms delay, 50 jobs, idle machine): p50 {} ms, p99 {} ms",
        lateness.value_at_quantile(0.5) / 1000,
        lateness.value_at_quantile(0.99) / 1000
    ));
}

/// Most leases one AckBatch of the benchmark's consumers settles.
const ACK_BATCH: usize = 256;

#[derive(Clone, Copy)]
struct Variant {
    batched_acks: bool,
    /// Jobs spread round robin over this many groups; 0: ungrouped.
    groups: usize,
    /// A WatchQueue stream reads every event meanwhile.
    watcher: bool,
}

/// Jobs per second from enqueue to ack: 2 producers with EnqueueBatch of 100 (the backlog
/// kept bounded, so the figure is throughput, not queue growth) and 4 consumer streams.
async fn queue_end_to_end(pool: &[Channel], queue: &'static str, d: Duration, variant: Variant) -> f64 {
    let Variant { batched_acks, groups, watcher } = variant;
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + d;
    let watching = if watcher {
        let mut queues = JobQueueServiceClient::new(pool[0].clone());
        let request = WatchQueueRequest { queue: queue.into() };
        let mut events = queues.watch_queue(request).await.unwrap().into_inner();
        Some(tokio::spawn(async move {
            let mut seen = 0u64;
            while Instant::now() < stop {
                match tokio::time::timeout(Duration::from_millis(200), events.next()).await {
                    Ok(Some(Ok(_))) => seen += 1,
                    Ok(_) => break,
                    Err(_) => {}
                }
            }
            seen
        }))
    } else {
        None
    };
    let mut consumers = Vec::new();
    for consumer_channel in &pool[..4] {
        let mut queues = JobQueueServiceClient::new(consumer_channel.clone());
        let acked = acked.clone();
        consumers.push(tokio::spawn(async move {
            let request = ConsumeRequest { queue: queue.into(), max_in_flight: 256, ..Default::default() };
            let mut stream = queues.consume(tokio_stream::once(request)).await.unwrap().into_inner();
            let mut pending = tokio::task::JoinSet::new();
            while Instant::now() < stop {
                let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await else {
                    continue;
                };
                let mut events = vec![event];
                // Batching: everything the stream has already delivered, without waiting.
                while batched_acks && events.len() < ACK_BATCH {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(event))) => events.push(event),
                        _ => break,
                    }
                }
                let settled: Vec<String> = events
                    .into_iter()
                    .filter_map(|event| match event.event {
                        Some(consume_response::Event::Delivery(delivery)) => Some(delivery.lease_id),
                        _ => None,
                    })
                    .collect();
                if settled.is_empty() {
                    continue;
                }
                let (mut queues, acked) = (queues.clone(), acked.clone());
                pending.spawn(async move {
                    let acks: Vec<AckRequest> =
                        settled.into_iter().map(|lease_id| AckRequest { lease_id, result: vec![] }).collect();
                    let count = acks.len() as u64;
                    if batched_acks {
                        let results = queues.ack_batch(AckBatchRequest { acks }).await.unwrap().into_inner().results;
                        assert!(results.iter().all(|r| r.acked), "every lease in hand acks");
                    } else {
                        for ack in acks {
                            queues.ack(ack).await.unwrap();
                        }
                    }
                    acked.fetch_add(count, Ordering::Relaxed);
                });
            }
            while pending.join_next().await.is_some() {}
        }));
    }
    let started = Instant::now();
    let mut producers = Vec::new();
    for producer_channel in &pool[4..6] {
        let mut queues = JobQueueServiceClient::new(producer_channel.clone());
        let acked = acked.clone();
        producers.push(tokio::spawn(async move {
            let mut enqueued = 0u64;
            while Instant::now() < stop {
                if enqueued > acked.load(Ordering::Relaxed) + 20_000 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let requests = (0..100u64)
                    .map(|i| EnqueueRequest {
                        queue: queue.into(),
                        payload: vec![b'j'; 64],
                        group: if groups > 0 { format!("g{}", (enqueued + i) % groups as u64) } else { String::new() },
                        ..Default::default()
                    })
                    .collect();
                queues.enqueue_batch(EnqueueBatchRequest { requests }).await.unwrap();
                enqueued += 100;
            }
        }));
    }
    for task in producers.into_iter().chain(consumers) {
        task.await.unwrap();
    }
    let rate = acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    if let Some(watching) = watching {
        assert!(watching.await.unwrap() > 0, "the watcher saw the queue's events");
    }
    rate
}
