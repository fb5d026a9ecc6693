// The generated messages and stubs, for RPCs the helpers do not cover.

export * as cache from "./gen/baton/v1/cache.js";
export * as election from "./gen/baton/v1/election.js";
export * as errors from "./gen/baton/v1/errors.js";
export * as lock from "./gen/baton/v1/lock.js";
export * as queue from "./gen/baton/v1/queue.js";
export * as ratelimit from "./gen/baton/v1/ratelimit.js";
export * as session from "./gen/baton/v1/session.js";
