// Type-checked (never run) by `make clients-install-test` in a new project, against the
// installed package's CommonJS declarations ("require" condition).
import session = require("express-session");

import { BatonClient, type Decision } from "@baton-dev/baton-client";
import { BatonSessionStore } from "@baton-dev/baton-client/express-session";

export async function check(client: BatonClient): Promise<number> {
  const decision: Decision = await client.allow("login:203.0.113.7", { limit: 5, periodMs: 60_000 });
  // @ts-expect-error periodMs is a number of milliseconds: the types are real, not `any`.
  await client.allow("login:203.0.113.7", { limit: 5, periodMs: "1m" });
  return decision.retryAfterMs;
}

export const store: session.Store = new BatonSessionStore({ client: new BatonClient({ target: "127.0.0.1:50051" }) });
