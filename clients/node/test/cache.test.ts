import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { AbortedError, AlreadyExistsError, BatonClient, ErrorReason, FailedPreconditionError, fromGrpcError, reasonOf } from "../src/index.js";
import { FetchRequest, FillRequest } from "../src/gen/baton/v1/cache.js";
import { msToDuration } from "../src/connection.js";
import { unary } from "../src/unary.js";
import { Environment, unique } from "./harness.js";

let environment: Environment;
let client: BatonClient;
let addr: string;

before(async () => {
  environment = await Environment.start();
  addr = (await environment.baton()).addr;
  client = new BatonClient({ target: addr });
  environment.onClose(() => client.close());
});
after(() => environment.close());

test("set, get, delete and compare-and-set", async () => {
  const key = unique("user");
  const first = await client.cacheSet(key, "v1", { ttlMs: 60_000, tags: ["users"] });
  const entry = await client.cacheGet(key);
  assert.equal(entry?.value.toString(), "v1");
  assert.equal(entry?.version, first.version);
  await client.cacheSet(key, "v2", { ttlMs: 60_000, ifVersion: first.version });
  await assert.rejects(client.cacheSet(key, "v3", { ttlMs: 60_000, ifVersion: first.version }), (error) => {
    assert.ok(error instanceof AbortedError);
    assert.equal(reasonOf(error), ErrorReason.VERSION_MISMATCH);
    return true;
  });
  await assert.rejects(client.cacheSet(key, "v3", { ttlMs: 60_000, ifAbsent: true }), AlreadyExistsError);
  assert.equal(await client.cacheDelete(key), true);
  assert.equal(await client.cacheGet(key), undefined);

  await client.cacheSet(key, "tagged", { ttlMs: 60_000, tags: ["users"] });
  await client.invalidateTag("users");
  assert.equal(await client.cacheGet(key), undefined);
});

test("getOrLoad runs one loader for 50 concurrent callers", async () => {
  const key = unique("profile");
  // Five channels, as if five processes: one loader must win across all of them.
  const clients = [client, ...[1, 2, 3, 4].map(() => new BatonClient({ target: addr }))];
  let loads = 0;
  const load = async () => {
    loads++;
    await sleep(200); // a slow database
    return JSON.stringify({ name: "Ada" });
  };
  try {
    const values = await Promise.all(
      Array.from({ length: 50 }, (_, i) => clients[i % 5].getOrLoad(key, { ttlMs: 60_000 }, load)),
    );
    assert.deepEqual(new Set(values.map((value) => value.toString())), new Set(['{"name":"Ada"}']));
    assert.equal(values.length, 50);
    assert.equal(loads, 1);
  } finally {
    clients.slice(1).forEach((other) => other.close());
  }
});

test("getOrLoad hands the load on at once when the loader fails", async () => {
  const key = unique("profile");
  let fail!: () => void;
  const failing = new Promise<void>((done) => (fail = done));
  let loading = false;
  const first = client.getOrLoad(key, { ttlMs: 60_000, loadTimeoutMs: 60_000 }, async () => {
    loading = true;
    await failing;
    throw new Error("database down");
  });
  while (!loading) {
    await sleep(10);
  }
  const second = client.getOrLoad(key, { ttlMs: 60_000 }, async () => "from the second loader");
  await sleep(100); // the second caller is now waiting on the first's load
  const failedAt = Date.now();
  fail();
  await assert.rejects(first, /database down/);
  // Abandoned, not left to its one-minute load timeout.
  assert.equal((await second).toString(), "from the second loader");
  assert.ok(Date.now() - failedAt < 3000, `handed on after ${Date.now() - failedAt} ms`);
});

test("Fill with a stale token is FAILED_PRECONDITION FILL_TOKEN_STALE", async () => {
  const key = unique("profile");
  const stub = client.stubs.cache;
  const fetched = await unary(stub.fetch.bind(stub), FetchRequest.fromPartial({ key }));
  assert.ok(fetched.fillToken);
  await client.cacheSet(key, "newer", { ttlMs: 60_000 });
  const stale = FillRequest.fromPartial({ key, fillToken: fetched.fillToken, value: Buffer.from("older"), ttl: msToDuration(60_000) });
  const error = fromGrpcError(await unary(stub.fill.bind(stub), stale).catch((e: unknown) => e));
  assert.ok(error instanceof FailedPreconditionError, String(error));
  assert.equal(reasonOf(error), ErrorReason.FILL_TOKEN_STALE);
});
