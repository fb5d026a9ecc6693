// Rate limits: allow() on baton.v1.RateLimiterService/Check.

import { status as Status } from "@grpc/grpc-js";

import { fromGrpcError, InternalError } from "./errors.js";
import {
  Algorithm,
  CheckRequest,
  CheckResponse,
  Limit,
  LimitRequest,
  RateLimiterServiceClient,
} from "./gen/baton/v1/ratelimit.js";
import { durationToMs, msToDuration } from "./connection.js";
import { unary } from "./unary.js";

/** How a limit counts; see proto/baton/v1/ratelimit.proto. */
export type AlgorithmName =
  /** At most `limit` per window; a window starts at the key's first hit. */
  | "fixed_window"
  /**
   * An exact sliding log: in every span of one period at most `limit` are admitted. One
   * entry per admitted unit, so the server refuses a limit above its
   * `max_sliding_window_limit` (10,000 by default): use "token_bucket" for larger ones.
   * The default.
   */
  | "sliding_window"
  /** GCRA: `burst` at once, then one every `period / limit`. */
  | "token_bucket";

const ALGORITHMS: Record<AlgorithmName, Algorithm> = {
  fixed_window: Algorithm.ALGORITHM_FIXED_WINDOW,
  sliding_window: Algorithm.ALGORITHM_SLIDING_WINDOW,
  token_bucket: Algorithm.ALGORITHM_TOKEN_BUCKET,
};

/**
 * An inline limit: at most `limit` per `periodMs`, counted by `algorithm` (baton.v1.Limit).
 * What allow() takes inline, and a queue's start limit (QueueConfig.startLimit).
 */
export interface RateLimit {
  /** Admitted per period; at least 1. */
  limit: number;
  /** The period's length, from 1 ms up to the server's maximum (default 30 days). */
  periodMs: number;
  /** Default "sliding_window". */
  algorithm?: AlgorithmName;
  /** Token bucket only: how many may pass at once; 0 or unset means `limit`. */
  burst?: number;
}

/** An inline limit ("limit per periodMs"), or the name of one in the server's configuration. */
export type AllowOptions = (
  | (RateLimit & { policy?: never })
  | { policy: string; limit?: never; periodMs?: never; algorithm?: never; burst?: never }
) & {
  /** Units this request consumes (default 1). */
  cost?: number;
  /** Answer allowed (with `degraded`) instead of failing while Redis is down. */
  failOpen?: boolean;
  /** Evaluate without consuming. */
  dryRun?: boolean;
  signal?: AbortSignal;
};

/** The verdict of allow(). A denial is `allowed: false`, never a rejection. */
export interface Decision {
  allowed: boolean;
  /** The limit's size (for a token bucket, its burst); 0 when degraded. */
  limit: number;
  /** What is left after this request (after it would have been, if denied). */
  remaining: number;
  /** Until a request of the same cost could pass; 0 when allowed. */
  retryAfterMs: number;
  /** Until the limit is fully replenished. */
  resetAfterMs: number;
  /** Answered without Redis because fail-open applied during an outage. */
  degraded: boolean;
}

/** The baton.v1.Limit of an inline limit. */
export function limitMessage(limit: RateLimit): Limit {
  return Limit.fromPartial({
    // An algorithm not listed (from untyped code) goes as UNSPECIFIED, which Baton refuses.
    algorithm: ALGORITHMS[limit.algorithm ?? "sliding_window"] ?? Algorithm.ALGORITHM_UNSPECIFIED,
    limit: BigInt(limit.limit),
    period: msToDuration(limit.periodMs),
    burst: BigInt(limit.burst ?? 0),
  });
}

/**
 * An inline limit as Baton sent it, every field filled in. Rejects (InternalError) an
 * algorithm this client does not know — a newer server's — rather than name it wrongly.
 */
export function rateLimitOf(limit: Limit): Required<RateLimit> {
  const algorithm = (Object.keys(ALGORITHMS) as AlgorithmName[]).find((name) => ALGORITHMS[name] === limit.algorithm);
  if (algorithm === undefined) {
    throw new InternalError(`a limit with algorithm ${limit.algorithm}, which this client does not know`, {
      code: Status.INTERNAL,
    });
  }
  return {
    limit: Number(limit.limit),
    periodMs: durationToMs(limit.period),
    algorithm,
    burst: Number(limit.burst),
  };
}

function limitRequest(key: string, options: AllowOptions): LimitRequest {
  const cost = BigInt(options.cost ?? 1);
  if (options.policy !== undefined) {
    return LimitRequest.fromPartial({ key, policy: options.policy, cost });
  }
  return LimitRequest.fromPartial({ key, cost, limit: limitMessage(options) });
}

function decision(response: CheckResponse): Decision {
  // A degraded answer carries no per-limit results.
  const result = response.results[0];
  return {
    allowed: response.allowed,
    limit: Number(result?.limit ?? 0n),
    remaining: Number(result?.remaining ?? 0n),
    retryAfterMs: durationToMs(response.retryAfter),
    resetAfterMs: durationToMs(result?.resetAfter),
    degraded: response.degraded,
  };
}

/**
 * Consumes `cost` of the limit on `key`, shared by every caller. Not retried: a call whose
 * answer was lost may already have consumed.
 */
export async function allow(stub: RateLimiterServiceClient, key: string, options: AllowOptions): Promise<Decision> {
  const request = CheckRequest.fromPartial({
    limits: [limitRequest(key, options)],
    failOpen: options.failOpen ?? false,
    dryRun: options.dryRun ?? false,
  });
  try {
    return decision(await unary(stub.check.bind(stub), request, {}, options.signal));
  } catch (error) {
    throw fromGrpcError(error);
  }
}
