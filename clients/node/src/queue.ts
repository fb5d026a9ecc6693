// Job queue: enqueue, and consume, the worker loop; watchJob, waitForJob, watchQueue and
// listJobs for callers and dashboards; configureQueue and getQueueConfig for how a queue
// delivers (per-group concurrency, strict FIFO groups, a limit on job starts).
//
// consume runs a handler on each delivered job, at most `concurrency` at a time: it acks the
// job when the handler resolves (its value is the job's result), nacks it with the error's
// message when the handler rejects, extends the lease every third of the visibility timeout
// while the job is in hand, aborts the handler's signal when the job is cancelled or its lease
// is lost (and then neither acks nor nacks), and reconnects with backoff when the stream
// breaks — to whichever replica the balancer picks — while the handlers already running go on
// and are acked through it. Acks, Nacks and Extends are retried through a 10 s outage. On
// stop it drains (see Worker). Delivery is at least once, so handlers should be idempotent.
// A handler reports progress with `job.progress(value, detail)` (UpdateProgress under its
// lease), which watchers of the job and of its queue see.
//
// Request/response over the queue is enqueue, then waitForJob: it follows the job with
// WatchJob (reopened on UNAVAILABLE, on whichever replica is up: any can serve it) until it
// finishes, and resolves with the SUCCEEDED job and its result, or rejects with
// JobNotSucceededError for DEAD and CANCELLED.

import { ClientDuplexStream, Metadata, StatusObject, status as Status } from "@grpc/grpc-js";
import { Context, context } from "@opentelemetry/api";

import { AckBatcher, DEFAULT_ACK_BATCH_SIZE } from "./acks.js";
import { Backoff, durationToMs, msToDuration, sleep } from "./connection.js";
import {
  BatonError,
  codeOf,
  ErrorReason,
  FailedPreconditionError,
  fromGrpcError,
  InternalError,
  JobCancelledError,
  JobLeaseLostError,
  JobNotSucceededError,
  reasonOf,
} from "./errors.js";
import {
  AckRequest,
  ConfigureQueueRequest,
  ConsumeRequest,
  ConsumeResponse,
  Delivery,
  EnqueueRequest,
  ExtendRequest,
  GetQueueConfigRequest,
  Job as JobMessage,
  JobQueueServiceClient,
  JobState,
  ListJobsRequest,
  NackRequest,
  Progress as ProgressMessage,
  QueueEvent as QueueEventMessage,
  QueueConfig as QueueConfigMessage,
  QueueEventKind as QueueEventKindMessage,
  UpdateProgressRequest,
  WatchJobRequest,
  WatchJobResponse,
  WatchQueueRequest,
  WatchQueueResponse,
} from "./gen/baton/v1/queue.js";
import { limitMessage, RateLimit, rateLimitOf } from "./ratelimit.js";
import { bytesOf, LEASE_RETRY_BUDGET_MS, leaseRetryBackoff, once, retryUnavailable } from "./retry.js";
import { endProcessing, jobContext, startProcessing } from "./tracing.js";
import { unary } from "./unary.js";

/** How long a delivery is leased before consume must extend it. */
export const DEFAULT_VISIBILITY_TIMEOUT_MS = 30_000;

// Stream endings worth reconnecting after; any other status is an error no retry can fix.
const RESUMABLE = new Set<Status>([
  Status.OK,
  Status.UNAVAILABLE,
  Status.UNKNOWN,
  Status.INTERNAL,
  Status.RESOURCE_EXHAUSTED,
  Status.DEADLINE_EXCEEDED,
  Status.CANCELLED,
  Status.ABORTED,
]);

export interface EnqueueOptions {
  /** Application-defined type, which consumers may filter on. */
  type?: string;
  /** Ready after this long. */
  delayMs?: number;
  /** Ready at this instant, by the Redis server's clock. */
  runAt?: Date;
  /** Delivered before every job of lower priority (default 0). */
  priority?: number;
  /** Deliveries before the job goes to the dead-letter set (default: the server's, 3). */
  maxAttempts?: number;
  /** The wait before retry n is initialMs · multiplier^(n-1), at most maxMs. */
  retryBackoff?: { initialMs: number; maxMs: number; multiplier?: number };
  /**
   * Within dedupTtlMs, another enqueue to the queue with the same key answers the first job's
   * id with `duplicate: true`. It also makes enqueue safe to retry, so only jobs with a key
   * are retried on UNAVAILABLE: without one, a retry after a lost answer could enqueue twice.
   */
  dedupKey?: string;
  dedupTtlMs?: number;
  /**
   * The job's group (a tenant, a customer, an account; 1..=512 bytes), which the queue's
   * configuration may limit (see QueueConfig). Deliveries go round-robin across groups, so one
   * busy group cannot starve the others; within a group jobs are delivered in enqueue order
   * (`priority` orders ungrouped jobs only). Default: none.
   */
  group?: string;
  signal?: AbortSignal;
}

export interface Enqueued {
  jobId: string;
  /** The dedup key matched an earlier job, whose id jobId is; nothing was added. */
  duplicate: boolean;
}

/**
 * Where a job is in its life (JobState in proto/baton/v1/queue.proto): "ready" (due, waiting
 * for a worker), "scheduled" (waiting for its run time), "active" (leased to a worker),
 * "failed" (an attempt failed; waiting to retry), and the finished states "succeeded",
 * "dead" (out of attempts or dead-lettered) and "cancelled". "unknown": a state this client
 * does not know (a newer server's).
 */
export type JobStateName =
  | "ready"
  | "scheduled"
  | "active"
  | "succeeded"
  | "failed"
  | "dead"
  | "cancelled"
  | "unknown";

/** The states listJobs pages through. */
export type ListableJobState = "ready" | "scheduled" | "active" | "succeeded" | "dead";

const STATE_NAMES: Partial<Record<JobState, JobStateName>> = {
  [JobState.JOB_STATE_READY]: "ready",
  [JobState.JOB_STATE_SCHEDULED]: "scheduled",
  [JobState.JOB_STATE_ACTIVE]: "active",
  [JobState.JOB_STATE_SUCCEEDED]: "succeeded",
  [JobState.JOB_STATE_FAILED]: "failed",
  [JobState.JOB_STATE_DEAD]: "dead",
  [JobState.JOB_STATE_CANCELLED]: "cancelled",
};

const LISTABLE_STATES: Record<ListableJobState, JobState> = {
  ready: JobState.JOB_STATE_READY,
  scheduled: JobState.JOB_STATE_SCHEDULED,
  active: JobState.JOB_STATE_ACTIVE,
  succeeded: JobState.JOB_STATE_SUCCEEDED,
  dead: JobState.JOB_STATE_DEAD,
};

function stateOf(state: JobState): JobStateName {
  return STATE_NAMES[state] ?? "unknown";
}

/** How far a worker said it was with a job (Job.progress). */
export interface JobProgress {
  /** The application's measure (a percentage, a count of items). */
  value: number;
  /** The optional detail; empty when none was given. */
  detail: Buffer;
  /** When it was reported, by the Redis server's clock. */
  reportedAt: Date | undefined;
}

function progressOf(progress: ProgressMessage): JobProgress {
  return { value: progress.value, detail: progress.detail, reportedAt: progress.reportedAt };
}

/** A job's record as Baton keeps it: what watchJob, waitForJob and listJobs return. */
export interface JobSnapshot {
  id: string;
  queue: string;
  type: string;
  /**
   * The application's payload; listJobs includes it, watchJob and waitForJob do not (empty:
   * Baton does not repeat it on the watch stream).
   */
  payload: Buffer;
  priority: number;
  state: JobStateName;
  /** Deliveries since it was enqueued or last redriven. */
  attempts: number;
  maxAttempts: number;
  createdAt: Date | undefined;
  /** When it is (or was) due: its scheduled time, or the time of its next retry. */
  runAt: Date | undefined;
  /** The latest Nack's error, or a note that the latest lease expired. */
  lastError: string;
  /** The handler's result, as acked; empty until "succeeded". */
  result: Buffer;
  dedupKey: string;
  /** The retry schedule in effect (the server's defaults filled in). */
  retryBackoff: { initialMs: number; maxMs: number; multiplier: number } | undefined;
  /** When it reached "succeeded", "dead" or "cancelled". */
  finishedAt: Date | undefined;
  /** The latest progress any delivery reported; undefined before the first. */
  progress: JobProgress | undefined;
  /** The W3C trace context the job travels with (empty outside any trace). */
  traceContext: Record<string, string>;
  /** The group given to enqueue; "" when none. */
  group: string;
}

function snapshotOf(job: JobMessage): JobSnapshot {
  return {
    id: job.jobId,
    queue: job.queue,
    type: job.type,
    payload: job.payload,
    priority: job.priority,
    state: stateOf(job.state),
    attempts: job.attempts,
    maxAttempts: job.maxAttempts,
    createdAt: job.createdAt,
    runAt: job.runAt,
    lastError: job.lastError,
    result: job.result,
    dedupKey: job.dedupKey,
    retryBackoff: job.backoff && {
      initialMs: durationToMs(job.backoff.initial),
      maxMs: durationToMs(job.backoff.max),
      multiplier: job.backoff.multiplier,
    },
    finishedAt: job.finishedAt,
    progress: job.progress && progressOf(job.progress),
    traceContext: { ...job.traceContext },
    group: job.group,
  };
}

export interface WatchJobOptions {
  /** Ends the iteration (without an error). */
  signal?: AbortSignal;
}

export interface WaitForJobOptions {
  /**
   * Rejects with DeadlineExceededError when the job has not finished within this long, the
   * reopenings of the stream included. Default: no limit.
   */
  timeoutMs?: number;
  /** Rejects with its reason. */
  signal?: AbortSignal;
}

/** What a QueueEvent reports; see QueueEventKind in proto/baton/v1/queue.proto. */
export type QueueEventKind =
  /** Added by enqueue or a schedule (state "ready" or "scheduled"). */
  | "enqueued"
  /** Delivered to a worker ("active"; `attempt` is the delivery's). */
  | "active"
  /** Its worker reported progress (`progress`). */
  | "progress"
  /** Acked ("succeeded"). */
  | "succeeded"
  /** Nacked and waiting to retry ("failed"; `error`, `runAt`). */
  | "failed"
  /** Out of attempts or dead-lettered ("dead"; `error`). */
  | "dead"
  /** Its lease expired or its worker's stream ended without settling it: "ready" again. */
  | "stalled"
  /** Handed back unstarted by a stopping worker: "ready" again, the attempt not charged. */
  | "returned"
  /** Moved from the dead-letter set back to "ready" (RetryDeadJobs). */
  | "redriven"
  /** Cancelled by CancelJob ("cancelled"). */
  | "cancelled";

const EVENT_KINDS: Partial<Record<QueueEventKindMessage, QueueEventKind>> = {
  [QueueEventKindMessage.QUEUE_EVENT_KIND_ENQUEUED]: "enqueued",
  [QueueEventKindMessage.QUEUE_EVENT_KIND_ACTIVE]: "active",
  [QueueEventKindMessage.QUEUE_EVENT_KIND_PROGRESS]: "progress",
  [QueueEventKindMessage.QUEUE_EVENT_KIND_SUCCEEDED]: "succeeded",
  [QueueEventKindMessage.QUEUE_EVENT_KIND_FAILED]: "failed",
  [QueueEventKindMessage.QUEUE_EVENT_KIND_DEAD]: "dead",
  [QueueEventKindMessage.QUEUE_EVENT_KIND_STALLED]: "stalled",
  [QueueEventKindMessage.QUEUE_EVENT_KIND_RETURNED]: "returned",
  [QueueEventKindMessage.QUEUE_EVENT_KIND_REDRIVEN]: "redriven",
  [QueueEventKindMessage.QUEUE_EVENT_KIND_CANCELLED]: "cancelled",
};

/** What every QueueEvent tells. */
export interface QueueEventBase {
  jobId: string;
  /** The job's state after the event. */
  state: JobStateName;
  /** The job's delivery count after the event. */
  attempt: number;
  /** When it happened, by the Redis server's clock. */
  at: Date | undefined;
}

/** One thing that happened to one job of a watched queue; switch on `kind`. */
export type QueueEvent =
  | (QueueEventBase & {
      kind: "enqueued";
      /** The job's type. */
      jobType: string;
      /** When it is due, when enqueued "scheduled". */
      runAt: Date | undefined;
    })
  | (QueueEventBase & { kind: "progress"; progress: JobProgress | undefined })
  | (QueueEventBase & {
      kind: "failed";
      /** The Nack's error, or why the lease ended. */
      error: string;
      /** When the job is retried. */
      runAt: Date | undefined;
    })
  | (QueueEventBase & { kind: "dead"; error: string })
  | (QueueEventBase & { kind: "active" | "succeeded" | "stalled" | "returned" | "redriven" | "cancelled" });

/**
 * Events were lost between the previous item and the next: the watcher read more slowly than
 * they came, its replica fell behind Redis, or the stream was reopened on another replica.
 */
export interface EventsMissed {
  kind: "missed";
  /** How many were lost; 0 when unknown. */
  count: number;
}

/** What watchQueue yields: an event, or a gap. */
export type QueueWatchItem = QueueEvent | EventsMissed;

function queueEventOf(event: QueueEventMessage): QueueEvent | undefined {
  const kind = EVENT_KINDS[event.kind];
  const base: QueueEventBase = { jobId: event.jobId, state: stateOf(event.state), attempt: event.attempt, at: event.at };
  switch (kind) {
    case undefined:
      return undefined; // a kind this version does not know (a newer server's)
    case "enqueued":
      return { kind, ...base, jobType: event.type, runAt: event.runAt };
    case "progress":
      return { kind, ...base, progress: event.progress && progressOf(event.progress) };
    case "failed":
      return { kind, ...base, error: event.error, runAt: event.runAt };
    case "dead":
      return { kind, ...base, error: event.error };
    default:
      return { kind, ...base };
  }
}

export interface WatchQueueOptions {
  /** Ends the iteration (without an error). */
  signal?: AbortSignal;
  /**
   * Called each time the stream is open on a replica — Baton records and sends the queue's
   * events from then on —, the first time and after each reopening: enqueue after it to be
   * sure to see the job's "enqueued".
   */
  onOpen?: () => void;
}

export interface ListJobsOptions {
  /** Most jobs on the page: 0 or unset means the server's default (100), at most 1000. */
  pageSize?: number;
  /** The previous page's nextPageToken; unset for the first page. */
  pageToken?: string;
  signal?: AbortSignal;
}

/** One page of listJobs. */
export interface JobPage {
  /** With their payloads, in the state's order (see listJobs). */
  jobs: JobSnapshot[];
  /** Pass as `pageToken` for the next page; "" on the last page. */
  nextPageToken: string;
}

/**
 * How a queue delivers (QueueConfig in proto/baton/v1/queue.proto), for configureQueue, which
 * sets the whole of it: a field left out turns its rule off.
 */
export interface QueueConfig {
  /**
   * At most this many jobs of one group active at once, on every replica together; 0 or unset
   * means no limit. At most 10,000.
   */
  groupConcurrency?: number;
  /**
   * Strict FIFO per group: one job of a group at a time, in enqueue order; a job that failed
   * and waits to retry holds its group until it is delivered again, so the next never
   * overtakes it (one that goes dead or is cancelled releases the group). Implies
   * groupConcurrency 1.
   */
  groupFifo?: boolean;
  /**
   * At most `limit` job starts (deliveries) per `periodMs`, counted as allow() counts (a
   * "sliding_window" limit, the default, holds in every span of one period exactly). Jobs
   * wait ready until the limit lets them start. Unset means none.
   */
  startLimit?: RateLimit;
  /** Apply `startLimit` to each group on its own (the ungrouped jobs as one more group). */
  startLimitPerGroup?: boolean;
}

/** A queue's configuration as Baton keeps it, every field filled in: what getQueueConfig resolves with. */
export interface StoredQueueConfig extends QueueConfig {
  /** 0: no limit. */
  groupConcurrency: number;
  groupFifo: boolean;
  /** Undefined: none. */
  startLimit: Required<RateLimit> | undefined;
  startLimitPerGroup: boolean;
}

function queueConfigMessage(config: QueueConfig): QueueConfigMessage {
  return QueueConfigMessage.fromPartial({
    groupConcurrency: config.groupConcurrency ?? 0,
    groupFifo: config.groupFifo ?? false,
    startLimit: config.startLimit && limitMessage(config.startLimit),
    startLimitPerGroup: config.startLimitPerGroup ?? false,
  });
}

function storedQueueConfigOf(config: QueueConfigMessage | undefined): StoredQueueConfig {
  return {
    groupConcurrency: config?.groupConcurrency ?? 0,
    groupFifo: config?.groupFifo ?? false,
    startLimit: config?.startLimit && rateLimitOf(config.startLimit),
    startLimitPerGroup: config?.startLimitPerGroup ?? false,
  };
}

/** One delivery of a job to a handler. */
export interface Job {
  id: string;
  queue: string;
  type: string;
  payload: Buffer;
  priority: number;
  /** 1 on the first delivery, 2 on the first retry, … */
  attempt: number;
  maxAttempts: number;
  /** The error message of the previous attempt, if it failed. */
  lastError: string;
  createdAt: Date | undefined;
  /** The group given to enqueue; "" when none. */
  group: string;
  /** Proves this delivery to Ack/Nack/Extend on the raw stub; consume does all three. */
  leaseId: string;
  /**
   * The OpenTelemetry context the job travelled with (W3C traceparent): the enqueuer's, or
   * Baton's delivery span when Baton traces. consume runs the handler in it.
   */
  traceContext: Record<string, string>;
  /**
   * The latest progress any delivery of the job reported (an earlier attempt's, to resume
   * from); undefined before the first.
   */
  lastProgress: JobProgress | undefined;
  /**
   * Records how far the handler is with the job (UpdateProgress under this delivery's lease):
   * `value` is the application's measure (a percentage, a count; any finite number), `detail`
   * an optional small note (a stage, a message; at most 4 KiB, a string as UTF-8). Kept with
   * the job (JobSnapshot.progress) and sent to the watchers of the job (watchJob, waitForJob's
   * stream) and of its queue (watchQueue). It does not prolong the lease: consume does that.
   * Retried on UNAVAILABLE for up to 10 s, as Acks are (a repeat only sets the same progress
   * again). Rejects with a JobCancelledError or JobLeaseLostError — and aborts the handler's
   * signal with it — when Baton answers that the job was cancelled or the lease is not the
   * job's current one; with the signal's reason when the signal aborted meanwhile; with an
   * InvalidArgumentError (field "value" or "detail") for a value that is not finite or an
   * oversized detail.
   */
  progress(value: number, detail?: Uint8Array | string): Promise<void>;
}

/**
 * Works on one job. Resolving acks it (with the value as its result); rejecting nacks it
 * with the error's message, to be retried after its backoff. `signal` aborts — with a
 * JobCancelledError, a JobLeaseLostError, or at shutdown — when the result no longer counts.
 */
export type JobHandler = (job: Job, signal: AbortSignal) => Promise<Uint8Array | string | void>;

export interface ConsumeOptions {
  /** Handlers running at once (default 1). */
  concurrency?: number;
  /**
   * Jobs leased beyond `concurrency` (default 0), so that a handler that finishes starts its
   * next job without waiting for a delivery. They are extended while they wait; on stop,
   * those not started go back to the queue at once without their attempt charged. Baton
   * leases at most 1,000 jobs to one stream by default (`concurrency + prefetch`).
   */
  prefetch?: number;
  /**
   * Stops the worker gracefully: no more deliveries (the stream is drained), jobs in hand
   * that never started go back to the queue at once without their attempt charged, running
   * handlers finish and are acked or nacked, and consume resolves as soon as they are done.
   */
  signal?: AbortSignal;
  /**
   * How long each lease lasts (default 30 s, at least 1 s). Leases of running handlers are
   * extended, so this only bounds how long the jobs of a crashed worker wait for another.
   */
  visibilityTimeoutMs?: number;
  /** Only jobs of these types. */
  types?: string[];
  /** Names the worker in Baton's logs and metrics. */
  consumer?: string;
  /**
   * On stop, how long running handlers may go on (and be acked) before their signals abort
   * with a shutdown error and their jobs go back to the queue (the attempt charged: they
   * started). Default 30 s; `Infinity`: every running handler finishes. consume resolves as
   * soon as the handlers are done, whatever the grace.
   */
  shutdownGraceMs?: number;
  /**
   * Called once per delivery when consume is done with it: `error` is undefined when the job
   * was acked, the handler's error when nacked, a JobCancelledError or JobLeaseLostError when
   * its result no longer counted, or the BatonError of a failed Ack or Nack.
   */
  onSettled?: (job: Job, error: unknown) => void;
  /**
   * Acks per AckBatch call at most (default 256; keep it within Baton's batch limit, 1,000 by
   * default). The worker coalesces its acks: one goes out at once when none of its AckBatch
   * calls is in flight; those of handlers finishing while one is go out together when it
   * returns, or once this many wait, or once the oldest has waited 10 ms. Each job keeps its
   * own outcome, as with one Ack per job, and each call carries the trace context of the
   * first job it acks. 0 sends one Ack per job.
   */
  ackBatchSize?: number;
}

class Shutdown extends Error {
  constructor() {
    super("the worker is shutting down");
    this.name = "Shutdown";
  }
}

/** How long running handlers may go on after a stop, unless `shutdownGraceMs` says otherwise. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 30_000;

/**
 * How long a stopped worker whose handlers are done waits for Baton to end its drained stream
 * (which it does as soon as the stream holds no unsettled lease, normally within a round
 * trip) before cancelling it.
 */
const DRAINED_STREAM_PATIENCE_MS = 5_000;

/** One Consume stream. */
interface ConsumeStream {
  call: ClientDuplexStream<ConsumeRequest, ConsumeResponse>;
  /** Until its status arrives; nothing is written after. */
  open: boolean;
  /** Its final status. */
  ended: Promise<StatusObject>;
  /**
   * The lease ids handed back unstarted on it. Baton reads a stream's messages in order and
   * ends a drained stream OK only after the drain, so they all took effect when it ends OK;
   * after any other ending they are sent again on a new stream (repeating a hand-back is
   * harmless: Baton ignores leases that are no longer current).
   */
  handedBack: string[];
}

interface Held {
  job: Job;
  /** The job's trace context, extracted: its handler, Ack, Nack and Extends continue it. */
  traceContext: Context;
  controller: AbortController;
  /** Its handler was called: past this point the job can only be settled, not handed back. */
  started?: boolean;
  /** Its lease id went into the hand-back queue. */
  handedBack?: boolean;
  /** Resolves a wait for a handler slot early: the job was cancelled, or the worker stops. */
  wakeSlot?: () => void;
  /** An Extend (with its retries) is in flight. */
  extending?: boolean;
}

type ReportProgress = (value: number, detail: Uint8Array | string | undefined) => Promise<void>;

function jobOf(delivery: Delivery, reportProgress: ReportProgress): Job {
  const job = delivery.job;
  return {
    id: job?.jobId ?? "",
    queue: job?.queue ?? "",
    type: job?.type ?? "",
    payload: job?.payload ?? Buffer.alloc(0),
    priority: job?.priority ?? 0,
    attempt: delivery.attempt,
    maxAttempts: job?.maxAttempts ?? 0,
    lastError: job?.lastError ?? "",
    createdAt: job?.createdAt,
    group: job?.group ?? "",
    leaseId: delivery.leaseId,
    traceContext: { ...job?.traceContext },
    lastProgress: job?.progress && progressOf(job.progress),
    progress: (value, detail) => reportProgress(value, detail),
  };
}

/** The error a handler's signal aborts with when Baton refuses its lease (FAILED_PRECONDITION). */
function leaseLoss(jobId: string, error: FailedPreconditionError): Error {
  return reasonOf(error) === ErrorReason.JOB_CANCELLED
    ? new JobCancelledError(`job ${jobId} cancelled`, { cause: error })
    : new JobLeaseLostError(`job ${jobId} lease lost`, { cause: error });
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message || error.name : String(error);
}

/**
 * One consume() call: its streams, its handlers, and the heartbeat extending their leases.
 *
 * Graceful stop: on the open stream, the stop first hands back every job in hand that never
 * got a handler (`unstarted_lease_ids`: ready again at once, in its place, without its attempt
 * charged; any current lease of the queue, also one delivered by an earlier stream), then
 * sends `drain` (no more deliveries); deliveries that arrive after the stop go back the same
 * way; running handlers finish and are acked or nacked; then Baton ends the drained stream OK,
 * and consume resolves. With no open stream at the stop (between reconnects), or when the
 * stream ends otherwise than OK, a new stream carries the hand-back. A handler still running
 * after `shutdownGraceMs` has its signal aborted, and the stream is cancelled, which hands its
 * job back with the attempt charged (it did start).
 */
class Worker {
  private readonly held = new Map<string, Held>(); // by lease id, from delivery until settled
  private readonly tasks = new Set<Promise<void>>();
  private running = 0;
  private readonly slotWaiters: (() => void)[] = [];
  private stopping = false;
  /** Some handler was cut short by the grace period: its lease is still held. */
  private cutShort = false;
  private current: ConsumeStream | undefined;
  /** Lease ids to hand back unstarted, written on the next turn to the open stream. */
  private readonly unstarted: string[] = [];
  private graceTimer: NodeJS.Timeout | undefined;
  private readonly visibilityMs: number;
  private readonly concurrency: number;
  private readonly stop: AbortSignal;
  /** Undefined: one Ack per job. */
  private readonly acks: AckBatcher | undefined;

  constructor(
    private readonly stub: JobQueueServiceClient,
    private readonly request: ConsumeRequest,
    private readonly handler: JobHandler,
    private readonly options: ConsumeOptions,
  ) {
    this.visibilityMs = options.visibilityTimeoutMs ?? DEFAULT_VISIBILITY_TIMEOUT_MS;
    this.concurrency = Math.max(options.concurrency ?? 1, 1);
    this.stop = options.signal ?? new AbortController().signal;
    const ackBatchSize = options.ackBatchSize ?? DEFAULT_ACK_BATCH_SIZE;
    this.acks = ackBatchSize > 0 ? new AckBatcher(stub, ackBatchSize) : undefined;
  }

  async run(): Promise<void> {
    // Every third of the visibility timeout, so that two failed Extends in a row still leave
    // time for a third.
    const heartbeat = setInterval(() => this.extendAll(), this.visibilityMs / 3);
    let stopped!: () => void;
    const stopDecided = new Promise<void>((resolve) => (stopped = resolve));
    const onStop = () => {
      this.beginStop();
      stopped();
    };
    if (this.stop.aborted) {
      onStop();
    } else {
      this.stop.addEventListener("abort", onStop, { once: true });
    }
    let failure: unknown;
    try {
      // Prompt: a draining replica's streams all end at once, and their workers should be
      // back on another replica within a few hundred ms.
      const backoff = new Backoff(50, 500);
      while (!this.stopping) {
        const stream = this.open(backoff);
        const status = await Promise.race([stream.ended, stopDecided]);
        if (this.stopping || status === undefined) {
          break;
        }
        // UNAVAILABLE (a replica draining: its leases stay ours, and the handlers in hand
        // go on and are acked through another replica), a broken connection, …: reopen.
        if (!RESUMABLE.has(status.code)) {
          throw fromGrpcError(status);
        }
        const mapped = fromGrpcError(status);
        await sleep(backoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined), this.stop);
      }
    } catch (error) {
      failure = error;
      this.beginStop();
    } finally {
      this.stop.removeEventListener("abort", onStop);
    }
    try {
      await this.finish();
    } finally {
      clearInterval(heartbeat);
      clearTimeout(this.graceTimer);
    }
    if (failure !== undefined) {
      throw failure;
    }
  }

  /**
   * Opens a stream; its first message names the queue and the stream's settings, then come the
   * pending hand-backs and, once the worker stops, the drain.
   */
  private open(backoff: Backoff): ConsumeStream {
    // Wait-for-ready: while the channel reconnects, the stream starts as soon as a replica is up.
    const call = this.stub.consume(new Metadata({ waitForReady: true }));
    let ended!: (status: StatusObject) => void;
    const stream: ConsumeStream = {
      call,
      open: true,
      ended: new Promise((resolve) => (ended = resolve)),
      handedBack: [],
    };
    call.on("status", (status: StatusObject) => {
      stream.open = false;
      ended(status);
    });
    call.on("error", () => undefined); // the status event carries the same status
    call.on("metadata", () => backoff.reset());
    call.on("data", (response: ConsumeResponse) => {
      if (response.delivery) {
        this.deliver(response.delivery);
      } else if (response.deliveries) {
        for (const delivery of response.deliveries.deliveries) this.deliver(delivery);
      } else if (response.cancelled) {
        this.abort(response.cancelled.leaseId, new JobCancelledError(`job ${response.cancelled.jobId} cancelled`));
      }
    });
    call.write(this.request);
    this.current = stream;
    this.writeHandBacks();
    if (this.stopping) {
      call.write(ConsumeRequest.fromPartial({ drain: true }));
    }
    return stream;
  }

  /** Stops deliveries and hands back the jobs in hand that never started; idempotent. */
  private beginStop(): void {
    if (this.stopping) {
      return;
    }
    this.stopping = true;
    // Before the drain: Baton may end a drained stream as soon as it holds nothing, and jobs
    // delivered by an earlier stream are not its own.
    for (const held of this.held.values()) {
      if (!held.started && !held.controller.signal.aborted) {
        this.handBackUnstarted(held);
      }
    }
    this.writeHandBacks();
    const stream = this.current;
    if (stream?.open) {
      stream.call.write(ConsumeRequest.fromPartial({ drain: true }));
    }
    // Jobs waiting for a slot never start: each wakes, sees `stopping` and lets go.
    this.slotWaiters.splice(0).forEach((wake) => wake());
    const grace = this.options.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS;
    if (Number.isFinite(grace)) {
      this.graceTimer = setTimeout(() => this.cutRunningHandlers(), Math.max(grace, 0));
    }
  }

  private cutRunningHandlers(): void {
    for (const held of this.held.values()) {
      if (!held.controller.signal.aborted) {
        this.cutShort = true;
        held.controller.abort(new Shutdown());
      }
    }
  }

  /**
   * Waits for the handlers, then for Baton to end the drained stream (cancelling it after a
   * short patience, or at once when a handler was cut short, which hands its job back). A
   * hand-back that no stream surely carried goes out on a new stream, within the patience.
   */
  private async finish(): Promise<void> {
    while (this.tasks.size > 0) {
      await Promise.allSettled([...this.tasks]);
    }
    clearTimeout(this.graceTimer);
    if (this.cutShort) {
      this.current?.call.cancel();
      return;
    }
    const patience = new AbortController();
    const patienceOver = sleep(DRAINED_STREAM_PATIENCE_MS, patience.signal).then(() => undefined);
    const backoff = new Backoff(50, 500);
    try {
      for (;;) {
        const stream = this.current;
        if (stream) {
          const status = await Promise.race([stream.ended, patienceOver]);
          if (status === undefined) {
            stream.call.cancel();
            return;
          }
          // Drained: everything written to it, hand-backs included, took effect. After a
          // transient ending its hand-backs go again; after an error no retry can fix, the
          // jobs are left to their visibility timeout.
          if (!RESUMABLE.has(status.code)) {
            return;
          }
          if (status.code !== Status.OK) {
            this.unstarted.push(...stream.handedBack.splice(0));
          }
          this.current = undefined;
          if (this.unstarted.length > 0 && status.code !== Status.OK) {
            if (!(await sleep(backoff.delayMs(undefined), patience.signal))) {
              return;
            }
          }
        }
        if (this.unstarted.length === 0) {
          return;
        }
        try {
          this.open(backoff);
        } catch {
          return; // the client was closed: the jobs are left to their visibility timeout
        }
      }
    } finally {
      patience.abort(); // clears the timers
    }
  }

  private deliver(delivery: Delivery): void {
    const { leaseId } = delivery;
    const jobId = delivery.job?.jobId ?? "";
    const job = jobOf(delivery, (value, detail) => this.reportProgress(leaseId, jobId, value, detail));
    const held: Held = { job, traceContext: jobContext(job.traceContext), controller: new AbortController() };
    if (this.stopping) {
      // Arrived after the stop decision (the drain crossed it on the wire): never started.
      // Written after the drain, but this stream holds it, so Baton reads it before ending.
      this.handBackUnstarted(held);
      this.scheduleHandBacks();
      return;
    }
    this.held.set(held.job.leaseId, held);
    const task = this.process(held).finally(() => this.tasks.delete(task));
    this.tasks.add(task);
  }

  /** Queues a job's lease id to go back unstarted, at most once. */
  private handBackUnstarted(held: Held): void {
    if (!held.handedBack) {
      held.handedBack = true;
      this.unstarted.push(held.job.leaseId);
    }
  }

  private scheduleHandBacks(): void {
    if (this.unstarted.length === 1) {
      setImmediate(() => this.writeHandBacks()); // one message for a burst
    }
  }

  /**
   * Writes the queued hand-backs to the open stream, at most max_in_flight ids a message;
   * with no open stream they wait for the next one (see `open`).
   */
  private writeHandBacks(): void {
    const stream = this.current;
    if (!stream?.open) {
      return;
    }
    while (this.unstarted.length > 0) {
      const unstartedLeaseIds = this.unstarted.splice(0, this.request.maxInFlight);
      stream.handedBack.push(...unstartedLeaseIds);
      stream.call.write(ConsumeRequest.fromPartial({ unstartedLeaseIds }));
    }
  }

  private abort(leaseId: string, reason: Error): void {
    const held = this.held.get(leaseId);
    if (held && !held.controller.signal.aborted) {
      held.controller.abort(reason);
      if (held.wakeSlot) {
        // Out of the queue too, or a later release would spend its wake-up on this job.
        this.slotWaiters.splice(this.slotWaiters.indexOf(held.wakeSlot), 1);
        held.wakeSlot();
      }
    }
  }

  private async process(held: Held): Promise<void> {
    let slot = false;
    try {
      slot = await this.takeSlot(held);
      // `stopping` again: the stop may have come while this task waited for its turn.
      if (!slot || held.controller.signal.aborted || this.stopping) {
        if (held.controller.signal.aborted) {
          this.reportDropped(held); // cancelled, or its lease lost, before it started
        } else if (!held.handedBack) {
          this.handBackUnstarted(held); // the worker stops
          this.scheduleHandBacks();
        }
        return;
      }
      held.started = true;
      // The handler, and the Ack or Nack, run in the job's trace, in a span of their own.
      const { span, ctx } = startProcessing(held.traceContext, held.job);
      let outcome: unknown;
      try {
        outcome = await context.with(ctx, async () => {
          let result: Uint8Array | string | void = undefined;
          let failure: unknown;
          let failed = false;
          try {
            result = await this.handler(held.job, held.controller.signal);
          } catch (error) {
            failure = error;
            failed = true;
          }
          return this.settle(held, result, failed, failure);
        });
      } finally {
        endProcessing(span, outcome);
      }
    } finally {
      if (slot) {
        this.releaseSlot();
      }
      this.held.delete(held.job.leaseId);
    }
  }

  /** Waits for a free handler slot; false when the job was cancelled or the worker stops. */
  private async takeSlot(held: Held): Promise<boolean> {
    while (this.running >= this.concurrency) {
      if (this.stopping || held.controller.signal.aborted) {
        return false;
      }
      await new Promise<void>((wake) => {
        held.wakeSlot = wake;
        this.slotWaiters.push(wake);
      });
      held.wakeSlot = undefined;
    }
    if (this.stopping || held.controller.signal.aborted) {
      return false;
    }
    this.running++;
    return true;
  }

  private releaseSlot(): void {
    this.running--;
    this.slotWaiters.shift()?.();
  }

  /** Acks or nacks the job; resolves with what went wrong (reported), if anything. */
  private async settle(
    held: Held,
    result: Uint8Array | string | void,
    failed: boolean,
    failure: unknown,
  ): Promise<unknown> {
    if (held.controller.signal.aborted) {
      // Cut short by shutdown: not the job's fault, so no Nack (which would count as a failed
      // attempt); cancelling the stream hands it back at once.
      this.reportDropped(held);
      return undefined;
    }
    const leaseId = held.job.leaseId;
    if (!failed && this.acks) {
      const ack = AckRequest.fromPartial({ leaseId, result: result ? bytesOf(result) : Buffer.alloc(0) });
      const refused = await this.acks.ack(ack);
      this.options.onSettled?.(held.job, refused);
      return refused;
    }
    const options = { waitForReady: true };
    const call = failed
      ? () => {
          const nack = NackRequest.fromPartial({ leaseId, error: messageOf(failure) });
          return unary(this.stub.nack.bind(this.stub), nack, options);
        }
      : () => {
          const ack = AckRequest.fromPartial({ leaseId, result: result ? bytesOf(result) : Buffer.alloc(0) });
          return unary(this.stub.ack.bind(this.stub), ack, options);
        };
    try {
      // Repeating an applied Ack or Nack answers done again; past the visibility timeout
      // Baton answers JOB_NOT_LEASED, which ends the retries.
      await retryUnavailable(call, LEASE_RETRY_BUDGET_MS, undefined, leaseRetryBackoff());
    } catch (error) {
      this.options.onSettled?.(held.job, error);
      return error;
    }
    this.options.onSettled?.(held.job, failed ? failure : undefined);
    return failed ? failure : undefined;
  }

  private reportDropped(held: Held): void {
    const reason: unknown = held.controller.signal.reason;
    if (reason instanceof JobCancelledError || reason instanceof JobLeaseLostError) {
      this.options.onSettled?.(held.job, reason);
    }
  }

  private extendAll(): void {
    for (const held of this.held.values()) {
      if (!held.controller.signal.aborted && !held.extending) {
        void context.with(held.traceContext, () => this.extend(held));
      }
    }
  }

  private async extend(held: Held): Promise<void> {
    const request = ExtendRequest.fromPartial({
      leaseId: held.job.leaseId,
      visibilityTimeout: msToDuration(this.visibilityMs),
    });
    held.extending = true;
    try {
      // Retried until the next beat takes over.
      await retryUnavailable(
        () => unary(this.stub.extend.bind(this.stub), request, { waitForReady: true }),
        this.visibilityMs / 3,
        undefined,
        leaseRetryBackoff(),
      );
    } catch (error) {
      if (error instanceof FailedPreconditionError) {
        this.abort(held.job.leaseId, leaseLoss(held.job.id, error));
      }
      // Anything else (UNAVAILABLE past the budget, …) is retried at the next beat.
    } finally {
      held.extending = false;
    }
  }

  /**
   * Job.progress: UpdateProgress under the delivery's lease, retried on UNAVAILABLE as Acks
   * are, and cut short when the handler's signal aborts. A refused lease aborts the handler's
   * signal, as a refused Extend does.
   */
  private async reportProgress(
    leaseId: string,
    jobId: string,
    value: number,
    detail: Uint8Array | string | undefined,
  ): Promise<void> {
    const request = UpdateProgressRequest.fromPartial({
      leaseId,
      value,
      detail: detail === undefined ? Buffer.alloc(0) : bytesOf(detail),
    });
    // Undefined once the job is settled: Baton then refuses the lease anyway.
    const signal = this.held.get(leaseId)?.controller.signal;
    try {
      await retryUnavailable(
        () => unary(this.stub.updateProgress.bind(this.stub), request, { waitForReady: true }, signal),
        LEASE_RETRY_BUDGET_MS,
        signal,
        leaseRetryBackoff(),
      );
    } catch (error) {
      if (error instanceof FailedPreconditionError) {
        const lost = leaseLoss(jobId, error);
        this.abort(leaseId, lost);
        throw lost;
      }
      if (signal?.aborted) {
        throw signal.reason;
      }
      throw error;
    }
  }
}

/** A count option as a whole number, 0 when absent, negative or not a number. */
function wholeOrZero(count: number | undefined): number {
  return count !== undefined && Number.isFinite(count) ? Math.max(Math.floor(count), 0) : 0;
}

/**
 * What the tests change: `batchDeliveries` false opens Consume streams as against a server
 * from before batches, which sends one job a message.
 */
export const consumeTuning = { batchDeliveries: true };

/**
 * enqueue, consume, watchJob, waitForJob, watchQueue, listJobs, configureQueue and
 * getQueueConfig, for BatonClient.
 */
export class QueueHelpers {
  constructor(
    private readonly stub: JobQueueServiceClient,
    private readonly defaultTimeoutMs: number,
  ) {}

  async enqueue(queue: string, payload: Uint8Array | string = "", options: EnqueueOptions = {}): Promise<Enqueued> {
    const request = EnqueueRequest.fromPartial({
      queue,
      payload: bytesOf(payload),
      type: options.type ?? "",
      delay: options.delayMs !== undefined ? msToDuration(options.delayMs) : undefined,
      runAt: options.runAt,
      priority: options.priority ?? 0,
      maxAttempts: options.maxAttempts ?? 0,
      backoff: options.retryBackoff && {
        initial: msToDuration(options.retryBackoff.initialMs),
        max: msToDuration(options.retryBackoff.maxMs),
        multiplier: options.retryBackoff.multiplier ?? 2,
      },
      dedupKey: options.dedupKey ?? "",
      dedupTtl: options.dedupTtlMs ? msToDuration(options.dedupTtlMs) : undefined,
      group: options.group ?? "",
    });
    // Wait-for-ready only when a retry is safe too; otherwise fail fast while reconnecting.
    const call = () =>
      unary(this.stub.enqueue.bind(this.stub), request, { waitForReady: Boolean(options.dedupKey) }, options.signal);
    const response = options.dedupKey
      ? await retryUnavailable(call, this.defaultTimeoutMs, options.signal)
      : await once(call);
    return { jobId: response.jobId, duplicate: response.duplicate };
  }

  /**
   * Runs `handler` on the jobs of `queue` until `options.signal` aborts (then drains and
   * resolves once the handlers are done) or an error no retry can fix occurs
   * (INVALID_ARGUMENT, UNAUTHENTICATED, …), with which it rejects once the running handlers
   * are done. Each handler runs in the job's OpenTelemetry trace (Job.traceContext), in a
   * span "process <queue>" of kind consumer, as does the job's Nack; acks go out coalesced in
   * AckBatch calls (see `ackBatchSize`), each in the trace of the first job it acks.
   */
  consume(queue: string, handler: JobHandler, options: ConsumeOptions = {}): Promise<void> {
    const request = ConsumeRequest.fromPartial({
      queue,
      maxInFlight: Math.max(options.concurrency ?? 1, 1) + wholeOrZero(options.prefetch),
      visibilityTimeout: msToDuration(options.visibilityTimeoutMs ?? DEFAULT_VISIBILITY_TIMEOUT_MS),
      types: options.types ?? [],
      consumer: options.consumer ?? "",
      // A fetch's jobs in one message rather than one a message; older servers ignore it.
      batchDeliveries: consumeTuning.batchDeliveries,
    });
    return new Worker(this.stub, request, handler, options).run();
  }

  /**
   * The job as it changes: first as it is now, then after each change (delivered, progress,
   * failed and waiting to retry, handed back), last in its finished state, after which the
   * iteration ends. The stream opens when iteration starts; one that ends UNAVAILABLE (a
   * replica draining, a broken connection) is reopened on whichever replica is up, and starts
   * again with the job as it is then (possibly the same as the last snapshot). Ends early
   * when `signal` aborts or the caller stops iterating; throws NotFoundError when the job
   * does not exist or is past retention, or the BatonError of any other failure.
   */
  watchJob(jobId: string, options: WatchJobOptions = {}): AsyncGenerator<JobSnapshot, void, undefined> {
    return this.watch(jobId, options.signal, undefined);
  }

  /**
   * Follows the job (as watchJob does, reopening after UNAVAILABLE) until it finishes:
   * resolves with it when "succeeded" (its `result` as the handler returned it; the payload is
   * not included), rejects with JobNotSucceededError, carrying the final snapshot, when it is
   * "dead" or "cancelled". Rejects with DeadlineExceededError once `timeoutMs` passes, with
   * the signal's reason when `signal` aborts, with NotFoundError when the job does not exist.
   */
  async waitForJob(jobId: string, options: WaitForJobOptions = {}): Promise<JobSnapshot> {
    const { signal, timeoutMs } = options;
    const deadline = timeoutMs === undefined ? undefined : Date.now() + timeoutMs;
    let last: JobSnapshot | undefined;
    for await (const snapshot of this.watch(jobId, signal, deadline)) {
      last = snapshot;
    }
    signal?.throwIfAborted();
    switch (last?.state) {
      case "succeeded":
        return last;
      case "dead":
      case "cancelled":
        throw new JobNotSucceededError(last);
      default:
        // Baton ends the stream OK only after a finished state.
        throw new InternalError(`WatchJob ended with job ${jobId} ${last?.state ?? "never sent"}, not finished`, {
          code: Status.INTERNAL,
        });
    }
  }

  /** WatchJob, reopened after UNAVAILABLE until the job finishes, `signal` aborts or `deadline` passes. */
  private async *watch(
    jobId: string,
    signal: AbortSignal | undefined,
    deadline: number | undefined,
  ): AsyncGenerator<JobSnapshot, void, undefined> {
    const request = WatchJobRequest.fromPartial({ jobId });
    const backoff = new Backoff(50, 1000);
    while (!signal?.aborted) {
      // Wait-for-ready: while the channel reconnects the stream starts as soon as a replica is up.
      const call = this.stub.watchJob(request, new Metadata({ waitForReady: true }), { deadline });
      call.on("error", () => undefined); // the iteration below rethrows it
      const cancel = () => call.cancel();
      signal?.addEventListener("abort", cancel, { once: true });
      let failure: unknown;
      try {
        for await (const response of call as AsyncIterable<WatchJobResponse>) {
          backoff.reset();
          if (response.job) {
            yield snapshotOf(response.job);
          }
        }
      } catch (error) {
        failure = error;
      } finally {
        signal?.removeEventListener("abort", cancel);
        // Ends the stream when the caller stopped iterating; a no-op once it has ended.
        call.cancel();
      }
      if (signal?.aborted || failure === undefined) {
        return; // the job finished (Baton ended the stream OK), or the caller gave up
      }
      if (codeOf(failure) !== Status.UNAVAILABLE) {
        throw fromGrpcError(failure);
      }
      // Reopened past the deadline, the call fails at once with DEADLINE_EXCEEDED.
      const mapped = fromGrpcError(failure);
      const delay = backoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined);
      await sleep(deadline === undefined ? delay : Math.min(delay, Math.max(deadline - Date.now(), 0)), signal);
    }
  }

  /**
   * The queue's events from the moment the stream is open (see `onOpen`; there is no replay),
   * in order, with a `missed` item wherever some were lost. A stream that ends UNAVAILABLE
   * (a replica draining, a broken connection) is reopened on whichever replica is up, after a
   * `missed` item of count 0 (what happened in between is unknown). Ends when `signal`
   * aborts or the caller stops iterating; throws the BatonError of any other failure.
   * Baton records a queue's events only while somebody watches it.
   */
  async *watchQueue(queue: string, options: WatchQueueOptions = {}): AsyncGenerator<QueueWatchItem, void, undefined> {
    const { signal, onOpen } = options;
    const request = WatchQueueRequest.fromPartial({ queue });
    const backoff = new Backoff(50, 1000);
    while (!signal?.aborted) {
      const call = this.stub.watchQueue(request, new Metadata({ waitForReady: true }));
      call.on("error", () => undefined); // the iteration below rethrows it
      let opened = false;
      // Baton answers the headers once the watch is set up, before any event.
      call.on("metadata", () => {
        opened = true;
        backoff.reset();
        onOpen?.();
      });
      const cancel = () => call.cancel();
      signal?.addEventListener("abort", cancel, { once: true });
      let failure: unknown;
      try {
        // Iterating the stream, rather than buffering its events, leaves the pace to the
        // caller: one that falls behind is told by Baton what it missed.
        for await (const response of call as AsyncIterable<WatchQueueResponse>) {
          if (response.missed) {
            yield { kind: "missed", count: Number(response.missed.count) };
          } else if (response.event) {
            const event = queueEventOf(response.event);
            if (event) {
              yield event;
            }
          }
        }
      } catch (error) {
        failure = error;
      } finally {
        signal?.removeEventListener("abort", cancel);
        call.cancel();
      }
      if (signal?.aborted) {
        return;
      }
      // Baton never ends the stream OK on its own; if it does, reopening is as safe.
      if (failure !== undefined && codeOf(failure) !== Status.UNAVAILABLE) {
        throw fromGrpcError(failure);
      }
      if (opened) {
        yield { kind: "missed", count: 0 };
      }
      const mapped = fromGrpcError(failure);
      await sleep(backoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined), signal);
    }
  }

  /**
   * One page of the queue's jobs in `state`, with their payloads: "ready" in delivery order,
   * "scheduled" (delayed, and failed ones waiting to retry) soonest first, "active" by lease
   * expiry, "succeeded" most recently finished first (as many as Baton keeps), "dead" oldest
   * death first. Retried on UNAVAILABLE. A page too large for one message is
   * ResourceExhaustedError (RESPONSE_TOO_LARGE): ask for a smaller `pageSize`.
   */
  async listJobs(queue: string, state: ListableJobState, options: ListJobsOptions = {}): Promise<JobPage> {
    const request = ListJobsRequest.fromPartial({
      queue,
      // A state not listable (from untyped code) goes as UNSPECIFIED, which Baton refuses.
      state: LISTABLE_STATES[state] ?? JobState.JOB_STATE_UNSPECIFIED,
      pageSize: options.pageSize ?? 0,
      pageToken: options.pageToken ?? "",
    });
    const response = await retryUnavailable(
      () => unary(this.stub.listJobs.bind(this.stub), request, { waitForReady: true }, options.signal),
      this.defaultTimeoutMs,
      options.signal,
    );
    return { jobs: response.jobs.map(snapshotOf), nextPageToken: response.nextPageToken };
  }

  /**
   * Sets how `queue` delivers — the whole configuration: what `config` leaves out is turned
   * off. It takes effect at the next delivery on every replica; jobs already delivered are
   * not affected. Retried on UNAVAILABLE (setting it again is harmless). InvalidArgumentError
   * for groupConcurrency over 10,000 (field "config.group_concurrency") or an invalid start
   * limit (its field under "config.start_limit").
   */
  async configureQueue(queue: string, config: QueueConfig, signal?: AbortSignal): Promise<void> {
    const request = ConfigureQueueRequest.fromPartial({ queue, config: queueConfigMessage(config) });
    await retryUnavailable(
      () => unary(this.stub.configureQueue.bind(this.stub), request, { waitForReady: true }, signal),
      this.defaultTimeoutMs,
      signal,
    );
  }

  /** The configuration of `queue`; a queue never configured has none of the rules. Retried on UNAVAILABLE. */
  async getQueueConfig(queue: string, signal?: AbortSignal): Promise<StoredQueueConfig> {
    const request = GetQueueConfigRequest.fromPartial({ queue });
    const response = await retryUnavailable(
      () => unary(this.stub.getQueueConfig.bind(this.stub), request, { waitForReady: true }, signal),
      this.defaultTimeoutMs,
      signal,
    );
    return storedQueueConfigOf(response.config);
  }
}
