// Rate limits: allow() on baton.v1.RateLimiterService/Check.

import { fromGrpcError } from "./errors.js";
import { Algorithm, CheckRequest, CheckResponse, LimitRequest, RateLimiterServiceClient } from "./gen/baton/v1/ratelimit.js";
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

/** An inline limit ("limit per periodMs"), or the name of one in the server's configuration. */
export type AllowOptions = (
  | { limit: number; periodMs: number; algorithm?: AlgorithmName; burst?: number; policy?: never }
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

function limitRequest(key: string, options: AllowOptions): LimitRequest {
  const cost = BigInt(options.cost ?? 1);
  if (options.policy !== undefined) {
    return LimitRequest.fromPartial({ key, policy: options.policy, cost });
  }
  return LimitRequest.fromPartial({
    key,
    cost,
    limit: {
      algorithm: ALGORITHMS[options.algorithm ?? "sliding_window"],
      limit: BigInt(options.limit),
      period: msToDuration(options.periodMs),
      burst: BigInt(options.burst ?? 0),
    },
  });
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
