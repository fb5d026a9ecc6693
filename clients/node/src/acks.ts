// A worker's acks, coalesced into AckBatch calls.
//
// When no AckBatch of the worker is in flight, an ack goes out at the end of the event-loop
// turn that queued it, with every other ack that turn queued: the handlers of one burst of
// deliveries finish in the same turn, and sending the first ack alone would split each burst
// into a call of one and a call of the rest (7-9% fewer jobs/s through the worker, measured).
// The acks of handlers that finish while a call is in flight go out together as the next call
// when it returns — or sooner, once `maxBatch` of them wait (a full call) or the oldest has
// waited `ackBatchTuning.delayMs` (10 ms: a call retrying through an outage, or stuck on a
// frozen replica, does not hold the others back). A call's results stay under 1 MiB. Each ack
// gets the outcome its single Ack would have had: undefined when acked, a
// FailedPreconditionError with the result's reason (JOB_NOT_LEASED, JOB_CANCELLED) when not,
// the call's error when it failed past the lease retry budget (retried on UNAVAILABLE, as Ack
// is); a call refused as a whole (a result over Baton's limit, more acks than Baton takes, a
// server without AckBatch) is replaced by one Ack per job. A call carries the OpenTelemetry
// context of its first ack.

import { status as Status } from "@grpc/grpc-js";
import { Context, context } from "@opentelemetry/api";

import { BatonError, codeOf, FailedPreconditionError, fromGrpcError } from "./errors.js";
import { AckBatchRequest, AckBatchResponse, AckRequest, AckResult, JobQueueServiceClient } from "./gen/baton/v1/queue.js";
import { LEASE_RETRY_BUDGET_MS, leaseRetryBackoff, retryUnavailable } from "./retry.js";
import { unary } from "./unary.js";

/** Acks per AckBatch call at most, unless `ackBatchSize` says otherwise. */
export const DEFAULT_ACK_BATCH_SIZE = 256;

/** What the tests change: the delay, and a hook that hears every ack queued. */
export const ackBatchTuning: { delayMs: number; onQueued: (() => void) | undefined } = {
  delayMs: 10,
  onQueued: undefined,
};

const BATCH_BYTES = 1 << 20; // results per call, far below Baton's 4 MiB message limit

// Errors that say nothing about the acks one by one: each is then sent alone.
const REFUSED_AS_A_WHOLE = new Set<Status | undefined>([
  Status.INVALID_ARGUMENT,
  Status.RESOURCE_EXHAUSTED,
  Status.OUT_OF_RANGE,
  Status.UNIMPLEMENTED,
]);

const REFUSALS: Record<string, string> = {
  JOB_NOT_LEASED: "this lease is not the job's current one: it expired, was re-delivered, or the job is gone",
  JOB_CANCELLED: "the job was cancelled; this lease can no longer settle it",
};

interface PendingAck {
  request: AckRequest;
  /** The job's process span: a call carries its first ack's. */
  ctx: Context;
  queuedAt: number;
  settle: (outcome: unknown) => void;
}

/** What a single Ack would have rejected with for this outcome (undefined: acked). */
function refusal(result: AckResult): unknown {
  if (result.acked) {
    return undefined;
  }
  return new FailedPreconditionError(REFUSALS[result.reason] ?? "the ack was not applied", {
    code: Status.FAILED_PRECONDITION,
    reason: result.reason,
  });
}

export class AckBatcher {
  private waiting: PendingAck[] = [];
  private inFlight = 0;
  private timer: NodeJS.Timeout | undefined;
  private dispatchScheduled = false;

  constructor(
    private readonly stub: JobQueueServiceClient,
    private readonly maxBatch: number,
  ) {}

  /**
   * Acks one delivery; resolves with undefined when the job is SUCCEEDED under this lease,
   * else with the error its single Ack would have rejected with.
   */
  ack(request: AckRequest): Promise<unknown> {
    return new Promise((settle) => {
      this.waiting.push({ request, ctx: context.active(), queuedAt: performance.now(), settle });
      ackBatchTuning.onQueued?.();
      if (!this.dispatchScheduled) {
        this.dispatchScheduled = true;
        setImmediate(() => {
          this.dispatchScheduled = false;
          this.dispatch();
        });
      }
    });
  }

  /** Makes the calls due now: every full one, then the rest if none is in flight or the oldest is overdue. */
  private dispatch(): void {
    const now = performance.now();
    while (this.waiting.length > 0) {
      let count = 0;
      let size = 0;
      for (const pending of this.waiting) {
        const weight = pending.request.result.length;
        if (count === this.maxBatch || (count > 0 && size + weight > BATCH_BYTES)) {
          break;
        }
        count++;
        size += weight;
      }
      const full = count === this.maxBatch || count < this.waiting.length;
      const overdue = now - this.waiting[0].queuedAt >= ackBatchTuning.delayMs;
      if (!full && !overdue && this.inFlight > 0) {
        break;
      }
      this.inFlight++;
      void this.send(this.waiting.splice(0, count));
    }
    if (this.waiting.length > 0 && this.timer === undefined) {
      const wait = Math.max(ackBatchTuning.delayMs - (now - this.waiting[0].queuedAt), 0);
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.dispatch();
      }, wait);
      this.timer.unref();
    }
  }

  private async send(batch: PendingAck[]): Promise<void> {
    let outcomes: unknown[];
    try {
      outcomes = await this.call(batch);
    } catch (error) {
      outcomes = batch.map(() => error);
    }
    this.inFlight--;
    this.dispatch(); // the next call need not wait for the answers
    batch.forEach((pending, i) => pending.settle(outcomes[i]));
  }

  private async call(batch: PendingAck[]): Promise<unknown[]> {
    const request = AckBatchRequest.fromPartial({ acks: batch.map((pending) => pending.request) });
    let response: AckBatchResponse;
    try {
      response = await context.with(batch[0].ctx, () =>
        retryUnavailable(
          () => unary(this.stub.ackBatch.bind(this.stub), request, { waitForReady: true }),
          LEASE_RETRY_BUDGET_MS,
          undefined,
          leaseRetryBackoff(),
        ),
      );
    } catch (error) {
      const code = error instanceof BatonError ? error.code : codeOf(error);
      if (!REFUSED_AS_A_WHOLE.has(code)) {
        return batch.map(() => error);
      }
      return Promise.all(batch.map((pending) => this.ackOne(pending)));
    }
    if (response.results.length !== batch.length) {
      const error = fromGrpcError({
        code: Status.INTERNAL,
        details: `AckBatch answered ${response.results.length} results for ${batch.length} acks`,
      });
      return batch.map(() => error);
    }
    return response.results.map(refusal);
  }

  private async ackOne(pending: PendingAck): Promise<unknown> {
    try {
      await context.with(pending.ctx, () =>
        retryUnavailable(
          () => unary(this.stub.ack.bind(this.stub), pending.request, { waitForReady: true }),
          LEASE_RETRY_BUDGET_MS,
          undefined,
          leaseRetryBackoff(),
        ),
      );
    } catch (error) {
      return error;
    }
    return undefined;
  }
}
