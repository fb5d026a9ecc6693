//! Singletons: how long an election takes to hand leadership over, how long a Proclaim takes
//! to reach the last of 1,000 observers, and how late a per-second schedule's ticks are.

use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::election_service_client::ElectionServiceClient;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::{
    CampaignRequest, ConsumeRequest, CreateScheduleRequest, EnqueueRequest, ObserveRequest, ProclaimRequest,
    ResignRequest, Schedule, consume_response, schedule,
};
use tokio_stream::StreamExt;

use super::{Bench, channels};
use crate::measure::histogram;

const ROUNDS: usize = 200;
const OBSERVERS: usize = 1000;
const TICKS: usize = 20;

pub async fn run(bench: &mut Bench) {
    handover(bench).await;
    fan_out(bench).await;
    tick_lateness(bench).await;
}

fn campaign(name: &str, owner: &str, wait: Duration) -> CampaignRequest {
    CampaignRequest {
        name: name.to_owned(),
        ttl: Some(duration_to_proto(Duration::from_secs(10))),
        owner: owner.to_owned(),
        wait_timeout: Some(duration_to_proto(wait)),
        ..Default::default()
    }
}

/// Resign → the waiting candidate leads, over [`ROUNDS`] rounds.
async fn handover(bench: &mut Bench) {
    let mut took = histogram();
    let mut leader = ElectionServiceClient::new(bench.pool.get(0));
    let candidate = ElectionServiceClient::new(bench.pool.get(1));
    for round in 0..ROUNDS {
        let name = format!("handover:{round}");
        let lease = leader.campaign(campaign(&name, "a", Duration::from_millis(1))).await.unwrap().into_inner().lease;
        let lease = lease.unwrap();
        let mut waiting = candidate.clone();
        let request = campaign(&name, "b", Duration::from_secs(5));
        let elected = tokio::spawn(async move {
            assert!(waiting.campaign(request).await.unwrap().into_inner().elected);
            Instant::now()
        });
        // The measurement: the candidate waits before the leader resigns.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let resigned = Instant::now();
        leader.resign(ResignRequest { name, lease_id: lease.lease_id }).await.unwrap();
        took.record(elected.await.unwrap().saturating_duration_since(resigned).as_micros().max(1) as u64).unwrap();
    }
    bench.notes.push(format!(
        "Election hand-over (Resign → the waiting candidate leads), {ROUNDS} rounds: p50 {} µs, p99 {} µs, max {} µs",
        took.value_at_quantile(0.5),
        took.value_at_quantile(0.99),
        took.max()
    ));
}

/// Proclaim → the last of [`OBSERVERS`] observers (over 10 connections) hears it.
async fn fan_out(bench: &mut Bench) {
    let connections = channels(bench.baton_addr, 10).await;
    let name = "fan-out";
    let mut leader = ElectionServiceClient::new(bench.pool.get(0));
    let lease = leader.campaign(campaign(name, "leader", Duration::from_millis(1))).await.unwrap().into_inner();
    let lease = lease.lease.unwrap();
    let mut streams = Vec::with_capacity(OBSERVERS);
    for i in 0..OBSERVERS {
        let mut client = ElectionServiceClient::new(connections[i % connections.len()].clone());
        let mut stream = client.observe(ObserveRequest { name: name.into() }).await.unwrap().into_inner();
        stream.next().await.unwrap().unwrap();
        streams.push(stream);
    }
    let mut took = histogram();
    for round in 0..20 {
        let proclaimed = Instant::now();
        let request = ProclaimRequest {
            name: name.into(),
            lease_id: lease.lease_id.clone(),
            value: format!("v{round}").into_bytes(),
        };
        leader.proclaim(request).await.unwrap();
        let heard: Vec<_> = streams
            .iter_mut()
            .map(|stream| async move {
                stream.next().await.unwrap().unwrap();
                Instant::now()
            })
            .collect();
        let last = futures::future::join_all(heard).await.into_iter().max().unwrap();
        took.record(last.saturating_duration_since(proclaimed).as_micros().max(1) as u64).unwrap();
    }
    bench.notes.push(format!(
        "Observe fan-out (Proclaim → the last of {OBSERVERS} observers hears it), 20 rounds: p50 {} µs, p99 {} µs",
        took.value_at_quantile(0.5),
        took.value_at_quantile(0.99),
    ));
}

/// A per-second schedule: how long after its tick each job is delivered to a waiting
/// consumer, over [`TICKS`] ticks.
async fn tick_lateness(bench: &mut Bench) {
    let mut queues = JobQueueServiceClient::new(bench.pool.get(0));
    let queue = "schedule-lateness";
    let mut stream = queues
        .consume(tokio_stream::once(ConsumeRequest { queue: queue.into(), max_in_flight: 100, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let schedule = Schedule {
        queue: queue.into(),
        schedule_id: "per-second".into(),
        timing: Some(schedule::Timing::Cron("* * * * * *".into())),
        job: Some(EnqueueRequest { r#type: "tick".into(), ..Default::default() }),
        ..Default::default()
    };
    queues.create_schedule(CreateScheduleRequest { schedule: Some(schedule), replace: true }).await.unwrap();
    let mut late = histogram();
    while (late.len() as usize) < TICKS {
        let Some(consume_response::Event::Delivery(delivery)) = stream.next().await.unwrap().unwrap().event else {
            continue;
        };
        let tick = delivery.job.and_then(|job| job.run_at).unwrap();
        let tick_micros = tick.seconds as u64 * 1_000_000 + tick.nanos as u64 / 1000;
        let now = baton::proto::now_micros();
        late.record(now.saturating_sub(tick_micros).max(1)).unwrap();
    }
    bench.notes.push(format!(
        "Schedule tick lateness (tick → a waiting consumer holds the job), {TICKS} per-second ticks: p50 {} µs, p99 {} µs, max {} µs",
        late.value_at_quantile(0.5),
        late.value_at_quantile(0.99),
        late.max()
    ));
}
