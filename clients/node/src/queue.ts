// Job queue: enqueue, and consume, the worker loop.
//
// consume runs a handler on each delivered job, at most `concurrency` at a time: it acks the
// job when the handler resolves (its value is the job's result), nacks it with the error's
// message when the handler rejects, extends the lease every third of the visibility timeout
// while the job is in hand, aborts the handler's signal when the job is cancelled or its lease
// is lost (and then neither acks nor nacks), and reconnects with backoff when the stream
// breaks — to whichever replica the balancer picks — while the handlers already running go on
// and are acked through it. Delivery is at least once, so handlers should be idempotent.

import { ClientReadableStream, status as Status } from "@grpc/grpc-js";

import { Backoff, msToDuration, sleep } from "./connection.js";
import {
  BatonError,
  codeOf,
  FailedPreconditionError,
  fromGrpcError,
  JobCancelledError,
  JobLeaseLostError,
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
import { bytesOf, once, retryUnavailable } from "./retry.js";
import { unary } from "./unary.js";

/** How long a delivery is leased before consume must extend it. */
export const DEFAULT_VISIBILITY_TIMEOUT_MS = 30_000;

// Stream endings worth reconnecting after; any other status is an error no retry can fix.
const RESUMABLE = new Set<Status>([
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
  /** Stops the worker: no new job starts, and consume resolves once the handlers are done. */
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
   * and their jobs go back to the queue. Default 0.
   */
  shutdownGraceMs?: number;
  /**
   * Called once per delivery when consume is done with it: `error` is undefined when the job
   * was acked, the handler's error when nacked, a JobCancelledError or JobLeaseLostError when
   * its result no longer counted, or the BatonError of a failed Ack or Nack.
   */
  onSettled?: (job: Job, error: unknown) => void;
}

class Shutdown extends Error {
  constructor() {
    super("the worker is shutting down");
    this.name = "Shutdown";
  }
}

interface Held {
  job: Job;
  controller: AbortController;
  /** Resolves a wait for a handler slot early: the job was cancelled, or the worker stops. */
  wakeSlot?: () => void;
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
  };
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message || error.name : String(error);
}

/** One consume() call: its streams, its handlers, and the heartbeat extending their leases. */
class Worker {
  private readonly held = new Map<string, Held>(); // by lease id, from delivery until settled
  private readonly tasks = new Set<Promise<void>>();
  private running = 0;
  private readonly slotWaiters: (() => void)[] = [];
  private stopping = false;
  private call: ClientReadableStream<ConsumeResponse> | undefined;
  private readonly visibilityMs: number;
  private readonly concurrency: number;
  private readonly stop: AbortSignal;

  constructor(
    private readonly stub: JobQueueServiceClient,
    private readonly request: ConsumeRequest,
    private readonly handler: JobHandler,
    private readonly options: ConsumeOptions,
  ) {
    this.visibilityMs = options.visibilityTimeoutMs ?? DEFAULT_VISIBILITY_TIMEOUT_MS;
    this.concurrency = Math.max(options.concurrency ?? 1, 1);
    this.stop = options.signal ?? new AbortController().signal;
  }

  async run(): Promise<void> {
    // Every third of the visibility timeout, so that two failed Extends in a row still leave
    // time for a third.
    const heartbeat = setInterval(() => this.extendAll(), this.visibilityMs / 3);
    const backoff = new Backoff();
    try {
      while (!this.stop.aborted) {
        const error = await this.follow(backoff);
        if (this.stop.aborted) {
          break;
        }
        const code = codeOf(error);
        if (code !== undefined && !RESUMABLE.has(code)) {
          throw fromGrpcError(error);
        }
        const mapped = fromGrpcError(error);
        await sleep(backoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined), this.stop);
      }
    } finally {
      await this.drain();
      clearInterval(heartbeat);
    }
  }

  /** Reads one stream until it ends (resolving with its error) or the worker stops. */
  private follow(backoff: Backoff): Promise<unknown> {
    return new Promise((resolve) => {
      const call = this.stub.consume(this.request);
      this.call = call;
      const onStop = () => resolve(undefined); // the stream stays open until drain() closes it
      this.stop.addEventListener("abort", onStop, { once: true });
      const ended = (error: unknown) => {
        this.stop.removeEventListener("abort", onStop);
        resolve(error);
      };
      call.on("metadata", () => backoff.reset());
      call.on("data", (response: ConsumeResponse) => {
        if (response.delivery) {
          this.deliver(response.delivery);
        } else if (response.cancelled) {
          this.abort(response.cancelled.leaseId, new JobCancelledError(`job ${response.cancelled.jobId} cancelled`));
        }
      });
      call.on("error", ended);
      call.on("end", () => ended(undefined));
    });
  }

  private deliver(delivery: Delivery): void {
    if (this.stopping) {
      return; // handed back when the stream closes
    }
    const held: Held = { job: jobOf(delivery), controller: new AbortController() };
    this.held.set(held.job.leaseId, held);
    const task = this.process(held).finally(() => this.tasks.delete(task));
    this.tasks.add(task);
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
      if (!slot || held.controller.signal.aborted) {
        this.reportDropped(held); // never started; any but a cancelled job goes back to the queue
        return;
      }
      let result: Uint8Array | string | void = undefined;
      let failure: unknown;
      let failed = false;
      try {
        result = await this.handler(held.job, held.controller.signal);
      } catch (error) {
        failure = error;
        failed = true;
      }
      await this.settle(held, result, failed, failure);
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

  private async settle(held: Held, result: Uint8Array | string | void, failed: boolean, failure: unknown) {
    if (held.controller.signal.aborted) {
      // Cut short by shutdown: not the job's fault, so no Nack (which would use up an
      // attempt); the stream's close hands it back at once.
      this.reportDropped(held);
      return;
    }
    const leaseId = held.job.leaseId;
    try {
      // Past the visibility timeout the lease has expired and every retry would be refused.
      if (failed) {
        const nack = NackRequest.fromPartial({ leaseId, error: messageOf(failure) });
        await retryUnavailable(() => unary(this.stub.nack.bind(this.stub), nack), this.visibilityMs);
      } else {
        const ack = AckRequest.fromPartial({ leaseId, result: result ? bytesOf(result) : Buffer.alloc(0) });
        await retryUnavailable(() => unary(this.stub.ack.bind(this.stub), ack), this.visibilityMs);
      }
    } catch (error) {
      this.options.onSettled?.(held.job, error);
      return;
    }
    this.options.onSettled?.(held.job, failed ? failure : undefined);
  }

  private reportDropped(held: Held): void {
    const reason: unknown = held.controller.signal.reason;
    if (reason instanceof JobCancelledError || reason instanceof JobLeaseLostError) {
      this.options.onSettled?.(held.job, reason);
    }
  }

  private extendAll(): void {
    for (const held of this.held.values()) {
      if (!held.controller.signal.aborted) {
        void this.extend(held);
      }
    }
  }

  private async extend(held: Held): Promise<void> {
    const request = ExtendRequest.fromPartial({
      leaseId: held.job.leaseId,
      visibilityTimeout: msToDuration(this.visibilityMs),
    });
    try {
      await unary(this.stub.extend.bind(this.stub), request);
    } catch (error) {
      const mapped = fromGrpcError(error);
      if (mapped instanceof FailedPreconditionError) {
        const lost =
          mapped.reason === "JOB_CANCELLED"
            ? new JobCancelledError(`job ${held.job.id} cancelled`, { cause: mapped })
            : new JobLeaseLostError(`job ${held.job.id} lease lost`, { cause: mapped });
        this.abort(held.job.leaseId, lost);
      }
      // Anything else (UNAVAILABLE, …) is retried at the next beat.
    }
  }

  /**
   * Starts no more handlers, gives the running ones the grace to finish, aborts the rest,
   * waits for them, and closes the stream: the jobs that never started go back at once.
   */
  private async drain(): Promise<void> {
    this.stopping = true;
    this.slotWaiters.splice(0).forEach((wake) => wake());
    const grace = this.options.shutdownGraceMs ?? 0;
    if (this.tasks.size > 0 && grace > 0) {
      await Promise.race([Promise.allSettled([...this.tasks]), sleep(grace)]);
    }
    for (const held of this.held.values()) {
      if (!held.controller.signal.aborted) {
        held.controller.abort(new Shutdown());
      }
    }
    await Promise.allSettled([...this.tasks]);
    this.call?.cancel();
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
    const call = () => unary(this.stub.enqueue.bind(this.stub), request, {}, options.signal);
    const response = options.dedupKey
      ? await retryUnavailable(call, this.defaultTimeoutMs, options.signal)
      : await once(call);
    return { jobId: response.jobId, duplicate: response.duplicate };
  }

  /**
   * Runs `handler` on the jobs of `queue` until `options.signal` aborts (then resolves once
   * the handlers are done) or an error no retry can fix occurs (INVALID_ARGUMENT,
   * UNAUTHENTICATED, …), with which it rejects.
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
