// BatonClient: one channel to a Baton deployment, the generated stubs, and the helpers.

import { ChannelCredentials, ClientOptions } from "@grpc/grpc-js";

import {
  callDefaults,
  channelOptionsOf,
  ConnectionOptions,
  credentialsOf,
  DEFAULT_TIMEOUT_MS,
  targetOf,
} from "./connection";
import { CacheServiceClient } from "./gen/baton/v1/cache";
import { LockServiceClient } from "./gen/baton/v1/lock";
import { JobQueueServiceClient } from "./gen/baton/v1/queue";
import { RateLimiterServiceClient } from "./gen/baton/v1/ratelimit";
import { SessionStoreServiceClient } from "./gen/baton/v1/session";
import { acquire, Lease, LockOptions } from "./lock";
import { allow, AllowOptions, Decision } from "./ratelimit";

/**
 * The generated stubs of every service on one channel, for RPCs the helpers do not cover.
 * Their errors are raw grpc-js ServiceErrors; `fromGrpcError` maps them.
 */
export interface Stubs {
  rateLimits: RateLimiterServiceClient;
  locks: LockServiceClient;
  cache: CacheServiceClient;
  sessions: SessionStoreServiceClient;
  queue: JobQueueServiceClient;
}

/** A connection to Baton; create one per process and close() it at exit. */
export class BatonClient {
  readonly stubs: Stubs;
  private readonly defaultTimeoutMs: number;

  constructor(options: ConnectionOptions) {
    const target = targetOf(options.target);
    const credentials: ChannelCredentials = credentialsOf(options.tls);
    this.defaultTimeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const clientOptions: ClientOptions = {
      ...channelOptionsOf(target, options),
      interceptors: [callDefaults(options.apiKey, this.defaultTimeoutMs)],
    };
    const rateLimits = new RateLimiterServiceClient(target, credentials, clientOptions);
    // Every stub shares the first one's channel: one set of connections, one balancer.
    const shared: ClientOptions = { ...clientOptions, channelOverride: rateLimits.getChannel() };
    this.stubs = {
      rateLimits,
      locks: new LockServiceClient(target, credentials, shared),
      cache: new CacheServiceClient(target, credentials, shared),
      sessions: new SessionStoreServiceClient(target, credentials, shared),
      queue: new JobQueueServiceClient(target, credentials, shared),
    };
  }

  /** Consumes one unit (or `cost`) of a limit on `key`; see AllowOptions. */
  allow(key: string, options: AllowOptions): Promise<Decision> {
    return allow(this.stubs.rateLimits, key, options);
  }

  /** Acquires `name` and keeps it alive until `lease.release()`; prefer withLock. */
  lock(name: string, options: LockOptions): Promise<Lease> {
    return acquire(this.stubs.locks, name, options, this.defaultTimeoutMs);
  }

  /**
   * Runs `work` while holding `name`, then releases it. `lease.signal` aborts if the lease is
   * lost; if it was, the returned promise rejects with LeaseLostError even when `work`
   * resolved, because the work may have overlapped another holder.
   */
  async withLock<T>(name: string, options: LockOptions, work: (lease: Lease) => Promise<T>): Promise<T> {
    const lease = await this.lock(name, options);
    let result: T;
    try {
      result = await work(lease);
    } catch (error) {
      // The work's own failure matters more than a failed release.
      await lease.release().catch(() => undefined);
      throw error;
    }
    await lease.release();
    return result;
  }

  /**
   * Closes the channel. Leases still held stop being kept alive and expire after their ttl;
   * release them first to hand them over at once.
   */
  close(): void {
    this.stubs.rateLimits.getChannel().close();
  }
}
