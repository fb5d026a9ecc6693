// Retrying the calls that API.md declares safe to retry on UNAVAILABLE.

import { status as Status } from "@grpc/grpc-js";

import { Backoff, sleep } from "./connection.js";
import { BatonError, codeOf, fromGrpcError } from "./errors.js";

/**
 * Runs `call` until it succeeds or fails with anything but UNAVAILABLE, for at most `budgetMs`
 * of retrying (0: no bound) or until `signal` aborts; rejects with the mapped BatonError.
 */
export async function retryUnavailable<T>(call: () => Promise<T>, budgetMs: number, signal?: AbortSignal): Promise<T> {
  const giveUpAt = budgetMs > 0 ? Date.now() + budgetMs : Infinity;
  const backoff = new Backoff();
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
