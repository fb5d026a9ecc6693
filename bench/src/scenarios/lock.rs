//! Locks: acquire + release cycles on distinct names and on one contended name, and how
//! long a waiter takes to hold a lock after its release.

use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::lock_service_client::LockServiceClient;
use baton::proto::v1::{AcquireRequest, ReleaseRequest};

use super::{Bench, Call, Pool};
use crate::measure::{self, histogram, row};
use crate::redis_baseline::redis_benchmark;

/// The row the node-redlock peer is compared with.
pub const LOCK_DISTINCT: &str = "Lock acquire+release cycle, distinct names";

/// Caller `w`'s call `i`: Acquire and Release of a name no one else takes.
pub fn cycle(pool: Pool) -> impl Fn(usize, u64) -> Call + Send + Sync + 'static {
    move |w, i| {
        let mut locks = LockServiceClient::new(pool.get(w));
        let name = format!("order:{w}:{i}");
        Box::pin(async move {
            let request = AcquireRequest {
                name: name.clone(),
                ttl: Some(duration_to_proto(Duration::from_secs(10))),
                ..Default::default()
            };
            let lease = locks.acquire(request).await.expect("acquire").into_inner().lease.expect("free lock");
            locks.release(ReleaseRequest { name, lease_id: lease.lease_id }).await.expect("release");
        })
    }
}

pub async fn run(bench: &mut Bench) {
    let (redis_port, d) = (bench.redis_port, bench.duration);
    let raw = |c| {
        Some(redis_benchmark(redis_port, c, d, &["SET", "lock:__rand_int__", "owner", "NX", "PX", "10000"]).per(2.0))
    };
    bench.scenario(LOCK_DISTINCT, raw, cycle(bench.pool.clone())).await;
    for c in bench.levels.clone() {
        let pool = bench.pool.clone();
        let result = measure::load(
            c,
            d,
            Arc::new(move |w, _| {
                let mut locks = LockServiceClient::new(pool.get(w));
                async move {
                    let request = AcquireRequest {
                        name: "contended".into(),
                        ttl: Some(duration_to_proto(Duration::from_secs(10))),
                        wait_timeout: Some(duration_to_proto(Duration::from_secs(30))),
                        ..Default::default()
                    };
                    let lease = locks.acquire(request).await.expect("acquire").into_inner().lease.expect("acquired");
                    let release = ReleaseRequest { name: "contended".into(), lease_id: lease.lease_id };
                    locks.release(release).await.unwrap();
                }
            }),
        )
        .await;
        bench.rows.push(row("Lock acquire+release cycle, one contended name", &c.to_string(), result, None));
    }
    handoff(bench).await;
}

/// How long after a release a waiter holds the lock, over 200 rounds.
async fn handoff(bench: &mut Bench) {
    let mut handoff = histogram();
    let mut holder = LockServiceClient::new(bench.pool.get(0));
    let waiter = LockServiceClient::new(bench.pool.get(1));
    for round in 0..200 {
        let name = format!("handoff:{round}");
        let request = |wait: u64| AcquireRequest {
            name: name.clone(),
            ttl: Some(duration_to_proto(Duration::from_secs(10))),
            wait_timeout: Some(duration_to_proto(Duration::from_secs(wait))),
            ..Default::default()
        };
        let lease = holder.acquire(request(0)).await.unwrap().into_inner().lease.unwrap();
        let mut waiting = waiter.clone();
        let wait_request = request(5);
        let waiting = tokio::spawn(async move {
            waiting.acquire(wait_request).await.unwrap();
            Instant::now()
        });
        // The measurement: the waiter is queued on the lock before it is released.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let released = Instant::now();
        holder.release(ReleaseRequest { name: name.clone(), lease_id: lease.lease_id }).await.unwrap();
        let acquired = waiting.await.unwrap();
        handoff.record(acquired.saturating_duration_since(released).as_micros().max(1) as u64).unwrap();
    }
    bench.notes.push(format!(
        "Lock hand-off (release → waiter holds it), 200 rounds: p50 {} µs, p99 {} µs, max {} µs",
        handoff.value_at_quantile(0.5),
        handoff.value_at_quantile(0.99),
        handoff.max()
    ));
}
