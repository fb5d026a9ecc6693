//! Schedules: a job enqueued on every tick of a cron expression or a fixed interval, exactly
//! once per tick however many replicas run, with no leader.
//!
//! Every replica's [`scheduler`] wakes at the soonest tick it knows of, reads which of a
//! queue's schedules are due (Redis's clock decides), works out in Rust which ticks to
//! enqueue (cron lives here, not in Lua), and runs one script that moves the schedule on
//! from the tick it read *and* enqueues that tick's jobs — so of the replicas that noticed
//! a tick, exactly one enqueues it, and a replica that dies midway leaves nothing half done.

pub mod scheduler;
mod timing;

use std::sync::LazyLock;
use std::time::Duration;

use prost::Message;

use super::{ENQUEUE_BODY, EnqueueCall, NewJob, PRELUDE as QUEUE_PRELUDE, QueueManager, enqueued};
use crate::error::Error;
use crate::proto::v1::{MissedTicks, Schedule, schedule::Timing as ProtoTiming};
use crate::proto::{duration_from_proto, timestamp_from_micros};
use crate::store::{Arg, Command, Fields, Outcome, Script};
pub use timing::{Firing, Missed, Timing, firing};

const PRELUDE: &str = include_str!("prelude.lua");
static PUT: LazyLock<Script> =
    LazyLock::new(|| Script::new("schedule_put", &[QUEUE_PRELUDE, PRELUDE, include_str!("put.lua")]));
static READ: LazyLock<Script> =
    LazyLock::new(|| Script::new("schedule_read", &[QUEUE_PRELUDE, PRELUDE, include_str!("read.lua")]));
static PAUSE: LazyLock<Script> =
    LazyLock::new(|| Script::new("schedule_pause", &[QUEUE_PRELUDE, PRELUDE, include_str!("pause.lua")]));
static DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new("schedule_delete", &[QUEUE_PRELUDE, PRELUDE, include_str!("delete.lua")]));
static DUE: LazyLock<Script> =
    LazyLock::new(|| Script::new("schedule_due", &[QUEUE_PRELUDE, PRELUDE, include_str!("due.lua")]));
static TICK: LazyLock<Script> =
    LazyLock::new(|| Script::new("schedule_tick", &[QUEUE_PRELUDE, PRELUDE, include_str!("tick.lua"), ENQUEUE_BODY]));

/// Announces schedule changes to every replica's scheduler (a Baton channel: see
/// `store::keys`).
pub const CHANNEL: &str = "baton:schedules";
/// The queues that have schedules, across tenants: what each scheduler scans.
const INDEX: &str = "baton:schedules:index";
pub const MAX_ID_BYTES: usize = 128;
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The longest jitter of a cron schedule (an interval's is its interval).
pub const MAX_CRON_JITTER: Duration = Duration::from_secs(3600);
/// Next ticks shown by Get and List.
const SHOWN_TICKS: usize = 5;
/// Due schedules read per queue per look.
const DUE_BATCH: u32 = 100;

/// A stored schedule's state.
struct State {
    created: u64,
    last_tick: u64,
    fired: u64,
    paused: bool,
}

impl State {
    fn parse(text: &str) -> Result<Self, Error> {
        let mut parts = text.split('|').map(str::parse::<u64>);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(created)), Some(Ok(last_tick)), Some(Ok(fired)), Some(Ok(paused))) => {
                Ok(Self { created, last_tick, fired, paused: paused == 1 })
            }
            _ => Err(Error::Internal(format!("schedule state {text:?}"))),
        }
    }
}

/// A queue's entry in the index: length-prefixed, since names may hold any character.
pub(crate) fn index_member(namespace: &str, queue: &str) -> String {
    format!("{}:{namespace}{queue}", namespace.len())
}

pub(crate) fn parse_index_member(member: &str) -> Option<(&str, &str)> {
    let (length, rest) = member.split_once(':')?;
    let length: usize = length.parse().ok()?;
    (rest.is_char_boundary(length) && length <= rest.len()).then(|| rest.split_at(length))
}

/// When `definition` ticks; an interval counts from `created`.
pub fn timing_of(definition: &Schedule, created: u64) -> Result<Timing, Error> {
    match &definition.timing {
        Some(ProtoTiming::Cron(expression)) => Timing::cron(expression, &definition.time_zone),
        Some(ProtoTiming::Every(every)) => {
            let every = duration_from_proto("schedule.every", Some(every))?.unwrap_or_default();
            Timing::every(every, created)
        }
        None => Err(Error::invalid("schedule.cron", "one of cron and every is required")),
    }
}

fn missed_of(definition: &Schedule) -> Missed {
    match definition.missed_ticks() {
        MissedTicks::CatchUp => Missed::CatchUp(definition.catch_up_limit.max(1)),
        MissedTicks::Unspecified | MissedTicks::Skip => Missed::Skip,
    }
}

fn grace_of(definition: &Schedule) -> Duration {
    definition
        .misfire_grace
        .as_ref()
        .and_then(|grace| duration_from_proto("", Some(grace)).ok().flatten())
        .unwrap_or(DEFAULT_GRACE)
}

fn jitter_of(definition: &Schedule) -> Duration {
    definition
        .jitter
        .as_ref()
        .and_then(|jitter| duration_from_proto("", Some(jitter)).ok().flatten())
        .unwrap_or_default()
}

impl QueueManager {
    fn schedule_keys(&self, queue: &str) -> Vec<String> {
        self.queue_keys(queue).schedules()
    }

    /// How many schedules `queue` has.
    pub(crate) async fn schedule_count(&self, queue: &str) -> Result<u64, Error> {
        Ok(self.store.command("schedule_count", &Command::new("HLEN").arg(&self.schedule_keys(queue)[0])).await?)
    }

    /// Redis's clock, µs.
    async fn redis_now(&self) -> Result<u64, Error> {
        let (seconds, micros): (u64, u64) = self.store.command("time", &Command::new("TIME")).await?;
        Ok(seconds * 1_000_000 + micros)
    }

    /// Creates (or replaces) a validated schedule (see [`stored_definition`]); answers it
    /// as stored.
    pub async fn put_schedule(&self, definition: &Schedule, replace: bool) -> Result<Schedule, Error> {
        let now = self.redis_now().await?;
        let first = timing_of(definition, now)?.next_after(now);
        let first = first.map(|tick| tick.to_string()).unwrap_or_default();
        let bytes = definition.encode_to_vec();
        let args = [
            Arg::from(&definition.schedule_id),
            Arg::from(&bytes),
            now.into(),
            replace.into(),
            (self.settings.max_schedules as u64).into(),
            Arg::from(&first),
        ];
        match self.store.eval(&PUT, &self.schedule_keys(&definition.queue), &args).await?.outcome()? {
            Outcome::Done(_) => {}
            Outcome::Refused { reason, .. } if reason == "SCHEDULE_EXISTS" => return Err(Error::ScheduleExists),
            Outcome::Refused { reason, .. } if reason == "TOO_MANY_SCHEDULES" => {
                return Err(Error::TooManySchedules { limit: self.settings.max_schedules });
            }
            Outcome::Refused { reason, .. } => return Err(Error::Internal(format!("schedule_put: {reason}"))),
        }
        // After the write, so that a concurrent delete of the queue's last schedule, which
        // may drop the queue from the index, cannot leave this one out of it (see delete).
        let member = index_member(self.keys.namespace(), &definition.queue);
        self.store.command::<i64>("schedule_index", &Command::new("SADD").arg(INDEX).arg(&member)).await?;
        self.note_queue(&definition.queue).await?;
        self.store.command::<i64>("schedule_announce", &Command::new("PUBLISH").arg(CHANNEL).arg("put")).await?;
        metrics::counter!("baton_schedule_put_total").increment(1);
        self.schedule(&definition.queue, &definition.schedule_id).await
    }

    /// One schedule with its next ticks.
    pub async fn schedule(&self, queue: &str, schedule_id: &str) -> Result<Schedule, Error> {
        let args = [Arg::from("one"), schedule_id.into()];
        let fields = self.store.eval(&READ, &self.schedule_keys(queue), &args).await?.done()?;
        read_schedules(fields)?.pop().ok_or(Error::ScheduleNotFound)
    }

    /// A page of a queue's schedules by id, and whether more follow.
    pub async fn list_schedules(
        &self,
        queue: &str,
        after: &str,
        page_size: u32,
    ) -> Result<(Vec<Schedule>, bool), Error> {
        let args = [Arg::from("page"), after.into(), page_size.into()];
        let fields = self.store.eval(&READ, &self.schedule_keys(queue), &args).await?.done()?;
        let more = fields.int(0)? == 1;
        Ok((read_schedules(fields)?, more))
    }

    /// Pauses or resumes a schedule; a resumed one restarts from its first tick after now.
    pub async fn pause_schedule(&self, queue: &str, schedule_id: &str, pause: bool) -> Result<Schedule, Error> {
        let next = if pause {
            String::new()
        } else {
            let stored = self.schedule(queue, schedule_id).await?;
            let now = self.redis_now().await?;
            let created =
                stored.created_at.as_ref().map_or(now, |at| at.seconds as u64 * 1_000_000 + at.nanos as u64 / 1000);
            timing_of(&stored, created)?.next_after(now).map(|tick| tick.to_string()).unwrap_or_default()
        };
        let args = [Arg::from(schedule_id), pause.into(), Arg::from(&next), CHANNEL.into()];
        match self.store.eval(&PAUSE, &self.schedule_keys(queue), &args).await?.outcome()? {
            Outcome::Done(_) => self.schedule(queue, schedule_id).await,
            Outcome::Refused { .. } => Err(Error::ScheduleNotFound),
        }
    }

    /// Deletes a schedule; `false` when there was none.
    pub async fn delete_schedule(&self, queue: &str, schedule_id: &str) -> Result<bool, Error> {
        let fields = self.store.eval(&DELETE, &self.schedule_keys(queue), &[schedule_id.into()]).await?.done()?;
        let (deleted, left) = (fields.int(0)? == 1, fields.int(1)?);
        if left == 0 {
            let member = index_member(self.keys.namespace(), queue);
            self.store.command::<i64>("schedule_index", &Command::new("SREM").arg(INDEX).arg(&member)).await?;
            // A schedule created meanwhile (its SADD may have run before this SREM) puts
            // the queue back.
            if self.schedule_count(queue).await? > 0 {
                self.store.command::<i64>("schedule_index", &Command::new("SADD").arg(INDEX).arg(&member)).await?;
            }
        }
        Ok(deleted)
    }

    /// Enqueues what is due in `queue`'s schedules; answers the soonest tick left (µs on
    /// Redis's clock) and Redis's clock then.
    pub(crate) async fn fire_due(
        &self,
        queue: &str,
        job_of: impl Fn(&Schedule) -> Result<NewJob, Error>,
    ) -> Result<(Option<u64>, u64), Error> {
        let keys = self.schedule_keys(queue);
        let mut fields = self.store.eval(&DUE, &keys, &[DUE_BATCH.into()]).await?.done()?;
        let now = fields.uint(0)?;
        let mut soonest = u64::try_from(fields.int(1)?).ok();
        for i in (2..fields.len()).step_by(4) {
            let schedule_id = fields.string(i)?;
            let definition = Schedule::decode(fields.take_bytes(i + 1)?.as_slice())
                .map_err(|err| Error::Internal(format!("schedule {schedule_id:?}: {err}")))?;
            let state = State::parse(&fields.string(i + 2)?)?;
            let due = fields.uint(i + 3)?;
            let next = match self.fire(queue, &schedule_id, &definition, &state, due, now, &job_of).await {
                Ok(next) => next,
                Err(err) => {
                    metrics::counter!("baton_schedule_failed_total").increment(1);
                    tracing::warn!(queue, schedule.id = %schedule_id, error = %err, "cannot fire a schedule");
                    Some(now + 1_000_000)
                }
            };
            soonest = match (soonest, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok((soonest, now))
    }

    /// Moves one due schedule on, enqueueing its ticks; answers its next tick.
    #[allow(clippy::too_many_arguments)]
    async fn fire(
        &self,
        queue: &str,
        schedule_id: &str,
        definition: &Schedule,
        state: &State,
        due: u64,
        now: u64,
        job_of: &impl Fn(&Schedule) -> Result<NewJob, Error>,
    ) -> Result<Option<u64>, Error> {
        let timing = timing_of(definition, state.created)?;
        let Firing { ticks, next } = firing(&timing, due, now, grace_of(definition), missed_of(definition));
        let template = job_of(definition)?;
        let jitter = u64::try_from(jitter_of(definition).as_micros()).unwrap_or(0);
        let jobs: Vec<NewJob> = ticks
            .iter()
            .map(|tick| NewJob {
                run_at_micros: tick + if jitter > 0 { rand::random_range(0..jitter) } else { 0 },
                ..template.clone()
            })
            .collect();
        let job_refs: Vec<&NewJob> = jobs.iter().collect();
        let call = EnqueueCall::new(&self.queue_keys(queue), queue, &job_refs);
        let mut keys = call.keys.clone();
        keys.extend(self.schedule_keys(queue));
        let next_text = next.map(|tick| tick.to_string()).unwrap_or_default();
        let mut args = call.args(&job_refs);
        args.extend([
            Arg::from(schedule_id),
            due.into(),
            state.created.into(),
            Arg::from(&next_text),
            ticks.last().copied().unwrap_or(0).into(),
        ]);
        match self.store.eval(&TICK, &keys, &args).await?.outcome()? {
            Outcome::Done(fields) => {
                let enqueued = enqueued(fields)?;
                metrics::counter!("baton_schedule_ticks_total").increment(enqueued.len() as u64);
                let missed = missed_count(&timing, due, ticks.first().copied(), now);
                if missed > 0 {
                    metrics::counter!("baton_schedule_ticks_missed_total").increment(missed);
                }
                Ok(next)
            }
            // Another replica fired it first, or it was replaced or paused meanwhile.
            Outcome::Refused { .. } => Ok(next),
        }
    }
}

/// Ticks from `due` up to `now` that were not enqueued (skipped, or beyond a catch-up).
fn missed_count(timing: &Timing, due: u64, first_enqueued: Option<u64>, now: u64) -> u64 {
    let end = first_enqueued.unwrap_or(now.saturating_add(1));
    let mut count = 0;
    let mut tick = Some(due);
    while let Some(at) = tick.filter(|at| *at < end) {
        count += 1;
        if count >= 10_000 {
            break;
        }
        tick = timing.next_after(at);
    }
    count
}

/// read.lua's schedules, with their state and next ticks filled in.
fn read_schedules(mut fields: Fields) -> Result<Vec<Schedule>, Error> {
    let mut schedules = Vec::with_capacity(fields.len() / 4);
    for i in (1..fields.len()).step_by(4) {
        let mut schedule = Schedule::decode(fields.take_bytes(i + 1)?.as_slice())
            .map_err(|err| Error::Internal(format!("stored schedule: {err}")))?;
        let state = State::parse(&fields.string(i + 2)?)?;
        schedule.paused = state.paused;
        schedule.created_at = Some(timestamp_from_micros(state.created));
        schedule.last_tick = (state.last_tick > 0).then(|| timestamp_from_micros(state.last_tick));
        schedule.ticks_fired = state.fired;
        if let (Ok(next), Ok(timing)) = (u64::try_from(fields.int(i + 3)?), timing_of(&schedule, state.created)) {
            let mut upcoming = vec![next];
            while upcoming.len() < SHOWN_TICKS {
                match upcoming.last().and_then(|last| timing.next_after(*last)) {
                    Some(tick) => upcoming.push(tick),
                    None => break,
                }
            }
            schedule.next_ticks = upcoming.into_iter().map(timestamp_from_micros).collect();
        }
        schedules.push(schedule);
    }
    Ok(schedules)
}

/// The definition as stored: the caller's fields, without the output-only ones.
pub fn stored_definition(mut schedule: Schedule) -> Schedule {
    schedule.paused = false;
    schedule.created_at = None;
    schedule.last_tick = None;
    schedule.ticks_fired = 0;
    schedule.next_ticks.clear();
    if let Some(job) = &mut schedule.job {
        job.queue.clear();
    }
    schedule
}

/// Validates what only a schedule adds to its job template and timing.
pub fn validate(schedule: &Schedule) -> Result<(), Error> {
    if schedule.schedule_id.is_empty() || schedule.schedule_id.len() > MAX_ID_BYTES {
        return Err(Error::invalid("schedule.schedule_id", format!("must be 1 to {MAX_ID_BYTES} bytes")));
    }
    let timing = timing_of(schedule, 0)?;
    let grace =
        duration_from_proto("schedule.misfire_grace", schedule.misfire_grace.as_ref())?.unwrap_or(DEFAULT_GRACE);
    if grace > MAX_GRACE {
        return Err(Error::invalid("schedule.misfire_grace", format!("must be at most {MAX_GRACE:?}")));
    }
    let jitter = duration_from_proto("schedule.jitter", schedule.jitter.as_ref())?.unwrap_or_default();
    let max_jitter = match timing {
        Timing::Every { every_micros, .. } => Duration::from_micros(every_micros),
        Timing::Cron { .. } => MAX_CRON_JITTER,
    };
    if jitter > max_jitter {
        return Err(Error::invalid("schedule.jitter", format!("must be at most {max_jitter:?}")));
    }
    let Some(job) = &schedule.job else {
        return Err(Error::invalid("schedule.job", "is required"));
    };
    if !job.dedup_key.is_empty() {
        return Err(Error::invalid("schedule.job.dedup_key", "must be empty: each tick enqueues exactly one job"));
    }
    if job.schedule.is_some() {
        return Err(Error::invalid("schedule.job.delay", "delay and run_at must be unset: a job is ready at its tick"));
    }
    Ok(())
}
