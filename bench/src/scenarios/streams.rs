//! Memory and Redis connections with many idle streams, measured first, on processes no
//! load has grown: Consume streams on the main baton, then KeepAlive streams on one of
//! their own.

use std::time::Duration;

use baton::proto::duration_to_proto;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::lock_service_client::LockServiceClient;
use baton::proto::v1::{AcquireRequest, ConsumeRequest, KeepAliveRequest};

use testkit::BatonProcess;

use super::{Bench, channels};
use crate::measure::rss_mib;
use crate::redis_baseline::redis_clients;

/// How long baton is given to settle after streams open or close, before RSS is read or
/// the next measurement starts: the figure is what it holds at rest, so this is waiting
/// for nothing in particular to happen, not for a state that could be polled.
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(bench: &mut Bench, streams: usize) {
    let (baton_pid, redis_port) = (bench.baton_pid, bench.redis_port);
    let before = rss_mib(baton_pid);
    let stream_channels = channels(bench.baton_addr, streams.div_ceil(1000).max(1)).await;
    let mut held = Vec::new();
    for i in 0..streams {
        let mut queues = JobQueueServiceClient::new(stream_channels[i % stream_channels.len()].clone());
        let request = ConsumeRequest { queue: format!("idle-{}", i % 100), max_in_flight: 1, ..Default::default() };
        held.push(queues.consume(tokio_stream::once(request)).await.unwrap().into_inner());
    }
    tokio::time::sleep(SETTLE).await;
    bench.notes.push(format!(
        "{streams} idle Consume streams: baton RSS {:.0} MiB (from {before:.0} MiB), Redis connections {}",
        rss_mib(baton_pid),
        redis_clients(redis_port)
    ));
    drop(held);
    // A baton of their own: the memory the Consume streams freed goes back to the system
    // only as the allocator's threads next allocate, so after them no baseline is true.
    let before_fresh = redis_clients(redis_port);
    let fresh = BatonProcess::start(
        &bench.baton_binary,
        &["--redis-url", &format!("redis://127.0.0.1:{redis_port}")],
        "warn,baton=info",
    );
    let stream_channels = channels(fresh.addr, streams.div_ceil(1000).max(1)).await;
    let before = rss_mib(fresh.pid());
    let mut held = Vec::new();
    for i in 0..streams {
        let mut locks = LockServiceClient::new(stream_channels[i % stream_channels.len()].clone());
        let name = format!("keepalive:{i}");
        let request = AcquireRequest {
            name: name.clone(),
            ttl: Some(duration_to_proto(Duration::from_secs(60))),
            ..Default::default()
        };
        let lease = locks.acquire(request).await.unwrap().into_inner().lease.unwrap();
        let request = KeepAliveRequest { name, lease_id: lease.lease_id, ..Default::default() };
        held.push(
            locks
                .keep_alive(tokio_stream::StreamExt::chain(tokio_stream::once(request), tokio_stream::pending()))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    tokio::time::sleep(SETTLE).await;
    bench.notes.push(format!(
        "{streams} KeepAlive streams on a fresh baton: RSS {:.0} MiB (from {before:.0} MiB), Redis connections {}",
        rss_mib(fresh.pid()),
        redis_clients(redis_port).saturating_sub(before_fresh)
    ));
    // Their locks are released as the streams end; let that finish before measuring speed.
    drop(held);
    tokio::time::sleep(SETTLE + Duration::from_secs(1)).await;
}
