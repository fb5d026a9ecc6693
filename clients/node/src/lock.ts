// Fenced locks: `await client.withLock(name, { ttlMs }, async (lease) => …)`.
//
// A held lease is kept alive by a KeepAlive stream. When the stream ends with UNAVAILABLE (a
// replica shutting down, a broken connection) it is resumed with the same lease id on
// whichever replica the balancer picks next; the lease counts as lost only when Baton answers
// LEASE_NOT_HELD, an error no retry can fix occurs, or no renewal was confirmed for a whole
// ttl — the server renews before it answers, so by then the lease has certainly expired.

import { randomBytes } from "node:crypto";

import { ClientReadableStream, status as Status } from "@grpc/grpc-js";

import { Backoff, durationToMs, msToDuration, sleep } from "./connection.js";
import { BatonError, codeOf, fromGrpcError, LeaseLostError, LockNotAcquiredError } from "./errors.js";
import {
  AcquireRequest,
  KeepAliveRequest,
  KeepAliveResponse,
  Lease as LeaseMessage,
  LockServiceClient,
  ReleaseRequest,
} from "./gen/baton/v1/lock.js";
import { unary } from "./unary.js";

/** The longest wait_timeout Baton accepts; longer waits are made of several Acquires. */
const MAX_SERVER_WAIT_MS = 3_600_000;

// Stream endings worth resuming from; any other status but FAILED_PRECONDITION is final too.
const RESUMABLE = new Set<Status>([
  Status.UNAVAILABLE,
  Status.UNKNOWN,
  Status.INTERNAL,
  Status.RESOURCE_EXHAUSTED,
  Status.DEADLINE_EXCEEDED,
  Status.CANCELLED,
  Status.ABORTED,
]);

export interface LockOptions {
  /** How long each grant and renewal lasts: 100 ms ..= 1 h. */
  ttlMs: number;
  /**
   * Give up with LockNotAcquiredError when still held after this long; 0 tries once.
   * Default: wait until acquired (or `signal` aborts).
   */
  waitMs?: number;
  /** Names the caller (host, pod, task) to others who find the lock held. */
  owner?: string;
  /** N makes the lock a semaphore with N concurrent holders. */
  permits?: number;
  /** Aborts the acquisition. */
  signal?: AbortSignal;
}

/** A held lock, kept alive until released or lost. */
export class Lease {
  readonly name: string;
  /** Proves holdership; treat it as a secret. */
  readonly leaseId: string;
  /**
   * Greater than every token granted before for this name: pass it to the protected
   * resource, which must refuse writes with a lower token than it has seen.
   */
  readonly fencingToken: bigint;
  readonly ttlMs: number;
  /** Expiry of the last confirmed renewal, by the Redis server's clock. */
  expiresAt: Date | undefined;
  /** Set once the lease is lost; `cause` holds the BatonError that revealed it, if any. */
  loss: LeaseLostError | undefined;

  private readonly ended = new AbortController();
  private readonly keeper: Promise<void>;
  private call: ClientReadableStream<KeepAliveResponse> | undefined;
  private lossTimer: NodeJS.Timeout;
  private unlocking = false;
  private releasing: Promise<void> | undefined;

  constructor(
    private readonly stub: LockServiceClient,
    granted: LeaseMessage,
    private readonly releaseTimeoutMs: number,
  ) {
    this.name = granted.name;
    this.leaseId = granted.leaseId;
    this.fencingToken = granted.fencingToken;
    this.ttlMs = durationToMs(granted.ttl);
    this.expiresAt = granted.expiresAt;
    this.lossTimer = setTimeout(() => this.loseByExpiry(), this.ttlMs);
    this.keeper = this.keepAlive();
  }

  /** Aborted when the lease ends: with a LeaseLostError on loss, or on release. */
  get signal(): AbortSignal {
    return this.ended.signal;
  }

  get lost(): boolean {
    return this.loss !== undefined;
  }

  /**
   * Releases the lease so a waiter gets it at once. Rejects with LeaseLostError if the lease
   * was lost while held; calling it again returns the same promise.
   */
  release(): Promise<void> {
    this.releasing ??= this.releaseOnce();
    return this.releasing;
  }

  private async releaseOnce(): Promise<void> {
    this.unlocking = true;
    const [released, error] = await this.releaseWithRetries();
    this.end(new Error(`lease on ${JSON.stringify(this.name)} released`));
    await this.keeper;
    if (this.loss) {
      throw this.loss;
    }
    if (error) {
      throw error;
    }
    if (!released) {
      throw new LeaseLostError(`lock ${JSON.stringify(this.name)} was already gone when released`);
    }
  }

  // Release is safe to retry on UNAVAILABLE.
  private async releaseWithRetries(): Promise<[boolean, unknown]> {
    const giveUpAt = Date.now() + this.releaseTimeoutMs;
    const backoff = new Backoff();
    const request = ReleaseRequest.fromPartial({ name: this.name, leaseId: this.leaseId });
    for (;;) {
      try {
        return [(await unary(this.stub.release.bind(this.stub), request)).released, undefined];
      } catch (error) {
        const mapped = fromGrpcError(error);
        const delay = backoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined);
        if (codeOf(error) !== Status.UNAVAILABLE || Date.now() + delay > giveUpAt) {
          return [false, mapped];
        }
        await sleep(delay);
      }
    }
  }

  private lose(loss: LeaseLostError): void {
    if (this.unlocking || this.loss) {
      return;
    }
    this.loss = loss;
    this.end(loss);
  }

  private loseByExpiry(): void {
    this.lose(new LeaseLostError(`no renewal of ${JSON.stringify(this.name)} confirmed within the ttl (${this.ttlMs} ms)`));
  }

  private end(reason: Error): void {
    clearTimeout(this.lossTimer);
    if (!this.ended.signal.aborted) {
      this.ended.abort(reason);
    }
    this.call?.cancel();
  }

  private async keepAlive(): Promise<void> {
    const backoff = new Backoff();
    while (!this.ended.signal.aborted) {
      const error = await this.followKeepAlive(backoff);
      if (this.ended.signal.aborted) {
        return;
      }
      const code = codeOf(error);
      if (code !== undefined && !RESUMABLE.has(code)) {
        const cause = fromGrpcError(error);
        this.lose(new LeaseLostError(`lease on ${JSON.stringify(this.name)} lost: ${String(cause)}`, { cause }));
        return;
      }
      const mapped = fromGrpcError(error);
      await sleep(backoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined), this.ended.signal);
    }
  }

  /** Reads one KeepAlive stream until it ends; resolves with the error that ended it. */
  private followKeepAlive(backoff: Backoff): Promise<unknown> {
    return new Promise((resolve) => {
      const request = KeepAliveRequest.fromPartial({
        name: this.name,
        leaseId: this.leaseId,
        ttl: msToDuration(this.ttlMs),
      });
      let call: ClientReadableStream<KeepAliveResponse>;
      try {
        call = this.stub.keepAlive(request);
      } catch (error) {
        // The client was closed while the lease was held; the loss timer ends it.
        resolve(error);
        return;
      }
      this.call = call;
      call.on("data", (response: KeepAliveResponse) => {
        this.renewed(response.lease);
        backoff.reset();
      });
      call.on("error", resolve);
      call.on("end", () => resolve(undefined));
    });
  }

  private renewed(lease: LeaseMessage | undefined): void {
    this.expiresAt = lease?.expiresAt;
    clearTimeout(this.lossTimer);
    this.lossTimer = setTimeout(() => this.loseByExpiry(), this.ttlMs);
  }
}

/**
 * Acquires `name` and keeps it until released. Waits, woken by releases, until acquired,
 * `waitMs` passes, or `signal` aborts. Sends one random request_id and retries Acquire with it
 * on UNAVAILABLE, so a grant whose answer was lost is handed back rather than orphaned.
 */
export async function acquire(
  stub: LockServiceClient,
  name: string,
  options: LockOptions,
  defaultTimeoutMs: number,
): Promise<Lease> {
  const { signal } = options;
  const giveUpAt = options.waitMs === undefined ? undefined : Date.now() + options.waitMs;
  const requestId = randomBytes(16).toString("hex");
  const backoff = new Backoff();
  let failingSince: number | undefined;
  for (;;) {
    signal?.throwIfAborted();
    const waitMs = giveUpAt === undefined ? MAX_SERVER_WAIT_MS : Math.max(giveUpAt - Date.now(), 0);
    const request = AcquireRequest.fromPartial({
      name,
      ttl: msToDuration(options.ttlMs),
      waitTimeout: msToDuration(waitMs),
      owner: options.owner ?? "",
      permits: options.permits ?? 0,
      requestId,
    });
    // The wait plus the default timeout, so a replica that dies mid-wait is noticed.
    const deadline = defaultTimeoutMs > 0 ? Date.now() + waitMs + defaultTimeoutMs : Infinity;
    let response;
    try {
      response = await unary(stub.acquire.bind(stub), request, { deadline }, signal);
    } catch (error) {
      signal?.throwIfAborted();
      const mapped = fromGrpcError(error);
      const code = codeOf(error);
      if (code !== Status.UNAVAILABLE && code !== Status.DEADLINE_EXCEEDED) {
        throw mapped;
      }
      failingSince ??= Date.now();
      const budgetEnd = giveUpAt ?? (defaultTimeoutMs > 0 ? failingSince + defaultTimeoutMs : Infinity);
      const delay = backoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined);
      if (Date.now() + delay > budgetEnd) {
        throw mapped;
      }
      await sleep(delay, signal);
      continue;
    }
    if (response.acquired && response.lease) {
      return new Lease(stub, response.lease, defaultTimeoutMs || 10_000);
    }
    if (waitMs < MAX_SERVER_WAIT_MS) {
      throw new LockNotAcquiredError(name, response.holder?.owner ?? "");
    }
  }
}
