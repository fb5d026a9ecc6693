// Type-checked (never run) by `make clients-install-test` in a new project, against the
// installed package's ES module declarations ("import" condition).
import session from "express-session";

import { BatonClient, BatonError, type Decision, pb } from "@baton-dev/baton-client";
import { BatonSessionStore } from "@baton-dev/baton-client/express-session";

const client = new BatonClient({ target: "127.0.0.1:50051", timeoutMs: 5_000 });
const decision: Decision = await client.allow("login:203.0.113.7", { limit: 5, periodMs: 60_000 });
const retryAfterMs: number = decision.retryAfterMs;
// @ts-expect-error periodMs is a number of milliseconds: the types are real, not `any`.
await client.allow("login:203.0.113.7", { limit: 5, periodMs: "1m" });

const store: session.Store = new BatonSessionStore({ client });
const request: pb.ratelimit.CheckRequest = pb.ratelimit.CheckRequest.create({});
const isBatonError = (error: unknown): error is BatonError => error instanceof BatonError;
export { isBatonError, request, retryAfterMs, store };
