// The generated messages and stubs, for RPCs the helpers do not cover.

export * as cache from "./gen/baton/v1/cache";
export * as lock from "./gen/baton/v1/lock";
export * as queue from "./gen/baton/v1/queue";
export * as ratelimit from "./gen/baton/v1/ratelimit";
export * as session from "./gen/baton/v1/session";
