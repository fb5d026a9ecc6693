//! At-least-once job queues.
//!
//! Every state change is one Lua script over the queue's keys (see `prelude.lua`): a
//! delivery moves a job from `ready` into `active` with a deadline and a fresh lease token
//! in the same step, so a crash anywhere leaves each job in exactly one place. Every
//! Ack/Nack/Extend must present the current token, so an old worker can never settle a
//! newer delivery. Expired leases go back to the queue from whichever baton fetches next.
//!
//! Job and lease ids are self-contained, like SQS receipt handles: a job id carries its
//! queue, a lease id carries its job id, so any replica can act on them alone.

mod combine;
mod consumer;
mod events;
pub mod grpc;
mod ids;
mod keys;
mod registry;
pub mod schedule;
mod settlement;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::Notify;

use crate::error::Error;
use crate::store::notify::Notifier;
use crate::store::{Arg, Command, Fields, KeyBuilder, Outcome, Pipeline, Script, Store, StoreError};
pub use consumer::{ConsumeOptions, Consumer, ConsumerEvent, Steering};
pub use events::{EventKind, JobWatch, QueueEvent, Watched};
pub use ids::{LeaseRef, new_job_id, queue_of_job};
use ids::{STREAM_ID_BYTES, new_lease_tokens};
use keys::QueueKeys;
use settlement::LocalStreams;
pub use settlement::{LocalStream, SettledInbox};

const PRELUDE: &str = include_str!("prelude.lua");
const ENQUEUE_BODY: &str = include_str!("enqueue.lua");
static ENQUEUE: LazyLock<Script> =
    LazyLock::new(|| Script::new("queue_enqueue", &[PRELUDE, "local job_count = (#KEYS - 9) / 2\n", ENQUEUE_BODY]));
static FETCH: LazyLock<Script> =
    LazyLock::new(|| Script::new("queue_fetch", &[crate::ratelimit::LIMITS_LUA, PRELUDE, include_str!("fetch.lua")]));
static ACK: LazyLock<Script> = LazyLock::new(|| Script::new("queue_ack", &[PRELUDE, include_str!("ack.lua")]));
static NACK: LazyLock<Script> = LazyLock::new(|| Script::new("queue_nack", &[PRELUDE, include_str!("nack.lua")]));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::new("queue_extend", &[PRELUDE, include_str!("extend.lua")]));
static HAND_BACK: LazyLock<Script> =
    LazyLock::new(|| Script::new("queue_hand_back", &[PRELUDE, include_str!("hand_back.lua")]));
static HELD: LazyLock<Script> = LazyLock::new(|| Script::new("queue_held", &[PRELUDE, include_str!("held.lua")]));
static CANCEL: LazyLock<Script> = LazyLock::new(|| Script::new("queue_cancel", &[PRELUDE, include_str!("cancel.lua")]));
static RETRY_DEAD: LazyLock<Script> =
    LazyLock::new(|| Script::new("queue_retry_dead", &[PRELUDE, include_str!("retry_dead.lua")]));
static DELETE_DEAD: LazyLock<Script> =
    LazyLock::new(|| Script::new("queue_delete_dead", &[PRELUDE, include_str!("delete_dead.lua")]));
static STATS: LazyLock<Script> = LazyLock::new(|| Script::new("queue_stats", &[PRELUDE, include_str!("stats.lua")]));
static PROGRESS: LazyLock<Script> =
    LazyLock::new(|| Script::new("queue_progress", &[PRELUDE, include_str!("progress.lua")]));
static WATCH: LazyLock<Script> = LazyLock::new(|| Script::new("queue_watch", &[PRELUDE, include_str!("watch.lua")]));
static CONFIGURE: LazyLock<Script> =
    LazyLock::new(|| Script::new("queue_configure", &[PRELUDE, include_str!("configure.lua")]));

pub const MIN_PRIORITY: i32 = -1000;
pub const MAX_PRIORITY: i32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Scheduled,
    Ready,
    Active,
    Succeeded,
    Failed,
    Dead,
    Cancelled,
}

impl JobState {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "SCHEDULED" => Self::Scheduled,
            "READY" => Self::Ready,
            "ACTIVE" => Self::Active,
            "SUCCEEDED" => Self::Succeeded,
            "FAILED" => Self::Failed,
            "DEAD" => Self::Dead,
            "CANCELLED" => Self::Cancelled,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// 1 = fixed; above 1 = exponential with jitter.
    pub multiplier: f64,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub job_id: String,
    pub queue: String,
    pub job_type: String,
    pub payload: Vec<u8>,
    pub priority: i32,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at_micros: u64,
    pub run_at_micros: u64,
    pub last_error: String,
    pub result: Vec<u8>,
    pub dedup_key: String,
    pub backoff: Backoff,
    pub finished_at_micros: Option<u64>,
    /// The W3C `traceparent` the job was enqueued under; empty when none.
    pub trace_context: String,
    pub progress: Option<Progress>,
    /// Empty when none.
    pub group: String,
}

/// How far a worker said it was with a job (UpdateProgress).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub value: f64,
    pub detail: Vec<u8>,
    pub reported_at_micros: u64,
}

/// A validated Enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub queue: String,
    pub job_type: String,
    pub payload: Vec<u8>,
    pub priority: i32,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub delay: Duration,
    /// Unix µs; 0 = now (unless `delay`).
    pub run_at_micros: u64,
    pub dedup: Option<(String, Duration)>,
    /// The enqueuing trace's `traceparent`, carried to the job's deliveries.
    pub trace_context: Option<String>,
    /// Empty when none.
    pub group: String,
}

/// How a queue delivers (ConfigureQueue); the default delivers without group or start
/// limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueConfig {
    /// 0: no limit.
    pub group_concurrency: u32,
    pub group_fifo: bool,
    pub start_limit: Option<crate::ratelimit::LimitSpec>,
    pub start_limit_per_group: bool,
}

/// A job leased to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub job: Job,
    pub lease: LeaseRef,
    pub attempt: u32,
    pub lease_deadline_micros: u64,
    /// What the worker continues its trace from (`traceparent`), when the job has a trace.
    pub trace_context: HashMap<String, String>,
}

/// What a consumer's lease has become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    Held,
    Cancelled,
    Gone,
}

/// What enqueue.lua takes for some jobs of one queue (schedule/tick.lua ends with it).
struct EnqueueCall {
    keys: Vec<String>,
    channel: String,
    job_ids: Vec<String>,
    specs: Vec<String>,
}

impl EnqueueCall {
    fn new(queue_keys: &QueueKeys, queue: &str, jobs: &[&NewJob]) -> Self {
        let job_ids: Vec<String> = jobs.iter().map(|_| new_job_id(queue)).collect();
        let mut keys = queue_keys.enqueue();
        for (job, job_id) in jobs.iter().zip(&job_ids) {
            keys.push(queue_keys.job(job_id));
            keys.push(queue_keys.dedup(job.dedup.as_ref().map_or("", |(key, _)| key.as_str())));
        }
        Self {
            keys,
            channel: queue_keys.channel(),
            job_ids,
            specs: jobs.iter().map(|job| spec(job.priority, job.max_attempts, &job.backoff)).collect(),
        }
    }

    fn args<'a>(&'a self, jobs: &[&'a NewJob]) -> Vec<Arg<'a>> {
        let mut args: Vec<Arg> = Vec::with_capacity(1 + jobs.len() * 10);
        args.push((&self.channel).into());
        for ((job, job_id), spec) in jobs.iter().zip(&self.job_ids).zip(&self.specs) {
            let (dedup_key, dedup_ttl_ms) = match &job.dedup {
                Some((key, ttl)) => (key.as_str(), (ttl.as_millis() as u64).max(1)),
                None => ("", 1),
            };
            args.extend([
                Arg::from(job_id),
                (&job.job_type).into(),
                (&job.payload).into(),
                spec.into(),
                micros(job.delay).into(),
                job.run_at_micros.into(),
                dedup_key.into(),
                dedup_ttl_ms.into(),
                job.trace_context.as_deref().unwrap_or_default().into(),
                (&job.group).into(),
            ]);
        }
        args
    }
}

/// The `spec` field of a job's hash: what it is given at enqueue and never changes, as the
/// scripts read it (parse_spec in prelude.lua). Floats travel as text: the scripts multiply
/// with the backoff's multiplier.
fn spec(priority: i32, max_attempts: u32, backoff: &Backoff) -> String {
    format!("{priority} {max_attempts} {} {} {}", micros(backoff.initial), micros(backoff.max), backoff.multiplier)
}

/// A `spec` field read back; None when it is not one.
fn parse_spec(spec: &str) -> Option<(i32, u32, Backoff)> {
    let mut parts = spec.split(' ');
    let priority = parts.next()?.parse().ok()?;
    let max_attempts = parts.next()?.parse().ok()?;
    let initial = Duration::from_micros(parts.next()?.parse().ok()?);
    let max = Duration::from_micros(parts.next()?.parse().ok()?);
    let multiplier = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((priority, max_attempts, Backoff { initial, max, multiplier }))
}

/// enqueue.lua's reply: each job's id and whether it was a duplicate.
fn enqueued(mut fields: Fields) -> Result<Vec<(String, bool)>, Error> {
    let replies = (0..fields.len())
        .map(|index| {
            let reply = fields.take_fields(index)?;
            Ok((reply.string(0)?, reply.int(1)?))
        })
        .collect::<Result<Vec<(String, i64)>, StoreError>>()?;
    let duplicates = replies.iter().filter(|(_, duplicate)| *duplicate == 1).count() as u64;
    metrics::counter!("baton_queue_enqueued_total", "duplicate" => "true").increment(duplicates);
    metrics::counter!("baton_queue_enqueued_total", "duplicate" => "false")
        .increment(replies.len() as u64 - duplicates);
    Ok(replies.into_iter().map(|(id, duplicate)| (id, duplicate == 1)).collect())
}

/// Retention, defaults and bounds for jobs and consumers (configurable).
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// How long succeeded and cancelled jobs (and their results) are kept.
    pub retention: Duration,
    /// How long dead jobs are kept for inspection and redrive.
    pub dead_retention: Duration,
    /// How many succeeded jobs each queue keeps (the newest), within `retention`.
    pub keep_succeeded: u64,
    /// How many dead jobs each queue keeps (the newest), within `dead_retention`.
    pub keep_dead: u64,
    pub default_max_attempts: u32,
    pub max_attempts: u32,
    pub default_backoff: Duration,
    pub default_visibility: Duration,
    pub max_visibility: Duration,
    pub default_max_in_flight: u32,
    pub max_in_flight: u32,
    pub default_dedup_ttl: Duration,
    pub max_batch: usize,
    /// Most schedules one queue may have.
    pub max_schedules: usize,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(7 * 24 * 3600),
            keep_succeeded: 10_000,
            keep_dead: 10_000,
            default_max_attempts: 3,
            max_attempts: 1000,
            default_backoff: Duration::from_secs(1),
            default_visibility: Duration::from_secs(30),
            max_visibility: Duration::from_secs(12 * 3600),
            default_max_in_flight: 16,
            max_in_flight: 1000,
            default_dedup_ttl: Duration::from_secs(3600),
            max_batch: 1000,
            max_schedules: 1000,
        }
    }
}

/// Most (tenant, queue) pairs with `baton_queue_jobs` series. Queue names come from
/// callers, so series are made only for queues that hold jobs, and at most this many over
/// the process's life; stats of further queues are still answered, without series.
const MAX_QUEUE_SERIES: usize = 1_000;

static QUEUE_SERIES: LazyLock<Mutex<HashSet<(String, String)>>> = LazyLock::new(Mutex::default);

/// Sets a queue's `baton_queue_jobs` gauges from a stats reading, within [`MAX_QUEUE_SERIES`].
fn record_queue_gauges(tenant: &str, queue: &str, counts: [(&'static str, i64); 4]) {
    let series = (tenant.to_owned(), queue.to_owned());
    {
        let mut tracked = QUEUE_SERIES.lock().expect("queue series lock");
        if !tracked.contains(&series) {
            if counts.iter().all(|(_, n)| *n <= 0) {
                return;
            }
            if tracked.len() >= MAX_QUEUE_SERIES {
                metrics::counter!("baton_queue_series_dropped_total").increment(1);
                return;
            }
            tracked.insert(series.clone());
        }
    }
    let (tenant, queue) = series;
    for (state, n) in counts {
        metrics::gauge!("baton_queue_jobs", "tenant" => tenant.clone(), "queue" => queue.clone(), "state" => state)
            .set(n as f64);
    }
}

/// Queue statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub ready: u64,
    pub scheduled: u64,
    pub active: u64,
    pub dead: u64,
    pub paused: bool,
    pub oldest_ready_age: Duration,
    /// Succeeded jobs kept (retention).
    pub succeeded: u64,
}

#[derive(Clone)]
pub struct QueueManager {
    store: Store,
    keys: KeyBuilder,
    notifier: Notifier,
    settings: QueueSettings,
    local_streams: Arc<LocalStreams>,
    /// Shared by every namespace's manager; keyed by namespace and queue.
    acks: Arc<combine::AckCombiner>,
    /// Watched queues' event followers, shared the same way.
    hubs: events::Hubs,
    registry: Arc<registry::Registry>,
}

impl QueueManager {
    pub fn new(store: Store, keys: KeyBuilder, notifier: Notifier, settings: QueueSettings) -> Self {
        Self {
            store,
            keys,
            notifier,
            settings,
            local_streams: Arc::default(),
            acks: Arc::default(),
            hubs: events::Hubs::default(),
            registry: Arc::default(),
        }
    }

    /// The same manager acting for another tenant namespace.
    pub fn scoped(&self, namespace: &std::sync::Arc<str>) -> Self {
        Self { keys: KeyBuilder::new(namespace.clone()), ..self.clone() }
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    fn queue_keys<'a>(&'a self, queue: &'a str) -> QueueKeys<'a> {
        QueueKeys::new(&self.keys, queue)
    }

    fn channel(&self, queue: &str) -> String {
        self.queue_keys(queue).channel()
    }

    /// The channel of one consumer stream: settlements of its leases are announced here,
    /// so an Ack wakes the one stream whose credit it frees, not every consumer.
    fn stream_channel(&self, queue: &str, stream_id: &str) -> String {
        format!("{}:{stream_id}", self.channel(queue))
    }

    fn lease_channel(&self, lease: &LeaseRef) -> String {
        self.stream_channel(&lease.queue, &lease.token[..STREAM_ID_BYTES * 2])
    }

    /// The wake-up for one consumer stream's own leases, settled or cancelled through any
    /// replica.
    pub fn watch_stream(&self, queue: &str, stream_id: &str) -> Arc<Notify> {
        self.notifier.watch(&self.stream_channel(queue, stream_id))
    }

    /// Registers a Consume stream of this process, so settlements through this process
    /// reach it directly.
    pub fn register_stream(&self, queue: &str, stream_id: &str) -> LocalStream {
        self.local_streams.register(self.stream_channel(queue, stream_id))
    }

    /// The channel a settlement of `lease` is announced on: none ('') when the holding stream
    /// is in this process and is told directly through the returned inbox.
    fn settlement_route(&self, lease: &LeaseRef) -> (String, Option<Arc<SettledInbox>>) {
        let channel = self.lease_channel(lease);
        match self.local_streams.get(&channel) {
            Some(inbox) => (String::new(), Some(inbox)),
            None => (channel, None),
        }
    }

    /// The wake-up that fires when jobs become ready, are settled or are cancelled.
    pub fn watch(&self, queue: &str) -> Arc<Notify> {
        self.notifier.watch(&self.channel(queue))
    }

    /// Adds a job; a repeated dedup key within its ttl returns the first job's id.
    pub async fn enqueue(&self, job: &NewJob) -> Result<(String, bool), Error> {
        let mut outcomes = self.enqueue_batch(std::slice::from_ref(job)).await?;
        outcomes.pop().ok_or_else(|| Error::Internal("enqueue script returned nothing".into()))
    }

    /// Enqueues many jobs (see [`per_queue`]); each script wakes its queue's consumers once.
    pub async fn enqueue_batch(&self, jobs: &[NewJob]) -> Result<Vec<(String, bool)>, Error> {
        per_queue(jobs, |job| job.queue.as_str(), |queue, jobs| self.enqueue_queue(queue, jobs)).await
    }

    async fn enqueue_queue(&self, queue: &str, jobs: Vec<&NewJob>) -> Result<Vec<(String, bool)>, Error> {
        let call = EnqueueCall::new(&self.queue_keys(queue), queue, &jobs);
        let fields = self.store.eval(&ENQUEUE, &call.keys, &call.args(&jobs)).await?.done()?;
        let outcomes = enqueued(fields)?;
        if self.registry.needs_noting(&self.keys.namespace_arc(), queue) {
            self.note_queue(queue).await?;
        }
        Ok(outcomes)
    }

    /// Names `queue` in its namespace's set of queues (see `registry`).
    pub(crate) async fn note_queue(&self, queue: &str) -> Result<(), Error> {
        let add = Command::new("SADD").arg(&self.keys.index("queues")).arg(queue);
        self.store.command::<i64>("queue_registry", &add).await?;
        Ok(())
    }

    /// The first `limit` queues of this namespace by name, with their counts, and how many
    /// it has in all; a queue with nothing left in Redis is dropped from the set instead.
    /// Bounded, because callers name queues: a page never reads more than `limit` of them.
    pub async fn queues(&self, limit: usize) -> Result<(Vec<(String, QueueStats)>, usize), Error> {
        let index = self.keys.index("queues");
        let mut names: Vec<String> =
            self.store.command("queue_registry", &Command::new("SMEMBERS").arg(&index)).await?;
        let total = names.len();
        names.sort();
        names.truncate(limit);
        let mut queues = Vec::with_capacity(names.len());
        for name in names {
            let stats = self.stats(&name).await?;
            let empty = stats.ready + stats.scheduled + stats.active + stats.dead + stats.succeeded == 0;
            if empty && !stats.paused && self.schedule_count(&name).await? == 0 {
                self.store.command::<i64>("queue_registry", &Command::new("SREM").arg(&index).arg(&name)).await?;
                self.registry.forget(&self.keys.namespace_arc(), &name);
                continue;
            }
            queues.push((name, stats));
        }
        Ok((queues, total))
    }

    /// Leases up to `count` ready jobs; also promotes due jobs and reclaims expired leases.
    /// Returns the deliveries and when the next scheduled job or lease deadline falls due.
    pub async fn fetch(
        &self,
        queue: &str,
        stream_id: &str,
        count: usize,
        visibility: Duration,
        types: &[String],
    ) -> Result<(Vec<Delivery>, Option<Duration>), Error> {
        let queue_keys = self.queue_keys(queue);
        let (job_prefix, channel) = (queue_keys.job_prefix(), queue_keys.channel());
        let tokens = new_lease_tokens(stream_id, count);
        let mut args: Vec<Arg> = vec![
            (&job_prefix).into(),
            count.into(),
            micros(visibility).into(),
            (self.settings.dead_retention.as_millis() as u64).into(),
            (&channel).into(),
            self.settings.keep_dead.into(),
            types.len().into(),
        ];
        args.extend(types.iter().map(Arg::from));
        args.extend(tokens.iter().map(Arg::from));
        let mut fields = self.store.eval(&FETCH, &queue_keys.whole_queue(), &args).await?.done()?;
        let next_event =
            fields.int(0).ok().filter(|micros| *micros >= 0).map(|micros| Duration::from_micros(micros as u64));
        let reclaimed = fields.int(1)?;
        if reclaimed > 0 {
            metrics::counter!("baton_queue_redelivered_total", "cause" => "lease_expired").increment(reclaimed as u64);
        }
        let mut deliveries = Vec::with_capacity(fields.len().saturating_sub(2));
        for index in 2..fields.len() {
            let delivery = fields.take_fields(index)?;
            let job_id = delivery.string(0)?;
            let job = decode_job(queue, &job_id, delivery.packed_pairs(4)?)?;
            deliveries.push(Delivery {
                attempt: delivery.uint(1)? as u32,
                lease: LeaseRef { queue: queue.to_owned(), job_id, token: delivery.string(2)? },
                lease_deadline_micros: delivery.uint(3).unwrap_or(0),
                job,
                trace_context: HashMap::new(),
            });
        }
        if !deliveries.is_empty() {
            metrics::counter!("baton_queue_delivered_total").increment(deliveries.len() as u64);
        }
        Ok((deliveries, next_event))
    }

    fn settle_error(reason: &str) -> Error {
        match reason {
            "JOB_CANCELLED" => Error::JobCancelled,
            _ => Error::JobNotLeased,
        }
    }

    /// Completes many deliveries (see [`per_queue`]). Each delivery's outcome is independent;
    /// a failure to reach Redis fails the call (some acks may have applied, as for any
    /// retried Ack).
    pub async fn ack_batch(&self, acks: &[(LeaseRef, Vec<u8>)]) -> Result<Vec<Result<(), Error>>, Error> {
        let outcomes =
            per_queue(acks, |(lease, _)| lease.queue.as_str(), |queue, acks| self.ack_queue(queue, acks)).await?;
        let acked = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        metrics::counter!("baton_queue_acked_total").increment(acked as u64);
        Ok(outcomes)
    }

    async fn ack_queue(&self, queue: &str, acks: Vec<&(LeaseRef, Vec<u8>)>) -> Result<Vec<Result<(), Error>>, Error> {
        let queue_keys = self.queue_keys(queue);
        let mut keys = queue_keys.ack();
        let routes: Vec<(String, Option<Arc<SettledInbox>>)> =
            acks.iter().map(|(lease, _)| self.settlement_route(lease)).collect();
        let retention_ms = self.settings.retention.as_millis() as u64;
        let channel = queue_keys.channel();
        let mut args: Vec<Arg> = Vec::with_capacity(3 + acks.len() * 4);
        args.extend([Arg::from(retention_ms), self.settings.keep_succeeded.into(), (&channel).into()]);
        for ((lease, result), (channel, _)) in acks.iter().zip(&routes) {
            keys.push(queue_keys.job(&lease.job_id));
            args.extend([Arg::from(&lease.job_id), (&lease.token).into(), result.into(), channel.into()]);
        }
        let fields = self.store.eval(&ACK, &keys, &args).await?.done()?;
        Ok(acks
            .iter()
            .zip(routes)
            .enumerate()
            .map(|(index, ((lease, _), (_, local)))| {
                if fields.int(index).ok() == Some(1) {
                    if let Some(inbox) = local {
                        inbox.settle(&lease.token);
                    }
                    return Ok(());
                }
                Err(fields.string(index).map_or_else(Error::from, |reason| Self::settle_error(&reason)))
            })
            .collect())
    }

    /// Fails a delivery; returns the job's new state and, for a retry, when it runs.
    pub async fn nack(
        &self,
        lease: &LeaseRef,
        error: &str,
        retry_after: Duration,
        dead_letter: bool,
    ) -> Result<(JobState, u64), Error> {
        let queue_keys = self.queue_keys(&lease.queue);
        let jitter = rand::random::<f64>().to_string();
        let (channel, local) = self.settlement_route(lease);
        let queue_channel = queue_keys.channel();
        let args = [
            Arg::from(&lease.job_id),
            (&lease.token).into(),
            error.into(),
            micros(retry_after).into(),
            dead_letter.into(),
            (&jitter).into(),
            (self.settings.dead_retention.as_millis() as u64).into(),
            (&channel).into(),
            (&queue_channel).into(),
            self.settings.keep_dead.into(),
        ];
        match self.store.eval(&NACK, &queue_keys.nack(&lease.job_id), &args).await?.outcome()? {
            Outcome::Done(fields) => {
                if let Some(inbox) = local {
                    inbox.settle(&lease.token);
                }
                let state = fields.string(0)?;
                let state = JobState::parse(&state).ok_or_else(|| Error::Internal(format!("nack state {state}")))?;
                metrics::counter!("baton_queue_nacked_total").increment(1);
                if state == JobState::Dead {
                    metrics::counter!("baton_queue_dead_lettered_total").increment(1);
                }
                Ok((state, fields.int(1)?.max(0) as u64))
            }
            Outcome::Refused { reason, .. } => Err(Self::settle_error(&reason)),
        }
    }

    /// Moves a held lease's deadline to now + `visibility`; returns the new deadline (µs).
    pub async fn extend(&self, lease: &LeaseRef, visibility: Duration) -> Result<u64, Error> {
        let keys = self.queue_keys(&lease.queue).extend(&lease.job_id);
        let args = [Arg::from(&lease.job_id), (&lease.token).into(), micros(visibility).into()];
        match self.store.eval(&EXTEND, &keys, &args).await?.outcome()? {
            Outcome::Done(fields) => Ok(fields.int(0)?.max(0) as u64),
            Outcome::Refused { reason, .. } => Err(Self::settle_error(&reason)),
        }
    }

    /// Records a held job's progress; returns when (µs).
    pub async fn update_progress(&self, lease: &LeaseRef, value: f64, detail: &[u8]) -> Result<u64, Error> {
        let queue_keys = self.queue_keys(&lease.queue);
        let (value, channel) = (value.to_string(), queue_keys.channel());
        let args = [Arg::from(&lease.job_id), (&lease.token).into(), (&value).into(), detail.into(), (&channel).into()];
        match self.store.eval(&PROGRESS, &queue_keys.progress(&lease.job_id), &args).await?.outcome()? {
            Outcome::Done(fields) => Ok(fields.int(0)?.max(0) as u64),
            Outcome::Refused { reason, .. } => Err(Self::settle_error(&reason)),
        }
    }

    /// What each of a consumer's leases has become.
    pub async fn held(&self, leases: &[LeaseRef]) -> Result<Vec<LeaseStatus>, Error> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = leases.iter().map(|l| self.queue_keys(&l.queue).job(&l.job_id)).collect();
        let args: Vec<Arg> = leases.iter().map(|l| Arg::from(&l.token)).collect();
        let codes: Fields = self.store.eval(&HELD, &keys, &args).await?.done()?;
        (0..codes.len())
            .map(|index| {
                Ok(match codes.int(index)? {
                    1 => LeaseStatus::Held,
                    2 => LeaseStatus::Cancelled,
                    _ => LeaseStatus::Gone,
                })
            })
            .collect()
    }

    /// Returns a departed consumer's leases to the queue at once.
    pub async fn hand_back(&self, queue: &str, leases: &[LeaseRef]) -> Result<u64, Error> {
        self.run_hand_back(queue, leases, false).await
    }

    /// Hands back deliveries their worker says it never started: ready again at once, in
    /// their place, and the delivery's attempt is not charged.
    pub async fn hand_back_unstarted(&self, queue: &str, leases: &[LeaseRef]) -> Result<u64, Error> {
        self.run_hand_back(queue, leases, true).await
    }

    async fn run_hand_back(&self, queue: &str, leases: &[LeaseRef], unstarted: bool) -> Result<u64, Error> {
        if leases.is_empty() {
            return Ok(0);
        }
        let queue_keys = self.queue_keys(queue);
        let mut keys = queue_keys.hand_back();
        keys.extend(leases.iter().map(|l| queue_keys.job(&l.job_id)));
        let channel = queue_keys.channel();
        let mut args: Vec<Arg> = vec![
            (self.settings.dead_retention.as_millis() as u64).into(),
            (&channel).into(),
            unstarted.into(),
            self.settings.keep_dead.into(),
        ];
        for lease in leases {
            args.push((&lease.job_id).into());
            args.push((&lease.token).into());
        }
        let handed_back = self.store.eval(&HAND_BACK, &keys, &args).await?.done()?.uint(0)?;
        let cause = if unstarted { "unstarted" } else { "stream_ended" };
        metrics::counter!("baton_queue_redelivered_total", "cause" => cause).increment(handed_back);
        Ok(handed_back)
    }

    pub async fn get_job(&self, job_id: &str) -> Result<Option<Job>, Error> {
        let queue = queue_of_job(job_id).ok_or_else(|| Error::invalid("job_id", "is not a job id issued by Baton"))?;
        let fields: HashMap<String, Vec<u8>> = self
            .store
            .command("queue_get_job", &Command::new("HGETALL").arg(&self.queue_keys(&queue).job(job_id)))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_job_hash(&queue, job_id, &fields).map(Some)
    }

    /// Cancels a job; returns whether it was cancelled and its state afterwards (None: no such job).
    pub async fn cancel(&self, job_id: &str) -> Result<(bool, Option<JobState>), Error> {
        let queue = queue_of_job(job_id).ok_or_else(|| Error::invalid("job_id", "is not a job id issued by Baton"))?;
        let queue_keys = self.queue_keys(&queue);
        let channel = queue_keys.channel();
        let args = [Arg::from(job_id), (self.settings.retention.as_millis() as u64).into(), (&channel).into()];
        let fields = self.store.eval(&CANCEL, &queue_keys.cancel(job_id), &args).await?.done()?;
        Ok((fields.int(0)? == 1, JobState::parse(&fields.string(1)?)))
    }

    pub async fn stats(&self, queue: &str) -> Result<QueueStats, Error> {
        let args = [micros(self.settings.dead_retention).into(), micros(self.settings.retention).into()];
        let counts = self.store.eval(&STATS, &self.queue_keys(queue).whole_queue(), &args).await?.done()?;
        let [ready, scheduled, active, dead, paused, age, succeeded] =
            [0, 1, 2, 3, 4, 5, 6].map(|index| counts.int(index));
        let (ready, scheduled, active, dead, paused, age) = (ready?, scheduled?, active?, dead?, paused?, age?);
        let count = |n: i64| n.max(0) as u64;
        record_queue_gauges(
            self.keys.namespace(),
            queue,
            [("ready", ready), ("scheduled", scheduled), ("active", active), ("dead", dead)],
        );
        Ok(QueueStats {
            ready: count(ready),
            scheduled: count(scheduled),
            active: count(active),
            dead: count(dead),
            paused: paused == 1,
            oldest_ready_age: Duration::from_micros(count(age)),
            succeeded: count(succeeded?),
        })
    }

    /// A page of the jobs in `state` (one with an index: see [`QueueKeys::index_of`]), in
    /// their index's order — newest first for SUCCEEDED; `offset` pages.
    pub async fn list_jobs(
        &self,
        queue: &str,
        state: JobState,
        offset: usize,
        page_size: usize,
    ) -> Result<(Vec<Job>, bool), Error> {
        let queue_keys = self.queue_keys(queue);
        let index = queue_keys.index_of(state).ok_or_else(|| Error::invalid("state", "has no list"))?;
        let end = (offset + page_size) as u64; // one extra tells whether a next page exists
        let mut range = Command::new("ZRANGE").arg(&index).arg(offset).arg(end);
        if state == JobState::Succeeded {
            range = range.arg("REV");
        }
        let ids: Vec<String> = self.store.command("queue_list_jobs", &range).await?;
        let more = ids.len() > page_size;
        let ids = &ids[..ids.len().min(page_size)];
        let mut pipe = Pipeline::new();
        for id in ids {
            pipe.add(Command::new("HGETALL").arg(&queue_keys.job(id)));
        }
        let hashes: Vec<HashMap<String, Vec<u8>>> =
            if ids.is_empty() { Vec::new() } else { self.store.pipeline("queue_list_jobs_read", &pipe).await? };
        let mut jobs = Vec::new();
        for (id, fields) in ids.iter().zip(hashes) {
            // An entry whose job hash has expired is a leftover for the next sweep.
            if !fields.is_empty() {
                jobs.push(decode_job_hash(queue, id, &fields)?);
            }
        }
        Ok((jobs, more))
    }

    /// Redrives dead jobs (all of the first 1000 when `job_ids` is empty).
    pub async fn retry_dead(&self, queue: &str, job_ids: &[String]) -> Result<u64, Error> {
        let queue_keys = self.queue_keys(queue);
        let ids = self.dead_ids(&queue_keys, job_ids).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut keys = queue_keys.retry_dead();
        keys.extend(ids.iter().map(|id| queue_keys.job(id)));
        let channel = queue_keys.channel();
        let mut args: Vec<Arg> = ids.iter().map(Arg::from).collect();
        args.push((&channel).into());
        Ok(self.store.eval(&RETRY_DEAD, &keys, &args).await?.done()?.uint(0)?)
    }

    /// Jobs enqueued and jobs succeeded per minute, over the last full minute (enqueues)
    /// and the last 60 s (successes, from the kept succeeded jobs: when the newest kept
    /// ones span less than a minute, scaled from the span they cover).
    pub async fn rates(&self, queue: &str, now_micros: u64) -> Result<(u64, u64), Error> {
        const MINUTE: u64 = 60_000_000;
        let queue_keys = self.queue_keys(queue);
        let succeeded =
            queue_keys.index_of(JobState::Succeeded).ok_or_else(|| Error::Internal("no succeeded index".into()))?;
        let since = now_micros.saturating_sub(MINUTE);
        let mut pipe = Pipeline::new();
        pipe.add(Command::new("HGET").arg(&queue_keys.enqueued()).arg(now_micros / MINUTE - 1));
        pipe.add(Command::new("ZCOUNT").arg(&succeeded).arg(since).arg("+inf"));
        pipe.add(Command::new("ZRANGE").arg(&succeeded).arg(0u64).arg(0u64).arg("WITHSCORES"));
        pipe.add(Command::new("ZCARD").arg(&succeeded));
        let (enqueued, succeeded, oldest, kept): (Option<u64>, u64, Vec<(String, f64)>, u64) =
            self.store.pipeline("queue_rates", &pipe).await?;
        let trimmed = kept >= self.settings.keep_succeeded;
        let covered = match oldest.first() {
            Some((_, oldest)) if trimmed && (*oldest as u64) > since => {
                now_micros.saturating_sub(*oldest as u64).max(1)
            }
            _ => MINUTE,
        };
        Ok((enqueued.unwrap_or(0), succeeded * MINUTE / covered))
    }

    /// Up to `limit` groups of `queue` with jobs ready or active: (group, ready, active),
    /// by name.
    pub async fn groups(&self, queue: &str, limit: usize) -> Result<Vec<(String, u64, u64)>, Error> {
        let queue_keys = self.queue_keys(queue);
        let [waiting, gactive] = queue_keys.groups();
        let active: HashMap<String, u64> =
            self.store.command("queue_groups", &Command::new("HGETALL").arg(&gactive)).await?;
        let turn: Vec<String> = self
            .store
            .command("queue_groups", &Command::new("ZRANGE").arg(&waiting).arg(0u64).arg(limit as u64))
            .await?;
        let mut names: Vec<String> = active.keys().cloned().chain(turn).collect();
        names.sort();
        names.dedup();
        names.truncate(limit);
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = Pipeline::new();
        for name in &names {
            pipe.add(Command::new("ZCARD").arg(&queue_keys.group_ready(name)));
        }
        let ready: Vec<u64> = self.store.pipeline("queue_groups", &pipe).await?;
        Ok(names
            .into_iter()
            .zip(ready)
            .map(|(name, ready)| {
                let active = active.get(&name).copied().unwrap_or(0);
                (name, ready, active)
            })
            .collect())
    }

    /// Deletes dead jobs for good (all of the first 1000 when `job_ids` is empty).
    pub async fn delete_dead(&self, queue: &str, job_ids: &[String]) -> Result<u64, Error> {
        let queue_keys = self.queue_keys(queue);
        let ids = self.dead_ids(&queue_keys, job_ids).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut keys = vec![queue_keys.dead()];
        keys.extend(ids.iter().map(|id| queue_keys.job(id)));
        let args: Vec<Arg> = ids.iter().map(Arg::from).collect();
        Ok(self.store.eval(&DELETE_DEAD, &keys, &args).await?.done()?.uint(0)?)
    }

    /// `job_ids`, or the first 1000 dead jobs when it is empty.
    async fn dead_ids(&self, queue_keys: &QueueKeys<'_>, job_ids: &[String]) -> Result<Vec<String>, Error> {
        if !job_ids.is_empty() {
            return Ok(job_ids.to_vec());
        }
        let first = Command::new("ZRANGE").arg(&queue_keys.dead()).arg(0u64).arg(999u64);
        Ok(self.store.command("queue_list_dead", &first).await?)
    }

    /// Sets a queue's whole configuration (the round-robin counters stay).
    pub async fn configure(&self, queue: &str, config: &QueueConfig) -> Result<(), Error> {
        let mut fields: Vec<(&str, String)> = Vec::new();
        if config.group_concurrency > 0 {
            fields.push(("gc", config.group_concurrency.to_string()));
        }
        if config.group_fifo {
            fields.push(("fifo", "1".into()));
        }
        if let Some(spec) = &config.start_limit {
            fields.extend([
                ("lim_alg", spec.algorithm.script_code().to_string()),
                ("lim_limit", spec.limit.to_string()),
                ("lim_period", spec.period_micros().to_string()),
                ("lim_burst", spec.burst.to_string()),
                ("lim_key", spec.key_part()),
            ]);
            if config.start_limit_per_group {
                fields.push(("lim_per_group", "1".into()));
            }
        }
        let channel = self.channel(queue);
        let mut args: Vec<Arg> = vec![(&channel).into()];
        for (name, value) in &fields {
            args.push((*name).into());
            args.push(value.into());
        }
        let keys = [self.queue_keys(queue).config()];
        self.store.eval(&CONFIGURE, &keys, &args).await?.done()?;
        Ok(())
    }

    pub async fn config(&self, queue: &str) -> Result<QueueConfig, Error> {
        let fields: HashMap<String, String> = self
            .store
            .command("queue_get_config", &Command::new("HGETALL").arg(&self.queue_keys(queue).config()))
            .await?;
        let number = |name: &str| fields.get(name).and_then(|value| value.parse::<u64>().ok());
        let start_limit = match (number("lim_alg"), number("lim_limit"), number("lim_period")) {
            (Some(code), Some(limit), Some(period)) => {
                crate::ratelimit::Algorithm::from_script_code(code).map(|algorithm| crate::ratelimit::LimitSpec {
                    algorithm,
                    limit,
                    period: Duration::from_micros(period),
                    burst: number("lim_burst").unwrap_or(0),
                })
            }
            _ => None,
        };
        Ok(QueueConfig {
            group_concurrency: number("gc").unwrap_or(0) as u32,
            group_fifo: fields.get("fifo").is_some_and(|value| value == "1"),
            start_limit_per_group: start_limit.is_some()
                && fields.get("lim_per_group").is_some_and(|value| value == "1"),
            start_limit,
        })
    }

    pub async fn pause(&self, queue: &str) -> Result<(), Error> {
        let _: () = self
            .store
            .command("queue_pause", &Command::new("SET").arg(&self.queue_keys(queue).paused()).arg(1u64))
            .await?;
        Ok(())
    }

    pub async fn resume(&self, queue: &str) -> Result<(), Error> {
        let queue_keys = self.queue_keys(queue);
        let mut pipe = Pipeline::new();
        pipe.ignored(Command::new("DEL").arg(&queue_keys.paused()));
        pipe.ignored(Command::new("PUBLISH").arg(&queue_keys.channel()).arg("ready"));
        let _: () = self.store.pipeline("queue_resume", &pipe).await?;
        Ok(())
    }
}

/// Items per batch script: a 1000-item batch as one script would hold Redis for
/// milliseconds; chunks of 100 keep each step short and still amortise the call.
const SCRIPT_CHUNK: usize = 100;

/// Runs `run` on the items of each queue, at most [`SCRIPT_CHUNK`] at a time, all at once
/// (the scripts pipeline on the multiplexed connection), and returns each item's outcome
/// in the items' order. A call that fails fails the whole (some calls may have applied).
async fn per_queue<'a, T, O, Fut>(
    items: &'a [T],
    queue_of: impl Fn(&'a T) -> &'a str,
    run: impl Fn(&'a str, Vec<&'a T>) -> Fut,
) -> Result<Vec<O>, Error>
where
    Fut: Future<Output = Result<Vec<O>, Error>>,
{
    let mut by_queue: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        by_queue.entry(queue_of(item)).or_default().push(index);
    }
    let calls = by_queue.into_iter().flat_map(|(queue, indexes)| {
        indexes.chunks(SCRIPT_CHUNK).map(|chunk| (queue, chunk.to_vec())).collect::<Vec<_>>()
    });
    let answered = join_all(calls.map(|(queue, indexes)| {
        let call = run(queue, indexes.iter().map(|&index| &items[index]).collect());
        async move { (indexes, call.await) }
    }))
    .await;
    let mut outcomes: Vec<Option<O>> = items.iter().map(|_| None).collect();
    for (indexes, answer) in answered {
        for (index, outcome) in indexes.into_iter().zip(answer?) {
            outcomes[index] = Some(outcome);
        }
    }
    outcomes
        .into_iter()
        .map(|outcome| outcome.ok_or_else(|| Error::Internal("a queue script answered fewer items than given".into())))
        .collect()
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A job read back with a plain `HGETALL` (GetJob, ListJobs).
fn decode_job_hash(queue: &str, job_id: &str, fields: &HashMap<String, Vec<u8>>) -> Result<Job, Error> {
    decode_job(queue, job_id, fields.iter().map(|(name, value)| (name.as_bytes(), value.as_slice())))
}

/// A job from its hash's fields, in any order (those it does not know are skipped). The
/// scripts store only the fields that say something: an absent one is empty or zero, and an
/// absent `run_at` is `created_at` (a job due when it was enqueued).
fn decode_job<'a>(
    queue: &str,
    job_id: &str,
    fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<Job, Error> {
    let text = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
    let number =
        |value: &[u8]| std::str::from_utf8(value).ok().and_then(|text| text.parse::<f64>().ok()).unwrap_or(0.0);
    let mut job = Job {
        job_id: job_id.to_owned(),
        queue: queue.to_owned(),
        job_type: String::new(),
        payload: Vec::new(),
        priority: 0,
        state: JobState::Ready,
        attempts: 0,
        max_attempts: 0,
        created_at_micros: 0,
        run_at_micros: 0,
        last_error: String::new(),
        result: Vec::new(),
        dedup_key: String::new(),
        backoff: Backoff { initial: Duration::ZERO, max: Duration::ZERO, multiplier: 0.0 },
        finished_at_micros: None,
        trace_context: String::new(),
        progress: None,
        group: String::new(),
    };
    let (mut state, mut run_at) = (None, None);
    let (mut progress, mut progress_detail, mut progress_at) = (0.0, Vec::new(), None);
    for (name, value) in fields {
        match name {
            b"type" => job.job_type = text(value),
            b"payload" => job.payload = value.to_vec(),
            b"spec" => {
                let spec = std::str::from_utf8(value).ok().and_then(parse_spec);
                let (priority, max_attempts, backoff) =
                    spec.ok_or_else(|| Error::Internal(format!("job {job_id} has no valid spec")))?;
                (job.priority, job.max_attempts, job.backoff) = (priority, max_attempts, backoff);
            }
            b"state" => state = std::str::from_utf8(value).ok().and_then(JobState::parse),
            b"attempts" => job.attempts = number(value) as u32,
            b"created_at" => job.created_at_micros = number(value) as u64,
            b"run_at" => run_at = Some(number(value) as u64),
            b"last_error" => job.last_error = text(value),
            b"result" => job.result = value.to_vec(),
            b"dedup_key" => job.dedup_key = text(value),
            b"finished_at" => job.finished_at_micros = Some(number(value) as u64).filter(|at| *at > 0),
            b"trace" => job.trace_context = text(value),
            b"group" => job.group = text(value),
            b"progress" => progress = number(value),
            b"progress_detail" => progress_detail = value.to_vec(),
            b"progress_at" => progress_at = Some(number(value) as u64),
            _ => {}
        }
    }
    job.state = state.ok_or_else(|| Error::Internal(format!("job {job_id} has no state")))?;
    // A job due when it was enqueued has no run_at of its own.
    job.run_at_micros = run_at.unwrap_or(job.created_at_micros);
    job.progress =
        progress_at.map(|reported_at_micros| Progress { value: progress, detail: progress_detail, reported_at_micros });
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_reads_back_as_written() {
        let backoffs = [
            Backoff { initial: Duration::from_micros(1), max: Duration::from_secs(86_400), multiplier: 2.5 },
            Backoff { initial: Duration::ZERO, max: Duration::ZERO, multiplier: 1.0 },
            Backoff { initial: Duration::from_millis(1500), max: Duration::from_secs(60), multiplier: 0.001 },
        ];
        for (priority, max_attempts, backoff) in
            [(-1000, 1, &backoffs[0]), (0, u32::MAX, &backoffs[1]), (1000, 7, &backoffs[2])]
        {
            let written = spec(priority, max_attempts, backoff);
            let (read_priority, read_attempts, read_backoff) = parse_spec(&written).expect(&written);
            assert_eq!((read_priority, read_attempts), (priority, max_attempts), "{written}");
            assert_eq!(
                (read_backoff.initial, read_backoff.max, read_backoff.multiplier),
                (backoff.initial, backoff.max, backoff.multiplier),
                "{written}"
            );
        }
        for broken in ["", "1 2 3 4", "1 2 3 4 x", "a 2 3 4 5", "1 2 3 4 5 6"] {
            assert!(parse_spec(broken).is_none(), "{broken:?} is no spec");
        }
    }

    #[test]
    fn absent_fields_read_as_their_defaults() {
        let fields: [(&[u8], &[u8]); 4] = [
            (b"state", b"READY"),
            (b"created_at", b"1700000000000000"),
            (b"spec", b"-2 5 10 20 2"),
            (b"payload", b"x"),
        ];
        let job = decode_job("q", "j", fields).unwrap();
        assert_eq!(job.run_at_micros, 1_700_000_000_000_000, "run_at defaults to created_at");
        assert_eq!((job.priority, job.max_attempts, job.attempts), (-2, 5, 0));
        assert!(job.job_type.is_empty() && job.dedup_key.is_empty() && job.result.is_empty());
    }
}
