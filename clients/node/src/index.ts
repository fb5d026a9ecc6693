// Node client for Baton, a gRPC coordination service on Redis: rate limits, fenced locks, a
// cache, sessions and a job queue.
//
// Layout: client.ts (BatonClient: connection options and `stubs`, the generated stubs of
// every service in gen/, from `make gen`), ratelimit.ts (allow), lock.ts (lock, withLock,
// Lease), errors.ts (BatonError and its subclasses, from google.rpc error details).

export { BatonClient, type Stubs } from "./client";
export { API_KEY_HEADER, type ConnectionOptions, DEFAULT_TIMEOUT_MS } from "./connection";
export * from "./errors";
export { Lease, type LockOptions } from "./lock";
export type { AlgorithmName, AllowOptions, Decision } from "./ratelimit";
export * as pb from "./pb";
