// Leader election: `await client.runAsLeader(name, async (leadership) => …)`, `leader(name)`
// and `observe(name)`, on baton.v1.ElectionService.
//
// A leadership is a lease with the lock's liveness contract (see lock.ts): the same Lease keeps
// it with ElectionService.KeepAlive heartbeats, proves it held until heldUntil, and reports it
// lost a margin before that. The term is the lease's fencing token.
//
// Campaign waits without polling: wait_timeout 0 makes Baton wait until the caller is elected
// (or an hour passes, after which the helper campaigns again). It is retried on UNAVAILABLE
// with one random request_id, so a leadership whose answer was lost is handed back rather
// than left to expire while every other candidate waits.

import { randomUUID } from "node:crypto";

import { Metadata, status as Status } from "@grpc/grpc-js";

import { Backoff, monotonicMs, msToDuration, sleep } from "./connection.js";
import { BatonError, codeOf, fromGrpcError } from "./errors.js";
import {
  CampaignRequest,
  ElectionServiceClient,
  Leader as LeaderMessage,
  LeaderRequest,
  ObserveRequest,
  ObserveResponse,
  ObserveResponse_Kind,
  ProclaimRequest,
  ResignRequest,
} from "./gen/baton/v1/election.js";
import { keepGrantedLease, Lease, LeaseKeeper } from "./lock.js";
import { bytesOf, retryUnavailable } from "./retry.js";
import { unary } from "./unary.js";

/** A leadership's ttl when `ttlMs` is not given. */
export const DEFAULT_LEADERSHIP_TTL_MS = 10_000;
/** The longest Baton lets a Campaign wait; a longer wait is made of several Campaigns. */
const MAX_SERVER_WAIT_MS = 3_600_000;

export interface LeadershipOptions {
  /** The value to lead with (an address, an id), at most 4 KiB; observers see it. */
  value?: Uint8Array | string;
  /**
   * How long each grant and renewal lasts: 100 ms ..= 1 h; heartbeats go every ttl/3. A
   * leader that freezes keeps the others waiting this long. Default DEFAULT_LEADERSHIP_TTL_MS.
   */
  ttlMs?: number;
  /** Names the candidate (host, pod) to `leader()` and observers. */
  owner?: string;
  /**
   * Aborts the campaign; once elected, aborts `leadership.signal` with its reason, so that
   * the leader's work can stop, after which the helper resigns.
   */
  signal?: AbortSignal;
}

/** An election's current leadership, as anyone may see it. */
export interface Leader {
  name: string;
  /** As given to the campaign or last proclaimed. */
  value: Buffer;
  /** Greater than every earlier term of this election. */
  term: bigint;
  /** When this term began, by the Redis server's clock. */
  since: Date | undefined;
  owner: string;
  /** When the leadership expires unless renewed, by the Redis server's clock. */
  expiresAt: Date | undefined;
}

/** What an ElectionEvent reports; see ObserveResponse.Kind in proto/baton/v1/election.proto. */
export type ElectionEventKind =
  /** The state when the stream (re)opens, or after the observer fell behind. */
  | "current"
  /** A new leader, with a term above every earlier one. */
  | "elected"
  /** The leader proclaimed a new value; the term is unchanged. */
  | "proclaimed"
  /** The leader resigned, or its process went away; nobody leads. */
  | "resigned"
  /** The leader's lease ran out without renewal; nobody leads. */
  | "expired";

const EVENT_KINDS: Partial<Record<ObserveResponse_Kind, ElectionEventKind>> = {
  [ObserveResponse_Kind.KIND_CURRENT]: "current",
  [ObserveResponse_Kind.KIND_ELECTED]: "elected",
  [ObserveResponse_Kind.KIND_PROCLAIMED]: "proclaimed",
  [ObserveResponse_Kind.KIND_RESIGNED]: "resigned",
  [ObserveResponse_Kind.KIND_EXPIRED]: "expired",
};

/** One change in an election's history, or its current state (kind "current"). */
export interface ElectionEvent {
  kind: ElectionEventKind;
  /**
   * The leadership after the change; for "resigned" and "expired" the one that ended; for
   * "current" undefined when nobody leads.
   */
  leader: Leader | undefined;
  /** When it happened, by the Redis server's clock. */
  at: Date | undefined;
}

function leaderOf(leader: LeaderMessage): Leader {
  return {
    name: leader.name,
    value: leader.value,
    term: leader.term,
    since: leader.since,
    owner: leader.owner,
    expiresAt: leader.expiresAt,
  };
}

function leadershipKeeper(stub: ElectionServiceClient): LeaseKeeper {
  return {
    keepAlive: (metadata) => stub.keepAlive(metadata),
    giveUp: async (name, leaseId, options) =>
      (await unary(stub.resign.bind(stub), ResignRequest.fromPartial({ name, leaseId }), options)).resigned,
    releasesOnStream: false,
  };
}

/** The caller's leadership of one election, handed to the work of runAsLeader. */
export class Leadership {
  readonly name: string;
  /**
   * Greater than every earlier term of this election: pass it to whatever the leader writes
   * to, which must refuse writes with a lower term than it has seen.
   */
  readonly term: bigint;
  /**
   * The leadership's lease, kept alive by KeepAlive: `heldUntil`, `lossAt`, `loss`, and
   * `leaseId`, which proves the leadership (treat it as a secret).
   */
  readonly lease: Lease;
  private readonly ended = new AbortController();

  /** `stop`: the caller's signal, which ends the leadership too. */
  constructor(
    private readonly stub: ElectionServiceClient,
    private readonly defaultTimeoutMs: number,
    lease: Lease,
    stop: AbortSignal | undefined,
  ) {
    this.name = lease.name;
    this.term = lease.fencingToken;
    this.lease = lease;
    const stopped = () => this.ended.abort(stop?.reason);
    const leaseEnded = () => {
      stop?.removeEventListener("abort", stopped);
      this.ended.abort(lease.signal.reason);
    };
    if (lease.signal.aborted) {
      leaseEnded();
    } else if (stop?.aborted) {
      stopped();
    } else {
      stop?.addEventListener("abort", stopped, { once: true });
      lease.signal.addEventListener("abort", leaseEnded, { once: true });
    }
  }

  /**
   * Aborted when the leadership is lost — with a LeaseLostError, a safety margin before
   * another candidate can be elected —, when the caller's `signal` aborts, or on resigning.
   */
  get signal(): AbortSignal {
    return this.ended.signal;
  }

  get lost(): boolean {
    return this.lease.lost;
  }

  /**
   * Replaces the leader's value without giving up leadership; observers see it. Rejects with
   * the LeaseLostError once the leadership is lost, and with FailedPreconditionError
   * (LEASE_NOT_HELD) when Baton finds it lost first. Retried on UNAVAILABLE.
   */
  async proclaim(value: Uint8Array | string, signal?: AbortSignal): Promise<Leader> {
    if (this.lease.loss) {
      throw this.lease.loss;
    }
    const request = ProclaimRequest.fromPartial({ name: this.name, leaseId: this.lease.leaseId, value: bytesOf(value) });
    const response = await retryUnavailable(
      () => unary(this.stub.proclaim.bind(this.stub), request, { waitForReady: true }, signal),
      this.defaultTimeoutMs,
      signal,
    );
    return leaderOf(response.leader!);
  }
}

/** runAsLeader, leader and observe, for BatonClient. */
export class ElectionHelpers {
  constructor(
    private readonly stub: ElectionServiceClient,
    private readonly defaultTimeoutMs: number,
  ) {}

  async runAsLeader<T>(
    name: string,
    lead: (leadership: Leadership) => Promise<T>,
    options: LeadershipOptions = {},
  ): Promise<T> {
    const lease = await this.campaign(name, options);
    if (options.signal?.aborted) {
      await lease.release().catch(() => undefined);
      options.signal.throwIfAborted();
    }
    const leadership = new Leadership(this.stub, this.defaultTimeoutMs, lease, options.signal);
    let result: T;
    try {
      result = await lead(leadership);
    } catch (error) {
      // The work's own failure matters more than a failed resignation.
      await lease.release().catch(() => undefined);
      throw error;
    }
    await lease.release();
    return result;
  }

  /**
   * Campaigns until elected, then resolves with the leadership lease once it is proven held.
   * UNAVAILABLE and DEADLINE_EXCEEDED (a replica that died mid-wait) are retried with the
   * same request_id, for up to the default timeout of consecutive failures.
   */
  private async campaign(name: string, options: LeadershipOptions): Promise<Lease> {
    const { signal } = options;
    const requestId = randomUUID();
    const backoff = new Backoff();
    let failingSince: number | undefined;
    // The send time of the earliest attempt whose leadership a later attempt may be handed back.
    let grantSentAt: number | undefined;
    for (;;) {
      signal?.throwIfAborted();
      const request = CampaignRequest.fromPartial({
        name,
        ttl: msToDuration(options.ttlMs ?? DEFAULT_LEADERSHIP_TTL_MS),
        value: bytesOf(options.value ?? ""),
        owner: options.owner ?? "",
        waitTimeout: msToDuration(0),
        requestId,
      });
      // Baton's longest wait plus the default timeout, so a replica that dies mid-wait is noticed.
      const deadline = this.defaultTimeoutMs > 0 ? Date.now() + MAX_SERVER_WAIT_MS + this.defaultTimeoutMs : Infinity;
      grantSentAt ??= monotonicMs();
      let response;
      try {
        // Safe to retry, and so wait-for-ready: the request_id makes a repeat return the leadership.
        response = await unary(this.stub.campaign.bind(this.stub), request, { deadline, waitForReady: true }, signal);
      } catch (error) {
        signal?.throwIfAborted();
        const mapped = fromGrpcError(error);
        const code = codeOf(error);
        if (code !== Status.UNAVAILABLE && code !== Status.DEADLINE_EXCEEDED) {
          throw mapped;
        }
        failingSince ??= Date.now();
        const delay = backoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined);
        if (this.defaultTimeoutMs > 0 && Date.now() + delay > failingSince + this.defaultTimeoutMs) {
          throw mapped;
        }
        await sleep(delay, signal);
        continue;
      }
      failingSince = undefined;
      backoff.reset();
      if (response.elected && response.lease) {
        return keepGrantedLease(leadershipKeeper(this.stub), response.lease, grantSentAt);
      }
      // Baton's longest wait passed unelected: no earlier attempt holds a leadership for this
      // request_id any more.
      grantSentAt = undefined;
    }
  }

  async leader(name: string, signal?: AbortSignal): Promise<Leader | undefined> {
    const request = LeaderRequest.fromPartial({ name });
    const response = await retryUnavailable(
      () => unary(this.stub.leader.bind(this.stub), request, { waitForReady: true }, signal),
      this.defaultTimeoutMs,
      signal,
    );
    return response.leader && leaderOf(response.leader);
  }

  /**
   * The election's history from now on: its current state, then each change in order. A
   * stream that ends UNAVAILABLE (a replica draining, a broken connection) is reopened, on
   * whichever replica is up, and starts again with the current state ("current"), since
   * changes in between are not replayed. Ends when `signal` aborts or the caller stops
   * iterating; throws on any other error.
   */
  async *observe(name: string, signal?: AbortSignal): AsyncGenerator<ElectionEvent, void, undefined> {
    const request = ObserveRequest.fromPartial({ name });
    const backoff = new Backoff();
    while (!signal?.aborted) {
      // Wait-for-ready: while the channel reconnects the stream starts as soon as a replica is up.
      const call = this.stub.observe(request, new Metadata({ waitForReady: true }));
      call.on("error", () => undefined); // the iteration below rethrows it
      const cancel = () => call.cancel();
      signal?.addEventListener("abort", cancel, { once: true });
      let failure: unknown;
      try {
        // Iterating the stream, rather than buffering its events, leaves the pace to the
        // caller: one that falls behind is resynced by Baton with "current".
        for await (const response of call as AsyncIterable<ObserveResponse>) {
          backoff.reset();
          const kind = EVENT_KINDS[response.kind];
          // A kind this version does not know (a newer server's) is skipped.
          if (kind) {
            yield { kind, leader: response.leader && leaderOf(response.leader), at: response.at };
          }
        }
      } catch (error) {
        failure = error;
      } finally {
        signal?.removeEventListener("abort", cancel);
        // Ends the stream when the caller stopped iterating; a no-op once it has ended.
        call.cancel();
      }
      if (signal?.aborted) {
        return;
      }
      // Baton never ends the stream OK on its own; if it does, reopening is as safe.
      if (failure !== undefined && codeOf(failure) !== Status.UNAVAILABLE) {
        throw fromGrpcError(failure);
      }
      const mapped = fromGrpcError(failure);
      await sleep(backoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined), signal);
    }
  }
}
