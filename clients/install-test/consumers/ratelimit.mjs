// The ES module program of `make clients-install-test`: run in a new project outside the
// repository, it makes one real rate-limit check against $BATON_TARGET, and loads the
// express-session entry point.
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";

import { BatonClient } from "@baton-dev/baton-client";
import { BatonSessionStore } from "@baton-dev/baton-client/express-session";

const client = new BatonClient({ target: process.env.BATON_TARGET });
try {
  const key = `install-test:esm:${randomBytes(6).toString("hex")}`;
  const first = await client.allow(key, { limit: 1, periodMs: 60_000 });
  const second = await client.allow(key, { limit: 1, periodMs: 60_000 });
  if (!first.allowed || second.allowed) {
    throw new Error(`a limit of 1 answered ${first.allowed}, then ${second.allowed}`);
  }
  new BatonSessionStore({ client });
  console.log("allowed, then limited");
  console.log("loaded from", fileURLToPath(import.meta.resolve("@baton-dev/baton-client")));
} finally {
  client.close();
}
