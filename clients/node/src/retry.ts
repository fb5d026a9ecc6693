// Retrying the calls that API.md declares safe to retry on UNAVAILABLE.

import { status as Status } from "@grpc/grpc-js";

import { Backoff, sleep } from "./connection.js";
import { BatonError, codeOf, fromGrpcError } from "./errors.js";

/**
 * The retry budget of the calls that settle or keep a lease — Ack, Nack, Extend and Release
 * (the lock helper renews through KeepAlive heartbeats, not Renew): 10 s of retrying
 * UNAVAILABLE, 100 ms growing to 500 ms apart, which outlasts a replica's restart or a 5 s
 * outage. Each is safe to repeat (a repeated Ack answers done again; a repeated Release
 * answers `released: false`, which the lock helper expects), and each is sent
 * wait-for-ready, so an attempt waits for a connection, within its deadline, rather than
 * failing at once while the channel reconnects.
 */
export const LEASE_RETRY_BUDGET_MS = 10_000;
export function leaseRetryBackoff(): Backoff {
  return new Backoff(100, 500);
}

/**
 * Runs `call` until it succeeds or fails with anything but UNAVAILABLE, for at most `budgetMs`
 * of retrying (0: no bound) or until `signal` aborts; rejects with the mapped BatonError.
 * `onRetry` hears of each failed attempt that is retried.
 */
export async function retryUnavailable<T>(
  call: () => Promise<T>,
  budgetMs: number,
  signal?: AbortSignal,
  backoff: Backoff = new Backoff(),
  onRetry?: (error: unknown) => void,
): Promise<T> {
  const giveUpAt = budgetMs > 0 ? Date.now() + budgetMs : Infinity;
  for (;;) {
    try {
      return await call();
    } catch (error) {
      const mapped = fromGrpcError(error);
      if (codeOf(error) !== Status.UNAVAILABLE) {
        throw mapped;
      }
      const delay = backoff.delayMs(mapped instanceof BatonError ? mapped.retryAfterMs : undefined);
      if (Date.now() + delay > giveUpAt || !(await sleep(delay, signal))) {
        throw mapped;
      }
      onRetry?.(mapped);
    }
  }
}

/** Runs `call` once, rejecting with the mapped BatonError. */
export async function once<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw fromGrpcError(error);
  }
}

/** Bytes from a Buffer, a Uint8Array, or a string (as UTF-8). */
export function bytesOf(value: Uint8Array | string): Buffer {
  return typeof value === "string" ? Buffer.from(value, "utf8") : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}
