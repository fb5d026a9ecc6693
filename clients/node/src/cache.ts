// Cache: cacheGet / cacheSet / cacheDelete / invalidateTag, and getOrLoad, which runs one
// loader per miss across every caller (Fetch / Fill).

import { msToDuration } from "./connection.js";
import {
  CacheEntry as CacheEntryMessage,
  CacheServiceClient,
  DeleteRequest,
  FetchRequest,
  FillRequest,
  GetRequest,
  InvalidateTagRequest,
  SetRequest,
} from "./gen/baton/v1/cache.js";
import { bytesOf, once, retryUnavailable } from "./retry.js";
import { unary } from "./unary.js";

/**
 * How long one Fetch waits for another caller's loader before asking again. A waiting Fetch
 * is only ever answered the value or a timeout, never the fill token, so this bounds how
 * long a loader's failure (its abandoned token) keeps the waiters idle.
 */
const FETCH_WAIT_MS = 1000;

/** A cached value with its metadata. */
export interface CacheEntry {
  value: Buffer;
  /** Changes on every write; pass it as `ifVersion` for compare-and-set. */
  version: bigint;
  /** When the entry stops being fresh, by the Redis server's clock. */
  expiresAt: Date | undefined;
  /** Served past `expiresAt`, within its stale ttl, while another caller refreshes it. */
  stale: boolean;
}

export interface CacheSetOptions {
  /** How long the entry is fresh. */
  ttlMs: number;
  /** Write only at exactly this version, else AbortedError (reason VERSION_MISMATCH). */
  ifVersion?: bigint;
  /** Write only if the key holds no fresh entry, else AlreadyExistsError. */
  ifAbsent?: boolean;
  /** Tags for invalidateTag. */
  tags?: string[];
  /** How long past ttlMs getOrLoad may serve the entry stale while one caller refreshes it. */
  staleTtlMs?: number;
  signal?: AbortSignal;
}

export interface GetOrLoadOptions {
  /** How long a loaded value stays fresh. */
  ttlMs: number;
  tags?: string[];
  /** See CacheSetOptions.staleTtlMs. */
  staleTtlMs?: number;
  /**
   * How long the other callers wait for a loader that neither fills nor fails (a crashed
   * process) before one of them takes over; default 10 s.
   */
  loadTimeoutMs?: number;
  signal?: AbortSignal;
}

function entryOf(entry: CacheEntryMessage | undefined): CacheEntry {
  return {
    value: entry?.value ?? Buffer.alloc(0),
    version: entry?.version ?? 0n,
    expiresAt: entry?.expiresAt,
    stale: entry?.stale ?? false,
  };
}

function optionalDuration(ms: number | undefined) {
  return ms ? msToDuration(ms) : undefined;
}

/** The cache helpers of BatonClient. */
export class CacheHelpers {
  constructor(
    private readonly stub: CacheServiceClient,
    private readonly defaultTimeoutMs: number,
  ) {}

  async get(key: string, signal?: AbortSignal): Promise<CacheEntry | undefined> {
    const request = GetRequest.fromPartial({ key });
    const response = await retryUnavailable(
      () => unary(this.stub.get.bind(this.stub), request, { waitForReady: true }, signal),
      this.defaultTimeoutMs,
      signal,
    );
    return response.found ? entryOf(response.entry) : undefined;
  }

  async set(key: string, value: Uint8Array | string, options: CacheSetOptions): Promise<CacheEntry> {
    const request = SetRequest.fromPartial({
      key,
      value: bytesOf(value),
      ttl: msToDuration(options.ttlMs),
      ifVersion: options.ifVersion ?? 0n,
      ifAbsent: options.ifAbsent ?? false,
      tags: options.tags ?? [],
      staleTtl: optionalDuration(options.staleTtlMs),
    });
    const response = await once(() => unary(this.stub.set.bind(this.stub), request, {}, options.signal));
    return entryOf(response.entry);
  }

  async delete(key: string, options: { ifVersion?: bigint; signal?: AbortSignal } = {}): Promise<boolean> {
    const request = DeleteRequest.fromPartial({ key, ifVersion: options.ifVersion ?? 0n });
    const response = await retryUnavailable(
      () => unary(this.stub.delete.bind(this.stub), request, { waitForReady: true }, options.signal),
      this.defaultTimeoutMs,
      options.signal,
    );
    return response.deleted;
  }

  async invalidateTag(tag: string, signal?: AbortSignal): Promise<void> {
    const request = InvalidateTagRequest.fromPartial({ tag });
    await once(() => unary(this.stub.invalidateTag.bind(this.stub), request, {}, signal));
  }

  async getOrLoad(key: string, options: GetOrLoadOptions, loader: () => Promise<Uint8Array | string>): Promise<Buffer> {
    const request = FetchRequest.fromPartial({
      key,
      leaseTtl: optionalDuration(options.loadTimeoutMs),
      waitTimeout: msToDuration(FETCH_WAIT_MS),
    });
    const fetchDeadlineMs = FETCH_WAIT_MS + (this.defaultTimeoutMs || 10_000);
    for (;;) {
      options.signal?.throwIfAborted();
      const response = await retryUnavailable(
        () =>
          unary(
            this.stub.fetch.bind(this.stub),
            request,
            { deadline: Date.now() + fetchDeadlineMs, waitForReady: true },
            options.signal,
          ),
        this.defaultTimeoutMs,
        options.signal,
      );
      if (response.fillToken) {
        try {
          return await this.loadAndFill(key, response.fillToken, options, loader);
        } catch (error) {
          if (response.found && response.entry) {
            return response.entry.value; // the refresh failed: serve the stale value
          }
          throw error;
        }
      }
      if (response.found && response.entry) {
        return response.entry.value;
      }
      // The wait ran out while another caller was loading: ask again.
    }
  }

  private async loadAndFill(
    key: string,
    fillToken: string,
    options: GetOrLoadOptions,
    loader: () => Promise<Uint8Array | string>,
  ): Promise<Buffer> {
    let value: Buffer;
    try {
      value = bytesOf(await loader());
    } catch (error) {
      // Hand the duty on at once rather than after the load timeout.
      const abandon = FillRequest.fromPartial({ key, fillToken, abandon: true });
      const call = () => unary(this.stub.fill.bind(this.stub), abandon, { waitForReady: true });
      await retryUnavailable(call, this.defaultTimeoutMs).catch(() => undefined);
      throw error;
    }
    // The loaded value is the caller's answer whatever Fill says: FILL_TOKEN_STALE means a
    // newer write won (or a retried Fill had been applied), and any other failure only costs
    // the next caller a load.
    const fill = FillRequest.fromPartial({
      key,
      fillToken,
      value,
      ttl: msToDuration(options.ttlMs),
      tags: options.tags ?? [],
      staleTtl: optionalDuration(options.staleTtlMs),
    });
    const call = () => unary(this.stub.fill.bind(this.stub), fill, { waitForReady: true });
    await retryUnavailable(call, this.defaultTimeoutMs).catch(() => undefined);
    return value;
  }
}
