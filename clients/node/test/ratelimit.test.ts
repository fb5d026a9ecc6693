import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { BatonClient } from "../src/index.js";
import { Environment, unique } from "./harness.js";

let environment: Environment;
let client: BatonClient;

before(async () => {
  environment = await Environment.start();
  client = new BatonClient({ target: (await environment.baton()).addr });
  environment.onClose(() => client.close());
});
after(() => environment.close());

test("allow admits up to the limit, then denies with a retry delay", async () => {
  const key = unique("login");
  const remaining = [];
  for (let i = 0; i < 3; i++) {
    remaining.push((await client.allow(key, { limit: 3, periodMs: 60_000 })).remaining);
  }
  assert.deepEqual(remaining, [2, 1, 0]);
  const denied = await client.allow(key, { limit: 3, periodMs: 60_000 });
  assert.equal(denied.allowed, false);
  assert.ok(denied.retryAfterMs > 0 && denied.retryAfterMs <= 60_000, `retryAfterMs ${denied.retryAfterMs}`);
});

test("a token bucket's cost is all or nothing", async () => {
  const key = unique("upload");
  const bucket = { limit: 1, periodMs: 3_600_000, algorithm: "token_bucket", burst: 10 } as const;
  const first = await client.allow(key, { ...bucket, cost: 8 });
  assert.equal(first.allowed, true);
  assert.equal(first.remaining, 2);
  assert.equal((await client.allow(key, { ...bucket, cost: 3 })).allowed, false);
  assert.equal((await client.allow(key, { ...bucket, cost: 2 })).allowed, true);
});
