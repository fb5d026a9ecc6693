// Job queue: enqueue, and consume, the worker loop.
//
// consume runs a handler on each delivered job, at most `concurrency` at a time: it acks the
// job when the handler resolves (its value is the job's result), nacks it with the error's
// message when the handler rejects, extends the lease every third of the visibility timeout
// while the job is in hand, aborts the handler's signal when the job is cancelled or its lease
// is lost (and then neither acks nor nacks), and reconnects with backoff when the stream
// breaks — to whichever replica the balancer picks — while the handlers already running go on
// and are acked through it. Acks, Nacks and Extends are retried through a 10 s outage. On
// stop it drains (see Worker). Delivery is at least once, so handlers should be idempotent.

import { ClientDuplexStream, Metadata, StatusObject, status as Status } from "@grpc/grpc-js";
import { Context, context } from "@opentelemetry/api";

import { AckBatcher, DEFAULT_ACK_BATCH_SIZE } from "./acks.js";
import { Backoff, msToDuration, sleep } from "./connection.js";
import {
  BatonError,
  ErrorReason,
  FailedPreconditionError,
  fromGrpcError,
  JobCancelledError,
  JobLeaseLostError,
  reasonOf,
} from "./errors.js";
import {
  AckRequest,
  ConsumeRequest,
  ConsumeResponse,
  Delivery,
  EnqueueRequest,
  ExtendRequest,
  JobQueueServiceClient,
  NackRequest,
} from "./gen/baton/v1/queue.js";
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
  signal?: AbortSignal;
}

export interface Enqueued {
  jobId: string;
  /** The dedup key matched an earlier job, whose id jobId is; nothing was added. */
  duplicate: boolean;
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
  /** Proves this delivery to Ack/Nack/Extend on the raw stub; consume does all three. */
  leaseId: string;
  /**
   * The OpenTelemetry context the job travelled with (W3C traceparent): the enqueuer's, or
   * Baton's delivery span when Baton traces. consume runs the handler in it.
   */
  traceContext: Record<string, string>;
}

/**
 * Works on one job. Resolving acks it (with the value as its result); rejecting nacks it
 * with the error's message, to be retried after its backoff. `signal` aborts — with a
 * JobCancelledError, a JobLeaseLostError, or at shutdown — when the result no longer counts.
 */
export type JobHandler = (job: Job, signal: AbortSignal) => Promise<Uint8Array | string | void>;

export interface ConsumeOptions {
  /** Jobs in hand at once (default 1). */
  concurrency?: number;
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

function jobOf(delivery: Delivery): Job {
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
    leaseId: delivery.leaseId,
    traceContext: { ...job?.traceContext },
  };
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
    const job = jobOf(delivery);
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
        const lost =
          reasonOf(error) === ErrorReason.JOB_CANCELLED
            ? new JobCancelledError(`job ${held.job.id} cancelled`, { cause: error })
            : new JobLeaseLostError(`job ${held.job.id} lease lost`, { cause: error });
        this.abort(held.job.leaseId, lost);
      }
      // Anything else (UNAVAILABLE past the budget, …) is retried at the next beat.
    } finally {
      held.extending = false;
    }
  }
}

/** enqueue and consume, for BatonClient. */
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
      maxInFlight: Math.max(options.concurrency ?? 1, 1),
      visibilityTimeout: msToDuration(options.visibilityTimeoutMs ?? DEFAULT_VISIBILITY_TIMEOUT_MS),
      types: options.types ?? [],
      consumer: options.consumer ?? "",
    });
    return new Worker(this.stub, request, handler, options).run();
  }
}
