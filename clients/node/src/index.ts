// Node client for Baton, a gRPC coordination service on Redis: rate limits, fenced locks, a
// cache, sessions, a job queue and leader election.
//
// Layout: client.ts (BatonClient: connection options and `stubs`, the generated stubs of
// every service in gen/, from `make gen`), ratelimit.ts (allow), lock.ts (lock, withLock,
// Lease, which keeps locks and leaderships alike), election.ts (runAsLeader, Leadership,
// leader, observe), cache.ts (cacheGet/Set/Delete, invalidateTag, getOrLoad), session.ts (createSession
// … revokeSessions), queue.ts (enqueue, consume,
// watchJob, waitForJob, watchQueue, listJobs, configureQueue, getQueueConfig), errors.ts (BatonError and its subclasses,
// from google.rpc error details). express-session.ts, a session Store for Express, is
// imported on its own ("@baton-dev/baton-client/express-session") so that this module does
// not need express-session.

export { BatonClient, type Stubs } from "./client.js";
export { API_KEY_HEADER, type ConnectionOptions, DEFAULT_TIMEOUT_MS } from "./connection.js";
export * from "./errors.js";
export type { CacheEntry, CacheSetOptions, GetOrLoadOptions } from "./cache.js";
export {
  DEFAULT_LEADERSHIP_TTL_MS,
  type ElectionEvent,
  type ElectionEventKind,
  type Leader,
  Leadership,
  type LeadershipOptions,
} from "./election.js";
export { Lease, type LockOptions } from "./lock.js";
export { DEFAULT_ACK_BATCH_SIZE } from "./acks.js";
export {
  type ConsumeOptions,
  DEFAULT_VISIBILITY_TIMEOUT_MS,
  type Enqueued,
  type EnqueueOptions,
  type EventsMissed,
  type Job,
  type JobHandler,
  type JobPage,
  type JobProgress,
  type JobSnapshot,
  type JobStateName,
  type ListableJobState,
  type ListJobsOptions,
  type QueueConfig,
  type QueueEvent,
  type QueueEventBase,
  type QueueEventKind,
  type QueueWatchItem,
  type StoredQueueConfig,
  type WaitForJobOptions,
  type WatchJobOptions,
  type WatchQueueOptions,
} from "./queue.js";
export type { CreateSessionOptions, Session, SessionUpdate } from "./session.js";
export type { AlgorithmName, AllowOptions, Decision, RateLimit } from "./ratelimit.js";
export * as pb from "./pb.js";
