// BatonClient: one channel to a Baton deployment, the generated stubs, and the helpers.

import { ChannelCredentials, ClientOptions } from "@grpc/grpc-js";

import {
  callDefaults,
  channelOptionsOf,
  ConnectionOptions,
  credentialsOf,
  DEFAULT_TIMEOUT_MS,
  targetOf,
} from "./connection.js";
import { CacheServiceClient } from "./gen/baton/v1/cache.js";
import { ElectionServiceClient } from "./gen/baton/v1/election.js";
import { LockServiceClient } from "./gen/baton/v1/lock.js";
import { JobQueueServiceClient } from "./gen/baton/v1/queue.js";
import { RateLimiterServiceClient } from "./gen/baton/v1/ratelimit.js";
import { SessionStoreServiceClient } from "./gen/baton/v1/session.js";
import { CacheEntry, CacheHelpers, CacheSetOptions, GetOrLoadOptions } from "./cache.js";
import { ElectionEvent, ElectionHelpers, Leader, Leadership, LeadershipOptions } from "./election.js";
import { acquire, Lease, LockOptions } from "./lock.js";
import {
  ConsumeOptions,
  Enqueued,
  EnqueueOptions,
  JobHandler,
  JobPage,
  JobSnapshot,
  ListableJobState,
  ListJobsOptions,
  QueueConfig,
  QueueHelpers,
  QueueWatchItem,
  StoredQueueConfig,
  WaitForJobOptions,
  WatchJobOptions,
  WatchQueueOptions,
} from "./queue.js";
import { allow, AllowOptions, Decision } from "./ratelimit.js";
import { CreateSessionOptions, Session, SessionHelpers, SessionUpdate } from "./session.js";

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
  elections: ElectionServiceClient;
}

/** A connection to Baton; create one per process and close() it at exit. */
export class BatonClient {
  readonly stubs: Stubs;
  private readonly defaultTimeoutMs: number;
  private readonly cache: CacheHelpers;
  private readonly sessions: SessionHelpers;
  private readonly queue: QueueHelpers;
  private readonly elections: ElectionHelpers;

  constructor(options: ConnectionOptions) {
    const target = targetOf(options.target);
    const credentials: ChannelCredentials = credentialsOf(options.tls);
    this.defaultTimeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const clientOptions: ClientOptions = {
      ...channelOptionsOf(target, options),
      callInvocationTransformer: callDefaults(options.apiKey, this.defaultTimeoutMs, options.tracing),
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
      elections: new ElectionServiceClient(target, credentials, shared),
    };
    this.cache = new CacheHelpers(this.stubs.cache, this.defaultTimeoutMs);
    this.sessions = new SessionHelpers(this.stubs.sessions, this.defaultTimeoutMs);
    this.queue = new QueueHelpers(this.stubs.queue, this.defaultTimeoutMs);
    this.elections = new ElectionHelpers(this.stubs.elections, this.defaultTimeoutMs);
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

  /** The fresh entry of `key`, or undefined. Retried on UNAVAILABLE. */
  cacheGet(key: string, signal?: AbortSignal): Promise<CacheEntry | undefined> {
    return this.cache.get(key, signal);
  }

  /**
   * Writes `key` for `ttlMs`, optionally only at a version (`ifVersion`) or when absent
   * (`ifAbsent`). Not retried: a conditional write whose answer was lost would fail its retry.
   */
  cacheSet(key: string, value: Uint8Array | string, options: CacheSetOptions): Promise<CacheEntry> {
    return this.cache.set(key, value, options);
  }

  /** Removes `key`; false when there was nothing to remove. Retried on UNAVAILABLE. */
  cacheDelete(key: string, options?: { ifVersion?: bigint; signal?: AbortSignal }): Promise<boolean> {
    return this.cache.delete(key, options);
  }

  /** Makes every entry written with `tag` read as missing. */
  invalidateTag(tag: string, signal?: AbortSignal): Promise<void> {
    return this.cache.invalidateTag(tag, signal);
  }

  /**
   * The cached value of `key`, or `loader()`'s, stored for `ttlMs`. Across every caller of
   * every process one loader runs per miss; the others wait for its value. If the loader
   * rejects, the duty passes at once to a waiting caller and the rejection propagates. A stale
   * entry (see `staleTtlMs`) is refreshed by one caller while the others get it at once; if
   * that refresh fails, its caller gets the stale value too.
   */
  getOrLoad(key: string, options: GetOrLoadOptions, loader: () => Promise<Uint8Array | string>): Promise<Buffer> {
    return this.cache.getOrLoad(key, options, loader);
  }

  /**
   * Starts a session of `subject` (a user id); resolves with its secret id — give it to the
   * user agent, never log it — and the session. Not retried: a retry after a lost answer
   * would start a second session.
   */
  createSession(
    subject: string,
    data?: Record<string, Uint8Array>,
    options?: CreateSessionOptions,
  ): Promise<{ sessionId: string; session: Session }> {
    return this.sessions.create(subject, data, options);
  }

  /**
   * Reads a session and (unless `touch: false`) slides its idle timeout; NotFoundError
   * (reason SESSION_NOT_FOUND) once it has ended. Retried on UNAVAILABLE.
   */
  getSession(sessionId: string, options?: { touch?: boolean; signal?: AbortSignal }): Promise<Session> {
    return this.sessions.get(sessionId, options);
  }

  /**
   * Merges `set` into the data and removes `remove`, atomically, and applies new timeouts
   * (`idleTimeoutMs`, `absoluteTimeoutMs`) when given; never revives an ended session.
   */
  updateSession(sessionId: string, update: SessionUpdate): Promise<Session> {
    return this.sessions.update(sessionId, update);
  }

  /** A new id for the session, the old one dead at once: do it when privileges change. */
  rotateSession(sessionId: string, signal?: AbortSignal): Promise<{ sessionId: string; session: Session }> {
    return this.sessions.rotate(sessionId, signal);
  }

  /** Ends a session (log-out); false when it had already ended. Retried on UNAVAILABLE. */
  deleteSession(sessionId: string, signal?: AbortSignal): Promise<boolean> {
    return this.sessions.delete(sessionId, signal);
  }

  /** The live sessions of `subject`, oldest first ("your devices"). */
  listSessions(subject: string, signal?: AbortSignal): Promise<Session[]> {
    return this.sessions.list(subject, signal);
  }

  /**
   * Ends every session of `subject` ("log out everywhere") — or only `handles` — except
   * `exceptHandle`; resolves with how many ended. Not retried: a retry would also end
   * sessions started in between.
   */
  revokeSessions(subject: string, options?: { handles?: string[]; exceptHandle?: string; signal?: AbortSignal }): Promise<number> {
    return this.sessions.revoke(subject, options);
  }

  /**
   * How many sessions of this client's tenant are live, of every subject. It reads every
   * session, so its cost grows with their number: for tests and admin tools, not per request.
   * Retried on UNAVAILABLE.
   */
  countSessions(signal?: AbortSignal): Promise<number> {
    return this.sessions.count(signal);
  }

  /**
   * Ends every session of this client's tenant, of every subject and of every framework
   * sharing the tenant; resolves with how many ended. Sessions created meanwhile may survive
   * it. Retried on UNAVAILABLE (a retry ends what the first attempt left).
   */
  clearSessions(signal?: AbortSignal): Promise<number> {
    return this.sessions.clear(signal);
  }

  /**
   * Adds a job to `queue` (to `options.group`, if given); retried on UNAVAILABLE only with a
   * `dedupKey`.
   */
  enqueue(queue: string, payload?: Uint8Array | string, options?: EnqueueOptions): Promise<Enqueued> {
    return this.queue.enqueue(queue, payload, options);
  }

  /**
   * Runs `handler` on the jobs of `queue`, `concurrency` at a time, until `options.signal`
   * aborts; see ConsumeOptions and JobHandler. Each handler, and the job's Ack or Nack, run
   * in the job's OpenTelemetry trace, in a span "process <queue>" (kind consumer).
   */
  consume(queue: string, handler: JobHandler, options?: ConsumeOptions): Promise<void> {
    return this.queue.consume(queue, handler, options);
  }

  /**
   * The job as it changes, opened when iteration starts: first as it is now, then after each
   * change, last in its finished state ("succeeded", "dead", "cancelled"), after which the
   * iteration ends. Payloads are not included. Reopened on UNAVAILABLE, starting again with
   * the job as it is then; ends early when `options.signal` aborts.
   */
  watchJob(jobId: string, options?: WatchJobOptions): AsyncIterable<JobSnapshot> {
    return this.queue.watchJob(jobId, options);
  }

  /**
   * Waits for the job to finish: resolves with it when "succeeded" (with the handler's
   * `result`), rejects with JobNotSucceededError (carrying the job) when "dead" or
   * "cancelled", with DeadlineExceededError past `timeoutMs`. Request/response over the
   * queue is enqueue, then waitForJob. Reopens its stream on UNAVAILABLE.
   */
  waitForJob(jobId: string, options?: WaitForJobOptions): Promise<JobSnapshot> {
    return this.queue.waitForJob(jobId, options);
  }

  /**
   * The queue's events (enqueued, active, progress, succeeded, failed, dead, stalled,
   * returned, redriven, cancelled) from the moment its stream is open (`options.onOpen`), and
   * `missed` items where some were lost. Reopened on UNAVAILABLE after a `missed` item of
   * count 0; ends when `options.signal` aborts.
   */
  watchQueue(queue: string, options?: WatchQueueOptions): AsyncIterable<QueueWatchItem> {
    return this.queue.watchQueue(queue, options);
  }

  /**
   * One page of the queue's jobs in `state` ("ready", "scheduled", "active", "succeeded",
   * "dead"), with payloads; pass `nextPageToken` back as `pageToken` for the next page.
   * Retried on UNAVAILABLE.
   */
  listJobs(queue: string, state: ListableJobState, options?: ListJobsOptions): Promise<JobPage> {
    return this.queue.listJobs(queue, state, options);
  }

  /**
   * Sets how `queue` delivers (the whole configuration: what `config` leaves out is off):
   * `groupConcurrency` (at most that many active jobs per group), `groupFifo` (each group
   * strict FIFO, one at a time), `startLimit` (job starts per period, queue-wide or, with
   * `startLimitPerGroup`, per group). Applies from the next delivery. Retried on UNAVAILABLE.
   */
  configureQueue(queue: string, config: QueueConfig, signal?: AbortSignal): Promise<void> {
    return this.queue.configureQueue(queue, config, signal);
  }

  /** The configuration of `queue`, every field filled in (all off if never configured). Retried on UNAVAILABLE. */
  getQueueConfig(queue: string, signal?: AbortSignal): Promise<StoredQueueConfig> {
    return this.queue.getQueueConfig(queue, signal);
  }

  /**
   * Campaigns for `name` until elected, runs `lead` as its leader, then resigns so that the
   * next candidate is elected at once. `leadership.signal` aborts if the leadership is lost;
   * if it was, the returned promise rejects with LeaseLostError even when `lead` resolved,
   * because the work may have overlapped the next leader's. See LeadershipOptions.
   */
  runAsLeader<T>(name: string, lead: (leadership: Leadership) => Promise<T>, options?: LeadershipOptions): Promise<T> {
    return this.elections.runAsLeader(name, lead, options);
  }

  /** Who leads `name` now, or undefined. Retried on UNAVAILABLE. */
  leader(name: string, signal?: AbortSignal): Promise<Leader | undefined> {
    return this.elections.leader(name, signal);
  }

  /**
   * The history of `name` from now on, opened when iteration starts: first its current
   * state ("current"), then every change in order. Reopened on UNAVAILABLE, starting again
   * with "current"; ends when `options.signal` aborts.
   */
  observe(name: string, options?: { signal?: AbortSignal }): AsyncIterable<ElectionEvent> {
    return this.elections.observe(name, options?.signal);
  }

  /**
   * Closes the channel. Leases (and leaderships) still held stop being kept alive and expire
   * after their ttl; release them first to hand them over at once.
   */
  close(): void {
    this.stubs.rateLimits.getChannel().close();
  }
}
