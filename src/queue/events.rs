//! Queue events for WatchQueue and WatchJob: one follower per watched queue per process
//! reads the queue's event stream whenever a script announces new entries, and fans them
//! out to every local watcher — a thousand watchers of a queue cost one task and one Redis
//! read per announcement.
//!
//! Scripts record events only while the queue's `watched` key lives (prelude.lua), and the
//! follower keeps it alive while it has watchers. Each event carries the queue's running
//! count `n`, so a follower that finds entries already trimmed, or recording restarted,
//! tells its watchers how many events they missed instead of pretending nothing happened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use super::{JobState, Progress, QueueManager, WATCH};
use crate::error::Error;
use crate::store::{Arg, Command};
use crate::task::TaskGuard;

/// Events a watcher may fall behind by before it is told it missed some.
const WATCHER_BACKLOG: usize = 1024;
/// Entries read from Redis at a time.
const READ_BATCH: usize = 500;
/// How long scripts keep recording after the last refresh; refreshed three times as often.
const RECORD_FOR: Duration = Duration::from_secs(30);
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// A lost announcement delays watchers by at most this.
const SAFETY_RECHECK: Duration = Duration::from_secs(5);
/// Job watcher entries kept before the first sweep of dead ones.
const MIN_SWEEP: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Enqueued,
    Active,
    Progress,
    Succeeded,
    Failed,
    Dead,
    Stalled,
    Returned,
    Redriven,
    Cancelled,
}

impl EventKind {
    fn parse(text: &[u8]) -> Option<Self> {
        Some(match text {
            b"enqueued" => Self::Enqueued,
            b"active" => Self::Active,
            b"progress" => Self::Progress,
            b"succeeded" => Self::Succeeded,
            b"failed" => Self::Failed,
            b"dead" => Self::Dead,
            b"stalled" => Self::Stalled,
            b"returned" => Self::Returned,
            b"redriven" => Self::Redriven,
            b"cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// One thing that happened to one job.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEvent {
    pub kind: EventKind,
    pub job_id: String,
    pub state: JobState,
    pub attempt: u32,
    pub at_micros: u64,
    pub progress: Option<Progress>,
    pub error: String,
    pub run_at_micros: Option<u64>,
    pub job_type: String,
}

/// What a queue watcher is sent.
#[derive(Debug, Clone)]
pub enum Watched {
    Event(Arc<QueueEvent>),
    /// Events lost before the next one; 0 when how many is unknown.
    Missed(u64),
}

struct Hub {
    events: broadcast::Sender<Watched>,
    /// WatchJob watchers by job id, woken on their job's events and on every gap.
    jobs: Mutex<JobWatchers>,
    /// Set once the hub exists, so the follower never finds it half-built.
    follower: OnceLock<TaskGuard>,
}

/// Job watchers by job id. A watcher whose job has no further event leaves a dead entry
/// behind, so entries are swept whenever the map doubles past its last live size.
struct JobWatchers {
    by_job: HashMap<String, Weak<Notify>>,
    sweep_above: usize,
}

impl Default for JobWatchers {
    fn default() -> Self {
        Self { by_job: HashMap::new(), sweep_above: MIN_SWEEP }
    }
}

impl JobWatchers {
    fn join(&mut self, job_id: &str) -> Arc<Notify> {
        if let Some(wake) = self.by_job.get(job_id).and_then(Weak::upgrade) {
            return wake;
        }
        if self.by_job.len() >= self.sweep_above {
            self.by_job.retain(|_, wake| wake.strong_count() > 0);
            self.sweep_above = (self.by_job.len() * 2).max(MIN_SWEEP);
        }
        let wake = Arc::new(Notify::new());
        self.by_job.insert(job_id.to_owned(), Arc::downgrade(&wake));
        wake
    }
}

impl Hub {
    fn dispatch(&self, watched: Watched) {
        let mut jobs = self.jobs.lock().expect("job watchers lock");
        match &watched {
            Watched::Event(event) => match jobs.by_job.get(&event.job_id).map(Weak::upgrade) {
                Some(Some(wake)) => wake.notify_waiters(),
                Some(None) => {
                    jobs.by_job.remove(&event.job_id);
                }
                None => {}
            },
            Watched::Missed(_) => {
                jobs.by_job.retain(|_, wake| wake.upgrade().inspect(|wake| wake.notify_waiters()).is_some());
            }
        }
        drop(jobs);
        // No receivers (only job watchers) is not an error.
        let _ = self.events.send(watched);
    }
}

/// The hubs of one process, by events channel (which carries the namespace and queue).
#[derive(Clone, Default)]
pub(crate) struct Hubs(Arc<Mutex<HashMap<String, Weak<Hub>>>>);

/// A queue watcher: every event of the queue from now on, or word of what it missed.
pub struct QueueWatch {
    _hub: Arc<Hub>,
    events: broadcast::Receiver<Watched>,
}

impl QueueWatch {
    pub async fn next(&mut self) -> Watched {
        match self.events.recv().await {
            Ok(watched) => watched,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::counter!("baton_queue_watch_events_missed_total").increment(missed);
                Watched::Missed(missed)
            }
            // The hub lives as long as this watch holds it: never closed.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// A job watcher's wake-up: fires on the job's events and whenever events were missed.
pub struct JobWatch {
    _hub: Arc<Hub>,
    pub wake: Arc<Notify>,
}

impl QueueManager {
    /// Starts watching `queue`'s events (from now on).
    pub async fn watch_queue(&self, queue: &str) -> Result<QueueWatch, Error> {
        let hub = self.hub(queue).await?;
        let events = hub.events.subscribe();
        Ok(QueueWatch { _hub: hub, events })
    }

    /// A wake-up for changes of `job_id` of `queue`; read the job after enabling it.
    pub async fn watch_job(&self, queue: &str, job_id: &str) -> Result<JobWatch, Error> {
        let hub = self.hub(queue).await?;
        let wake = hub.jobs.lock().expect("job watchers lock").join(job_id);
        Ok(JobWatch { _hub: hub, wake })
    }

    /// Joins this process's hub of `queue`, starting one (and the recording) when none.
    async fn hub(&self, queue: &str) -> Result<Arc<Hub>, Error> {
        let channel = self.queue_keys(queue).events_channel();
        if let Some(hub) = self.hubs.0.lock().expect("hubs lock").get(&channel).and_then(Weak::upgrade) {
            return Ok(hub);
        }
        let start = self.keep_recording(queue).await?;
        let mut hubs = self.hubs.0.lock().expect("hubs lock");
        if let Some(hub) = hubs.get(&channel).and_then(Weak::upgrade) {
            return Ok(hub);
        }
        let hub = Arc::new(Hub {
            events: broadcast::channel(WATCHER_BACKLOG).0,
            jobs: Mutex::default(),
            follower: OnceLock::new(),
        });
        let follower = Follower { queues: self.clone(), queue: queue.to_owned(), hub: Arc::downgrade(&hub) };
        let _ = hub.follower.set(TaskGuard::spawn(follower.run(start, channel.clone())));
        hubs.retain(|_, hub| hub.strong_count() > 0);
        hubs.insert(channel, Arc::downgrade(&hub));
        Ok(hub)
    }

    /// Makes scripts record `queue`'s events for another [`RECORD_FOR`]; returns where its
    /// stream stands.
    async fn keep_recording(&self, queue: &str) -> Result<Position, Error> {
        let args = [Arg::from(RECORD_FOR.as_millis() as u64)];
        let fields = self.store.eval(&WATCH, &self.queue_keys(queue).events(), &args).await?.done()?;
        Ok(Position { after: fields.string(0)?, count: fields.uint(1)? })
    }

    async fn read_events(&self, queue: &str, after: &str) -> Result<Vec<Entry>, Error> {
        let cmd = Command::new("XRANGE")
            .arg(&self.queue_keys(queue).event_stream())
            .arg(&format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(READ_BATCH);
        Ok(self.store.command("queue_read_events", &cmd).await?)
    }
}

type Entry = (String, Vec<Vec<u8>>);

/// The last event a follower has passed on: its stream id and the queue's count `n`.
struct Position {
    after: String,
    count: u64,
}

struct Follower {
    queues: QueueManager,
    queue: String,
    hub: Weak<Hub>,
}

impl Follower {
    async fn run(self, mut position: Position, channel: String) {
        let wake = self.queues.notifier.watch(&channel);
        let mut refresh_at = Instant::now() + REFRESH_EVERY;
        loop {
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            loop {
                match self.queues.read_events(&self.queue, &position.after).await {
                    Ok(entries) => {
                        let full = entries.len() >= READ_BATCH;
                        let Some(hub) = self.hub.upgrade() else { return };
                        for (id, fields) in entries {
                            self.pass_on(&hub, &mut position, id, &fields);
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(err) => {
                        tracing::debug!(queue = %self.queue, error = %err, "cannot read the queue's events");
                        break;
                    }
                }
            }
            if Instant::now() >= refresh_at {
                match self.queues.keep_recording(&self.queue).await {
                    Ok(now) if now.count < position.count => {
                        // Recording stopped (Redis was out of reach for longer than
                        // RECORD_FOR) and started again: what happened meanwhile is unknown.
                        position = now;
                        if let Some(hub) = self.hub.upgrade() {
                            hub.dispatch(Watched::Missed(0));
                        }
                        refresh_at = Instant::now() + REFRESH_EVERY;
                    }
                    Ok(_) => refresh_at = Instant::now() + REFRESH_EVERY,
                    Err(err) => tracing::debug!(queue = %self.queue, error = %err, "cannot keep recording events"),
                }
            }
            let nap = refresh_at.saturating_duration_since(Instant::now()).min(SAFETY_RECHECK);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    fn pass_on(&self, hub: &Hub, position: &mut Position, id: String, fields: &[Vec<u8>]) {
        let Some((count, event)) = decode(fields) else {
            tracing::warn!(queue = %self.queue, entry = %id, "skipping a malformed queue event");
            position.after = id;
            return;
        };
        if count > position.count + 1 {
            hub.dispatch(Watched::Missed(count - position.count - 1));
        }
        position.after = id;
        position.count = count;
        hub.dispatch(Watched::Event(Arc::new(event)));
    }
}

/// An event stream entry's fields (prelude.lua's `event`).
fn decode(fields: &[Vec<u8>]) -> Option<(u64, QueueEvent)> {
    let mut by_name: HashMap<&[u8], &[u8]> = HashMap::with_capacity(fields.len() / 2);
    for pair in fields.chunks_exact(2) {
        by_name.insert(&pair[0], &pair[1]);
    }
    let text = |name: &str| by_name.get(name.as_bytes()).map(|v| String::from_utf8_lossy(v).into_owned());
    let number = |name: &str| text(name).and_then(|v| v.parse::<f64>().ok());
    let at_micros = number("at")? as u64;
    let progress = number("progress").map(|value| Progress {
        value,
        detail: by_name.get(b"detail".as_slice()).map(|v| v.to_vec()).unwrap_or_default(),
        reported_at_micros: at_micros,
    });
    let event = QueueEvent {
        kind: EventKind::parse(by_name.get(b"k".as_slice())?)?,
        job_id: text("id")?,
        state: JobState::parse(&text("s")?)?,
        attempt: number("a").unwrap_or(0.0) as u32,
        at_micros,
        progress,
        error: text("error").unwrap_or_default(),
        run_at_micros: number("run_at").map(|micros| micros as u64),
        job_type: text("type").unwrap_or_default(),
    };
    Some((number("n")? as u64, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_of_jobs_that_never_change_again_do_not_pile_up() {
        let mut watchers = JobWatchers::default();
        let live: Vec<Arc<Notify>> = (0..100).map(|i| watchers.join(&format!("live-{i}"))).collect();
        for i in 0..100_000 {
            drop(watchers.join(&format!("finished-{i}")));
        }
        assert!(watchers.by_job.len() <= 2 * MIN_SWEEP, "{} entries kept", watchers.by_job.len());
        // Live watchers survive every sweep and share one wake-up per job.
        assert!(Arc::ptr_eq(&watchers.join("live-7"), &live[7]));
        assert_eq!(watchers.by_job.values().filter(|wake| wake.strong_count() > 0).count(), 100);
    }
}
