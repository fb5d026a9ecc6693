// Fenced locks: `await client.withLock(name, { ttlMs }, async (lease) => …)`; and Lease, which
// keeps a lock's lease and a leadership's (election.ts) alike, since both have this contract.
//
// Liveness proof. A held lease is kept by a bidirectional KeepAlive stream: this process sends
// a heartbeat every ttl/3 and Baton renews the lease on heartbeats — never on its own — and
// answers every heartbeat, in order, saying whether it renewed (`renewed`; false when the
// heartbeat came within ttl/10 of the previous renewal or Redis was unreachable). A renewal
// happens after its heartbeat was sent and lasts ttl, so the lease is certainly held until
// (the send time of the last heartbeat answered `renewed`) + ttl: `heldUntil`, on this
// process's monotonic clock. Answers are matched to sends in FIFO order, per stream; an
// answer `renewed: false` proves nothing and leaves `heldUntil` where it was. A local timer,
// independent of the stream, reports the lease lost at heldUntil - margin, margin =
// max(ttl/10, 50 ms): a stalled stream, a partition or a frozen process that resumes late all
// meet it (Node's timers run on the same monotonic clock, so an overdue one fires as soon as
// the process runs again). Baton's own expiry comes no sooner than heldUntil, so a holder that
// was told nothing stops a margin before anybody else can be granted the lock.
//
// Streams. When a stream ends UNAVAILABLE (a replica draining, a broken connection), OK, or
// with another transient status, a new one is opened at once — backoff 50 ms growing to
// 250 ms — with the same lease id, on whichever replica the balancer picks, until heldUntil -
// margin passes. FAILED_PRECONDITION (LEASE_NOT_HELD) or any other error no retry can fix is
// a loss. Cancelling a stream releases the lease at once, so the helper cancels only when it
// gives the lease up; a half-close would only stop the heartbeats, and the helper never needs
// one.
//
// A lock's whole life is one stream: its first message acquires (`acquire`), and `release`
// on it releases — no Acquire or Release call, unless that stream is down at release time.

import { randomUUID } from "node:crypto";

import { ClientDuplexStream, Metadata, StatusObject, status as Status } from "@grpc/grpc-js";

import { Backoff, durationToMs, monotonicMs, msToDuration, sleep } from "./connection.js";
import { BatonError, codeOf, fromGrpcError, LeaseLostError, LockNotAcquiredError } from "./errors.js";
import {
  AcquireRequest,
  KeepAliveRequest,
  KeepAliveResponse,
  Lease as LeaseMessage,
  LockServiceClient,
  ReleaseRequest,
} from "./gen/baton/v1/lock.js";
import { LEASE_RETRY_BUDGET_MS, leaseRetryBackoff, retryUnavailable } from "./retry.js";
import { unary, UnaryOptions } from "./unary.js";

/** The longest wait_timeout Baton accepts; longer waits are made of several Acquires. */
const MAX_SERVER_WAIT_MS = 3_600_000;
/** The smallest safety margin between the loss report and heldUntil. */
const MIN_LOSS_MARGIN_MS = 50;

// Stream endings worth resuming from; FAILED_PRECONDITION and every other status is a loss.
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

export interface LockOptions {
  /** How long each grant and renewal lasts: 100 ms ..= 1 h. Heartbeats go every ttl/3. */
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
  /** Called each time a heartbeat answered `renewed` moves `lease.heldUntil` later. */
  onRenew?: (lease: Lease) => void;
}

/**
 * The RPCs that keep and end one kind of lease: LockService's for a lock, ElectionService's
 * for a leadership. Their KeepAlive messages have the same fields, so the lock's types stand
 * for both (the compiler checks that they still match where a keeper is built).
 */
export interface LeaseKeeper {
  /** Opens a KeepAlive stream. */
  keepAlive(metadata: Metadata): KeepAliveCall;
  /**
   * One attempt to end the lease at once (Release, Resign): true when it ended a held lease,
   * false when the lease had ended already. Rejects with the raw gRPC error.
   */
  giveUp(name: string, leaseId: string, options: UnaryOptions): Promise<boolean>;
  /** Whether a `release` message on the stream ends the lease (LockService's streams). */
  releasesOnStream: boolean;
}

function lockKeeper(stub: LockServiceClient): LeaseKeeper {
  return {
    keepAlive: (metadata) => stub.keepAlive(metadata),
    giveUp: async (name, leaseId, options) =>
      (await unary(stub.release.bind(stub), ReleaseRequest.fromPartial({ name, leaseId }), options)).released,
    releasesOnStream: true,
  };
}

/**
 * Runs `make` with no stack captured for the Errors it creates. For the Errors of a lock's
 * everyday path, which nobody debugs: a lease's normal end (`signal.reason` after release),
 * and the one grpc-js makes for every call it opens, to merge the caller's stack into a
 * failure's. Capturing those two stacks was 8% of the Node helper's CPU per lock cycle.
 */
function withoutStacks<T>(make: () => T): T {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    return make();
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/** How long `release` waits for the stream's answer before calling Release instead. */
const STREAM_RELEASE_WAIT_MS = 2_000;

/** What a lease reads on either service's KeepAlive stream (an election's has no `released`). */
type LeaseKeepAliveResponse = Pick<KeepAliveResponse, "lease" | "renewed"> & Partial<Pick<KeepAliveResponse, "released">>;

type KeepAliveCall = ClientDuplexStream<KeepAliveRequest, LeaseKeepAliveResponse>;

/** One KeepAlive stream of a lease, with its unanswered messages. */
interface KeepAliveStream {
  call: KeepAliveCall;
  /** The messages not answered yet, oldest first: monotonic send time, and whether a release. */
  unanswered: { sentAt: number; release: boolean }[];
  /** Told the answer to a release sent on the stream, or undefined when it ended unanswered. */
  onReleased?: (released: boolean | undefined) => void;
}

/**
 * A held lease — a lock's, or a leadership's (`Leadership.lease`) —, kept alive by heartbeats
 * until released (for a leadership: resigned) or lost.
 */
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
  /** How long before heldUntil the loss is reported: max(ttl/10, 50 ms). */
  readonly lossMarginMs: number;
  /**
   * Until when the lease is certainly held, in `performance.now()` milliseconds: the send
   * time of the last heartbeat answered `renewed` (or of the Acquire) + ttl. `lossAt` is the instant the
   * lease is reported lost.
   */
  heldUntil: number;
  /** Expiry of the last confirmed renewal, by the Redis server's clock; informative only. */
  expiresAt: Date | undefined;
  /** Set once the lease is lost; `cause` holds the BatonError that revealed it, if any. */
  loss: LeaseLostError | undefined;

  /** Why the lease ended, once it has; `signal`'s reason. */
  private endReason: Error | undefined;
  /**
   * Made only when `signal` is read: most leases are released without anyone watching, and an
   * AbortController per lease was 3% of a lock cycle's CPU in the Node helper.
   */
  private ended: AbortController | undefined;
  /** The open stream, if any: a new one is opened only once the previous one has ended. */
  private current: KeepAliveStream | undefined;
  private readonly reopenBackoff = new Backoff(50, 250);
  private heartbeat: NodeJS.Timeout | undefined;
  private reopenTimer: NodeJS.Timeout | undefined;
  private lossTimer: NodeJS.Timeout | undefined;
  private unlocking = false;
  private releasing: Promise<void> | undefined;
  private answeredOnce: () => void = () => undefined;
  /**
   * Resolves once the lease is proven held a margin from now — at once when the Acquire was
   * answered well within the ttl, else on the first KeepAlive renewal; rejects on loss. For
   * `acquire`, which hands the lease out only then.
   * @internal
   */
  readonly ready: Promise<void>;

  /**
   * `grantSentAt`: the monotonic send time of the earliest Acquire that may have made this
   * grant; the lease was granted after it. `grantedOn`: the KeepAlive stream that acquired
   * it, if one did, which goes on keeping it.
   */
  constructor(
    private readonly keeper: LeaseKeeper,
    granted: LeaseMessage,
    grantSentAt: number,
    private readonly onRenew: ((lease: Lease) => void) | undefined,
    grantedOn?: KeepAliveCall,
  ) {
    this.name = granted.name;
    this.leaseId = granted.leaseId;
    this.fencingToken = granted.fencingToken;
    this.ttlMs = durationToMs(granted.ttl);
    this.lossMarginMs = Math.max(this.ttlMs / 10, MIN_LOSS_MARGIN_MS);
    this.expiresAt = granted.expiresAt;
    const dated = grantSentAt + this.ttlMs - this.lossMarginMs - monotonicMs() >= this.ttlMs / 3;
    if (dated) {
      // The grant leaves a third of the ttl before the loss: time for KeepAlive to answer.
      this.heldUntil = grantSentAt + this.ttlMs;
      this.ready = Promise.resolve();
    } else {
      // After a long wait the grant alone proves too little (it may have been made just after
      // the Acquire was sent); the first KeepAlive answer proves the lease — a lease id is
      // never renewed once expired, so it was held all along. Until then it has one ttl.
      this.heldUntil = monotonicMs() + this.ttlMs;
      this.ready = new Promise((answered, lost) => {
        this.answeredOnce = answered;
        this.signal.addEventListener("abort", () => lost(this.loss ?? this.endReason), { once: true });
      });
    }
    this.armLossTimer();
    if (grantedOn) {
      // Baton renews on the first heartbeat after a grant however soon it comes, which dates
      // a lease the grant could not.
      this.follow(grantedOn, dated ? undefined : KeepAliveRequest.create());
    } else {
      this.open();
    }
  }

  /** Aborted when the lease ends: with a LeaseLostError on loss, or on release. */
  get signal(): AbortSignal {
    this.ended ??= new AbortController();
    if (this.endReason && !this.ended.signal.aborted) {
      this.ended.abort(this.endReason);
    }
    return this.ended.signal;
  }

  get lost(): boolean {
    return this.loss !== undefined;
  }

  /** The `performance.now()` instant at which the lease is reported lost, unless renewed. */
  get lossAt(): number {
    return this.heldUntil - this.lossMarginMs;
  }

  private provenAt(heldUntil: number): boolean {
    return monotonicMs() < heldUntil - this.lossMarginMs;
  }

  /**
   * Releases the lease (for a leadership: resigns) so a waiter gets it at once. Rejects with
   * LeaseLostError if the lease was lost while held; calling it again returns the same promise.
   */
  release(): Promise<void> {
    this.releasing ??= this.releaseOnce();
    return this.releasing;
  }

  private async releaseOnce(): Promise<void> {
    // A loss whose timer has not run yet (the process was busy) still counts.
    if (!this.provenAt(this.heldUntil)) {
      this.loseByExpiry();
    }
    this.unlocking = true;
    this.stopHeartbeats();
    // Release first, then cancel: a cancel alone releases too, but then Release's (Resign's)
    // answer could not tell a lease we gave up from one that was gone already.
    const onStream = await this.releaseOnStream();
    const [released, error] = onStream.answered
      ? [onStream.released, undefined]
      : await this.releaseWithRetries(onStream.sent);
    // Baton ends a stream itself once it has answered its release.
    this.end(
      withoutStacks(() => new Error(`lease on ${JSON.stringify(this.name)} released`)),
      onStream.answered,
    );
    if (this.loss) {
      throw this.loss;
    }
    if (error) {
      throw error;
    }
    if (!released) {
      throw new LeaseLostError(`lease on ${JSON.stringify(this.name)} was already gone when released`);
    }
  }

  /**
   * Sends `release` on the open stream and waits for its answer. `sent`: whether a release
   * may have gone out; `answered`: whether Baton said if it released.
   */
  private releaseOnStream(): Promise<{ answered: boolean; released: boolean; sent: boolean }> {
    const stream = this.current;
    if (!stream || !this.keeper.releasesOnStream) {
      return Promise.resolve({ answered: false, released: false, sent: false });
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => stream.onReleased?.(undefined), STREAM_RELEASE_WAIT_MS);
      stream.onReleased = (released) => {
        clearTimeout(timer);
        stream.onReleased = undefined;
        resolve({ answered: released !== undefined, released: released ?? false, sent: true });
      };
      stream.unanswered.push({ sentAt: monotonicMs(), release: true });
      stream.call.write(KeepAliveRequest.fromPartial({ release: true }));
    });
  }

  /**
   * Release within the lease retry budget. After an attempt that failed (or a release on the
   * stream that went unanswered), `released: false` is what a repeat of an applied Release
   * answers, so it counts as released.
   */
  private async releaseWithRetries(alreadyTried: boolean): Promise<[boolean, unknown]> {
    let retried = alreadyTried;
    try {
      const released = await retryUnavailable(
        () => this.keeper.giveUp(this.name, this.leaseId, { waitForReady: true }),
        LEASE_RETRY_BUDGET_MS,
        undefined,
        leaseRetryBackoff(),
        () => (retried = true),
      );
      return [released || retried, undefined];
    } catch (error) {
      return [false, error];
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
    this.lose(
      new LeaseLostError(
        `no heartbeat of ${JSON.stringify(this.name)} renewed in time: the lease is not proven held past ` +
          `${this.lossMarginMs} ms before its ttl (${this.ttlMs} ms) runs out`,
      ),
    );
  }

  /**
   * Gives the lease up: the stream cancelled (Baton releases on cancel), every timer cleared.
   * `serverEnds`: Baton is ending the stream itself, so it is only half-closed. Cancelling it
   * would end it the same, but grpc-js builds a CANCELLED error for that, with the caller's
   * stack trace merged in: 5% of the Node helper's CPU in a lock-cycle profile.
   */
  private end(reason: Error, serverEnds = false): void {
    this.stopHeartbeats();
    clearTimeout(this.lossTimer);
    if (!this.endReason) {
      this.endReason = reason;
      this.ended?.abort(reason);
    }
    if (serverEnds) {
      this.current?.call.end();
    } else {
      this.current?.call.cancel();
    }
    this.current = undefined;
  }

  private stopHeartbeats(): void {
    clearInterval(this.heartbeat);
    clearTimeout(this.reopenTimer);
    this.heartbeat = undefined;
    this.reopenTimer = undefined;
  }

  /** Reports the loss at heldUntil - margin; re-armed whenever heldUntil moves. */
  private armLossTimer(): void {
    clearTimeout(this.lossTimer);
    const remaining = this.lossAt - monotonicMs();
    if (remaining <= 0) {
      this.loseByExpiry();
      return;
    }
    // Re-checked when it fires, since a timer may run a fraction of a millisecond early.
    this.lossTimer = setTimeout(() => this.armLossTimer(), remaining);
  }

  /** Opens a KeepAlive stream: the first message names the lease and renews it at once. */
  private open(): void {
    this.reopenTimer = undefined;
    if (this.endReason || this.unlocking) {
      return;
    }
    let call: KeepAliveCall;
    try {
      // Wait-for-ready: while the channel reconnects the stream starts as soon as a replica
      // is up; the loss timer bounds the wait.
      call = withoutStacks(() => this.keeper.keepAlive(new Metadata({ waitForReady: true })));
    } catch {
      // The client was closed while the lease was held; the loss timer ends it.
      return;
    }
    const ttl = msToDuration(this.ttlMs);
    this.follow(call, KeepAliveRequest.fromPartial({ name: this.name, leaseId: this.leaseId, ttl }));
  }

  /** Makes `call` the lease's stream: sends `first`, if any, then a heartbeat every ttl/3. */
  private follow(call: KeepAliveCall, first: KeepAliveRequest | undefined): void {
    const stream: KeepAliveStream = { call, unanswered: [] };
    this.current = stream;
    call.on("data", (response: LeaseKeepAliveResponse) => this.answered(stream, response));
    call.on("error", () => undefined); // the status event below carries the same status
    call.on("status", (status: StatusObject) => this.streamEnded(stream, status));
    if (first) {
      this.send(stream, first);
    }
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => this.beat(), this.ttlMs / 3);
  }

  private send(stream: KeepAliveStream, request: KeepAliveRequest): void {
    stream.unanswered.push({ sentAt: monotonicMs(), release: false });
    stream.call.write(request);
  }

  private beat(): void {
    // Also while earlier heartbeats are unanswered (Redis slow, a stalled replica): every one
    // is answered in order, so the FIFO match stays in step, and the loss timer bounds the
    // wait.
    if (this.current) {
      this.send(this.current, KeepAliveRequest.create());
    }
  }

  private answered(stream: KeepAliveStream, response: LeaseKeepAliveResponse): void {
    const sent = stream.unanswered.shift();
    if (sent?.release) {
      stream.onReleased?.(response.released ?? false);
      return;
    }
    if (sent === undefined || this.endReason) {
      return;
    }
    const { sentAt } = sent;
    this.reopenBackoff.reset();
    if (!response.renewed) {
      // Too soon after the previous renewal, or Redis unreachable: proves nothing.
      return;
    }
    this.expiresAt = response.lease?.expiresAt ?? this.expiresAt;
    if (sentAt + this.ttlMs > this.heldUntil) {
      this.heldUntil = sentAt + this.ttlMs;
      this.armLossTimer();
      if (!this.loss) {
        this.answeredOnce();
        // Outside the stream's event, so a throwing callback cannot break the stream.
        queueMicrotask(() => this.onRenew?.(this));
      }
    }
  }

  private streamEnded(stream: KeepAliveStream, status: StatusObject): void {
    stream.onReleased?.(undefined);
    if (this.endReason || this.unlocking || stream !== this.current) {
      return;
    }
    if (!RESUMABLE.has(status.code)) {
      // LEASE_NOT_HELD, or an error no retry can fix.
      const cause = fromGrpcError(status);
      this.lose(new LeaseLostError(`lease on ${JSON.stringify(this.name)} lost: ${String(cause)}`, { cause }));
      return;
    }
    this.current = undefined;
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
    const mapped = fromGrpcError(status);
    const delay = this.reopenBackoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined);
    this.reopenTimer = setTimeout(() => this.open(), delay);
  }
}

/**
 * Acquires `name` and keeps it until released. Waits, woken by releases, until acquired,
 * `waitMs` passes, or `signal` aborts. Acquires on the KeepAlive stream that then keeps the
 * lease; sends one random request_id and retries with it on UNAVAILABLE, so a grant whose
 * answer was lost is handed back rather than orphaned.
 */
export async function acquire(
  stub: LockServiceClient,
  name: string,
  options: LockOptions,
  defaultTimeoutMs: number,
): Promise<Lease> {
  const { signal } = options;
  const giveUpAt = options.waitMs === undefined ? undefined : Date.now() + options.waitMs;
  // randomUUID draws from a cached entropy pool; randomBytes(16) was 2% of a lock cycle's CPU.
  const requestId = randomUUID();
  const backoff = new Backoff();
  let failingSince: number | undefined;
  // The send time of the earliest attempt whose grant a later attempt may be handed back.
  let grantSentAt: number | undefined;
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
    grantSentAt ??= monotonicMs();
    let answer;
    try {
      answer = await acquireOnStream(stub, request, deadline, signal);
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
    const { call, response } = answer;
    if (response.acquired && response.lease) {
      return keepGrantedLease(lockKeeper(stub), response.lease, grantSentAt, options.onRenew, call);
    }
    // A definite refusal: no earlier attempt holds a grant for this request_id any more.
    grantSentAt = undefined;
    if (waitMs < MAX_SERVER_WAIT_MS) {
      throw new LockNotAcquiredError(name, response.holder?.owner ?? "");
    }
  }
}

/**
 * Starts keeping a granted lease; resolves once it is proven held (see `Lease.ready`), or
 * gives it up and rejects. `grantSentAt` as for the Lease constructor.
 */
export async function keepGrantedLease(
  keeper: LeaseKeeper,
  granted: LeaseMessage,
  grantSentAt: number,
  onRenew?: (lease: Lease) => void,
  grantedOn?: KeepAliveCall,
): Promise<Lease> {
  const lease = new Lease(keeper, granted, grantSentAt, onRenew, grantedOn);
  try {
    await lease.ready;
  } catch (error) {
    await lease.release().catch(() => undefined);
    throw error;
  }
  return lease;
}

/**
 * Opens a KeepAlive stream whose first message acquires with `request`, and resolves with its
 * first answer; the stream stays open when that is a grant. Until then `deadline` (epoch ms:
 * the wait plus the default timeout, so a replica that dies mid-wait is noticed) and `signal`
 * end it. Safe to retry, and so wait-for-ready: the request_id makes a repeat return the grant.
 */
function acquireOnStream(
  stub: LockServiceClient,
  request: AcquireRequest,
  deadline: number,
  signal: AbortSignal | undefined,
): Promise<{ call: ClientDuplexStream<KeepAliveRequest, KeepAliveResponse>; response: KeepAliveResponse }> {
  return new Promise((resolve, reject) => {
    const call = withoutStacks(() => stub.keepAlive(new Metadata({ waitForReady: true })));
    const timer =
      deadline === Infinity
        ? undefined
        : setTimeout(
            () => settle({ code: Status.DEADLINE_EXCEEDED, details: "no answer within the wait", metadata: new Metadata() }),
            Math.max(deadline - Date.now(), 0),
          );
    const aborted = (): void => settle(signal?.reason);
    const answered = (response: KeepAliveResponse): void => settle(undefined, response);
    const ended = (status: StatusObject): void =>
      settle(status.code === Status.OK ? { ...status, code: Status.UNAVAILABLE, details: "ended unanswered" } : status);
    function settle(error: unknown, response?: KeepAliveResponse): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", aborted);
      call.off("data", answered);
      call.off("status", ended);
      if (response?.acquired) {
        resolve({ call, response });
        return;
      }
      call.cancel(); // a grant made meanwhile is released at once
      if (response) {
        resolve({ call, response });
      } else {
        reject(error);
      }
    }
    signal?.addEventListener("abort", aborted, { once: true });
    call.on("data", answered);
    call.on("error", () => undefined); // the status event carries the same status
    call.on("status", ended);
    call.write(KeepAliveRequest.fromPartial({ acquire: request }));
  });
}
