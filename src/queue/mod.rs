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

pub mod grpc;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::join_all;
use redis::Script;
use tokio::sync::Notify;

use crate::error::Error;
use crate::store::keys::Pattern;
use crate::store::notify::Notifier;
use crate::store::{KeyBuilder, Store};

macro_rules! queue_script {
    ($file:literal) => {
        LazyLock::new(|| crate::store::script(&[include_str!("prelude.lua"), include_str!($file)]))
    };
}

static ENQUEUE: LazyLock<Script> = queue_script!("enqueue.lua");
static FETCH: LazyLock<Script> = queue_script!("fetch.lua");
static ACK: LazyLock<Script> = queue_script!("ack.lua");
static NACK: LazyLock<Script> = queue_script!("nack.lua");
static EXTEND: LazyLock<Script> = queue_script!("extend.lua");
static HAND_BACK: LazyLock<Script> = queue_script!("hand_back.lua");
static HELD: LazyLock<Script> = queue_script!("held.lua");
static CANCEL: LazyLock<Script> = queue_script!("cancel.lua");
static RETRY_DEAD: LazyLock<Script> = queue_script!("retry_dead.lua");
static STATS: LazyLock<Script> = queue_script!("stats.lua");

pub const MIN_PRIORITY: i32 = -1000;
pub const MAX_PRIORITY: i32 = 1000;
const LEASE_TOKEN_BYTES: usize = 16;
const STREAM_ID_BYTES: usize = 8;

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
}

/// A job leased to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub job: Job,
    pub lease: LeaseRef,
    pub attempt: u32,
    pub lease_deadline_micros: u64,
}

/// What a consumer's lease has become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    Held,
    Cancelled,
    Gone,
}

/// A lease id, decoded: `<token>.<job id>`, the job id being `<uuid v7>.<queue, base64url>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    pub queue: String,
    pub job_id: String,
    pub token: String,
}

impl LeaseRef {
    pub fn parse(lease_id: &str) -> Option<Self> {
        let (token, job_id) = lease_id.split_once('.')?;
        if !crate::secret::is_hex(token, LEASE_TOKEN_BYTES) {
            return None;
        }
        let queue = queue_of_job(job_id)?;
        Some(Self { queue, job_id: job_id.to_owned(), token: token.to_owned() })
    }

    pub fn lease_id(&self) -> String {
        format!("{}.{}", self.token, self.job_id)
    }
}

/// A new, time-sortable job id carrying its queue.
pub fn new_job_id(queue: &str) -> String {
    format!("{}.{}", uuid::Uuid::now_v7(), URL_SAFE_NO_PAD.encode(queue))
}

/// The queue a job id belongs to, if the id is well formed.
pub fn queue_of_job(job_id: &str) -> Option<String> {
    let (uuid, queue) = job_id.split_once('.')?;
    uuid::Uuid::try_parse(uuid).ok().filter(|id| id.get_version_num() == 7)?;
    let queue = String::from_utf8(URL_SAFE_NO_PAD.decode(queue).ok()?).ok()?;
    (!queue.is_empty()).then_some(queue)
}

/// A consumer stream's id: the first half of every lease token it is given, so that a
/// settlement (through any replica) can wake exactly the stream that held the lease.
pub fn new_stream_id() -> String {
    crate::secret::random_hex(STREAM_ID_BYTES)
}

/// A lease token: the stream's id, then 64 random bits of its own. Both halves come from
/// the OS CSPRNG, so the whole token is 128 unguessable bits.
fn new_lease_token(stream_id: &str) -> String {
    format!("{stream_id}{}", crate::secret::random_hex(LEASE_TOKEN_BYTES - STREAM_ID_BYTES))
}

/// Retention and defaults from the command line.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// How long succeeded and cancelled jobs (and their results) are kept.
    pub retention: Duration,
    /// How long dead jobs are kept for inspection and redrive.
    pub dead_retention: Duration,
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
}

/// Where an Ack or Nack through this process tells a Consume stream of this process that
/// one of its leases is settled: no PUBLISH, no pub/sub round trip, and no re-reading of the
/// stream's leases from Redis. Settlements through other replicas still go over pub/sub.
#[derive(Default)]
pub struct SettledInbox {
    tokens: Mutex<Vec<String>>,
    wake: Notify,
}

impl SettledInbox {
    fn settle(&self, token: &str) {
        self.tokens.lock().expect("inbox lock").push(token.to_owned());
        // A stored permit: a settlement while the stream is busy still wakes it afterwards.
        self.wake.notify_one();
    }

    /// Resolves once a settlement arrived since the last call.
    pub async fn settled(&self) {
        self.wake.notified().await;
    }

    /// The tokens settled since the last drain.
    pub fn drain(&self) -> HashSet<String> {
        self.tokens.lock().expect("inbox lock").drain(..).collect()
    }
}

/// This process's Consume streams, by their channel.
#[derive(Default)]
struct LocalStreams {
    by_channel: Mutex<HashMap<String, Arc<SettledInbox>>>,
}

impl LocalStreams {
    fn get(&self, channel: &str) -> Option<Arc<SettledInbox>> {
        self.by_channel.lock().expect("streams lock").get(channel).cloned()
    }
}

/// A Consume stream's place in [`LocalStreams`], given up when the stream ends.
pub struct LocalStream {
    streams: Arc<LocalStreams>,
    channel: String,
    pub inbox: Arc<SettledInbox>,
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        self.streams.by_channel.lock().expect("streams lock").remove(&self.channel);
    }
}

#[derive(Clone)]
pub struct QueueManager {
    store: Store,
    keys: KeyBuilder,
    notifier: Notifier,
    settings: QueueSettings,
    local_streams: Arc<LocalStreams>,
}

impl QueueManager {
    pub fn new(store: Store, keys: KeyBuilder, notifier: Notifier, settings: QueueSettings) -> Self {
        Self { store, keys, notifier, settings, local_streams: Arc::default() }
    }

    /// The same manager acting for another tenant namespace.
    pub fn scoped(&self, namespace: &str) -> Self {
        Self { keys: KeyBuilder::new(namespace), ..self.clone() }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn key(&self, queue: &str, part: &str) -> String {
        self.keys.key(Pattern::Queue, queue, part)
    }

    fn job_key(&self, queue: &str, job_id: &str) -> String {
        self.key(queue, &format!("job:{job_id}"))
    }

    fn channel(&self, queue: &str) -> String {
        self.keys.channel(Pattern::Queue, queue)
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
        let channel = self.stream_channel(queue, stream_id);
        let inbox = Arc::new(SettledInbox::default());
        self.local_streams.by_channel.lock().expect("streams lock").insert(channel.clone(), inbox.clone());
        LocalStream { streams: self.local_streams.clone(), channel, inbox }
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
        let mut keys = vec![self.key(queue, "ready"), self.key(queue, "ready_since"), self.key(queue, "scheduled")];
        let mut args: Vec<Vec<u8>> = vec![self.channel(queue).into_bytes()];
        for job in jobs {
            let job_id = new_job_id(queue);
            let (dedup_key, dedup_ttl) = match &job.dedup {
                Some((key, ttl)) => (key.as_str(), ttl.as_millis().max(1)),
                None => ("", 1),
            };
            keys.push(self.job_key(queue, &job_id));
            keys.push(self.key(queue, &format!("dedup:{dedup_key}")));
            args.extend([
                job_id.into_bytes(),
                job.job_type.clone().into_bytes(),
                job.payload.clone(),
                job.priority.to_string().into_bytes(),
                job.max_attempts.to_string().into_bytes(),
                job.backoff.initial.as_micros().to_string().into_bytes(),
                job.backoff.max.as_micros().to_string().into_bytes(),
                job.backoff.multiplier.to_string().into_bytes(),
                job.delay.as_micros().to_string().into_bytes(),
                job.run_at_micros.to_string().into_bytes(),
                dedup_key.as_bytes().to_vec(),
                dedup_ttl.to_string().into_bytes(),
            ]);
        }
        let replies: Vec<(String, i64)> = self.store.run_script("queue_enqueue", &ENQUEUE, &keys, &args).await?;
        let duplicates = replies.iter().filter(|(_, duplicate)| *duplicate == 1).count() as u64;
        metrics::counter!("baton_queue_enqueued_total", "duplicate" => "true").increment(duplicates);
        metrics::counter!("baton_queue_enqueued_total", "duplicate" => "false")
            .increment(replies.len() as u64 - duplicates);
        Ok(replies.into_iter().map(|(id, duplicate)| (id, duplicate == 1)).collect())
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
        let keys: Vec<String> = ["ready", "ready_since", "scheduled", "active", "dead", "paused"]
            .iter()
            .map(|part| self.key(queue, part))
            .collect();
        let tokens: Vec<String> = (0..count).map(|_| new_lease_token(stream_id)).collect();
        let mut args: Vec<Vec<u8>> = vec![
            self.key(queue, "job:").into_bytes(),
            count.to_string().into_bytes(),
            visibility.as_micros().to_string().into_bytes(),
            self.settings.dead_retention.as_millis().to_string().into_bytes(),
            self.channel(queue).into_bytes(),
            types.len().to_string().into_bytes(),
        ];
        args.extend(types.iter().map(|t| t.clone().into_bytes()));
        args.extend(tokens.into_iter().map(String::into_bytes));
        let reply: redis::Value = self.store.run_script("queue_fetch", &FETCH, &keys, &args).await?;
        let redis::Value::Array(items) = reply else {
            return Err(Error::Internal("fetch script returned a non-array".into()));
        };
        let mut items = items.into_iter();
        let next_event = match items.next() {
            Some(redis::Value::Int(micros)) if micros >= 0 => Some(Duration::from_micros(micros as u64)),
            _ => None,
        };
        if let Some(redis::Value::Int(reclaimed)) = items.next()
            && reclaimed > 0
        {
            metrics::counter!("baton_queue_redelivered_total", "cause" => "lease_expired").increment(reclaimed as u64);
        }
        let mut deliveries = Vec::new();
        for item in items {
            let redis::Value::Array(parts) = item else {
                return Err(Error::Internal("fetch script returned a malformed delivery".into()));
            };
            let [id, attempt, token, deadline, fields] = <[redis::Value; 5]>::try_from(parts)
                .map_err(|_| Error::Internal("fetch script returned a malformed delivery".into()))?;
            let job_id: String = from_value(id)?;
            let job = decode_job(queue, &job_id, from_value(fields)?)?;
            deliveries.push(Delivery {
                lease: LeaseRef { queue: queue.to_owned(), job_id, token: from_value(token)? },
                attempt: from_value(attempt)?,
                lease_deadline_micros: from_value::<String>(deadline)?.parse().unwrap_or(0),
                job,
            });
        }
        if !deliveries.is_empty() {
            metrics::counter!("baton_queue_delivered_total").increment(deliveries.len() as u64);
        }
        Ok((deliveries, next_event))
    }

    fn settle_error(reason: &str) -> Error {
        match reason {
            "JOB_CANCELLED" => Error::FailedPrecondition {
                reason: "JOB_CANCELLED",
                message: "the job was cancelled; this lease can no longer settle it".into(),
            },
            _ => Error::FailedPrecondition {
                reason: "JOB_NOT_LEASED",
                message: "this lease is not the job's current one: it expired, was re-delivered, or the job is gone"
                    .into(),
            },
        }
    }

    pub async fn ack(&self, lease: &LeaseRef, result: &[u8]) -> Result<(), Error> {
        let mut outcomes = self.ack_batch(&[(lease.clone(), result.to_vec())]).await?;
        outcomes.pop().unwrap_or_else(|| Err(Error::Internal("ack script returned nothing".into())))
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
        let mut keys = vec![self.key(queue, "active")];
        let mut args = vec![self.settings.retention.as_millis().to_string().into_bytes()];
        let mut told_directly = Vec::new();
        for (lease, result) in acks {
            let (channel, local) = self.settlement_route(lease);
            keys.push(self.job_key(queue, &lease.job_id));
            args.extend([lease.job_id.clone().into_bytes(), lease.token.clone().into_bytes(), result.clone()]);
            args.push(channel.into_bytes());
            told_directly.push((local, lease.token.as_str()));
        }
        let replies: Vec<redis::Value> = self.store.run_script("queue_ack", &ACK, &keys, &args).await?;
        Ok(replies
            .into_iter()
            .zip(told_directly)
            .map(|(reply, (local, token))| match reply {
                redis::Value::Int(1) => {
                    if let Some(inbox) = local {
                        inbox.settle(token);
                    }
                    Ok(())
                }
                refusal => {
                    Err(from_value::<String>(refusal).map_or_else(|err| err, |reason| Self::settle_error(&reason)))
                }
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
        let q = &lease.queue;
        let keys =
            [self.job_key(q, &lease.job_id), self.key(q, "active"), self.key(q, "scheduled"), self.key(q, "dead")];
        let jitter: f64 = rand::random();
        let (channel, local) = self.settlement_route(lease);
        let args = vec![
            lease.job_id.clone().into_bytes(),
            lease.token.clone().into_bytes(),
            error.as_bytes().to_vec(),
            retry_after.as_micros().to_string().into_bytes(),
            if dead_letter { b"1".to_vec() } else { b"0".to_vec() },
            jitter.to_string().into_bytes(),
            self.settings.dead_retention.as_millis().to_string().into_bytes(),
            channel.into_bytes(),
            self.channel(q).into_bytes(),
        ];
        let reply: (String, redis::Value) = self.store.run_script("queue_nack", &NACK, &keys, &args).await?;
        match reply {
            (state, redis::Value::Int(run_at)) => {
                if let Some(inbox) = local {
                    inbox.settle(&lease.token);
                }
                let state = JobState::parse(&state).ok_or_else(|| Error::Internal(format!("nack state {state}")))?;
                metrics::counter!("baton_queue_nacked_total").increment(1);
                if state == JobState::Dead {
                    metrics::counter!("baton_queue_dead_lettered_total").increment(1);
                }
                Ok((state, run_at.max(0) as u64))
            }
            (_, reason) => Err(Self::settle_error(&from_value::<String>(reason)?)),
        }
    }

    /// Moves a held lease's deadline to now + `visibility`; returns the new deadline (µs).
    pub async fn extend(&self, lease: &LeaseRef, visibility: Duration) -> Result<u64, Error> {
        let keys = [self.job_key(&lease.queue, &lease.job_id), self.key(&lease.queue, "active")];
        let args = vec![
            lease.job_id.clone().into_bytes(),
            lease.token.clone().into_bytes(),
            visibility.as_micros().to_string().into_bytes(),
        ];
        let (ok, value): (i64, redis::Value) = self.store.run_script("queue_extend", &EXTEND, &keys, &args).await?;
        if ok == 1 {
            Ok(from_value::<i64>(value)?.max(0) as u64)
        } else {
            Err(Self::settle_error(&from_value::<String>(value)?))
        }
    }

    /// What each of a consumer's leases has become.
    pub async fn held(&self, leases: &[LeaseRef]) -> Result<Vec<LeaseStatus>, Error> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = leases.iter().map(|l| self.job_key(&l.queue, &l.job_id)).collect();
        let args: Vec<Vec<u8>> = leases.iter().map(|l| l.token.clone().into_bytes()).collect();
        let codes: Vec<i64> = self.store.run_script("queue_held", &HELD, &keys, &args).await?;
        Ok(codes
            .into_iter()
            .map(|code| match code {
                1 => LeaseStatus::Held,
                2 => LeaseStatus::Cancelled,
                _ => LeaseStatus::Gone,
            })
            .collect())
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
        let mut keys: Vec<String> =
            ["ready", "ready_since", "active", "dead"].iter().map(|p| self.key(queue, p)).collect();
        keys.extend(leases.iter().map(|l| self.job_key(queue, &l.job_id)));
        let mut args = vec![
            self.settings.dead_retention.as_millis().to_string().into_bytes(),
            self.channel(queue).into_bytes(),
            if unstarted { b"1".to_vec() } else { b"0".to_vec() },
        ];
        for lease in leases {
            args.push(lease.job_id.clone().into_bytes());
            args.push(lease.token.clone().into_bytes());
        }
        let handed_back: u64 = self.store.run_script("queue_hand_back", &HAND_BACK, &keys, &args).await?;
        let cause = if unstarted { "unstarted" } else { "stream_ended" };
        metrics::counter!("baton_queue_redelivered_total", "cause" => cause).increment(handed_back);
        Ok(handed_back)
    }

    pub async fn get_job(&self, job_id: &str) -> Result<Option<Job>, Error> {
        let queue = queue_of_job(job_id).ok_or_else(|| Error::invalid("job_id", "is not a job id issued by Baton"))?;
        let fields: HashMap<String, Vec<u8>> =
            self.store.command("queue_get_job", redis::cmd("HGETALL").arg(self.job_key(&queue, job_id))).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode_job(&queue, job_id, fields.into_iter().collect()).map(Some)
    }

    /// Cancels a job; returns whether it was cancelled and its state afterwards (None: no such job).
    pub async fn cancel(&self, job_id: &str) -> Result<(bool, Option<JobState>), Error> {
        let queue = queue_of_job(job_id).ok_or_else(|| Error::invalid("job_id", "is not a job id issued by Baton"))?;
        let mut keys = vec![self.job_key(&queue, job_id)];
        keys.extend(["ready", "ready_since", "scheduled", "active"].iter().map(|p| self.key(&queue, p)));
        let args = vec![
            job_id.as_bytes().to_vec(),
            self.settings.retention.as_millis().to_string().into_bytes(),
            self.channel(&queue).into_bytes(),
        ];
        let (cancelled, state): (i64, String) = self.store.run_script("queue_cancel", &CANCEL, &keys, &args).await?;
        Ok((cancelled == 1, JobState::parse(&state)))
    }

    pub async fn stats(&self, queue: &str) -> Result<QueueStats, Error> {
        let keys: Vec<String> = ["ready", "ready_since", "scheduled", "active", "dead", "paused"]
            .iter()
            .map(|p| self.key(queue, p))
            .collect();
        let args = vec![self.settings.dead_retention.as_micros().to_string().into_bytes()];
        let counts: Vec<i64> = self.store.run_script("queue_stats", &STATS, &keys, &args).await?;
        let [ready, scheduled, active, dead, paused, age] = <[i64; 6]>::try_from(counts)
            .map_err(|_| Error::Internal("stats script returned a malformed reply".into()))?;
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
        })
    }

    /// Dead jobs, oldest death first; `offset` pages.
    pub async fn list_dead(&self, queue: &str, offset: usize, page_size: usize) -> Result<(Vec<Job>, bool), Error> {
        let end = (offset + page_size) as isize; // one extra tells whether a next page exists
        let ids: Vec<String> = self
            .store
            .command("queue_list_dead", redis::cmd("ZRANGE").arg(self.key(queue, "dead")).arg(offset).arg(end))
            .await?;
        let more = ids.len() > page_size;
        let ids = &ids[..ids.len().min(page_size)];
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.job_key(queue, id));
        }
        let hashes: Vec<HashMap<String, Vec<u8>>> =
            if ids.is_empty() { Vec::new() } else { self.store.pipeline("queue_list_dead_jobs", &pipe).await? };
        let mut jobs = Vec::new();
        for (id, fields) in ids.iter().zip(hashes) {
            // An entry whose job hash has expired is a leftover for the next stats sweep.
            if !fields.is_empty() {
                jobs.push(decode_job(queue, id, fields.into_iter().collect())?);
            }
        }
        Ok((jobs, more))
    }

    /// Redrives dead jobs (all of the first 1000 when `job_ids` is empty).
    pub async fn retry_dead(&self, queue: &str, job_ids: &[String]) -> Result<u64, Error> {
        let ids: Vec<String> = if job_ids.is_empty() {
            self.store
                .command("queue_list_dead", redis::cmd("ZRANGE").arg(self.key(queue, "dead")).arg(0).arg(999))
                .await?
        } else {
            job_ids.to_vec()
        };
        if ids.is_empty() {
            return Ok(0);
        }
        let mut keys: Vec<String> = ["ready", "ready_since", "dead"].iter().map(|p| self.key(queue, p)).collect();
        keys.extend(ids.iter().map(|id| self.job_key(queue, id)));
        let mut args: Vec<Vec<u8>> = ids.iter().map(|id| id.clone().into_bytes()).collect();
        args.push(self.channel(queue).into_bytes());
        Ok(self.store.run_script("queue_retry_dead", &RETRY_DEAD, &keys, &args).await?)
    }

    pub async fn pause(&self, queue: &str) -> Result<(), Error> {
        let _: () = self.store.command("queue_pause", redis::cmd("SET").arg(self.key(queue, "paused")).arg(1)).await?;
        Ok(())
    }

    pub async fn resume(&self, queue: &str) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(self.key(queue, "paused")).ignore();
        pipe.cmd("PUBLISH").arg(self.channel(queue)).arg("ready").ignore();
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

fn from_value<T: redis::FromRedisValue>(value: redis::Value) -> Result<T, Error> {
    redis::from_redis_value(value).map_err(|err| Error::Internal(format!("queue script reply: {err}")))
}

fn decode_job(queue: &str, job_id: &str, fields: Vec<(String, Vec<u8>)>) -> Result<Job, Error> {
    let fields: HashMap<String, Vec<u8>> = fields.into_iter().collect();
    let text = |name: &str| fields.get(name).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
    let number = |name: &str| text(name).parse::<f64>().unwrap_or(0.0);
    let state = JobState::parse(&text("state")).ok_or_else(|| Error::Internal(format!("job {job_id} has no state")))?;
    let finished_at = number("finished_at") as u64;
    Ok(Job {
        job_id: job_id.to_owned(),
        queue: queue.to_owned(),
        job_type: text("type"),
        payload: fields.get("payload").cloned().unwrap_or_default(),
        priority: number("priority") as i32,
        state,
        attempts: number("attempts") as u32,
        max_attempts: number("max_attempts") as u32,
        created_at_micros: number("created_at") as u64,
        run_at_micros: number("run_at") as u64,
        last_error: text("last_error"),
        result: fields.get("result").cloned().unwrap_or_default(),
        dedup_key: text("dedup_key"),
        backoff: Backoff {
            initial: Duration::from_micros(number("backoff_initial") as u64),
            max: Duration::from_micros(number("backoff_max") as u64),
            multiplier: number("backoff_multiplier"),
        },
        finished_at_micros: (finished_at > 0).then_some(finished_at),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_and_lease_ids_carry_their_queue() {
        let job_id = new_job_id("emails:high");
        assert_eq!(queue_of_job(&job_id).as_deref(), Some("emails:high"));
        let lease =
            LeaseRef { queue: "emails:high".into(), job_id: job_id.clone(), token: new_lease_token(&new_stream_id()) };
        assert_eq!(LeaseRef::parse(&lease.lease_id()), Some(lease));
    }

    #[test]
    fn malformed_ids_are_refused() {
        assert_eq!(queue_of_job("nope"), None);
        assert_eq!(queue_of_job(&format!("{}.cQ", uuid::Uuid::new_v4())), None, "not a v7 uuid");
        assert_eq!(LeaseRef::parse("abc.def"), None);
        let job_id = new_job_id("q");
        assert_eq!(LeaseRef::parse(&format!("XYZ.{job_id}")), None);
    }

    #[test]
    fn job_ids_sort_by_creation() {
        let first = new_job_id("q");
        let second = new_job_id("q");
        assert!(first < second);
    }
}
