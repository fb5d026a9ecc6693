//! `baton.v1.JobQueueService`: validation, the Consume stream, and proto mapping.

use std::time::Duration;

use std::pin::Pin;

use tokio::sync::futures::OwnedNotified;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::proto::v1::job_queue_service_server::JobQueueService;
use crate::proto::v1::{
    self as pb, AckBatchRequest, AckBatchResponse, AckRequest, AckResponse, AckResult, CancelJobRequest,
    CancelJobResponse, ConfigureQueueRequest, ConfigureQueueResponse, ConsumeRequest, ConsumeResponse,
    CreateScheduleRequest, CreateScheduleResponse, DeleteScheduleRequest, DeleteScheduleResponse, EnqueueBatchRequest,
    EnqueueBatchResponse, EnqueueRequest, EnqueueResponse, ExtendRequest, ExtendResponse, GetJobRequest,
    GetJobResponse, GetQueueConfigRequest, GetQueueConfigResponse, GetQueueStatsRequest, GetQueueStatsResponse,
    GetScheduleRequest, GetScheduleResponse, ListDeadJobsRequest, ListDeadJobsResponse, ListJobsRequest,
    ListJobsResponse, ListSchedulesRequest, ListSchedulesResponse, NackRequest, NackResponse, PauseQueueRequest,
    PauseQueueResponse, PauseScheduleRequest, PauseScheduleResponse, ResumeQueueRequest, ResumeQueueResponse,
    ResumeScheduleRequest, ResumeScheduleResponse, RetryDeadJobsRequest, RetryDeadJobsResponse, UpdateProgressRequest,
    UpdateProgressResponse, WatchJobRequest, WatchJobResponse, WatchQueueRequest, WatchQueueResponse, consume_response,
    enqueue_request, watch_queue_response,
};
use crate::proto::{duration_from_proto, duration_to_proto, now_micros, timestamp_from_micros};
use crate::queue::schedule;
use crate::queue::{
    Backoff, ConsumeOptions, Consumer, ConsumerEvent, Delivery, EventKind, Job, JobState, JobWatch, LeaseRef,
    MAX_PRIORITY, MIN_PRIORITY, NewJob, Progress, QueueConfig, QueueEvent, QueueManager, QueueSettings, Steering,
    Watched,
};
use crate::task::serve_until_drained;
use crate::validate;
use crate::validate::Limits;

const MIN_VISIBILITY: Duration = Duration::from_secs(1);
const MAX_TYPE_BYTES: usize = 256;
/// ListSchedules pages.
const DEFAULT_SCHEDULE_PAGE: u32 = 100;
const MAX_SCHEDULE_PAGE: u32 = 1000;
const MAX_TYPE_FILTERS: usize = 32;
const MAX_ERROR_BYTES: usize = 64 * 1024;
/// ListDeadJobs and ListJobs pages.
const DEFAULT_JOB_PAGE: usize = 100;
const MAX_JOB_PAGE: usize = 1000;
const MAX_PROGRESS_DETAIL_BYTES: usize = 4096;
const MAX_GROUP_CONCURRENCY: u32 = 10_000;
/// Messages a watcher's stream holds before its reader is too slow (then it misses events).
const WATCH_BUFFER: usize = 16;
/// A job watcher re-reads its job this often even without news (a lost announcement).
const JOB_RECHECK: Duration = Duration::from_secs(5);
/// How long a Consume stream may stay open without naming its queue.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(10);

pub struct JobQueueGrpc {
    queues: QueueManager,
    limits: Limits,
    rules: JobRules,
    /// Cancelled at server shutdown: streams end UNAVAILABLE and leave their leases alone.
    shutdown: CancellationToken,
}

/// Turns Enqueue requests into jobs, for the Enqueue RPCs and for schedules' templates.
#[derive(Clone)]
pub struct JobRules {
    limits: Limits,
    settings: QueueSettings,
}

impl JobRules {
    pub fn new(limits: Limits, settings: QueueSettings) -> Self {
        Self { limits, settings }
    }

    /// The job a schedule enqueues on each tick.
    pub fn scheduled_job(&self, schedule: &pb::Schedule) -> Result<NewJob, Error> {
        let template = schedule.job.clone().unwrap_or_default();
        self.new_job("schedule.job", EnqueueRequest { queue: schedule.queue.clone(), ..template })
    }

    pub fn new_job(&self, field: &str, request: EnqueueRequest) -> Result<NewJob, Error> {
        let at = |name: &str| if field.is_empty() { name.to_owned() } else { format!("{field}.{name}") };
        validate::key(&at("queue"), &request.queue, &self.limits)?;
        if request.payload.len() > self.limits.max_value_bytes {
            return Err(Error::invalid(
                at("payload"),
                format!("must be at most {} bytes", self.limits.max_value_bytes),
            ));
        }
        if request.r#type.len() > MAX_TYPE_BYTES {
            return Err(Error::invalid(at("type"), format!("must be at most {MAX_TYPE_BYTES} bytes")));
        }
        if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&request.priority) {
            return Err(Error::invalid(at("priority"), format!("must be between {MIN_PRIORITY} and {MAX_PRIORITY}")));
        }
        let max_attempts = match request.max_attempts {
            0 => self.settings.default_max_attempts,
            n if n > self.settings.max_attempts => {
                return Err(Error::invalid(
                    at("max_attempts"),
                    format!("must be at most {}", self.settings.max_attempts),
                ));
            }
            n => n,
        };
        let backoff = self.backoff(&at("backoff"), request.backoff.as_ref())?;
        let (delay, run_at_micros) = match &request.schedule {
            None => (Duration::ZERO, 0),
            Some(enqueue_request::Schedule::Delay(delay)) => {
                let delay = duration_from_proto(&at("delay"), Some(delay))?.unwrap_or_default();
                if delay > self.limits.max_ttl {
                    return Err(Error::invalid(at("delay"), format!("must be at most {:?}", self.limits.max_ttl)));
                }
                (delay, 0)
            }
            Some(enqueue_request::Schedule::RunAt(run_at)) => {
                if run_at.seconds < 0 || !(0..1_000_000_000).contains(&run_at.nanos) {
                    return Err(Error::invalid(at("run_at"), "must be a valid timestamp after 1970"));
                }
                let latest = now_micros() + self.limits.max_ttl.as_micros() as u64;
                let micros = (run_at.seconds as u64)
                    .checked_mul(1_000_000)
                    .map(|micros| micros + run_at.nanos as u64 / 1000)
                    .filter(|micros| *micros <= latest);
                let Some(micros) = micros else {
                    return Err(Error::invalid(at("run_at"), format!("must be within {:?}", self.limits.max_ttl)));
                };
                (Duration::ZERO, micros)
            }
        };
        let dedup = match request.dedup_key.as_str() {
            "" => None,
            key => {
                validate::key(&at("dedup_key"), key, &self.limits)?;
                let ttl = duration_from_proto(&at("dedup_ttl"), request.dedup_ttl.as_ref())?
                    .unwrap_or(self.settings.default_dedup_ttl);
                if ttl > self.limits.max_ttl {
                    return Err(Error::invalid(at("dedup_ttl"), format!("must be at most {:?}", self.limits.max_ttl)));
                }
                Some((key.to_owned(), ttl))
            }
        };
        if !request.group.is_empty() {
            validate::key(&at("group"), &request.group, &self.limits)?;
        }
        Ok(NewJob {
            group: request.group,
            queue: request.queue,
            job_type: request.r#type,
            payload: request.payload,
            priority: request.priority,
            max_attempts,
            backoff,
            delay,
            run_at_micros,
            dedup,
            trace_context: None,
        })
    }

    fn backoff(&self, field: &str, backoff: Option<&pb::Backoff>) -> Result<Backoff, Error> {
        let Some(backoff) = backoff else {
            let initial = self.settings.default_backoff;
            return Ok(Backoff { initial, max: initial, multiplier: 1.0 });
        };
        let initial = duration_from_proto(&format!("{field}.initial"), backoff.initial.as_ref())?
            .unwrap_or(self.settings.default_backoff);
        if initial > self.limits.max_ttl {
            return Err(Error::invalid(
                format!("{field}.initial"),
                format!("must be at most {:?}", self.limits.max_ttl),
            ));
        }
        // Default ceiling: five doublings, within max_ttl.
        let max = duration_from_proto(&format!("{field}.max"), backoff.max.as_ref())?
            .unwrap_or_else(|| initial.saturating_mul(32).min(self.limits.max_ttl).max(initial));
        if max > self.limits.max_ttl {
            return Err(Error::invalid(format!("{field}.max"), format!("must be at most {:?}", self.limits.max_ttl)));
        }
        if max < initial {
            return Err(Error::invalid(format!("{field}.max"), "must be at least initial"));
        }
        let multiplier = if backoff.multiplier == 0.0 { 1.0 } else { backoff.multiplier };
        if !(1.0..=100.0).contains(&multiplier) {
            return Err(Error::invalid(format!("{field}.multiplier"), "must be between 1 and 100 (0 means 1)"));
        }
        Ok(Backoff { initial, max, multiplier })
    }
}

impl JobQueueGrpc {
    fn schedule_ref(&self, queue: &str, schedule_id: &str) -> Result<(), Error> {
        validate::key("queue", queue, &self.limits)?;
        if schedule_id.is_empty() || schedule_id.len() > schedule::MAX_ID_BYTES {
            return Err(Error::invalid("schedule_id", format!("must be 1 to {} bytes", schedule::MAX_ID_BYTES)));
        }
        Ok(())
    }

    pub fn new(queues: QueueManager, limits: Limits, shutdown: CancellationToken) -> Self {
        let rules = JobRules::new(limits.clone(), *queues.settings());
        Self { queues, limits, rules, shutdown }
    }

    /// An Ack's lease and result, validated; `prefix` places its fields in a batch.
    fn settlement(&self, prefix: &str, ack: AckRequest) -> Result<(LeaseRef, Vec<u8>), Error> {
        if ack.result.len() > self.limits.max_value_bytes {
            let message = format!("must be at most {} bytes", self.limits.max_value_bytes);
            return Err(Error::invalid(format!("{prefix}result"), message));
        }
        let lease = LeaseRef::parse(&ack.lease_id)
            .ok_or_else(|| Error::invalid(format!("{prefix}lease_id"), "is not a lease id issued by Baton"))?;
        Ok((lease, ack.result))
    }

    fn visibility(&self, field: &str, value: Option<&prost_types::Duration>) -> Result<Duration, Error> {
        let visibility = duration_from_proto(field, value)?.unwrap_or(self.queues.settings().default_visibility);
        if !(MIN_VISIBILITY..=self.queues.settings().max_visibility).contains(&visibility) {
            return Err(Error::invalid(
                field,
                format!("must be between {MIN_VISIBILITY:?} and {:?}", self.queues.settings().max_visibility),
            ));
        }
        Ok(visibility)
    }
}

fn lease(lease_id: &str) -> Result<LeaseRef, Error> {
    LeaseRef::parse(lease_id).ok_or_else(|| Error::invalid("lease_id", "is not a lease id issued by Baton"))
}

fn state_to_proto(state: JobState) -> pb::JobState {
    match state {
        JobState::Scheduled => pb::JobState::Scheduled,
        JobState::Ready => pb::JobState::Ready,
        JobState::Active => pb::JobState::Active,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Dead => pb::JobState::Dead,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

fn progress_to_proto(progress: Progress) -> pb::Progress {
    pb::Progress {
        value: progress.value,
        detail: progress.detail,
        reported_at: Some(timestamp_from_micros(progress.reported_at_micros)),
    }
}

fn kind_to_proto(kind: EventKind) -> pb::QueueEventKind {
    match kind {
        EventKind::Enqueued => pb::QueueEventKind::Enqueued,
        EventKind::Active => pb::QueueEventKind::Active,
        EventKind::Progress => pb::QueueEventKind::Progress,
        EventKind::Succeeded => pb::QueueEventKind::Succeeded,
        EventKind::Failed => pb::QueueEventKind::Failed,
        EventKind::Dead => pb::QueueEventKind::Dead,
        EventKind::Stalled => pb::QueueEventKind::Stalled,
        EventKind::Returned => pb::QueueEventKind::Returned,
        EventKind::Redriven => pb::QueueEventKind::Redriven,
        EventKind::Cancelled => pb::QueueEventKind::Cancelled,
    }
}

fn watched_to_proto(watched: Watched) -> WatchQueueResponse {
    let message = match watched {
        Watched::Missed(count) => watch_queue_response::Message::Missed(pb::EventsMissed { count }),
        Watched::Event(event) => {
            let QueueEvent { kind, job_id, state, attempt, at_micros, progress, error, run_at_micros, job_type } =
                (*event).clone();
            watch_queue_response::Message::Event(pb::QueueEvent {
                kind: kind_to_proto(kind) as i32,
                job_id,
                state: state_to_proto(state) as i32,
                attempt,
                at: Some(timestamp_from_micros(at_micros)),
                progress: progress.map(progress_to_proto),
                error,
                run_at: run_at_micros.map(timestamp_from_micros),
                r#type: job_type,
            })
        }
    };
    WatchQueueResponse { message: Some(message) }
}

/// The ListJobs / ListDeadJobs page size and offset.
fn job_page(page_size: u32, page_token: &str) -> Result<(usize, usize), Error> {
    let page_size = match page_size as usize {
        0 => DEFAULT_JOB_PAGE,
        n if n > MAX_JOB_PAGE => return Err(Error::invalid("page_size", format!("must be at most {MAX_JOB_PAGE}"))),
        n => n,
    };
    // Tokens are offsets these RPCs returned; anything past Redis' signed range is not one.
    let offset = match page_token {
        "" => 0,
        token => token.parse::<u32>().map_err(|_| Error::invalid("page_token", "is not a token this RPC returned"))?,
    };
    Ok((page_size, offset as usize))
}

fn job_to_proto(job: Job) -> pb::Job {
    let trace_context = crate::traces::carried_context(&job.trace_context);
    pb::Job {
        job_id: job.job_id,
        queue: job.queue,
        r#type: job.job_type,
        payload: job.payload,
        priority: job.priority,
        state: state_to_proto(job.state) as i32,
        attempts: job.attempts,
        max_attempts: job.max_attempts,
        created_at: Some(timestamp_from_micros(job.created_at_micros)),
        run_at: Some(timestamp_from_micros(job.run_at_micros)),
        last_error: job.last_error,
        result: job.result,
        dedup_key: job.dedup_key,
        backoff: Some(pb::Backoff {
            initial: Some(duration_to_proto(job.backoff.initial)),
            max: Some(duration_to_proto(job.backoff.max)),
            multiplier: job.backoff.multiplier,
        }),
        finished_at: job.finished_at_micros.map(timestamp_from_micros),
        trace_context,
        progress: job.progress.map(progress_to_proto),
        group: job.group,
    }
}

/// Most encoded bytes in one `deliveries` message (unless one delivery alone is larger): far
/// below gRPC's usual 4 MiB receive limit, whatever the jobs carry (payloads, errors up to
/// MAX_ERROR_BYTES, progress details).
const DELIVERY_BATCH_BYTES: usize = 1 << 20;

/// What a consumer tells its stream, on the wire: one message per event, except a batch of
/// deliveries, which takes as many messages as its size needs.
fn event_to_proto(event: ConsumerEvent) -> Vec<Result<ConsumeResponse, Status>> {
    let message = |event| Ok(ConsumeResponse { event: Some(event) });
    match event {
        ConsumerEvent::Delivered(delivery) => {
            vec![message(consume_response::Event::Delivery(delivery_to_proto(delivery)))]
        }
        ConsumerEvent::DeliveredBatch(deliveries) => {
            let mut messages = Vec::new();
            let (mut batch, mut bytes) = (Vec::new(), 0);
            for delivery in deliveries.into_iter().map(delivery_to_proto) {
                let size = prost::Message::encoded_len(&delivery);
                if !batch.is_empty() && bytes + size > DELIVERY_BATCH_BYTES {
                    let deliveries = std::mem::take(&mut batch);
                    messages.push(message(consume_response::Event::Deliveries(pb::DeliveryBatch { deliveries })));
                    bytes = 0;
                }
                bytes += size;
                batch.push(delivery);
            }
            messages.push(message(consume_response::Event::Deliveries(pb::DeliveryBatch { deliveries: batch })));
            messages
        }
        ConsumerEvent::Cancelled(lease) => vec![message(consume_response::Event::Cancelled(pb::JobCancelled {
            job_id: lease.job_id.clone(),
            lease_id: lease.lease_id(),
        }))],
        ConsumerEvent::Ended(err) => vec![Err(err.into())],
    }
}

fn delivery_to_proto(delivery: Delivery) -> pb::Delivery {
    pb::Delivery {
        lease_id: delivery.lease.lease_id(),
        attempt: delivery.attempt,
        lease_expires_at: Some(timestamp_from_micros(delivery.lease_deadline_micros)),
        // The worker continues from the delivery's span rather than from Enqueue's.
        job: Some(pb::Job { trace_context: delivery.trace_context, ..job_to_proto(delivery.job) }),
    }
}

#[tonic::async_trait]
impl JobQueueService for JobQueueGrpc {
    type ConsumeStream = std::pin::Pin<Box<dyn Stream<Item = Result<ConsumeResponse, Status>> + Send>>;
    type WatchJobStream = ReceiverStream<Result<WatchJobResponse, Status>>;
    type WatchQueueStream = ReceiverStream<Result<WatchQueueResponse, Status>>;

    async fn update_progress(
        &self,
        request: Request<UpdateProgressRequest>,
    ) -> Result<Response<UpdateProgressResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        let lease = lease(&request.lease_id)?;
        if !request.value.is_finite() {
            return Err(Error::invalid("value", "must be a finite number").into());
        }
        if request.detail.len() > MAX_PROGRESS_DETAIL_BYTES {
            return Err(Error::invalid("detail", format!("must be at most {MAX_PROGRESS_DETAIL_BYTES} bytes")).into());
        }
        self.queues.scoped(&namespace).update_progress(&lease, request.value, &request.detail).await?;
        Ok(Response::new(UpdateProgressResponse {}))
    }

    async fn watch_job(&self, request: Request<WatchJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown.into());
        }
        let namespace = crate::auth::namespace(&request);
        let job_id = request.into_inner().job_id;
        let queue = crate::queue::queue_of_job(&job_id)
            .ok_or_else(|| Error::invalid("job_id", "is not a job id issued by Baton"))?;
        crate::traces::record_name(&queue);
        let queues = self.queues.scoped(&namespace);
        let watch = queues.watch_job(&queue, &job_id).await?;
        // Registered before the read, so a change between the read and the wait is not missed.
        let notified = JobFollow::registered(&watch);
        let Some(first) = queues.get_job(&job_id).await? else {
            return Err(job_not_found(&job_id).into());
        };
        let first = Job { payload: Vec::new(), ..first };
        let finished = is_finished(first.state);
        let follow = JobFollow { queues, job_id, watch, last: first.clone(), notified, finished };
        let first = futures::stream::once(async move { Ok(WatchJobResponse { job: Some(job_to_proto(first)) }) });
        let changes = futures::stream::unfold(follow, JobFollow::next_change);
        Ok(Response::new(serve_until_drained(first.chain(changes), self.shutdown.clone(), WATCH_BUFFER)))
    }

    async fn watch_queue(
        &self,
        request: Request<WatchQueueRequest>,
    ) -> Result<Response<Self::WatchQueueStream>, Status> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown.into());
        }
        let namespace = crate::auth::namespace(&request);
        let queue = request.into_inner().queue;
        validate::key("queue", &queue, &self.limits)?;
        crate::traces::record_name(&queue);
        let watch = self.queues.scoped(&namespace).watch_queue(&queue).await?;
        let events = futures::stream::unfold(watch, |mut watch| async move {
            let watched = watch.next().await;
            Some((Ok(watched_to_proto(watched)), watch))
        });
        Ok(Response::new(serve_until_drained(events, self.shutdown.clone(), WATCH_BUFFER)))
    }

    async fn configure_queue(
        &self,
        request: Request<ConfigureQueueRequest>,
    ) -> Result<Response<ConfigureQueueResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        validate::key("queue", &request.queue, &self.limits)?;
        let config = request.config.unwrap_or_default();
        if config.group_concurrency > MAX_GROUP_CONCURRENCY {
            let message = format!("must be at most {MAX_GROUP_CONCURRENCY}");
            return Err(Error::invalid("config.group_concurrency", message).into());
        }
        let start_limit = config
            .start_limit
            .as_ref()
            .map(|limit| crate::ratelimit::grpc::spec_from_proto("config.start_limit", limit, &self.limits))
            .transpose()?;
        let config = QueueConfig {
            group_concurrency: config.group_concurrency,
            group_fifo: config.group_fifo,
            start_limit,
            start_limit_per_group: config.start_limit_per_group,
        };
        self.queues.scoped(&namespace).configure(&request.queue, &config).await?;
        Ok(Response::new(ConfigureQueueResponse {}))
    }

    async fn get_queue_config(
        &self,
        request: Request<GetQueueConfigRequest>,
    ) -> Result<Response<GetQueueConfigResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let queue = request.into_inner().queue;
        validate::key("queue", &queue, &self.limits)?;
        let config = self.queues.scoped(&namespace).config(&queue).await?;
        Ok(Response::new(GetQueueConfigResponse {
            config: Some(pb::QueueConfig {
                group_concurrency: config.group_concurrency,
                group_fifo: config.group_fifo,
                start_limit: config.start_limit.map(|spec| pb::Limit {
                    algorithm: crate::ratelimit::grpc::algorithm_to_proto(spec.algorithm) as i32,
                    limit: spec.limit,
                    period: Some(duration_to_proto(spec.period)),
                    burst: spec.burst,
                }),
                start_limit_per_group: config.start_limit_per_group,
            }),
        }))
    }

    async fn list_jobs(&self, request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        validate::key("queue", &request.queue, &self.limits)?;
        let state = match pb::JobState::try_from(request.state) {
            Ok(pb::JobState::Ready) => JobState::Ready,
            Ok(pb::JobState::Scheduled) => JobState::Scheduled,
            Ok(pb::JobState::Active) => JobState::Active,
            Ok(pb::JobState::Succeeded) => JobState::Succeeded,
            Ok(pb::JobState::Dead) => JobState::Dead,
            _ => {
                return Err(Error::invalid("state", "must be READY, SCHEDULED, ACTIVE, SUCCEEDED or DEAD").into());
            }
        };
        let (page_size, offset) = job_page(request.page_size, &request.page_token)?;
        let (jobs, more) = self.queues.scoped(&namespace).list_jobs(&request.queue, state, offset, page_size).await?;
        Ok(Response::new(ListJobsResponse {
            jobs: jobs.into_iter().map(job_to_proto).collect(),
            next_page_token: if more { (offset + page_size).to_string() } else { String::new() },
        }))
    }

    async fn create_schedule(
        &self,
        request: Request<CreateScheduleRequest>,
    ) -> Result<Response<CreateScheduleResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        let Some(schedule) = request.schedule else {
            return Err(Error::invalid("schedule", "is required").into());
        };
        validate::key("schedule.queue", &schedule.queue, &self.limits)?;
        schedule::validate(&schedule)?;
        // The template must make a valid job now; it is made again on every tick.
        self.rules.scheduled_job(&schedule)?;
        let definition = schedule::stored_definition(schedule);
        let stored = self.queues.scoped(&namespace).put_schedule(&definition, request.replace).await?;
        Ok(Response::new(CreateScheduleResponse { schedule: Some(stored) }))
    }

    async fn get_schedule(
        &self,
        request: Request<GetScheduleRequest>,
    ) -> Result<Response<GetScheduleResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        self.schedule_ref(&request.queue, &request.schedule_id)?;
        let schedule = self.queues.scoped(&namespace).schedule(&request.queue, &request.schedule_id).await?;
        Ok(Response::new(GetScheduleResponse { schedule: Some(schedule) }))
    }

    async fn list_schedules(
        &self,
        request: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        validate::key("queue", &request.queue, &self.limits)?;
        let page_size = match request.page_size {
            0 => DEFAULT_SCHEDULE_PAGE,
            n if n > MAX_SCHEDULE_PAGE => {
                return Err(Error::invalid("page_size", format!("must be at most {MAX_SCHEDULE_PAGE}")).into());
            }
            n => n,
        };
        let (schedules, more) =
            self.queues.scoped(&namespace).list_schedules(&request.queue, &request.page_token, page_size).await?;
        let next_page_token = match (more, schedules.last()) {
            (true, Some(last)) => last.schedule_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListSchedulesResponse { schedules, next_page_token }))
    }

    async fn pause_schedule(
        &self,
        request: Request<PauseScheduleRequest>,
    ) -> Result<Response<PauseScheduleResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        self.schedule_ref(&request.queue, &request.schedule_id)?;
        let schedule =
            self.queues.scoped(&namespace).pause_schedule(&request.queue, &request.schedule_id, true).await?;
        Ok(Response::new(PauseScheduleResponse { schedule: Some(schedule) }))
    }

    async fn resume_schedule(
        &self,
        request: Request<ResumeScheduleRequest>,
    ) -> Result<Response<ResumeScheduleResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        self.schedule_ref(&request.queue, &request.schedule_id)?;
        let schedule =
            self.queues.scoped(&namespace).pause_schedule(&request.queue, &request.schedule_id, false).await?;
        Ok(Response::new(ResumeScheduleResponse { schedule: Some(schedule) }))
    }

    async fn delete_schedule(
        &self,
        request: Request<DeleteScheduleRequest>,
    ) -> Result<Response<DeleteScheduleResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        self.schedule_ref(&request.queue, &request.schedule_id)?;
        let deleted = self.queues.scoped(&namespace).delete_schedule(&request.queue, &request.schedule_id).await?;
        Ok(Response::new(DeleteScheduleResponse { deleted }))
    }

    async fn enqueue(&self, request: Request<EnqueueRequest>) -> Result<Response<EnqueueResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let trace_context = crate::traces::job_context(request.metadata());
        let job = NewJob { trace_context, ..self.rules.new_job("", request.into_inner())? };
        crate::traces::record_name(&job.queue);
        let (job_id, duplicate) = self.queues.scoped(&namespace).enqueue(&job).await?;
        crate::traces::record_outcome(if duplicate { "duplicate" } else { "enqueued" });
        Ok(Response::new(EnqueueResponse { job_id, duplicate }))
    }

    async fn enqueue_batch(
        &self,
        request: Request<EnqueueBatchRequest>,
    ) -> Result<Response<EnqueueBatchResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let trace_context = crate::traces::job_context(request.metadata());
        let requests = request.into_inner().requests;
        if requests.is_empty() || requests.len() > self.queues.settings().max_batch {
            return Err(Error::invalid(
                "requests",
                format!("must hold 1 to {} jobs", self.queues.settings().max_batch),
            )
            .into());
        }
        // Validate the whole batch before writing any of it.
        let jobs = requests
            .into_iter()
            .enumerate()
            .map(|(index, request)| {
                let job = self.rules.new_job(&format!("requests[{index}]"), request)?;
                Ok(NewJob { trace_context: trace_context.clone(), ..job })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let results = self.queues.scoped(&namespace).enqueue_batch(&jobs).await?;
        Ok(Response::new(EnqueueBatchResponse {
            results: results.into_iter().map(|(job_id, duplicate)| EnqueueResponse { job_id, duplicate }).collect(),
        }))
    }

    async fn consume(
        &self,
        request: Request<Streaming<ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown.into());
        }
        let namespace = crate::auth::namespace(&request);
        let mut requests = request.into_inner();
        let request = match tokio::time::timeout(FIRST_MESSAGE_WAIT, requests.message()).await {
            Ok(Ok(Some(first))) => first,
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) | Err(_) => {
                return Err(Error::invalid("queue", "the first message must open the stream (queue)").into());
            }
        };
        validate::key("queue", &request.queue, &self.limits)?;
        crate::traces::record_name(&request.queue);
        let max_in_flight = match request.max_in_flight {
            0 => self.queues.settings().default_max_in_flight,
            n if n > self.queues.settings().max_in_flight => {
                return Err(Error::invalid(
                    "max_in_flight",
                    format!("must be at most {}", self.queues.settings().max_in_flight),
                )
                .into());
            }
            n => n,
        };
        let visibility = self.visibility("visibility_timeout", request.visibility_timeout.as_ref())?;
        if request.types.len() > MAX_TYPE_FILTERS {
            return Err(Error::invalid("types", format!("must hold at most {MAX_TYPE_FILTERS} types")).into());
        }
        let steering = requests.map(|request| {
            request.map(|request| Steering { drain: request.drain, unstarted_lease_ids: request.unstarted_lease_ids })
        });
        // The first message may already steer: a stream opened only to hand jobs back and
        // drain gets nothing delivered first.
        let opening = Steering { drain: request.drain, unstarted_lease_ids: request.unstarted_lease_ids };
        let options = ConsumeOptions {
            queue: request.queue,
            types: request.types,
            max_in_flight: max_in_flight as usize,
            visibility,
            batch_deliveries: request.batch_deliveries,
        };
        let events = Consumer::start(self.queues.scoped(&namespace), options, opening, steering, self.shutdown.clone());
        let messages = futures::StreamExt::flat_map(events, |event| futures::stream::iter(event_to_proto(event)));
        Ok(Response::new(Box::pin(messages)))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let settlement = self.settlement("", request.into_inner())?;
        self.queues.scoped(&namespace).ack(settlement).await?;
        Ok(Response::new(AckResponse {}))
    }

    async fn ack_batch(&self, request: Request<AckBatchRequest>) -> Result<Response<AckBatchResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let acks = request.into_inner().acks;
        if acks.is_empty() || acks.len() > self.queues.settings().max_batch {
            return Err(
                Error::invalid("acks", format!("must hold 1 to {} acks", self.queues.settings().max_batch)).into()
            );
        }
        // Validate the whole batch before settling any of it.
        let settlements = acks
            .into_iter()
            .enumerate()
            .map(|(index, ack)| self.settlement(&format!("acks[{index}]."), ack))
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes = self.queues.scoped(&namespace).ack_batch(&settlements).await?;
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(()) => Ok(AckResult { acked: true, reason: String::new() }),
                Err(err @ (Error::JobNotLeased | Error::JobCancelled)) => {
                    Ok(AckResult { acked: false, reason: err.reason().as_str_name().into() })
                }
                Err(err) => Err(err),
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Response::new(AckBatchResponse { results }))
    }

    async fn nack(&self, request: Request<NackRequest>) -> Result<Response<NackResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        let lease = lease(&request.lease_id)?;
        if request.error.len() > MAX_ERROR_BYTES {
            return Err(Error::invalid("error", format!("must be at most {MAX_ERROR_BYTES} bytes")).into());
        }
        let retry_after = duration_from_proto("retry_after", request.retry_after.as_ref())?.unwrap_or_default();
        if retry_after > self.limits.max_ttl {
            return Err(Error::invalid("retry_after", format!("must be at most {:?}", self.limits.max_ttl)).into());
        }
        let (state, run_at) =
            self.queues.scoped(&namespace).nack(&lease, &request.error, retry_after, request.dead_letter).await?;
        Ok(Response::new(NackResponse {
            state: state_to_proto(state) as i32,
            run_at: (run_at > 0).then(|| timestamp_from_micros(run_at)),
        }))
    }

    async fn extend(&self, request: Request<ExtendRequest>) -> Result<Response<ExtendResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        let lease = lease(&request.lease_id)?;
        let visibility = self.visibility("visibility_timeout", request.visibility_timeout.as_ref())?;
        let deadline = self.queues.scoped(&namespace).extend(&lease, visibility).await?;
        Ok(Response::new(ExtendResponse { lease_expires_at: Some(timestamp_from_micros(deadline)) }))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<GetJobResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let job_id = request.into_inner().job_id;
        match self.queues.scoped(&namespace).get_job(&job_id).await? {
            Some(job) => Ok(Response::new(GetJobResponse { job: Some(job_to_proto(job)) })),
            None => Err(job_not_found(&job_id).into()),
        }
    }

    async fn cancel_job(&self, request: Request<CancelJobRequest>) -> Result<Response<CancelJobResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let job_id = request.into_inner().job_id;
        match self.queues.scoped(&namespace).cancel(&job_id).await? {
            (_, None) => Err(job_not_found(&job_id).into()),
            (cancelled, Some(state)) => {
                Ok(Response::new(CancelJobResponse { cancelled, state: state_to_proto(state) as i32 }))
            }
        }
    }

    async fn get_queue_stats(
        &self,
        request: Request<GetQueueStatsRequest>,
    ) -> Result<Response<GetQueueStatsResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let queue = request.into_inner().queue;
        validate::key("queue", &queue, &self.limits)?;
        let stats = self.queues.scoped(&namespace).stats(&queue).await?;
        Ok(Response::new(GetQueueStatsResponse {
            ready: stats.ready,
            scheduled: stats.scheduled,
            active: stats.active,
            dead: stats.dead,
            paused: stats.paused,
            oldest_ready_age: Some(duration_to_proto(stats.oldest_ready_age)),
            succeeded: stats.succeeded,
        }))
    }

    async fn list_dead_jobs(
        &self,
        request: Request<ListDeadJobsRequest>,
    ) -> Result<Response<ListDeadJobsResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        validate::key("queue", &request.queue, &self.limits)?;
        // ListDeadJobs has always capped an oversized page rather than refusing it.
        let (page_size, offset) = job_page(request.page_size.min(MAX_JOB_PAGE as u32), &request.page_token)?;
        let (jobs, more) =
            self.queues.scoped(&namespace).list_jobs(&request.queue, JobState::Dead, offset, page_size).await?;
        Ok(Response::new(ListDeadJobsResponse {
            jobs: jobs.into_iter().map(job_to_proto).collect(),
            next_page_token: if more { (offset + page_size).to_string() } else { String::new() },
        }))
    }

    async fn retry_dead_jobs(
        &self,
        request: Request<RetryDeadJobsRequest>,
    ) -> Result<Response<RetryDeadJobsResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        validate::key("queue", &request.queue, &self.limits)?;
        if request.job_ids.len() > self.queues.settings().max_batch {
            return Err(
                Error::invalid("job_ids", format!("must hold at most {}", self.queues.settings().max_batch)).into()
            );
        }
        for (index, job_id) in request.job_ids.iter().enumerate() {
            if crate::queue::queue_of_job(job_id).as_deref() != Some(request.queue.as_str()) {
                return Err(Error::invalid(format!("job_ids[{index}]"), "is not a job of this queue").into());
            }
        }
        let retried = self.queues.scoped(&namespace).retry_dead(&request.queue, &request.job_ids).await?;
        Ok(Response::new(RetryDeadJobsResponse { retried }))
    }

    async fn pause_queue(&self, request: Request<PauseQueueRequest>) -> Result<Response<PauseQueueResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let queue = request.into_inner().queue;
        validate::key("queue", &queue, &self.limits)?;
        self.queues.scoped(&namespace).pause(&queue).await?;
        Ok(Response::new(PauseQueueResponse {}))
    }

    async fn resume_queue(
        &self,
        request: Request<ResumeQueueRequest>,
    ) -> Result<Response<ResumeQueueResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let queue = request.into_inner().queue;
        validate::key("queue", &queue, &self.limits)?;
        self.queues.scoped(&namespace).resume(&queue).await?;
        Ok(Response::new(ResumeQueueResponse {}))
    }
}

/// A WatchJob stream's state: the job as last sent, and the wake-up for its next change.
struct JobFollow {
    queues: QueueManager,
    job_id: String,
    watch: JobWatch,
    last: Job,
    notified: Pin<Box<OwnedNotified>>,
    finished: bool,
}

impl JobFollow {
    fn registered(watch: &JobWatch) -> Pin<Box<OwnedNotified>> {
        let mut notified = Box::pin(watch.wake.clone().notified_owned());
        notified.as_mut().enable();
        notified
    }

    /// The job once it differs from the last sent (re-read on its events and every
    /// [`JOB_RECHECK`]); nothing after a finished state or NOT_FOUND.
    async fn next_change(mut self) -> Option<(Result<WatchJobResponse, Status>, Self)> {
        if self.finished {
            return None;
        }
        loop {
            tokio::select! {
                () = &mut self.notified => {}
                () = tokio::time::sleep(JOB_RECHECK) => {}
            }
            self.notified = Self::registered(&self.watch);
            match self.queues.get_job(&self.job_id).await {
                Ok(Some(job)) => {
                    let job = Job { payload: Vec::new(), ..job };
                    if job != self.last {
                        self.last = job.clone();
                        self.finished = is_finished(job.state);
                        return Some((Ok(WatchJobResponse { job: Some(job_to_proto(job)) }), self));
                    }
                }
                Ok(None) => {
                    self.finished = true;
                    let gone = job_not_found(&self.job_id).into();
                    return Some((Err(gone), self));
                }
                // Redis is away: read again on the next news or recheck.
                Err(_) => {}
            }
        }
    }
}

fn is_finished(state: JobState) -> bool {
    matches!(state, JobState::Succeeded | JobState::Dead | JobState::Cancelled)
}

fn job_not_found(job_id: &str) -> Error {
    Error::JobNotFound { job_id: job_id.to_owned() }
}
