//! Each replica's scheduler: one task that sleeps until the soonest tick it knows of,
//! fires what is due, and re-reads the index of queues with schedules when a schedule is
//! created or resumed anywhere (announced on [`CHANNEL`]) and on a slow safety interval.
//! Every replica runs one; which of them enqueues a tick is decided in Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CHANNEL, INDEX, parse_index_member};
use crate::error::Error;
use crate::proto::v1::Schedule;
use crate::queue::{NewJob, QueueManager};
use crate::store::Command;
use crate::store::notify::Notifier;

/// How often the index is re-read even without an announcement (one may be lost).
const RESCAN: Duration = Duration::from_secs(10);
/// After a failed look at a queue, look again this much later.
const RETRY: Duration = Duration::from_secs(1);

/// (namespace, queue) → its soonest tick, µs on Redis's clock (`None`: nothing scheduled).
type Soonest = HashMap<(Arc<str>, String), Option<u64>>;

/// Runs until `draining` is cancelled. `job_of` turns a schedule's template into the job
/// to enqueue, validated as an Enqueue would be.
pub async fn run(
    queues: QueueManager,
    notifier: Notifier,
    draining: CancellationToken,
    job_of: impl Fn(&Schedule) -> Result<NewJob, Error> + Send + Sync + 'static,
) {
    let announcements = notifier.watch(CHANNEL);
    let mut soonest = Soonest::new();
    // Redis's clock minus this process's: ticks are due by Redis's clock.
    let mut clock = ClockOffset::default();
    let mut rescan_at = Instant::now();
    loop {
        let announced = announcements.notified();
        tokio::pin!(announced);
        announced.as_mut().enable();
        if Instant::now() >= rescan_at {
            match scan(&queues).await {
                Ok(found) => {
                    soonest.retain(|queue, _| found.contains(queue));
                    for queue in found {
                        // A fresh look at every queue: its schedules may have changed.
                        soonest.insert(queue, Some(0));
                    }
                }
                Err(err) => tracing::debug!(error = %err, "cannot read the schedules index"),
            }
            rescan_at = Instant::now() + RESCAN;
        }
        // Fire every queue whose soonest tick has come.
        let due: Vec<(Arc<str>, String)> = soonest
            .iter()
            .filter(|(_, tick)| tick.is_some_and(|tick| clock.is_due(tick)))
            .map(|(queue, _)| queue.clone())
            .collect();
        for (namespace, queue) in due {
            let next = match queues.scoped(&namespace).fire_due(&queue, &job_of).await {
                Ok((next, redis_now)) => {
                    clock.observe(redis_now);
                    next
                }
                Err(err) => {
                    tracing::debug!(queue, error = %err, "cannot fire the queue's schedules");
                    Some(clock.redis_now() + RETRY.as_micros() as u64)
                }
            };
            soonest.insert((namespace, queue), next);
        }
        let wake_at = soonest
            .values()
            .flatten()
            .map(|tick| clock.local_instant(*tick))
            .min()
            .map_or(rescan_at, |at| at.min(rescan_at));
        tokio::select! {
            () = &mut announced => rescan_at = Instant::now(),
            () = tokio::time::sleep_until(wake_at) => {}
            () = draining.cancelled() => return,
        }
    }
}

/// Every (namespace, queue) with schedules.
async fn scan(queues: &QueueManager) -> Result<Vec<(Arc<str>, String)>, Error> {
    let members: Vec<String> = queues.store.command("schedule_index", &Command::new("SMEMBERS").arg(INDEX)).await?;
    Ok(members
        .iter()
        .filter_map(|member| parse_index_member(member))
        .map(|(namespace, queue)| (Arc::from(namespace), queue.to_owned()))
        .collect())
}

/// Redis's clock as seen from this process.
#[derive(Default)]
struct ClockOffset {
    /// Redis µs minus local µs at the last observation.
    offset_micros: i64,
}

impl ClockOffset {
    fn local_micros() -> i64 {
        i64::try_from(crate::proto::now_micros()).unwrap_or(i64::MAX)
    }

    fn observe(&mut self, redis_now: u64) {
        self.offset_micros = i64::try_from(redis_now).unwrap_or(i64::MAX) - Self::local_micros();
    }

    fn redis_now(&self) -> u64 {
        u64::try_from(Self::local_micros() + self.offset_micros).unwrap_or(0)
    }

    fn is_due(&self, tick: u64) -> bool {
        tick <= self.redis_now()
    }

    /// When, by this process's monotonic clock, Redis's clock reaches `tick`.
    fn local_instant(&self, tick: u64) -> Instant {
        let wait = tick.saturating_sub(self.redis_now());
        Instant::now() + Duration::from_micros(wait)
    }
}
